//! The daemon's prepared hand-over (crate::serve): while it is idle, the
//! daemon starts a xenstore transaction on one of its connections and reads
//! in it what a warm spawn's checks need (the domain list, every domain's
//! name, each pool member's name, data/pool and vm), and leaves it open
//! ([`Xs::hold`]). A spawn on that connection then decides the checks from
//! those values and sends the ready watch, the writes and the commit in one
//! round trip: two round trips from request to reply instead of four.
//!
//! The configuration key is written outside the transaction, first in
//! that round trip: the member configures itself while xenstored works
//! through the rename and the commit (the commit's round trip is the
//! costliest under TCG), and the daemon writes NAME's records meanwhile.
//! The member's data/pool, which the guest changes once configured, is
//! therefore read outside the transaction. Only dom0's spawns, under the
//! global lock, write a member's configuration key, and the pool's records
//! (read under that lock) name only members no spawn took, so the key goes
//! to a member no one else hands over.
//!
//! It is safe because C xenstored (xenstored_transaction.c) fails a commit
//! with EAGAIN, applying nothing, when any node the transaction read has
//! changed since (a domain created or gone changes /local/domain, a rename
//! a name, a member taken its data/pool). Then, and on any other failure
//! before the commit is acknowledged, the spawn takes the full path
//! (crate::warm::hand_over), which reads everything again; but if the
//! member has its configuration by then, it is renamed in a transaction
//! of its own ([`rename_configured`]).

use super::{member_keys, still_waiting, Stop, KNOWN};
use crate::args::Spawn;
use crate::env::Env;
use crate::pool;
use crate::spawn::{console_size, ip_in_use, records};
use crate::xenstore::{self, domains_and_name_paths, Held, Req, Tx, Xs, XsError, NO_TX};
use std::time::{Duration, Instant};

/// A preparation older than this is abandoned, not used. Under TCG the
/// pool's domains change every few seconds at most while spawns come (a
/// refill's create, a stop), and each such change already fails the
/// commit, so the age bound is not what keeps it correct; it bounds how
/// long a transaction the daemon no longer needs stays open in xenstored
/// (it holds memory there) and how stale a snapshot an error reply ("name
/// in use", which is confirmed by a commit) may start from. 30 s is far
/// longer than the gaps between a benchmark's spawns and far shorter than
/// the daemon's life; while idle the daemon replaces its transaction every
/// 20 s (crate::serve). A limit: C xenstored's live update waits for a
/// moment without open transactions (or, forced, for all of them to be
/// old), which a daemon that nearly always holds a fresh one rarely gives;
/// stop the daemon before updating xenstored.
pub const PREPARED_MAX_AGE: Duration = Duration::from_secs(30);

const DOMAINS: &str = "/local/domain";

fn name_key(id: u32) -> String {
    format!("{DOMAINS}/{id}/name")
}

/// Prepare a hand-over on `xs` (abandoning one it held): start a
/// transaction and read in it the domain list, every domain's name and
/// the keys of each pool member that waits, then hold it. Nothing is
/// held when no member waits. Three round trips (the start; the domain
/// list and the members' keys; the names of domains it did not know and
/// the waiting members' keys within it), on a connection no request
/// holds.
pub fn prepare(env: &Env, xs: &mut Xs) -> Result<(), XsError> {
    // Its abort goes with the next request (the start below).
    xs.drop_held();
    let members = pool::recorded(env);
    if members.is_empty() {
        return Ok(());
    }
    let got = xs.batch(NO_TX, &[Req::TransactionStart])?;
    let since = Instant::now();
    let id = got.into_iter().next().flatten().unwrap_or_default();
    let Ok(tx) = id.parse::<Tx>() else {
        return Err(XsError::Protocol(format!("transaction id {id:?}")));
    };
    match read_all(xs, tx, &members) {
        Ok(reads) if reads.is_empty() => {
            xs.abandon(tx);
            env.trace("no pool member waits: no hand-over prepared");
            Ok(())
        }
        Ok(reads) => {
            xs.hold(Held { tx, since, reads });
            env.trace(&format!(
                "hand-over prepared ({} pool members)",
                members.len()
            ));
            Ok(())
        }
        Err(e) => {
            xs.abandon(tx);
            Err(e)
        }
    }
}

/// Within `tx`: the domain list and the names of the domains known from
/// the last listing (and dom0's, and the members'), with every member's
/// keys read outside it; then within it the names of listed domains not
/// among them and the keys of the members that wait. A member that does
/// not wait yet (one a refill boots) is not read within it: its data/pool
/// changes when it is ready and would fail the commit for nothing. Empty
/// if no member waits.
fn read_all(
    xs: &mut Xs,
    tx: Tx,
    members: &[pool::Member],
) -> Result<Vec<(String, Option<String>)>, XsError> {
    let mut known: Vec<u32> = KNOWN.lock().map(|k| k.clone()).unwrap_or_default();
    for id in std::iter::once(0).chain(members.iter().map(|m| m.domid)) {
        if !known.contains(&id) {
            known.push(id);
        }
    }
    let mut paths: Vec<String> = vec![DOMAINS.into()];
    paths.extend(known.iter().map(|&id| name_key(id)));
    let keys: Vec<[String; 5]> = members.iter().map(member_keys).collect();
    let mut reqs: Vec<(Tx, Req<'_>)> = vec![(tx, Req::Directory(DOMAINS))];
    reqs.extend(paths[1..].iter().map(|p| (tx, Req::Read(p))));
    reqs.extend(
        keys.iter()
            .flat_map(|k| k[..3].iter().map(|p| (NO_TX, Req::Read(p)))),
    );
    let mut got = xs.batch_at(&reqs)?;
    let outside = got.split_off(paths.len());
    let ids = listed(got[0].as_deref());
    let mut reads: Vec<(String, Option<String>)> = paths.into_iter().zip(got).collect();
    let mut more: Vec<String> = ids
        .iter()
        .filter(|id| !known.contains(id))
        .map(|&id| name_key(id))
        .collect();
    // A waiting member's name and vm within it; its data/pool as read
    // outside (the guest changes it once configured, which the hand-over
    // lets it do before the commit).
    let mut pool_states = Vec::new();
    for (m, (k, v)) in members.iter().zip(keys.iter().zip(outside.chunks(3))) {
        if v[0].as_deref() == Some(m.name.as_str()) && v[1].as_deref() == Some("waiting") {
            more.extend([k[0].clone(), k[2].clone()]);
            pool_states.push((k[1].clone(), v[1].clone()));
        }
    }
    if let Ok(mut k) = KNOWN.lock() {
        k.clone_from(&ids);
    }
    if pool_states.is_empty() {
        return Ok(Vec::new());
    }
    let refs: Vec<&str> = more.iter().map(String::as_str).collect();
    let again = xs.read_many(tx, &refs)?;
    reads.extend(more.into_iter().zip(again));
    reads.extend(pool_states);
    Ok(reads)
}

/// The domain ids of a /local/domain listing.
fn listed(joined: Option<&str>) -> Vec<u32> {
    xenstore::entries(joined.unwrap_or(""))
        .iter()
        .filter_map(|d| d.parse().ok())
        .collect()
}

/// How a prepared hand-over ended.
pub(super) enum Prep {
    /// The member is NAME's, with its console's size before the commit.
    Done(pool::Member, u64),
    /// Decided, as the full path would have: no fallback.
    Stop(Stop),
    /// Not used, or its commit failed and nothing was applied: why; the
    /// full path follows.
    Full(String),
    /// The commit failed (the error: nothing within it applied), but the
    /// member has its configuration: it is renamed on its own
    /// ([`rename_configured`]). With its /vm/UUID path and console size.
    Configured(pool::Member, String, u64, XsError),
}

/// The hand-over from the transaction `xs` holds, if it holds one not
/// older than `max_age`: the checks from its reads, then the member's
/// ready watch, its configuration key and that key's permissions (outside
/// it), the two name keys and the commit (within it) in one round trip.
/// `meanwhile` runs for the member once they are sent (NAME's records).
pub(super) fn hand_over(
    env: &Env,
    xs: &mut Xs,
    s: &Spawn,
    cands: &[pool::Member],
    max_age: Duration,
    meanwhile: &mut dyn FnMut(&pool::Member),
) -> Prep {
    let Some(h) = xs.take_held() else {
        return Prep::Full("none held".into());
    };
    let age = h.since.elapsed();
    if age > max_age {
        xs.abandon(h.tx);
        return Prep::Full(format!("{} ms old", age.as_millis()));
    }
    let Some(Some(listing)) = h.get(DOMAINS) else {
        xs.abandon(h.tx);
        return Prep::Full("no domain list".into());
    };
    let mut in_use = None;
    for id in listed(Some(listing)) {
        match h.get(&name_key(id)) {
            Some(v) if v.as_deref() == Some(s.name.as_str()) => in_use = Some(id),
            Some(_) => {}
            None => {
                xs.abandon(h.tx);
                return Prep::Full(format!("domain {id}'s name not read"));
            }
        }
    }
    if let Some(id) = in_use {
        // Only if the reads are still current: a read-only commit says so
        // (a domain of that name destroyed since fails it).
        return match xs.batch(h.tx, &[Req::TransactionEnd(true)]) {
            Ok(_) => Prep::Stop(Stop::InUse(id)),
            Err(e) => Prep::Full(e.to_string()),
        };
    }
    env.trace("name is free (prepared)");
    if let Some(other) = ip_in_use(env, s, &records(env)) {
        xs.abandon(h.tx);
        return Prep::Stop(Stop::Address(other));
    }
    let found = cands.iter().find_map(|m| {
        let keys = member_keys(m);
        let got: Option<Vec<Option<String>>> =
            keys[..3].iter().map(|k| h.get(k).cloned()).collect();
        still_waiting(env, m, &got?).map(|vm| (m, vm))
    });
    let Some((m, vm)) = found else {
        xs.abandon(h.tx);
        return Prep::Full("no prepared member waits".into());
    };
    let keys = member_keys(m);
    let home = format!("{DOMAINS}/{}", m.domid);
    let (config_key, name_key, vm_key) = (
        format!("{home}/miniproxy/config"),
        format!("{home}/name"),
        format!("{vm}/name"),
    );
    let reader = format!("r{}", m.domid);
    let perms = ["n0", reader.as_str()];
    let tx = h.tx;
    // The watch first: the guest cannot be ready before it is set.
    let reqs = [
        (NO_TX, Req::Watch(&keys[3], &keys[4])),
        (NO_TX, Req::Write(&config_key, &s.cfgline)),
        (NO_TX, Req::SetPerms(&config_key, &perms)),
        (tx, Req::Write(&name_key, &s.name)),
        (tx, Req::Write(&vm_key, &s.name)),
        (tx, Req::TransactionEnd(true)),
    ];
    // What it prints from its configuration on is shown if it fails.
    let con0 = console_size(env, &m.name);
    let mut replies = match xs.batch_each_meanwhile(&reqs, &mut || meanwhile(m)) {
        Ok(r) => r,
        // Refused before anything was sent (a request too long for the
        // wire): the full path meets it where today's does.
        Err(e) if xs.usable() => {
            xs.abandon(tx);
            return Prep::Full(e.to_string());
        }
        // The commit may or may not have been applied.
        Err(e) => return Prep::Stop(Stop::HandOver(m.clone(), e.to_string())),
    };
    match replies.pop() {
        Some(Ok(_)) => {}
        // Nothing within it applied (EAGAIN: a read changed; ENOENT:
        // xenstored no longer knows the transaction), but the member has
        // its configuration: renamed on its own.
        Some(Err(e)) if matches!(replies.get(1), Some(Ok(_))) => {
            xs.drop_first_event(&keys[4]);
            return Prep::Configured(m.clone(), vm, con0, e);
        }
        Some(Err(e)) => {
            // Nothing applied at all. The full path sets the watch again,
            // after this one is removed.
            xs.release_watches();
            return Prep::Full(e.to_string());
        }
        None => {
            let e = XsError::Protocol("commit a transaction: no reply".into());
            return Prep::Stop(Stop::HandOver(m.clone(), e.to_string()));
        }
    }
    // Committed: a write refused within it leaves the member half handed
    // over, as the full path's (Xs::at_commit).
    if let Some(Err(e)) = replies[1..].iter().find(|r| r.is_err()) {
        return Prep::Stop(Stop::HandOver(m.clone(), e.to_string()));
    }
    if let Some(Err(e)) = replies.first() {
        // Ready is then read once a second (await_ready).
        env.trace(&format!("{e}: no ready watch"));
    }
    // Its first event came at once, before the guest had its key; a later
    // one may be its ready already.
    xs.drop_first_event(&keys[4]);
    Prep::Done(m.clone(), con0)
}

/// Why [`rename_configured`] did not rename the member.
pub(super) enum NotRenamed {
    /// Another domain is named NAME (decided as the full path would).
    InUse(u32),
    /// The member's domain is gone: the configuration key was written
    /// to a home no domain has (removed again).
    Gone,
    /// The member is named so now (by hand): it has NAME's configuration
    /// but not its name.
    Renamed(String),
    /// xenstore failed: the member has NAME's configuration, and its name
    /// or not.
    Failed(XsError),
}

impl From<XsError> for NotRenamed {
    fn from(e: XsError) -> NotRenamed {
        NotRenamed::Failed(e)
    }
}

/// Member `m` has NAME's configuration, but the prepared commit failed:
/// rename it (its name and `vm`'s, as the full path does) in a
/// transaction of its own, if no domain is named NAME and it still has its
/// pool name. Four round trips: the start, the domain list, every name,
/// the writes with the commit.
pub(super) fn rename_configured(
    xs: &mut Xs,
    s: &Spawn,
    m: &pool::Member,
    vm: &str,
) -> Result<(), NotRenamed> {
    let home = format!("{DOMAINS}/{}", m.domid);
    let (own_key, vm_key) = (name_key(m.domid), format!("{vm}/name"));
    let renamed = xs.transaction(5, |xs, tx| -> Result<(), NotRenamed> {
        let (ids, paths) = domains_and_name_paths(xs, tx)?;
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let names = xs.read_many(tx, &refs)?;
        let mut own = None;
        for (id, n) in ids.into_iter().zip(names) {
            if id == m.domid {
                own = n;
            } else if n.as_deref() == Some(s.name.as_str()) {
                return Err(NotRenamed::InUse(id));
            }
        }
        match own {
            None => Err(NotRenamed::Gone),
            Some(n) if n != m.name => Err(NotRenamed::Renamed(n)),
            Some(_) => {
                xs.at_commit(&[Req::Write(&own_key, &s.name), Req::Write(&vm_key, &s.name)])?;
                Ok(())
            }
        }
    });
    if let Err(NotRenamed::Gone) = renamed {
        // Only the key written is there: the home libxl removed with the
        // domain (domids are not reused while this runs).
        xs.rm(&home)?;
    }
    renamed
}

#[cfg(test)]
mod tests;
