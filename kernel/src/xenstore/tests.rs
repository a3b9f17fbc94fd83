//! Client tests against the fake xenstored in `fake.rs`.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::client::{
    Broken, Op, TxId, XsError, DEFAULT_TIMEOUT_NS, MAX_QUEUED_EVENTS, MAX_TX_ATTEMPTS,
};
use super::fake::{message, setup, setup_at, watch_event, Client};
use super::ring::{self, SharedPage};
use super::wire::{Errno, MsgType, WatchEvent, WireError, HEADER_LEN};

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

fn drain(xs: &mut Client) -> Vec<WatchEvent> {
    let mut v = Vec::new();
    while let Some(e) = xs.poll_watch().unwrap() {
        v.push(e);
    }
    v
}

/// Makes the next reply carry a different header field or payload.
fn mangle(
    srv: &core::cell::RefCell<super::fake::Server>,
    f: impl FnMut(Vec<u8>) -> Vec<u8> + 'static,
) {
    srv.borrow_mut().mangle = Some(Box::new(f));
}

fn set_word(m: &mut [u8], at: usize, v: u32) {
    m[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn write_read_directory_rm() {
    let (mut xs, _srv) = setup();
    xs.write("device/vif/0/mac", "00:16:3e:00:00:01").unwrap();
    xs.write("device/vif/0/state", "1").unwrap();
    assert_eq!(xs.read("device/vif/0/mac").unwrap(), "00:16:3e:00:00:01");
    assert_eq!(xs.directory("device/vif/0").unwrap(), vec!["mac", "state"]);
    assert_eq!(
        xs.directory("device/vif/0/mac").unwrap(),
        Vec::<String>::new()
    );
    xs.rm("device/vif/0").unwrap();
    assert_eq!(xs.directory("device/vif").unwrap(), Vec::<String>::new());
    xs.write("data/ready", "").unwrap();
    assert_eq!(xs.read("data/ready").unwrap(), "");
}

#[test]
fn server_error_is_reported_with_op_and_path() {
    let (mut xs, _srv) = setup();
    let e = xs.read("device/vif/0/mac").unwrap_err();
    assert_eq!(e.errno(), Some(&Errno::ENOENT));
    assert_eq!(e.to_string(), "xenstore: read device/vif/0/mac: ENOENT");
    let e = xs.directory("nope").unwrap_err();
    assert_eq!(e.to_string(), "xenstore: directory nope: ENOENT");
    // Still usable afterwards.
    xs.write("a", "b").unwrap();
}

#[test]
fn error_reply_with_unknown_name_is_kept() {
    let (mut xs, srv) = setup();
    mangle(&srv, |m| {
        let mut r = message(MsgType::Error as u32, 1, 0, b"EQUOTA\0");
        r[4..8].copy_from_slice(&m[4..8]);
        r
    });
    let e = xs.write("a", "b").unwrap_err();
    assert_eq!(e.errno(), Some(&Errno::Other("EQUOTA".into())));
    assert_eq!(e.to_string(), "xenstore: write a: EQUOTA");
}

#[test]
fn values_larger_than_the_ring_go_both_ways() {
    // 4096 - "big\0" is the largest value a write can carry; it needs four
    // laps of the 1024-byte ring each way.
    let (mut xs, srv) = setup();
    let value: String = (0..4092).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    xs.write("big", &value).unwrap();
    assert_eq!(srv.borrow().tree["big"], value);
    assert_eq!(xs.read("big").unwrap(), value);
}

#[test]
fn oversized_and_bad_requests_are_refused_before_sending() {
    let (mut xs, srv) = setup();
    let value = "x".repeat(4093);
    let e = xs.write("big", &value).unwrap_err();
    assert!(matches!(e, XsError::Invalid { op: Op::Write, .. }), "{e:?}");
    assert!(matches!(xs.read("").unwrap_err(), XsError::Invalid { .. }));
    assert!(matches!(
        xs.read("a\0b").unwrap_err(),
        XsError::Invalid { .. }
    ));
    assert!(matches!(
        xs.watch("a", "t\0").unwrap_err(),
        XsError::Invalid { .. }
    ));
    assert_eq!(
        xs.read("").unwrap_err().to_string(),
        "xenstore: read: empty path"
    );
    assert!(srv.borrow().log.is_empty());
    assert_eq!(srv.borrow().page.read_u32(ring::REQ_PROD), 0);
}

#[test]
fn many_messages_wrap_the_ring_and_the_indices() {
    // Indices start just below u32::MAX so they wrap early on; a few hundred
    // messages of odd sizes make many laps of both rings.
    let (mut xs, srv) = setup_at(u32::MAX - 300);
    for i in 0..400u32 {
        let path = format!("data/k{}", i % 7);
        let value = "v".repeat((i as usize * 37) % 900);
        xs.write(&path, &value).unwrap();
        assert_eq!(xs.read(&path).unwrap(), value, "message {i}");
    }
    let page = srv.borrow().page.clone();
    let (prod, cons) = (page.read_u32(ring::RSP_PROD), page.read_u32(ring::RSP_CONS));
    assert_eq!(prod, cons);
    assert!(prod < u32::MAX - 300, "indices wrapped");
}

#[test]
fn watch_fires_initially_and_on_change() {
    let (mut xs, srv) = setup();
    xs.watch("control/shutdown", "shutdown").unwrap();
    assert_eq!(drain(&mut xs), vec![ev("control/shutdown", "shutdown")]);
    assert_eq!(xs.poll_watch().unwrap(), None);

    // Another domain (the toolstack) writes the key while the guest is idle.
    srv.borrow_mut()
        .tree
        .insert("control/shutdown".into(), "poweroff".into());
    srv.borrow_mut()
        .send_raw(&watch_event("control/shutdown", "shutdown"));
    assert_eq!(drain(&mut xs), vec![ev("control/shutdown", "shutdown")]);
    assert_eq!(xs.read("control/shutdown").unwrap(), "poweroff");
    assert!(!xs.take_events_lost());

    xs.unwatch("control/shutdown", "shutdown").unwrap();
    xs.write("control/shutdown", "").unwrap();
    assert_eq!(drain(&mut xs), vec![]);
}

#[test]
fn watch_events_interleaved_with_a_reply_are_queued() {
    let (mut xs, srv) = setup();
    xs.write("device/vif/0/state", "4").unwrap();
    srv.borrow_mut().before_reply = vec![watch_event("a", "1"), watch_event("b", "2")];
    assert_eq!(xs.read("device/vif/0/state").unwrap(), "4");
    assert_eq!(drain(&mut xs), vec![ev("a", "1"), ev("b", "2")]);
}

#[test]
fn poll_watch_never_blocks() {
    let (mut xs, srv) = setup();
    srv.borrow_mut().deaf = true;
    assert_eq!(xs.poll_watch().unwrap(), None);
    assert_eq!(srv.borrow().waits, 0);
}

#[test]
fn duplicate_events_are_coalesced() {
    let (mut xs, srv) = setup();
    for _ in 0..5 {
        srv.borrow_mut()
            .send_raw(&watch_event("control/shutdown", "s"));
        srv.borrow_mut()
            .send_raw(&watch_event("control/sysrq", "s"));
    }
    assert_eq!(
        drain(&mut xs),
        vec![ev("control/shutdown", "s"), ev("control/sysrq", "s")]
    );
    assert!(!xs.take_events_lost());
}

#[test]
fn queue_overflow_is_flagged() {
    let (mut xs, srv) = setup();
    // Arrive while a request is in flight, so nothing drains them meanwhile.
    srv.borrow_mut().before_reply = (0..MAX_QUEUED_EVENTS + 3)
        .map(|i| watch_event(&format!("k{i}"), "t"))
        .collect();
    xs.write("x", "y").unwrap();
    assert_eq!(drain(&mut xs).len(), MAX_QUEUED_EVENTS);
    assert!(xs.take_events_lost());
    assert!(!xs.take_events_lost(), "flag clears when taken");
}

#[test]
fn malformed_watch_events_count_as_lost() {
    let (mut xs, srv) = setup();
    srv.borrow_mut()
        .send_raw(&message(MsgType::WatchEvent as u32, 0, 0, b"only-a-path\0"));
    srv.borrow_mut()
        .send_raw(&message(MsgType::WatchEvent as u32, 0, 0, b"p\0\xff\0"));
    srv.borrow_mut().send_raw(&watch_event("good", "t"));
    assert_eq!(drain(&mut xs), vec![ev("good", "t")]);
    assert!(xs.take_events_lost());
}

#[test]
fn transaction_commits() {
    let (mut xs, srv) = setup();
    xs.write("counter", "41").unwrap();
    let seen = xs
        .transaction(|tx| {
            assert_ne!(tx.id(), TxId::NONE);
            let n: u32 = tx.read("counter")?.parse().unwrap();
            tx.write("counter", &(n + 1).to_string())?;
            Ok(n)
        })
        .unwrap();
    assert_eq!(seen, 41);
    assert_eq!(srv.borrow().tree["counter"], "42");
}

#[test]
fn transaction_retries_on_eagain() {
    let (mut xs, srv) = setup();
    xs.write("counter", "0").unwrap();
    srv.borrow_mut().eagain_commits = 3;
    let mut runs = 0;
    xs.transaction(|tx| {
        runs += 1;
        let n: u32 = tx.read("counter")?.parse().unwrap();
        tx.write("counter", &(n + 1).to_string())
    })
    .unwrap();
    assert_eq!(runs, 4);
    // Failed attempts left no trace: the count went up once.
    assert_eq!(srv.borrow().tree["counter"], "1");
}

#[test]
fn transaction_gives_up_after_bounded_retries() {
    let (mut xs, srv) = setup();
    srv.borrow_mut().eagain_commits = u32::MAX;
    let mut runs = 0;
    let e = xs.transaction(|tx| {
        runs += 1;
        tx.write("k", "v")
    });
    assert_eq!(
        e,
        Err(XsError::Conflict {
            attempts: MAX_TX_ATTEMPTS
        })
    );
    assert_eq!(runs, MAX_TX_ATTEMPTS);
    assert_eq!(
        e.unwrap_err().to_string(),
        "xenstore: transaction: still EAGAIN after 8 attempts"
    );
    assert!(!srv.borrow().tree.contains_key("k"));
}

#[test]
fn transaction_body_error_aborts() {
    let (mut xs, srv) = setup();
    let e = xs.transaction(|tx| {
        tx.write("k", "v")?;
        tx.read("missing")
    });
    assert_eq!(e.unwrap_err().errno(), Some(&Errno::ENOENT));
    let last = srv.borrow().log.last().cloned().unwrap();
    assert_eq!(
        (last.0, &last.2[..]),
        (MsgType::TransactionEnd as u32, &b"F\0"[..])
    );
    assert!(!srv.borrow().tree.contains_key("k"));
}

#[test]
fn manual_transaction_is_isolated_until_commit() {
    let (mut xs, srv) = setup();
    let tx = xs.transaction_start().unwrap();
    xs.in_transaction(tx).write("k", "v").unwrap();
    assert_eq!(xs.in_transaction(tx).read("k").unwrap(), "v");
    assert_eq!(xs.read("k").unwrap_err().errno(), Some(&Errno::ENOENT));
    xs.transaction_end(tx, true).unwrap();
    assert_eq!(xs.read("k").unwrap(), "v");
    // The request headers carried the id.
    assert!(srv
        .borrow()
        .log
        .iter()
        .any(|(ty, id, _)| *ty == MsgType::Write as u32 && *id == tx.0));
}

#[test]
fn wrong_req_id_is_an_error_and_the_client_recovers() {
    let (mut xs, srv) = setup();
    xs.write("k", "v").unwrap();
    mangle(&srv, |mut m| {
        set_word(&mut m, 4, 999);
        m
    });
    let e = xs.read("k").unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                why: WireError::WrongReqId { got: 999, .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(xs.read("k").unwrap(), "v");
}

#[test]
fn wrong_and_unknown_reply_types_are_errors() {
    let (mut xs, srv) = setup();
    xs.write("k", "v").unwrap();
    mangle(&srv, |mut m| {
        set_word(&mut m, 0, MsgType::Write as u32);
        m
    });
    let e = xs.read("k").unwrap_err();
    assert_eq!(
        e,
        XsError::Malformed {
            op: Op::Read,
            path: "k".into(),
            why: WireError::WrongType { got: 11, want: 2 }
        }
    );
    assert_eq!(
        e.to_string(),
        "xenstore: read k: malformed reply: reply type 11, expected 2"
    );

    mangle(&srv, |mut m| {
        set_word(&mut m, 0, 0xffff);
        m
    });
    let e = xs.read("k").unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                why: WireError::UnknownType(0xffff),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(xs.read("k").unwrap(), "v");
}

/// Replaces the next reply's payload, keeping its header consistent.
fn payload(srv: &core::cell::RefCell<super::fake::Server>, ty: MsgType, body: &'static [u8]) {
    mangle(srv, move |m| {
        let mut r = message(ty as u32, 0, 0, body);
        r[4..12].copy_from_slice(&m[4..12]);
        r
    });
}

#[test]
fn malformed_payloads_are_errors() {
    let (mut xs, srv) = setup();
    xs.write("dir/a", "1").unwrap();

    payload(&srv, MsgType::Read, b"\xff\xfe");
    let e = xs.read("dir/a").unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                why: WireError::NotUtf8,
                ..
            }
        ),
        "{e:?}"
    );

    payload(&srv, MsgType::Directory, b"a\0b");
    let e = xs.directory("dir").unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                why: WireError::MissingNul,
                ..
            }
        ),
        "{e:?}"
    );

    payload(&srv, MsgType::Error, b"ENOENT");
    let e = xs.read("dir/a").unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                why: WireError::MissingNul,
                ..
            }
        ),
        "{e:?}"
    );

    payload(&srv, MsgType::Write, b"OK");
    let e = xs.write("dir/a", "2").unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                why: WireError::BadAck,
                ..
            }
        ),
        "{e:?}"
    );

    payload(&srv, MsgType::TransactionStart, b"0\0");
    let e = xs.transaction_start().unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                why: WireError::BadTxId,
                ..
            }
        ),
        "{e:?}"
    );

    // None of that broke the connection.
    assert_eq!(xs.directory("dir").unwrap(), vec!["a"]);
}

#[test]
fn oversized_length_breaks_the_connection_for_good() {
    let (mut xs, srv) = setup();
    xs.write("k", "v").unwrap();
    mangle(&srv, |mut m| {
        set_word(&mut m, 12, 5000);
        m
    });
    let e = xs.read("k").unwrap_err();
    let why = Broken::Framing(WireError::TooLong(5000));
    assert_eq!(
        e,
        XsError::Broken {
            op: Op::Read,
            path: "k".into(),
            why
        }
    );
    assert_eq!(
        e.to_string(),
        "xenstore: read k: stream lost: payload length 5000 over 4096"
    );
    // Every later call fails at once, without waiting.
    let waits = srv.borrow().waits;
    assert!(matches!(
        xs.write("k", "w").unwrap_err(),
        XsError::Broken { op: Op::Write, .. }
    ));
    assert!(matches!(
        xs.poll_watch().unwrap_err(),
        XsError::Broken {
            op: Op::PollWatch,
            ..
        }
    ));
    assert_eq!(srv.borrow().waits, waits);
}

#[test]
fn bogus_response_indices_are_ring_corruption() {
    let (mut xs, srv) = setup();
    xs.write("k", "v").unwrap();
    let page = srv.borrow().page.clone();
    let cons = page.read_u32(ring::RSP_CONS);
    page.write_u32(ring::RSP_PROD, cons.wrapping_add(5000));
    let e = xs.poll_watch().unwrap_err();
    assert!(
        e.to_string().contains("xenstore ring corrupt (rsp prod"),
        "{e}"
    );
    assert!(matches!(
        xs.read("k").unwrap_err(),
        XsError::Broken {
            why: Broken::Ring(_),
            ..
        }
    ));
}

#[test]
fn bogus_request_indices_are_ring_corruption() {
    let (mut xs, srv) = setup();
    srv.borrow().page.write_u32(ring::REQ_CONS, 4000);
    let e = xs.read("k").unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Broken {
                why: Broken::Ring(ring::Corrupt { ring: "req", .. }),
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn server_error_field_ends_the_connection() {
    let (mut xs, srv) = setup();
    srv.borrow_mut().mute = true;
    {
        let s = srv.borrow();
        s.page.write_u32(ring::SERVER_FEATURES, ring::FEATURE_ERROR);
        s.page.write_u32(ring::ERROR, 3);
    }
    let e = xs.read("k").unwrap_err();
    assert_eq!(
        e.to_string(),
        "xenstore: read k: xenstored closed the connection (error 3)"
    );
}

#[test]
fn silent_server_times_out_and_late_reply_is_dropped() {
    let (mut xs, srv) = setup();
    xs.write("k", "v").unwrap();
    srv.borrow_mut().mute = true;
    let t0 = srv.borrow().now;
    let e = xs.read("k").unwrap_err();
    assert_eq!(
        e,
        XsError::Timeout {
            op: Op::Read,
            path: "k".into(),
            after_ns: DEFAULT_TIMEOUT_NS
        }
    );
    assert_eq!(e.to_string(), "xenstore: read k: no reply after 5000 ms");
    assert!(srv.borrow().now >= t0 + DEFAULT_TIMEOUT_NS);

    // xenstored wakes up: it answers the old request late, then the new one.
    srv.borrow_mut().mute = false;
    srv.borrow_mut()
        .send_raw(&message(MsgType::Read as u32, 2, 0, b"stale"));
    xs.write("k", "w").unwrap();
    assert_eq!(xs.read("k").unwrap(), "w");
}

#[test]
fn timeout_mid_send_finishes_the_request_later() {
    // A deaf xenstored leaves a 3000-byte request stuck with 1024 bytes in
    // the ring. The rest must still go out before the next request, or
    // xenstored would read the two as one.
    let (mut xs, srv) = setup();
    xs.set_timeout_ns(1_000_000);
    srv.borrow_mut().deaf = true;
    let big = "b".repeat(3000);
    assert!(matches!(
        xs.write("big", &big).unwrap_err(),
        XsError::Timeout { .. }
    ));
    srv.borrow_mut().deaf = false;
    xs.write("small", "s").unwrap();
    assert_eq!(srv.borrow().tree["big"], big);
    assert_eq!(xs.read("small").unwrap(), "s");
}

#[test]
fn unsolicited_reply_is_reported_by_poll_watch() {
    let (mut xs, srv) = setup();
    srv.borrow_mut()
        .send_raw(&message(MsgType::Read as u32, 77, 0, b"x"));
    srv.borrow_mut().send_raw(&watch_event("p", "t"));
    let e = xs.poll_watch().unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                why: WireError::Unsolicited { ty: 2, req_id: 77 },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(drain(&mut xs), vec![ev("p", "t")]);
}

#[test]
fn header_split_across_polls_is_reassembled() {
    // xenstored may publish a message a few bytes at a time.
    let (mut xs, srv) = setup();
    let m = watch_event("control/shutdown", "s");
    for piece in m.chunks(5) {
        assert_eq!(xs.poll_watch().unwrap(), None);
        srv.borrow_mut().send_raw(piece);
    }
    assert_eq!(xs.poll_watch().unwrap(), Some(ev("control/shutdown", "s")));
    assert!(m.len() > HEADER_LEN);
}

#[test]
fn notifies_after_sending() {
    let (mut xs, srv) = setup();
    xs.write("k", "v").unwrap();
    // At least: request published, reply consumed.
    assert!(srv.borrow().notifies >= 2);
}
