//! `miniproxy metrics` end to end on the host, with the fake `xl` and
//! `xenstore-*` (tests/fakexen/): two spawned instances, one with every
//! counter the engine and netfront write plus a key from the future; the
//! output passes Prometheus's own `promtool check metrics` (skipped, saying
//! so, when promtool is not installed: Debian's `prometheus` package has it),
//! and `--textfile` writes the same text atomically.

mod rig;

use rig::{err, out, Rig};
use std::process::{Command, Output, Stdio};

/// Every counter the engine and netfront write, a profile line, and a key
/// no guest writes yet.
fn full_line() -> String {
    let px = proxy::engine::Stats {
        accepted: 7,
        bytes_up: 123456,
        bytes_down: 1 << 33,
        client_resets: 1,
        buf_peak: 65536,
        ..Default::default()
    };
    let nf = netfront::Stats {
        rx_frames: 99,
        rx_drop_bad_len: 2,
        ..Default::default()
    };
    format!(
        "{px} {nf} cpu_nic_ms=2 cpu_engine_ms=1500 cpu_xs_ms=0 cpu_sleep_ms=1 cpu_busy_ms=1503 \
         cpu_blocked_ms=40 cpu_steal_ms=3 cpu_loops=3 cpu_wakeups=1 xen_notifies=5 px_future=4"
    )
}

/// `promtool check metrics` of `text`: None when promtool is not installed.
fn promtool(text: &str) -> Option<Output> {
    use std::io::Write;
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap())
}

#[test]
fn metrics_of_two_instances_pass_promtool_and_the_textfile_matches() {
    let r = Rig::new("two");
    r.spawn("a", "10.0.0.5/24");
    r.spawn("b", "10.0.0.6/24");
    r.set_stats(1, &full_line());

    let o = r.run(&["metrics"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    for want in [
        "miniproxy_instances 2\n",
        "miniproxy_bytes_total{instance=\"a\",domid=\"1\",direction=\"up\"} 123456\n",
        "miniproxy_bytes_total{instance=\"a\",domid=\"1\",direction=\"down\"} 8589934592\n",
        "miniproxy_netfront_drops_total{instance=\"a\",domid=\"1\",reason=\"rx_bad_len\"} 2\n",
        "miniproxy_cpu_seconds_total{instance=\"a\",domid=\"1\",part=\"engine\"} 1.500\n",
        "miniproxy_connections_accepted_total{instance=\"b\",domid=\"2\"} 1\n",
        "# TYPE miniproxy_unmapped_stat untyped\n",
        "miniproxy_unmapped_stat{instance=\"a\",domid=\"1\",key=\"px_future\"} 4\n",
    ] {
        assert!(text.contains(want), "no '{want}' in\n{text}");
    }
    // b has no byte counters in its line: no sample for it.
    assert!(
        !text.contains("miniproxy_bytes_total{instance=\"b\""),
        "{text}"
    );

    match promtool(&text) {
        None => {
            println!("SKIP promtool check: promtool is not installed (apt-get install prometheus)")
        }
        Some(p) => assert!(
            p.status.success(),
            "promtool check metrics failed: {}{}\n{text}",
            out(&p),
            err(&p)
        ),
    }
    // promtool is not a pushover: a counter without _total fails it.
    if let Some(p) = promtool("# HELP x_bytes b\n# TYPE x_bytes counter\nx_bytes 1\n") {
        assert!(!p.status.success(), "promtool took a bad counter name");
    }

    let prom = r.dir.join("prom");
    std::fs::create_dir_all(&prom).unwrap();
    let o = r.run(&["metrics", "--textfile", prom.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "");
    assert_eq!(
        std::fs::read_to_string(prom.join("miniproxy.prom")).unwrap(),
        text
    );
    let files: Vec<_> = std::fs::read_dir(&prom)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["miniproxy.prom"]);

    // After a stop the instance's series are gone from the next file.
    let o = r.run(&["stop", "--json", "a"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with("{\"result\":\"stopped\",\"name\":\"a\",\"domid\":1,\"ms\":"),
        "{}",
        out(&o)
    );
    let o = r.run(&["metrics", &format!("--textfile={}", prom.display())]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let after = std::fs::read_to_string(prom.join("miniproxy.prom")).unwrap();
    assert!(after.contains("miniproxy_instances 1\n"), "{after}");
    assert!(!after.contains("instance=\"a\""), "{after}");
}

#[test]
fn bad_invocations_and_a_missing_directory_are_errors() {
    let r = Rig::new("bad");
    let o = r.run(&["metrics", "--textfile"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("--textfile needs a directory"),
        "{}",
        err(&o)
    );
    let o = r.run(&["metrics", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("unknown argument '--json'"), "{}", err(&o));
    let missing = r.dir.join("nosuch");
    let o = r.run(&["metrics", "--textfile", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("not a directory"), "{}", err(&o));
    let o = r.run(&["metrics", "--help"]);
    assert!(out(&o).starts_with("Usage: miniproxy metrics [--textfile DIR]"));
    // No instances: a valid file that says so.
    let o = r.run(&["metrics"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).ends_with("\nminiproxy_instances 0\n"),
        "{}",
        out(&o)
    );
}
