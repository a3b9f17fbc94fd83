//! Half-open clients: a SYN takes a connection slot before the client has
//! proved it exists, so spoofed SYNs (whose SYN-ACKs go nowhere) must not
//! hold slots for long.
//!
//! * A client that has not completed its handshake within `syn_timeout`
//!   (default 3 s, far shorter than `connect_timeout`) is dropped with its
//!   upstream side (counted as a timeout).
//! * When a SYN arrives with all `max_conns` slots taken, the oldest
//!   half-open connection is dropped to make room, so a flood cannot lock
//!   real clients out: it can only push out its own SYNs.
//!
//! * Under pressure, i.e. with [`DEFER_FRACTION`]ths of `max_conns` or more
//!   half-open clients (8 of the default 64; always below 8 slots), a new
//!   connection's upstream side is opened only once its client has
//!   completed the handshake, so spoofed SYNs cannot make the backend open
//!   connections: at most that many at a time, and none once a flood fills
//!   the slots. Without pressure both handshakes overlap, which saves a
//!   new connection's first exchange at least the shorter of its two legs'
//!   round trips, at most `min(client RTT, 2 x upstream RTT)` (measured in
//!   the simulator: `tests/flood.rs`), worth keeping when nothing attacks.
//!
//! The sockets of a half-open connection that timed out go back to the pool
//! like any other's (`sockets`: dying until their RST is sent, reclaimed if
//! it is stuck and the pool needs them); those of an evicted one become
//! spares at once, since the new SYN needs them now.
//!
//! Not done: SYN cookies. smoltcp's listening socket answers a SYN by
//! becoming that connection's socket (state, buffers and all); a stateless
//! SYN-ACK would need a new path in `tcp::Socket::process` and the
//! interface (encode MSS/window scale in the ISS, check the returning ACK,
//! rebuild the connection from it on a free socket), a few hundred lines in
//! the vendored crate, not a small patch.

use smoltcp::socket::tcp::State;
use smoltcp::time::{Duration, Instant};

use super::splice::{Conn, End};
use super::Engine;

/// Pressure starts at `max_conns / DEFER_FRACTION` half-open clients.
pub(super) const DEFER_FRACTION: usize = 8;

/// The half-open policy's settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct HalfOpen {
    pub(super) syn_timeout: Duration,
    /// Half-open clients from which new connections wait for their client's
    /// handshake before opening upstream.
    pub(super) defer_from: usize,
}

impl HalfOpen {
    /// When `c`'s client handshake times out, if it is not done yet.
    pub(super) fn deadline(&self, c: &Conn) -> Option<Instant> {
        (!c.client_ready).then(|| c.started + self.syn_timeout)
    }
}

impl Engine {
    /// Whether the client side of `c` is still in its handshake.
    fn half_open(&mut self, c: &Conn) -> bool {
        !c.client_ready
            && matches!(
                self.sockets.tcp(c.client).state(),
                State::SynReceived | State::Listen
            )
    }

    /// Whether a connection accepted now should wait for its client's
    /// handshake before opening its upstream side (see the module docs).
    pub(super) fn defer_upstream(&self) -> bool {
        let half_open = self.conns.iter().filter(|c| !c.client_ready).count();
        half_open >= self.half_open_cfg.defer_from
    }

    /// Drop the connections whose client did not complete its handshake
    /// within `syn_timeout`. Returns whether any was dropped.
    pub(super) fn expire_half_open(&mut self, now: Instant) -> bool {
        let mut any = false;
        let mut i = self.conns.len();
        while i > 0 {
            i -= 1;
            let c = self.conns[i];
            if now >= c.started + self.half_open_cfg.syn_timeout && self.half_open(&c) {
                self.end_conn(i, End::Timeout, now);
                any = true;
            }
        }
        any
    }

    /// Make room for a new SYN: drop the oldest half-open connection.
    /// Returns whether a slot was freed.
    pub(super) fn evict_half_open(&mut self) -> bool {
        let mut oldest: Option<(usize, Instant)> = None;
        for i in 0..self.conns.len() {
            let c = self.conns[i];
            if self.half_open(&c) && oldest.is_none_or(|(_, t)| c.started < t) {
                oldest = Some((i, c.started));
            }
        }
        let Some((i, _)) = oldest else {
            return false;
        };
        log::debug!("proxy: all slots taken, dropping the oldest half-open client");
        // Its sockets are needed at once: they become spares straight away,
        // their RSTs sent only if a poll gets to them before they are reused
        // (the client's most likely goes to a spoofed address).
        let c = self.end_conn_keep_sockets(i, End::Timeout);
        self.sockets.tcp(c.client).abort();
        // An upstream socket never opened is still the spare it was.
        if c.upstream_open {
            self.sockets.tcp(c.upstream).abort();
        }
        self.sockets.make_spare(c.client);
        self.sockets.make_spare(c.upstream);
        true
    }
}
