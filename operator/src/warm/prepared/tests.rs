//! The prepared hand-over against the fake xenstored, whose commits fail
//! as C xenstored's do when a node read in the transaction changed: what a
//! spawn with a fresh preparation costs (round trips counted by the fake),
//! and that every change after the preparation sends the spawn down the
//! full path to the full path's result.

use super::*;
use crate::warm::tests::{assert_took_member_3, run_dir, spawn_of, template, xenstore};
use crate::warm::warm;
use crate::xenstore::fake::{self, State};
use crate::xenstore::wire;
use crate::Failure;
use std::cell::Cell;

type Round = Vec<(u32, String, u32)>;

/// Prepare on a fresh connection to a fake over `st`, run `between` on
/// that connection (outside the transaction: another process's change),
/// then `warm` for `s`: its result, the refills it started, the fake's
/// final state and the round trips of the spawn alone.
fn run_prepared(
    env: &Env,
    s: &Spawn,
    st: State,
    between: impl FnOnce(&mut Xs),
) -> (Result<Option<String>, Failure>, u32, State, Vec<Round>) {
    let (mut xs, h) = fake::serve(st);
    prepare(env, &mut xs).unwrap();
    assert!(xs.held().is_some(), "a transaction is held");
    between(&mut xs);
    // A marker round: the spawn's round trips are the ones after it.
    xs.read(NO_TX, "/mark").unwrap();
    let (t, tp) = template();
    let refills = Cell::new(0);
    let r = warm(env, s, ("/k", &t, &tp), &mut xs, &|_| {
        refills.set(refills.get() + 1)
    });
    drop(xs);
    let st = h.join().unwrap();
    let mark = st.log.iter().position(|l| l.1 == "/mark").unwrap();
    let first = st.round_starts.iter().position(|&k| k > mark).unwrap();
    let rounds = st.round_starts[first..]
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let end = st
                .round_starts
                .get(first + i + 1)
                .copied()
                .unwrap_or(st.log.len());
            st.log[k..end].to_vec()
        })
        .collect();
    (r, refills.get(), st, rounds)
}

fn types(r: &Round) -> Vec<u32> {
    r.iter().map(|l| l.0).collect()
}

/// How many commits ("T") the fake saw.
fn commits(st: &State) -> usize {
    st.log
        .iter()
        .filter(|l| l.0 == wire::XS_TRANSACTION_END && l.1 == "T")
        .count()
}

#[test]
fn a_prepared_warm_spawn_takes_the_member_in_two_round_trips() {
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("prep-rt", &members);
    let s = spawn_of("a", "10.0.0.5/24");
    let (r, refills, st, rounds) = run_prepared(&env, &s, xenstore(&members), |_| ());
    assert_took_member_3(&env, &s, &r.unwrap().unwrap(), refills, &st);
    eprintln!("round trips of a prepared warm spawn: {}", rounds.len());
    assert_eq!(rounds.len(), 2, "{rounds:#?}");
    // 1: the ready watch, the configuration key and its permissions
    // (outside the transaction: the guest starts at once), the rename and
    // the commit (within the one prepared).
    assert_eq!(
        types(&rounds[0]),
        [
            wire::XS_WATCH,
            wire::XS_WRITE,
            wire::XS_SET_PERMS,
            wire::XS_WRITE,
            wire::XS_WRITE,
            wire::XS_TRANSACTION_END
        ]
    );
    assert!(rounds[0][..3].iter().all(|l| l.2 == NO_TX));
    assert_eq!(rounds[0][1].1, "/local/domain/3/miniproxy/config");
    let tx = rounds[0][5].2;
    assert!(tx != NO_TX && rounds[0][3..].iter().all(|l| l.2 == tx));
    // 2: the watch fired: ready, the member's data/pool and data/ip.
    assert_eq!(types(&rounds[1]), [wire::XS_READ; 3]);
}

/// A domain created after the preparation changes /local/domain: the
/// prepared commit fails (nothing within it applied), but the member has
/// its configuration: it is renamed in a transaction of its own; or, the
/// new domain has NAME, refused as the full path would, and the member,
/// which has NAME's configuration, destroyed.
#[test]
fn a_domain_created_after_the_preparation_renames_the_configured_member_on_its_own() {
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("prep-new", &members);
    let create = |name: &'static str| {
        move |xs: &mut Xs| xs.write(NO_TX, "/local/domain/7/name", name).unwrap()
    };
    let s = spawn_of("a", "10.0.0.5/24");
    let (r, _, st, rounds) = run_prepared(&env, &s, xenstore(&members), create("other"));
    let line = r.unwrap().unwrap();
    assert!(line.starts_with("spawned name=a domid=3 "), "{line}");
    assert_eq!(st.value("/local/domain/3/name"), Some("a"));
    assert_eq!(st.value("/vm/u3/name"), Some("a"));
    assert!(env.path("a.cfg").exists() && !env.path("pool/mp-pool-1.cfg").exists());
    // The refused commit, then the rename's: its start, the list, the
    // names, the writes with the commit; then ready.
    assert_eq!(commits(&st), 2, "{:?}", st.log);
    assert_eq!(rounds.len(), 6, "{rounds:#?}");
    assert_eq!(types(&rounds[1]), [wire::XS_TRANSACTION_START]);
    assert_eq!(
        types(&rounds[4]),
        [wire::XS_WRITE, wire::XS_WRITE, wire::XS_TRANSACTION_END]
    );
    // The configuration was written once.
    let configs = st
        .log
        .iter()
        .filter(|l| l.0 == wire::XS_WRITE && l.1.ends_with("/config"));
    assert_eq!(configs.count(), 1, "{:?}", st.log);

    let (_d, env) = run_dir("prep-new-name", &members);
    let (r, refills, st, _) = run_prepared(&env, &s, xenstore(&members), create("a"));
    match r {
        Err(Failure::Fail(m)) => assert_eq!(m, "name 'a' is in use: domain 7 exists"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refills, 1, "the pool lost a member");
    assert_eq!(st.value("/local/domain/3/name"), Some("mp-pool-1"));
    assert!(st.nodes.contains_key("/local/domain/3/miniproxy/config"));
    // Out of the pool (destroyed: its configuration is NAME's), and NAME's
    // records, written during the commit's round trip, gone again.
    assert!(!env.path("pool/mp-pool-1.cfg").exists());
    assert!(!env.path("a.cfg").exists() && !env.path("a.domid").exists());
}

/// The prepared member renamed after the preparation (by hand: a spawn
/// that takes it takes it out of the pool's records first): the commit
/// fails after the member had NAME's configuration, so it is given up
/// (destroyed, the spawn fails, saying why). Destroyed, its configuration
/// key went to a home no domain has: removed, and the full path finds no
/// other member: cold.
#[test]
fn a_member_renamed_or_destroyed_after_the_preparation_is_not_taken() {
    let members = [("mp-pool-1", 3), ("mp-pool-2", 4)];
    let (_d, env) = run_dir("prep-renamed", &members);
    let mut st = xenstore(&members);
    st.guest = Some((
        "/local/domain/4/miniproxy/config".into(),
        vec![
            ("/local/domain/4/data/ip".into(), "10.0.0.5/24".into()),
            ("/local/domain/4/data/ready".into(), "1".into()),
        ],
    ));
    let s = spawn_of("a", "10.0.0.5/24");
    let (r, refills, st, _) = run_prepared(&env, &s, st, |xs| {
        xs.write(NO_TX, "/local/domain/3/name", "renamed").unwrap()
    });
    match r {
        Err(Failure::Fail(m)) => assert_eq!(
            m,
            "a (pool member mp-pool-1, domain 3): handing over the configuration: \
             xenstore commit a transaction: EAGAIN, and it was renamed to \"renamed\" \
             meanwhile; destroyed it"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(refills, 1, "the pool lost a member");
    assert_eq!(st.value("/local/domain/3/name"), Some("renamed"));
    assert_eq!(st.value("/local/domain/4/name"), Some("mp-pool-2"));
    assert!(!env.path("pool/mp-pool-1.cfg").exists());
    assert!(env.path("pool/mp-pool-2.cfg").exists());
    assert!(!env.path("a.cfg").exists());

    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("prep-gone", &members);
    let (r, refills, st, rounds) = run_prepared(&env, &s, xenstore(&members), |xs| {
        xs.rm("/local/domain/3").unwrap()
    });
    assert!(matches!(r, Ok(None)), "{r:?}");
    // Found by the rename's own transaction.
    let started = rounds.iter().flatten();
    assert!(started.clone().any(|l| l.0 == wire::XS_TRANSACTION_START));
    assert_eq!(commits(&st), 1, "only the prepared one: {:?}", st.log);
    assert_eq!(refills, 0);
    assert!(
        !st.nodes.keys().any(|k| k.starts_with("/local/domain/3")),
        "{:?}",
        st.nodes.keys()
    );
    assert!(!env.path("a.cfg").exists() && !env.path("a.domid").exists());
}

/// NAME among the prepared names: the same error as the full path's, no
/// write sent, in one round trip (a read-only commit confirms the reads
/// are current). A domain of that name gone since fails that commit: the
/// full path finds the name free.
#[test]
fn a_name_in_use_per_the_preparation_is_refused_without_writes() {
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("prep-inuse", &members);
    let mut st = xenstore(&members);
    st.nodes
        .insert("/local/domain/7/name".into(), ("a".into(), vec![]));
    let s = spawn_of("a", "10.0.0.5/24");
    let (r, refills, st, rounds) = run_prepared(&env, &s, st.clone(), |_| ());
    match r {
        Err(Failure::Fail(m)) => assert_eq!(m, "name 'a' is in use: domain 7 exists"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refills, 0);
    assert!(
        !st.log.iter().any(|l| l.0 == wire::XS_WRITE),
        "{:?}",
        st.log
    );
    assert_eq!(rounds.len(), 1, "{rounds:#?}");
    assert_eq!(types(&rounds[0]), [wire::XS_TRANSACTION_END]);
    assert!(env.path("pool/mp-pool-1.cfg").exists());

    let (_d, env) = run_dir("prep-inuse-gone", &members);
    let (r, _, st, _) = run_prepared(&env, &s, st, |xs| xs.rm("/local/domain/7").unwrap());
    let line = r.unwrap().unwrap();
    assert!(line.starts_with("spawned name=a domid=3 "), "{line}");
    assert_eq!(st.value("/local/domain/3/name"), Some("a"));
}

/// A preparation older than PREPARED_MAX_AGE is abandoned (its abort in
/// the full path's first round trip), not used.
#[test]
fn a_preparation_older_than_the_bound_is_not_used() {
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("prep-old", &members);
    let s = spawn_of("a", "10.0.0.5/24");
    let mut held_tx = NO_TX;
    let (r, _, st, rounds) = run_prepared(&env, &s, xenstore(&members), |xs| {
        let mut h = xs.take_held().unwrap();
        let old = PREPARED_MAX_AGE + Duration::from_secs(1);
        h.since = Instant::now().checked_sub(old).unwrap();
        held_tx = h.tx;
        xs.hold(h);
    });
    let line = r.unwrap().unwrap();
    assert!(line.starts_with("spawned name=a domid=3 "), "{line}");
    assert_eq!(st.value("/local/domain/3/name"), Some("a"));
    assert_eq!(rounds.len(), 4, "{rounds:#?}");
    assert_eq!(
        types(&rounds[0]),
        [
            wire::XS_TRANSACTION_END,
            wire::XS_WATCH,
            wire::XS_TRANSACTION_START
        ]
    );
    assert_eq!((rounds[0][0].1.as_str(), rounds[0][0].2), ("F", held_tx));
    assert_eq!(commits(&st), 1);
}

/// A new preparation abandons the one before (one open transaction per
/// connection); an empty pool prepares nothing.
#[test]
fn a_new_preparation_replaces_the_old_and_an_empty_pool_has_none() {
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("prep-again", &members);
    let (mut xs, h) = fake::serve(xenstore(&members));
    prepare(&env, &mut xs).unwrap();
    let first = xs.held().unwrap().tx;
    prepare(&env, &mut xs).unwrap();
    let second = xs.held().unwrap().tx;
    assert_ne!(first, second);
    std::fs::remove_dir_all(env.path("pool")).unwrap();
    prepare(&env, &mut xs).unwrap();
    assert!(xs.held().is_none());
    xs.read(NO_TX, "/mark").unwrap();
    drop(xs);
    let st = h.join().unwrap();
    let aborts: Vec<u32> = st
        .log
        .iter()
        .filter(|l| l.0 == wire::XS_TRANSACTION_END)
        .map(|l| {
            assert_eq!(l.1, "F");
            l.2
        })
        .collect();
    assert_eq!(aborts, [first, second]);
}

/// A member that a refill still boots is not read within the prepared
/// transaction: its getting ready does not fail the commit. No member's
/// data/pool is (the one taken changes it before the commit).
#[test]
fn a_member_getting_ready_after_the_preparation_does_not_fail_it() {
    let members = [("mp-pool-1", 3), ("mp-pool-2", 4)];
    let (_d, env) = run_dir("prep-boot", &members);
    let mut st = xenstore(&members);
    st.nodes.insert(
        "/local/domain/4/data/pool".into(),
        ("booting".into(), vec![]),
    );
    let s = spawn_of("a", "10.0.0.5/24");
    let (r, _, st, rounds) = run_prepared(&env, &s, st, |xs| {
        xs.write(NO_TX, "/local/domain/4/data/pool", "waiting")
            .unwrap()
    });
    let line = r.unwrap().unwrap();
    assert!(line.starts_with("spawned name=a domid=3 "), "{line}");
    assert_eq!(rounds.len(), 2, "{rounds:#?}");
    assert_eq!(commits(&st), 1);
    let within: Vec<&str> = st
        .log
        .iter()
        .filter(|l| l.0 == wire::XS_READ && l.2 != NO_TX)
        .map(|l| l.1.as_str())
        .collect();
    assert!(within.contains(&"/local/domain/3/name"), "{within:?}");
    assert!(within.contains(&"/local/domain/3/vm"), "{within:?}");
    assert!(!within.contains(&"/local/domain/4/vm"), "{within:?}");
    assert!(
        !within.iter().any(|p| p.ends_with("/data/pool")),
        "{within:?}"
    );
}
