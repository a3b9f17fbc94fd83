//! Connections through the engine end to end: data byte for byte, half-close,
//! resets, timeouts, the listen pool and `max_conns`, recycling, backpressure,
//! transparent mode, other TCP settings.

use super::*;
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
    assert_eq!(
        (st.bytes_up, st.bytes_down, st.completed),
        (10 << 20, 10 << 20, 1)
    );
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
    let mut got: Vec<Vec<u8>> = w.hosts[1]
        .flows
        .iter()
        .map(|f| f.received.clone())
        .collect();
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
    assert_bytes(
        &s.received,
        &pattern(40, 1 << 20)[..s.received.len()],
        "prefix",
    );
    let st = w.proxy.stats();
    assert_eq!(
        (st.client_resets, st.upstream_resets, st.completed),
        (1, 0, 0)
    );
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
    assert!(
        c.reset && c.established,
        "the client handshake completes, then the reset"
    );
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
    assert!(
        took >= secs(5) && took < Duration::from_millis(5100),
        "took {took}"
    );
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
    assert!(
        w.net.stats.sent - before >= 20,
        "{}",
        w.net.stats.sent - before
    );
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
    // Every seed: between two smoltcp stacks (the simulator's hosts and the
    // engine) a bidirectional transfer used to deadlock when both ends timed
    // out with the other's ACKs lost (pure ACKs carried the rewound send
    // sequence and were dropped unread); vendored smoltcp patch 6 sends them
    // with SND.MAX.
    for seed in 0..50 {
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
    assert!(
        worst <= 5 * 16 * 1024 + 4096,
        "{worst} bytes between the ends"
    );
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

pub(super) fn transparent_world_with(extra: &str, offload: bool) -> World {
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
    assert!(
        !fl[onlink].established,
        "the proxy answered ARP for 10.0.0.99"
    );
    let st = w.proxy.stats();
    assert_eq!((st.refused, st.accepted), (1, 0));
}

#[test]
fn other_tcp_settings_stay_byte_exact() {
    // No congestion control, delayed ACKs, keep-alive off, small buffers (no window scaling).
    for extra in [
        "cc=none",
        "ack_delay=10ms",
        "keepalive=off buf=1k",
        "cc=none ack_delay=40ms buf=128k",
    ] {
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

#[test]
fn transparent_refuses_ipv6() {
    use smoltcp::phy::{ChecksumCapabilities, Device, TxToken};
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv6Address, Ipv6Packet, Ipv6Repr,
        TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, TcpTimestampRepr,
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
    w.net.set_link(
        raw,
        Link {
            loss: 1.0,
            ..Link::default()
        },
    );
    w.run_for(secs(3));
    let st = w.proxy.stats();
    assert_eq!(
        (st.refused, st.accepted, st.active, st.upstream_failures),
        (1, 0, 0, 0)
    );
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
    assert_bytes(
        &w.hosts[0].flows[f].received,
        &pattern(91, 50_000),
        "v4 after v6",
    );
}
