//! `miniproxy-tap` on a real TAP device, with real Linux TCP clients and server
//! in network namespaces this test creates. Needs root (CI runs as root); it
//! fails rather than skips without it.
#![forbid(unsafe_code)]

use hostnet::testbed::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Build `miniproxy-tap` and `miniproxy-tcptool` (features `std`, `testing`) with the same
/// profile as the caller, into their own target directory so that the cargo
/// running the caller is not waited on. Returns the directory of the binaries.
fn build_bins(target_dir: &Path, release: bool) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--manifest-path",
        manifest,
        "-p",
        "proxy",
        "--features",
        "std,testing",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    cmd.env("CARGO_TARGET_DIR", target_dir);
    let out = cmd
        .output()
        .expect("running cargo build for the TAP runner");
    assert!(
        out.status.success(),
        "cargo build of the TAP runner failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join(if release { "release" } else { "debug" })
}

fn client(tb: &Testbed, to: &str, args: &[&str]) -> String {
    let tool = tb.tool();
    let mut all = vec!["client", to];
    all.extend_from_slice(args);
    let (ok, out) = tb.run("cl", &tool, &all);
    assert!(ok, "client {to} {args:?} failed:\n{out}");
    assert!(out.starts_with("ok "), "{out}");
    out
}

#[test]
fn linux_tcp_through_the_tap_runner() {
    assert!(
        is_root(),
        "this test creates network namespaces and a TAP device: run it as root"
    );
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tap-runner");
    let bins = build_bins(&target, !cfg!(debug_assertions));
    let mut tb = Testbed::new("t", bins).expect("testbed");
    tb.start_server(8080).unwrap();
    tb.start_server(7000).unwrap();
    tb.start_proxy(
        "ip=10.9.0.2/24 gw=10.9.0.20 rule=reverse:80:10.9.0.20:8080 rule=reverse:81:10.9.0.20:9 \
         rule=transparent:7000 max_conns=256 backlog=16 buf=64k idle_timeout=60s connect_timeout=10s mem=128m",
    )
    .unwrap();
    let p = format!("{PROXY_IP}:80");

    // Byte-exact both ways: 1 B and 1 MB echoed, 10 MB each way.
    client(&tb, &p, &["--op", "echo", "--len", "1", "--conns", "5"]);
    client(
        &tb,
        &p,
        &[
            "--op",
            "echo",
            "--len",
            "1m",
            "--conns",
            "20",
            "--parallel",
            "10",
        ],
    );
    client(&tb, &p, &["--op", "get", "--len", "10m"]);
    client(&tb, &p, &["--op", "put", "--len", "10m"]);
    // 200 concurrent connections. (The Linux server's listen backlog is std's 128:
    // the SYNs it drops are retransmitted by the proxy, well within connect_timeout.)
    let out = client(
        &tb,
        &p,
        &[
            "--op",
            "get",
            "--len",
            "100k",
            "--conns",
            "200",
            "--parallel",
            "200",
        ],
    );
    assert!(out.contains("bytes_down=20480000"), "{out}");
    // Upstream port closed: the client is reset.
    client(
        &tb,
        &format!("{PROXY_IP}:81"),
        &["--op", "get", "--len", "10", "--expect", "reset"],
    );
    // Transparent: each destination is reached at its own address.
    for ip in FAR_IPS {
        let dest = format!("{ip}:7000");
        client(
            &tb,
            &dest,
            &["--op", "who", "--expect", &dest, "--conns", "3"],
        );
        client(
            &tb,
            &dest,
            &["--op", "echo", "--len", "300k", "--conns", "2"],
        );
    }

    // Let the last connections close, then stop the runner and read its stats.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let stats = tb.stop_proxy().unwrap();
    eprintln!("{stats}");
    for want in ["active=0", "refused=0", "upstream_fail=1", "resets=0"] {
        assert!(stats.contains(want), "expected {want} in: {stats}");
    }
    // 5 + 20 + 1 + 1 + 200 + 1 + 3 * (3 + 2) connections.
    assert!(stats.contains("accepted=243 "), "{stats}");
}
