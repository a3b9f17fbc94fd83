//! `miniproxy-bench`: throughput and connection-rate figures of the engine.
//! A benchmark, not a test: it prints figures and ratios and never fails on time.
//!
//! 1. In memory: the engine between two smoltcp hosts on the simulated network
//!    (zero delay), new connections/s and MB/s, over the wall-clock time of the
//!    whole simulation and over the time spent in the engine's polls alone.
//! 2. Over TAP (root): real Linux TCP through `miniproxy-tap`, HAProxy (`mode
//!    tcp`) and socat in the same namespaces, plus the direct path; each figure and
//!    the ratios.
//! 3. Slow start on a 50 ms RTT path (a 25 ms each-way delay line between the
//!    proxies and the server): time to upload/download through each proxy,
//!    showing what smoltcp's 2 KiB initial congestion window costs against Linux.
//!
//! ```text
//! cargo build --release -p proxy --features std,testing --bins
//! sudo target/release/miniproxy-bench [--quick] [--no-tap]
//! ```
#![forbid(unsafe_code)]

use std::time::Instant as StdInstant;

use hostnet::testbed::*;
use proxy::config::Config;
use proxy::engine::Engine;
use proxy::sim::{mac, pattern, Close, Host, Link, Net, Serve, World};
use smoltcp::time::Duration;
use smoltcp::wire::{HardwareAddress, Ipv4Address, Ipv4Cidr};

const P: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

fn nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<StdInstant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(StdInstant::now).elapsed().as_nanos() as u64
}

fn world(extra: &str, serve: Serve, buf: usize, offload: bool) -> World {
    let cfg = Config::parse(&format!(
        "ip=10.0.0.2/24 rule=reverse:80:10.0.0.20:8080 mem=1g {extra}"
    ))
    .expect("bench config");
    let mut net = Net::new(1);
    let pp = net.add_port(Link::default());
    net.set_offload(pp, offload);
    let cp = net.add_port(Link::default());
    let sp = net.add_port(Link::default());
    let now = net.now();
    let proxy = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        1,
        1 << 30,
        &mut net.port(pp),
        now,
    )
    .expect("engine");
    let mut client = Host::new(
        &mut net,
        cp,
        10,
        Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 10), 24),
        None,
        buf,
    );
    client.keep = false;
    let mut server = Host::new(
        &mut net,
        sp,
        20,
        Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 20), 24),
        None,
        buf,
    );
    server.keep = false;
    server.listen(8080, 128, serve);
    World {
        net,
        proxy,
        proxy_port: pp,
        hosts: vec![client, server],
        proxy_polls: 0,
        clock: Some(nanos),
        proxy_nanos: 0,
    }
}

/// New connections per second (wall clock): `n` request/response exchanges of
/// 100 bytes, `par` at a time. Only the engine's share of the time can be
/// separated from the two simulated hosts', so the whole simulation is timed.
fn mem_conn_rate(n: usize, par: usize) -> (f64, f64, u64) {
    let mut w = world(
        "max_conns=512 backlog=64 buf=16k",
        Serve::Source { len: 100, seed: 2 },
        16 * 1024,
        false,
    );
    let t = StdInstant::now();
    let mut done = 0;
    while done < n {
        let k = par.min(n - done);
        let now = w.now();
        for _ in 0..k {
            w.hosts[0].connect((P, 80), b"GET".to_vec(), Close::AfterSend, now);
        }
        let ok = w.run_until(Duration::from_secs(60), |w| {
            w.hosts.iter().all(|h| h.flows.iter().all(|f| f.done))
        });
        assert!(ok, "in-memory rate run stalled: {}", w.proxy.stats());
        w.hosts[0].reclaim();
        w.hosts[1].reclaim();
        done += k;
    }
    let secs = t.elapsed().as_secs_f64();
    w.run_until(Duration::from_secs(60), |w| w.proxy.stats().active == 0);
    let st = w.proxy.stats();
    let bad = w.hosts[0]
        .flows
        .iter()
        .filter(|f| f.reset || f.received_len != 100)
        .count();
    assert_eq!(bad, 0, "in-memory rate: {bad} connections failed");
    (
        n as f64 / secs,
        n as f64 / (w.proxy_nanos as f64 / 1e9),
        st.completed,
    )
}

/// MB/s (wall clock) of one download of `len` bytes through the engine, and
/// the frames the engine handed its device per MB. With `offload` the engine's
/// device has TSO and checksum offload (the simulated wire segments, and
/// merges received segments, like netback/Linux GSO and GRO).
fn mem_bulk(len: usize, buf: usize, offload: bool) -> (f64, f64, f64) {
    let mut w = world(
        &format!("buf={}k", buf / 1024),
        Serve::Source { len, seed: 3 },
        buf,
        offload,
    );
    let _ = pattern(0, 0);
    let now = w.now();
    let f = w.hosts[0].connect((P, 80), b"GET".to_vec(), Close::AfterSend, now);
    let t = StdInstant::now();
    let ok = w.run_until(Duration::from_secs(3600), |w| w.hosts[0].flows[f].done);
    let secs = t.elapsed().as_secs_f64();
    assert!(
        ok && w.hosts[0].flows[f].received_len == len,
        "in-memory bulk failed"
    );
    let frames = w.net.port_stats(w.proxy_port).tx_frames as f64;
    (
        len as f64 / secs / 1e6,
        len as f64 / (w.proxy_nanos as f64 / 1e9) / 1e6,
        frames / (len as f64 / 1e6),
    )
}

fn field(out: &str, key: &str) -> f64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn tool(tb: &Testbed, to: &str, args: &[&str]) -> Option<String> {
    let t = tb.tool();
    let mut all = vec!["client", to, "--timeout", "60"];
    all.extend_from_slice(args);
    let (ok, out) = tb.run("cl", &t, &all);
    if ok {
        Some(out)
    } else {
        println!("  ({to} {args:?} failed: {})", out.trim());
        None
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

fn tap_bench(quick: bool) -> Result<(), String> {
    let bins = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .ok_or("no exe dir")?
        .to_path_buf();
    let mut tb = Testbed::new("b", bins)?;
    tb.start_server(8080)?;
    tb.start_proxy(
        "ip=10.9.0.2/24 rule=reverse:80:10.9.0.20:8080 max_conns=1024 backlog=64 buf=64k mem=512m loglevel=warn",
    )?;
    let have_haproxy = tb.start_haproxy().is_ok();
    let have_socat = tb.start_socat().is_ok();
    let mut targets = vec![
        ("direct", format!("{SERVER_IP}:8080")),
        ("miniproxy", format!("{PROXY_IP}:80")),
    ];
    if have_haproxy {
        targets.push(("haproxy", format!("{LINUX_PROXY_IP}:80")));
    }
    if have_socat {
        targets.push(("socat", format!("{LINUX_PROXY_IP}:81")));
    }
    let conns = if quick { "500" } else { "3000" };
    let bulk = if quick { "50m" } else { "200m" };
    println!("\n== over TAP: real Linux TCP, client and server namespaces, same bridge");
    println!(
        "{:<10} {:>12} {:>14} {:>14}",
        "path", "conns/s", "download MB/s", "upload MB/s"
    );
    let mut rows = Vec::new();
    for (name, addr) in &targets {
        // Warm up ARP and the listen pools.
        let _ = tool(
            &tb,
            addr,
            &[
                "--op",
                "get",
                "--len",
                "1k",
                "--conns",
                "20",
                "--parallel",
                "10",
            ],
        );
        let rate = tool(
            &tb,
            addr,
            &[
                "--op",
                "get",
                "--len",
                "100",
                "--conns",
                conns,
                "--parallel",
                "32",
            ],
        )
        .map_or(f64::NAN, |o| field(&o, "conns_per_s"));
        let down = tool(&tb, addr, &["--op", "get", "--len", bulk])
            .map_or(f64::NAN, |o| field(&o, "mbytes_per_s"));
        let up = tool(&tb, addr, &["--op", "put", "--len", bulk])
            .map_or(f64::NAN, |o| field(&o, "mbytes_per_s"));
        println!("{name:<10} {rate:>12.0} {down:>14.1} {up:>14.1}");
        rows.push((*name, rate, down, up));
    }
    let get = |n: &str| rows.iter().find(|r| r.0 == n).copied();
    if let Some(m) = get("miniproxy") {
        for other in ["haproxy", "socat", "direct"] {
            if let Some(o) = get(other) {
                println!(
                    "ratio miniproxy/{other}: conns/s {}  download {}  upload {}",
                    ratio(m.1, o.1),
                    ratio(m.2, o.2),
                    ratio(m.3, o.3)
                );
            }
        }
    }
    println!("miniproxy-tap {}", tb.stop_proxy()?);

    // Slow start over a 50 ms RTT path between the proxies and the server.
    tb.insert_delay(25)?;
    println!("\n== 50 ms RTT between proxy and server (delay line 25 ms each way), client next to the proxy");
    println!("   mean time per connection (connect + transfer + close), 5 sequential connections");
    let sizes = ["16k", "64k", "256k", "1m"];
    print!("{:<18}", "path");
    for s in sizes {
        print!(" {:>9} {:>9}", format!("put {s}"), format!("get {s}"));
    }
    println!();
    let mut paths: Vec<(String, String, Option<&str>)> = Vec::new();
    paths.push(("direct".into(), format!("{SERVER_IP}:8080"), None));
    for cc in ["reno", "none"] {
        paths.push((
            format!("miniproxy cc={cc}"),
            format!("{PROXY_IP}:80"),
            Some(cc),
        ));
    }
    if have_haproxy {
        paths.push(("haproxy".into(), format!("{LINUX_PROXY_IP}:80"), None));
    }
    let mut table = Vec::new();
    for (name, addr, cc) in &paths {
        if let Some(cc) = cc {
            tb.start_proxy(&format!(
                "ip=10.9.0.2/24 rule=reverse:80:10.9.0.20:8080 max_conns=64 buf=256k mem=512m loglevel=warn cc={cc}"
            ))?;
        }
        let _ = tool(&tb, addr, &["--op", "get", "--len", "1k", "--conns", "2"]);
        print!("{name:<18}");
        let mut row = Vec::new();
        for s in sizes {
            for op in ["put", "get"] {
                let ms = tool(&tb, addr, &["--op", op, "--len", s, "--conns", "5"])
                    .map_or(f64::NAN, |o| field(&o, "secs") * 1000.0 / 5.0);
                print!(" {:>7.0}ms", ms);
                row.push(ms);
            }
        }
        println!();
        if cc.is_some() {
            tb.stop_proxy()?;
        }
        table.push((name.clone(), row));
    }
    if let Some(h) = table.iter().find(|r| r.0 == "haproxy") {
        for m in table.iter().filter(|r| r.0.starts_with("miniproxy")) {
            print!("{:<18}", format!("{} vs hap", &m.0[10..]));
            for (a, b) in m.1.iter().zip(h.1.iter()) {
                print!(" {:>+7.1}RT", (a - b) / 50.0);
            }
            println!();
        }
        println!("   (RT = extra round trips of 50 ms through miniproxy compared with HAProxy)");
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let no_tap = args.iter().any(|a| a == "--no-tap");
    if let Some(a) = args.iter().find(|a| *a != "--quick" && *a != "--no-tap") {
        eprintln!("miniproxy-bench: unknown argument '{a}' (expected --quick, --no-tap)");
        std::process::exit(2);
    }
    println!("== in memory: engine between two smoltcp hosts, simulated switch, zero delay (wall clock, whole simulation)");
    let (n, par) = if quick { (1000, 64) } else { (5000, 64) };
    let (cps, engine_cps, completed) = mem_conn_rate(n, par);
    println!(
        "in-memory new connections/s: {cps:.0} whole simulation, {engine_cps:.0} counting the engine's time only \
         ({completed} completed, {par} at a time, 100-byte responses)"
    );
    let len = if quick { 50 << 20 } else { 200 << 20 };
    for (buf, offload) in [
        (64 * 1024, false),
        (256 * 1024, false),
        (64 * 1024, true),
        (256 * 1024, true),
    ] {
        let (mbps, engine_mbps, frames) = mem_bulk(len, buf, offload);
        let off = if offload { ", offload" } else { "" };
        println!(
            "in-memory download MB/s: {mbps:.1} whole simulation, {engine_mbps:.1} counting the engine's time only \
             ({} MB, buf={}k{off}; the engine sent {frames:.0} frames/MB)",
            len >> 20,
            buf / 1024
        );
    }
    if no_tap {
        return;
    }
    if !is_root() {
        println!("\n(over-TAP part skipped: needs root for network namespaces)");
        return;
    }
    if let Err(e) = tap_bench(quick) {
        println!("over-TAP part failed: {e}");
    }
}
