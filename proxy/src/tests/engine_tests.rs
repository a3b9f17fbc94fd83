use super::*;
use crate::engine::{EngineError, MemoryPlan};
use crate::sim::Rng;
use alloc::string::ToString;
use alloc::vec;

#[test]
fn one_byte_echo() {
    let mut w = reverse_world(Setup::default());
    echo_roundtrip(&mut w, b"x", secs(10));
    let st = w.proxy.stats();
    assert_eq!(
        (st.accepted, st.completed, st.bytes_up, st.bytes_down),
        (1, 1, 1, 1)
    );
}

#[test]
fn one_megabyte_echo() {
    let mut w = reverse_world(Setup {
        extra: "buf=64k",
        ..Setup::default()
    });
    let data = pattern(11, 1 << 20);
    echo_roundtrip(&mut w, &data, secs(60));
    let st = w.proxy.stats();
    assert_eq!((st.bytes_up, st.bytes_down), (1 << 20, 1 << 20));
    assert_eq!(st.completed, 1);
}

#[test]
fn ten_megabytes_up() {
    let mut w = reverse_world(Setup {
        extra: "buf=256k",
        serve: Serve::Sink,
        host_buf: 256 * 1024,
        ..Setup::default()
    });
    let data = pattern(12, 10 << 20);
    let f = client_connect(&mut w, data.clone(), Close::AfterSend);
    assert!(w.run_until(secs(120), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin && c.received.is_empty());
    let s = &w.hosts[1].flows[0];
    assert_bytes(&s.received, &data, "server received");
    assert_eq!(w.proxy.stats().bytes_up, 10 << 20);
}

#[test]
fn ten_megabytes_down() {
    let mut w = reverse_world(Setup {
        extra: "buf=256k",
        serve: Serve::Source {
            len: 10 << 20,
            seed: 13,
        },
        host_buf: 256 * 1024,
        ..Setup::default()
    });
    let f = client_connect(&mut w, b"GET".to_vec(), Close::AfterSend);
    assert!(w.run_until(secs(120), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    assert_bytes(&c.received, &pattern(13, 10 << 20), "client received");
    assert_bytes(&w.hosts[1].flows[0].received, b"GET", "server received");
    let st = w.proxy.stats();
    assert_eq!((st.bytes_up, st.bytes_down), (3, 10 << 20));
}

#[test]
fn ten_megabytes_echo_with_delay() {
    // Both directions at once over a 2 ms RTT path, with window scaling (256k buffers).
    let mut w = reverse_world(Setup {
        extra: "buf=256k",
        client_link: Link::delay_ms(1),
        server_link: Link::delay_ms(1),
        host_buf: 256 * 1024,
        ..Setup::default()
    });
    let data = pattern(14, 10 << 20);
    echo_roundtrip(&mut w, &data, secs(300));
    let st = w.proxy.stats();
    assert_eq!((st.bytes_up, st.bytes_down, st.completed), (10 << 20, 10 << 20, 1));
}

#[test]
fn two_hundred_concurrent_connections() {
    let mut w = reverse_world(Setup {
        extra: "max_conns=256 buf=8k",
        server_backlog: 256,
        host_buf: 8 * 1024,
        ..Setup::default()
    });
    let mut want = Vec::new();
    for i in 0..200u64 {
        let data = pattern(1000 + i, 10_000 + i as usize * 37);
        want.push(data.clone());
        client_connect(&mut w, data, Close::AfterSend);
    }
    // All 200 are held at once at some point.
    let mut peak = 0;
    assert!(w.run_until(secs(120), |w| {
        check_memory(&w.proxy);
        peak = peak.max(w.proxy.stats().active);
        all_done(w) && w.proxy.stats().active == 0
    }));
    assert_eq!(peak, 200);
    for (i, f) in w.hosts[0].flows.iter().enumerate() {
        assert!(!f.reset && f.fin, "flow {i}");
        assert_bytes(&f.received, &want[i], &format!("flow {i}"));
    }
    // The server saw each stream exactly once, whatever the order.
    let mut got: Vec<Vec<u8>> = w.hosts[1].flows.iter().map(|f| f.received.clone()).collect();
    got.sort();
    want.sort();
    assert!(got == want, "server-side streams differ");
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.completed, st.refused), (200, 200, 0));
    assert!(w.proxy.socket_count() <= w.proxy.plan().max_sockets);
}

#[test]
fn half_close_from_client() {
    // The client sends and closes; the server answers only after that FIN.
    let mut w = reverse_world(Setup {
        serve: Serve::RespondAfterFin {
            len: 200_000,
            seed: 21,
        },
        ..Setup::default()
    });
    let req = pattern(20, 100_000);
    let f = client_connect(&mut w, req.clone(), Close::AfterSend);
    assert!(w.run_until(secs(30), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    assert_bytes(&c.received, &pattern(21, 200_000), "client received");
    let s = &w.hosts[1].flows[0];
    assert_bytes(&s.received, &req, "server received");
    assert!(s.fin);
    // The response started after the server saw the client's FIN.
    assert!(c.t_first_byte.unwrap() >= s.t_fin.unwrap());
    assert_eq!(w.proxy.stats().completed, 1);
}

#[test]
fn half_close_from_server() {
    // The server sends a little and closes at once; the client keeps sending
    // 2 MB after it saw that FIN, and all of it must still arrive.
    let mut w = reverse_world(Setup {
        serve: Serve::Source {
            len: 1000,
            seed: 31,
        },
        ..Setup::default()
    });
    let up = pattern(30, 2 << 20);
    let f = client_connect(&mut w, up.clone(), Close::AfterSend);
    assert!(w.run_until(secs(60), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    assert!(
        c.sent_at_fin < up.len(),
        "client had finished sending before the server's FIN arrived"
    );
    assert_bytes(&c.received, &pattern(31, 1000), "client received");
    let s = &w.hosts[1].flows[0];
    assert_bytes(&s.received, &up, "server received after its own FIN");
    assert!(s.fin && !s.reset);
    assert_eq!(w.proxy.stats().completed, 1);
}

#[test]
fn reset_from_client_reaches_server() {
    let mut w = reverse_world(Setup {
        serve: Serve::Sink,
        ..Setup::default()
    });
    let f = client_connect(&mut w, pattern(40, 1 << 20), Close::AbortAfterSend(100_000));
    assert!(w.run_until(secs(30), |w| all_done(w) && w.proxy.stats().active == 0));
    assert!(w.hosts[0].flows[f].aborted_by_us);
    let s = &w.hosts[1].flows[0];
    assert!(s.reset, "server was not reset");
    assert!(!s.fin);
    // Whatever arrived before the reset is an exact prefix of what was sent.
    assert_bytes(&s.received, &pattern(40, 1 << 20)[..s.received.len()], "prefix");
    let st = w.proxy.stats();
    assert_eq!((st.client_resets, st.upstream_resets, st.completed), (1, 0, 0));
}

#[test]
fn reset_from_server_reaches_client() {
    let mut w = reverse_world(Setup {
        serve: Serve::AbortAfter(50_000),
        ..Setup::default()
    });
    let data = pattern(41, 1 << 20);
    let f = client_connect(&mut w, data.clone(), Close::AfterSend);
    assert!(w.run_until(secs(30), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(c.reset, "client was not reset");
    assert!(!c.fin);
    assert!(w.hosts[1].flows[0].aborted_by_us);
    let st = w.proxy.stats();
    assert_eq!((st.client_resets, st.upstream_resets), (0, 1));
}

#[test]
fn upstream_refused_resets_client() {
    let mut w = reverse_world(Setup {
        extra: "rule=reverse:81:10.0.0.20:9999",
        ..Setup::default()
    });
    let now = w.now();
    let f = w.hosts[0].connect((PROXY, 81), b"hello".to_vec(), Close::AfterSend, now);
    assert!(w.run_until(secs(10), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(c.reset && c.received.is_empty());
    // Refused at once: no timeout involved.
    assert!(c.t_done.unwrap() - c.t_start < Duration::from_millis(100));
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.upstream_failures), (1, 1));
}

#[test]
fn upstream_unreachable_resets_client_after_connect_timeout() {
    let mut w = reverse_world(Setup {
        extra: "connect_timeout=2s rule=reverse:81:10.0.0.99:8080",
        ..Setup::default()
    });
    let now = w.now();
    let f = w.hosts[0].connect((PROXY, 81), b"hello".to_vec(), Close::AfterSend, now);
    assert!(w.run_until(secs(10), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(c.reset && c.established, "the client handshake completes, then the reset");
    let took = c.t_done.unwrap() - c.t_start;
    assert!(
        took >= secs(2) && took < Duration::from_millis(2200),
        "took {took}"
    );
    assert_eq!(w.proxy.stats().upstream_failures, 1);
}

#[test]
fn idle_timeout_resets_both_sides() {
    let mut w = reverse_world(Setup {
        extra: "idle_timeout=5s keepalive=off",
        serve: Serve::Sink,
        ..Setup::default()
    });
    let f = client_connect(&mut w, b"ping".to_vec(), Close::Never);
    assert!(w.run_until(secs(60), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    let s = &w.hosts[1].flows[0];
    assert!(c.reset && s.reset);
    assert_bytes(&s.received, b"ping", "server received");
    let took = c.t_done.unwrap() - c.t_start;
    assert!(took >= secs(5) && took < Duration::from_millis(5100), "took {took}");
    assert_eq!(w.proxy.stats().timeouts, 1);
}

#[test]
fn keepalive_keeps_idle_connection_without_idle_timeout() {
    // With idle_timeout=off the connection lives on; keep-alive probes flow.
    let mut w = reverse_world(Setup {
        extra: "idle_timeout=off keepalive=10s",
        serve: Serve::Sink,
        ..Setup::default()
    });
    let f = client_connect(&mut w, b"ping".to_vec(), Close::Never);
    let before = w.net.stats.sent;
    w.run_for(secs(65));
    assert!(!w.hosts[0].flows[f].done);
    assert_eq!(w.proxy.stats().active, 1);
    // Keep-alives on both sockets: at least 6 per socket in 65 s, with answers.
    assert!(w.net.stats.sent - before >= 20, "{}", w.net.stats.sent - before);
}

#[test]
fn dead_peer_is_detected_by_keepalive() {
    // The server vanishes (its link drops everything); keep-alive + user timeout
    // end the upstream socket and the client is reset.
    let mut w = reverse_world(Setup {
        extra: "idle_timeout=off keepalive=5s",
        serve: Serve::Sink,
        ..Setup::default()
    });
    let f = client_connect(&mut w, b"ping".to_vec(), Close::Never);
    w.run_for(secs(1));
    assert_eq!(w.proxy.stats().active, 1);
    let sp = w.hosts[1].port;
    w.net.set_link(
        sp,
        Link {
            loss: 1.0,
            ..Link::default()
        },
    );
    assert!(w.run_until(secs(60), |w| w.hosts[0].flows[f].done));
    assert!(w.hosts[0].flows[f].reset);
    let st = w.proxy.stats();
    assert_eq!(st.upstream_resets, 1);
    assert!(w.now() < Instant::from_secs(30), "took until {}", w.now());
}

#[test]
fn syn_burst_larger_than_listen_pool() {
    let mut w = reverse_world(Setup {
        extra: "backlog=2 max_conns=64 buf=4k",
        server_backlog: 64,
        host_buf: 4096,
        ..Setup::default()
    });
    for i in 0..30 {
        client_connect(&mut w, pattern(50 + i, 3000), Close::AfterSend);
    }
    assert!(w.run_until(secs(30), |w| all_done(w) && w.proxy.stats().active == 0));
    for (i, f) in w.hosts[0].flows.iter().enumerate() {
        assert!(!f.reset, "flow {i} reset");
        assert_bytes(&f.received, &pattern(50 + i as u64, 3000), "echo");
    }
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.refused, st.completed), (30, 0, 30));
}

#[test]
fn past_max_conns_refuses_and_keeps_serving() {
    let mut w = reverse_world(Setup {
        extra: "max_conns=5 backlog=4 buf=4k",
        serve: Serve::Echo,
        host_buf: 8192,
        ..Setup::default()
    });
    // Five long-lived connections.
    for i in 0..5 {
        client_connect(&mut w, pattern(60 + i, 1000), Close::Never);
    }
    assert!(w.run_until(secs(5), |w| w.hosts[0]
        .flows
        .iter()
        .all(|f| f.received_len == 1000)));
    // Five more are refused with a reset.
    for i in 5..10 {
        client_connect(&mut w, pattern(60 + i, 1000), Close::AfterSend);
    }
    assert!(w.run_until(secs(5), |w| w.hosts[0].flows[5..].iter().all(|f| f.done)));
    for f in &w.hosts[0].flows[5..] {
        assert!(f.reset && f.received.is_empty());
    }
    let st = w.proxy.stats();
    assert_eq!((st.active, st.refused), (5, 5), "{st}");
    // The first five still work, then finish cleanly.
    for f in &mut w.hosts[0].flows[..5] {
        f.data.extend_from_slice(b"more");
        f.close = Close::AfterSend;
    }
    assert!(w.run_until(secs(10), |w| w.hosts[0].flows[..5].iter().all(|f| f.done)));
    for (i, f) in w.hosts[0].flows[..5].iter().enumerate() {
        assert!(!f.reset && f.fin);
        let mut want = pattern(60 + i as u64, 1000);
        want.extend_from_slice(b"more");
        assert_bytes(&f.received, &want, "long-lived echo");
    }
    // The freed slots accept again.
    let n = client_connect(&mut w, b"again".to_vec(), Close::AfterSend);
    assert!(w.run_until(secs(5), |w| w.hosts[0].flows[n].done));
    assert_bytes(&w.hosts[0].flows[n].received, b"again", "after recycling");
    assert_eq!(w.proxy.stats().refused, 5);
}

#[test]
fn loss_and_reordering_stay_byte_exact() {
    let lossy = Link {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(3),
        loss: 0.01,
        ..Link::default()
    };
    // Not every seed: between two smoltcp stacks (the simulator's hosts and
    // the engine) a bidirectional transfer can deadlock when both ends time
    // out with the other's ACKs lost. After the RTO smoltcp rewinds its send
    // sequence, so every segment it sends, pure ACKs included, starts before
    // the peer's receive window; the peer drops them unread (ACK field
    // included) and answers with the same kind of segments, until the user
    // timeout resets the connection. A Linux peer acknowledges with
    // `snd_nxt` and breaks the tie. About one seed in ten hits it here; these
    // do not. (See "smoltcp limits hit" in the README.)
    for seed in [3, 5] {
        let mut w = reverse_world(Setup {
            extra: "buf=64k",
            client_link: lossy,
            server_link: lossy,
            seed,
            ..Setup::default()
        });
        let data = pattern(70 + seed, 1 << 20);
        echo_roundtrip(&mut w, &data, secs(600));
        assert!(w.net.stats.lost > 20, "lost only {}", w.net.stats.lost);
    }
}

#[test]
fn many_sequential_connections_recycle_sockets() {
    let mut w = reverse_world(Setup {
        extra: "max_conns=4 backlog=2 buf=2k",
        host_buf: 4096,
        ..Setup::default()
    });
    let max = w.proxy.plan().max_sockets;
    for round in 0..100u64 {
        for j in 0..4 {
            client_connect(&mut w, pattern(round * 4 + j, 500), Close::AfterSend);
        }
        assert!(w.run_until(secs(10), |w| all_done(w) && w.proxy.stats().active == 0));
        assert!(w.proxy.socket_count() <= max);
        check_memory(&w.proxy);
        w.hosts[0].reclaim();
        w.hosts[1].reclaim();
    }
    for (i, f) in w.hosts[0].flows.iter().enumerate() {
        assert!(!f.reset, "flow {i}");
        assert_bytes(&f.received, &pattern(i as u64, 500), "echo");
    }
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.completed, st.active), (400, 400, 0));
}

#[test]
fn backpressure_bounds_what_is_in_the_proxy() {
    // A fast client, a server link of 200 kB/s: the proxy must hold back the
    // client (window) rather than buffer; nothing beyond its socket buffers.
    let mut w = reverse_world(Setup {
        extra: "buf=16k",
        serve: Serve::Sink,
        server_link: Link {
            bandwidth: 200_000,
            ..Link::default()
        },
        host_buf: 16 * 1024,
        ..Setup::default()
    });
    let data = pattern(80, 1 << 20);
    let f = client_connect(&mut w, data.clone(), Close::AfterSend);
    let mut worst = 0usize;
    assert!(w.run_until(secs(60), |w| {
        let sent = w.hosts[0].flows[f].sent;
        let got = w.hosts[1].flows.first().map_or(0, |s| s.received_len);
        worst = worst.max(sent - got);
        all_done(w) && w.proxy.stats().active == 0
    }));
    assert_bytes(&w.hosts[1].flows[0].received, &data, "server received");
    // client tx 16k + proxy 2 x 16k + server rx 16k + a window in flight.
    assert!(worst <= 5 * 16 * 1024 + 4096, "{worst} bytes between the ends");
    // It took at least the bottleneck's time: 1 MB / 200 kB/s.
    assert!(w.now() >= Instant::from_millis(5000));
}

#[test]
fn client_reset_while_upstream_connecting() {
    let mut w = reverse_world(Setup {
        extra: "connect_timeout=5s rule=reverse:81:10.0.0.99:8080",
        ..Setup::default()
    });
    let now = w.now();
    let f = w.hosts[0].connect((PROXY, 81), b"x".to_vec(), Close::AbortAfterSend(1), now);
    assert!(w.run_until(secs(3), |w| w.hosts[0].flows[f].done
        && w.proxy.stats().active == 0));
    let st = w.proxy.stats();
    assert_eq!((st.client_resets, st.upstream_failures), (1, 0));
}

/// Transparent mode: client 10.0.0.10 routes 203.0.113.0/24 via the proxy;
/// the proxy reaches the servers through a router at 10.0.0.1.
fn transparent_world(extra: &str) -> World {
    transparent_world_with(extra, false)
}

fn transparent_world_with(extra: &str, offload: bool) -> World {
    let cfg = Config::parse(&format!(
        "ip=10.0.0.2/24 gw=10.0.0.1 rule=transparent:80 rule=transparent:443 {extra}"
    ))
    .unwrap();
    let mut net = Net::new(9);
    let pp = net.add_port(Link::delay_ms(1));
    net.set_offload(pp, offload);
    let now = net.now();
    let proxy = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        9,
        1 << 30,
        &mut net.port(pp),
        now,
    )
    .unwrap();
    let cp = net.add_port(Link::delay_ms(1));
    let client = Host::new(
        &mut net,
        cp,
        10,
        Ipv4Cidr::new(CLIENT, 24),
        Some(PROXY),
        64 * 1024,
    );
    net.add_router(
        mac(1),
        &[ROUTER, Ipv4Address::new(203, 0, 113, 254)],
        Link::delay_ms(5),
    );
    net.route_host(PROXY, mac(2));
    let mut hosts = vec![client];
    for i in 1..=3u8 {
        let sp = net.add_port(Link::default());
        let ip = Ipv4Address::new(203, 0, 113, i);
        let mut h = Host::new(
            &mut net,
            sp,
            100 + i,
            Ipv4Cidr::new(ip, 24),
            Some(Ipv4Address::new(203, 0, 113, 254)),
            64 * 1024,
        );
        h.listen(
            80,
            4,
            Serve::Source {
                len: 50_000 * i as usize,
                seed: 90 + i as u64,
            },
        );
        net.route_host(ip, mac(100 + i));
        hosts.push(h);
    }
    // Server 1 also serves 443, echoing.
    World {
        net,
        proxy,
        proxy_port: pp,
        hosts,
        proxy_polls: 0,
        clock: None,
        proxy_nanos: 0,
    }
}

#[test]
fn transparent_to_several_destinations() {
    let mut w = transparent_world("");
    let now = w.now();
    let mut flows = Vec::new();
    for i in 1..=3u8 {
        for k in 0..2u64 {
            let req = pattern(200 + i as u64 * 10 + k, 777);
            let f = w.hosts[0].connect(
                (Ipv4Address::new(203, 0, 113, i), 80),
                req.clone(),
                Close::AfterSend,
                now,
            );
            flows.push((f, i, req));
        }
    }
    assert!(w.run_until(secs(30), |w| all_done(w) && w.proxy.stats().active == 0));
    for (f, i, req) in &flows {
        let c = &w.hosts[0].flows[*f];
        assert!(!c.reset && c.fin, "flow to .{i}");
        assert_bytes(
            &c.received,
            &pattern(90 + *i as u64, 50_000 * *i as usize),
            "content of the right destination",
        );
        // The destination server got this client's request.
        let server = &w.hosts[*i as usize];
        assert!(server.flows.iter().any(|s| s.received == *req));
    }
    for i in 1..=3 {
        assert_eq!(w.hosts[i].accepted, 2);
    }
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.completed), (6, 6));
}

#[test]
fn transparent_refuses_loop_unknown_port_and_foreign_arp() {
    let mut w = transparent_world("connect_timeout=2s");
    let now = w.now();
    // To the proxy's own address on a transparent port: would loop; refused.
    let own = w.hosts[0].connect((PROXY, 80), b"x".to_vec(), Close::AfterSend, now);
    // A port no rule covers: smoltcp answers RST.
    let other = w.hosts[0].connect(
        (Ipv4Address::new(203, 0, 113, 1), 22),
        b"x".to_vec(),
        Close::AfterSend,
        now,
    );
    // An on-link address nobody has: the proxy must not answer its ARP.
    let onlink = w.hosts[0].connect(
        (Ipv4Address::new(10, 0, 0, 99), 80),
        b"x".to_vec(),
        Close::AfterSend,
        now,
    );
    w.run_for(secs(5));
    let fl = &w.hosts[0].flows;
    assert!(fl[own].done && fl[own].reset);
    assert!(fl[other].done && fl[other].reset);
    assert!(!fl[onlink].established, "the proxy answered ARP for 10.0.0.99");
    let st = w.proxy.stats();
    assert_eq!((st.refused, st.accepted), (1, 0));
}

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
    let tiny = Engine::new(&cfg, HardwareAddress::Ethernet(mac(2)), 1, 600 << 10, &mut net.port(p), now)
        .unwrap_err();
    let EngineError::TooBig { fit_max_conns, fit_buf_min, .. } = tiny.clone() else {
        panic!("{tiny}")
    };
    assert_eq!(fit_buf_min, 0, "{tiny}");
    assert!(tiny.to_string().ends_with(&format!(
        "would fit: max_conns={fit_max_conns} with buf_min=16k"
    )), "{tiny}");
}

#[test]
fn empty_config_builds_an_idle_engine() {
    let cfg = Config::parse("").unwrap();
    let mut net = Net::new(1);
    let p = net.add_port(Link::default());
    let now = net.now();
    let mut e = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        1,
        8 << 20,
        &mut net.port(p),
        now,
    )
    .unwrap();
    assert_eq!(e.ipv4(), None);
    assert_eq!(e.socket_count(), 0);
    // Nothing to do until a frame comes.
    e.poll(now, &mut net.port(p));
    assert_eq!(net.stats.sent, 0);
    assert_eq!(e.poll_delay(now), None);
    assert_eq!(e.idle_since(), Some(now));
    // The default is ip=dhcp; with the DHCP client started it sends a DISCOVER
    // and wants to retry later.
    assert!(!e.uses_dhcp());
    e.start_dhcp();
    assert!(e.uses_dhcp());
    e.poll(now, &mut net.port(p));
    assert_eq!(net.stats.sent, 1);
    assert_eq!(e.poll_delay(now), Some(secs(10)));
    assert_eq!(e.stats(), crate::engine::Stats::default());
}

#[test]
fn address_set_later_starts_listening() {
    // As after DHCP: no address at first, then set_ipv4.
    let mut w = reverse_world(Setup::default());
    w.proxy.clear_ipv4();
    let f = client_connect(&mut w, b"early".to_vec(), Close::AfterSend);
    w.run_for(secs(2));
    assert!(!w.hosts[0].flows[f].established);
    w.proxy
        .set_ipv4(Ipv4Cidr::new(PROXY, 24), Some(ROUTER))
        .unwrap();
    assert_eq!(w.proxy.ipv4(), Some(Ipv4Cidr::new(PROXY, 24)));
    let g = client_connect(&mut w, b"late".to_vec(), Close::AfterSend);
    assert!(w.run_until(secs(10), |w| w.hosts[0].flows[g].done));
    assert_bytes(&w.hosts[0].flows[g].received, b"late", "echo");
    assert!(w
        .proxy
        .set_ipv4(Ipv4Cidr::new(Ipv4Address::new(224, 0, 0, 1), 24), None)
        .is_err());
}

#[test]
fn stats_line() {
    let mut w = reverse_world(Setup::default());
    echo_roundtrip(&mut w, b"hello", secs(10));
    assert_eq!(
        w.proxy.stats().to_string(),
        "accepted=1 active=0 refused=0 upstream_fail=0 resets=0 (client=0 upstream=0) \
         timeouts=0 completed=1 bytes_up=5 bytes_down=5 buf_bytes=786432 buf_peak=786432 garp=1"
    );
    // Four listening sockets and the connection's two (now spares), each with
    // two 64k buffers: the budget is ample.
    assert_eq!(w.proxy.stats().buf_bytes, 6 * 2 * 65536);
}

#[test]
fn deterministic_runs() {
    // Same seed, same everything: the network is reproducible.
    let run = || {
        let lossy = Link {
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(2),
            loss: 0.02,
            ..Link::default()
        };
        let mut w = reverse_world(Setup {
            client_link: lossy,
            seed: 5,
            ..Setup::default()
        });
        echo_roundtrip(&mut w, &pattern(1, 200_000), secs(300));
        (w.now(), w.net.stats)
    };
    assert_eq!(run(), run());
    let mut r = Rng::new(1);
    assert_ne!(r.next_u64(), r.next_u64());
}

#[test]
fn dhcp_configures_the_engine_and_loses_the_lease() {
    let cfg = Config::parse("ip=dhcp rule=reverse:80:10.0.0.20:8080 buf=8k").unwrap();
    let mut net = Net::new(3);
    let pp = net.add_port(Link::default());
    let now = net.now();
    let proxy = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        3,
        64 << 20,
        &mut net.port(pp),
        now,
    )
    .unwrap();
    let mut proxy = proxy;
    proxy.start_dhcp();
    assert!(proxy.uses_dhcp());
    assert_eq!(proxy.ipv4(), None);
    net.add_dhcp_server(
        mac(50),
        Ipv4Address::new(10, 0, 0, 50),
        Ipv4Address::new(10, 0, 0, 2),
        24,
        Some(ROUTER),
        120,
        Link::delay_ms(1),
    );
    let cp = net.add_port(Link::default());
    let client = Host::new(&mut net, cp, 10, Ipv4Cidr::new(CLIENT, 24), None, 8192);
    let sp = net.add_port(Link::default());
    let mut server = Host::new(&mut net, sp, 20, Ipv4Cidr::new(SERVER, 24), None, 8192);
    server.listen(8080, 4, Serve::Echo);
    let mut w = World {
        net,
        proxy,
        proxy_port: pp,
        hosts: vec![client, server],
        proxy_polls: 0,
        clock: None,
        proxy_nanos: 0,
    };
    assert!(w.run_until(secs(30), |w| w.proxy.ipv4().is_some()));
    assert_eq!(w.proxy.ipv4(), Some(Ipv4Cidr::new(PROXY, 24)));
    assert_eq!(
        w.proxy.interface().routes().get_default_ipv4_route().map(|r| r.via_router),
        Some(ROUTER.into())
    );
    // It proxies on the leased address.
    echo_roundtrip(&mut w, b"over dhcp", secs(10));
    // The lease is renewed while the server answers...
    w.run_for(secs(600));
    assert_eq!(w.proxy.ipv4(), Some(Ipv4Cidr::new(PROXY, 24)));
    assert!(w.net.dhcp.as_ref().unwrap().answered >= 4);
    // ...and dropped when it stops answering.
    w.net.dhcp.as_mut().unwrap().enabled = false;
    assert!(w.run_until(secs(300), |w| w.proxy.ipv4().is_none()));
}

#[test]
fn other_tcp_settings_stay_byte_exact() {
    // No congestion control, delayed ACKs, keep-alive off, small buffers (no window scaling).
    for extra in ["cc=none", "ack_delay=10ms", "keepalive=off buf=1k", "cc=none ack_delay=40ms buf=128k"] {
        let lossy = Link {
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            loss: 0.005,
            ..Link::default()
        };
        let mut w = reverse_world(Setup {
            extra,
            client_link: lossy,
            server_link: lossy,
            ..Setup::default()
        });
        echo_roundtrip(&mut w, &pattern(300, 300_000), secs(600));
        assert_eq!(w.proxy.stats().completed, 1, "{extra}");
    }
}

// ---- adaptive socket buffers -----------------------------------------------

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
            serve: Serve::Source { len: 4 << 20, seed: 400 },
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
            assert!(all.iter().all(|s| [4096, 8192, 16384, 32768, 65536].contains(s)));
            let max_sockets = w.proxy.plan().max_sockets;
            assert!(st.buf_peak > max_sockets * 2 * 4096 + surplus / 2, "peak {}", st.buf_peak);
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
        smallest = w.proxy.connection_buffers().map(|(a, b)| a.min(b)).fold(smallest, usize::min);
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
    let parts: Vec<String> = counts.iter().map(|&(s, n)| format!("{}k×{n}", s / 1024)).collect();
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
    // (after one through a middle rule, which resolves the addresses).
    w.hosts[0].keep = true;
    assert_eq!(download(&mut w, 84, len, 900).1, [(8192, 8192)]);
    assert_eq!(listeners_per_rule(&w.proxy), fair);
    let (t_first, first) = download(&mut w, 80, len, 900);
    assert_eq!(first, [(8192, 8192)]);
    assert_eq!(listeners_per_rule(&w.proxy), fair);
    let (t_last, last) = download(&mut w, 8000, len, 900);
    assert_eq!(last, first, "the last rule's window");
    assert_eq!(listeners_per_rule(&w.proxy), fair);
    let (lo, hi) = (t_first.min(t_last), t_first.max(t_last));
    assert!(hi * 50 <= lo * 51, "first rule {t_first}, last rule {t_last}");

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
        assert!(pools[..3].iter().all(|p| p.iter().all(|&s| s == 8192)), "{pools:?}");
        all_done(w) && active == 0
    }));
    assert_eq!(peak, 48);
    assert!(w.hosts[0].flows.iter().all(|f| !f.reset && f.fin && f.received_len == len));
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
         ["64k×1", "64k×4 16k×1 8k×2 4k×1", "64k×4 16k×1 8k×2 4k×9", "64k×4 16k×1 8k×2 4k×57"]),
        (default, one, 2887 << 10, 64, "64k×4",
         ["64k×1", "64k×8", "64k×12 4k×4", "64k×12 4k×52"]),
        (default, one, 3399 << 10, 64, "64k×4",
         ["64k×1", "64k×8", "64k×14 8k×2", "64k×14 8k×2 4k×48"]),
        (FOUR_RULES, four, 296 << 10, 128, "8k×16",
         ["8k×1", "8k×8", "8k×16", "8k×18 4k×110"]),
        (FOUR_RULES, four, 600 << 10, 128, "8k×16",
         ["8k×1", "8k×8", "8k×16", "8k×37 4k×91"]),
    ];
    extern crate std;
    for (extra, ports, surplus, n, listeners, want) in table {
        let budget = budget_with_surplus(extra, surplus);
        let (l, sizes) = sizes_as_connections_open(extra, budget, ports, n);
        let l = size_summary(&l.iter().map(|&s| (s, s)).collect::<Vec<_>>());
        let got: Vec<String> = [1, 8, 16, n].iter().map(|&k| size_summary(&sizes[..k])).collect();
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

#[test]
fn transparent_refuses_ipv6() {
    use smoltcp::phy::{ChecksumCapabilities, Device, TxToken};
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv6Address, Ipv6Packet,
        Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, TcpTimestampRepr,
    };
    // smoltcp is built with IPv6 (segmentation offload needs it) and any-ip
    // would take an IPv6 SYN to a transparent port: it must be refused.
    let mut w = transparent_world("");
    let raw = w.net.add_port(Link::default());
    let (src, dst) = (
        Ipv6Address::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
        Ipv6Address::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99),
    );
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 80,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 8192,
        window_scale: None,
        max_seg_size: Some(1440),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None::<TcpTimestampRepr>,
        payload: &[],
    };
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let caps = ChecksumCapabilities::default();
    let len = 14 + ip.buffer_len() + tcp.buffer_len();
    let now = w.now();
    let mut dev = w.net.port(raw);
    let tx = dev.transmit(now).unwrap();
    tx.consume(len, |buf| {
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_dst_addr(mac(2));
        eth.set_src_addr(mac(77));
        eth.set_ethertype(EthernetProtocol::Ipv6);
        let mut p = Ipv6Packet::new_unchecked(eth.payload_mut());
        ip.emit(&mut p);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &IpAddress::Ipv6(src), &IpAddress::Ipv6(dst), &caps);
    });
    // Whatever comes back to the raw port is dropped (nobody reads it).
    w.net.set_link(raw, Link { loss: 1.0, ..Link::default() });
    w.run_for(secs(3));
    let st = w.proxy.stats();
    assert_eq!((st.refused, st.accepted, st.active, st.upstream_failures), (1, 0, 0, 0));
    check_memory(&w.proxy);
    // IPv4 still works afterwards.
    let now = w.now();
    let f = w.hosts[0].connect(
        (Ipv4Address::new(203, 0, 113, 1), 80),
        b"x".to_vec(),
        Close::AfterSend,
        now,
    );
    assert!(w.run_until(secs(10), |w| w.hosts[0].flows[f].done));
    assert_bytes(&w.hosts[0].flows[f].received, &pattern(91, 50_000), "v4 after v6");
}

// ---- segmentation offload ----------------------------------------------------

/// 10 MB one way through a proxy whose device has TSO (64 KiB) and checksum
/// offload; the wire segments its frames and merges what it receives (GRO).
fn tso_transfer(up: bool) -> World {
    let len = 10 << 20;
    let mut w = reverse_world(Setup {
        extra: "buf=256k",
        serve: if up {
            Serve::Sink
        } else {
            Serve::Source { len, seed: 900 }
        },
        host_buf: 256 * 1024,
        offload: true,
        // A little delay so that windows fill and segments queue up.
        client_link: Link::delay_ms(1),
        server_link: Link::delay_ms(1),
        ..Setup::default()
    });
    let data = if up { pattern(901, len) } else { b"GET".to_vec() };
    let f = client_connect(&mut w, data.clone(), Close::AfterSend);
    assert!(w.run_until(secs(120), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    let st = w.proxy.stats();
    if up {
        assert_bytes(&w.hosts[1].flows[0].received, &data, "server received");
        assert_eq!((st.bytes_up, st.bytes_down), (len as u64, 0));
    } else {
        assert_bytes(&c.received, &pattern(900, len), "client received");
        assert_eq!((st.bytes_up, st.bytes_down), (3, len as u64));
    }
    assert_eq!(st.completed, 1);
    // Nothing oversized left any port, and every segment the wire made verified.
    assert_eq!((w.net.stats.oversize, w.net.stats.bad_checksum), (0, 0));
    w
}

#[track_caller]
fn assert_large_frames(w: &World, what: &str) {
    let ps = w.net.port_stats(w.proxy_port);
    std::eprintln!("{what}: proxy port {ps:?}");
    // The engine handed over frames far beyond the MTU, and most of the
    // payload went in them.
    assert!(ps.tso_frames > 100, "{what}: {ps:?}");
    assert!(ps.largest_tx > 16 * 1024, "{what}: {ps:?}");
    assert!(ps.tso_bytes > 5 << 20, "{what}: {ps:?}");
    assert!(ps.tso_segments > 3 * ps.tso_frames, "{what}: {ps:?}");
    // And received merged frames.
    assert!(ps.gro_merged > 1000 && ps.largest_rx > 16 * 1024, "{what}: {ps:?}");
}

#[test]
fn tso_ten_megabytes_up() {
    let w = tso_transfer(true);
    assert_large_frames(&w, "upload");
}

#[test]
fn tso_ten_megabytes_down() {
    let w = tso_transfer(false);
    assert_large_frames(&w, "download");
}

#[test]
fn tso_echo_with_loss_and_transparent_mode() {
    // Both directions at once, 1% loss: retransmissions of large segments.
    let lossy = Link {
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(1),
        loss: 0.01,
        ..Link::default()
    };
    let mut w = reverse_world(Setup {
        extra: "buf=128k",
        offload: true,
        client_link: lossy,
        server_link: lossy,
        host_buf: 128 * 1024,
        ..Setup::default()
    });
    echo_roundtrip(&mut w, &pattern(910, 2 << 20), secs(600));
    assert!(w.net.stats.lost > 20);
    assert_eq!((w.net.stats.oversize, w.net.stats.bad_checksum), (0, 0));
    // (Few merges here: with data both ways every segment carries a new ACK.)
    let ps = w.net.port_stats(w.proxy_port);
    assert!(ps.tso_frames > 100 && ps.largest_tx > 8 * 1024, "{ps:?}");

    // Transparent mode: the engine's device is wrapped (ArpGuard), which must
    // pass the capabilities and the segmentation metadata through.
    let mut w = transparent_world_with("buf=128k", true);
    let now = w.now();
    let req = pattern(920, 1 << 20);
    let f = w.hosts[0].connect(
        (Ipv4Address::new(203, 0, 113, 1), 80),
        req.clone(),
        Close::AfterSend,
        now,
    );
    assert!(w.run_until(secs(60), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    assert_bytes(&c.received, &pattern(91, 50_000), "content");
    assert!(w.hosts[1].flows.iter().any(|s| s.received == req));
    assert_eq!((w.net.stats.oversize, w.net.stats.bad_checksum), (0, 0));
    let ps = w.net.port_stats(w.proxy_port);
    assert!(ps.tso_frames > 5 && ps.largest_tx > 16 * 1024, "{ps:?}");
}

#[test]
fn tso_without_checksum_offload_is_refused() {
    use smoltcp::phy::{Checksum, Device, DeviceCapabilities};
    /// A port device whose capabilities can be bent.
    struct Bent<'a>(crate::sim::PortDevice<'a>, Checksum);
    impl Device for Bent<'_> {
        type RxToken<'b>
            = crate::sim::SimRx
        where
            Self: 'b;
        type TxToken<'b>
            = crate::sim::SimTx<'b>
        where
            Self: 'b;
        fn receive(&mut self, t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            self.0.receive(t)
        }
        fn transmit(&mut self, t: Instant) -> Option<Self::TxToken<'_>> {
            self.0.transmit(t)
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = self.0.capabilities();
            c.checksum.tcp = self.1;
            c
        }
    }
    let cfg = reverse_config("");
    let mut net = Net::new(1);
    let p = net.add_port(Link::default());
    net.set_offload(p, true);
    let now = net.now();
    let new = |net: &mut Net, ck| {
        Engine::new(&cfg, HardwareAddress::Ethernet(mac(2)), 1, 1 << 30, &mut Bent(net.port(p), ck), now)
    };
    let err = new(&mut net, Checksum::Both).unwrap_err();
    assert_eq!(err, EngineError::InconsistentOffload);
    assert_eq!(
        err.to_string(),
        "engine: the device advertises TCP segmentation offload but not TCP checksum offload on transmit"
    );
    assert!(new(&mut net, Checksum::Tx).is_err());
    assert!(new(&mut net, Checksum::None).is_ok());
    assert!(new(&mut net, Checksum::Rx).is_ok());
}
