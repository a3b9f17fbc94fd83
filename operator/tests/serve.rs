//! `miniproxy serve` on the host, in the fake dom0 of tests/rig: requests
//! over its socket are served as the CLI serves them (warm from the pool,
//! cold when it is empty, stop), bad and broken requests end in an error
//! reply or a closed connection without hurting the daemon or its other
//! clients, and SIGTERM removes the socket.

#[allow(dead_code)] // the rig's other helpers serve the other files
mod rig;

mod daemon;

use daemon::{warm_spawn, Daemon};
use rig::{err, out, spawn_args, Rig};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// `pool status` until it prints `want`, within 20 s.
fn status_becomes(r: &Rig, want: &str) {
    let t0 = Instant::now();
    loop {
        let line = out(&r.run(&["pool", "status"]));
        if line.trim_end() == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "status: {line} (want {want}); calls:\n{}",
            r.xl_calls()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn warm_and_cold_spawns_stop_bad_requests_and_sigterm() {
    let r = Rig::new("serve");
    let o = r.run(&["pool", "fill", "1", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let mut d = Daemon::start(&r);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut c = d.connect();

    // Warm: an --extra value with a space needs no quoting.
    let mut words = warm_spawn("a", "10.0.0.5/24");
    words.extend(["--extra", "idle_exit=10m max_conns=32"]);
    let line = c.ask(&words);
    assert!(
        line.starts_with("spawned name=a domid=1 ready_ms=")
            && line.contains(" ip=10.0.0.5/24 mac=00:16:3e:")
            && line.ends_with(" guest_us=555 how=warm\n"),
        "{line}{}",
        d.stderr()
    );
    let xs = |p: &str| r.xs(p).unwrap();
    assert_eq!(xs("local/domain/1/name"), "a");
    let key = xs("local/domain/1/miniproxy/config");
    assert!(
        key.starts_with("ip=10.0.0.5/24 rule=reverse:80:10.0.0.1:8080 ")
            && key.contains(" idle_exit=10m")
            && key.contains(" max_conns=32"),
        "{key}"
    );
    assert!(r.dir.join("run/a.cfg").is_file());
    // Refilled by a thread of the daemon: no `pool fill --refill` process
    // (which would have opened refill.log).
    status_becomes(&r, "pool target=1 memory=4 waiting=1 starting=0 crashed=0");
    assert_eq!(r.xl_calls().matches("xl create").count(), 2);
    assert!(!r.dir.join("run/pool/refill.log").exists());

    // Bad requests on the same connection: rc=2, and it still serves.
    assert_eq!(
        c.ask(&["frobnicate", "x"]),
        "error rc=2 'frobnicate' is not served (spawn, stop)\n"
    );
    assert_eq!(
        c.ask(&["spawn", "--name"]),
        "error rc=2 --name needs a value\n"
    );
    assert_eq!(
        c.ask(&[""]),
        "error rc=2 an empty request (spawn or stop, TAB-separated)\n"
    );
    assert_eq!(
        c.ask(&["spawn", "--help"]),
        "error rc=2 --help is not served: run 'miniproxy spawn --help'\n"
    );
    c.send(b"spawn\t--name\t\xff\xfe\n");
    assert_eq!(c.reply(), "error rc=2 the request is not UTF-8\n");
    // A failed operation: rc=1 with the CLI's message.
    assert_eq!(
        c.ask(&warm_spawn("a", "10.0.0.9/24")),
        "error rc=1 name 'a' is in use: domain 1 exists\n"
    );
    assert_eq!(
        c.ask(&warm_spawn("b", "10.0.0.5/24")),
        "error rc=1 address 10.0.0.5 is in use by instance 'a'\n"
    );
    // That spawn watched the member it looked at; the connection it used
    // serves the next spawn with no watch left over (xenstored refuses one
    // it already has, and the spawn would go cold).
    let line = c.ask(&warm_spawn("w", "10.0.0.4/24"));
    assert!(line.ends_with(" how=warm\n"), "{line}{}", d.stderr());
    assert_eq!(
        c.ask(&["stop", "a", "b"]),
        "error rc=2 the daemon stops one NAME per request\n"
    );

    // The pool emptied: cold, through xl create.
    let o = r.run(&["pool", "drain"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let line = c.ask(&warm_spawn("b", "10.0.0.6/24"));
    assert!(
        line.starts_with("spawned name=b domid=") && line.ends_with(" how=cold\n"),
        "{line}{}",
        d.stderr()
    );
    assert!(r.xl_calls().contains(&format!(
        "xl create {}\n",
        r.dir.join("run/b.cfg").display()
    )));
    // --json: the CLI's object.
    let mut words = warm_spawn("j", "10.0.0.7/24");
    words.push("--json");
    let line = c.ask(&words);
    assert!(
        line.starts_with(r#"{"result":"spawned","name":"j","domid":"#)
            && line.ends_with(",\"how\":\"cold\"}\n"),
        "{line}"
    );
    // The CLI alongside: it sees the daemon's instances.
    let o = r.run(&spawn_args("b", "10.0.0.8/24", &[]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("name 'b' is in use: domain"),
        "{}",
        err(&o)
    );

    // stop NAME.
    let line = c.ask(&["stop", "a"]);
    assert!(
        line.starts_with("stopped name=a domid=1 ms=") && line.ends_with(" how=shutdown\n"),
        "{line}"
    );
    assert!(!r.dir.join("run/a.cfg").exists());
    assert_eq!(c.ask(&["stop", "a"]), "error rc=1 no instance named 'a'\n");
    let names: Vec<String> = out(&r.run(&["list"]))
        .lines()
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["name=b", "name=j", "name=w"]);

    // SIGTERM: exit 0, the socket file gone.
    d.signal("-TERM");
    let status = d.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!d.socket.exists());
}

#[test]
fn parallel_clients_slow_and_broken_ones() {
    let r = Rig::new("serve-par");
    let o = r.run(&["pool", "fill", "2", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let d = Daemon::start(&r);

    // One that leaves mid-line, one that sends half a line and waits.
    let mut gone = d.connect();
    gone.send(b"spawn\t--name\tgone\t--mode");
    drop(gone);
    let mut slow = d.connect();
    slow.send(b"stop\tno");

    // Two spawns at once, each on its own connection: both warm, each
    // its own member.
    let lines: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| d.connect().ask(&warm_spawn("x", "10.0.0.11/24")));
        let b = s.spawn(|| d.connect().ask(&warm_spawn("y", "10.0.0.12/24")));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let mut ids = Vec::new();
    for (line, name) in lines.iter().zip(["x", "y"]) {
        assert!(
            line.starts_with(&format!("spawned name={name} domid="))
                && line.ends_with(" how=warm\n"),
            "{line}{}",
            d.stderr()
        );
        ids.push(line.split(' ').nth(2).unwrap().to_string());
    }
    ids.sort();
    assert_eq!(ids, ["domid=1", "domid=2"]);
    assert!(!r.dir.join("run/gone.cfg").exists());

    // The slow client's request, finished now, is answered.
    slow.send(b"body\n");
    assert_eq!(slow.reply(), "error rc=1 no instance named 'nobody'\n");

    // A line over 8 KiB: rc=2 and the connection closes.
    let mut big = d.connect();
    big.send(&vec![b'a'; 9000]);
    assert_eq!(big.reply(), "error rc=2 a request is at most 8192 bytes\n");
    let mut rest = Vec::new();
    big.reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // The daemon still serves: the refill brought the pool back to 2.
    status_becomes(&r, "pool target=2 memory=4 waiting=2 starting=0 crashed=0");
    let line = d.connect().ask(&warm_spawn("z", "10.0.0.13/24"));
    assert!(line.ends_with(" how=warm\n"), "{line}");
}

#[test]
fn a_live_socket_is_refused_a_stale_one_replaced() {
    let r = Rig::new("serve-sock");
    let d = Daemon::start(&r);
    let o = r.run(&["serve"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        format!(
            "miniproxy serve: another daemon serves {}\n",
            d.socket.display()
        )
    );
    // Killed without a chance to clean up: its socket file stays.
    let socket = d.socket.clone();
    drop(d);
    assert!(socket.exists());
    let d = Daemon::start(&r);
    assert_eq!(
        d.connect().ask(&["stop", "nobody"]),
        "error rc=1 no instance named 'nobody'\n"
    );
    // A file that is not a socket is left alone.
    let other = r.dir.join("run/not-a-socket");
    std::fs::write(&other, "x").unwrap();
    let o = r.run(&["serve", "--socket", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("exists and is not a socket"),
        "{}",
        err(&o)
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "x");
    let o = r.run(&["serve", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        out(&r.run(&["serve", "--help"])).starts_with("Usage: miniproxy serve [--socket PATH]\n")
    );
}

#[test]
fn sigterm_waits_for_the_spawn_at_work_and_refuses_new_requests() {
    let r = Rig::new("serve-term");
    let mut d = Daemon::start(&r);
    let mut other = d.connect();
    let mut c = d.connect();
    c.send(format!("{}\n", spawn_args("c", "10.0.0.5/24", &[]).join("\t")).as_bytes());
    // Its config in place: the spawn is at work (cold: no pool).
    let t0 = Instant::now();
    while !r.dir.join("run/c.cfg").exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", d.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    d.signal("-TERM");
    while d.socket.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        other.ask(&["stop", "c"]),
        "error rc=1 the daemon is stopping (SIGTERM)\n"
    );
    let line = c.reply();
    assert!(
        line.starts_with("spawned name=c domid=1 ") && line.ends_with(" how=cold\n"),
        "{line}{}",
        d.stderr()
    );
    assert_eq!(d.child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_member_that_refuses_its_configuration_is_an_rc1_reply() {
    let r = Rig::new("serve-fatal");
    let o = r.run(&["pool", "fill", "1", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let d = Daemon::start(&r);
    // The fake guest prints a fatal line instead of getting ready.
    std::fs::write(r.dir.join("xs/.pool-fatal"), "").unwrap();
    let mut c = d.connect();
    let mut words = warm_spawn("a", "10.0.0.5/24");
    words.extend(["--timeout", "30"]);
    assert_eq!(
        c.ask(&words),
        "error rc=1 a (pool member mp-pool-1, domain 1): the guest stopped with a fatal error; destroyed it\n"
    );
    // Its console went to the daemon's stderr, as the CLI prints it.
    let e = d.stderr();
    assert!(
        e.contains("miniproxy spawn: a (pool member mp-pool-1, domain 1): the guest stopped with a fatal error; destroying it. Its console:")
            && e.contains("  | miniproxy: fatal: pool: miniproxy/config: refused"),
        "{e}"
    );
    assert!(r.xl_calls().contains("xl destroy 1\n"), "{}", r.xl_calls());
    assert!(!r.dir.join("run/a.cfg").exists());
    // The connection still serves.
    std::fs::remove_file(r.dir.join("xs/.pool-fatal")).unwrap();
    status_becomes(&r, "pool target=1 memory=4 waiting=1 starting=0 crashed=0");
    let line = c.ask(&warm_spawn("a", "10.0.0.5/24"));
    assert!(line.ends_with(" how=warm\n"), "{line}{}", d.stderr());
}

#[test]
fn ask_sends_one_request_and_exits_with_the_replys_status() {
    let r = Rig::new("serve-ask");
    let o = r.run(&["pool", "fill", "1", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let d = Daemon::start(&r);
    let ask = |words: &[&str]| {
        let mut a = vec!["ask"];
        a.extend_from_slice(words);
        r.run(&a)
    };

    // A warm spawn, its --extra value's space kept within one word.
    let mut words = vec!["--timing"];
    words.extend(warm_spawn("a", "10.0.0.5/24"));
    words.extend(["--extra", "idle_exit=10m max_conns=32"]);
    let o = ask(&words);
    assert_eq!(o.status.code(), Some(0), "{}{}", err(&o), d.stderr());
    let line = out(&o);
    assert!(
        line.starts_with("spawned name=a domid=1 ") && line.contains(" how=warm ask_us="),
        "{line}"
    );
    let us: u64 = line
        .trim_end()
        .rsplit("ask_us=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(us > 0, "{line}");
    let key = std::fs::read_to_string(r.dir.join("xs/local/domain/1/miniproxy/config")).unwrap();
    assert!(
        key.contains(" idle_exit=10m") && key.contains(" max_conns=32"),
        "{key}"
    );

    // The reply's status is the exit status; the line is printed as is.
    let o = ask(&["spawn", "--name", "b", "--mode", "sideways"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        out(&o).starts_with("error rc=2 bad mode 'sideways'"),
        "{}",
        out(&o)
    );
    let o = ask(&["stop", "nobody"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(out(&o), "error rc=1 no instance named 'nobody'\n");
    let o = ask(&["stop", "a"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).starts_with("stopped name=a domid=1 "),
        "{}",
        out(&o)
    );

    // Bad invocations: 2, nothing sent.
    for bad in [
        &[][..],
        &["--timing"][..],
        &["--bogus", "stop"][..],
        &["stop", "a\tb"][..],
    ] {
        let o = ask(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", err(&o));
        assert!(out(&o).is_empty());
    }
    assert!(out(&ask(&["--help"]))
        .starts_with("Usage: miniproxy ask [--socket PATH] [--timing] WORD...\n"));
    // "--" ends the options: a request word may start with a dash.
    let o = ask(&["--", "--timing"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        out(&o).starts_with("error rc=2 '--timing' is not served"),
        "{}",
        out(&o)
    );

    // No daemon there: 1, with a message.
    let gone = r.dir.join("run/nobody.sock");
    let o = ask(&["--socket", gone.to_str().unwrap(), "stop", "a"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("cannot reach the resident spawner at"),
        "{}",
        err(&o)
    );
    drop(d);
}

/// The daemon keeps the template it read while the file is unchanged
/// (crate::filecache): an edit between two spawns shows in the second's
/// config.
#[test]
fn a_template_changed_while_the_daemon_runs_is_used() {
    let r = Rig::new("serve-tpl");
    let tpl = r.dir.join("template.cfg");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xl-configs/template.cfg");
    let text = std::fs::read_to_string(repo).unwrap();
    std::fs::write(&tpl, format!("{text}# edition one\n")).unwrap();
    let d = Daemon::start_with(&r, &[("MINIPROXY_TEMPLATE", &tpl)]);
    let mut c = d.connect();
    let line = c.ask(&spawn_args("a", "10.0.0.5/24", &[]));
    assert!(line.starts_with("spawned name=a "), "{line}{}", d.stderr());
    let cfg = |n: &str| std::fs::read_to_string(r.dir.join(format!("run/{n}.cfg"))).unwrap();
    assert!(cfg("a").contains("# edition one\n"));
    // The same length, rewritten in place.
    std::fs::write(&tpl, format!("{text}# edition two\n")).unwrap();
    let line = c.ask(&spawn_args("b", "10.0.0.6/24", &[]));
    assert!(line.starts_with("spawned name=b "), "{line}{}", d.stderr());
    assert!(cfg("b").contains("# edition two\n"), "{}", cfg("b"));
    // Gone: the spawn fails, as the CLI's would.
    std::fs::remove_file(&tpl).unwrap();
    let line = c.ask(&spawn_args("c", "10.0.0.7/24", &[]));
    assert!(line.starts_with("error rc=1 "), "{line}");
}

/// The daemon's warm spawn, counted by the rig's xenstored: with the
/// hand-over it prepared while idle (crate::warm::prepared), two round
/// trips on its connection from request to reply: the ready watch, the
/// writes and the commit of the prepared transaction, then the look after
/// the watch fired. The next preparation starts only after the reply: a
/// transaction's start held back by the rig does not hold the reply.
#[test]
fn a_prepared_warm_spawn_of_the_daemon_costs_two_round_trips() {
    const START: &str = "6";
    let r = Rig::new("serve-rounds");
    let o = r.run(&["pool", "fill", "2", "--memory", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let d = Daemon::start_with(&r, &[("MINIPROXY_TRACE", Path::new("1"))]);
    let rounds = || std::fs::read_to_string(r.dir.join("xenstored.rounds")).unwrap_or_default();
    let starts = |l: &str| {
        l.split(' ')
            .nth(1)
            .is_some_and(|t| t.split(',').any(|t| t == START))
    };
    let mut c = d.connect();
    for (n, (name, ip)) in [("a", "10.0.0.5/24"), ("b", "10.0.0.6/24")]
        .into_iter()
        .enumerate()
    {
        d.settled(n);
        let before = rounds().lines().count();
        let hold = r.dir.join("xenstored.hold");
        std::fs::write(&hold, "").unwrap();
        let line = c.ask(&warm_spawn(name, ip));
        let at_reply: Vec<String> = rounds().lines().skip(before).map(String::from).collect();
        std::fs::remove_file(&hold).unwrap();
        assert!(line.ends_with(" how=warm\n"), "{line}{}", d.stderr());
        assert!(d.stderr().contains("prepared hand-over committed"));
        // The spawn's connection: the one that committed.
        let conn = at_reply
            .iter()
            .find(|l| l.ends_with(" 4,11,14,11,11,7"))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("{at_reply:?}"));
        let spawn: Vec<&str> = at_reply
            .iter()
            .filter(|l| l.split(' ').next() == Some(conn))
            .filter_map(|l| l.split(' ').nth(1))
            .collect();
        assert_eq!(
            spawn,
            ["4,11,14,11,11,7", "2,2,2"],
            "watch, writes, commit; ready, data/pool, data/ip"
        );
        // No preparation had started a transaction before the reply (one
        // would have waited, unlogged, for the hold to go); one does after.
        assert!(!at_reply.iter().any(|l| starts(l)), "{at_reply:?}");
        let t0 = Instant::now();
        while !rounds().lines().skip(before + at_reply.len()).any(starts) {
            assert!(t0.elapsed() < Duration::from_secs(20), "{}", d.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
