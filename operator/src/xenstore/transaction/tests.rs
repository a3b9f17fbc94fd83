//! Transactions against the fake xenstored: its model of C xenstored's
//! read conflicts, and a held transaction's abort.

use super::super::fake::{self, State};
use super::super::{wire, Req, Tx, Xs, NO_TX};
use super::Held;
use std::time::Instant;

/// C xenstored's rule (xenstored_transaction.c): a node read in a
/// transaction that changed outside it before the commit fails the commit
/// with EAGAIN, and nothing of the transaction is applied; a directory
/// read conflicts with a child created or removed; reads left alone commit.
#[test]
fn the_fake_fails_a_commit_whose_reads_changed_outside_it() {
    let base = [("/d/1/name", "a"), ("/d/2/name", "b"), ("/x", "0")];
    let (mut xs, h) = fake::serve(State::with(&base));
    let start = |xs: &mut Xs| -> Tx {
        let got = xs.batch(NO_TX, &[Req::TransactionStart]).unwrap();
        got[0].as_deref().unwrap().parse().unwrap()
    };
    let commit = |xs: &mut Xs, tx: Tx| xs.batch(tx, &[Req::TransactionEnd(true)]);
    // A value read, changed outside: EAGAIN, the write not applied.
    let tx = start(&mut xs);
    assert_eq!(xs.read(tx, "/d/1/name").unwrap().as_deref(), Some("a"));
    xs.write(tx, "/x", "1").unwrap();
    xs.write(NO_TX, "/d/1/name", "renamed").unwrap();
    assert!(commit(&mut xs, tx).unwrap_err().is("EAGAIN"));
    assert_eq!(xs.read(NO_TX, "/x").unwrap().as_deref(), Some("0"));
    // A directory read, a child created outside: EAGAIN.
    let tx = start(&mut xs);
    xs.batch(tx, &[Req::Directory("/d")]).unwrap();
    xs.write(tx, "/x", "2").unwrap();
    xs.write(NO_TX, "/d/3/name", "c").unwrap();
    assert!(commit(&mut xs, tx).unwrap_err().is("EAGAIN"));
    // And one removed.
    let tx = start(&mut xs);
    xs.batch(tx, &[Req::Directory("/d")]).unwrap();
    xs.rm("/d/2").unwrap();
    assert!(commit(&mut xs, tx).unwrap_err().is("EAGAIN"));
    assert_eq!(xs.read(NO_TX, "/d/2/name").unwrap(), None);
    // A node read as absent, then created: EAGAIN.
    let tx = start(&mut xs);
    assert_eq!(xs.read(tx, "/d/9/name").unwrap(), None);
    xs.write(NO_TX, "/d/9/name", "z").unwrap();
    assert!(commit(&mut xs, tx).unwrap_err().is("EAGAIN"));
    // Changes elsewhere do not matter; the transaction's own do not either.
    let tx = start(&mut xs);
    xs.batch(tx, &[Req::Directory("/d"), Req::Read("/d/1/name")])
        .unwrap();
    xs.write(tx, "/d/1/name", "mine").unwrap();
    xs.write(NO_TX, "/y", "1").unwrap();
    commit(&mut xs, tx).unwrap();
    drop(xs);
    let st = h.join().unwrap();
    assert_eq!(st.value("/x"), Some("0"));
    assert_eq!(st.value("/d/1/name"), Some("mine"));
}

/// A held transaction: one per connection (holding another abandons the
/// first), aborted in the round trip of the next request, and abandoned by
/// a transaction the connection then runs.
#[test]
fn a_held_transaction_is_aborted_with_the_next_request() {
    let (mut xs, h) = fake::serve(State::with(&[("/a", "0")]));
    let start = |xs: &mut Xs| -> Tx {
        let got = xs.batch(NO_TX, &[Req::TransactionStart]).unwrap();
        got[0].as_deref().unwrap().parse().unwrap()
    };
    let held = |tx| Held {
        tx,
        since: Instant::now(),
        reads: vec![("/a".into(), Some("0".into()))],
    };
    let t1 = start(&mut xs);
    xs.hold(held(t1));
    let t2 = start(&mut xs);
    xs.hold(held(t2));
    assert_eq!(xs.held().unwrap().get("/a"), Some(&Some("0".to_string())));
    xs.read(NO_TX, "/a").unwrap();
    xs.transaction(1, |xs, tx| xs.write(tx, "/a", "1")).unwrap();
    assert!(xs.held().is_none());
    // Nothing of them is left to abort: a later request goes alone.
    xs.read(NO_TX, "/a").unwrap();
    drop(xs);
    let st = h.join().unwrap();
    let ends: Vec<(String, u32)> = st
        .log
        .iter()
        .filter(|l| l.0 == wire::XS_TRANSACTION_END)
        .map(|l| (l.1.clone(), l.2))
        .collect();
    assert_eq!(
        ends,
        [("F".into(), t1), ("F".into(), t2), ("T".into(), t2 + 1)]
    );
    // t1's abort went with the read after t2's start, t2's with the
    // transaction's start: no round trip of their own.
    assert_eq!(st.rounds, 7, "{:?}", st.log);
    let round = |i: usize| -> Vec<u32> {
        let end = st.round_starts.get(i + 1).copied().unwrap_or(st.log.len());
        st.log[st.round_starts[i]..end]
            .iter()
            .map(|l| l.0)
            .collect()
    };
    assert_eq!(round(2), [wire::XS_TRANSACTION_END, wire::XS_READ]);
    assert_eq!(
        round(3),
        [wire::XS_TRANSACTION_END, wire::XS_TRANSACTION_START]
    );
    assert_eq!(round(6), [wire::XS_READ]);
    assert_eq!(st.value("/a"), Some("1"));
}
