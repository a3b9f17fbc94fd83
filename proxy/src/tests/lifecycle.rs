//! Building the engine and its address (empty config, address set later, DHCP),
//! its counters and determinism.

use super::*;
use crate::sim::Rng;
use alloc::string::ToString;
use alloc::vec;

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
        "px_accepted=1 px_active=0 px_refused=0 px_upstream_fail=0 px_resets=0 \
         px_client_resets=0 px_upstream_resets=0 px_timeouts=0 px_completed=1 \
         px_bytes_up=5 px_bytes_down=5 px_buf_bytes=50331648 px_buf_peak=50331648 px_garp=1 \
         px_drain_resets=0"
    );
    // Four listening sockets and the connection's two (now spares), each with
    // two buffers of the default `buf`, 4m: the budget is ample.
    assert_eq!(w.proxy.stats().buf_bytes, 6 * 2 * (4 << 20));
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
        w.proxy
            .interface()
            .routes()
            .get_default_ipv4_route()
            .map(|r| r.via_router),
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
