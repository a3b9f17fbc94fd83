//! Pipelined batches and `write_all` against the fake xenstored.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::client::{Op, Req, TxId, XsError, MAX_BATCH, MAX_TX_ATTEMPTS};
use super::fake::{setup, Server};
use super::wire::{Errno, MsgType, WatchEvent, WireError};
use core::cell::RefCell;

fn waits(srv: &RefCell<Server>) -> u32 {
    srv.borrow().waits
}

fn logged(srv: &RefCell<Server>, ty: MsgType) -> usize {
    srv.borrow()
        .log
        .iter()
        .filter(|(t, _, _)| *t == ty as u32)
        .count()
}

#[test]
fn a_batch_is_one_round_trip_with_a_result_each() {
    let (mut xs, srv) = setup();
    xs.write("a", "1").unwrap();
    let w0 = waits(&srv);
    let r = xs
        .batch(
            TxId::NONE,
            &[
                Req::Read("a"),
                Req::Write("b", "2"),
                Req::Read("missing"),
                Req::Watch("w", "tok"),
                Req::Read("b"),
            ],
        )
        .unwrap();
    assert_eq!(waits(&srv) - w0, 1, "one wait for the whole batch");
    assert_eq!(r[0], Ok(String::from("1")));
    assert_eq!(r[1], Ok(String::new()));
    assert_eq!(r[2].as_ref().unwrap_err().errno(), Some(&Errno::ENOENT));
    assert_eq!(
        r[2].as_ref().unwrap_err().to_string(),
        "xenstore: read missing: ENOENT"
    );
    assert_eq!(r[3], Ok(String::new()));
    // In order: the read after the write sees it.
    assert_eq!(r[4], Ok(String::from("2")));
    assert_eq!(r.len(), 5);
    // The watch's first event was queued on the side.
    assert_eq!(
        xs.poll_watch().unwrap(),
        Some(WatchEvent {
            path: "w".into(),
            token: "tok".into()
        })
    );
    // The same requests one by one: a wait each.
    let w0 = waits(&srv);
    xs.read("a").unwrap();
    xs.write("b", "2").unwrap();
    assert_eq!(waits(&srv) - w0, 2);
}

#[test]
fn a_batch_larger_than_the_ring_goes_out_in_pieces() {
    let (mut xs, srv) = setup();
    let paths: Vec<String> = (0..MAX_BATCH).map(|i| format!("k{i}")).collect();
    let value = "v".repeat(200);
    let reqs: Vec<Req<'_>> = paths.iter().map(|p| Req::Write(p, &value)).collect();
    let r = xs.batch(TxId::NONE, &reqs).unwrap();
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    for p in &paths {
        assert_eq!(srv.borrow().tree[p], value);
    }
    // 16 x ~220 bytes do not fit the 1024-byte ring at once.
    assert!(waits(&srv) > 1);
}

#[test]
fn an_invalid_batch_sends_nothing() {
    let (mut xs, srv) = setup();
    let too_many: Vec<Req<'_>> = (0..=MAX_BATCH).map(|_| Req::Read("k")).collect();
    let e = xs.batch(TxId::NONE, &too_many).unwrap_err();
    assert_eq!(
        e.to_string(),
        "xenstore: read k: more requests than one batch may hold"
    );
    let e = xs
        .batch(TxId::NONE, &[Req::Write("ok", "1"), Req::Read("")])
        .unwrap_err();
    assert_eq!(e.to_string(), "xenstore: read: empty path");
    let e = xs
        .batch(TxId::NONE, &[Req::Watch("w", "a\0b")])
        .unwrap_err();
    assert_eq!(e.to_string(), "xenstore: watch w: NUL in watch token");
    assert!(srv.borrow().log.is_empty(), "nothing may be sent");
    assert_eq!(xs.batch(TxId::NONE, &[]).unwrap(), Vec::new());
    assert_eq!(waits(&srv), 0);
    // The client is fine.
    xs.write("ok", "1").unwrap();
}

#[test]
fn a_silent_xenstored_times_the_batch_out_and_late_replies_are_dropped() {
    let (mut xs, srv) = setup();
    srv.borrow_mut().deaf = true;
    let e = xs
        .batch(TxId::NONE, &[Req::Write("a", "late"), Req::Write("b", "x")])
        .unwrap_err();
    assert_eq!(
        e,
        XsError::Timeout {
            op: Op::Write,
            path: "a".into(),
            after_ns: super::DEFAULT_TIMEOUT_NS
        }
    );
    // xenstored wakes up: it serves the old batch, then the new request;
    // the old replies must not be taken for the new one's.
    srv.borrow_mut().deaf = false;
    assert_eq!(xs.read("a").unwrap(), "late");
    assert_eq!(xs.read("b").unwrap(), "x");
}

#[test]
fn a_reply_to_none_of_the_batch_is_an_error_and_the_client_recovers() {
    let (mut xs, srv) = setup();
    xs.write("k", "v").unwrap();
    srv.borrow_mut().mangle = Some(alloc::boxed::Box::new(|mut m: Vec<u8>| {
        m[4..8].copy_from_slice(&999u32.to_le_bytes());
        m
    }));
    let e = xs
        .batch(TxId::NONE, &[Req::Read("k"), Req::Read("k")])
        .unwrap_err();
    assert!(
        matches!(
            e,
            XsError::Malformed {
                op: Op::Read,
                why: WireError::WrongReqId { got: 999, .. },
                ..
            }
        ),
        "{e:?}"
    );
    // The second request's reply arrives later and is dropped.
    assert_eq!(xs.read("k").unwrap(), "v");
    xs.write("k", "w").unwrap();
    assert_eq!(xs.read("k").unwrap(), "w");
}

#[test]
fn a_malformed_reply_fails_its_own_request_only() {
    let (mut xs, srv) = setup();
    xs.write("k", "v").unwrap();
    srv.borrow_mut().mangle = Some(alloc::boxed::Box::new(|m: Vec<u8>| {
        // The first reply's payload becomes invalid UTF-8.
        let mut r = super::fake::message(MsgType::Read as u32, 0, 0, b"\xff");
        r[4..12].copy_from_slice(&m[4..12]);
        r
    }));
    let r = xs
        .batch(TxId::NONE, &[Req::Read("k"), Req::Read("k")])
        .unwrap();
    assert!(
        matches!(
            &r[0],
            Err(XsError::Malformed {
                why: WireError::NotUtf8,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(r[1], Ok(String::from("v")));
}

const KEYS: [(&str, &str); 11] = [
    ("vif/tx-ring-ref", "8"),
    ("vif/rx-ring-ref", "9"),
    ("vif/event-channel", "5"),
    ("vif/request-rx-copy", "1"),
    ("vif/feature-rx-notify", "1"),
    ("vif/feature-sg", "1"),
    ("vif/feature-gso-tcpv4", "1"),
    ("vif/feature-gso-tcpv6", "0"),
    ("vif/feature-no-csum-offload", "0"),
    ("vif/feature-ipv6-csum-offload", "0"),
    ("vif/state", "4"),
];

#[test]
fn write_all_is_one_transaction_of_three_round_trips() {
    let (mut xs, srv) = setup();
    xs.write_all(&KEYS).unwrap();
    for (k, v) in KEYS {
        assert_eq!(srv.borrow().tree[k], v);
    }
    assert_eq!(waits(&srv), 3, "start, the writes, commit");
    assert_eq!(logged(&srv, MsgType::TransactionStart), 1);
    // Every write carried the transaction's id, the state last.
    let s = srv.borrow();
    let writes: Vec<_> = s
        .log
        .iter()
        .filter(|(t, _, _)| *t == MsgType::Write as u32)
        .collect();
    assert_eq!(writes.len(), KEYS.len());
    assert!(writes.iter().all(|(_, tx, _)| *tx != 0));
    assert!(writes.last().unwrap().2.starts_with(b"vif/state\0"));
}

#[test]
fn write_all_retries_on_eagain_and_leaves_no_partial_trace() {
    let (mut xs, srv) = setup();
    srv.borrow_mut().eagain_commits = 2;
    xs.write_all(&KEYS).unwrap();
    assert_eq!(logged(&srv, MsgType::TransactionStart), 3);
    assert_eq!(logged(&srv, MsgType::Write), 3 * KEYS.len());
    for (k, v) in KEYS {
        assert_eq!(srv.borrow().tree[k], v);
    }

    let (mut xs, srv) = setup();
    srv.borrow_mut().eagain_commits = u32::MAX;
    let e = xs.write_all(&KEYS).unwrap_err();
    assert_eq!(
        e,
        XsError::Conflict {
            attempts: MAX_TX_ATTEMPTS
        }
    );
    assert!(srv.borrow().tree.keys().all(|k| !k.starts_with("vif")));
}

#[test]
fn write_all_with_a_bad_write_discards_the_transaction() {
    let (mut xs, srv) = setup();
    let e = xs.write_all(&[("vif/a", "1"), ("", "2")]).unwrap_err();
    assert_eq!(e.to_string(), "xenstore: write: empty path");
    let last = srv.borrow().log.last().cloned().unwrap();
    assert_eq!(
        (last.0, &last.2[..]),
        (MsgType::TransactionEnd as u32, &b"F\0"[..])
    );
    assert!(!srv.borrow().tree.contains_key("vif/a"));
    assert_eq!(xs.read("vif/a").unwrap_err().errno(), Some(&Errno::ENOENT));
}

#[test]
fn write_all_and_read_all_take_more_than_one_batch() {
    let (mut xs, srv) = setup();
    let keys: Vec<(String, String)> = (0..MAX_BATCH + 3)
        .map(|i| (format!("many/{i}"), i.to_string()))
        .collect();
    let writes: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    xs.write_all(&writes).unwrap();
    assert_eq!(logged(&srv, MsgType::TransactionStart), 1);
    let mut paths: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    paths.push("many/none");
    let got = xs.read_all(&paths);
    assert_eq!(got.len(), MAX_BATCH + 4);
    for (i, r) in got[..MAX_BATCH + 3].iter().enumerate() {
        assert_eq!(r.as_deref(), Ok(i.to_string().as_str()));
    }
    assert_eq!(
        got[MAX_BATCH + 3].as_ref().unwrap_err().errno(),
        Some(&Errno::ENOENT)
    );
    // A batch that fails as a whole fails each read.
    srv.borrow_mut().mute = true;
    let got = xs.read_all(&["many/0", "many/1"]);
    assert!(
        got.iter()
            .all(|r| matches!(r, Err(XsError::Timeout { .. }))),
        "{got:?}"
    );
}
