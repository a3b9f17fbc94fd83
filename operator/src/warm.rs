//! `miniproxy spawn`'s warm path (crate::pool): take a waiting pool member
//! instead of creating a domain, hand it its configuration, rename it, wait
//! for ready.

use crate::args::Spawn;
use crate::env::Env;
use crate::render::{self, Values};
use crate::spawn::{
    console_since, console_size, destroy, forget, ip_in_use, records, spawned_line, utc_now,
};
use crate::xenstore::{self, Req, Xs, XsError, NO_TX};
use crate::{fail, lock, pool, xen, Failure};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod prepared;

use prepared::{NotRenamed, Prep};

/// The warm path, on `xs` (the spawn's connection to xenstored): under the
/// global lock, in one xenstore transaction, check that NAME is free, the
/// address too (as a cold spawn does) and a pool member still waits, then
/// write its configuration key and rename it to NAME; wait for ready.
/// `None`: no member fits (the caller goes cold). The pool refills in the
/// background (`refill`). Returns the result line.
///
/// Round trips to xenstored (each 10-35 ms in a dom0 under TCG): the ready
/// watch with the transaction's start, every check in one batch within
/// it, the writes with the commit, then the look after the watch fires
/// (warm/tests.rs counts them). With a hand-over the daemon prepared on
/// `xs` (crate::warm::prepared) the first two are done before the
/// request: the watch, the writes and the commit go in one round trip.
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
    let (taken, con0, wait_ms, handoff_ms) = {
        let _global = match lock::take_within(&global, Duration::from_millis(s.timeout_ms)) {
            Ok(Some(f)) => f,
            _ => return fail(format!("could not take {} (--timeout)", global.display())),
        };
        let wait_ms = env.ms() - w0;
        let cands = pool::candidates(env, s.memory, &cfg);
        let h0 = env.ms();
        // NAME's records, written while the prepared hand-over's commit is
        // in flight: for which member, and whether they were.
        let mut early: Option<(u32, Result<(), Failure>)> = None;
        let taken = hand_over_any(env, xs, s, &cands, &mut |m| {
            let written = name_records(env, s, kernel, (template, template_path), m);
            early = Some((m.domid, written));
        });
        let early = match (early, &taken) {
            (Some((id, written)), Ok((m, _))) if m.domid == id => Some(written),
            (Some(_), _) => {
                // Written for a member the spawn did not take.
                forget(env, name);
                None
            }
            (None, _) => None,
        };
        let (member, con0) = match taken {
            Ok(m) => m,
            Err(Stop::InUse(id)) => {
                return fail(format!("name '{name}' is in use: domain {id} exists"))
            }
            Err(Stop::InUseMemberLost(id)) => {
                // The pool lost the member: back to its target.
                refill(env);
                return fail(format!("name '{name}' is in use: domain {id} exists"));
            }
            Err(Stop::Address(other)) => {
                let addr = s.ip.split('/').next().unwrap_or("");
                return fail(format!("address {addr} is in use by instance '{other}'"));
            }
            Err(Stop::NoMember) => return Ok(None),
            Err(Stop::HandOver(m, e)) => {
                // As a member that fails after it was taken: out of the
                // pool, destroyed.
                pool::take(env, &m);
                destroy(env, name, &m.domid.to_string());
                forget(env, name);
                refill(env);
                return fail(format!(
                    "{name} (pool member {}, domain {}): handing over the configuration: {e}; destroyed it",
                    m.name, m.domid
                ));
            }
            Err(Stop::Xs(e)) => {
                // Go cold, with the name checked the way a cold spawn does.
                env.trace(&format!("{e}: no warm spawn"));
                if let Some(id) = xen::domid_of(name) {
                    return fail(format!("name '{name}' is in use: domain {id} exists"));
                }
                return Ok(None);
            }
        };
        let handoff_ms = env.ms() - h0;
        env.trace(&format!(
            "configuration written, pool member {} (domain {}) renamed to {name}",
            member.name, member.domid
        ));
        // The domain is NAME's now: its records follow (unless written
        // during the commit's round trip), still under the lock (no other
        // spawn looks at the member meanwhile).
        pool::take(env, &member);
        let written = early
            .unwrap_or_else(|| name_records(env, s, kernel, (template, template_path), &member));
        if let Err(e) = written {
            destroy(env, name, &member.domid.to_string());
            forget(env, name);
            return Err(e);
        }
        (member, con0, wait_ms, handoff_ms)
    };
    let (id, member) = (taken.domid, &taken.name);
    let deadline_ms = env.ms() + s.timeout_ms;
    // The refill starts while the member configures itself: starting a
    // process (fork, exec of nice) costs dom0 tens of ms under TCG, which
    // would otherwise come after ready, before the spawn returns. It waits
    // REFILL_DELAY before it works, so it does not compete with this
    // member's first clients.
    refill(env);
    // The daemon's starts after its reply (crate::serve).
    env.trace("refill asked for");
    let ready = await_ready(env, xs, s, id, (member, con0), deadline_ms);
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

/// The prepared hand-over if `xs` holds a fresh one and it commits (or,
/// its commit failed once the member had its configuration, the member
/// is renamed on its own), else (nothing applied) the full one.
/// `meanwhile`: for the prepared one's member, during its round trip.
fn hand_over_any(
    env: &Env,
    xs: &mut Xs,
    s: &Spawn,
    cands: &[pool::Member],
    meanwhile: &mut dyn FnMut(&pool::Member),
) -> Result<(pool::Member, u64), Stop> {
    let max_age = prepared::PREPARED_MAX_AGE;
    match prepared::hand_over(env, xs, s, cands, max_age, meanwhile) {
        Prep::Done(m, con0) => {
            env.trace("prepared hand-over committed");
            Ok((m, con0))
        }
        Prep::Stop(stop) => {
            env.trace("prepared hand-over: decided");
            Err(stop)
        }
        Prep::Full(why) => {
            env.trace(&format!("prepared hand-over: {why}, full path"));
            hand_over(env, xs, s, cands)
        }
        Prep::Configured(m, vm, con0, why) => {
            env.trace(&format!(
                "prepared hand-over: {why} after the configuration, renaming on its own"
            ));
            match prepared::rename_configured(xs, s, &m, &vm) {
                Ok(()) => Ok((m, con0)),
                Err(NotRenamed::Gone) => {
                    env.trace("the member's domain is gone: full path");
                    let rest: Vec<pool::Member> = cands
                        .iter()
                        .filter(|c| c.domid != m.domid)
                        .cloned()
                        .collect();
                    hand_over(env, xs, s, &rest)
                }
                Err(NotRenamed::InUse(id)) => {
                    // It has NAME's configuration (and address): it goes.
                    pool::take(env, &m);
                    destroy(env, &m.name, &m.domid.to_string());
                    Err(Stop::InUseMemberLost(id))
                }
                Err(NotRenamed::Renamed(n)) => Err(Stop::HandOver(
                    m,
                    format!("{why}, and it was renamed to {n:?} meanwhile"),
                )),
                Err(NotRenamed::Failed(e)) => Err(Stop::HandOver(m, e.to_string())),
            }
        }
    }
}

/// Write NAME's records as a cold spawn does (its config with the
/// member's MAC, its domid) for `member`.
fn name_records(
    env: &Env,
    s: &Spawn,
    kernel: &str,
    (template, template_path): (&str, &Path),
    member: &pool::Member,
) -> Result<(), Failure> {
    let name = &s.name;
    let v = Values {
        spawn: s,
        kernel,
        bridge: &env.bridge,
        mac: &member.mac,
        vif_script: &env.vif_script,
    };
    let when = format!("{} (warm: pool member {})", utc_now(), member.name);
    let text =
        render::render(template, &template_path.display().to_string(), &when, &v).or_else(fail)?;
    forget(env, name);
    std::fs::write(env.path(&format!("{name}.cfg")), text)
        .or_else(|e| fail(format!("cannot write {name}.cfg: {e}")))?;
    std::fs::write(
        env.path(&format!("{name}.domid")),
        format!("{}\n", member.domid),
    )
    .or_else(|e| fail(format!("cannot write {name}.domid: {e}")))
}

/// The token of member ID's data/ready watch.
fn ready_token(id: u32) -> String {
    format!("miniproxy-ready-{id}")
}

/// Why [`hand_over`] took no member.
enum Stop {
    /// A domain is named NAME.
    InUse(u32),
    /// A domain is named NAME, found once the member had NAME's
    /// configuration: the member was destroyed (the pool refills).
    InUseMemberLost(u32),
    /// A live instance has the spawn's address.
    Address(String),
    /// No candidate is still its domain's name and waiting.
    NoMember,
    /// xenstore failed before the commit: the spawn goes cold.
    Xs(XsError),
    /// The commit (or a write sent with it) failed: the member may have
    /// its configuration and NAME, or not.
    HandOver(pool::Member, String),
}

impl From<XsError> for Stop {
    fn from(e: XsError) -> Stop {
        Stop::Xs(e)
    }
}

/// The domains the last spawn of this process listed: their names are
/// read in the round trip that lists them again (a domain not among them
/// costs one more). The daemon (crate::serve) keeps them between spawns.
static KNOWN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A member's name, data/pool and vm keys (what the checks read), its
/// data/ready key and its ready watch's token.
fn member_keys(m: &pool::Member) -> [String; 5] {
    let home = format!("/local/domain/{}", m.domid);
    [
        format!("{home}/name"),
        format!("{home}/data/pool"),
        format!("{home}/vm"),
        format!("{home}/data/ready"),
        ready_token(m.domid),
    ]
}

/// Whether member `m` (its name, data/pool and vm as read) is still its
/// domain's name and waits: then the /vm/UUID path its rename writes.
fn still_waiting(env: &Env, m: &pool::Member, got: &[Option<String>]) -> Option<String> {
    if got[0].as_deref() != Some(m.name.as_str()) || got[1].as_deref() != Some("waiting") {
        return None;
    }
    match xenstore::vm_path(m.domid, got[2].clone()) {
        Ok(vm) => Some(vm),
        Err(e) => {
            env.trace(&format!("pool member {}: {e}", m.name));
            None
        }
    }
}

/// In one transaction (xenstore's: a concurrent change makes the commit
/// fail and the whole run again), check that no domain is named NAME, no
/// live instance has the spawn's address, and the first of `cands` that
/// still has its name and says `data/pool=waiting`; write its
/// configuration key (dom0's, read-only for the guest: "n0 rID") and
/// rename it to NAME as `xl rename` does. Its data/ready is watched from
/// the first round trip on (the event of the guest's write then ends the
/// wait without polling), events before the commit dropped: the guest
/// cannot be ready before it has its configuration. A candidate that does
/// not wait costs one round trip (its watch and keys); one that does is
/// the spawn's, and its watch stays until the connection's next request.
/// The rename is libxl__domain_rename's (tools/libs/light/libxl_domain.c):
/// NAME unused by any domain, the member still named as it was, then both
/// /local/domain/ID/name and /vm/UUID/name (UUID from /local/domain/ID/vm,
/// which libxl writes at create); stub device-model domains, which libxl
/// renames along, are HVM-only. Also returns the member's console size
/// from before the commit.
fn hand_over(
    env: &Env,
    xs: &mut Xs,
    s: &Spawn,
    cands: &[pool::Member],
) -> Result<(pool::Member, u64), Stop> {
    let Some(first) = cands.first() else {
        // Cold, with the name checked here as a cold spawn's caller expects.
        return match xenstore::domid_of(xs, NO_TX, &s.name)? {
            Some(id) => Err(Stop::InUse(id)),
            None => Err(Stop::NoMember),
        };
    };
    let keys = member_keys(first);
    let watch = [Req::Watch(&keys[3], &keys[4])];
    let mut known: Vec<u32> = KNOWN.lock().map(|k| k.clone()).unwrap_or_default();
    for id in std::iter::once(0).chain(cands.iter().map(|m| m.domid)) {
        if !known.contains(&id) {
            known.push(id);
        }
    }
    let name = s.name.as_str();
    // Watches set in an attempt that met a concurrent change stay set: the
    // next attempt does not ask again (xenstored would refuse it).
    let mut watched = vec![first.domid];
    let mut con0 = 0;
    // The member whose writes went with the commit that was sent last.
    let mut committing: Option<pool::Member> = None;
    let taken = xs.transaction_after(&watch, 5, |xs, tx| -> Result<_, Stop> {
        committing = None;
        // The domain list, every known domain's name, the first
        // candidate's keys: one round trip.
        let name_keys: Vec<String> = known
            .iter()
            .map(|n| format!("/local/domain/{n}/name"))
            .collect();
        let mut reqs: Vec<Req<'_>> = vec![Req::Directory("/local/domain")];
        reqs.extend(name_keys.iter().map(|p| Req::Read(p)));
        reqs.extend(keys[..3].iter().map(|p| Req::Read(p)));
        let mut got = xs.batch(tx, &reqs)?;
        let first_got = got.split_off(got.len() - 3);
        let ids: Vec<u32> = xenstore::entries(got[0].as_deref().unwrap_or(""))
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect();
        let mut names: Vec<(u32, Option<String>)> =
            known.iter().copied().zip(got.drain(1..)).collect();
        let unknown: Vec<u32> = ids.iter().copied().filter(|n| !known.contains(n)).collect();
        if !unknown.is_empty() {
            let more: Vec<String> = unknown
                .iter()
                .map(|n| format!("/local/domain/{n}/name"))
                .collect();
            let refs: Vec<&str> = more.iter().map(String::as_str).collect();
            names.extend(unknown.iter().copied().zip(xs.read_many(tx, &refs)?));
        }
        if let Ok(mut k) = KNOWN.lock() {
            k.clone_from(&ids);
        }
        if let Some((id, _)) = names
            .iter()
            .find(|(n, v)| ids.contains(n) && v.as_deref() == Some(name))
        {
            return Err(Stop::InUse(*id));
        }
        env.trace("name is free");
        if let Some(other) = ip_in_use(env, s, &records(env)) {
            return Err(Stop::Address(other));
        }
        let mut found = still_waiting(env, first, &first_got).map(|vm| (first, vm));
        for m in cands.iter().skip(1) {
            if found.is_some() {
                break;
            }
            // Its watch (outside the transaction) and its keys (within it).
            let k = member_keys(m);
            let mut at: Vec<(u32, Req<'_>)> = k[..3].iter().map(|p| (tx, Req::Read(p))).collect();
            if !watched.contains(&m.domid) {
                at.push((NO_TX, Req::Watch(&k[3], &k[4])));
                watched.push(m.domid);
            }
            let got = xs.batch_at(&at)?;
            found = still_waiting(env, m, &got[..3]).map(|vm| (m, vm));
        }
        let Some((m, vm)) = found else {
            return Err(Stop::NoMember);
        };
        let id = m.domid;
        let home = format!("/local/domain/{id}");
        let (config_key, name_key, vm_key) = (
            format!("{home}/miniproxy/config"),
            format!("{home}/name"),
            format!("{vm}/name"),
        );
        let reader = format!("r{id}");
        // Its console's size before it has its configuration: what it
        // prints from then on is shown if it fails.
        con0 = console_size(env, &m.name);
        xs.at_commit(&[
            Req::Write(&config_key, &s.cfgline),
            Req::SetPerms(&config_key, &["n0", reader.as_str()]),
            Req::Write(&name_key, name),
            Req::Write(&vm_key, name),
        ])?;
        committing = Some(m.clone());
        Ok(m.clone())
    });
    let taken = match (taken, committing) {
        (Ok(m), _) => m,
        (Err(Stop::Xs(e)), Some(m)) => return Err(Stop::HandOver(m, e.to_string())),
        (Err(e), _) => return Err(e),
    };
    xs.drop_events(&ready_token(taken.domid));
    Ok((taken, con0))
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
        // Each event is only a reason to look (those from before the
        // commit, the first of them sent when the watch was set, are gone).
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

#[cfg(test)]
mod tests;
