//! The warm path against the fake xenstored (crate::xenstore::fake), with
//! the pool's records in a temporary run directory: what it checks, what
//! it writes, and how many round trips to xenstored it costs (counted by
//! the fake, not assumed).

use super::*;
use crate::xenstore::fake::{self, State};
use crate::xenstore::wire;
use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

pub(super) struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A run directory with pool members `(name, domid)` recorded (memory 4).
pub(super) fn run_dir(tag: &str, members: &[(&str, u32)]) -> (Dir, Env) {
    let dir = std::env::temp_dir().join(format!("mp-warm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pool = dir.join("pool");
    std::fs::create_dir_all(&pool).unwrap();
    for (i, (name, id)) in members.iter().enumerate() {
        let meta = format!("# pool\n# miniproxy: memory=4 mac=00:16:3e:00:00:0{i}\n");
        std::fs::write(pool.join(format!("{name}.cfg")), meta).unwrap();
        std::fs::write(pool.join(format!("{name}.domid")), format!("{id}\n")).unwrap();
    }
    let env = Env::load().under(dir.clone());
    (Dir(dir), env)
}

/// dom0, and each member `(name, domid)` booted and waiting, its guest
/// ready (the first's) once its configuration key is written.
pub(super) fn xenstore(members: &[(&str, u32)]) -> State {
    let mut st = State::with(&[("/local/domain/0/name", "Domain-0")]);
    for (name, id) in members {
        let home = format!("/local/domain/{id}");
        for (k, v) in [
            (format!("{home}/name"), name.to_string()),
            (format!("{home}/vm"), format!("/vm/u{id}")),
            (format!("/vm/u{id}/name"), name.to_string()),
            (format!("{home}/data/pool"), "waiting".into()),
        ] {
            st.nodes.insert(k, (v, vec!["n0".into()]));
        }
    }
    if let Some((_, id)) = members.first() {
        let home = format!("/local/domain/{id}");
        st.guest = Some((
            format!("{home}/miniproxy/config"),
            vec![
                (format!("{home}/data/pool"), "taken us=555".into()),
                (format!("{home}/data/ip"), "10.0.0.5/24".into()),
                (format!("{home}/data/ready"), "1".into()),
            ],
        ));
        st.guest_after = Some(Duration::from_millis(30));
    }
    st
}

pub(super) fn spawn_of(name: &str, ip: &str) -> Spawn {
    crate::args::reverse_spawn(name, ip, &["--memory", "4"])
}

pub(super) fn template() -> (String, PathBuf) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xl-configs/template.cfg");
    (std::fs::read_to_string(&p).unwrap(), p)
}

/// `warm` for `s` on a fresh connection to a fake over `st`: its result,
/// the refills it started, the fake's final state.
/// Spawn `s` ("a" at 10.0.0.5/24) took pool member mp-pool-1 (domain 3)
/// warm: its result line, one refill, the configuration key (dom0's,
/// readable by the guest), the rename, the member out of the pool and
/// NAME's records in place.
pub(super) fn assert_took_member_3(env: &Env, s: &Spawn, line: &str, refills: u32, st: &State) {
    assert!(
        line.starts_with("spawned name=a domid=3 ready_ms=")
            && line.contains(" ip=10.0.0.5/24 mac=00:16:3e:00:00:00 ")
            && line.ends_with(" guest_us=555 how=warm"),
        "{line}"
    );
    assert_eq!(refills, 1);
    assert_eq!(st.value("/local/domain/3/name"), Some("a"));
    assert_eq!(st.value("/vm/u3/name"), Some("a"));
    let (cfg, perms) = &st.nodes["/local/domain/3/miniproxy/config"];
    assert_eq!(cfg, &s.cfgline);
    assert_eq!(perms, &["n0", "r3"]);
    assert!(!env.path("pool/mp-pool-1.cfg").exists());
    assert!(env.path("a.cfg").is_file());
    assert_eq!(std::fs::read_to_string(env.path("a.domid")).unwrap(), "3\n");
}

fn run_warm(env: &Env, s: &Spawn, st: State) -> (Result<Option<String>, Failure>, u32, State) {
    let (mut xs, h) = fake::serve(st);
    let (t, tp) = template();
    let refills = Cell::new(0);
    let r = warm(env, s, ("/k", &t, &tp), &mut xs, &|_| {
        refills.set(refills.get() + 1)
    });
    drop(xs);
    (r, refills.get(), h.join().unwrap())
}

#[test]
fn a_warm_spawn_takes_the_member_in_four_round_trips() {
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("rt", &members);
    let s = spawn_of("a", "10.0.0.5/24");
    let (r, refills, st) = run_warm(&env, &s, xenstore(&members));
    assert_took_member_3(&env, &s, &r.unwrap().unwrap(), refills, &st);
    let rounds: Vec<Vec<(u32, String)>> = st
        .round_starts
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let end = st.round_starts.get(i + 1).copied().unwrap_or(st.log.len());
            st.log[k..end].iter().map(|l| (l.0, l.1.clone())).collect()
        })
        .collect();
    eprintln!("round trips of a warm spawn: {}", st.rounds);
    for (i, r) in rounds.iter().enumerate() {
        eprintln!("  {i}: {r:?}");
    }
    assert_eq!(st.rounds, 4, "{rounds:#?}");
    let types = |i: usize| rounds[i].iter().map(|r| r.0).collect::<Vec<_>>();
    // 1: the ready watch and the transaction's start.
    assert_eq!(types(0), [wire::XS_WATCH, wire::XS_TRANSACTION_START]);
    // 2: every check within the transaction: the domain list, each
    // domain's name, the member's data/pool and vm.
    assert_eq!(types(1)[0], wire::XS_DIRECTORY);
    let read2: Vec<&str> = rounds[1][1..].iter().map(|r| r.1.as_str()).collect();
    for p in [
        "/local/domain/0/name",
        "/local/domain/3/name",
        "/local/domain/3/data/pool",
        "/local/domain/3/vm",
    ] {
        assert!(read2.contains(&p), "{p} not in {read2:?}");
    }
    // 3: the writes and the commit.
    assert_eq!(
        types(2),
        [
            wire::XS_WRITE,
            wire::XS_SET_PERMS,
            wire::XS_WRITE,
            wire::XS_WRITE,
            wire::XS_TRANSACTION_END
        ]
    );
    // 4: the watch fired: ready, the member's data/pool and data/ip.
    assert_eq!(types(3), [wire::XS_READ; 3]);
}

#[test]
fn a_used_name_or_address_is_refused_and_nothing_is_written() {
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("refuse", &members);
    // Domain 7, not in any record: its name is read in one more round trip.
    let mut st = xenstore(&members);
    st.nodes
        .insert("/local/domain/7/name".into(), ("a".into(), vec![]));
    let (r, refills, st) = run_warm(&env, &spawn_of("a", "10.0.0.5/24"), st);
    match r {
        Err(Failure::Fail(m)) => assert_eq!(m, "name 'a' is in use: domain 7 exists"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refills, 0);
    assert_eq!(st.value("/local/domain/3/name"), Some("mp-pool-1"));
    assert!(!st.nodes.contains_key("/local/domain/3/miniproxy/config"));
    // Watch + start, the checks, the unknown domain's name, the abort.
    assert_eq!(st.rounds, 4, "{:?}", st.log);
    let last = st.log.last().unwrap();
    assert_eq!((last.0, last.1.as_str()), (wire::XS_TRANSACTION_END, "F"));
    assert!(env.path("pool/mp-pool-1.cfg").exists(), "still the pool's");

    // An instance "b" with the address, alive (its domain has its name).
    std::fs::write(env.path("b.cfg"), "# x\n# miniproxy: ip=10.0.0.5/24\n").unwrap();
    std::fs::write(env.path("b.domid"), "9\n").unwrap();
    let mut st = xenstore(&members);
    st.nodes
        .insert("/local/domain/9/name".into(), ("b".into(), vec![]));
    let (mut xs, h) = fake::serve(st);
    // domain_of asks xenstored through crate::xen: no fake there, so the
    // check sees "b" as gone unless it is spawning; hold its name lock.
    let _b = crate::lock::try_take(&env.path("b.lock")).unwrap().unwrap();
    let (t, tp) = template();
    let r = warm(
        &env,
        &spawn_of("c", "10.0.0.5/24"),
        ("/k", &t, &tp),
        &mut xs,
        &|_| (),
    );
    drop(xs);
    let st = h.join().unwrap();
    match r {
        Err(Failure::Fail(m)) => assert_eq!(m, "address 10.0.0.5 is in use by instance 'b'"),
        other => panic!("{other:?}"),
    }
    assert!(!st.nodes.contains_key("/local/domain/3/miniproxy/config"));
    assert_eq!(st.value("/local/domain/3/name"), Some("mp-pool-1"));
}

#[test]
fn a_member_that_no_longer_waits_is_passed_over_and_none_means_cold() {
    let members = [("mp-pool-1", 3), ("mp-pool-2", 4)];
    let (_d, env) = run_dir("next", &members);
    let mut st = xenstore(&members);
    // The first was renamed by hand; the second waits (its guest answers).
    st.nodes
        .insert("/local/domain/3/name".into(), ("other".into(), vec![]));
    st.guest = Some((
        "/local/domain/4/miniproxy/config".into(),
        vec![
            ("/local/domain/4/data/ip".into(), "10.0.0.5/24".into()),
            ("/local/domain/4/data/ready".into(), "1".into()),
        ],
    ));
    // And a concurrent change makes the first commit fail: all again.
    st.eagain_commits = 1;
    let (r, _, st) = run_warm(&env, &spawn_of("a", "10.0.0.5/24"), st);
    let line = r.unwrap().unwrap();
    assert!(line.starts_with("spawned name=a domid=4 "), "{line}");
    assert!(line.ends_with(" guest_us=- how=warm"), "{line}");
    assert_eq!(st.value("/local/domain/4/name"), Some("a"));
    assert_eq!(st.value("/local/domain/3/name"), Some("other"));
    // Each watch set once: the second attempt did not ask again.
    let watches = st.log.iter().filter(|l| l.0 == wire::XS_WATCH).count();
    assert_eq!(watches, 2, "{:?}", st.log);
    // The first member stays in the pool's records; the second left.
    assert!(env.path("pool/mp-pool-1.cfg").exists());
    assert!(!env.path("pool/mp-pool-2.cfg").exists());

    // No member waits: None (cold), nothing written, NAME's record absent.
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("none", &members);
    let mut st = xenstore(&members);
    st.nodes
        .insert("/local/domain/3/data/pool".into(), ("taken".into(), vec![]));
    let (r, refills, st) = run_warm(&env, &spawn_of("a", "10.0.0.5/24"), st);
    assert!(matches!(r, Ok(None)), "{r:?}");
    assert_eq!(refills, 0);
    assert!(!st.nodes.contains_key("/local/domain/3/miniproxy/config"));
    assert!(!env.path("a.cfg").exists());
    // No candidate at all: the name is still checked (the cold spawn that
    // follows relies on it), in two round trips, no transaction.
    let (_d, env) = run_dir("empty", &[]);
    let (r, _, st) = run_warm(&env, &spawn_of("a", "10.0.0.5/24"), xenstore(&[]));
    assert!(matches!(r, Ok(None)), "{r:?}");
    assert_eq!(st.rounds, 2);
    let mut st = xenstore(&[]);
    st.nodes
        .insert("/local/domain/5/name".into(), ("a".into(), vec![]));
    let (r, _, _) = run_warm(&env, &spawn_of("a", "10.0.0.5/24"), st);
    match r {
        Err(Failure::Fail(m)) => assert_eq!(m, "name 'a' is in use: domain 5 exists"),
        other => panic!("{other:?}"),
    }
}

/// A commit that keeps failing: the member may or may not have its
/// configuration, so it is not handed to a cold spawn's name check; it is
/// taken out of the pool and destroyed (xl destroy by domid), as a member
/// that fails after the hand-over, and the pool refills.
#[test]
fn a_failed_commit_gives_the_member_up() {
    let members = [("mp-pool-1", 3)];
    let (_d, env) = run_dir("commit", &members);
    let mut st = xenstore(&members);
    st.eagain_commits = 100;
    let (r, refills, st) = run_warm(&env, &spawn_of("a", "10.0.0.5/24"), st);
    match r {
        Err(Failure::Fail(m)) => assert_eq!(
            m,
            "a (pool member mp-pool-1, domain 3): handing over the configuration: \
             xenstore commit a transaction: EAGAIN; destroyed it"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(refills, 1, "the pool lost a member");
    assert_eq!(st.eagain_commits, 95, "five attempts");
    assert!(!env.path("pool/mp-pool-1.cfg").exists());
    assert!(!env.path("a.cfg").exists());
}
