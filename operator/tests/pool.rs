//! The warm pool end to end on the host, with the fake `xl` and
//! `xenstore-*` of tests/fakexen/: a member created with `pool=on` says
//! `data/pool=waiting`; writing its `miniproxy/config` makes it ready.

#[allow(dead_code)] // the rig's other helpers serve the other files
mod rig;

use rig::{err, out, spawn_args, Rig};
use std::time::{Duration, Instant};

fn spawn(r: &Rig, name: &str, ip: &str, more: &[&str]) -> std::process::Output {
    r.run(&spawn_args(name, ip, more))
}

/// `pool status` until it prints `want`, within 10 s.
fn status_becomes(r: &Rig, want: &str) {
    let t0 = Instant::now();
    loop {
        let o = r.run(&["pool", "status"]);
        let line = out(&o);
        if line.trim_end() == want {
            return;
        }
        let refill = std::fs::read_to_string(r.dir.join("run/pool/refill.log")).unwrap_or_default();
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "status: {line} (want {want}); refill.log: {refill}; records: {:?}; calls:\n{}",
            std::fs::read_dir(r.dir.join("run/pool"))
                .map(|d| d
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>())
                .unwrap_or_default(),
            r.xl_calls()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fill_take_refill_cold_fallbacks_and_drain() {
    let r = Rig::new("pool");
    let o = r.run(&["pool", "fill", "2", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let line = out(&o);
    assert!(
        line.starts_with("pool target=2 memory=4 waiting=2 starting=0 crashed=0 ms="),
        "{line}"
    );
    let cfg = std::fs::read_to_string(r.dir.join("run/pool/mp-pool-1.cfg")).unwrap();
    assert!(cfg.contains("extra   = \"pool=on rx_bufs=32\""), "{cfg}");
    assert!(cfg.contains("memory  = 4\n"), "{cfg}");
    status_becomes(&r, "pool target=2 memory=4 waiting=2 starting=0 crashed=0");
    // Pool members are not instances.
    assert_eq!(out(&r.run(&["list"])), "");

    let o = spawn(&r, "a", "10.0.0.5/24", &["--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let line = out(&o);
    assert!(
        line.starts_with("spawned name=a domid=1 ready_ms=")
            && line.contains(" ip=10.0.0.5/24 mac=00:16:3e:")
            && line.contains(" memory=4 mode=reverse wait_ms=")
            && line.trim_end().ends_with(" guest_us=555 how=warm"),
        "{line}"
    );
    let calls = r.xl_calls();
    // Renamed as `xl rename` does it (libxl: both name nodes, in the
    // transaction that also writes the key), without running xl.
    assert!(
        calls.contains(
            "xenstore-write /local/domain/1/name a\nxenstore-write /vm/00000000-0000-0000-0000-000000000001/name a\n"
        ) && !calls.contains("xl rename"),
        "{calls}"
    );
    let xs = |p: &str| r.xs(p).unwrap();
    assert_eq!(xs("local/domain/1/name"), "a");
    assert_eq!(xs("vm/00000000-0000-0000-0000-000000000001/name"), "a");
    assert!(
        calls.contains("xenstore-chmod /local/domain/1/miniproxy/config n0 r1\n"),
        "{calls}"
    );
    let key = xs("local/domain/1/miniproxy/config");
    assert_eq!(
        key,
        "ip=10.0.0.5/24 rule=reverse:80:10.0.0.1:8080 rx_bufs=32 max_conns=64"
    );
    assert_eq!(calls.matches("xl create").count(), 2, "{calls}");
    // It is an instance now, under its name; the pool refills to 2.
    assert!(out(&r.run(&["list"])).starts_with("name=a domid=1 state=running ip=10.0.0.5/24"));
    status_becomes(&r, "pool target=2 memory=4 waiting=2 starting=0 crashed=0");
    assert_eq!(r.xl_calls().matches("xl create").count(), 3);

    // Another memory, a --mac or libvirt: cold, and the pool is untouched.
    let o = spawn(&r, "b", "10.0.0.6/24", &["--memory", "6"]);
    assert!(out(&o).trim_end().ends_with(" how=cold"), "{}", out(&o));
    let o = spawn(
        &r,
        "c",
        "10.0.0.7/24",
        &["--memory", "4", "--mac", "00:16:3e:01:02:03"],
    );
    assert!(out(&o).trim_end().ends_with(" how=cold"), "{}", out(&o));
    // A name in use too (the warm path's own check, with the member's).
    let o = spawn(&r, "a", "10.0.0.9/24", &["--memory", "4"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("name 'a' is in use: domain 1 exists"),
        "{}",
        err(&o)
    );
    // An address in use is refused before a member is taken.
    let o = spawn(&r, "d", "10.0.0.5/24", &["--memory", "4"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("address 10.0.0.5 is in use by instance 'a'"),
        "{}",
        err(&o)
    );
    status_becomes(&r, "pool target=2 memory=4 waiting=2 starting=0 crashed=0");

    // stop --all stops the instances and leaves the pool alone.
    let o = r.run(&["stop", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o).lines().count(), 3, "{}", out(&o));
    status_becomes(&r, "pool target=2 memory=4 waiting=2 starting=0 crashed=0");

    drain_stops(&r, 2);
    status_becomes(&r, "pool target=0 memory=4 waiting=0 starting=0 crashed=0");
    // An empty pool: cold.
    let o = spawn(&r, "e", "10.0.0.8/24", &["--memory", "4"]);
    assert!(out(&o).trim_end().ends_with(" how=cold"), "{}", out(&o));
    assert_eq!(r.xl_calls().matches("xl create").count(), 6);
}

#[test]
fn a_member_that_refuses_its_configuration_is_destroyed_and_replaced() {
    let r = Rig::new("pool-fatal");
    let o = r.run(&["pool", "fill", "1", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    status_becomes(&r, "pool target=1 memory=4 waiting=1 starting=0 crashed=0");
    // The fake guest prints a fatal line instead of getting ready.
    std::fs::write(r.dir.join("xs/.pool-fatal"), "").unwrap();
    let t0 = Instant::now();
    let o = spawn(
        &r,
        "a",
        "10.0.0.5/24",
        &["--memory", "4", "--timeout", "30"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let e = err(&o);
    assert!(
        e.contains("a (pool member mp-pool-1, domain 1): the guest stopped with a fatal error; destroying it")
            && e.contains("  | miniproxy: fatal: pool: miniproxy/config: refused"),
        "{e}"
    );
    // Found by the once-a-second look at the console, not the --timeout.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(r.xl_calls().contains("xl destroy 1\n"), "{}", r.xl_calls());
    assert!(!r.dir.join("run/a.cfg").exists());
    std::fs::remove_file(r.dir.join("xs/.pool-fatal")).unwrap();
    status_becomes(&r, "pool target=1 memory=4 waiting=1 starting=0 crashed=0");
    assert_eq!(r.xl_calls().matches("xl create").count(), 2);
}

/// What a daemon killed between its configuration write and its commit
/// leaves (crate::warm::prepared): domain ID still named as its pool
/// member, configured, ready, `data/pool=taken us=5`.
fn orphan(r: &Rig, id: u32) {
    let home = r.dir.join(format!("xs/local/domain/{id}"));
    std::fs::create_dir_all(home.join("miniproxy")).unwrap();
    std::fs::write(
        home.join("miniproxy/config"),
        "ip=10.0.0.5/24 rule=reverse:80:10.0.0.1:8080 rx_bufs=32",
    )
    .unwrap();
    std::fs::write(home.join("data/ip"), "10.0.0.5/24").unwrap();
    std::fs::write(home.join("data/pool"), "taken us=5").unwrap();
    std::fs::write(home.join("data/ready"), "99999999").unwrap();
}

/// `pool drain` succeeds and says it stopped `n` members, none left.
fn drain_stops(r: &Rig, n: usize) {
    let o = r.run(&["pool", "drain"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let want = format!("drained stopped={n} left=0 ms=");
    assert!(out(&o).starts_with(&want), "{}", out(&o));
}

const DESTROYING: &str =
    "was configured by a spawn that did not finish (its pool name kept); destroying it";

/// The fill `o` said it destroys orphan mp-pool-1 (domain `id`), and the
/// domain is gone.
fn orphan_destroyed(r: &Rig, o: &std::process::Output, id: u32) {
    let line = format!("miniproxy pool: mp-pool-1 (domain {id}) {DESTROYING}\n");
    assert!(err(o).contains(&line), "{}", err(o));
    let name = r.xs(&format!("local/domain/{id}/name"));
    assert!(name.is_none(), "domain {id} still there: {name:?}");
}

/// A rig whose pool of `n` filled, then member 1 (domain 1) made an orphan:
/// counted with the crashed, not as starting.
fn pool_with_an_orphan(rig: &str, n: usize) -> Rig {
    let r = Rig::new(rig);
    let o = r.run(&["pool", "fill", &n.to_string(), "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    status_becomes(
        &r,
        &format!("pool target={n} memory=4 waiting={n} starting=0 crashed=0"),
    );
    orphan(&r, 1);
    let waiting = n - 1;
    status_becomes(
        &r,
        &format!("pool target={n} memory=4 waiting={waiting} starting=0 crashed=1"),
    );
    r
}

#[test]
fn an_orphan_of_an_interrupted_hand_over_is_destroyed_and_replaced_by_fill() {
    let r = pool_with_an_orphan("pool-orphan", 2);

    let t0 = Instant::now();
    let o = r.run(&["pool", "fill", "2", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    // Not the 60 s a fill waits for members that do not wait.
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    orphan_destroyed(&r, &o, 1);
    assert!(
        out(&o).starts_with("pool target=2 memory=4 waiting=2 starting=0 crashed=0 ms="),
        "{}",
        out(&o)
    );
    let calls = r.xl_calls();
    assert!(calls.contains("xl destroy 1\n"), "{calls}");
    // Its records went; mp-pool-1 is the replacement, domain 3.
    assert_eq!(calls.matches("xl create").count(), 3, "{calls}");
    let domid = std::fs::read_to_string(r.dir.join("run/pool/mp-pool-1.domid")).unwrap();
    assert_eq!(domid.trim(), "3");
    assert_eq!(r.xs("local/domain/3/name").as_deref(), Some("mp-pool-1"));
    status_becomes(&r, "pool target=2 memory=4 waiting=2 starting=0 crashed=0");

    // The refill a spawn starts runs the same fill.
    orphan(&r, 3);
    let o = r.run(&["pool", "fill", "--refill"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    orphan_destroyed(&r, &o, 3);
    assert_eq!(r.xs("local/domain/4/name").as_deref(), Some("mp-pool-1"));
    status_becomes(&r, "pool target=2 memory=4 waiting=2 starting=0 crashed=0");

    // drain removes an orphan as any member.
    orphan(&r, 4);
    status_becomes(&r, "pool target=2 memory=4 waiting=1 starting=0 crashed=1");
    drain_stops(&r, 2);
    assert!(
        r.xs("local/domain/4/name").is_none(),
        "domain 4 still there"
    );
    assert!(!r.dir.join("run/pool/mp-pool-1.cfg").exists());
    status_becomes(&r, "pool target=0 memory=4 waiting=0 starting=0 crashed=0");
}

/// `pool fill` started in the background; its stderr lines as they come.
fn fill_in_background(
    r: &Rig,
    n: &str,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    use std::io::BufRead;
    let mut child = r
        .cmd(env!("CARGO_BIN_EXE_miniproxy-operator"))
        .args(["pool", "fill", n, "--memory", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    (child, rx, reader)
}

/// The global lock, as a spawn holds it.
fn hold_global_lock(r: &Rig) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(r.dir.join("run/.lock"))
        .unwrap();
    f.lock().unwrap();
    f
}

#[test]
fn an_orphan_is_left_for_the_next_fill_while_the_global_lock_is_busy() {
    let r = pool_with_an_orphan("pool-orphan-locked", 1);

    let lock = hold_global_lock(&r);
    let t0 = Instant::now();
    let (child, lines, reader) = fill_in_background(&r, "1");
    let mut seen = Vec::new();
    let left = "miniproxy pool: mp-pool-1 (domain 1) was configured by a spawn that did not finish (its pool name kept), but ";
    while !seen.iter().any(|l: &String| l.starts_with(left)) {
        match lines.recv_timeout(Duration::from_secs(40)) {
            Ok(l) => seen.push(l),
            Err(e) => panic!("{e}: {seen:?}"),
        }
    }
    let line = seen.last().unwrap();
    assert!(
        line.ends_with(" was held for 10 s; leaving it for the next fill"),
        "{line}"
    );
    // A bounded wait for the lock, then the orphan is still there.
    assert!(t0.elapsed() >= Duration::from_secs(9), "{:?}", t0.elapsed());
    assert_eq!(r.xs("local/domain/1/name").as_deref(), Some("mp-pool-1"));
    assert!(!r.xl_calls().contains("xl destroy"), "{}", r.xl_calls());
    // The fill goes on: its replacement member takes the lock once free.
    drop(lock);
    let t1 = Instant::now();
    let o = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(o.status.code(), Some(0), "{seen:?} {rest:?}");
    // It does not wait the 60 s for the orphan to say waiting.
    assert!(t1.elapsed() < Duration::from_secs(30), "{:?}", t1.elapsed());
    assert!(
        out(&o).starts_with("pool target=1 memory=4 waiting=1 starting=0 crashed=1 ms="),
        "{}",
        out(&o)
    );
    assert!(
        !seen.iter().chain(&rest).any(|l| l.contains(DESTROYING)),
        "{seen:?} {rest:?}"
    );
    assert_eq!(r.xs("local/domain/1/name").as_deref(), Some("mp-pool-1"));
    assert!(!r.xl_calls().contains("xl destroy"), "{}", r.xl_calls());

    // The next fill, with the lock free, destroys it.
    let o = r.run(&["pool", "fill", "1", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    orphan_destroyed(&r, &o, 1);
    assert!(!r.dir.join("run/pool/mp-pool-1.cfg").exists());
    assert!(
        out(&o).starts_with("pool target=1 memory=4 waiting=1 starting=0 crashed=0 ms="),
        "{}",
        out(&o)
    );
}

/// A spawn that held the global lock renamed the member meanwhile (as an
/// in-flight hand-over does between its configuration write and its
/// commit): read again under the lock, it is no orphan and stays.
#[test]
fn a_member_renamed_while_fill_waits_for_the_global_lock_is_not_destroyed() {
    let r = pool_with_an_orphan("pool-orphan-renamed", 1);

    let lock = hold_global_lock(&r);
    let lists = r.xl_calls().matches("xl list").count();
    let (child, lines, reader) = fill_in_background(&r, "1");
    // The fill has looked at its members (xl list) and found the orphan:
    // it waits for the lock now.
    let t0 = Instant::now();
    while r.xl_calls().matches("xl list").count() == lists {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", r.xl_calls());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(r.dir.join("xs/local/domain/1/name"), "a").unwrap();
    drop(lock);
    let o = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let said: Vec<String> = lines.try_iter().collect();
    assert_eq!(o.status.code(), Some(0), "{said:?}");
    assert!(said.is_empty(), "{said:?}");
    assert!(!r.xl_calls().contains("xl destroy"), "{}", r.xl_calls());
    assert_eq!(r.xs("local/domain/1/name").as_deref(), Some("a"));
    // Out of the pool by its new name; the pool has a new member.
    assert!(
        out(&o).starts_with("pool target=1 memory=4 waiting=1 starting=0 crashed=0 ms="),
        "{}",
        out(&o)
    );
}
