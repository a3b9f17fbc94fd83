//! Miniproxy's fuzz targets. Each is a `fn(&[u8])` that panics when a
//! property fails and returns otherwise; AFL++ drives them through
//! `fuzz/afl` (`fuzz-afl <target>`), and `fuzz-check` replays the corpus and
//! seeded random inputs through them without AFL. See `fuzz/README.md`.

pub mod csum;
pub mod engine;
pub mod input;
pub mod netfront_rx;
pub mod netfront_tx;
pub mod proxy_config;
pub mod xenstore;

/// One fuzz target.
pub struct Target {
    /// Its name: the corpus folder `fuzz/corpus/<name>` and the argument of
    /// `fuzz-afl` and `scripts/fuzz --target`.
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Fresh random inputs `fuzz-check` tries by default (the slow targets
    /// get fewer, to keep the whole check within its time budget).
    pub check_inputs: u32,
    /// Largest random input `fuzz-check` generates.
    pub max_len: usize,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "config",
        run: proxy_config::run,
        check_inputs: 50_000,
        max_len: 200,
    },
    Target {
        name: "xenstore",
        run: xenstore::run,
        check_inputs: 20_000,
        max_len: 400,
    },
    Target {
        name: "netfront_rx",
        run: netfront_rx::run,
        check_inputs: 5_000,
        max_len: 2_000,
    },
    Target {
        name: "netfront_tx",
        run: netfront_tx::run,
        check_inputs: 5_000,
        max_len: 400,
    },
    Target {
        name: "csum",
        run: csum::run,
        check_inputs: 50_000,
        max_len: 300,
    },
    Target {
        name: "engine",
        run: engine::run,
        check_inputs: 1_000,
        max_len: 600,
    },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
