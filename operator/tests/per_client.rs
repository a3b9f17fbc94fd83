//! scripts/examples/per-client.sh (README, "Operating Miniproxy") against the
//! operator tool in a fake dom0: `bash -n` and shellcheck (when installed),
//! then `ensure` spawns one instance per client and reuses it, and `reap`
//! stops exactly the ones idle for long enough, by their stats.

mod rig;

use rig::{err, out, Rig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/examples/per-client.sh")
}

fn per_client(r: &Rig, args: &[&str]) -> Output {
    r.cmd("bash")
        .arg(script())
        .args(args)
        .env("MINIPROXY", env!("CARGO_BIN_EXE_miniproxy-operator"))
        .env("PC_STATE", r.dir.join("state"))
        .env("PC_FIRST", "100")
        .env("PC_LAST", "102")
        .output()
        .unwrap()
}

#[test]
fn the_script_is_valid_bash_and_shellcheck_clean() {
    let o = Command::new("bash")
        .arg("-n")
        .arg(script())
        .output()
        .unwrap();
    assert!(o.status.success(), "bash -n: {}", err(&o));
    match Command::new("shellcheck").arg(script()).output() {
        Ok(o) => assert!(o.status.success(), "shellcheck:\n{}", out(&o)),
        Err(_) => println!("SKIP shellcheck: not installed (apt-get install shellcheck)"),
    }
}

#[test]
fn ensure_spawns_once_per_client_and_reap_stops_the_idle() {
    let r = Rig::new("perclient");
    let o = per_client(&r, &["ensure", "c1"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert_eq!(
        out(&o),
        "ready name=pc-c1 ip=10.0.0.100 domid=1 spawned=yes\n"
    );
    let o = per_client(&r, &["ensure", "c1"]);
    assert_eq!(
        out(&o),
        "ready name=pc-c1 ip=10.0.0.100 domid=1 spawned=no\n",
        "{}",
        err(&o)
    );
    // An address taken by something else: the next one.
    r.spawn("other", "10.0.0.101/24");
    let o = per_client(&r, &["ensure", "192.168.1.7"]);
    assert_eq!(
        out(&o),
        "ready name=pc-192.168.1.7 ip=10.0.0.102 domid=3 spawned=yes\n",
        "{}",
        err(&o)
    );
    let o = per_client(&r, &["ensure", "c3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("no free address in 10.0.0.100..10.0.0.102"),
        "{}",
        err(&o)
    );
    let o = per_client(&r, &["ensure", "bad/id"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("bad client id"), "{}", err(&o));

    // pc-c1 holds a connection; pc-192.168.1.7 has none (the fake guest's
    // px_active=0). Not idle for 300 s yet: nothing stopped.
    r.set_stats(1, "px_accepted=4 px_active=1");
    let o = per_client(&r, &["reap", "300"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(out(&o), "");
    // Idle for 0 s is enough: the idle one goes, the busy one and the
    // instance that is not pc-* stay.
    let o = per_client(&r, &["reap", "0"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        out(&o).starts_with("reaped name=pc-192.168.1.7 idle_s="),
        "{}",
        out(&o)
    );
    assert_eq!(out(&o).lines().count(), 1, "{}", out(&o));
    let list = out(&r.run(&["list"]));
    assert!(
        list.contains("name=pc-c1 ") && list.contains("name=other "),
        "{list}"
    );
    assert!(!list.contains("pc-192"), "{list}");
    // pc-c1 goes idle, but took a connection since the last look: its idle
    // time starts again, so a 300 s reap leaves it; a 0 s reap stops it.
    r.set_stats(1, "px_accepted=5 px_active=0");
    assert_eq!(out(&per_client(&r, &["reap", "300"])), "");
    let o = per_client(&r, &["reap", "0"]);
    assert!(out(&o).starts_with("reaped name=pc-c1 "), "{}", out(&o));
    let state: Vec<_> = std::fs::read_dir(r.dir.join("state")).unwrap().collect();
    assert!(state.is_empty(), "{state:?}");
}
