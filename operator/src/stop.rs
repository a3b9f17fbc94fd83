//! `miniproxy stop`: ask instances to shut down, destroy what does not go.

use crate::args::{check_name, parse_secs};
use crate::env::{self, Env};
use crate::json::Object;
use crate::libvirt::{self, Via};
use crate::spawn::{destroy, domain_of, forget, records, via_of};
use crate::{bad, fail, xen, Failure, Outcome};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const USAGE: &str = "Usage: miniproxy stop NAME... | --all   [--timeout S] [--json]
Stop instances started by 'miniproxy spawn' (all of them with --all), at most
MINIPROXY_PARALLEL at once (default: dom0's CPUs, at least 2; twenty
shutdowns at once swamp xenstored with xl's per-domain watchers): ask each
to shut down (control/shutdown=poweroff, as xl shutdown does; virsh shutdown
for an instance spawned --via libvirt), wait until the toolstack has reaped
the domain (up to S seconds, default 60), and destroy it (xl destroy; virsh
destroy for a libvirt one) if it does not acknowledge within 10 s or is not
gone in time.
One line per instance (--json: one object per line):
  stopped name=NAME domid=ID ms=MS how=shutdown|destroy|gone
(gone: it had already ended, e.g. by idle_exit). --all with no instances
does nothing. A NAME that is not an instance is an error (exit 1).
";

pub struct Stopped {
    name: String,
    domid: Option<u32>,
    ms: u64,
    how: &'static str,
}

/// The result line (or JSON object) of one instance.
fn line(s: &Stopped, json: bool) -> String {
    if json {
        let o = Object::default()
            .str("result", "stopped")
            .str("name", &s.name)
            .opt_num("domid", s.domid.map(u64::from))
            .num("ms", s.ms)
            .str("how", s.how);
        o.finish()
    } else {
        let domid = s.domid.map_or("-".into(), |d| d.to_string());
        format!(
            "stopped name={} domid={domid} ms={} how={}",
            s.name, s.ms, s.how
        )
    }
}

pub fn stop_one(env: &Env, name: &str, limit: Duration) -> Result<Stopped, String> {
    let t0 = Instant::now();
    // Not from our record: maybe crashed-and-preserved, or the record is stale.
    let Some(id) = domain_of(env, name).or_else(|| xen::domid_of(name)) else {
        forget(env, name);
        return Ok(Stopped {
            name: name.into(),
            domid: None,
            ms: 0,
            how: "gone",
        });
    };
    let xs = format!("/local/domain/{id}");
    let ctl = format!("{xs}/control/shutdown");
    let name_key = format!("{xs}/name");
    let mut how = "shutdown";
    let via = via_of(env, name);
    // libvirtd created it and reaps it (on_poweroff destroy): libvirt
    // asks the guest (the same control/shutdown write) so that its view
    // of the domain follows.
    let asked = if via == Some(Via::Libvirt) {
        libvirt::virsh_ok("shutdown", &[name])
    } else {
        xen::write(&ctl, "poweroff")
    };
    // What xl shutdown does for a PV guest, without a libxl process per
    // instance: the kernel acknowledges by clearing the node, stops, and
    // xl's daemon reaps the domain (on_poweroff="destroy"). No
    // acknowledgement within 10 s (crashed, paused, hung): destroy at once.
    if asked {
        let ack_limit = limit.min(Duration::from_secs(10));
        while xen::read(&ctl).is_some_and(|v| !v.is_empty()) {
            if t0.elapsed() >= ack_limit {
                how = "destroy";
                break;
            }
            xen::wait_event(&ctl, Duration::from_secs(1));
        }
    } else if via == Some(Via::Libvirt) || !xen::xl_ok(&["shutdown", &id.to_string()]) {
        how = "destroy";
    }
    if how == "shutdown" {
        while xen::read(&name_key).is_some() {
            if t0.elapsed() >= limit {
                how = "destroy";
                break;
            }
            xen::wait_event("@releaseDomain", Duration::from_secs(2));
        }
    }
    if how == "destroy" {
        destroy(env, name, &id.to_string());
        let t1 = Instant::now();
        while xen::read(&name_key).is_some() {
            if t1.elapsed() >= Duration::from_secs(15) {
                return Err(format!(
                    "{name} (domain {id}) is still there after xl destroy"
                ));
            }
            xen::wait_event("@releaseDomain", Duration::from_secs(2));
        }
    }
    forget(env, name);
    Ok(Stopped {
        name: name.into(),
        domid: Some(id),
        ms: t0.elapsed().as_millis() as u64,
        how,
    })
}

/// A stop's arguments; `None` from [`parse`]: --help.
struct Args {
    all: bool,
    json: bool,
    limit_ms: u64,
    names: Vec<String>,
}

fn parse(argv: &[String]) -> Result<Option<Args>, Failure> {
    let (mut all, mut json, mut timeout) = (false, false, "60".to_string());
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let a = argv[i].as_str();
        i += 1;
        match a {
            "-h" | "--help" => return Ok(None),
            "--all" => all = true,
            "--json" => json = true,
            "--timeout" => {
                let Some(v) = argv.get(i) else {
                    return bad("--timeout needs a value");
                };
                timeout = v.clone();
                i += 1;
            }
            o if o.starts_with("--timeout=") => timeout = o["--timeout=".len()..].to_string(),
            o if o.starts_with('-') => return bad(format!("unknown option '{o}'")),
            n => {
                check_name(n)?;
                names.push(n.to_string());
            }
        }
    }
    let Some(limit_ms) = parse_secs(&timeout) else {
        return bad(format!(
            "bad timeout '{timeout}': expected seconds (e.g. 30)"
        ));
    };
    if all && !names.is_empty() {
        return bad("give NAMEs or --all, not both");
    }
    if !all && names.is_empty() {
        return bad("which instance? give NAME... or --all");
    }
    Ok(Some(Args {
        all,
        json,
        limit_ms,
        names,
    }))
}

/// Each of `names` is an instance of ours.
fn check_names(env: &Env, names: &[String]) -> Result<(), Failure> {
    for n in names {
        if via_of(env, n).is_some() {
            continue;
        }
        if xen::domid_of(n).is_some() {
            return fail(format!("'{n}' is a domain but not an instance started by 'miniproxy spawn' (no {}/{n}.cfg); use xl", env.run_dir.display()));
        }
        return fail(format!("no instance named '{n}'"));
    }
    Ok(())
}

/// The daemon's stop (crate::serve): one NAME per request (one reply
/// line), checked and stopped as the CLI does; its result line.
pub fn one(env: &Env, argv: &[String]) -> Result<String, Failure> {
    let Some(a) = parse(argv)? else {
        return bad("--help is not served: run 'miniproxy stop --help'");
    };
    let [name] = a.names.as_slice() else {
        return bad("the daemon stops one NAME per request");
    };
    env::need_root()?;
    check_names(env, &a.names)?;
    match stop_one(env, name, Duration::from_millis(a.limit_ms)) {
        Ok(s) => Ok(line(&s, a.json)),
        Err(e) => fail(e),
    }
}

pub fn run(argv: &[String]) -> Outcome {
    let Some(Args {
        all,
        json,
        limit_ms,
        mut names,
    }) = parse(argv)?
    else {
        print!("{USAGE}");
        return Ok(());
    };
    env::need_root()?;
    let env = Env::load();
    let parallel = env::parallel()?;
    if all {
        names = records(&env).into_iter().map(|(n, _)| n).collect();
    } else {
        check_names(&env, &names)?;
    }
    // At most MINIPROXY_PARALLEL stops at once; every one has ended when we return.
    let queue = Mutex::new(names.into_iter().collect::<VecDeque<String>>());
    let failed = Mutex::new(false);
    let limit = Duration::from_millis(limit_ms);
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let Some(n) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                match stop_one(&env, &n, limit) {
                    Ok(s) => println!("{}", line(&s, json)),
                    Err(e) => {
                        eprintln!("miniproxy stop: {e}");
                        *failed.lock().unwrap() = true;
                    }
                }
            });
        }
    });
    if *failed.lock().unwrap() {
        Err(Failure::Reported("some instances did not stop".into()))
    } else {
        Ok(())
    }
}
