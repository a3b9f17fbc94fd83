//! `miniproxy metrics`: every instance's stats line (README, "The stats
//! line") in the Prometheus text exposition format 0.0.4, on stdout or as a
//! file for node_exporter's textfile collector.
//!
//! `KEYS` is the one place that says what each stats key becomes. Keys it
//! does not know (a newer guest than this tool) are exported as
//! `miniproxy_unmapped_stat{key="..."}`, type untyped: a new counter is
//! visible at once, and its type is not guessed (a gauge read as a counter
//! would make `rate()` lie). The table's tests fail when the engine or
//! netfront writes a key the table does not map, so a guest built from this
//! tree never has unmapped keys.

use crate::args::flags::{self, Arg, Flag};
use crate::env::{self, Env};
use crate::list::{rows, Row};
use crate::stats::Counters;
use crate::{fail, Outcome};
use std::fmt::Write as _;
use std::path::Path;

pub const USAGE: &str = "Usage: miniproxy metrics [--textfile DIR]
Every running instance's counters (its data/stats, README.md \"The stats
line\") in the Prometheus text exposition format 0.0.4: # HELP and # TYPE
per metric family, samples labelled instance=\"NAME\",domid=\"ID\".
Counters end in _total; times are in seconds. miniproxy_instances counts the
instances listed (also those starting, without stats yet). A key this tool
does not know is exported as miniproxy_unmapped_stat{key=\"KEY\"} (untyped).
--textfile DIR: write DIR/miniproxy.prom instead of stdout, atomically (a
temporary file in DIR renamed over it), for node_exporter's
--collector.textfile.directory.
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its name, type and help text.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// What a stats key becomes.
#[derive(Debug)]
pub enum Map {
    /// A sample of `family`, with one extra label if any; `ms` values are
    /// exported in seconds.
    To {
        family: &'static Family,
        label: Option<(&'static str, &'static str)>,
        ms: bool,
    },
    /// Not exported: the sum of other keys' samples (`sum by` gives it).
    Sum,
}

macro_rules! family {
    ($id:ident, $name:literal, $kind:ident, $help:literal) => {
        pub static $id: Family = Family {
            name: $name,
            kind: Kind::$kind,
            help: $help,
        };
    };
}

/// The families, one a line (a table: rustfmt would spread each over six).
#[rustfmt::skip]
mod fam {
    use super::{Family, Kind};
    family!(ACCEPTED, "miniproxy_connections_accepted_total", Counter, "Client connections accepted.");
    family!(ACTIVE, "miniproxy_connections_active", Gauge, "Connections held now (handshaking, spliced or closing).");
    family!(REFUSED, "miniproxy_connections_refused_total", Counter, "Client SYNs refused (max_conns reached, memory, addressed to the instance itself).");
    family!(UPSTREAM_FAILED, "miniproxy_connections_upstream_failed_total", Counter, "Connections whose upstream refused, was unreachable or did not answer within connect_timeout.");
    family!(COMPLETED, "miniproxy_connections_completed_total", Counter, "Connections that ended with both directions closed by FIN.");
    family!(RESETS, "miniproxy_connection_resets_total", Counter, "Connections ended by a reset or TCP timeout, by the side it came from.");
    family!(TIMEOUTS, "miniproxy_connection_timeouts_total", Counter, "Connections aborted by the idle timeout or an unfinished client handshake.");
    family!(DRAIN_RESETS, "miniproxy_connection_drain_resets_total", Counter, "Connections reset at the end of a shutdown drain (drain_timeout).");
    family!(BYTES, "miniproxy_bytes_total", Counter, "Payload bytes moved: up is client to upstream, down upstream to client.");
    family!(BUF, "miniproxy_buffer_bytes", Gauge, "Bytes held by socket buffers now.");
    family!(BUF_PEAK, "miniproxy_buffer_peak_bytes", Gauge, "The most bytes socket buffers have held.");
    family!(GARP, "miniproxy_garp_sent_total", Counter, "Gratuitous ARP announcements sent.");
    family!(NF_FRAMES, "miniproxy_netfront_frames_total", Counter, "Frames through the virtual NIC: rx handed to the stack, tx put on the ring.");
    family!(NF_BYTES, "miniproxy_netfront_bytes_total", Counter, "Bytes of the frames in miniproxy_netfront_frames_total.");
    family!(NF_TX_COMPLETED, "miniproxy_netfront_tx_completed_total", Counter, "TX frames the backend answered with OKAY.");
    family!(NF_DROPS, "miniproxy_netfront_drops_total", Counter, "Frames dropped, by direction and reason.");
    family!(NF_TX_BAD, "miniproxy_netfront_tx_bad_responses_total", Counter, "TX responses that name no frame in flight or carry an unknown status.");
    family!(NF_TX_RECLAIMED, "miniproxy_netfront_tx_reclaimed_total", Counter, "TX buffers taken back that the backend never answered.");
    family!(NF_OFFLOAD, "miniproxy_netfront_offload_total", Counter, "Offload work: checksums filled or verified, TX ring slots, GSO and multi-slot frames.");
    family!(NF_STALLS, "miniproxy_netfront_ring_stalls_total", Counter, "tx_full: no TX buffer free; rx_budget: RX work left over after a poll's budget.");
    family!(NF_OVERFLOW, "miniproxy_netfront_rsp_prod_overflows_total", Counter, "Response producer jumps beyond what was requested (a misbehaving backend).");
    family!(NF_EVENTS, "miniproxy_netfront_events_total", Counter, "Event-channel events seen by netfront.");
    family!(NF_NOTIFIES, "miniproxy_netfront_notifies_total", Counter, "Event-channel notifications netfront sent the backend.");
    family!(NF_LEAKED, "miniproxy_netfront_pages_leaked_total", Counter, "Pages the backend kept mapped that could not be taken back.");
    family!(CPU, "miniproxy_cpu_seconds_total", Counter, "Guest vCPU time per part of the main loop.");
    family!(CPU_BLOCKED, "miniproxy_cpu_blocked_seconds_total", Counter, "Time the guest vCPU was blocked (asleep).");
    family!(CPU_STEAL, "miniproxy_cpu_steal_seconds_total", Counter, "Time the guest vCPU was runnable but other domains had the CPU.");
    family!(LOOPS, "miniproxy_loops_total", Counter, "Passes through the guest's main loop.");
    family!(WAKEUPS, "miniproxy_wakeups_total", Counter, "Sleeps ended by an event before their deadline.");
    family!(XEN_NOTIFIES, "miniproxy_xen_notifies_total", Counter, "Event-channel kicks the guest sent.");
}
use fam::*;

/// Per-instance families that do not come from a stats key.
static INSTANCES: Family = Family {
    name: "miniproxy_instances",
    kind: Kind::Gauge,
    help: "Instances started by miniproxy spawn that exist now (running or starting).",
};
static UNMAPPED: &str = "miniproxy_unmapped_stat";

const fn to(family: &'static Family) -> Map {
    Map::To {
        family,
        label: None,
        ms: false,
    }
}
const fn by(family: &'static Family, label: &'static str, value: &'static str) -> Map {
    Map::To {
        family,
        label: Some((label, value)),
        ms: false,
    }
}
const fn secs(family: &'static Family, label: Option<(&'static str, &'static str)>) -> Map {
    Map::To {
        family,
        label,
        ms: true,
    }
}

/// Every stats key this tool knows, in the order the guest writes them.
pub static KEYS: &[(&str, Map)] = &[
    ("px_accepted", to(&ACCEPTED)),
    ("px_active", to(&ACTIVE)),
    ("px_refused", to(&REFUSED)),
    ("px_upstream_fail", to(&UPSTREAM_FAILED)),
    ("px_resets", Map::Sum),
    ("px_client_resets", by(&RESETS, "side", "client")),
    ("px_upstream_resets", by(&RESETS, "side", "upstream")),
    ("px_timeouts", to(&TIMEOUTS)),
    ("px_completed", to(&COMPLETED)),
    ("px_bytes_up", by(&BYTES, "direction", "up")),
    ("px_bytes_down", by(&BYTES, "direction", "down")),
    ("px_buf_bytes", to(&BUF)),
    ("px_buf_peak", to(&BUF_PEAK)),
    ("px_garp", to(&GARP)),
    ("px_drain_resets", to(&DRAIN_RESETS)),
    ("nf_rx_frames", by(&NF_FRAMES, "direction", "rx")),
    ("nf_rx_bytes", by(&NF_BYTES, "direction", "rx")),
    ("nf_tx_frames", by(&NF_FRAMES, "direction", "tx")),
    ("nf_tx_bytes", by(&NF_BYTES, "direction", "tx")),
    ("nf_tx_completed", to(&NF_TX_COMPLETED)),
    ("nf_rx_drops", Map::Sum),
    ("nf_rx_drop_error", by(&NF_DROPS, "reason", "rx_error")),
    ("nf_rx_drop_bad_id", by(&NF_DROPS, "reason", "rx_bad_id")),
    ("nf_rx_drop_bad_len", by(&NF_DROPS, "reason", "rx_bad_len")),
    (
        "nf_rx_drop_multislot",
        by(&NF_DROPS, "reason", "rx_multislot"),
    ),
    (
        "nf_rx_drop_extra_info",
        by(&NF_DROPS, "reason", "rx_extra_info"),
    ),
    (
        "nf_rx_drop_csum",
        by(&NF_DROPS, "reason", "rx_csum_unfillable"),
    ),
    ("nf_rx_csum_bad", by(&NF_DROPS, "reason", "rx_csum_bad")),
    (
        "nf_rx_csum_filled",
        by(&NF_OFFLOAD, "kind", "rx_csum_filled"),
    ),
    (
        "nf_rx_csum_verified",
        by(&NF_OFFLOAD, "kind", "rx_csum_verified"),
    ),
    ("nf_tx_slots", by(&NF_OFFLOAD, "kind", "tx_slots")),
    ("nf_tx_gso_frames", by(&NF_OFFLOAD, "kind", "tx_gso_frames")),
    ("nf_rx_multi_slot", by(&NF_OFFLOAD, "kind", "rx_multi_slot")),
    ("nf_rx_gso", by(&NF_OFFLOAD, "kind", "rx_gso")),
    ("nf_tx_drops", Map::Sum),
    ("nf_tx_error", by(&NF_DROPS, "reason", "tx_error")),
    ("nf_tx_drop_bad_len", by(&NF_DROPS, "reason", "tx_bad_len")),
    ("nf_tx_bad_id", by(&NF_TX_BAD, "reason", "bad_id")),
    ("nf_tx_bad_status", by(&NF_TX_BAD, "reason", "bad_status")),
    ("nf_tx_reclaimed", to(&NF_TX_RECLAIMED)),
    ("nf_tx_ring_full", by(&NF_STALLS, "kind", "tx_full")),
    (
        "nf_rx_budget_exhausted",
        by(&NF_STALLS, "kind", "rx_budget"),
    ),
    ("nf_rsp_prod_overflow", to(&NF_OVERFLOW)),
    ("nf_events", to(&NF_EVENTS)),
    ("nf_notifies", to(&NF_NOTIFIES)),
    ("nf_pages_leaked", to(&NF_LEAKED)),
    ("cpu_nic_ms", secs(&CPU, Some(("part", "nic")))),
    ("cpu_engine_ms", secs(&CPU, Some(("part", "engine")))),
    ("cpu_xs_ms", secs(&CPU, Some(("part", "xenstore")))),
    ("cpu_sleep_ms", secs(&CPU, Some(("part", "sleep")))),
    ("cpu_busy_ms", Map::Sum),
    ("cpu_blocked_ms", secs(&CPU_BLOCKED, None)),
    ("cpu_steal_ms", secs(&CPU_STEAL, None)),
    ("cpu_loops", to(&LOOPS)),
    ("cpu_wakeups", to(&WAKEUPS)),
    ("xen_notifies", to(&XEN_NOTIFIES)),
];

pub fn map_of(key: &str) -> Option<&'static Map> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, m)| m)
}

/// `s` as the inside of a label value: `\`, `"` and newline escaped.
pub fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as HELP text: `\` and newline escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    }
}

fn value(v: u64, ms: bool) -> String {
    if ms {
        format!("{}.{:03}", v / 1000, v % 1000)
    } else {
        v.to_string()
    }
}

/// The exposition of `rows`: HELP and TYPE once per family, then its
/// samples, families in `KEYS` order; families without samples left out
/// (except miniproxy_instances).
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    head(
        &mut out,
        INSTANCES.name,
        kind_name(INSTANCES.kind),
        INSTANCES.help,
    );
    let _ = writeln!(out, "{} {}", INSTANCES.name, rows.len());
    // Only instances with a domain and a stats line have samples.
    let with_stats: Vec<(&Row, u32, &Counters)> = rows
        .iter()
        .filter_map(|r| Some((r, r.domid?, r.stats.as_ref()?)))
        .collect();
    let base = |r: &Row, id: u32| format!("instance=\"{}\",domid=\"{id}\"", escape_label(&r.name));
    let mut done: Vec<&str> = Vec::new();
    for (_, map) in KEYS {
        let Map::To { family, .. } = map else {
            continue;
        };
        if done.contains(&family.name) {
            continue;
        }
        done.push(family.name);
        let mut samples = String::new();
        for (r, id, stats) in &with_stats {
            for (key, v) in &stats.0 {
                let Some(Map::To {
                    family: f,
                    label,
                    ms,
                }) = map_of(key)
                else {
                    continue;
                };
                if f.name != family.name {
                    continue;
                }
                let extra = label.map_or(String::new(), |(l, lv)| {
                    format!(",{l}=\"{}\"", escape_label(lv))
                });
                let _ = writeln!(
                    samples,
                    "{}{{{}{extra}}} {}",
                    f.name,
                    base(r, *id),
                    value(*v, *ms)
                );
            }
        }
        if !samples.is_empty() {
            head(&mut out, family.name, kind_name(family.kind), family.help);
            out.push_str(&samples);
        }
    }
    let mut unmapped = String::new();
    for (r, id, stats) in &with_stats {
        for (key, v) in &stats.0 {
            if map_of(key).is_none() {
                let _ = writeln!(
                    unmapped,
                    "{UNMAPPED}{{{},key=\"{}\"}} {v}",
                    base(r, *id),
                    escape_label(key)
                );
            }
        }
    }
    if !unmapped.is_empty() {
        head(
            &mut out,
            UNMAPPED,
            "untyped",
            "A stats key this miniproxy tool does not know (a newer guest); labelled with the key.",
        );
        out.push_str(&unmapped);
    }
    out
}

/// `text` as DIR/miniproxy.prom: written to a dot-file in DIR (node_exporter
/// reads only *.prom, and a rename within one directory is atomic), then
/// renamed over it, so a scrape sees the old file or the new, never half.
pub fn write_textfile(dir: &Path, text: &str) -> Result<(), String> {
    let tmp = dir.join(format!(".miniproxy.prom.{}.tmp", std::process::id()));
    let target = dir.join("miniproxy.prom");
    let result = std::fs::write(&tmp, text)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &target));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", target.display())
    })
}

/// `--textfile DIR` or `--textfile=DIR`.
const FLAGS: &[Flag] = &[Flag::value("--textfile", "a directory")];

pub fn run(argv: &[String]) -> Outcome {
    let mut textfile: Option<String> = None;
    for arg in flags::parse(argv, FLAGS, false) {
        match arg? {
            Arg::Help => return flags::help(USAGE),
            Arg::Value(_, dir) => textfile = Some(dir.into()),
            a => unreachable!("not a flag of metrics: {a:?}"),
        }
    }
    if let Some(dir) = &textfile {
        if !Path::new(dir).is_dir() {
            return fail(format!("--textfile {dir}: not a directory"));
        }
    }
    env::need_root()?;
    let env = Env::load();
    let (rows, _) = rows(&env, Vec::new(), false, "metrics");
    let text = render(&rows);
    match textfile {
        Some(dir) => write_textfile(Path::new(&dir), &text).or_else(fail),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
