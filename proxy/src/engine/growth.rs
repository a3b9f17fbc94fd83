//! Connection buffers that follow need: grown while a buffer limits the
//! connection, shrunk back when memory is short.
//!
//! A connection's sockets are made at the size the `sizing` policy affords
//! then (with the window scale for `buf`, so they can grow). After each
//! splice step, a buffer that limited its connection (`Conn::pressed`: a
//! transmit buffer full with the other socket's data waiting, or a receive
//! buffer half full since the last step and then emptied) is doubled, up
//! to `buf`, while the ledger can pay for it without touching the
//! reservation of `buf_min` for every socket that may still come or the
//! listening sockets' pledges (spares are freed for it), and memory is not
//! short. Only that buffer grows: the other socket carries the same data
//! but grows when it fills in its turn, and the same socket's other
//! direction carries the other way's data (a download's requests), so the
//! memory goes where the window is short: on 45+5 ms legs the long leg's
//! sender's transmit buffer, on 5+45 the long leg's receiver's receive
//! buffer. (When a socket's two buffers grew together, a download on 45+5
//! paid twice for the window it needed and at 16 MiB got 2m of `buf=4m`.)
//!
//! A socket whose receive buffer delivered more than half of itself in one
//! round trip of its leg (module `rightsize`: the sender is at the window)
//! grows that buffer on the same terms straight to the ladder size it asked
//! for (the largest the ledger affords between that and the next size up).
//!
//! Memory is short when a listening socket made now would get only
//! `buf_min`; then the connections that are not limited halve their
//! buffers, each direction one step per poll, down to `buf_min` and never
//! below the data they hold or the window they advertised (smoltcp refuses
//! that, vendored patch 16). So an idle connection whose last ACK advertised its whole
//! receive buffer keeps it (the peer may still send that much): it shrinks
//! only as far as that promise allows.

use super::ledger::Dir;
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
            let limited = c.pressed.iter().any(|p| p.any());
            // A buffer that limited the connection was refused the memory.
            let mut starved = false;
            for (side, h) in [c.client, c.upstream].into_iter().enumerate() {
                let short = self.sockets.ledger.short();
                let rx = self.sockets.dir_size(h, Dir::Rx);
                let asked = self.conns[i].rcv[side].take_want(rx, buf_min, buf);
                if let (Some(asked), false) = (asked, short) {
                    // The largest size from `asked` down the ladder that the
                    // ledger (and the heap) affords.
                    let mut to = asked;
                    let mut grown = false;
                    while to > rx && !grown {
                        grown = self.sockets.resize(h, Dir::Rx, to);
                        to = size_ladder(buf_min, buf)
                            .take_while(|&s| s < to)
                            .last()
                            .unwrap_or(0);
                    }
                    if grown {
                        changed = true;
                        continue;
                    }
                    starved = true;
                }
                let pressed = c.pressed[side];
                for (dir, pressed) in [(Dir::Rx, pressed.rx), (Dir::Tx, pressed.tx)] {
                    let size = self.sockets.dir_size(h, dir);
                    let to = if pressed && !short {
                        size_ladder(buf_min, buf).find(|&s| s > size)
                    } else if short && !limited {
                        size_ladder(buf_min, buf).take_while(|&s| s < size).last()
                    } else {
                        None
                    };
                    let Some(to) = to else { continue };
                    if self.sockets.resize(h, dir, to) {
                        changed = true;
                        if to < size {
                            self.sockets.stale = true;
                        }
                    } else if to > size {
                        starved = true;
                    }
                }
            }
            if starved {
                changed |= self.shrink_idle_way(i);
            }
        }
        changed
    }

    /// Connection `i` needs memory the ledger would not give: the buffers of
    /// a way its data does not flow now (both empty, neither limiting), such
    /// as a download's request way (the client side's receive buffer, the
    /// upstream side's transmit buffer), shrink one step toward `buf_min`.
    /// smoltcp keeps a receive buffer that holds the window it advertised.
    /// They grow again when that way's data fills them. Returns whether any
    /// changed.
    fn shrink_idle_way(&mut self, i: usize) -> bool {
        let (buf_min, buf) = self.sockets.ledger.buf_range();
        let c = self.conns[i];
        let ways = [
            // Client to server: the client side receives, upstream sends.
            (c.client, c.upstream, c.pressed[0].rx || c.pressed[1].tx),
            // Server to client.
            (c.upstream, c.client, c.pressed[1].rx || c.pressed[0].tx),
        ];
        let mut changed = false;
        for (from, to, pressed) in ways {
            let idle =
                self.sockets.tcp(from).recv_queue() == 0 && self.sockets.tcp(to).send_queue() == 0;
            if pressed || !idle {
                continue;
            }
            for (h, dir) in [(from, Dir::Rx), (to, Dir::Tx)] {
                let size = self.sockets.dir_size(h, dir);
                let Some(less) = size_ladder(buf_min, buf).take_while(|&s| s < size).last() else {
                    continue;
                };
                if self.sockets.resize(h, dir, less) {
                    self.sockets.stale = true;
                    changed = true;
                }
            }
        }
        changed
    }
}
