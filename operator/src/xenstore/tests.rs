use super::fake::{self, read_request, send, State};
use super::wire::{self, Header, WireError};
use super::*;
use std::time::{Duration, Instant};

// ---- the wire format --------------------------------------------------------

#[test]
fn a_message_is_four_little_endian_words_then_the_payload() {
    let m = wire::encode(wire::XS_WRITE, 7, 3, b"/a\0v").unwrap();
    assert_eq!(
        m,
        [11, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, b'/', b'a', 0, b'v']
    );
    let h = Header::decode(m[..16].try_into().unwrap()).unwrap();
    assert_eq!(
        h,
        Header {
            ty: 11,
            req_id: 7,
            tx_id: 3,
            len: 4
        }
    );
}

#[test]
fn the_message_type_numbers_are_xs_wire_h_s() {
    // enum xsd_sockmsg_type counts from XS_CONTROL = 0.
    let got = [
        wire::XS_DIRECTORY,
        wire::XS_READ,
        wire::XS_WATCH,
        wire::XS_TRANSACTION_START,
        wire::XS_TRANSACTION_END,
        wire::XS_WRITE,
        wire::XS_RM,
        wire::XS_SET_PERMS,
        wire::XS_WATCH_EVENT,
        wire::XS_ERROR,
    ];
    assert_eq!(got, [1, 2, 4, 6, 7, 11, 13, 14, 15, 16]);
}

#[test]
fn lengths_over_the_payload_limit_are_refused_both_ways() {
    let mut h = [0u8; 16];
    h[12..].copy_from_slice(&4097u32.to_le_bytes());
    assert_eq!(Header::decode(&h), Err(WireError::TooLong(4097)));
    h[12..].copy_from_slice(&4096u32.to_le_bytes());
    assert!(Header::decode(&h).is_ok());
    assert!(wire::encode(wire::XS_WRITE, 1, 0, &[b'x'; 4097]).is_err());
}

#[test]
fn payload_strings_are_checked() {
    assert_eq!(wire::split_strings(b"a\0bc\0").unwrap(), ["a", "bc"]);
    assert!(wire::split_strings(b"").unwrap().is_empty());
    assert!(wire::split_strings(b"a\0b").is_err(), "no final nul");
    assert!(wire::split_strings(b"\xff\0").is_err(), "not UTF-8");
    assert_eq!(wire::error_name(b"ENOENT\0").unwrap(), "ENOENT");
    for bad in [
        &b""[..],
        b"\0",
        b"no such thing\0",
        b"EAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\0",
    ] {
        assert!(wire::error_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(wire::transaction_id(b"42\0").unwrap(), 42);
    for bad in [&b"0\0"[..], b"\0", b"-1\0", b"4x\0", b"99999999999\0"] {
        assert!(wire::transaction_id(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        wire::watch_event(b"/a/b\0tok\0").unwrap(),
        ("/a/b".to_string(), "tok".to_string())
    );
    assert!(wire::watch_event(b"/a/b\0").is_err(), "no token");
    assert!(wire::expect_ok(b"OK\0").is_ok());
    assert!(wire::expect_ok(b"NO\0").is_err());
}

// ---- against the fake xenstored ----------------------------------------------

#[test]
fn read_write_and_directory() {
    let (mut xs, h) = fake::serve(State::with(&[("/local/domain/0/name", "Domain-0")]));
    assert_eq!(
        xs.read(NO_TX, "/local/domain/0/name").unwrap().as_deref(),
        Some("Domain-0")
    );
    assert_eq!(xs.read(NO_TX, "/local/domain/9/name").unwrap(), None);
    xs.write(NO_TX, "/local/domain/5/name", "a b\nc").unwrap();
    xs.write(NO_TX, "/local/domain/5/data/ready", "").unwrap();
    assert_eq!(
        xs.read(NO_TX, "/local/domain/5/data/ready")
            .unwrap()
            .as_deref(),
        Some("")
    );
    assert_eq!(xs.directory(NO_TX, "/local/domain").unwrap(), ["0", "5"]);
    assert_eq!(domid_of(&mut xs, NO_TX, "a b\nc").unwrap(), Some(5));
    assert_eq!(domid_of(&mut xs, NO_TX, "nobody").unwrap(), None);
    drop(xs);
    let st = h.join().unwrap();
    assert_eq!(st.value("/local/domain/5/name"), Some("a b\nc"));
}

#[test]
fn permissions_are_sent_as_given_and_bad_ones_never_leave() {
    let (mut xs, h) = fake::serve(State::with(&[("/k", "v")]));
    xs.batch(NO_TX, &[Req::SetPerms("/k", &["n0", "r5"])])
        .unwrap();
    for bad in [&[][..], &["x5"], &["n"], &["r5 "]] {
        assert!(
            xs.batch(NO_TX, &[Req::SetPerms("/k", bad)]).is_err(),
            "{bad:?}"
        );
    }
    assert!(xs
        .batch(NO_TX, &[Req::SetPerms("/missing", &["n0"])])
        .unwrap_err()
        .is("ENOENT"));
    drop(xs);
    let st = h.join().unwrap();
    assert_eq!(st.nodes["/k"].1, ["n0", "r5"]);
    assert_eq!(st.log.len(), 2, "the bad ones were not sent: {:?}", st.log);
}

#[test]
fn a_transaction_is_applied_at_commit_and_run_again_after_eagain() {
    let mut st = State::with(&[("/a", "0")]);
    st.eagain_commits = 2;
    let (mut xs, h) = fake::serve(st);
    let mut runs = 0;
    xs.transaction(5, |xs, tx| -> Result<(), XsError> {
        runs += 1;
        xs.write(tx, "/a", "1")?;
        xs.write(tx, "/b", "2")?;
        // Not visible outside the transaction before the commit.
        assert_eq!(xs.read(NO_TX, "/a")?.as_deref(), Some("0"));
        assert_eq!(xs.read(tx, "/a")?.as_deref(), Some("1"));
        Ok(())
    })
    .unwrap();
    assert_eq!(runs, 3);
    drop(xs);
    let st = h.join().unwrap();
    assert_eq!((st.value("/a"), st.value("/b")), (Some("1"), Some("2")));
}

#[test]
fn a_transaction_gives_up_after_its_attempts_and_a_failing_body_aborts() {
    let mut st = State::with(&[("/a", "0")]);
    st.eagain_commits = 9;
    let (mut xs, h) = fake::serve(st);
    let e = xs
        .transaction(2, |xs, tx| xs.write(tx, "/a", "1"))
        .unwrap_err();
    assert!(e.is("EAGAIN"), "{e}");
    let e = xs
        .transaction(5, |xs, tx| -> Result<(), String> {
            xs.write(tx, "/a", "2")?;
            Err("no".into())
        })
        .unwrap_err();
    assert_eq!(e, "no");
    drop(xs);
    let st = h.join().unwrap();
    assert_eq!(st.value("/a"), Some("0"));
    let ends: Vec<_> = st
        .log
        .iter()
        .filter(|l| l.0 == wire::XS_TRANSACTION_END)
        .collect();
    assert_eq!(ends.len(), 3, "two commits and one abort: {ends:?}");
    assert_eq!(ends[2].1, "F");
}

/// `meanwhile` runs once the requests are sent and before their replies
/// are read: this xenstored answers only after it ran (or after 200 ms
/// without it, which the test then sees).
#[test]
fn a_batch_runs_its_meanwhile_between_sending_and_reading_the_replies() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ran = Arc::new(AtomicBool::new(false));
    let seen = ran.clone();
    let (mut xs, h) = fake::scripted(move |mut s| {
        let reqs: Vec<Header> = (0..2)
            .filter_map(|_| read_request(&mut s))
            .map(|r| r.0)
            .collect();
        let t0 = Instant::now();
        while !seen.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_millis(200) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let before_replies = seen.load(Ordering::SeqCst);
        for r in &reqs {
            send(&mut s, r.ty, r.req_id, r.tx_id, b"OK\0");
        }
        before_replies
    });
    let mut calls = 0;
    let got = xs
        .batch_each_meanwhile(
            &[
                (NO_TX, Req::Write("/a", "1")),
                (NO_TX, Req::Write("/b", "2")),
            ],
            &mut || {
                calls += 1;
                ran.store(true, Ordering::SeqCst);
            },
        )
        .unwrap();
    assert!(got.iter().all(|r| matches!(r, Ok(None))), "{got:?}");
    assert_eq!(calls, 1);
    assert!(h.join().unwrap(), "it ran only after the replies were read");
}

// ---- hostile or broken xenstoreds -------------------------------------------

/// The error a read gets from a xenstored that answers with `reply`
/// (given the request's header), and how long it took.
fn reply_with(
    reply: impl FnOnce(&mut std::os::unix::net::UnixStream, Header) + Send + 'static,
) -> (XsError, Duration, Xs) {
    let (mut xs, h) = fake::scripted(move |mut s| {
        if let Some((req, _)) = read_request(&mut s) {
            reply(&mut s, req);
        }
        // Keep the connection open (silent) until the client is gone.
        while read_request(&mut s).is_some() {}
    });
    let t0 = Instant::now();
    let e = xs.read(NO_TX, "/x").unwrap_err();
    let took = t0.elapsed();
    let _ = h;
    (e, took, xs)
}

fn assert_bounded(took: Duration) {
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn silence_is_a_timeout_not_a_hang() {
    let (e, took, _) = reply_with(|_, _| {});
    assert!(
        matches!(&e, XsError::Io(w) if w.contains("no reply in 300 ms")),
        "{e}"
    );
    assert_bounded(took);
}

#[test]
fn a_closed_connection_is_an_error() {
    let (mut xs, h) = fake::scripted(drop);
    h.join().unwrap();
    let e = xs.read(NO_TX, "/x").unwrap_err();
    assert!(matches!(e, XsError::Io(_)), "{e}");
}

#[test]
fn a_header_cut_short_is_an_error_and_the_connection_is_then_unusable() {
    let (e, took, mut xs) = reply_with(|s, _| {
        use std::io::Write;
        let _ = s.write_all(&[2, 0, 0]);
    });
    assert!(
        matches!(&e, XsError::Io(w) if w.contains("cut short: 3 of 16")),
        "{e}"
    );
    assert_bounded(took);
    let again = xs.read(NO_TX, "/x").unwrap_err();
    assert!(again.to_string().contains("connection unusable"), "{again}");
}

#[test]
fn a_payload_shorter_than_its_header_says_is_an_error() {
    let (e, took, _) = reply_with(|s, req| {
        use std::io::Write;
        let mut m = wire::encode(wire::XS_READ, req.req_id, 0, b"0123456789").unwrap();
        m.truncate(16 + 3);
        let _ = s.write_all(&m);
    });
    assert!(matches!(&e, XsError::Io(w) if w.contains("3 of 10")), "{e}");
    assert_bounded(took);
}

#[test]
fn a_huge_length_is_refused_without_reading_it() {
    let (e, took, _) = reply_with(|s, req| {
        use std::io::Write;
        let mut m = wire::encode(wire::XS_READ, req.req_id, 0, b"").unwrap();
        m[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let _ = s.write_all(&m);
    });
    assert!(
        matches!(&e, XsError::Protocol(w) if w.contains("4294967295")),
        "{e}"
    );
    assert_bounded(took);
}

#[test]
fn a_reply_to_another_request_or_of_another_type_is_an_error() {
    let (e, _, _) = reply_with(|s, req| send(s, wire::XS_READ, req.req_id + 1, 0, b"v"));
    assert!(
        matches!(&e, XsError::Protocol(w) if w.contains("a reply to request")),
        "{e}"
    );
    let (e, _, _) = reply_with(|s, req| send(s, wire::XS_WRITE, req.req_id, 0, b"OK\0"));
    assert!(
        matches!(&e, XsError::Protocol(w) if w.contains("type 11")),
        "{e}"
    );
}

#[test]
fn error_replies_name_the_error_or_are_refused() {
    let (e, _, _) = reply_with(|s, req| send(s, wire::XS_ERROR, req.req_id, 0, b"EACCES\0"));
    assert!(e.is("EACCES"), "{e}");
    assert_eq!(e.to_string(), "xenstore read /x: EACCES");
    let (e, _, _) = reply_with(|s, req| send(s, wire::XS_ERROR, req.req_id, 0, b"\x01\x02"));
    assert!(matches!(e, XsError::Protocol(_)), "{e}");
}

#[test]
fn a_refusal_leaves_the_connection_usable() {
    let (mut xs, _h) = fake::scripted(|mut s| {
        let (r1, _) = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_ERROR, r1.req_id, 0, b"EACCES\0");
        let (r2, _) = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_READ, r2.req_id, 0, b"fine");
        while read_request(&mut s).is_some() {}
    });
    assert!(xs.read(NO_TX, "/x").unwrap_err().is("EACCES"));
    assert_eq!(xs.read(NO_TX, "/x").unwrap().as_deref(), Some("fine"));
}

#[test]
fn bad_acknowledgements_and_transaction_ids_are_errors() {
    let (mut xs, _h) = fake::scripted(|mut s| {
        let (r1, _) = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_WRITE, r1.req_id, 0, b"NO\0");
        while read_request(&mut s).is_some() {}
    });
    let e = xs.write(NO_TX, "/x", "v").unwrap_err();
    assert!(
        matches!(&e, XsError::Protocol(w) if w.contains("not OK")),
        "{e}"
    );

    let (mut xs, _h) = fake::scripted(|mut s| {
        let (r1, _) = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_TRANSACTION_START, r1.req_id, 0, b"abc\0");
        while read_request(&mut s).is_some() {}
    });
    let mut ran = false;
    let e = xs
        .transaction(3, |_, _| -> Result<(), XsError> {
            ran = true;
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(&e, XsError::Protocol(w) if w.contains("transaction id")),
        "{e}"
    );
    assert!(!ran);
}

#[test]
fn a_wait_meets_a_malformed_event_or_an_unasked_reply_with_an_error() {
    for (ty, payload, says) in [
        (
            wire::XS_WATCH_EVENT,
            &b"/only-a-path\0"[..],
            "without a path and a token",
        ),
        (wire::XS_READ, b"v", "while no request was waiting"),
    ] {
        let (mut xs, _h) = fake::scripted(move |mut s| {
            send(&mut s, ty, 0, 0, payload);
            while read_request(&mut s).is_some() {}
        });
        let e = xs
            .wait_watch("t", Instant::now() + Duration::from_secs(2))
            .unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn events_that_arrive_before_a_reply_are_kept_for_the_wait() {
    let (mut xs, _h) = fake::scripted(|mut s| {
        let (r1, _) = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_WATCH_EVENT, 0, 0, b"/other\0u\0");
        send(&mut s, wire::XS_WATCH_EVENT, 0, 0, b"/d/ready\0t\0");
        send(&mut s, wire::XS_READ, r1.req_id, 0, b"v");
        while read_request(&mut s).is_some() {}
    });
    assert_eq!(xs.read(NO_TX, "/x").unwrap().as_deref(), Some("v"));
    let until = Instant::now() + Duration::from_millis(100);
    assert_eq!(
        xs.wait_watch("t", until).unwrap().as_deref(),
        Some("/d/ready")
    );
    assert_eq!(
        xs.wait_watch("u", until).unwrap().as_deref(),
        Some("/other")
    );
    assert_eq!(xs.wait_watch("t", until).unwrap(), None);
}

// ---- pipelined requests -------------------------------------------------------

/// A batch is one round trip: this xenstored answers only once it has
/// every request, which a client waiting for each reply would never send.
/// A refusal in the middle is the batch's error once all replies are in,
/// and the connection stays in step.
#[test]
fn a_batch_sends_every_request_before_waiting_and_takes_the_replies_in_order() {
    let (types_tx, types) = std::sync::mpsc::channel();
    let (mut xs, _h) = fake::scripted(move |mut s| {
        let reqs: Vec<_> = (0..4).map(|_| read_request(&mut s).unwrap()).collect();
        let ty: Vec<u32> = reqs.iter().map(|(h, _)| h.ty).collect();
        let ids: Vec<u32> = reqs.iter().map(|(h, _)| h.req_id).collect();
        send(&mut s, wire::XS_READ, ids[0], 0, b"a");
        send(&mut s, wire::XS_ERROR, ids[1], 0, b"ENOENT\0");
        send(&mut s, wire::XS_WATCH_EVENT, 0, 0, b"/w\0tok\0");
        send(&mut s, wire::XS_WRITE, ids[2], 0, b"OK\0");
        send(&mut s, wire::XS_WATCH, ids[3], 0, b"OK\0");
        // A second batch: its read is refused, its write is not.
        let (r1, _) = read_request(&mut s).unwrap();
        let (r2, _) = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_ERROR, r1.req_id, 0, b"EACCES\0");
        send(&mut s, wire::XS_WRITE, r2.req_id, 0, b"OK\0");
        let (r3, _) = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_READ, r3.req_id, 0, b"still");
        types_tx.send(ty).unwrap();
        while read_request(&mut s).is_some() {}
    });
    let got = xs
        .batch(
            NO_TX,
            &[
                Req::Read("/a"),
                Req::Read("/missing"),
                Req::Write("/b", "v"),
                Req::Watch("/w", "tok"),
            ],
        )
        .unwrap();
    assert_eq!(got, [Some("a".to_string()), None, None, None]);
    let until = Instant::now() + Duration::from_millis(100);
    assert_eq!(xs.wait_watch("tok", until).unwrap().as_deref(), Some("/w"));
    let e = xs
        .batch(NO_TX, &[Req::Read("/secret"), Req::Write("/c", "v")])
        .unwrap_err();
    assert!(e.is("EACCES"), "{e}");
    assert_eq!(xs.read(NO_TX, "/x").unwrap().as_deref(), Some("still"));
    assert_eq!(
        types.recv().unwrap(),
        [wire::XS_READ, wire::XS_READ, wire::XS_WRITE, wire::XS_WATCH]
    );
}

#[test]
fn a_batch_with_a_reply_out_of_order_or_missing_is_an_error() {
    let (mut xs, _h) = fake::scripted(|mut s| {
        let (r1, _) = read_request(&mut s).unwrap();
        let (r2, _) = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_READ, r2.req_id, 0, b"b");
        send(&mut s, wire::XS_READ, r1.req_id, 0, b"a");
        while read_request(&mut s).is_some() {}
    });
    let e = xs.read_many(NO_TX, &["/a", "/b"]).unwrap_err();
    assert!(
        matches!(&e, XsError::Protocol(w) if w.contains("a reply to request")),
        "{e}"
    );
    assert!(xs.read(NO_TX, "/a").is_err(), "the connection is unusable");

    let (mut xs, _h) = fake::scripted(|mut s| {
        let (r1, _) = read_request(&mut s).unwrap();
        let _ = read_request(&mut s).unwrap();
        send(&mut s, wire::XS_READ, r1.req_id, 0, b"a");
        while read_request(&mut s).is_some() {}
    });
    let t0 = Instant::now();
    let e = xs.read_many(NO_TX, &["/a", "/b"]).unwrap_err();
    assert!(e.to_string().contains("read /b: no reply"), "{e}");
    assert_bounded(t0.elapsed());
}

/// More requests than may be outstanding at once go in rounds of at most
/// [`MAX_PIPELINE`]: this xenstored takes what arrives until nothing more
/// comes for 100 ms, answers that round, and reports the rounds' sizes.
#[test]
fn a_long_batch_goes_in_rounds_of_at_most_the_pipeline_limit() {
    let (rounds_tx, rounds) = std::sync::mpsc::channel();
    let (mut xs, _h) = fake::scripted(move |mut s| {
        let mut sizes = Vec::new();
        let mut total = 0;
        while total < 40 {
            s.set_read_timeout(None).unwrap();
            let mut round = vec![read_request(&mut s).unwrap()];
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while let Some(r) = read_request(&mut s) {
                round.push(r);
            }
            for (h, p) in &round {
                send(&mut s, wire::XS_READ, h.req_id, 0, &p[..p.len() - 1]);
            }
            total += round.len();
            sizes.push(round.len());
        }
        rounds_tx.send(sizes).unwrap();
        s.set_read_timeout(None).unwrap();
        while read_request(&mut s).is_some() {}
    });
    let paths: Vec<String> = (0..40).map(|i| format!("/p{i}")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let values = xs.read_many(NO_TX, &refs).unwrap();
    // Each read's value is its own path: the replies were matched in order.
    let want: Vec<Option<String>> = paths.iter().cloned().map(Some).collect();
    assert_eq!(values, want);
    let sizes = rounds.recv().unwrap();
    assert_eq!(sizes, [16, 16, 8], "MAX_PIPELINE is {MAX_PIPELINE}");
}

/// What a transaction's body leaves for the commit goes in the commit's
/// round trip: this xenstored answers only once it has the writes and the
/// commit. A refused one is the transaction's error; an EAGAIN commit runs
/// the body (and queues its requests) again.
#[test]
fn requests_left_for_the_commit_go_with_it_in_one_round_trip() {
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let (mut xs, _h) = fake::scripted(move |mut s| {
        for (tx, refuse, commit) in [
            (7, None, "OK"),
            (8, None, "EAGAIN"),
            (9, Some("EACCES"), "OK"),
        ] {
            let (start, _) = read_request(&mut s).unwrap();
            send(
                &mut s,
                wire::XS_TRANSACTION_START,
                start.req_id,
                0,
                format!("{tx}\0").as_bytes(),
            );
            let reqs: Vec<_> = (0..3).map(|_| read_request(&mut s).unwrap()).collect();
            let kinds: Vec<(u32, u32, Vec<u8>)> = reqs
                .iter()
                .map(|(h, p)| (h.ty, h.tx_id, p.clone()))
                .collect();
            seen_tx.send(kinds).unwrap();
            for (i, (h, _)) in reqs.iter().enumerate() {
                match (i, refuse, commit) {
                    (0, Some(e), _) => send(
                        &mut s,
                        wire::XS_ERROR,
                        h.req_id,
                        tx,
                        format!("{e}\0").as_bytes(),
                    ),
                    (2, _, "EAGAIN") => send(&mut s, wire::XS_ERROR, h.req_id, tx, b"EAGAIN\0"),
                    _ => send(&mut s, h.ty, h.req_id, tx, b"OK\0"),
                }
            }
        }
        while read_request(&mut s).is_some() {}
    });
    let mut runs = 0;
    xs.transaction(1, |xs, _tx| {
        runs += 1;
        xs.at_commit(&[Req::Write("/a", "1"), Req::SetPerms("/a", &["n0", "r5"])])
    })
    .unwrap();
    assert_eq!(runs, 1);
    let kinds = seen.recv().unwrap();
    assert_eq!(
        kinds,
        [
            (wire::XS_WRITE, 7, b"/a\x001".to_vec()),
            (wire::XS_SET_PERMS, 7, b"/a\0n0\0r5\0".to_vec()),
            (wire::XS_TRANSACTION_END, 7, b"T\0".to_vec()),
        ]
    );
    // EAGAIN, then a refused write: its error, after the second body.
    let e = xs
        .transaction(2, |xs, _tx| {
            runs += 1;
            xs.at_commit(&[Req::Write("/b", "2"), Req::Write("/c", "3")])
        })
        .unwrap_err();
    assert!(e.is("EACCES"), "{e}");
    assert_eq!(runs, 3);
    for tx in [8, 9] {
        let kinds = seen.recv().unwrap();
        let got: Vec<(u32, u32)> = kinds.iter().map(|k| (k.0, k.1)).collect();
        assert_eq!(
            got,
            [
                (wire::XS_WRITE, tx),
                (wire::XS_WRITE, tx),
                (wire::XS_TRANSACTION_END, tx)
            ]
        );
    }
    // A bad request is refused before anything is sent.
    assert!(xs.at_commit(&[Req::SetPerms("/a", &["x1"])]).is_err());
}

// ---- round trips: the fake's count ----------------------------------------

/// The fake counts round trips: a batch is one, a long batch one per
/// MAX_PIPELINE requests, a transaction (start, body, commit with what the
/// body left for it) three.
#[test]
fn the_fake_counts_one_round_trip_per_batch_and_three_per_transaction() {
    let (mut xs, h) = fake::serve(State::with(&[("/a", "1")]));
    xs.read_many(NO_TX, &["/a", "/b", "/c"]).unwrap();
    let paths: Vec<String> = (0..20).map(|i| format!("/p{i}")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    xs.read_many(NO_TX, &refs).unwrap();
    xs.transaction(3, |xs, tx| {
        xs.read(tx, "/a")?;
        xs.at_commit(&[Req::Write("/a", "2")])
    })
    .unwrap();
    drop(xs);
    let st = h.join().unwrap();
    assert_eq!(st.rounds, 1 + 2 + 3, "{:?}", st.log);
    assert_eq!(st.round_starts[..3], [0, 3, 19]);
}

/// transaction_after: the watch and the start in one round trip, the
/// start's id used by the body; a refused first request aborts it.
#[test]
fn a_transaction_can_start_in_the_round_trip_of_a_watch() {
    let (mut xs, h) = fake::serve(State::with(&[("/a", "1")]));
    let got = xs
        .transaction_after(&[Req::Watch("/w", "t")], 3, |xs, tx| {
            let v = xs.read(tx, "/a")?;
            xs.at_commit(&[Req::Write("/a", "2")])?;
            Ok::<_, XsError>(v)
        })
        .unwrap();
    assert_eq!(got.as_deref(), Some("1"));
    // The same watch again is refused (EEXIST): no transaction is left open.
    let e = xs
        .transaction_after(&[Req::Watch("/w", "t")], 3, |_, _| Ok::<_, XsError>(()))
        .unwrap_err();
    assert!(e.is("EEXIST"), "{e}");
    drop(xs);
    let st = h.join().unwrap();
    assert_eq!(st.value("/a"), Some("2"));
    assert_eq!(st.rounds, 2 + 1 + 2, "{:?}", st.log);
    let starts = st.round_starts.clone();
    let types = |i: usize| st.log[starts[i]..].first().map(|l| l.0);
    assert_eq!(types(0), Some(wire::XS_WATCH));
    assert_eq!(st.log[1].0, wire::XS_TRANSACTION_START);
    // The refused round ends with the abort of the transaction it started.
    let last = st.log.last().unwrap();
    assert_eq!((last.0, last.1.as_str()), (wire::XS_TRANSACTION_END, "F"));
}

/// Released watches go with the next request, in its round trip: the same
/// watch can be set again there, and the old one's events are dropped.
#[test]
fn released_watches_are_removed_in_the_next_round_trip() {
    let (mut xs, h) = fake::serve(State::with(&[("/w", "1")]));
    xs.batch(NO_TX, &[Req::Watch("/w", "t"), Req::Watch("/v", "u")])
        .unwrap();
    xs.write(NO_TX, "/w", "2").unwrap();
    xs.release_watches();
    xs.batch(NO_TX, &[Req::Watch("/w", "t"), Req::Read("/w")])
        .unwrap();
    // Only the new watch's first event is left.
    let until = Instant::now() + Duration::from_millis(200);
    assert_eq!(xs.wait_watch("t", until).unwrap().as_deref(), Some("/w"));
    assert_eq!(xs.wait_watch("t", until).unwrap(), None);
    assert_eq!(xs.wait_watch("u", until).unwrap(), None);
    drop(xs);
    let st = h.join().unwrap();
    assert_eq!(st.rounds, 3, "{:?}", st.log);
    let third: Vec<u32> = st.log[st.round_starts[2]..].iter().map(|l| l.0).collect();
    assert_eq!(
        third,
        [
            wire::XS_UNWATCH,
            wire::XS_UNWATCH,
            wire::XS_WATCH,
            wire::XS_READ
        ]
    );
}

/// drop_events: the events of one token so far, not another's.
#[test]
fn drop_events_drops_one_tokens_events() {
    let (mut xs, h) = fake::serve(State::default());
    xs.batch(NO_TX, &[Req::Watch("/w", "t"), Req::Watch("/v", "u")])
        .unwrap();
    xs.drop_events("t");
    let until = Instant::now() + Duration::from_millis(100);
    assert_eq!(xs.wait_watch("t", until).unwrap(), None);
    assert_eq!(xs.wait_watch("u", until).unwrap().as_deref(), Some("/v"));
    drop(xs);
    h.join().unwrap();
}
