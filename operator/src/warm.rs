//! `miniproxy spawn`'s warm path (crate::pool): take a waiting pool member
//! instead of creating a domain, hand it its configuration, rename it, wait
//! for ready.

use crate::args::Spawn;
use crate::env::Env;
use crate::render::{self, Values};
use crate::spawn::{
    console_since, console_size, destroy, forget, ip_in_use, print_spawned, records, utc_now,
};
use crate::xenstore::{self, Xs, NO_TX};
use crate::{fail, lock, pool, xen, Failure, Outcome};
use std::path::Path;
use std::time::{Duration, Instant};

/// The warm path: take a waiting pool member (under the global lock, with
/// the same address check as a cold spawn), write its configuration key
/// and rename it to NAME (one xenstore transaction), wait for ready. `None`: no member fits (the
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
    // The hand-over talks to xenstored itself; without it, go cold.
    let mut xs = match Xs::open() {
        Ok(xs) => xs,
        Err(e) => {
            env.trace(&format!("{e}: no warm spawn"));
            return Ok(None);
        }
    };
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
    let home = format!("/local/domain/{id}");
    let handed = hand_over(env, &mut xs, s, id, member);
    let handoff_ms = env.ms() - h0;
    let ready = handed.and_then(|()| {
        let r = await_ready(env, &mut xs, s, id, (member, con0), deadline_ms);
        env.trace("ready");
        r
    });
    // data/pool and data/ip, once ready is there.
    let after = ready.and_then(|_| {
        let pool = xs.read(NO_TX, &format!("{home}/data/pool"))?;
        let ip = xs.read(NO_TX, &format!("{home}/data/ip"))?;
        // No unwatch: xenstored drops the watch with the connection, at
        // exit, and a request costs ~10 ms while the guest starts serving.
        Ok((pool.unwrap_or_default(), ip.unwrap_or_default()))
    });
    let (pool_said, ip) = match after {
        Ok(v) => v,
        Err(why) => {
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
    };
    // The member's own time from its configuration to ready.
    let guest_us = pool_said
        .strip_prefix("taken us=")
        .and_then(|v| v.trim().parse().ok());
    let addr = Some(ip).filter(|a| !a.is_empty());
    print_spawned(
        env,
        s,
        (id, addr),
        &taken.mac,
        [wait_ms, handoff_ms],
        guest_us,
        "warm",
    );
    env.trace("printed");
    pool::refill_in_background(env);
    env.trace("refill started");
    Ok(Some(Ok(())))
}

/// The token of the data/ready watch.
const READY_TOKEN: &str = "miniproxy-ready";

/// Watch the member's data/ready (before the guest can write it: its event
/// ends the wait without polling), then in one transaction write its
/// configuration key (dom0's, read-only for the guest: "n0 rID") and
/// rename it from MEMBER to the spawn's name as `xl rename` does. All on
/// one xenstored connection: no process.
fn hand_over(env: &Env, xs: &mut Xs, s: &Spawn, id: u32, member: &str) -> Result<(), String> {
    let home = format!("/local/domain/{id}");
    xs.watch(&format!("{home}/data/ready"), READY_TOKEN)?;
    env.trace("watching data/ready");
    let key = format!("{home}/miniproxy/config");
    let reader = format!("r{id}");
    xs.transaction(5, |xs, tx| -> Result<(), String> {
        xs.write(tx, &key, &s.cfgline)?;
        xs.set_perms(tx, &key, &["n0", &reader])?;
        xenstore::rename(xs, tx, id, member, &s.name)
    })
    .map_err(|why| format!("handing over the configuration: {why}"))?;
    env.trace(&format!("configuration written, renamed to {}", s.name));
    Ok(())
}

/// Until data/ready is there (its value), the guest prints a fatal line on
/// its console (`console`: the log's name and the size it had before), the
/// domain goes or crashes, or the deadline. Besides each watch event,
/// ready is read once a second should an event be lost.
fn await_ready(
    env: &Env,
    xs: &mut Xs,
    s: &Spawn,
    id: u32,
    (console, con0): (&str, u64),
    deadline_ms: u64,
) -> Result<String, String> {
    let home = format!("/local/domain/{id}");
    let ready_key = format!("{home}/data/ready");
    for tick in 1u64.. {
        let left = deadline_ms.saturating_sub(env.ms());
        let until = Instant::now() + Duration::from_millis(left.min(1000));
        // The event xenstored sends when the watch is set comes first: each
        // event is only a reason to look.
        while let Some(_path) = xs.wait_watch(READY_TOKEN, until)? {
            if let Some(v) = xs.read(NO_TX, &ready_key)? {
                env.trace("the ready watch fired");
                return Ok(v);
            }
        }
        if let Some(v) = xs.read(NO_TX, &ready_key)? {
            return Ok(v);
        }
        if console_since(env, console, con0, usize::MAX).contains("miniproxy: fatal:") {
            return Err("the guest stopped with a fatal error".into());
        }
        if xs.read(NO_TX, &format!("{home}/name"))?.is_none() {
            return Err("the domain went away".into());
        }
        if tick % 5 == 0 {
            // A backstop for a crash that printed nothing (an xl process).
            let state = xen::xl_state(id).unwrap_or_default();
            if state.contains(['c', 's']) {
                return Err(format!("the domain crashed or shut down ({state})"));
            }
        }
        if env.ms() >= deadline_ms {
            return Err(format!("not ready after {} s", s.timeout_text));
        }
    }
    unreachable!("the loop returns")
}
