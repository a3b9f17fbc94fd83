//! Frames through the rings: wrap-around, full rings, budgets, notifications.

use std::vec::Vec;

use super::*;
use crate::testing::BackendSetup;

/// Move `n` frames each way in batches, checking every byte.
pub(super) fn pump(h: &mut H, n: u32) {
    let mut sent = 0u32;
    let mut batch = 1u32;
    while sent < n {
        // RX: backend -> frontend.
        let k = batch.min(n - sent).min(32);
        for i in 0..k {
            assert!(
                h.be.send_frame(&test_frame(sent + i, size_for(sent + i))),
                "rx ring full at {}",
                sent + i
            );
        }
        h.be.push_rx();
        let got = h.rx_all();
        assert_eq!(got.len(), k as usize);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(
                *f,
                test_frame(sent + i as u32, size_for(sent + i as u32)),
                "rx frame {}",
                sent + i as u32
            );
        }
        // TX: frontend -> backend.
        for i in 0..k {
            let s = 1_000_000 + sent + i;
            assert!(h.tx(&test_frame(s, size_for(s))), "no tx token at {s}");
        }
        let out = h.be.service_tx();
        assert_eq!(out.len(), k as usize);
        for (i, f) in out.iter().enumerate() {
            let s = 1_000_000 + sent + i as u32;
            assert_eq!(*f, test_frame(s, size_for(s)), "tx frame {s}");
        }
        h.step();
        sent += k;
        batch = batch % 61 + 1;
    }
}

#[test]
fn thousands_of_frames_wrap_the_rings() {
    let mut h = H::legacy_connected();
    pump(&mut h, 6000);
    let s = h.nf.stats().clone();
    assert_eq!(s.rx_frames, s.tx_frames);
    assert_eq!(s.rx_frames, 6000);
    assert_eq!(s.tx_completed, s.tx_frames);
    assert_eq!(
        s.rx_dropped() + s.tx_dropped() + s.tx_bad_id + s.rsp_prod_overflow,
        0,
        "{s}"
    );
    assert_eq!(h.nf.tx_in_flight(), 0);
}

#[test]
fn u32_ring_indexes_wrap_end_to_end() {
    let cfg = Config {
        ring_start: u32::MAX - 300,
        ..Default::default()
    };
    let mut h = H::connected(BackendSetup::default(), cfg);
    pump(&mut h, 2000);
    assert!(h.be.rx_rsp_prod_pvt() < 3000, "indexes did not wrap");
    let s = h.nf.stats();
    assert_eq!(s.rx_dropped() + s.rsp_prod_overflow + s.tx_bad_id, 0, "{s}");
}

#[test]
fn full_rx_ring_then_refill() {
    let mut h = H::legacy_connected();
    for i in 0..64 {
        assert!(h.be.send_frame(&test_frame(i, 1514)));
    }
    assert!(
        !h.be.send_frame(&test_frame(64, 100)),
        "more rx buffers than configured"
    );
    h.be.push_rx();
    assert_eq!(h.be.rx_requests_available(), 0);
    let got = h.rx_all();
    assert_eq!(got.len(), 64);
    assert_eq!(got[63], test_frame(63, 1514));
    // Every buffer was posted again.
    assert_eq!(h.be.rx_requests_available(), 64);
}

#[test]
fn full_tx_applies_backpressure_without_dropping() {
    let mut h = H::legacy_connected();
    for i in 0..32 {
        assert!(h.tx(&test_frame(i, 1514)), "tx {i}");
    }
    assert_eq!(h.nf.tx_in_flight(), 32);
    assert!(!h.tx(&test_frame(99, 60)));
    assert!(h.nf.stats().tx_ring_full >= 1);
    // A received frame waits too (its reply would need a TX buffer).
    assert!(h.be.send_frame(&test_frame(500, 60)));
    h.be.push_rx();
    assert!(h.rx_all().is_empty());
    // Nothing to do until the backend completes a TX: do not spin.
    h.step();
    assert_ne!(h.nf.poll_delay(h.now), Some(0));
    // The backend completes: everything resumes, nothing was lost.
    let out = h.be.service_tx();
    assert_eq!(out.len(), 32);
    assert_eq!(h.rx_all(), std::vec![test_frame(500, 60)]);
    assert!(h.tx(&test_frame(99, 60)));
    assert_eq!(h.be.service_tx(), std::vec![test_frame(99, 60)]);
    assert_eq!(h.nf.stats().tx_dropped(), 0);
}

#[test]
fn rx_work_per_poll_is_bounded() {
    let cfg = Config {
        rx_budget: 10,
        ..Default::default()
    };
    let mut h = H::connected(BackendSetup::default(), cfg);
    for i in 0..50 {
        assert!(h.be.send_frame(&test_frame(i, 100)));
    }
    h.be.push_rx();
    let mut got = Vec::new();
    for round in 0..5 {
        let batch = h.rx_all();
        assert_eq!(batch.len(), 10, "round {round}");
        got.extend(batch);
        if round < 4 {
            assert_eq!(
                h.nf.poll_delay(h.now),
                Some(0),
                "more work must be signalled"
            );
        }
        h.step();
    }
    assert_eq!(got.len(), 50);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, f)| *f == test_frame(i as u32, 100)));
    assert_eq!(h.nf.stats().rx_budget_exhausted, 4);
    assert!(h.rx_all().is_empty());
}

#[test]
fn oversize_and_runt_tx_frames_are_dropped_and_counted() {
    let mut h = H::legacy_connected();
    assert!(h.tx(&test_frame(1, 1515)));
    assert!(h.tx(&[0u8; 13]));
    assert!(h.tx(&test_frame(2, 1514)));
    assert_eq!(h.be.service_tx(), std::vec![test_frame(2, 1514)]);
    assert_eq!(h.nf.stats().tx_drop_bad_len, 2);
}

#[test]
fn event_indexes_ask_for_exactly_the_needed_notifications() {
    let mut h = H::legacy_connected();
    let port = h.be.port();
    // Frontend drained RX: the next response must raise an event...
    assert!(h.rx_all().is_empty());
    assert!(h.be.send_frame(&test_frame(1, 60)));
    assert!(h.be.push_rx());
    assert!(h.world.front_pending(port));
    // ...but not a second one before the frontend has looked.
    assert!(h.be.send_frame(&test_frame(2, 60)));
    assert!(!h.be.push_rx());
    h.step(); // poll takes the pending bit
    assert_eq!(h.nf.stats().events, 1);
    assert!(!h.world.front_pending(port));
    assert_eq!(h.rx_all().len(), 2);
    assert!(h.be.send_frame(&test_frame(3, 60)));
    assert!(h.be.push_rx());

    // TX: the backend asks for a kick at req_cons + 1 when it has caught up.
    let _ = h.be.service_tx();
    let k0 = h.world.kicks(port);
    assert!(h.tx(&test_frame(4, 60)));
    assert_eq!(h.world.kicks(port), k0 + 1);
    assert!(h.tx(&test_frame(5, 60)));
    assert_eq!(
        h.world.kicks(port),
        k0 + 1,
        "kicked although the backend did not ask"
    );
    assert_eq!(h.be.service_tx().len(), 2);
    assert!(h.tx(&test_frame(6, 60)));
    assert_eq!(h.world.kicks(port), k0 + 2);

    // RX refill: a backend that ran out of requests asks to be kicked when
    // new ones are posted.
    let _ = h.rx_all();
    let _ = h.be.service_tx();
    while h.be.send_frame(&test_frame(7, 60)) {}
    h.be.arm_rx_req_event();
    h.be.push_rx();
    let k1 = h.world.kicks(port);
    assert_eq!(h.rx_all().len(), 64);
    assert!(
        h.world.kicks(port) > k1,
        "refill after starvation must kick"
    );
}

#[test]
fn tx_completion_raises_an_event_when_frontend_waits() {
    let mut h = H::legacy_connected();
    let port = h.be.port();
    for i in 0..32 {
        assert!(h.tx(&test_frame(i, 100)));
    }
    assert!(!h.tx(&test_frame(99, 100))); // full: reaped and armed rsp_event
    let reqs = h.be.take_tx();
    h.be.put_tx_response(reqs[0].0.id, 0);
    assert!(
        h.be.push_tx(),
        "the first completion after a full ring must notify"
    );
    assert!(h.world.front_pending(port));
}
