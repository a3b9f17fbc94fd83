//! The memory budget: admission and the adaptive socket buffers.

use super::*;
use crate::engine::{EngineError, MemoryPlan};
use alloc::string::ToString;
use alloc::vec;

#[test]
fn memory_budget_refuses_and_says_what_fits() {
    let cfg = Config::parse(
        "ip=10.0.0.2/24 rule=reverse:80:10.0.0.1:8080 max_conns=256 buf=64k buf_min=16k",
    )
    .unwrap();
    let plan = MemoryPlan::for_config(&cfg);
    assert_eq!(plan.max_sockets, 2 * 256 + 2 * 4);
    // Admission is at buf_min: buf only changes the (informational) maximum.
    assert!(plan.total > 520 * 32 * 1024);
    assert_eq!(plan.per_socket, plan.socket_overhead + 2 * 16 * 1024);
    assert_eq!(plan.per_socket_max, plan.socket_overhead + 2 * 64 * 1024);
    assert_eq!(plan.total_max - plan.total, 520 * 2 * 48 * 1024);
    assert_eq!(plan.without_buffers(), plan.total - 520 * 2 * 16 * 1024);
    let mut big = cfg.clone();
    big.buf = 16 << 20;
    assert_eq!(MemoryPlan::for_config(&big).total, plan.total);
    let budget = 4 << 20;
    let mut net = Net::new(1);
    let p = net.add_port(Link::default());
    let now = net.now();
    let err = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        1,
        budget,
        &mut net.port(p),
        now,
    )
    .unwrap_err();
    let EngineError::TooBig {
        fit_max_conns,
        fit_buf_min,
        needed,
        ..
    } = err.clone()
    else {
        panic!("{err}")
    };
    assert_eq!(needed, plan.total);
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "engine: max_conns=256 with buf_min=16k needs {} but the memory budget is 4m; \
             would fit: max_conns={fit_max_conns} with buf_min=16k, or buf_min={}k with max_conns=256",
            crate::engine::tests_fmt_size(needed),
            fit_buf_min / 1024
        )
    );
    // The suggestions fit and are the largest that do.
    let mut c2 = cfg.clone();
    c2.max_conns = fit_max_conns;
    assert!(MemoryPlan::for_config(&c2).total <= budget);
    c2.max_conns = fit_max_conns + 1;
    assert!(MemoryPlan::for_config(&c2).total > budget);
    let mut c3 = cfg.clone();
    c3.buf_min = fit_buf_min;
    assert!(MemoryPlan::for_config(&c3).total <= budget);
    c3.buf_min = fit_buf_min + 1024;
    assert!(MemoryPlan::for_config(&c3).total > budget);
    assert!(fit_max_conns > 50 && fit_max_conns < 256);
    assert!((2048..16 * 1024).contains(&fit_buf_min), "{fit_buf_min}");
    // And the suggested configs are accepted (a line naming them parses).
    for line in [
        format!("ip=10.0.0.2/24 rule=reverse:80:10.0.0.1:8080 max_conns={fit_max_conns} buf=64k buf_min=16k"),
        format!("ip=10.0.0.2/24 rule=reverse:80:10.0.0.1:8080 max_conns=256 buf=64k buf_min={}k", fit_buf_min / 1024),
    ] {
        let c = Config::parse(&line).unwrap();
        let e = Engine::new(&c, HardwareAddress::Ethernet(mac(2)), 1, budget, &mut net.port(p), now)
            .unwrap();
        assert!(e.buffer_budget() >= e.plan().max_sockets * 2 * c.buf_min);
        assert_eq!(e.buffer_budget(), budget - e.plan().without_buffers());
    }
    // With so little that not even buf_min=1k fits.
    let tiny = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        1,
        600 << 10,
        &mut net.port(p),
        now,
    )
    .unwrap_err();
    let EngineError::TooBig {
        fit_max_conns,
        fit_buf_min,
        ..
    } = tiny.clone()
    else {
        panic!("{tiny}")
    };
    assert_eq!(fit_buf_min, 0, "{tiny}");
    assert!(
        tiny.to_string().ends_with(&format!(
            "would fit: max_conns={fit_max_conns} with buf_min=16k"
        )),
        "{tiny}"
    );
}

/// The default profile's shape in a guest-sized budget: the guaranteed worst
/// case at buf_min plus `surplus` bytes.
fn budget_with_surplus(extra: &str, surplus: usize) -> usize {
    MemoryPlan::for_config(&reverse_config(extra)).total + surplus
}

#[test]
fn lone_connection_gets_buf_sized_windows() {
    // 4 MB down a 2 x 4 ms RTT path: the transfer is window-bound, so its
    // time shows the window the proxy advertises and uses.
    let run = |extra: &str, budget: usize| {
        let mut w = reverse_world(Setup {
            extra,
            serve: Serve::Source {
                len: 4 << 20,
                seed: 400,
            },
            client_link: Link::delay_ms(2),
            server_link: Link::delay_ms(2),
            host_buf: 256 * 1024,
            budget,
            ..Setup::default()
        });
        let f = client_connect(&mut w, b"GET".to_vec(), Close::AfterSend);
        let mut sizes = Vec::new();
        assert!(w.run_until(secs(60), |w| {
            check_memory(&w.proxy);
            sizes.extend(w.proxy.connection_buffers());
            all_done(w) && w.proxy.stats().active == 0
        }));
        let c = &w.hosts[0].flows[f];
        assert!(!c.reset && c.fin);
        assert_bytes(&c.received, &pattern(400, 4 << 20), "client received");
        sizes.sort();
        sizes.dedup();
        (c.t_done.unwrap() - c.t_start, sizes)
    };
    let adaptive = "max_conns=64 buf=64k buf_min=4k";
    // 1 MiB beyond the guarantee: plenty for one connection.
    let (t64, sizes) = run(adaptive, budget_with_surplus(adaptive, 1 << 20));
    assert_eq!(sizes, [(65536, 65536)]);
    // Fixed 16k buffers (the old default) for comparison.
    let (t16, sizes) = run("max_conns=64 buf=16k buf_min=16k", 1 << 30);
    assert_eq!(sizes, [(16384, 16384)]);
    // Window-bound: 4x the window, close to 4x the rate (slow start aside).
    assert!(
        t64 * 5 < t16 * 2,
        "64k windows took {t64}, 16k windows {t16}: expected over 2.5 times as fast"
    );
}

#[test]
fn max_conns_at_once_fit_the_budget_with_smaller_buffers() {
    let extra = "max_conns=64 buf=64k buf_min=4k";
    // No surplus at all (every socket at buf_min), and 512 KiB of it (a few
    // larger, the rest tapering to buf_min).
    for surplus in [0, 512 << 10] {
        let budget = budget_with_surplus(extra, surplus);
        let mut w = reverse_world(Setup {
            extra,
            server_backlog: 64,
            host_buf: 64 * 1024,
            budget,
            client_link: Link::delay_ms(1),
            ..Setup::default()
        });
        let mut want = Vec::new();
        for i in 0..64u64 {
            let data = pattern(500 + i, 100_000 + i as usize * 1000);
            want.push(data.clone());
            client_connect(&mut w, data, Close::AfterSend);
        }
        let mut peak = 0;
        let mut sizes = Vec::new();
        assert!(w.run_until(secs(120), |w| {
            check_memory(&w.proxy);
            let active = w.proxy.stats().active;
            if active > peak {
                peak = active;
                sizes = w.proxy.connection_buffers().collect();
            }
            all_done(w) && active == 0
        }));
        assert_eq!(peak, 64, "surplus {surplus}");
        for (i, f) in w.hosts[0].flows.iter().enumerate() {
            assert!(!f.reset && f.fin, "flow {i}");
            assert_bytes(&f.received, &want[i], &format!("flow {i}"));
        }
        let st = w.proxy.stats();
        assert_eq!((st.accepted, st.completed, st.refused), (64, 64, 0));
        let all: Vec<usize> = sizes.iter().flat_map(|&(a, b)| [a, b]).collect();
        let held: usize = all.iter().map(|s| 2 * s).sum();
        assert!(held <= w.proxy.buffer_budget());
        if surplus == 0 {
            assert!(all.iter().all(|&s| s == 4096), "{all:?}");
        } else {
            // The first connections got the listening sockets' equal share
            // (four share 512k: 128k per pair, 32k), the last ones buf_min,
            // and the peak used the budget.
            assert_eq!(all.iter().max(), Some(&32768), "{all:?}");
            assert!(all.contains(&4096), "{all:?}");
            assert!(all
                .iter()
                .all(|s| [4096, 8192, 16384, 32768, 65536].contains(s)));
            let max_sockets = w.proxy.plan().max_sockets;
            assert!(
                st.buf_peak > max_sockets * 2 * 4096 + surplus / 2,
                "peak {}",
                st.buf_peak
            );
        }
        assert!(st.buf_peak <= w.proxy.buffer_budget());
    }
}

#[test]
fn freed_budget_grows_small_spares_again() {
    let extra = "max_conns=32 buf=64k buf_min=4k";
    let mut w = reverse_world(Setup {
        extra,
        server_backlog: 32,
        // Enough for the listen pool at buf (each of its 4 listening sockets
        // and their partners: 4 x 60k beyond buf_min, a quarter of the
        // surplus), so a lone connection gets buf.
        budget: budget_with_surplus(extra, 1 << 20),
        ..Setup::default()
    });
    // A crowd: most sockets get small buffers.
    for i in 0..32u64 {
        client_connect(&mut w, pattern(600 + i, 20_000), Close::AfterSend);
    }
    let mut smallest = usize::MAX;
    assert!(w.run_until(secs(60), |w| {
        check_memory(&w.proxy);
        smallest = w
            .proxy
            .connection_buffers()
            .map(|(a, b)| a.min(b))
            .fold(smallest, usize::min);
        all_done(w) && w.proxy.stats().active == 0
    }));
    assert_eq!(smallest, 4096);
    w.hosts[0].reclaim();
    w.hosts[1].reclaim();
    // Alone again, a connection gets buf on both sides: small spares are
    // re-created larger, and at most spare_max of them are kept.
    for round in 0..3u64 {
        let data = pattern(700 + round, 300_000);
        let f = client_connect(&mut w, data.clone(), Close::AfterSend);
        let mut sizes = Vec::new();
        assert!(w.run_until(secs(30), |w| {
            check_memory(&w.proxy);
            sizes.extend(w.proxy.connection_buffers());
            all_done(w) && w.proxy.stats().active == 0
        }));
        assert_bytes(&w.hosts[0].flows[f].received, &data, "echo");
        sizes.dedup();
        assert_eq!(sizes, [(65536, 65536)], "round {round}");
    }
}

#[test]
fn failed_allocations_fall_back_to_smaller_buffers_then_refuse() {
    let mut w = reverse_world(Setup {
        extra: "buf=64k buf_min=4k connect_timeout=2s",
        ..Setup::default()
    });
    // A fragmented heap: nothing above 16k can be allocated. The listening
    // socket was made before (64k); the upstream socket falls back to 16k.
    w.proxy.set_alloc_limit(16 * 1024);
    let data = pattern(800, 200_000);
    let f = client_connect(&mut w, data.clone(), Close::Never);
    assert!(w.run_until(secs(5), |w| w.hosts[0].flows[f].received_len == data.len()));
    assert_bytes(&w.hosts[0].flows[f].received, &data, "echo");
    let sizes: Vec<_> = w.proxy.connection_buffers().collect();
    assert_eq!(sizes, [(65536, 16384)]);
    check_memory(&w.proxy);
    w.hosts[0].reclaim();
    // Not even buf_min: the connection is refused, nothing breaks.
    w.proxy.set_alloc_limit(2048);
    let before = w.proxy.stats().refused;
    let g = client_connect(&mut w, b"no memory".to_vec(), Close::AfterSend);
    assert!(w.run_until(secs(5), |w| w.hosts[0].flows[g].done));
    assert!(w.hosts[0].flows[g].reset);
    assert_eq!(w.proxy.stats().refused, before + 1);
    check_memory(&w.proxy);
    // Memory comes back: served again (after the allocation retry pause).
    w.proxy.set_alloc_limit(usize::MAX);
    w.run_for(Duration::from_millis(200));
    let h = client_connect(&mut w, b"again".to_vec(), Close::AfterSend);
    assert!(w.run_until(secs(5), |w| w.hosts[0].flows[h].done));
    assert_bytes(&w.hosts[0].flows[h].received, b"again", "after recovery");
    check_memory(&w.proxy);
}

/// Four reverse rules on the ports of the benchmark (80, 5201, 84 and 8000,
/// all to the server's 8080) with `backlog=4`: 16 listening sockets.
const FOUR_RULES: &str = "rule=reverse:5201:10.0.0.20:8080 rule=reverse:84:10.0.0.20:8080 \
    rule=reverse:8000:10.0.0.20:8080 max_conns=128 backlog=4 buf=64k buf_min=4k";

/// The listening sockets' buffer sizes, rule by rule.
fn listeners_per_rule(e: &Engine) -> Vec<Vec<usize>> {
    let mut v: Vec<Vec<usize>> = Vec::new();
    for (rule, size) in e.listener_buffers() {
        if v.len() <= rule {
            v.resize(rule + 1, Vec::new());
        }
        v[rule].push(size);
    }
    v
}

/// `64k×4 16k×1 4k×3`: how many connections have each size (both sides
/// have the same), largest first.
fn size_summary(sizes: &[(usize, usize)]) -> String {
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for &(c, u) in sizes {
        assert_eq!(c, u, "unmatched pair in {sizes:?}");
        match counts.iter_mut().find(|e| e.0 == c) {
            Some(e) => e.1 += 1,
            None => counts.push((c, 1)),
        }
    }
    counts.sort_by_key(|&(size, _)| core::cmp::Reverse(size));
    let parts: Vec<String> = counts
        .iter()
        .map(|&(s, n)| format!("{}k×{n}", s / 1024))
        .collect();
    parts.join(" ")
}

/// One download of `len` bytes through `port`: its time and the buffer
/// sizes its connection had.
fn download(w: &mut World, port: u16, len: usize, seed: u64) -> (Duration, Vec<(usize, usize)>) {
    let now = w.now();
    let f = w.hosts[0].connect((PROXY, port), b"GET".to_vec(), Close::AfterSend, now);
    let mut sizes = Vec::new();
    assert!(w.run_until(secs(60), |w| {
        check_memory(&w.proxy);
        sizes.extend(w.proxy.connection_buffers());
        all_done(w) && w.proxy.stats().active == 0
    }));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin, "port {port}");
    assert_bytes(&c.received, &pattern(seed, len), "client received");
    sizes.dedup();
    (c.t_done.unwrap() - c.t_start, sizes)
}

#[test]
fn every_rule_gets_the_same_listener_and_window_size() {
    // The benchmark's shape under Xen at memory=4: 288 sockets guaranteed
    // 4k each, and 600 KiB beyond. The old rule (each listening socket took
    // half of the surplus left, for itself and its partner) gave the first
    // rule's listeners 64k and the last rule's 4k.
    let budget = budget_with_surplus(FOUR_RULES, 600 << 10);
    let len = 256 << 10;
    let mut w = reverse_world(Setup {
        extra: FOUR_RULES,
        budget,
        serve: Serve::Source { len, seed: 900 },
        server_link: Link::delay_ms(10),
        server_backlog: 64,
        host_buf: 256 * 1024,
        ..Setup::default()
    });
    check_memory(&w.proxy);
    // 16 listening sockets share 600k: 37.5k per pair, 4 * (size - 4k) <=
    // 37.5k, 13.4k: 8k on the ladder, for every rule.
    let fair = vec![vec![8192; 4]; 4];
    assert_eq!(listeners_per_rule(&w.proxy), fair);
    assert_eq!(w.proxy.next_buffer_size(), 8192);

    // A window-bound download (a 20 ms round trip to the server) through the
    // first rule and through the last one: the same window, the same time
    // (after one through a middle rule, which resolves the addresses). The
    // client side starts at the fair size (the first download grows while
    // its window limits it, module `growth`; the upstream side of the later
    // ones is a grown spare of it, and growing further would leave the
    // listening sockets only buf_min), the same way through every rule.
    w.hosts[0].keep = true;
    assert_eq!(download(&mut w, 84, len, 900).1[0], (8192, 8192));
    assert_eq!(listeners_per_rule(&w.proxy), fair);
    let (t_first, first) = download(&mut w, 80, len, 900);
    assert_eq!(first[0].0, 8192);
    assert_eq!(listeners_per_rule(&w.proxy), fair);
    let (t_last, last) = download(&mut w, 8000, len, 900);
    assert_eq!(last, first, "the last rule's window");
    assert_eq!(listeners_per_rule(&w.proxy), fair);
    let (lo, hi) = (t_first.min(t_last), t_first.max(t_last));
    assert!(
        hi * 50 <= lo * 51,
        "first rule {t_first}, last rule {t_last}"
    );

    // A crowd through the last rule: its pool's replacements get the share
    // of what is left (down to buf_min) while the connections hold memory,
    // and every rule's listeners are re-created at the fair size once they
    // end.
    w.hosts[0].reclaim();
    w.hosts[1].reclaim();
    w.hosts[0].keep = false;
    let now = w.now();
    for _ in 0..48 {
        w.hosts[0].connect((PROXY, 8000), b"GET".to_vec(), Close::AfterSend, now);
    }
    let (mut peak, mut sizes, mut smallest) = (0, Vec::new(), usize::MAX);
    assert!(w.run_until(secs(120), |w| {
        check_memory(&w.proxy);
        let active = w.proxy.stats().active;
        if active > peak {
            peak = active;
            sizes = w.proxy.connection_buffers().collect();
        }
        let pools = listeners_per_rule(&w.proxy);
        smallest = pools[3].iter().copied().fold(smallest, usize::min);
        // Only the last rule's pool is drawn on; the others keep their share.
        assert!(
            pools[..3].iter().all(|p| p.iter().all(|&s| s == 8192)),
            "{pools:?}"
        );
        all_done(w) && active == 0
    }));
    assert_eq!(peak, 48);
    assert!(w.hosts[0]
        .flows
        .iter()
        .all(|f| !f.reset && f.fin && f.received_len == len));
    // The pool's four and the replacements made while the pool surplus
    // (600k less 16k per connection) held 16 pairs at 8k (21) got 8k, the
    // rest buf_min.
    assert_eq!(size_summary(&sizes), "8k×25 4k×23");
    assert_eq!(smallest, 4096);
    assert_eq!(listeners_per_rule(&w.proxy), fair);
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.completed, st.refused), (51, 51, 0));
}

/// Connections opened one after another through `ports` in turn and kept
/// open: the listening sockets' sizes before the first, and the size each
/// connection got, in order.
fn sizes_as_connections_open(
    extra: &str,
    budget: usize,
    ports: &[u16],
    n: usize,
) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut w = reverse_world(Setup {
        extra,
        budget,
        server_backlog: 64,
        ..Setup::default()
    });
    let listeners = w.proxy.listener_buffers().map(|(_, s)| s).collect();
    let mut sizes = Vec::new();
    for k in 1..=n {
        let now = w.now();
        let port = ports[(k - 1) % ports.len()];
        let f = w.hosts[0].connect((PROXY, port), vec![k as u8], Close::Never, now);
        assert!(w.run_until(secs(5), |w| {
            w.proxy.stats().active == k && w.hosts[0].flows[f].received_len == 1
        }));
        check_memory(&w.proxy);
        // No connection has ended: the newest is the last one.
        sizes.push(w.proxy.connection_buffers().last().unwrap());
    }
    (listeners, sizes)
}

#[test]
fn sizes_taper_as_connections_open() {
    // The README's table: the default profile (64 connections, one rule,
    // backlog 4) and the benchmark's four rules (128 connections, opened
    // through the rules in turn), at several surpluses beyond the guarantee:
    // the listening sockets' size, then how many of the first 1, 8, 16 and
    // all connections got which size.
    let default = "max_conns=64 buf=64k buf_min=4k";
    let one: &[u16] = &[80];
    let four: &[u16] = &[80, 5201, 84, 8000];
    #[rustfmt::skip]
    let table = [
        (default, one, 1044 << 10, 64, "64k×4",
         ["64k×1", "64k×4 16k×2 8k×2", "64k×4 16k×2 8k×10", "64k×4 16k×2 8k×58"]),
        (default, one, 2887 << 10, 64, "64k×4",
         ["64k×1", "64k×8", "64k×12 16k×1 8k×3", "64k×12 16k×1 8k×51"]),
        (default, one, 3399 << 10, 64, "64k×4",
         ["64k×1", "64k×8", "64k×14 16k×2", "64k×14 16k×2 8k×48"]),
        (FOUR_RULES, four, 296 << 10, 128, "8k×16",
         ["8k×1", "8k×8", "8k×16", "8k×21 4k×107"]),
        (FOUR_RULES, four, 600 << 10, 128, "8k×16",
         ["8k×1", "8k×8", "8k×16", "8k×59 4k×69"]),
    ];
    extern crate std;
    for (extra, ports, surplus, n, listeners, want) in table {
        let budget = budget_with_surplus(extra, surplus);
        let (l, sizes) = sizes_as_connections_open(extra, budget, ports, n);
        let l = size_summary(&l.iter().map(|&s| (s, s)).collect::<Vec<_>>());
        let got: Vec<String> = [1, 8, 16, n]
            .iter()
            .map(|&k| size_summary(&sizes[..k]))
            .collect();
        std::println!(
            "{} rule(s), mem_budget {budget}, buffer surplus {}k: listeners {l} | {}",
            ports.len(),
            surplus >> 10,
            got.join(" | ")
        );
        let want = want.map(String::from).to_vec();
        assert_eq!((l.as_str(), got), (listeners, want), "{extra} {surplus}");
        // Sizes only taper as connections open.
        assert!(sizes.windows(2).all(|p| p[0].0 >= p[1].0), "{sizes:?}");
    }
}
