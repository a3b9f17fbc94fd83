//! The listen pools: `backlog` listening sockets per rule.
//!
//! smoltcp has no listen backlog: a SYN that finds no listening socket is
//! answered with RST. So every rule keeps a pool of listening sockets; when
//! one receives a SYN it leaves the pool (it is the client side of a new
//! connection) and the pool is refilled at once. Listening sockets made when
//! memory was short are re-created larger once it comes back (a connection
//! ended): a pool socket becomes the client side of the next connection,
//! whose window is fixed from the handshake on.
//!
//! A socket's pledge to its future upstream partner (see `sizing`) is made
//! with the [`Ledger`](super::ledger::Ledger) when it enters a pool and
//! withdrawn when it leaves; [`Listeners::push`], [`Listeners::insert`] and
//! [`Listeners::take`] are the only ways in and out.

use alloc::vec::Vec;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::time::Instant;

use super::address::Address;
use super::plan::{try_vec, EngineError};
use super::sizing::Role;
use super::sockets::Sockets;
use super::tuning::Tuning;
use crate::config::Rule;

/// Listening sockets of one rule.
#[derive(Debug)]
pub(super) struct RulePool {
    rule: Rule,
    listening: Vec<SocketHandle>,
}

/// Every rule's pool, in config order.
#[derive(Debug)]
pub(super) struct Listeners {
    pools: Vec<RulePool>,
    backlog: usize,
}

impl Listeners {
    /// Empty pools for `rules`, their lists reserved up front.
    pub(super) fn new(rules: &[Rule], backlog: usize) -> Result<Listeners, EngineError> {
        let mut pools = try_vec(rules.len(), "rule table")?;
        for r in rules {
            pools.push(RulePool {
                rule: *r,
                listening: try_vec(backlog, "listen pool")?,
            });
        }
        Ok(Listeners { pools, backlog })
    }

    /// The rule of pool `i`.
    pub(super) fn rule(&self, i: usize) -> Rule {
        self.pools[i].rule
    }

    /// Every listening socket with its rule index, rule by rule.
    pub(super) fn sockets(&self) -> impl Iterator<Item = (usize, SocketHandle)> + '_ {
        self.pools
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.listening.iter().map(move |&h| (i, h)))
    }

    fn push(&mut self, sockets: &mut Sockets, i: usize, h: SocketHandle) {
        sockets.ledger.pledge(&sockets.set, h);
        self.pools[i].listening.push(h);
    }

    fn insert(&mut self, sockets: &mut Sockets, i: usize, j: usize, h: SocketHandle) {
        sockets.ledger.pledge(&sockets.set, h);
        self.pools[i].listening.insert(j, h);
    }

    /// Take listening socket `j` of pool `i` out (order kept if `keep_order`).
    fn take(
        &mut self,
        sockets: &mut Sockets,
        i: usize,
        j: usize,
        keep_order: bool,
    ) -> SocketHandle {
        let h = if keep_order {
            self.pools[i].listening.remove(j)
        } else {
            self.pools[i].listening.swap_remove(j)
        };
        sockets.ledger.release(&sockets.set, h);
        h
    }

    /// Abort every listening socket (the address changed); `refill` re-creates
    /// them. Returns how many had taken a SYN since the last pass (refused).
    pub(super) fn drop_all(&mut self, sockets: &mut Sockets, now: Instant) -> u64 {
        let mut refused = 0;
        for i in 0..self.pools.len() {
            while !self.pools[i].listening.is_empty() {
                let h = self.take(sockets, i, 0, true);
                if sockets.tcp(h).state() == State::Listen {
                    sockets.tcp(h).abort(); // no peer yet: closes without sending anything
                    sockets.make_spare(h);
                } else {
                    // Took a SYN since the last pass: refuse it.
                    refused += 1;
                    sockets.abort(h, now);
                }
            }
        }
        refused
    }

    /// Top every rule's pool up to `backlog` listening sockets.
    pub(super) fn refill(
        &mut self,
        sockets: &mut Sockets,
        tune: &Tuning,
        addr: &Address,
        now: Instant,
    ) {
        if addr.own().is_none() {
            return; // nothing can reach us yet
        }
        for i in 0..self.pools.len() {
            let Some(ep) = addr.listen_endpoint(&self.pools[i].rule) else {
                continue;
            };
            while self.pools[i].listening.len() < self.backlog {
                let Some(h) = sockets.take(now, Role::Listen) else {
                    return;
                };
                let s = sockets.tcp(h);
                tune.apply(s);
                match s.listen(ep) {
                    Ok(()) => self.push(sockets, i, h),
                    Err(_) => {
                        // Cannot happen for a closed socket and a non-zero port;
                        // keep the socket rather than leak it.
                        sockets.make_spare(h);
                        return;
                    }
                }
            }
        }
    }

    /// Give listening sockets made when memory was short what the budget
    /// affords now (a large enough spare, or new buffers). Each pool socket
    /// is looked at once per call.
    pub(super) fn upgrade(
        &mut self,
        sockets: &mut Sockets,
        tune: &Tuning,
        addr: &Address,
        now: Instant,
    ) {
        if sockets.ledger.listeners_at_buf() {
            sockets.stale = false;
            return;
        }
        for i in 0..self.pools.len() {
            let Some(ep) = addr.listen_endpoint(&self.pools[i].rule) else {
                continue;
            };
            // The figures without the spares; recomputed after each replacement.
            let mut base = sockets.ledger.state(true);
            let mut j = 0;
            while j < self.pools[i].listening.len() {
                let h = self.pools[i].listening[j];
                let have = sockets.size_of(h);
                if have >= sockets.ledger.buf_range().1
                    || sockets.tcp(h).state() != State::Listen
                    || base.without_listener(have).size_for(Role::Listen) <= have
                {
                    j += 1;
                    continue;
                }
                self.take(sockets, i, j, true);
                sockets.tcp(h).abort(); // LISTEN: closes without sending anything
                sockets.free(h);
                if let Some(n) = sockets.take(now, Role::Listen) {
                    let s = sockets.tcp(n);
                    tune.apply(s);
                    if s.listen(ep).is_ok() {
                        self.insert(sockets, i, j, n);
                        j += 1;
                    } else {
                        sockets.make_spare(n);
                    }
                } // else the pool is one short; refill retries
                base = sockets.ledger.state(true);
            }
        }
        sockets.stale = false;
    }

    /// The next pool socket that received a SYN, taken out of its pool, with
    /// its rule index. `cursor` (start at `(0, 0)`) is where the scan resumes:
    /// taking a socket out touches no other pool socket, so one scan per
    /// accept pass finds them all.
    pub(super) fn next_accepted(
        &mut self,
        sockets: &mut Sockets,
        cursor: &mut (usize, usize),
    ) -> Option<(usize, SocketHandle)> {
        while let Some(pool) = self.pools.get(cursor.0) {
            let (i, j) = *cursor;
            let Some(&h) = pool.listening.get(j) else {
                *cursor = (i + 1, 0);
                continue;
            };
            if sockets.tcp(h).state() == State::Listen {
                cursor.1 += 1;
                continue;
            }
            // swap_remove: the socket moved into slot `j` is looked at next.
            self.take(sockets, i, j, false);
            return Some((i, h));
        }
        None
    }
}
