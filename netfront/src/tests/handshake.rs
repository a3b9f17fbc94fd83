//! Xenbus handshake variants and connection lifetime.

use std::format;
use std::string::String;
use std::vec;

use super::*;
use crate::testing::{BackendSetup, FRONT};
use crate::{BackendFeatures, Error, Reason, XenbusState};

#[test]
fn linux_backend_connects_with_deliberate_keys() {
    let mut h = H::legacy_connected();
    h.step();
    let keys = &h.be.seen_keys;
    let get = |k: &str| keys.get(k).map(String::as_str);
    assert_eq!(get("request-rx-copy"), Some("1"));
    assert_eq!(get("feature-rx-notify"), Some("1"));
    assert_eq!(get("feature-sg"), Some("0"));
    assert_eq!(get("feature-gso-tcpv4"), Some("0"));
    assert_eq!(get("feature-gso-tcpv6"), Some("0"));
    assert_eq!(get("feature-no-csum-offload"), Some("1"));
    assert_eq!(get("feature-ipv6-csum-offload"), Some("0"));
    assert_eq!(get("state"), Some("4"));
    for absent in [
        "multi-queue-num-queues",
        "event-channel-tx",
        "event-channel-rx",
        "request-multicast-control",
        "ctrl-ring-ref",
        "xdp-headroom",
    ] {
        assert_eq!(get(absent), None, "{absent} must not be written");
    }
    // The state is the last key written, after Initialising at the start.
    let writes = &h.world.inner().xs_writes;
    assert_eq!(
        writes.first().unwrap(),
        &(format!("{FRONT}/state"), String::from("1"))
    );
    assert_eq!(
        writes.last().unwrap(),
        &(format!("{FRONT}/state"), String::from("4"))
    );

    let Some(Event::Connected { mac, mtu, backend }) = h.events.first().cloned() else {
        panic!("no Connected event: {:?}", h.events)
    };
    assert_eq!(mac, MAC);
    assert_eq!(mtu, 1500);
    assert!(backend.rx_copy && backend.sg && backend.gso_tcpv4 && backend.split_event_channels);
    assert_eq!(backend.multi_queue_max_queues, 4);
    assert_eq!(h.nf.mac(), MAC);
    assert_eq!(h.nf.capabilities().max_transmission_unit, 1514);
    // Every RX buffer posted before Connected.
    assert_eq!(h.be.rx_requests_available(), 64);
}

#[test]
fn backend_with_only_rx_copy_connects() {
    let setup = BackendSetup {
        features: vec![("feature-rx-copy", "1")],
        ..Default::default()
    };
    let mut h = H::connected(setup, Config::default());
    h.step();
    assert_eq!(
        *h.nf.backend_features(),
        BackendFeatures {
            rx_copy: true,
            multi_queue_max_queues: 1,
            ..Default::default()
        }
    );
    // And it works.
    assert!(h.be.send_frame(&test_frame(1, 100)));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(1, 100)]);
}

#[test]
fn backend_without_rx_copy_is_refused_cleanly() {
    let setup = BackendSetup {
        features: vec![("feature-rx-flip", "1")],
        ..Default::default()
    };
    let mut h = H::new(setup, Config::default());
    h.step_until(50, |h| h.nf.state() == State::Disconnected);
    assert_eq!(
        h.events,
        vec![Event::Disconnected(Reason::Failed(
            Error::BackendLacksRxCopy
        ))]
    );
    assert_eq!(h.world.inner().pages_allocated, 0);
    h.assert_all_released();
    // Stays alive.
    for _ in 0..10 {
        h.step();
    }
    assert!(h.nf.receive(h.ts()).is_none());
    assert!(h.nf.transmit(h.ts()).is_none());
}

#[test]
fn slow_backend_hotplug_and_connect() {
    let setup = BackendSetup {
        hotplug_delay: 3000,
        connect_delay: 2000,
        ..Default::default()
    };
    let mut h = H::new(setup, Config::default());
    assert!(h.step_until(6000, |h| h.nf.is_connected()));
    assert!(h.now >= 1000 + 5000);
    assert!(matches!(h.events[..], [Event::Connected { .. }]));
    // Polled every 1 ms, but xenstore is read only every retry_ms (10 ms).
    let reads = h.world.inner().xs_reads;
    assert!(reads < 5000 / 10 + 50, "{reads} xenstore reads");
}

#[test]
fn backend_never_ready_times_out() {
    let setup = BackendSetup {
        hotplug_delay: u32::MAX,
        ..Default::default()
    };
    let cfg = Config {
        handshake_timeout_ms: 3000,
        ..Default::default()
    };
    let mut h = H::new(setup, cfg);
    assert!(h.step_until(5000, |h| h.nf.state() == State::Disconnected));
    assert!(
        (3000..3100).contains(&(h.now - 1000)),
        "timed out at {}",
        h.now - 1000
    );
    let err = Error::HandshakeTimeout {
        waiting_for: XenbusState::InitWait,
        backend_state: Some(XenbusState::Initialising),
    };
    assert_eq!(
        format!("{err}"),
        "timed out waiting for backend state InitWait(2), backend is Initialising(1)"
    );
    assert_eq!(h.events, vec![Event::Disconnected(Reason::Failed(err))]);
    h.assert_all_released();
}

#[test]
fn backend_never_connects_times_out_and_releases() {
    let setup = BackendSetup {
        connect_delay: u32::MAX,
        ..Default::default()
    };
    let cfg = Config {
        handshake_timeout_ms: 2000,
        ..Default::default()
    };
    let mut h = H::new(setup, cfg);
    assert!(h.step_until(10_000, |h| h.nf.state() == State::Disconnected));
    let err = Error::HandshakeTimeout {
        waiting_for: XenbusState::Connected,
        backend_state: Some(XenbusState::InitWait),
    };
    assert_eq!(
        h.events,
        vec![
            Event::Disconnected(Reason::Failed(err)),
            Event::Released { leaked_pages: 0 }
        ]
    );
    h.assert_all_released();
}

#[test]
fn backend_closes_during_handshake() {
    let setup = BackendSetup {
        connect_delay: 50,
        ..Default::default()
    };
    let mut h = H::new(setup, Config::default());
    assert!(h.step_until(20, |h| h.nf.state() == State::Initialising
        && h.world.front_state() == Some(XenbusState::Connected)));
    h.be.detach();
    assert!(h.step_until(100, |h| h.nf.state() == State::Disconnected));
    assert_eq!(
        h.events,
        vec![
            Event::Disconnected(Reason::Failed(Error::BackendClosed)),
            Event::Released { leaked_pages: 0 }
        ]
    );
    h.assert_all_released();
}

#[test]
fn mtu_from_xenstore() {
    for (node, want) in [
        (None, 1500u16),
        (Some("1400"), 1400),
        (Some("9000"), 1500),
        (Some("junk"), 1500),
        (Some("10"), 1500),
    ] {
        let setup = BackendSetup {
            mtu: node,
            ..Default::default()
        };
        let h = H::connected(setup, Config::default());
        assert_eq!(h.nf.mtu(), want, "mtu node {node:?}");
        assert_eq!(
            h.nf.capabilities().max_transmission_unit,
            want as usize + 14
        );
    }
}

#[test]
fn bad_or_missing_device_keys_fail_fast() {
    let mut h = H::new(
        BackendSetup {
            mac: "00:16:3e:zz:00:00",
            ..Default::default()
        },
        Config::default(),
    );
    h.step();
    assert_eq!(
        h.events,
        vec![Event::Disconnected(Reason::Failed(
            Error::BadXenstoreValue("mac")
        ))]
    );

    let mut h = H::new(BackendSetup::default(), Config::default());
    h.world.xs_rm_tree(&format!("{FRONT}/backend"));
    h.step();
    assert_eq!(
        h.events,
        vec![Event::Disconnected(Reason::Failed(Error::NoDevice))]
    );

    let mut h = H::new(BackendSetup::default(), Config::default());
    h.world.xs_set(&format!("{FRONT}/backend-id"), "70000");
    h.step();
    assert_eq!(
        h.events,
        vec![Event::Disconnected(Reason::Failed(
            Error::BadXenstoreValue("backend-id")
        ))]
    );

    let h = H::new(
        BackendSetup::default(),
        Config {
            vif: 1,
            ..Default::default()
        },
    );
    let mut h = h;
    h.step();
    assert_eq!(
        h.events,
        vec![Event::Disconnected(Reason::Failed(Error::NoDevice))]
    );
}

#[test]
fn device_key_errors_say_what_happened() {
    // A required key that cannot be read (xenstore error or timeout), is
    // missing, or does not parse: three different errors, each naming the key.
    let fail = |setup: BackendSetup, prep: &dyn Fn(&mut H)| -> Error {
        let mut h = H::new(setup, Config::default());
        prep(&mut h);
        h.step();
        match h.events.as_slice() {
            [Event::Disconnected(Reason::Failed(e))] => e.clone(),
            other => panic!("{other:?}"),
        }
    };
    let mac = format!("{FRONT}/mac");
    let id = format!("{FRONT}/backend-id");
    // How to break the key, the error, and how it reads.
    type Case<'a> = (&'a dyn Fn(&mut H), Error, &'a str);
    let cases: [Case; 6] = [
        (
            &|h| h.world.inner().xs_fail_path = Some((String::from("/mac"), 1)),
            Error::XenstoreRead("mac"),
            "xenstore error reading mac",
        ),
        (
            &|h| h.world.xs_rm_tree(&mac),
            Error::MissingXenstoreValue("mac"),
            "missing xenstore value for mac",
        ),
        (
            &|h| h.world.xs_set(&mac, "00:16:3e:zz:00:00"),
            Error::BadXenstoreValue("mac"),
            "unparsable xenstore value for mac",
        ),
        (
            &|h| h.world.inner().xs_fail_path = Some((String::from("backend-id"), 1)),
            Error::XenstoreRead("backend-id"),
            "xenstore error reading backend-id",
        ),
        (
            &|h| h.world.xs_rm_tree(&id),
            Error::MissingXenstoreValue("backend-id"),
            "missing xenstore value for backend-id",
        ),
        (
            // The first read of all: unreadable is not "no such device".
            &|h| h.world.inner().xs_fail_reads = 1,
            Error::XenstoreRead("backend"),
            "xenstore error reading backend",
        ),
    ];
    for (prep, want, text) in cases {
        let got = fail(BackendSetup::default(), prep);
        assert_eq!(got, want);
        assert_eq!(got.to_string(), text);
    }
    // The optional mtu: unreadable falls back to 1500 like absent.
    let mut h = H::new(BackendSetup::default(), Config::default());
    h.world.inner().xs_fail_path = Some((String::from("/mtu"), 1));
    assert!(h.step_until(200, |h| h.nf.is_connected()), "{:?}", h.events);
    assert_eq!(h.nf.mtu(), 1500);
}

#[test]
fn config_is_validated() {
    let w = crate::testing::World::new();
    for cfg in [
        Config {
            rx_buffers: 0,
            ..Default::default()
        },
        Config {
            rx_buffers: 257,
            ..Default::default()
        },
        Config {
            tx_buffers: 0,
            ..Default::default()
        },
        Config {
            tx_buffers: 300,
            ..Default::default()
        },
        Config {
            rx_budget: 0,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            Netfront::new(FakePlatform { world: w.clone() }, cfg),
            Err(Error::BadConfig(_))
        ));
    }
    // The extremes are fine and connect (with offload, one page per TX
    // buffer; rx_buffers 1 is too few for it).
    for offload in [false, true] {
        for (rx, tx) in [(1, 1), (256, 256)] {
            let h = H::connected(
                BackendSetup::default(),
                Config {
                    rx_buffers: rx,
                    tx_buffers: tx,
                    offload,
                    ..Default::default()
                },
            );
            let tx_pages = if offload && rx >= 18 {
                tx as usize
            } else {
                (tx as usize).div_ceil(2)
            };
            assert_eq!(h.world.live_pages(), 2 + rx as usize + tx_pages);
        }
    }
}

#[test]
fn grant_exhaustion_during_setup_is_an_error_not_a_leak() {
    let mut h = H::new(BackendSetup::default(), Config::default());
    h.world.inner().grant_limit = Some(40);
    h.step_until(20, |h| h.nf.state() == State::Disconnected);
    assert_eq!(
        h.events,
        vec![Event::Disconnected(Reason::Failed(Error::NoGrants))]
    );
    h.assert_all_released();

    let mut h = H::new(BackendSetup::default(), Config::default());
    h.world.inner().page_limit = Some(70);
    h.step_until(20, |h| h.nf.state() == State::Disconnected);
    assert_eq!(
        h.events,
        vec![Event::Disconnected(Reason::Failed(Error::NoMemory))]
    );
    h.assert_all_released();
}

#[test]
fn detach_while_connected_is_a_clean_disconnect() {
    let mut h = H::legacy_connected();
    for i in 0..10 {
        assert!(h.tx(&test_frame(i, 200)));
    }
    h.step();
    h.events.clear();
    h.be.detach();
    assert!(h.step_until(2000, |h| h.nf.state() == State::Disconnected));
    assert_eq!(
        h.events,
        vec![
            Event::Disconnected(Reason::BackendClosing),
            Event::Released { leaked_pages: 0 }
        ]
    );
    // Frontend answered Closed; the toolstack removed both directories.
    assert_eq!(h.world.xs_get(&format!("{FRONT}/state")), None);
    h.assert_all_released();
    // Alive and quiet afterwards.
    for _ in 0..100 {
        h.step();
    }
    assert!(h.events.len() == 2);
    assert!(h.nf.receive(h.ts()).is_none());
    assert!(h.nf.transmit(h.ts()).is_none());
    assert_eq!(h.nf.poll_delay(h.now), None);
    // Reconnecting to a device that is gone fails cleanly too.
    assert!(h.nf.reconnect());
    h.step();
    assert_eq!(
        h.events[2..],
        [Event::Disconnected(Reason::Failed(Error::NoDevice))]
    );
}

#[test]
fn frontend_shutdown_then_reconnect() {
    let mut h = H::legacy_connected();
    h.nf.close();
    assert!(h.step_until(100, |h| h.nf.state() == State::Disconnected));
    assert_eq!(
        h.events[1..],
        [
            Event::Disconnected(Reason::Shutdown),
            Event::Released { leaked_pages: 0 }
        ]
    );
    assert_eq!(h.be.state, XenbusState::Closed);
    h.assert_all_released();
    // The backend is still online: a new handshake works and frames flow.
    assert!(h.nf.reconnect());
    assert!(h.step_until(100, |h| h.nf.is_connected() && h.be.is_connected()));
    assert!(h.be.send_frame(&test_frame(5, 99)));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(5, 99)]);
    assert!(h.tx(&test_frame(6, 77)));
    assert_eq!(h.be.service_tx(), vec![test_frame(6, 77)]);
}

#[test]
fn pages_the_backend_keeps_mapped_are_leaked_not_reused() {
    let cfg = Config {
        close_timeout_ms: 500,
        ..Default::default()
    };
    let mut h = H::connected(BackendSetup::default(), cfg);
    h.be.detach();
    h.backend_alive = false; // netback hangs and never unmaps the rings
    assert!(h.step_until(2000, |h| h.nf.state() == State::Disconnected));
    assert_eq!(
        h.events[1..],
        [
            Event::Disconnected(Reason::BackendClosing),
            Event::Released { leaked_pages: 2 }
        ]
    );
    assert_eq!(h.nf.stats().pages_leaked, 2);
    assert_eq!(h.world.live_pages(), 2);
    assert_eq!(h.world.live_grants(), 2);
    assert_eq!(h.world.open_ports(), 0);
}

#[test]
fn transient_xenstore_errors_are_waited_out() {
    // During the handshake (after the device keys were read)...
    let setup = BackendSetup {
        hotplug_delay: 5,
        ..Default::default()
    };
    let mut h = H::new(setup, Config::default());
    h.step(); // reads backend, backend-id, mac, mtu
    h.world.inner().xs_fail_reads = 20;
    assert!(
        h.step_until(1000, |h| h.nf.is_connected()),
        "{:?}",
        h.events
    );
    // ...and while connected: unreadable is not "gone".
    let cfg_check = h.nf.config().state_check_ms;
    h.world.inner().xs_fail_reads = 50;
    for _ in 0..(cfg_check * 3) {
        h.step();
    }
    assert!(h.nf.is_connected(), "{:?}", h.events);
    assert!(h.be.send_frame(&test_frame(9, 64)));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(9, 64)]);
}

#[test]
fn backend_state_is_checked_at_the_configured_interval() {
    let mut h = H::legacy_connected();
    let r0 = h.world.inner().xs_reads;
    for _ in 0..1000 {
        h.step();
    }
    let reads = h.world.inner().xs_reads - r0;
    assert!(
        (1..=3).contains(&reads),
        "{reads} xenstore reads in 1 s while connected"
    );
    assert!(h.nf.poll_delay(h.now).is_some_and(|d| d <= 500));
}

/// With `state_check_max_ms` the fallback check backs off while the backend
/// stays connected (100, 200, 400, 800, 800... ms), a watch event (a check
/// at once) starts it again, and a backend that goes away is still seen at
/// the next check.
#[test]
fn backend_state_checks_back_off_while_connected() {
    let cfg = Config {
        state_check_ms: 100,
        state_check_max_ms: 800,
        ..legacy()
    };
    let mut h = H::connected(BackendSetup::default(), cfg);
    let reads_in = |h: &mut H, ms: u64| {
        let r0 = h.world.inner().xs_reads;
        for _ in 0..ms {
            h.step();
        }
        h.world.inner().xs_reads - r0
    };
    // Checks at +100, +300, +700, +1500, +2300, +3100 ms.
    assert_eq!(reads_in(&mut h, 3150), 6);
    let d = h.nf.poll_delay(h.now);
    assert!(d.is_some_and(|d| d > 700 && d <= 800), "{d:?}");
    // 8 s more at the ceiling: 10 reads.
    assert_eq!(reads_in(&mut h, 8000), 10);
    // A watch event: one read now, and the backoff starts again (the next
    // at +200 ms, then +600 ms), not at 800 ms.
    h.nf.check_backend_soon();
    assert_eq!(reads_in(&mut h, 1), 1);
    assert_eq!(reads_in(&mut h, 250), 1);
    assert_eq!(reads_in(&mut h, 400), 1);
    // Backed off again, a detach is seen at the next check (the watch
    // event lost), not sooner than the interval allows.
    for _ in 0..3000 {
        h.step();
    }
    h.events.clear();
    h.be.detach();
    assert!(h.step_until(801, |h| h.nf.state() != State::Connected));
    assert_eq!(h.events[0], Event::Disconnected(Reason::BackendClosing));
}

#[test]
fn unreadable_feature_keys() {
    // The required one is retried...
    let mut h = H::new(BackendSetup::default(), Config::default());
    h.world.inner().xs_fail_path = Some((String::from("feature-rx-copy"), 3));
    assert!(h.step_until(200, |h| h.nf.is_connected()), "{:?}", h.events);
    assert!(h.nf.backend_features().rx_copy);
    // ...an optional one just reads as absent.
    let mut h = H::new(BackendSetup::default(), Config::default());
    h.world.inner().xs_fail_path = Some((String::from("feature-sg"), 1));
    assert!(h.step_until(200, |h| h.nf.is_connected()), "{:?}", h.events);
    assert!(!h.nf.backend_features().sg && h.nf.backend_features().gso_tcpv4);
}

#[test]
fn detach_then_attach_reconnects_only_to_the_new_backend() {
    let mut h = H::legacy_connected();
    h.events.clear();
    // Connected: nothing to do.
    assert!(!h.nf.reconnect_if_attached());
    h.be.detach();
    // Closing: still not.
    h.step();
    assert!(!h.nf.reconnect_if_attached());
    assert!(h.step_until(2000, |h| h.nf.state() == State::Disconnected));
    h.assert_all_released();
    // Both directories gone: no device to reconnect to.
    assert!(!h.nf.reconnect_if_attached());
    assert_eq!(h.nf.state(), State::Disconnected);
    // A backend directory left in Closed (the old one, not yet removed)
    // is no new vif either.
    h.world.xs_set(&format!("{FRONT}/backend"), BACK);
    h.world.xs_set(&format!("{BACK}/state"), "6");
    assert!(!h.nf.reconnect_if_attached());
    h.world.xs_rm_tree(FRONT);
    h.world.xs_rm_tree(BACK);
    // `xl network-attach`: a new vif, the same device id.
    h.be = FakeNetback::new(&h.world, BackendSetup::default());
    assert!(h.nf.reconnect_if_attached());
    assert!(!h.nf.reconnect_if_attached(), "only from Disconnected");
    assert!(h.step_until(200, |h| h.nf.is_connected() && h.be.is_connected()));
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::Connected { .. })));
    // Frames flow both ways again, byte for byte.
    assert!(h.be.send_frame(&test_frame(8, 300)));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(8, 300)]);
    assert!(h.tx(&test_frame(9, 120)));
    assert_eq!(h.be.service_tx(), vec![test_frame(9, 120)]);
}

#[test]
fn handshake_steps_are_reported_once_each_in_order() {
    use crate::HandshakeStep::*;
    // The required feature key unreadable twice: publish runs three times,
    // InitWait is still reported once.
    let setup = BackendSetup {
        hotplug_delay: 5,
        ..Default::default()
    };
    let mut h = H::new(setup, Config::default());
    h.world.inner().xs_fail_path = Some((String::from("feature-rx-copy"), 2));
    h.step();
    assert_eq!(h.world.inner().handshake_steps, [DeviceRead]);
    assert!(h.step_until(200, |h| h.nf.is_connected()), "{:?}", h.events);
    let all = [DeviceRead, BackendInitWait, KeysWritten, BackendConnected];
    assert_eq!(h.world.inner().handshake_steps, all);
    // Our keys were all written when KeysWritten was reported: Connected
    // was the last write before it.
    assert_eq!(
        h.world.inner().xs_writes.last().unwrap(),
        &(format!("{FRONT}/state"), String::from("4"))
    );
    // A new connection reports its own steps.
    h.nf.close();
    assert!(h.step_until(100, |h| h.nf.state() == State::Disconnected));
    assert!(h.nf.reconnect());
    assert!(h.step_until(100, |h| h.nf.is_connected()));
    assert_eq!(h.world.inner().handshake_steps[4..], all);
}

#[test]
fn handshake_reads_and_writes_in_batches() {
    let mut h = H::legacy_connected();
    let w = h.world.inner();
    // Our device keys, then the backend's features: a batch each.
    assert_eq!(w.xs_read_batches, 2);
    // Rings, event channel, the 7 features and Connected: one batch.
    assert_eq!(
        w.xs_write_batches,
        [3 + crate::FRONTEND_FEATURES.len() + 1],
        "{:?}",
        w.xs_writes
    );
    // Besides the batch only Initialising was written on its own.
    assert_eq!(
        w.xs_writes.len(),
        1 + 3 + crate::FRONTEND_FEATURES.len() + 1
    );
    drop(w);
    h.step();
}

#[test]
fn a_failed_key_batch_fails_the_handshake_and_releases_everything() {
    let mut h = H::new(BackendSetup::default(), Config::default());
    h.world.inner().xs_fail_write_all = 1;
    assert!(h.step_until(2000, |h| h.nf.state() == State::Disconnected));
    assert_eq!(
        h.events[..1],
        [Event::Disconnected(Reason::Failed(Error::Xenstore))]
    );
    // Nothing of the batch was written: the backend never saw Connected
    // nor a ring reference.
    assert_eq!(h.world.xs_get(&format!("{FRONT}/tx-ring-ref")), None);
    assert!(!h.be.is_connected());
    assert!(!h
        .world
        .inner()
        .handshake_steps
        .contains(&crate::HandshakeStep::KeysWritten));
    h.assert_all_released();
}

#[test]
fn a_backend_watch_skips_the_retry_wait() {
    let setup = BackendSetup {
        hotplug_delay: 3,
        ..Default::default()
    };
    let cfg = Config {
        retry_ms: 1000,
        ..Default::default()
    };
    let mut h = H::new(setup, cfg);
    h.step(); // device keys read; the backend is not in InitWait yet
    for _ in 0..5 {
        h.step();
    }
    // Polled every ms, but xenstore is read only every retry_ms.
    let reads = h.world.inner().xs_reads;
    h.step();
    assert_eq!(h.world.inner().xs_reads, reads);
    assert!(h.nf.poll_delay(h.now).is_some_and(|d| d > 900));
    // The toolstack's watch fired: the next poll reads the state now and
    // goes on with the handshake.
    h.nf.check_backend_soon();
    assert_eq!(h.nf.poll_delay(h.now), Some(0));
    h.step();
    assert!(h.world.inner().xs_reads > reads);
    assert!(
        h.world
            .inner()
            .handshake_steps
            .contains(&crate::HandshakeStep::KeysWritten),
        "{:?}",
        h.world.inner().handshake_steps
    );
}
