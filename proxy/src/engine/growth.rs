//! Connection buffers that follow need: grown while a buffer limits the
//! connection, shrunk back when memory is short.
//!
//! A connection's sockets are made at the size the `sizing` policy affords
//! then (with the window scale for `buf`, so they can grow). After each
//! splice step, a connection that a buffer was about to limit
//! (`Conn::pressed`: a transmit buffer half full, or a receive buffer half
//! full since the last step) has each socket's buffers doubled, up to `buf`,
//! while the ledger can pay for it without touching the reservation of
//! `buf_min` for every socket that may still come or the listening sockets'
//! pledges (spares are freed for it), and memory is not short.
//!
//! Memory is short when a listening socket made now would get only
//! `buf_min`; then the connections that are not limited halve their
//! buffers, one step per poll, down to `buf_min` and never below the data
//! they hold or the window they advertised (smoltcp refuses that, vendored
//! patch 16). So an idle connection whose last ACK advertised its whole
//! receive buffer keeps it (the peer may still send that much): it shrinks
//! only as far as that promise allows.

use super::sizing::size_ladder;
use super::Engine;

impl Engine {
    /// Grow or shrink connections' buffers as the module documentation says.
    /// Returns whether any changed.
    pub(super) fn resize_buffers(&mut self) -> bool {
        let (buf_min, buf) = self.sockets.ledger.buf_range();
        let mut changed = false;
        for i in 0..self.conns.len() {
            let c = self.conns[i];
            if !(c.client_ready && c.upstream_ready) {
                continue;
            }
            let short = self.sockets.ledger.short();
            for h in [c.client, c.upstream] {
                let size = self.sockets.size_of(h);
                let to = if c.pressed && !short {
                    size_ladder(buf_min, buf).find(|&s| s > size)
                } else if short && !c.pressed {
                    size_ladder(buf_min, buf).take_while(|&s| s < size).last()
                } else {
                    None
                };
                let Some(to) = to else { continue };
                if self.sockets.resize(h, to) {
                    changed = true;
                    if to < size {
                        self.sockets.stale = true;
                    }
                }
            }
        }
        changed
    }
}
