//! Connection buffers that follow need: grown while a buffer limits the
//! connection, shrunk back when memory is short.
//!
//! A connection's sockets are made at the size the `sizing` policy affords
//! then (with the window scale for `buf`, so they can grow). After each
//! splice step, a socket whose buffer limited its connection
//! (`Conn::pressed`: its transmit buffer full with the other socket's data
//! waiting, or its receive buffer half full since the last step and then
//! emptied) has its buffers doubled, up to `buf`,
//! while the ledger can pay for it without touching the reservation of
//! `buf_min` for every socket that may still come or the listening sockets'
//! pledges (spares are freed for it), and memory is not short. Only that
//! socket grows: the other one carries the same data but grows when it
//! fills in its turn, so the memory goes where the window is short (on
//! 45+5 ms legs the long leg's sender, not the short leg's receiver, which
//! took it first when both grew and memory afforded only one; on 5+45 the
//! long leg's receiver, not the short leg's sender, whose transmit buffer
//! holds that leg's bandwidth-delay product without being short).
//!
//! A socket whose receive buffer delivered more than half of itself in one
//! round trip of its leg (module `rightsize`: the sender is at the window)
//! grows on the same terms straight to the ladder size it asked for (the
//! largest the ledger affords between that and the next size up).
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
            for (side, h) in [c.client, c.upstream].into_iter().enumerate() {
                let size = self.sockets.size_of(h);
                let asked = self.conns[i].rcv[side].take_want(size, buf_min, buf);
                if let (Some(asked), false) = (asked, short) {
                    // The largest size from `asked` down the ladder that the
                    // ledger (and the heap) affords.
                    let mut to = asked;
                    let mut grown = false;
                    while to > size && !grown {
                        grown = self.sockets.resize(h, to);
                        to = size_ladder(buf_min, buf)
                            .take_while(|&s| s < to)
                            .last()
                            .unwrap_or(0);
                    }
                    if grown {
                        changed = true;
                        continue;
                    }
                }
                let limited = c.pressed.contains(&true);
                let to = if c.pressed[side] && !short {
                    size_ladder(buf_min, buf).find(|&s| s > size)
                } else if short && !limited {
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
