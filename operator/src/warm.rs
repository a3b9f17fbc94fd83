//! `miniproxy spawn`'s warm path (crate::pool): take a waiting pool member
//! instead of creating a domain, hand it its configuration, rename it, wait
//! for ready.

use crate::args::Spawn;
use crate::env::Env;
use crate::render::{self, Values};
use crate::spawn::{
    console_since, console_size, destroy, forget, ip_in_use, print_spawned, records, utc_now,
    wait_ready,
};
use crate::{fail, lock, pool, xen, Failure, Outcome};
use std::path::Path;
use std::time::Duration;

/// The warm path: take a waiting pool member (under the global lock, with
/// the same address check as a cold spawn), write its configuration key,
/// rename it to NAME meanwhile, wait for ready. `None`: no member fits (the
/// caller goes cold). The pool refills in the background.
pub fn warm(
    env: &Env,
    s: &Spawn,
    kernel: &str,
    template: &str,
    template_path: &Path,
) -> Result<Option<Outcome>, Failure> {
    let name = &s.name;
    if !pool::pool_env(env).run_dir.is_dir() {
        return Ok(None);
    }
    let cfg = proxy::config::Config::parse(&s.cfgline)
        .or_else(|e| fail(format!("the configuration does not parse: {e}")))?;
    let w0 = env.ms();
    let global = env.path(".lock");
    let taken = {
        let _global = match lock::take_within(&global, Duration::from_millis(s.timeout_ms)) {
            Ok(Some(f)) => f,
            _ => return fail(format!("could not take {} (--timeout)", global.display())),
        };
        let records = records(env);
        if let Some(other) = ip_in_use(env, s, &records) {
            let addr = s.ip.split('/').next().unwrap_or("");
            return fail(format!("address {addr} is in use by instance '{other}'"));
        }
        let Some(t) = pool::take(env, s, &cfg) else {
            return Ok(None);
        };
        // NAME's record, as a cold spawn writes it (the member's MAC).
        let v = Values {
            spawn: s,
            kernel,
            bridge: &env.bridge,
            mac: &t.member.mac,
            vif_script: &env.vif_script,
        };
        let when = format!("{} (warm: pool member {})", utc_now(), t.member.name);
        let text = render::render(template, &template_path.display().to_string(), &when, &v)
            .or_else(fail)?;
        forget(env, name);
        std::fs::write(env.path(&format!("{name}.cfg")), text)
            .or_else(|e| fail(format!("cannot write {name}.cfg: {e}")))?;
        let _ = std::fs::write(
            env.path(&format!("{name}.domid")),
            format!("{}\n", t.member.domid),
        );
        t.member
    };
    let wait_ms = env.ms() - w0;
    let (id, member) = (taken.domid, &taken.name);
    env.trace(&format!("took pool member {member} (domain {id})"));
    let deadline_ms = env.ms() + s.timeout_ms;
    let con0 = console_size(env, member);
    let h0 = env.ms();
    let key = format!("/local/domain/{id}/miniproxy/config");
    // Watching data/ready before the guest can write it: its event ends
    // the wait without polling (each xenstore-read is a process).
    let ready_key = format!("/local/domain/{id}/data/ready");
    let watch = xen::watch_registered(&ready_key);
    env.trace("watching data/ready");
    let handed = xen::write(&key, &s.cfgline);
    env.trace("configuration written");
    // The rename and the permissions while the guest gets to work: the
    // node already is dom0's and read-only for the guest (it inherits the
    // domain home's permissions); chmod says so explicitly.
    let rename = xen::start(&["xl", "rename", member, name]);
    let chmod = xen::start(&["xenstore-chmod", &key, "n0", &format!("r{id}")]);
    let handoff_ms = env.ms() - h0;
    let xs = format!("/local/domain/{id}");
    let keys = [
        ready_key.clone(),
        format!("{xs}/data/pool"),
        format!("{xs}/data/ip"),
    ];
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    // ready, data/pool and data/ip, in one process once ready is there.
    let mut after: Option<Vec<String>> = None;
    let ready = if handed {
        await_watch(env, watch, &ready_key, member, con0, deadline_ms);
        env.trace("the ready watch fired");
        after = xen::read_all(&key_refs);
        match &after {
            Some(v) => Ok(v[0].clone()),
            None => wait_ready(env, s, member, id, con0, deadline_ms),
        }
    } else {
        Err(format!("cannot write {key}"))
    };
    env.trace("ready");
    let renamed = xen::finish(rename);
    env.trace(&format!("renamed: {renamed}"));
    let _ = xen::finish(chmod);
    let result = match (ready, renamed) {
        (Ok(_), true) => Ok(()),
        (Ok(_), false) => Err(format!("xl rename {member} {name} failed")),
        (Err(why), _) => Err(why),
    };
    if let Err(why) = result {
        eprintln!(
            "miniproxy spawn: {name} (pool member {member}, domain {id}): {why}; destroying it. Its console:"
        );
        std::thread::sleep(Duration::from_millis(200));
        for l in console_since(env, member, con0, 20).lines() {
            eprintln!("  | {l}");
        }
        destroy(env, name, &id.to_string());
        forget(env, name);
        pool::refill_in_background(env);
        return Ok(Some(Err(Failure::Reported)));
    }
    let after = after.unwrap_or_else(|| {
        let read = |k: &str| xen::read(k).unwrap_or_default();
        vec![String::new(), read(key_refs[1]), read(key_refs[2])]
    });
    // The member's own time from its configuration to ready.
    let guest_us = after[1]
        .strip_prefix("taken us=")
        .and_then(|v| v.trim().parse().ok());
    let addr = Some(after[2].clone()).filter(|a| !a.is_empty());
    print_spawned(
        env,
        s,
        (id, addr),
        &taken.mac,
        [wait_ms, handoff_ms],
        guest_us,
        "warm",
    );
    pool::refill_in_background(env);
    Ok(Some(Ok(())))
}

/// Until the `xenstore-watch` child `watch` exits (its second event: the
/// watched node written), the guest prints a fatal line on `console`'s log,
/// `key` is there (looked at once a second, should an event be lost) or
/// the deadline; the caller then reads what happened.
fn await_watch(
    env: &Env,
    watch: Option<std::process::Child>,
    key: &str,
    console: &str,
    con0: u64,
    deadline_ms: u64,
) {
    let Some(mut child) = watch else {
        return;
    };
    let mut next_look = env.ms() + 1000;
    while let Ok(None) = child.try_wait() {
        let now = env.ms();
        if now >= deadline_ms {
            break;
        }
        if now >= next_look {
            next_look = now + 1000;
            if console_since(env, console, con0, usize::MAX).contains("miniproxy: fatal:")
                || xen::read(key).is_some()
            {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}
