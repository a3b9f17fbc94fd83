//! How `metrics`, `pool` and `serve` read their command lines, pinned as
//! they are: each bad one's whole stderr (`miniproxy CMD: MESSAGE` and the
//! pointer to its --help) with exit status 2 and nothing done; --help
//! wherever the parsing reaches it prints what `miniproxy help CMD` prints;
//! the forms of the flags each takes (`--textfile=DIR` and `--socket=PATH`,
//! but not `--memory=MB`), and the values they swallow.

#[allow(dead_code)] // the rig's other helpers serve the other files
mod rig;

use rig::{err, out, Rig};

/// Command lines refused as bad usage, with the message each gets.
const BAD: &[(&[&str], &str)] = &[
    (&["metrics", "--textfile"], "--textfile needs a directory"),
    (&["metrics", "--json"], "unknown argument '--json'"),
    (&["metrics", "x"], "unknown argument 'x'"),
    (&["metrics", "-x"], "unknown argument '-x'"),
    (
        &["metrics", "--bogus", "--help"],
        "unknown argument '--bogus'",
    ),
    (
        &["metrics", "--textfile", "/tmp", "--bogus"],
        "unknown argument '--bogus'",
    ),
    (&["serve", "--socket"], "--socket needs a value"),
    (&["serve", "--socket", ""], "--socket needs a value"),
    (&["serve", "--socket="], "unknown argument '--socket='"),
    (&["serve", "x"], "unknown argument 'x'"),
    (&["serve", "--json"], "unknown argument '--json'"),
    (
        &["serve", "--bogus", "--help"],
        "unknown argument '--bogus'",
    ),
    (&["pool"], "which? fill N, status or drain"),
    (
        &["pool", "bogus"],
        "unknown pool command 'bogus' (fill, status, drain)",
    ),
    (
        &["pool", "bogus", "--json"],
        "unknown pool command 'bogus' (fill, status, drain)",
    ),
    (
        &["pool", "-x"],
        "unknown pool command '-x' (fill, status, drain)",
    ),
    (
        &["pool", "--json"],
        "unknown pool command '--json' (fill, status, drain)",
    ),
    (&["pool", "bogus", "3"], "unexpected argument '3'"),
    // The subcommand comes first.
    (
        &["pool", "--json", "status"],
        "unexpected argument 'status'",
    ),
    (&["pool", "fill"], "fill needs the pool's size N"),
    (&["pool", "fill", "--json"], "fill needs the pool's size N"),
    (
        &["pool", "fill", "x"],
        "bad pool size 'x': expected 0..1000",
    ),
    (
        &["pool", "fill", "+3"],
        "bad pool size '+3': expected 0..1000",
    ),
    (
        &["pool", "fill", "1001"],
        "bad pool size '1001': expected 0..1000",
    ),
    (&["pool", "fill", "3", "4"], "unexpected argument '4'"),
    (&["pool", "fill", "3", "--memory"], "--memory needs a value"),
    (
        &["pool", "fill", "3", "--memory", "3"],
        "memory 3 MB is below 4 MB, the smallest PV guest xl builds",
    ),
    (
        &["pool", "fill", "--memory", "--json"],
        "bad memory '--json': expected MB (e.g. 6)",
    ),
    (
        &["pool", "fill", "3", "--memory=6"],
        "unknown option '--memory=6'",
    ),
    (
        &["pool", "fill", "--bogus", "--help"],
        "unknown option '--bogus'",
    ),
    (
        &["pool", "status", "--memory", "6"],
        "unknown option '--memory'",
    ),
    (&["pool", "status", "--refill"], "unknown option '--refill'"),
    (&["pool", "status", "3"], "unexpected argument '3'"),
    (&["pool", "drain", "--refill"], "unknown option '--refill'"),
    (&["pool", "drain", "-"], "unknown option '-'"),
];

#[test]
fn bad_command_lines_exit_2_with_their_message_and_do_nothing() {
    let r = Rig::new("usage-bad");
    for (args, msg) in BAD {
        let o = r.run(args);
        let cmd = args[0];
        assert_eq!(
            (o.status.code(), out(&o), err(&o)),
            (
                Some(2),
                String::new(),
                format!("miniproxy {cmd}: {msg}\n(see 'miniproxy {cmd} --help')\n")
            ),
            "{args:?}"
        );
    }
    assert_eq!(r.xl_calls(), "", "xl ran for a bad command line");
    assert_eq!(std::fs::read_dir(r.dir.join("run")).unwrap().count(), 0);
}

#[test]
fn help_wherever_the_parsing_reaches_it_prints_the_usage() {
    let r = Rig::new("usage-help");
    let usage = |cmd: &str| {
        let o = r.run(&["help", cmd]);
        assert_eq!(o.status.code(), Some(0));
        out(&o)
    };
    let (metrics, pool, serve) = (usage("metrics"), usage("pool"), usage("serve"));
    assert!(metrics.starts_with("Usage: miniproxy metrics [--textfile DIR]\n"));
    assert!(pool.starts_with("Usage: miniproxy pool fill N [--memory MB] [--json]\n"));
    assert!(serve.starts_with("Usage: miniproxy serve [--socket PATH]\n"));
    let cases: &[(&[&str], &str)] = &[
        (&["metrics", "--help"], &metrics),
        (&["metrics", "-h"], &metrics),
        (&["metrics", "--textfile", "/nosuch", "--help"], &metrics),
        (&["metrics", "--help", "--bogus"], &metrics),
        (&["serve", "--help"], &serve),
        (&["serve", "-h"], &serve),
        (&["serve", "--socket", "/nosuch/s", "--help"], &serve),
        (&["serve", "--help", "--bogus"], &serve),
        (&["pool", "--help"], &pool),
        (&["pool", "-h"], &pool),
        (&["pool", "fill", "--help"], &pool),
        (&["pool", "fill", "3", "--memory", "4", "-h"], &pool),
        (&["pool", "status", "--json", "--help"], &pool),
        (&["pool", "drain", "--help", "--bogus"], &pool),
        // The options come before the subcommand's name is looked at.
        (&["pool", "bogus", "--help"], &pool),
    ];
    for (args, want) in cases {
        let o = r.run(args);
        assert_eq!(
            (o.status.code(), out(&o).as_str(), err(&o).as_str()),
            (Some(0), *want, ""),
            "{args:?}"
        );
    }
    assert_eq!(r.xl_calls(), "", "xl ran for --help");
}

#[test]
fn each_flag_takes_its_value_in_the_forms_it_always_took() {
    let r = Rig::new("usage-forms");
    let dir = r.dir.join("prom");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    for args in [
        vec!["metrics", "--textfile", d],
        vec!["metrics", &format!("--textfile={d}")],
    ] {
        let _ = std::fs::remove_file(dir.join("miniproxy.prom"));
        let o = r.run(&args);
        assert_eq!(
            (o.status.code(), out(&o)),
            (Some(0), String::new()),
            "{args:?}: {}",
            err(&o)
        );
        assert!(dir.join("miniproxy.prom").exists(), "{args:?}");
    }
    // Whatever follows --textfile is its directory, an option too, and
    // `--textfile=` names the empty one: not directories (exit 1).
    for (args, msg) in [
        (
            &["metrics", "--textfile", "--help"][..],
            "--textfile --help: not a directory",
        ),
        (&["metrics", "--textfile="], "--textfile : not a directory"),
    ] {
        let o = r.run(args);
        assert_eq!(
            (o.status.code(), err(&o)),
            (Some(1), format!("miniproxy metrics: {msg}\n")),
            "{args:?}"
        );
    }
    // Either form names serve's socket: a file that is not one is refused
    // there (exit 1), so no daemon starts.
    let file = r.dir.join("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    let f = file.to_str().unwrap();
    for args in [
        vec!["serve", "--socket", f],
        vec!["serve", &format!("--socket={f}")],
    ] {
        let o = r.run(&args);
        assert_eq!(
            (o.status.code(), err(&o)),
            (
                Some(1),
                format!("miniproxy serve: {f} exists and is not a socket\n")
            ),
            "{args:?}"
        );
    }
    // pool: --json after the subcommand, --memory MB and --refill with
    // fill only.
    let o = r.run(&["pool", "status", "--json"]);
    assert_eq!(
        (o.status.code(), out(&o)),
        (
            Some(0),
            "{\"result\":\"pool\",\"target\":0,\"memory\":6,\"waiting\":0,\"starting\":0,\"crashed\":0}\n".into()
        ),
        "{}",
        err(&o)
    );
    for (args, starts) in [
        (
            &["pool", "fill", "--json", "--memory", "4", "0"][..],
            "{\"result\":",
        ),
        (
            &["pool", "status"],
            "pool target=0 memory=4 waiting=0 starting=0 crashed=0\n",
        ),
        (&["pool", "drain", "--json"], "{\"result\":\"drained\""),
    ] {
        let o = r.run(args);
        assert!(
            o.status.success() && out(&o).starts_with(starts),
            "{args:?}: {}{}",
            out(&o),
            err(&o)
        );
    }
}
