//! The operator tool end to end on the host, with fake `xl` and
//! `xenstore-*` (tests/fakexen/) first on PATH: argument and config
//! checks before any xl call, the spawn/list/stop flow, locking between
//! processes, retries and timeouts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Rig {
    dir: PathBuf,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("miniproxy-op-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["xs/local/domain/0", "run", "console"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("xs/local/domain/0/name"), "Domain-0").unwrap();
        std::fs::write(dir.join("kernel"), "ELF").unwrap();
        std::fs::write(dir.join("log"), "").unwrap();
        Rig { dir }
    }

    fn cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakexen");
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xl-configs/template.cfg");
        let template_xml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xl-configs/template.xml");
        let mut c = Command::new(env!("CARGO_BIN_EXE_miniproxy-operator"));
        c.args(args)
            .env(
                "PATH",
                format!("{}:{}", fake.display(), std::env::var("PATH").unwrap()),
            )
            .env("FAKE_XS", self.dir.join("xs"))
            .env("FAKE_LOG", self.dir.join("log"))
            // No xenstored to talk to (never a real one): these tests
            // drive the fake xenstore-* processes, the tool's fallback.
            .env("XENSTORED_PATH", self.dir.join("no-xenstored.sock"))
            .env("MINIPROXY_RUN_DIR", self.dir.join("run"))
            .env("MINIPROXY_CONSOLE_DIR", self.dir.join("console"))
            .env("MINIPROXY_KERNEL", self.dir.join("kernel"))
            .env("MINIPROXY_TEMPLATE", template)
            .env("MINIPROXY_TEMPLATE_XML", template_xml)
            .env_remove("MINIPROXY_VIA")
            .env_remove("MINIPROXY_LIBVIRT_URI")
            .env("MINIPROXY_VIF_SCRIPT", "vif-bridge")
            .env_remove("MINIPROXY_PARALLEL")
            .env_remove("MINIPROXY_TRACE");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.cmd(args, env).output().unwrap()
    }

    fn xl_calls(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SPAWN: [&str; 11] = [
    "spawn",
    "--name",
    "a",
    "--mode",
    "reverse",
    "--listen",
    "80",
    "--upstream",
    "10.0.0.1:8080",
    "--ip",
    "10.0.0.5/24",
];

fn spawn_args<'a>(name: &'a str, ip: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = SPAWN.to_vec();
    v[2] = name;
    v[10] = ip;
    v.extend_from_slice(more);
    v
}

#[test]
fn bad_configs_are_refused_before_xl_runs() {
    let r = Rig::new("bad");
    // A line the guest's parser takes (see args::tests) but Xen would cut.
    let rules: Vec<String> = (0..15)
        .map(|i| format!("rule=reverse:{:019}:10.0.0.1:{:019}", 1000 + i, 8080))
        .collect();
    let long = format!(
        "rx_bufs={:019} max_conns={:019} {}",
        64,
        64,
        rules.join(" ")
    );
    for (extra, says) in [
        ("buf=16q", "bad value for key 'buf': '16q'"),
        ("bfu=16k", "unknown key 'bfu'"),
        ("idle_exit=10m idle_exit=5m", "duplicate key 'idle_exit'"),
        ("buf=4k buf_min=8k", "buf_min"),
        ("ip=10.0.0.9/24", "put ip= in --ip"),
        (long.as_str(), "the guest takes at most 1022"),
    ] {
        let o = r.run(&spawn_args("a", "10.0.0.5/24", &["--extra", extra]), &[]);
        assert_eq!(o.status.code(), Some(2), "{extra}: {}", err(&o));
        assert!(err(&o).contains(says), "{extra}: {}", err(&o));
    }
    let o = r.run(&spawn_args("a", "10.0.0.5/24", &["--extra", &long]), &[]);
    assert!(err(&o).contains("line is 1032 bytes"), "{}", err(&o));
    for (args, says) in [
        (spawn_args("a", "10.0.0.0/24", &[]), "network or broadcast"),
        (spawn_args("-a", "10.0.0.5/24", &[]), "bad name"),
        (
            spawn_args("a", "10.0.0.5/24", &["--gw", "10.0.1.1"]),
            "not in 10.0.0.5/24's subnet",
        ),
        (
            spawn_args("a", "10.0.0.5/24", &["--memory", "3"]),
            "below 4 MB",
        ),
        (
            spawn_args("a", "10.0.0.5/24", &["--bogus"]),
            "unknown argument '--bogus'",
        ),
        (
            spawn_args("a", "10.0.0.5/24", &["--timeout", "0"]),
            "bad timeout",
        ),
    ] {
        let o = r.run(&args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        assert!(err(&o).contains(says), "{args:?}: {}", err(&o));
        assert!(err(&o).contains("(see 'miniproxy spawn --help')"));
    }
    assert_eq!(r.xl_calls(), "", "xl ran for a refused spawn");
    assert_eq!(std::fs::read_dir(r.dir.join("run")).unwrap().count(), 0);
}

#[test]
fn usage_and_exit_codes() {
    let r = Rig::new("usage");
    let o = r.run(&[], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).starts_with("Usage: miniproxy COMMAND"));
    for c in ["spawn", "list", "stop"] {
        let o = r.run(&[c, "--help"], &[]);
        assert_eq!(o.status.code(), Some(0));
        assert!(
            out(&o).starts_with(&format!("Usage: miniproxy {c}")),
            "{}",
            out(&o)
        );
    }
    let o = r.run(&["frobnicate"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("unknown command 'frobnicate'"));
    let o = r.run(&["stop"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = r.run(&["stop", "nosuch"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("no instance named 'nosuch'"),
        "{}",
        err(&o)
    );
}

#[test]
fn spawn_list_stop_flow() {
    let r = Rig::new("flow");
    let o = r.run(
        &spawn_args(
            "a",
            "10.0.0.5/24",
            &["--memory", "4", "--extra", "idle_exit=10m"],
        ),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let line = out(&o);
    let re_ok = line.starts_with("spawned name=a domid=1 ready_ms=")
        && line.contains(" ip=10.0.0.5/24 mac=00:16:3e:")
        && line.contains(" memory=4 mode=reverse wait_ms=")
        && line.trim_end().ends_with(" guest_us=4321 how=cold");
    assert!(re_ok, "{line}");
    let cfg = std::fs::read_to_string(r.dir.join("run/a.cfg")).unwrap();
    assert!(cfg.contains(
        "extra   = \"ip=10.0.0.5/24 rule=reverse:80:10.0.0.1:8080 rx_bufs=32 max_conns=64 idle_exit=10m\""
    ), "{cfg}");
    assert!(
        cfg.contains("memory  = 4\n") && cfg.contains("name    = \"a\"\n"),
        "{cfg}"
    );
    assert!(cfg.contains(&format!("kernel  = \"{}\"", r.dir.join("kernel").display())));
    assert!(cfg.lines().nth(1).unwrap().starts_with("# miniproxy: name=a mode=reverse listen=80 upstream=10.0.0.1:8080 ip=10.0.0.5/24 gw=- memory=4 profile=small mac=00:16:3e:"));
    assert!(
        !cfg.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains('@')),
        "{cfg}"
    );

    // The same address again: refused, and nothing created.
    let o = r.run(&spawn_args("b", "10.0.0.5/24", &[]), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("address 10.0.0.5 is in use by instance 'a'"),
        "{}",
        err(&o)
    );
    let o = r.run(&spawn_args("b", "10.0.0.6/24", &["--json"]), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with(r#"{"result":"spawned","name":"b","domid":2,"ready_ms":"#),
        "{}",
        out(&o)
    );

    let o = r.run(&["list"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        out(&o),
        "name=a domid=1 state=running ip=10.0.0.5/24 mode=reverse memory=4 stats: px_accepted=1 px_active=0 px_completed=1 nf_rx_frames=5 cpu_busy_ms=2 xen_notifies=3\n\
         name=b domid=2 state=running ip=10.0.0.6/24 mode=reverse memory=6 stats: px_accepted=1 px_active=0 px_completed=1 nf_rx_frames=5 cpu_busy_ms=2 xen_notifies=3\n"
    );
    // A guest that began its drain (xl shutdown) says so: listed draining.
    std::fs::write(r.dir.join("xs/local/domain/1/data/draining"), "10000").unwrap();
    let o = r.run(&["list", "a"], &[]);
    assert!(
        out(&o).starts_with("name=a domid=1 state=draining ip=10.0.0.5/24"),
        "{}",
        out(&o)
    );
    std::fs::remove_file(r.dir.join("xs/local/domain/1/data/draining")).unwrap();
    // A guest writing something that is not the stats format: flagged.
    std::fs::write(
        r.dir.join("xs/local/domain/2/data/stats"),
        "accepted=1 resets=0 (client=0)",
    )
    .unwrap();
    let o = r.run(&["list", "--json", "b", "a"], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        out(&o),
        "{\"name\":\"b\",\"domid\":2,\"state\":\"running\",\"ip\":\"10.0.0.6/24\",\"mode\":\"reverse\",\"memory\":6,\"stats\":null}\n\
         {\"name\":\"a\",\"domid\":1,\"state\":\"running\",\"ip\":\"10.0.0.5/24\",\"mode\":\"reverse\",\"memory\":4,\"stats\":{\"px_accepted\":1,\"px_active\":0,\"px_completed\":1,\"nf_rx_frames\":5,\"cpu_busy_ms\":2,\"xen_notifies\":3}}\n"
    );
    assert!(
        err(&o).contains("b: data/stats does not parse"),
        "{}",
        err(&o)
    );
    let o = r.run(&["list", "a", "zz"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("no instance named 'zz'"));

    // Stop: a acknowledges, b ignores the request and is destroyed.
    let o = r.run(&["stop", "a"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with("stopped name=a domid=1 ms=") && out(&o).ends_with(" how=shutdown\n"),
        "{}",
        out(&o)
    );
    let o = r.run(
        &["stop", "--all", "--json", "--timeout", "0.5"],
        &[("FAKE_SHUTDOWN", "ignore")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with(r#"{"result":"stopped","name":"b","domid":2,"ms":"#)
            && out(&o).ends_with("\"how\":\"destroy\"}\n"),
        "{}",
        out(&o)
    );
    assert!(r.xl_calls().contains("xl destroy 2"));
    assert!(!r.dir.join("run/a.cfg").exists() && !r.dir.join("run/b.cfg").exists());
    let o = r.run(&["list"], &[]);
    assert_eq!((o.status.code(), out(&o)), (Some(0), String::new()));
}

#[test]
fn instances_spawned_via_libvirt_are_listed_and_stopped_through_virsh() {
    let r = Rig::new("libvirt");
    let o = r.run(
        &spawn_args(
            "a",
            "10.0.0.5/24",
            &["--via", "libvirt", "--extra", "idle_exit=10m"],
        ),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let line = out(&o);
    assert!(
        line.starts_with("spawned name=a domid=1 ready_ms=")
            && line.contains(" ip=10.0.0.5/24 mac=00:16:3e:")
            && line.trim_end().ends_with(" guest_us=4321 how=cold"),
        "{line}"
    );
    let run = r.dir.join("run");
    let xml = std::fs::read_to_string(run.join("a.xml")).unwrap();
    assert!(xml.lines().nth(1).unwrap().starts_with(
        "<?miniproxy name=a mode=reverse listen=80 upstream=10.0.0.1:8080 ip=10.0.0.5/24 gw=- memory=6 profile=default mac=00:16:3e:"
    ), "{xml}");
    assert!(xml.contains(
        "<cmdline>ip=10.0.0.5/24 rule=reverse:80:10.0.0.1:8080 rx_bufs=64 max_conns=64 idle_exit=10m</cmdline>"
    ), "{xml}");
    assert!(xml.contains(&format!(
        "<kernel>{}</kernel>",
        r.dir.join("kernel").display()
    )));
    assert!(!run.join("a.cfg").exists());
    let log = std::fs::read_to_string(run.join("a.virsh.log")).unwrap();
    assert!(log.contains("Domain 'a' created from"), "{log}");
    let calls = r.xl_calls();
    assert!(
        calls.contains(&format!(
            "virsh -c xen:///system create {}\n",
            run.join("a.xml").display()
        )),
        "{calls}"
    );
    assert!(!calls.contains("xl create"), "{calls}");

    // One by xl, one by MINIPROXY_VIA; addresses are checked across both kinds.
    let o = r.run(&spawn_args("b", "10.0.0.6/24", &[]), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(run.join("b.cfg").exists() && !run.join("b.xml").exists());
    let o = r.run(
        &spawn_args("c", "10.0.0.7/24", &["--json"]),
        &[("MINIPROXY_VIA", "libvirt")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with(r#"{"result":"spawned","name":"c","domid":3,"ready_ms":"#),
        "{}",
        out(&o)
    );
    assert!(run.join("c.xml").exists());
    let o = r.run(
        &spawn_args("d", "10.0.0.5/24", &[]),
        &[("MINIPROXY_VIA", "libvirt")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("address 10.0.0.5 is in use by instance 'a'"),
        "{}",
        err(&o)
    );
    let o = r.run(
        &spawn_args("d", "10.0.0.8/24", &[]),
        &[("MINIPROXY_VIA", "lbivirt")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("MINIPROXY_VIA must be xl or libvirt, not 'lbivirt'"),
        "{}",
        err(&o)
    );

    let o = r.run(&["list"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let listed = out(&o);
    let names: Vec<&str> = listed
        .lines()
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>())
        .map(|f| if f[2] == "state=running" { f[0] } else { "?" })
        .collect();
    assert_eq!(names, ["name=a", "name=b", "name=c"], "{}", out(&o));

    // Stop: a by virsh shutdown; then b (xl) and c (libvirt) ignore the
    // request and are destroyed, each by its own tool.
    let o = r.run(&["stop", "a"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with("stopped name=a domid=1 ms=") && out(&o).ends_with(" how=shutdown\n"),
        "{}",
        out(&o)
    );
    let o = r.run(
        &["stop", "--all", "--timeout", "0.5"],
        &[("FAKE_SHUTDOWN", "ignore")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        out(&o)
            .lines()
            .filter(|l| l.ends_with(" how=destroy"))
            .count(),
        2,
        "{}",
        out(&o)
    );
    let calls = r.xl_calls();
    for want in [
        "virsh -c xen:///system shutdown a\n",
        "virsh -c xen:///system shutdown c\n",
        "virsh -c xen:///system destroy c\n",
        "xenstore-write /local/domain/2/control/shutdown poweroff\n",
        "xl destroy 2\n",
    ] {
        assert!(calls.contains(want), "{want}: {calls}");
    }
    for never in [
        "xenstore-write /local/domain/1/",
        "xenstore-write /local/domain/3/",
        "xl destroy 3",
        "virsh -c xen:///system shutdown b",
    ] {
        assert!(!calls.contains(never), "{never}: {calls}");
    }
    assert_eq!(
        std::fs::read_dir(&run)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n.ends_with(".xml") || n.ends_with(".cfg") || n.ends_with(".log")
            })
            .count(),
        0
    );
}

#[test]
fn a_libvirt_spawn_that_fails_or_never_gets_ready_is_cleared_through_virsh() {
    let r = Rig::new("libvirt-fail");
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &["--via", "libvirt", "--timeout", "1"]),
        &[("FAKE_GUEST", "silent")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("a (domain 1): not ready after 1 s; destroying it"),
        "{}",
        err(&o)
    );
    assert!(r.xl_calls().contains("virsh -c xen:///system destroy a\n"));
    assert!(!r.dir.join("xs/local/domain/1").exists());
    assert!(!r.dir.join("run/a.xml").exists());
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &["--via", "libvirt"]),
        &[("FAKE_CREATE_EXIT", "3")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        r.xl_calls()
            .matches("virsh -c xen:///system create")
            .count(),
        3
    );
    assert!(
        err(&o).contains("virsh create failed (attempt 2, rc 3)"),
        "{}",
        err(&o)
    );
    assert!(!r.xl_calls().contains("xl create"));

    // A libvirtd that never answers: virsh create is killed at --timeout,
    // not retried, and the spawn fails promptly.
    let t0 = Instant::now();
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &["--via", "libvirt", "--timeout", "1"]),
        &[("FAKE_VIRSH_HANG", "1")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        err(&o).contains("virsh create did not return within")
            && err(&o).contains("virsh create failed (attempt 1, rc none)"),
        "{}",
        err(&o)
    );
    assert_eq!(
        r.xl_calls()
            .matches("virsh -c xen:///system create")
            .count(),
        4
    );

    // One virsh create at a time: another holding .virsh.lock past
    // --timeout ends this spawn without running virsh.
    let mut holder = hold_lock(&r.dir.join("run/.virsh.lock"), "60");
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &["--via", "libvirt", "--timeout", "1"]),
        &[],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("another virsh create held .virsh.lock until --timeout"),
        "{}",
        err(&o)
    );
    assert_eq!(
        r.xl_calls()
            .matches("virsh -c xen:///system create")
            .count(),
        4
    );
}

#[test]
fn a_guest_that_never_gets_ready_is_destroyed_after_the_timeout() {
    let r = Rig::new("timeout");
    std::fs::write(
        r.dir.join("console/guest-a.log"),
        "an earlier instance's console\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &["--timeout", "1"]),
        &[("FAKE_GUEST", "silent")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(t0.elapsed() >= Duration::from_secs(1) && t0.elapsed() < Duration::from_secs(15));
    assert!(
        err(&o).contains("a (domain 1): not ready after 1 s; destroying it"),
        "{}",
        err(&o)
    );
    // Its console since this spawn (the fake guest writes one line).
    assert!(err(&o).contains("  | miniproxy: booting a"), "{}", err(&o));
    assert!(!err(&o).contains("earlier"), "{}", err(&o));
    assert!(r.xl_calls().contains("xl destroy a"));
    assert!(!r.dir.join("xs/local/domain/1").exists());
    assert!(!r.dir.join("run/a.cfg").exists());
}

#[test]
fn xl_abort_134_after_creating_counts_as_created() {
    let r = Rig::new("rc134");
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &[]),
        &[("FAKE_CREATE_EXIT", "134")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).starts_with("spawned name=a domid=1 "));
    assert_eq!(r.xl_calls().matches("xl create").count(), 1);
}

#[test]
fn a_failing_xenstore_listing_falls_back_to_xl() {
    let r = Rig::new("xsfail");
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &[]),
        &[("FAKE_XSLIST", "fail")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).starts_with("spawned name=a domid=1 "));
    let calls = r.xl_calls();
    assert!(
        calls.contains("xenstore-list /local/domain") && calls.contains("xl domid a"),
        "{calls}"
    );
    // The name is taken now; xl says so even with xenstore failing.
    let o = r.run(
        &spawn_args("a", "10.0.0.6/24", &[]),
        &[("FAKE_XSLIST", "fail")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("name 'a' is in use: domain 1 exists"),
        "{}",
        err(&o)
    );
}

#[test]
fn a_failed_create_is_retried_once_then_reported() {
    let r = Rig::new("fail");
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &[]),
        &[("FAKE_CREATE_EXIT", "3")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        r.xl_calls().matches("xl create").count(),
        2,
        "{}",
        r.xl_calls()
    );
    assert!(
        err(&o).contains("xl create failed (attempt 2, rc 3)"),
        "{}",
        err(&o)
    );
    assert!(!r.dir.join("run/a.cfg").exists());
}

/// Another process holds `path`'s flock for `secs` (tests that kill it
/// themselves give it 60 s, so that a loaded machine cannot end it early).
#[allow(clippy::zombie_processes)] // the caller waits; a panic ends the test anyway
fn hold_lock(path: &Path, secs: &str) -> std::process::Child {
    let c = Command::new("flock")
        .args(["-o", path.to_str().unwrap(), "sleep", secs])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The holder has it once flock -n fails.
    for _ in 0..100 {
        let busy = !Command::new("flock")
            .args(["-n", path.to_str().unwrap(), "true"])
            .status()
            .unwrap()
            .success();
        if busy {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("flock holder did not start");
}

#[test]
fn a_name_being_spawned_elsewhere_is_refused_and_listed_as_starting() {
    let r = Rig::new("namelock");
    let o = r.run(&spawn_args("a", "10.0.0.5/24", &[]), &[]);
    assert_eq!(o.status.code(), Some(0));
    // Another process spawning "c" holds c.lock and has written its record.
    std::fs::write(
        r.dir.join("run/c.cfg"),
        "# x\n# miniproxy: name=c mode=transparent ip=10.0.0.7/24 memory=6\n",
    )
    .unwrap();
    let mut holder = hold_lock(&r.dir.join("run/c.lock"), "60");
    let o = r.run(&spawn_args("c", "10.0.0.8/24", &[]), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("name 'c' is in use: another spawn of it is running"),
        "{}",
        err(&o)
    );
    let o = r.run(&spawn_args("d", "10.0.0.7/24", &[]), &[]);
    assert!(
        err(&o).contains("address 10.0.0.7 is in use by instance 'c'"),
        "{}",
        err(&o)
    );
    let o = r.run(&["list"], &[]);
    assert!(
        out(&o).contains(
            "name=c domid=- state=starting ip=10.0.0.7/24 mode=transparent memory=6 stats: none\n"
        ),
        "{}",
        out(&o)
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    // Its spawn gone without a domain: the record is dropped.
    let o = r.run(&["list"], &[]);
    assert!(!out(&o).contains("name=c"), "{}", out(&o));
    assert!(!r.dir.join("run/c.cfg").exists());
}

#[test]
fn queued_time_does_not_count_against_the_timeout() {
    let r = Rig::new("queue");
    // One create slot, held by another process for 2 s; --timeout 1.
    let mut holder = hold_lock(&r.dir.join("run/.slot.0"), "3");
    let o = r.run(
        &spawn_args("a", "10.0.0.5/24", &["--timeout", "1"]),
        &[("MINIPROXY_PARALLEL", "1")],
    );
    holder.wait().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let wait_ms: u64 = out(&o)
        .split(" wait_ms=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Queued longer than --timeout, and still spawned.
    assert!(wait_ms > 1000, "{}", out(&o));
    // And the queue's own bound holds.
    let mut holder = hold_lock(&r.dir.join("run/.slot.0"), "60");
    let o = r.run(
        &spawn_args("b", "10.0.0.6/24", &[]),
        &[
            ("MINIPROXY_PARALLEL", "1"),
            ("MINIPROXY_QUEUE_TIMEOUT", "0.5"),
        ],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("no free create slot within 0.5 s"),
        "{}",
        err(&o)
    );
    assert!(!r.dir.join("run/b.cfg").exists());
    let o = r.run(&["list"], &[("MINIPROXY_PARALLEL", "x")]);
    assert_eq!(o.status.code(), Some(0));
    let o = r.run(
        &spawn_args("c", "10.0.0.9/24", &[]),
        &[("MINIPROXY_PARALLEL", "0")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("MINIPROXY_PARALLEL must be a positive number, not '0'"));
}

#[test]
fn parallel_spawns_all_succeed_with_distinct_macs() {
    let r = Rig::new("par");
    let children: Vec<_> = (0..6)
        .map(|i| {
            let name = format!("p{i}");
            let ip = format!("10.0.0.{}/24", 10 + i);
            r.cmd(
                &spawn_args(&name, &ip, &[]),
                &[("MINIPROXY_PARALLEL", "2"), ("MINIPROXY_TRACE", "1")],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut domids = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        assert!(err(&o).contains("miniproxy: trace +"), "{}", err(&o));
        domids.push(
            out(&o)
                .split(" domid=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    domids.sort();
    domids.dedup();
    assert_eq!(domids.len(), 6);
    let o = r.run(&["stop", "--all"], &[("MINIPROXY_PARALLEL", "3")]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        out(&o)
            .lines()
            .filter(|l| l.ends_with(" how=shutdown"))
            .count(),
        6,
        "{}",
        out(&o)
    );
}

/// The test scripts' one stats helper (tests/xen/common.sh) reads what the
/// engine writes, the same as the tool's parser does.
#[test]
fn the_shell_stats_helper_reads_the_guests_line() {
    let s = proxy::engine::Stats {
        accepted: 4,
        bytes_up: 1048576,
        refused: 0,
        ..Default::default()
    };
    let line = format!("{s} nf_rx_frames=12 cpu_busy_ms=3 xen_notifies=9");
    let common = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/xen/common.sh");
    let script = format!(
        ". '{}'; L='{line}'; stat_of px_accepted \"$L\"; echo \"$L\" | stat_of px_bytes_up; \
         stat_of px_refused \"$L\"; stat_of cpu_busy_ms \"$L\"; stat_of accepted \"$L\" || echo absent; \
         stat_of px_bytes \"$L\" || echo absent",
        common.display()
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(out(&o), "4\n1048576\n0\n3\nabsent\nabsent\n", "{}", err(&o));
}
