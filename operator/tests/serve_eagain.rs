//! The daemon's prepared hand-over (crate::warm::prepared) when its commit
//! fails: a domain appears in /local/domain after the preparation, so the
//! rig's xenstored refuses the commit with EAGAIN (as C xenstored does)
//! after the member has had its configuration key, written outside the
//! transaction in the same round trip. The spawn then renames the member
//! in a transaction of its own (prepared::rename_configured): the member
//! is NAME's, configured once; or, the new domain being named NAME, the
//! reply is "name in use", the member destroyed, NAME's records gone.

#[allow(dead_code)] // the rig's other helpers serve the other files
mod rig;

#[allow(dead_code)] // the other files use the rest
mod daemon;

use daemon::{warm_spawn, Daemon};
use rig::{err, Rig};
use std::path::Path;
use std::time::{Duration, Instant};

/// The trace of a prepared commit that failed after the configuration.
const ON_ITS_OWN: &str = "after the configuration, renaming on its own";

/// A pool of one member (mp-pool-1, domain 1) and a daemon, with
/// MINIPROXY_TRACE, that has prepared its hand-over and is quiet.
fn prepared(tag: &str) -> (Rig, Daemon) {
    let r = Rig::new(tag);
    let o = r.run(&["pool", "fill", "1", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let d = Daemon::start_with(&r, &[("MINIPROXY_TRACE", Path::new("1"))]);
    d.settled(0);
    (r, d)
}

/// Domain ID named NAME, created by another client of xenstored (the
/// daemon is not told: no @introduceDomain in the rig).
fn another_domain(r: &Rig, id: u32, name: &str) {
    let home = r.dir.join(format!("xs/local/domain/{id}"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("name"), name).unwrap();
}

/// How many times member 1's configuration key was written (the rig's
/// xenstored runs the fake xenstore-write, which logs, for each write).
fn config_writes(r: &Rig) -> usize {
    r.xl_calls()
        .lines()
        .filter(|l| l.starts_with("xenstore-write /local/domain/1/miniproxy/config "))
        .count()
}

/// The rig's xenstored's round trips so far ("CONN TYPE,TYPE...").
fn rounds(r: &Rig) -> Vec<String> {
    std::fs::read_to_string(r.dir.join("xenstored.rounds"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The request types of each round trip, in order, on the connection whose
/// first round among `rounds` ends with `first`.
fn conn_rounds<'a>(rounds: &'a [String], first: &str) -> Vec<&'a str> {
    let conn = rounds
        .iter()
        .find(|l| l.ends_with(first))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no {first:?} in {rounds:?}"));
    rounds
        .iter()
        .filter(|l| l.split(' ').next() == Some(conn))
        .filter_map(|l| l.split(' ').nth(1))
        .collect()
}

/// The daemon's trace line of the prepared commit's failure: asserted
/// to be there (and the commit not to have succeeded).
fn assert_renamed_on_its_own(d: &Daemon) {
    let e = d.stderr();
    let line = e.lines().find(|l| l.contains(ON_ITS_OWN));
    assert!(
        line.is_some_and(|l| l.contains("prepared hand-over: ") && l.contains("EAGAIN")),
        "{e}"
    );
    assert!(!e.contains("prepared hand-over committed"), "{e}");
}

#[test]
fn a_domain_created_after_the_preparation_fails_the_commit_and_the_member_is_renamed_on_its_own() {
    let (r, d) = prepared("serve-eagain");
    let vm = r.xs("local/domain/1/vm").unwrap();
    assert_eq!(r.xs(&format!("{vm}/name")).as_deref(), Some("mp-pool-1"));
    another_domain(&r, 77, "other");
    let before = rounds(&r).len();
    let mut c = d.connect();
    let line = c.ask(&warm_spawn("a", "10.0.0.5/24"));
    assert!(
        line.starts_with("spawned name=a domid=1 ") && line.ends_with(" how=warm\n"),
        "{line}{}",
        d.stderr()
    );
    assert_renamed_on_its_own(&d);
    assert_eq!(config_writes(&r), 1, "{}", r.xl_calls());
    // On the spawn's connection: the prepared round trip, whose commit
    // failed; then the rename's own transaction (start; the domain list;
    // the names of domains 0, 1 and 77; the two writes with the commit),
    // the configuration not sent again.
    let after = rounds(&r).split_off(before);
    let spawn = conn_rounds(&after, " 4,11,14,11,11,7");
    assert_eq!(
        spawn.get(..5),
        Some(&["4,11,14,11,11,7", "6", "1", "2,2,2", "11,11,7"][..]),
        "{spawn:?}"
    );
    let key = r.xs("local/domain/1/miniproxy/config").unwrap();
    assert!(key.starts_with("ip=10.0.0.5/24 "), "{key}");
    assert_eq!(r.xs("local/domain/1/name").as_deref(), Some("a"));
    assert_eq!(r.xs(&format!("{vm}/name")).as_deref(), Some("a"));
    assert_eq!(r.xs("local/domain/77/name").as_deref(), Some("other"));
    assert_eq!(
        std::fs::read_to_string(r.dir.join("run/a.domid")).unwrap(),
        "1\n"
    );

    let line = c.ask(&["stop", "a"]);
    assert!(
        line.starts_with("stopped name=a domid=1 ") && line.ends_with(" how=shutdown\n"),
        "{line}{}",
        d.stderr()
    );
    assert!(r.xs("local/domain/1/name").is_none());
    assert!(!r.dir.join("run/a.cfg").exists());
}

#[test]
fn a_domain_named_like_the_spawn_after_the_preparation_is_an_in_use_reply() {
    let (r, d) = prepared("serve-eagain-inuse");
    another_domain(&r, 77, "a");
    let mut c = d.connect();
    assert_eq!(
        c.ask(&warm_spawn("a", "10.0.0.5/24")),
        "error rc=1 name 'a' is in use: domain 77 exists\n",
        "{}",
        d.stderr()
    );
    assert_renamed_on_its_own(&d);
    // The member had a's configuration (and address): destroyed, not
    // renamed; the other domain untouched.
    assert_eq!(config_writes(&r), 1, "{}", r.xl_calls());
    assert!(r.xl_calls().contains("xl destroy 1\n"), "{}", r.xl_calls());
    assert!(r.xs("local/domain/1/name").is_none());
    assert_eq!(r.xs("local/domain/77/name").as_deref(), Some("a"));
    // a's records (a.cfg, a.domid), written while the commit was in
    // flight, are gone; a.lock, the name's flock file, stays by design
    // (removing a lock file races with its next taker).
    let left: Vec<String> = std::fs::read_dir(r.dir.join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("a.") && n != "a.lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The pool lost its member: the refill brings it back to its target.
    let t0 = Instant::now();
    while !d.stderr().contains("refill started") {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}
