//! The engine's counters and their one-line `px_KEY=VALUE` form (`stats:` in
//! the logs, and part of the guest's `data/stats`; scripts parse it, so the
//! keys are fixed: see the top-level README, "The stats line").

use core::fmt;

/// Counters. `active` is the number of connections currently held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted (a SYN was taken by a pool socket and not refused).
    pub accepted: u64,
    /// Connections currently held (handshaking, spliced or closing).
    pub active: usize,
    /// SYNs refused because `max_conns` was reached, memory ran out, or a
    /// transparent connection was addressed to the instance itself (or was IPv6). (A SYN that
    /// finds the listen pool empty is reset by smoltcp itself and not counted.)
    pub refused: u64,
    /// Upstream refused, unreachable or not connected within `connect_timeout`.
    pub upstream_failures: u64,
    /// Connections ended by a reset (or smoltcp timeout) from the client side.
    pub client_resets: u64,
    /// Connections ended by a reset (or smoltcp timeout) from the upstream side.
    pub upstream_resets: u64,
    /// Connections aborted by the idle timeout or an unfinished client handshake.
    pub timeouts: u64,
    /// Connections that ended with both directions closed by FIN.
    pub completed: u64,
    /// Bytes moved client → upstream.
    pub bytes_up: u64,
    /// Bytes moved upstream → client.
    pub bytes_down: u64,
    /// Bytes held by socket buffers now (every socket's RX + TX buffer).
    pub buf_bytes: usize,
    /// The most `buf_bytes` has been.
    pub buf_peak: usize,
    /// Gratuitous ARP announcements sent (three each time an address is set).
    pub garp: u64,
    /// Connections reset by a drain at its `drain_timeout` (see `Engine::start_drain`).
    pub drain_resets: u64,
}

impl Stats {
    /// All resets, from either side.
    pub fn resets(&self) -> u64 {
        self.client_resets + self.upstream_resets
    }
}

/// One line of `px_KEY=VALUE` tokens (the `px_` part of the guest's
/// `data/stats`, format in the top-level README, "The stats line").
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "px_accepted={} px_active={} px_refused={} px_upstream_fail={} px_resets={} \
             px_client_resets={} px_upstream_resets={} px_timeouts={} px_completed={} \
             px_bytes_up={} px_bytes_down={} px_buf_bytes={} px_buf_peak={} px_garp={} \
             px_drain_resets={}",
            self.accepted,
            self.active,
            self.refused,
            self.upstream_failures,
            self.resets(),
            self.client_resets,
            self.upstream_resets,
            self.timeouts,
            self.completed,
            self.bytes_up,
            self.bytes_down,
            self.buf_bytes,
            self.buf_peak,
            self.garp,
            self.drain_resets
        )
    }
}
