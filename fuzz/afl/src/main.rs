//! The fuzz targets as one AFL++ binary: `fuzz-afl <target>` (built with
//! `cargo afl build`; `scripts/fuzz` runs it under afl-fuzz).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(t) = miniproxy_fuzz_targets::target(&name) else {
        let names: Vec<&str> = miniproxy_fuzz_targets::TARGETS
            .iter()
            .map(|t| t.name)
            .collect();
        eprintln!("usage: fuzz-afl <target>; targets: {}", names.join(" "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        (t.run)(data);
    });
}
