//! Draining before a stop (`Engine::start_drain`): a short transfer in flight
//! finishes byte for byte, a long one is reset on both sides at the drain
//! deadline, and no new connection is taken meanwhile.

use super::*;
use crate::engine::RST_FLUSH_BOUND;
use crate::sim::Rng;

/// The server sends `len` bytes at 1 MB/s on its link, so a transfer's
/// length is its duration: 256 KiB is a quarter second, 8 MiB eight.
fn source_world(len: usize) -> World {
    reverse_world(Setup {
        serve: Serve::Source { len, seed: 7 },
        server_link: Link {
            bandwidth: 1 << 20,
            ..Link::delay_ms(1)
        },
        ..Setup::default()
    })
}

/// Start one download and run until its first bytes reached the client.
fn download_in_flight(w: &mut World) -> usize {
    let f = client_connect(w, b"get".to_vec(), Close::AfterPeerFin);
    assert!(
        w.run_until(secs(5), |w| w.hosts[0].flows[f].received_len > 0),
        "no byte arrived: {}",
        w.proxy.stats()
    );
    assert!(!w.hosts[0].flows[f].done);
    f
}

#[test]
fn a_short_transfer_in_flight_completes_byte_exact_during_the_drain() {
    let len = 256 << 10;
    let mut w = source_world(len);
    let f = download_in_flight(&mut w);
    let t0 = w.now();
    w.proxy.start_drain(t0, secs(2));
    assert!(w.proxy.draining() && !w.proxy.drained());
    assert!(
        w.run_until(secs(5), |w| w.proxy.drained() && all_done(w)),
        "drain did not end: client {:?} stats {}",
        flow_summary(&w.hosts[0], f),
        w.proxy.stats()
    );
    // It ended by itself, well before the deadline.
    assert!(w.now() < t0 + secs(1), "took {}", w.now() - t0);
    let c = &w.hosts[0].flows[f];
    assert!(c.fin && !c.reset);
    assert_bytes(&c.received, &pattern(7, len), "client received");
    let s = &w.hosts[1].flows[0];
    assert!(s.fin && !s.reset);
    assert_bytes(&s.received, b"get", "server received");
    let st = w.proxy.stats();
    assert_eq!((st.completed, st.drain_resets, st.active), (1, 0, 0));
    check_memory(&w.proxy);
}

#[test]
fn a_long_transfer_is_reset_on_both_sides_at_the_drain_timeout() {
    let len = 8 << 20;
    let mut w = source_world(len);
    let f = download_in_flight(&mut w);
    let t0 = w.now();
    let timeout = secs(2);
    w.proxy.start_drain(t0, timeout);
    // The engine wakes itself for the deadline: nothing else needs to.
    assert!(w.proxy.poll_delay(t0).unwrap() <= timeout);
    assert!(
        w.run_until(secs(10), |w| all_done(w) && w.proxy.drained()),
        "no reset: client {:?} stats {}",
        flow_summary(&w.hosts[0], f),
        w.proxy.stats()
    );
    let c = &w.hosts[0].flows[f];
    let s = &w.hosts[1].flows[0];
    assert!(
        c.reset && !c.fin,
        "client {:?}",
        flow_summary(&w.hosts[0], f)
    );
    assert!(s.reset, "server {:?}", flow_summary(&w.hosts[1], 0));
    // Promptly: the RSTs leave in the poll at the deadline and arrive after
    // one link delay each.
    for (who, t) in [("client", c.t_done), ("server", s.t_done)] {
        let t = t.unwrap();
        assert!(
            t >= t0 + timeout && t <= t0 + timeout + Duration::from_millis(50),
            "{who} reset {} after the drain started",
            t - t0
        );
    }
    // Still far from the end, and what came is the stream's exact prefix.
    assert!(c.received_len > 0 && c.received_len < len);
    assert_bytes(
        &c.received,
        &pattern(7, len)[..c.received_len],
        "client prefix",
    );
    assert!(w.now() <= t0 + timeout + RST_FLUSH_BOUND);
    let st = w.proxy.stats();
    assert_eq!((st.drain_resets, st.completed, st.active), (1, 0, 0));
    assert!(w.proxy.idle_since().is_some());
    check_memory(&w.proxy);
}

#[test]
fn new_connections_are_refused_during_the_drain() {
    let mut w = source_world(8 << 20);
    let f = download_in_flight(&mut w);
    let accepted = w.proxy.stats().accepted;
    w.proxy.start_drain(w.now(), secs(3));
    w.run_for(Duration::from_millis(10));
    assert_eq!(w.proxy.listener_buffers().count(), 0, "listeners closed");
    let g = client_connect(&mut w, b"late".to_vec(), Close::AfterSend);
    assert!(w.run_until(secs(1), |w| w.hosts[0].flows[g].done));
    let late = &w.hosts[0].flows[g];
    assert!(late.reset && !late.established, "a SYN got through");
    assert_eq!(w.proxy.stats().accepted, accepted);
    assert_eq!(w.hosts[1].accepted, 1);
    // The open download was not disturbed by the refused SYN.
    assert!(!w.hosts[0].flows[f].done);
    // Draining again does not move the deadline, and the engine never
    // listens again (no refill) after the old connection is reset.
    w.proxy.start_drain(w.now(), secs(100));
    assert!(w.run_until(secs(5), |w| w.proxy.drained()));
    w.run_for(secs(2));
    assert_eq!(w.proxy.listener_buffers().count(), 0);
    assert_eq!(w.proxy.stats().drain_resets, 1);
}

#[test]
fn a_drain_with_nothing_open_is_over_at_once() {
    let mut w = reverse_world(Setup::default());
    echo_roundtrip(&mut w, b"before", secs(5));
    assert!(!w.proxy.drained(), "not before a drain starts");
    let t0 = w.now();
    w.proxy.start_drain(t0, secs(10));
    w.step();
    assert!(w.proxy.drained());
    assert_eq!(w.proxy.stats().drain_resets, 0);
    // The closed listeners were idle: nothing was sent to anybody.
    assert_eq!(w.proxy.stats().refused, 0);
}

#[test]
fn many_connections_drain_on_a_lossy_link_without_a_hang() {
    // Short and long transfers mixed on a lossy link: each either completes
    // byte for byte or is reset, and the drain ends within its bound.
    let mut w = reverse_world(Setup {
        serve: Serve::Echo,
        client_link: Link {
            loss: 0.05,
            ..Link::delay_ms(2)
        },
        seed: 11,
        ..Setup::default()
    });
    let mut rng = Rng::new(5);
    let mut flows = Vec::new();
    for i in 0..8 {
        let len = 1000 + rng.below(60_000) as usize;
        let close = if i % 2 == 0 {
            Close::AfterSend
        } else {
            Close::Never
        };
        flows.push((
            client_connect(&mut w, pattern(i, len), close),
            i,
            len,
            close,
        ));
    }
    w.run_for(Duration::from_millis(20));
    let t0 = w.now();
    w.proxy.start_drain(t0, secs(3));
    assert!(w.run_until(secs(10), |w| w.proxy.drained()));
    assert!(w.now() <= t0 + secs(3) + RST_FLUSH_BOUND);
    w.run_for(secs(1));
    for (f, seed, len, close) in flows {
        let c = &w.hosts[0].flows[f];
        if close == Close::Never {
            assert!(c.reset, "flow {f} that never closes was not reset");
        } else if !c.reset {
            assert!(c.fin);
            assert_bytes(&c.received, &pattern(seed, len), "echo");
        }
    }
}
