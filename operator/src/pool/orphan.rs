//! Orphans of an interrupted hand-over: a pool member that has a spawn's
//! configuration but still its pool name. The daemon's prepared hand-over
//! (crate::warm::prepared) writes the configuration key outside the rename's
//! transaction, in the round trip of the commit; a daemon killed between
//! the two leaves a member that configured itself (its address is the
//! spawn's), became ready and says `data/pool=taken us=N`, under its pool
//! name and with its pool records: no spawn will take it (they take only
//! members that say `waiting`), and no later spawn sees its address in use
//! (that check looks at instances named as their records; NAME's, if the
//! daemon wrote them, are stale, and `list` drops them). Fill destroys it.
//!
//! An in-flight warm spawn has such a member too, for a few ms: between its
//! configuration write and its commit, and in the prepared hand-over's
//! fallback (`rename_configured`). Both run under the global lock
//! (`RUN_DIR/.lock`), so an orphan is destroyed only under that lock, once
//! its name and `data/pool` were read again under it.

use super::Member;
use crate::env::Env;
use crate::spawn::{self, forget};
use crate::{lock, xen};
use std::time::Duration;

/// How long a fill waits for the global lock to destroy orphans. A spawn
/// holds it for ms (a few hundred under TCG); a longer wait means a stuck
/// holder, and the orphan can wait for the next fill (it costs its memory
/// meanwhile, and the refill after the next warm spawn looks again).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Whether a member's `data/pool` says it took a configuration: the guest
/// writes `taken us=N` (kernel/src/runtime/xen.rs) just before
/// `data/ready`, and nothing else after `waiting`.
pub fn says_taken(data_pool: Option<&str>) -> bool {
    data_pool.is_some_and(|s| s.split_whitespace().next() == Some("taken"))
}

/// Destroy the orphans among `members` ([`super::Condition::Orphan`]), each
/// only if, read again under the global lock, it still has its pool name,
/// its pool records and `data/pool=taken`: a spawn that held the lock
/// meanwhile has renamed its member, or given it up.
/// If the lock cannot be taken within [`LOCK_WAIT`] they are left, and
/// said so.
pub fn clear(env: &Env, pool: &Env, members: &[Member]) {
    let orphans: Vec<&Member> = members.iter().filter(|m| m.is(super::Orphan)).collect();
    if orphans.is_empty() {
        return;
    }
    let global = env.path(".lock");
    let _global = match lock::take_within(&global, LOCK_WAIT) {
        Ok(Some(f)) => f,
        other => {
            let why = match other {
                Err(e) => format!("cannot take {}: {e}", global.display()),
                _ => format!(
                    "{} was held for {} s",
                    global.display(),
                    LOCK_WAIT.as_secs()
                ),
            };
            for m in &orphans {
                eprintln!(
                    "miniproxy pool: {} (domain {}) was configured by a spawn that did not finish (its pool name kept), but {why}; leaving it for the next fill",
                    m.name, m.domid
                );
            }
            return;
        }
    };
    for m in orphans {
        if !still_orphan(pool, m) {
            continue;
        }
        eprintln!(
            "miniproxy pool: {} (domain {}) was configured by a spawn that did not finish (its pool name kept); destroying it",
            m.name, m.domid
        );
        spawn::destroy(pool, &m.name, &m.domid.to_string());
        forget(pool, &m.name);
    }
}

/// Under the global lock: `m`'s records still give its domid, its domain
/// still has its pool name and says `data/pool=taken`.
fn still_orphan(pool: &Env, m: &Member) -> bool {
    spawn::domain_of(pool, &m.name) == Some(m.domid)
        && says_taken(xen::read(&format!("/local/domain/{}/data/pool", m.domid)).as_deref())
}
