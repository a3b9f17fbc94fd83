//! Draining before a stop: no new connections, a grace time for the open
//! ones, then both sides of what is left reset.
//!
//! [`Engine::start_drain`] closes every rule's listening sockets (a SYN
//! that finds no listener is answered with an RST by smoltcp) and empties
//! the rule pools, so nothing refills them. Open connections go on being
//! spliced until they end or `timeout` passes; then (in the first poll at or
//! after the deadline, which [`Engine::poll_delay`] wakes for) both sockets
//! of each are aborted, and the same poll transmits their RSTs. The
//! caller polls until [`Engine::drained`]: no connection left and no RST
//! still to send (a dying socket is given up after the pool's RST grace
//! time, so this comes within a bounded time even on a dead link).

use smoltcp::time::{Duration, Instant};

use super::listeners::Listeners;
use super::Engine;

impl Engine {
    /// Stop accepting and give the open connections until `now + timeout`
    /// to finish. Calling it again does not move the deadline.
    pub fn start_drain(&mut self, now: Instant, timeout: Duration) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(now + timeout);
        self.now = now;
        self.drop_listeners();
        // Empty pools: nothing to refill, nothing accepted from now on.
        if let Ok(none) = Listeners::new(&[], 0) {
            self.listeners = none;
        }
        self.more_work = true;
        log::info!(
            "proxy: draining: listeners closed, {} connections have {timeout} to finish",
            self.conns.len()
        );
    }

    /// Whether a drain was started.
    pub fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// The drain is over: no connection is held and every RST was sent (or
    /// given up on). Always false before [`Engine::start_drain`].
    pub fn drained(&self) -> bool {
        self.draining() && self.conns.is_empty() && self.sockets.dying_deadlines().next().is_none()
    }

    /// When the drain resets what is left, if a drain runs and anything is.
    pub(super) fn drain_at(&self) -> Option<Instant> {
        self.drain_deadline.filter(|_| !self.conns.is_empty())
    }

    /// At or past the drain deadline: reset both sides of every connection
    /// left (counted as `drain_resets`). Called at the start of each poll,
    /// so the RSTs go out in that poll's egress.
    pub(super) fn drain_expired(&mut self, now: Instant) {
        if self.drain_at().is_none_or(|t| now < t) {
            return;
        }
        let n = self.conns.len();
        while let Some(c) = self.conns.pop() {
            self.ports.set(c.local_port, false);
            self.sockets.retire(c.client, now);
            self.sockets.retire(c.upstream, now);
        }
        self.stats.drain_resets += n as u64;
        self.idle_since = now;
        log::info!("proxy: drain_timeout: reset {n} connections");
    }
}

/// How long [`Engine::drained`] can take after the drain deadline at most,
/// on a link that never takes a frame: the socket pool's RST grace time.
pub const RST_FLUSH_BOUND: Duration = super::sockets::RST_GRACE;
