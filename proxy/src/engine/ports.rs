//! The ephemeral ports upstream connections are opened from.
//!
//! smoltcp's `connect` needs a local port and does not pick one. The rules'
//! listen ports are marked in use too (when in the range), so an upstream
//! socket never takes a port a rule listens on; ports are handed out in
//! rotation from a seeded start, so one just freed is reused as late as
//! possible (its old connection may linger in the peer's TIME-WAIT).

/// First port of the range upstream connections are opened from.
pub const EPHEMERAL_FIRST: u16 = 49152;
const EPHEMERAL_COUNT: usize = 65536 - EPHEMERAL_FIRST as usize;

/// Ports 49152..=65535 in use by upstream sockets.
#[derive(Debug)]
pub(super) struct PortMap {
    used: [u64; EPHEMERAL_COUNT / 64],
    next: usize,
}

impl PortMap {
    /// No port in use; the rotation starts at a point chosen by `seed`.
    pub(super) fn new(seed: u64) -> PortMap {
        PortMap {
            used: [0; EPHEMERAL_COUNT / 64],
            next: (seed as usize) % EPHEMERAL_COUNT,
        }
    }
    /// Mark `port` in use or free (ports outside the range are ignored).
    pub(super) fn set(&mut self, port: u16, on: bool) {
        if port >= EPHEMERAL_FIRST {
            let i = (port - EPHEMERAL_FIRST) as usize;
            if on {
                self.used[i / 64] |= 1 << (i % 64);
            } else {
                self.used[i / 64] &= !(1 << (i % 64));
            }
        }
    }
    /// The next free port after the last one handed out (rotating, so a port
    /// is reused as late as possible).
    pub(super) fn alloc(&mut self) -> Option<u16> {
        for step in 0..EPHEMERAL_COUNT {
            let i = (self.next + step) % EPHEMERAL_COUNT;
            if self.used[i / 64] & (1 << (i % 64)) == 0 {
                self.used[i / 64] |= 1 << (i % 64);
                self.next = (i + 1) % EPHEMERAL_COUNT;
                return Some(EPHEMERAL_FIRST + i as u16);
            }
        }
        None
    }
}
