//! `miniproxy spawn`'s warm path (crate::pool): take a waiting pool member
//! instead of creating a domain, hand it its configuration, rename it, wait
//! for ready.

use crate::args::Spawn;
use crate::env::Env;
use crate::render::{self, Values};
use crate::spawn::{
    console_since, console_size, destroy, forget, ip_in_use, records, spawned_line, utc_now,
};
use crate::xenstore::{self, Req, Xs, NO_TX};
use crate::{fail, lock, pool, xen, Failure};
use std::path::Path;
use std::time::{Duration, Instant};

/// The warm path, on `xs` (the spawn's connection to xenstored): take a
/// waiting pool member (under the global lock, with the same address check
/// as a cold spawn), write its configuration key and rename it to NAME (one
/// xenstore transaction), wait for ready. `None`: no member fits (the
/// caller goes cold). The pool refills in the background (`refill`).
/// Returns the result line.
pub fn warm(
    env: &Env,
    s: &Spawn,
    (kernel, template, template_path): (&str, &str, &Path),
    xs: &mut Xs,
    refill: &dyn Fn(&Env),
) -> Result<Option<String>, Failure> {
    let name = &s.name;
    // parse_spawn checked the line with this parser; its boot-time keys
    // choose the member.
    let cfg = proxy::config::Config::parse(&s.cfgline)
        .or_else(|e| fail(format!("the configuration does not parse: {e}")))?;
    let w0 = env.ms();
    let global = env.path(".lock");
    let known: Vec<u32>;
    let taken = {
        let _global = match lock::take_within(&global, Duration::from_millis(s.timeout_ms)) {
            Ok(Some(f)) => f,
            _ => return fail(format!("could not take {} (--timeout)", global.display())),
        };
        let cands = pool::candidates(env, s.memory, &cfg);
        let looked = match look(xs, name, &cands) {
            Ok(l) => l,
            Err(e) => {
                // Go cold, with the name checked the way a cold spawn does.
                env.trace(&format!("{e}: no warm spawn"));
                if let Some(id) = xen::domid_of(name) {
                    return fail(format!("name '{name}' is in use: domain {id} exists"));
                }
                return Ok(None);
            }
        };
        if let Some(id) = looked.in_use {
            return fail(format!("name '{name}' is in use: domain {id} exists"));
        }
        env.trace("name is free");
        let records = records(env);
        if let Some(other) = ip_in_use(env, s, &records) {
            let addr = s.ip.split('/').next().unwrap_or("");
            return fail(format!("address {addr} is in use by instance '{other}'"));
        }
        known = looked.ids;
        let member = match looked.member {
            Some(m) => Some(m),
            None => first_waiting(env, xs, cands.get(1..).unwrap_or_default()),
        };
        let Some(member) = member else {
            return Ok(None);
        };
        pool::take(env, &member);
        // NAME's record, as a cold spawn writes it (the member's MAC).
        let v = Values {
            spawn: s,
            kernel,
            bridge: &env.bridge,
            mac: &member.mac,
            vif_script: &env.vif_script,
        };
        let when = format!("{} (warm: pool member {})", utc_now(), member.name);
        let text = render::render(template, &template_path.display().to_string(), &when, &v)
            .or_else(fail)?;
        forget(env, name);
        std::fs::write(env.path(&format!("{name}.cfg")), text)
            .or_else(|e| fail(format!("cannot write {name}.cfg: {e}")))?;
        let _ = std::fs::write(
            env.path(&format!("{name}.domid")),
            format!("{}\n", member.domid),
        );
        member
    };
    let wait_ms = env.ms() - w0;
    let (id, member) = (taken.domid, &taken.name);
    env.trace(&format!("took pool member {member} (domain {id})"));
    let deadline_ms = env.ms() + s.timeout_ms;
    let con0 = console_size(env, member);
    let h0 = env.ms();
    let handed = hand_over(env, xs, s, (id, member), &known);
    let handoff_ms = env.ms() - h0;
    // The refill starts while the member configures itself: starting a
    // process (fork, exec of nice) costs dom0 tens of ms under TCG, which
    // would otherwise come after ready, before the spawn returns. It waits
    // REFILL_DELAY before it works, so it does not compete with this
    // member's first clients.
    refill(env);
    env.trace("refill started");
    let ready = handed.and_then(|()| await_ready(env, xs, s, id, (member, con0), deadline_ms));
    let (pool_said, ip) = match ready {
        Ok(r) => (r.pool, r.ip),
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
            return Err(Failure::Reported(format!(
                "{name} (pool member {member}, domain {id}): {why}; destroyed it"
            )));
        }
    };
    env.trace("ready");
    // The member's own time from its configuration to ready.
    let guest_us = pool_said
        .strip_prefix("taken us=")
        .and_then(|v| v.trim().parse().ok());
    let addr = Some(ip).filter(|a| !a.is_empty());
    Ok(Some(spawned_line(
        env,
        s,
        (id, addr),
        &taken.mac,
        [wait_ms, handoff_ms],
        guest_us,
        "warm",
    )))
}

/// The token of member ID's data/ready watch.
fn ready_token(id: u32) -> String {
    format!("miniproxy-ready-{id}")
}

/// What the spawn finds under the global lock, in one round trip after
/// the domain list: the domain already named NAME, if any, and whether the
/// first candidate still is its domain and waits (its data/ready watched
/// in the same round trip, see [`watch_reqs`]).
struct Looked {
    /// The domains listed (the rename's transaction reads their names again).
    ids: Vec<u32>,
    in_use: Option<u32>,
    member: Option<pool::Member>,
}

fn look(xs: &mut Xs, name: &str, cands: &[pool::Member]) -> Result<Looked, String> {
    let (ids, paths) = xenstore::domains_and_name_paths(xs, NO_TX)?;
    let mut reqs: Vec<Req<'_>> = paths.iter().map(|p| Req::Read(p)).collect();
    let keys = cands.first().map(member_keys);
    if let Some(k) = &keys {
        reqs.extend(watch_reqs(k));
    }
    let got = xs.batch(NO_TX, &reqs)?;
    let name_of = |id: u32| {
        ids.iter()
            .position(|&n| n == id)
            .and_then(|i| got[i].as_deref())
    };
    let in_use = ids
        .iter()
        .zip(&got)
        .find(|(_, n)| n.as_deref() == Some(name))
        .map(|(&id, _)| id);
    let member = cands.first().filter(|m| {
        name_of(m.domid) == Some(m.name.as_str()) && got[ids.len()].as_deref() == Some("waiting")
    });
    let member = member.cloned();
    Ok(Looked {
        ids,
        in_use,
        member,
    })
}

/// A member's name, data/pool and data/ready keys, and its ready watch's
/// token.
fn member_keys(m: &pool::Member) -> [String; 4] {
    let home = format!("/local/domain/{}", m.domid);
    [
        format!("{home}/name"),
        format!("{home}/data/pool"),
        format!("{home}/data/ready"),
        ready_token(m.domid),
    ]
}

/// Read a member's data/pool and watch its data/ready, in one round trip
/// (the event of the guest's write then ends the wait without polling; a
/// member not taken keeps a watch whose events nobody waits for, until
/// this process ends).
fn watch_reqs(k: &[String; 4]) -> [Req<'_>; 2] {
    [Req::Read(&k[1]), Req::Watch(&k[2], &k[3])]
}

/// The first of `cands` that is still its domain's name and says
/// `data/pool=waiting`, asked one member at a time, each with its ready
/// watch. A xenstore failure: none (the spawn goes cold).
fn first_waiting(env: &Env, xs: &mut Xs, cands: &[pool::Member]) -> Option<pool::Member> {
    for m in cands {
        let k = member_keys(m);
        let [state, watch] = watch_reqs(&k);
        let got = xs
            .batch(NO_TX, &[Req::Read(&k[0]), state, watch])
            .map_err(|e| env.trace(&format!("{e}: no warm spawn")))
            .ok()?;
        if got[0].as_deref() == Some(m.name.as_str()) && got[1].as_deref() == Some("waiting") {
            return Some(m.clone());
        }
    }
    None
}

/// In one transaction write member ID's configuration key (dom0's,
/// read-only for the guest: "n0 rID") and rename it from MEMBER to the
/// spawn's name as `xl rename` does. On the spawn's one xenstored
/// connection: no process.
fn hand_over(
    env: &Env,
    xs: &mut Xs,
    s: &Spawn,
    (id, member): (u32, &str),
    known: &[u32],
) -> Result<(), String> {
    let key = format!("/local/domain/{id}/miniproxy/config");
    let reader = format!("r{id}");
    let perms = ["n0", reader.as_str()];
    xs.transaction(5, |xs, tx| -> Result<(), String> {
        let with = [Req::Write(&key, &s.cfgline), Req::SetPerms(&key, &perms)];
        xenstore::rename(xs, tx, (id, member, &s.name), &with, known)
    })
    .map_err(|why| format!("handing over the configuration: {why}"))?;
    env.trace(&format!("configuration written, renamed to {}", s.name));
    Ok(())
}

/// What a member says once it serves: its data/pool and data/ip.
struct Ready {
    pool: String,
    ip: String,
}

/// Until data/ready is there (then with data/pool and data/ip, read in the
/// same round trip), the guest prints a fatal line on its console
/// (`console`: the log's name and the size it had before), the domain goes
/// or crashes, or the deadline. Besides each watch event, ready is read
/// once a second should an event be lost.
fn await_ready(
    env: &Env,
    xs: &mut Xs,
    s: &Spawn,
    id: u32,
    (console, con0): (&str, u64),
    deadline_ms: u64,
) -> Result<Ready, String> {
    let home = format!("/local/domain/{id}");
    let keys = [
        format!("{home}/data/ready"),
        format!("{home}/data/pool"),
        format!("{home}/data/ip"),
    ];
    let token = ready_token(id);
    let look = |xs: &mut Xs| -> Result<Option<Ready>, String> {
        let v = xs.read_many(NO_TX, &[&keys[0], &keys[1], &keys[2]])?;
        Ok(v[0].is_some().then(|| Ready {
            pool: v[1].clone().unwrap_or_default(),
            ip: v[2].clone().unwrap_or_default(),
        }))
    };
    for tick in 1u64.. {
        let left = deadline_ms.saturating_sub(env.ms());
        let until = Instant::now() + Duration::from_millis(left.min(1000));
        // The event xenstored sends when the watch is set comes first: each
        // event is only a reason to look.
        while let Some(_path) = xs.wait_watch(&token, until)? {
            if let Some(r) = look(xs)? {
                env.trace("the ready watch fired");
                return Ok(r);
            }
        }
        if let Some(r) = look(xs)? {
            return Ok(r);
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
