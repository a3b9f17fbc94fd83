use super::*;
use crate::stats::Counters;
use std::collections::{HashMap, HashSet};

fn row(name: &str, domid: Option<u32>, line: Option<&str>) -> Row {
    Row {
        name: name.into(),
        domid,
        state: "running".into(),
        ip: "10.0.0.5/24".into(),
        mode: "reverse".into(),
        memory: "4".into(),
        stats: line.map(|l| Counters::parse(l).unwrap()),
        malformed: None,
    }
}

type Labels = Vec<(String, String)>;

/// One parsed sample: family name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

fn metric_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
}

fn label_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !s.starts_with("__")
}

/// `{a="x",b="y"} rest`: the labels (unescaped) and what follows `}`.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    let mut labels = Vec::new();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !label_name_ok(name) {
            return Err(format!("bad label name '{name}'"));
        }
        let mut chars = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted value")?
            .chars();
        let mut value = String::new();
        loop {
            match chars.next().ok_or("unterminated value")? {
                '"' => break,
                '\\' => match chars.next().ok_or("dangling \\")? {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                '\n' => return Err("raw newline in a value".into()),
                c => value.push(c),
            }
        }
        labels.push((name.to_string(), value));
        rest = chars.as_str();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Checks `text` the way the 0.0.4 format demands (and a bit more): every
/// line a HELP, TYPE or sample; names and label names valid; HELP and TYPE at
/// most once per family and before its samples; a family's samples together;
/// no series twice; counters named *_total. Returns the samples.
fn check_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current = String::new();
    let mut series = HashSet::new();
    let mut samples = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut f = rest.splitn(3, ' ');
            let (what, name, arg) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            if !metric_name_ok(name) {
                return Err(format!("bad name in '{line}'"));
            }
            if finished.contains(name) || current == name {
                return Err(format!("{what:?} of {name} after its samples"));
            }
            let fresh = match what {
                Some("HELP") => help.insert(name.to_string()),
                Some("TYPE") => {
                    if !["counter", "gauge", "untyped", "histogram", "summary"].contains(&arg) {
                        return Err(format!("bad type '{arg}'"));
                    }
                    if arg == "counter" && !name.ends_with("_total") {
                        return Err(format!("counter {name} not named *_total"));
                    }
                    types.insert(name.to_string(), arg.to_string()).is_none()
                }
                _ => return Err(format!("stray comment '{line}'")),
            };
            if !fresh {
                return Err(format!("{what:?} of {name} twice"));
            }
            continue;
        }
        let end = line.find(['{', ' ']).ok_or(format!("no value: '{line}'"))?;
        let name = &line[..end];
        if !metric_name_ok(name) {
            return Err(format!("bad metric name '{name}'"));
        }
        let (labels, rest) = if line[end..].starts_with('{') {
            parse_labels(&line[end..])?
        } else {
            (Vec::new(), &line[end..])
        };
        let value: f64 = rest
            .strip_prefix(' ')
            .and_then(|v| v.parse().ok())
            .ok_or(format!("bad value in '{line}'"))?;
        if name != current {
            if finished.contains(name) {
                return Err(format!("samples of {name} are not together"));
            }
            finished.insert(std::mem::replace(&mut current, name.to_string()));
        }
        if !types.contains_key(name) || !help.contains(name) {
            return Err(format!("{name} without HELP and TYPE before it"));
        }
        let mut key = labels.clone();
        key.sort();
        if !series.insert((name.to_string(), key)) {
            return Err(format!("series twice: '{line}'"));
        }
        samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn find<'a>(s: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.iter().find(|x| {
        x.name == name
            && labels
                .iter()
                .all(|(k, v)| x.labels.iter().any(|(a, b)| a == k && b == v))
    })
}

/// Everything the engine and netfront write (every field non-zero and
/// distinct), and a profile line as the kernel writes it.
fn full_line() -> String {
    let px = proxy::engine::Stats {
        accepted: 11,
        active: 2,
        refused: 3,
        upstream_failures: 4,
        client_resets: 5,
        upstream_resets: 6,
        timeouts: 7,
        completed: 8,
        bytes_up: 1 << 40,
        bytes_down: 10,
        buf_bytes: 12,
        buf_peak: 13,
        garp: 14,
        drain_resets: 15,
    };
    let nf = netfront::Stats {
        rx_frames: 101,
        rx_drop_error: 1,
        rx_drop_bad_id: 2,
        rx_drop_bad_len: 4,
        rx_drop_multislot: 8,
        rx_drop_extra_info: 16,
        rx_drop_csum: 32,
        rx_csum_bad: 64,
        tx_error: 128,
        tx_drop_bad_len: 256,
        tx_gso_frames: 9,
        ..Default::default()
    };
    format!(
        "{px} {nf} cpu_nic_ms=2 cpu_engine_ms=1234 cpu_xs_ms=0 cpu_sleep_ms=1 cpu_busy_ms=1237 \
         cpu_blocked_ms=40 cpu_steal_ms=3 cpu_loops=3 cpu_wakeups=1 xen_notifies=5"
    )
}

#[test]
fn every_key_the_guest_writes_is_mapped() {
    let line = full_line();
    let c = Counters::parse(&line).unwrap();
    let unmapped: Vec<&str> =
        c.0.iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| map_of(k).is_none())
            .collect();
    assert!(unmapped.is_empty(), "not in KEYS: {unmapped:?}");
    // The README's table names the profile and platform keys (the kernel
    // crate does not build on the host): those are mapped too.
    let readme = include_str!("../../../README.md");
    let table = &readme[readme.find("### The stats line").unwrap()..];
    for row in table
        .lines()
        .filter(|l| l.starts_with("| `cpu_") || l.starts_with("| `xen_"))
    {
        let keys = row.rsplit('|').nth(1).unwrap();
        for k in keys.split(['`', ' ']).filter(|k| k.contains('_')) {
            assert!(map_of(k).is_some(), "README key {k} not in KEYS");
            assert!(line.contains(&format!(" {k}=")), "full_line lacks {k}");
        }
    }
    // And nothing in KEYS that the guest does not write (a misspelt key).
    for (k, _) in KEYS {
        assert!(
            c.get(k).is_some(),
            "KEYS has {k}, the guest never writes it"
        );
    }
}

#[test]
fn families_are_well_named_and_series_distinct() {
    let mut seen = HashSet::new();
    for (key, map) in KEYS {
        let Map::To { family, label, .. } = map else {
            continue;
        };
        assert!(
            metric_name_ok(family.name) && family.name.starts_with("miniproxy_"),
            "{}",
            family.name
        );
        assert_eq!(
            family.kind == Kind::Counter,
            family.name.ends_with("_total"),
            "{}",
            family.name
        );
        assert!(!family.help.is_empty());
        if let Some((l, _)) = label {
            assert!(
                label_name_ok(l) && !["instance", "domid"].contains(l),
                "{key}: {l}"
            );
        }
        assert!(
            seen.insert((family.name, *label)),
            "{key} maps to a series another key has"
        );
    }
}

#[test]
fn output_is_valid_exposition_with_every_value() {
    let line = full_line();
    let text = render(&[
        row("a", Some(3), Some(&line)),
        row("b", Some(4), Some("px_accepted=1")),
    ]);
    let s = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let a = |name: &str, l: &[(&str, &str)]| {
        let mut labels = vec![("instance", "a"), ("domid", "3")];
        labels.extend_from_slice(l);
        find(&s, name, &labels)
            .unwrap_or_else(|| panic!("no {name} {l:?}\n{text}"))
            .value
    };
    assert_eq!(a("miniproxy_connections_accepted_total", &[]), 11.0);
    assert_eq!(a("miniproxy_connections_active", &[]), 2.0);
    assert_eq!(
        a("miniproxy_bytes_total", &[("direction", "up")]),
        (1u64 << 40) as f64
    );
    assert_eq!(a("miniproxy_bytes_total", &[("direction", "down")]), 10.0);
    assert_eq!(
        a("miniproxy_connection_resets_total", &[("side", "upstream")]),
        6.0
    );
    assert_eq!(a("miniproxy_buffer_peak_bytes", &[]), 13.0);
    assert_eq!(
        a(
            "miniproxy_netfront_drops_total",
            &[("reason", "rx_csum_bad")]
        ),
        64.0
    );
    assert_eq!(
        a(
            "miniproxy_netfront_offload_total",
            &[("kind", "tx_gso_frames")]
        ),
        9.0
    );
    assert_eq!(
        a("miniproxy_cpu_seconds_total", &[("part", "engine")]),
        1.234
    );
    assert!(text.contains("part=\"engine\"} 1.234\n"), "{text}");
    assert_eq!(a("miniproxy_cpu_steal_seconds_total", &[]), 0.003);
    assert_eq!(a("miniproxy_xen_notifies_total", &[]), 5.0);
    assert_eq!(find(&s, "miniproxy_instances", &[]).unwrap().value, 2.0);
    // b wrote one key: one sample, and none of a's families under its name.
    assert_eq!(
        s.iter()
            .filter(|x| x.labels.contains(&("instance".into(), "b".into())))
            .count(),
        1
    );
    // Every sample of a has the base labels and each exported key gave one sample.
    let c = Counters::parse(&line).unwrap();
    let exported =
        c.0.iter()
            .filter(|(k, _)| matches!(map_of(k), Some(Map::To { .. })))
            .count();
    assert_eq!(
        s.iter()
            .filter(|x| x.labels.contains(&("domid".into(), "3".into())))
            .count(),
        exported
    );
    assert!(!text.contains("unmapped"), "{text}");
}

#[test]
fn the_sums_left_out_are_the_sums_of_what_is_exported() {
    let line = full_line();
    let c = Counters::parse(&line).unwrap();
    let s = check_exposition(&render(&[row("a", Some(3), Some(&line))])).unwrap();
    let sum = |name: &str, label: &str, prefix: &str| -> u64 {
        s.iter()
            .filter(|x| {
                x.name == name
                    && x.labels
                        .iter()
                        .any(|(k, v)| k == label && v.starts_with(prefix))
            })
            .map(|x| x.value as u64)
            .sum()
    };
    assert_eq!(
        c.get("px_resets"),
        Some(sum("miniproxy_connection_resets_total", "side", ""))
    );
    assert_eq!(
        c.get("nf_rx_drops"),
        Some(sum("miniproxy_netfront_drops_total", "reason", "rx_"))
    );
    assert_eq!(
        c.get("nf_tx_drops"),
        Some(sum("miniproxy_netfront_drops_total", "reason", "tx_"))
    );
    let cpu: f64 = s
        .iter()
        .filter(|x| x.name == "miniproxy_cpu_seconds_total")
        .map(|x| x.value)
        .sum();
    assert_eq!(c.get("cpu_busy_ms"), Some((cpu * 1000.0).round() as u64));
    let sums: Vec<&str> = KEYS
        .iter()
        .filter(|(_, m)| matches!(m, Map::Sum))
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        sums,
        ["px_resets", "nf_rx_drops", "nf_tx_drops", "cpu_busy_ms"]
    );
}

#[test]
fn label_values_are_escaped() {
    let name = "a\"b\\c\nd}e,f=g";
    let text = render(&[row(name, Some(1), Some("px_accepted=2"))]);
    assert!(
        text.contains("instance=\"a\\\"b\\\\c\\nd}e,f=g\""),
        "{text}"
    );
    let s = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        find(
            &s,
            "miniproxy_connections_accepted_total",
            &[("instance", name)]
        )
        .unwrap()
        .value,
        2.0
    );
    assert_eq!(escape_label("plain"), "plain");
    assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
}

#[test]
fn unknown_keys_are_exported_untyped_with_their_name() {
    let text = render(&[row(
        "n",
        Some(9),
        Some("px_accepted=1 nf_future_thing=42 zz=7"),
    )]);
    let s = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        text.contains("# TYPE miniproxy_unmapped_stat untyped\n"),
        "{text}"
    );
    assert_eq!(
        find(
            &s,
            "miniproxy_unmapped_stat",
            &[("instance", "n"), ("key", "nf_future_thing")]
        )
        .unwrap()
        .value,
        42.0
    );
    assert_eq!(
        find(&s, "miniproxy_unmapped_stat", &[("key", "zz")])
            .unwrap()
            .value,
        7.0
    );
}

#[test]
fn instances_without_stats_are_counted_but_have_no_samples() {
    let text = render(&[row("s", None, None), row("t", Some(2), None)]);
    assert_eq!(
        text,
        "# HELP miniproxy_instances Instances started by miniproxy spawn that exist now (running or starting).\n\
         # TYPE miniproxy_instances gauge\nminiproxy_instances 2\n"
    );
    let text = render(&[]);
    assert_eq!(check_exposition(&text).unwrap().len(), 1);
}

#[test]
fn the_checker_catches_what_it_is_for() {
    for bad in [
        "x_total 1\n",
        "# HELP a x\n# TYPE a gauge\na 1\n# HELP a y\n",
        "# HELP a x\n# TYPE a gauge\n# TYPE a gauge\na 1\n",
        "# HELP a x\n# TYPE a gauge\na{l=\"1\"} 1\n# HELP b x\n# TYPE b gauge\nb 1\na{l=\"2\"} 1\n",
        "# HELP a x\n# TYPE a gauge\na 1\na 2\n",
        "# HELP a x\n# TYPE a gauge\na{l=\"\\q\"} 1\n",
        "# HELP a x\n# TYPE a gauge\na{1l=\"x\"} 1\n",
        "# HELP a x\n# TYPE a gauge\na one\n",
        "# HELP a x\n# TYPE a counter\na 1\n",
        "# HELP 1a x\n",
    ] {
        assert!(check_exposition(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_textfile_is_replaced_whole() {
    let dir = std::env::temp_dir().join(format!("miniproxy-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_textfile(&dir, "one\n").unwrap();
    write_textfile(&dir, "two\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("miniproxy.prom")).unwrap(),
        "two\n"
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["miniproxy.prom"]);
    let e = write_textfile(&dir.join("nosuch"), "x").unwrap_err();
    assert!(
        e.starts_with("cannot write ") && e.contains("nosuch/miniproxy.prom"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
