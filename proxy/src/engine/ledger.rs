//! The one owner of the engine's buffer accounting.
//!
//! Every byte the engine's TCP sockets hold in buffers is counted here, and
//! nowhere else: what all sockets hold (`held`, and its high-water mark),
//! what the spares hold, and what listening sockets pledge to their future
//! upstream partners. The counts cannot drift from the sockets because the
//! [`Ledger`]'s methods are the only way to change them, and each one reads
//! the size from the socket itself rather than taking it from the caller:
//!
//! * one of the engine's TCP sockets enters the [`SocketSet`] only through
//!   [`Ledger::add`] and leaves it only through [`Ledger::remove`], so `held`
//!   and the socket count move with the set;
//! * the spare list lives here, so its byte count is its sum by construction;
//! * a listening socket's pledge is made by [`Ledger::pledge`] and withdrawn
//!   by [`Ledger::release`] (by the listen pools, when a socket enters or
//!   leaves one), with the size read from the socket both times.
//!
//! The ledger also keeps the reservation of the module `sizing`,
//! `held + (max_sockets - sockets) * 2 * buf_min <= buffer budget`:
//! [`Ledger::fits`] says whether a new socket of a given size keeps it, and
//! the socket pool only asks [`Ledger::add`] for sizes that fit. A connected
//! socket's buffers change size only through [`Ledger::resize`], one
//! direction at a time (a connection's receive and transmit buffers need not
//! be equal: a download wants a large receive buffer on its upstream side and
//! a large transmit buffer on its client side, and nothing on the other two),
//! which counts the difference and grows nothing beyond the reservation and
//! the pledges ([`Ledger::fits_growth`]). Listening sockets and spares have
//! equal directions: their size is one figure.

use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use super::sizing::{BufferState, Role};

/// One of a socket's two buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// The receive buffer: its size is the window the socket advertises.
    Rx,
    /// The transmit buffer: its size bounds the data in flight.
    Tx,
}

impl Dir {
    /// The size of this buffer of `s`.
    pub(super) fn capacity(self, s: &tcp::Socket<'_>) -> usize {
        match self {
            Dir::Rx => s.recv_capacity(),
            Dir::Tx => s.send_capacity(),
        }
    }
}

/// Counts of the engine's socket buffers. See the module documentation.
#[derive(Debug)]
pub(super) struct Ledger {
    /// The buffer budget: the memory budget less the fixed part of the plan.
    budget: usize,
    max_sockets: usize,
    buf_min: usize,
    buf: usize,
    /// Listening sockets the pools hold when full: `rules * backlog`.
    pool_slots: usize,
    /// Sockets of ours in the set (listening, connected, dying, spare).
    sockets: usize,
    /// Bytes held by our sockets' buffers now (RX + TX), and the most they held.
    held: usize,
    peak: usize,
    /// Finished sockets ready for reuse, with their per-direction buffer size
    /// (both directions equal).
    spares: Vec<(SocketHandle, usize)>,
    /// Bytes held by the spares' buffers: the sum over `spares`.
    spare_bytes: usize,
    /// Listening sockets, and the bytes they pledge to their future partners:
    /// `2 * (size - buf_min)` each.
    listening: usize,
    pledged: usize,
}

impl Ledger {
    /// An empty ledger. `spares` is the (empty) spare list, reserved up front
    /// for every socket the plan allows.
    pub(super) fn new(
        budget: usize,
        max_sockets: usize,
        (buf_min, buf): (usize, usize),
        pool_slots: usize,
        spares: Vec<(SocketHandle, usize)>,
    ) -> Ledger {
        debug_assert!(spares.is_empty());
        Ledger {
            budget,
            max_sockets,
            buf_min,
            buf,
            pool_slots,
            sockets: 0,
            held: 0,
            peak: 0,
            spares,
            spare_bytes: 0,
            listening: 0,
            pledged: 0,
        }
    }

    /// Per-direction buffer size of one of our sockets whose directions are
    /// equal (listening sockets, spares).
    fn size_of(set: &SocketSet<'static>, h: SocketHandle) -> usize {
        set.get::<tcp::Socket>(h).recv_capacity()
    }

    /// Bytes held by one of our sockets' buffers, both directions.
    fn bytes_of(set: &SocketSet<'static>, h: SocketHandle) -> usize {
        let s = set.get::<tcp::Socket>(h);
        s.recv_capacity() + s.send_capacity()
    }

    /// Bytes a listening socket with `size`-byte buffers pledges to its partner.
    fn pledge_of(&self, size: usize) -> usize {
        2 * (size - self.buf_min)
    }

    /// Whether one more socket with `size`-byte buffers keeps the reservation
    /// of `buf_min` for every other socket that may still come.
    pub(super) fn fits(&self, size: usize) -> bool {
        if self.sockets >= self.max_sockets {
            return false;
        }
        let reserve = (self.max_sockets - self.sockets - 1).saturating_mul(2 * self.buf_min);
        self.held.saturating_add(2 * size).saturating_add(reserve) <= self.budget
    }

    /// What the buffer budget has beyond the reservation of `buf_min` for
    /// every socket that may still come, pledges not deducted.
    fn unpledged(&self) -> usize {
        let reserve = (self.max_sockets - self.sockets).saturating_mul(2 * self.buf_min);
        self.budget
            .saturating_sub(self.held)
            .saturating_sub(reserve)
    }

    /// Whether one buffer of a socket may grow from `from` to `to` bytes:
    /// the reservation and the listening sockets' pledges are kept (a grown
    /// connection never takes what a new one is promised), and memory is not
    /// short afterwards.
    pub(super) fn fits_growth(&self, from: usize, to: usize) -> bool {
        if to <= from {
            return true;
        }
        if to > self.buf || self.unpledged().saturating_add(from) < to.saturating_add(self.pledged)
        {
            return false;
        }
        // Growth never makes memory short (see `short`): what it would shrink
        // again at once is not taken.
        let mut after = self.state(true);
        after.held += to - from;
        after.size_for(Role::Listen) > self.buf_min
    }

    /// Whether memory is short: a listening socket made now would get no
    /// more than `buf_min` (the budget beyond the reservation is spent), so
    /// the next connections get the least. Grown buffers then shrink and
    /// stop growing.
    pub(super) fn short(&self) -> bool {
        self.buf > self.buf_min && self.state(true).size_for(Role::Listen) <= self.buf_min
    }

    /// Give connected socket `h` the buffer `storage` for direction `dir`,
    /// keeping its data, and free the old one; growth only if
    /// [`Ledger::fits_growth`]. Refused (false, nothing changed) for a
    /// listening socket or a spare (their sizes are on record), or if the
    /// buffer holds more than the new one takes (or, for a receive buffer,
    /// the new one would retract the window advertised).
    pub(super) fn resize(
        &mut self,
        set: &mut SocketSet<'static>,
        h: SocketHandle,
        dir: Dir,
        storage: Vec<u8>,
    ) -> bool {
        let size = storage.len();
        let old = dir.capacity(set.get::<tcp::Socket>(h));
        if size > old && !self.fits_growth(old, size) {
            return false;
        }
        if self.spares.iter().any(|&(s, _)| s == h) {
            return false;
        }
        let s = set.get_mut::<tcp::Socket>(h);
        if s.state() == tcp::State::Listen {
            return false;
        }
        let replaced = match dir {
            Dir::Rx => s.replace_recv_storage(storage).is_ok(),
            Dir::Tx => s.replace_send_storage(storage).is_ok(),
        };
        if !replaced {
            return false;
        }
        self.held = self.held - old + size;
        self.peak = self.peak.max(self.held);
        true
    }

    /// Put a new socket into the set, counting its buffers. The caller has
    /// checked [`Ledger::fits`] for its size.
    pub(super) fn add(
        &mut self,
        set: &mut SocketSet<'static>,
        socket: tcp::Socket<'static>,
    ) -> SocketHandle {
        let size = socket.recv_capacity();
        debug_assert_eq!(size, socket.send_capacity());
        debug_assert!(self.fits(size), "socket of {size} breaks the reservation");
        self.sockets += 1;
        self.held += 2 * size;
        self.peak = self.peak.max(self.held);
        set.add(socket)
    }

    /// Remove one of our sockets (not a spare: take it first) from the set and
    /// free its buffers.
    pub(super) fn remove(&mut self, set: &mut SocketSet<'static>, h: SocketHandle) {
        debug_assert!(self.spares.iter().all(|&(s, _)| s != h), "a spare removed");
        let bytes = Self::bytes_of(set, h);
        set.remove(h);
        self.sockets -= 1;
        self.held -= bytes;
    }

    /// Keep a finished socket as a spare; its directions are equal (the
    /// socket pool frees one whose are not).
    pub(super) fn keep_spare(&mut self, set: &SocketSet<'static>, h: SocketHandle) {
        let size = Self::size_of(set, h);
        debug_assert_eq!(2 * size, Self::bytes_of(set, h), "an unequal spare");
        self.spare_bytes += 2 * size;
        self.spares.push((h, size));
    }

    /// Take spare `i` (an index into [`Ledger::spares`]) out of the spares.
    pub(super) fn take_spare(&mut self, i: usize) -> SocketHandle {
        let (h, size) = self.spares.remove(i);
        self.spare_bytes -= 2 * size;
        h
    }

    /// The spares, oldest first, with their per-direction buffer sizes.
    pub(super) fn spares(&self) -> &[(SocketHandle, usize)] {
        &self.spares
    }

    /// A socket starts listening in a pool: it pledges its partner's share.
    pub(super) fn pledge(&mut self, set: &SocketSet<'static>, h: SocketHandle) {
        self.listening += 1;
        self.pledged += self.pledge_of(Self::size_of(set, h));
    }

    /// A socket leaves a listen pool: its pledge is withdrawn.
    pub(super) fn release(&mut self, set: &SocketSet<'static>, h: SocketHandle) {
        self.listening -= 1;
        self.pledged -= self.pledge_of(Self::size_of(set, h));
    }

    /// Whether every listening socket has `buf` already (none to upgrade).
    pub(super) fn listeners_at_buf(&self) -> bool {
        self.pledged == self.listening * self.pledge_of(self.buf)
    }

    /// The figures for sizing a new socket: every socket counts, the spares
    /// too unless `without_spares` (spares are a cache: they give way to
    /// larger buffers).
    pub(super) fn state(&self, without_spares: bool) -> BufferState {
        let (held, others) = if without_spares {
            (
                self.held - self.spare_bytes,
                self.sockets - self.spares.len(),
            )
        } else {
            (self.held, self.sockets)
        };
        BufferState {
            budget: self.budget,
            held,
            pledged: self.pledged,
            others,
            listeners: self.pool_slots,
            max_sockets: self.max_sockets,
            buf_min: self.buf_min,
            buf: self.buf,
        }
    }

    /// `(buf_min, buf)`: the smallest and largest per-direction buffer size.
    pub(super) fn buf_range(&self) -> (usize, usize) {
        (self.buf_min, self.buf)
    }

    /// Sockets of ours in the set.
    pub(super) fn sockets(&self) -> usize {
        self.sockets
    }

    /// Whether the set holds as many of our sockets as the plan allows.
    pub(super) fn full(&self) -> bool {
        self.sockets >= self.max_sockets
    }

    /// Bytes held by our sockets' buffers now.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// The most [`Ledger::held`] has been.
    pub(super) fn peak(&self) -> usize {
        self.peak
    }

    /// The buffer budget.
    pub(super) fn budget(&self) -> usize {
        self.budget
    }

    /// Recount everything from the sockets themselves and check the running
    /// figures against it (tests). Every TCP socket in the set counts (the
    /// caller's own sockets are not TCP); `listening` are the pools' sockets.
    /// Returns the bytes held.
    #[cfg(test)]
    pub(super) fn recount(
        &self,
        set: &SocketSet<'static>,
        listening: impl Iterator<Item = SocketHandle>,
    ) -> usize {
        use smoltcp::socket::AnySocket;
        let (mut held, mut sockets) = (0, 0);
        for (_, s) in set.iter() {
            if let Some(t) = tcp::Socket::downcast(s) {
                held += t.recv_capacity() + t.send_capacity();
                sockets += 1;
            }
        }
        assert_eq!(sockets, self.sockets, "sockets in the set vs owned");
        let spare: usize = self
            .spares
            .iter()
            .map(|&(h, _)| 2 * Self::size_of(set, h))
            .sum();
        assert_eq!(spare, self.spare_bytes, "spare bytes");
        assert!(self
            .spares
            .iter()
            .all(|&(h, size)| Self::size_of(set, h) == size));
        let (mut pledged, mut n) = (0, 0);
        for h in listening {
            pledged += self.pledge_of(Self::size_of(set, h));
            n += 1;
        }
        assert_eq!(
            (n, pledged),
            (self.listening, self.pledged),
            "pledged bytes"
        );
        held
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use alloc::vec;

    fn socket(size: usize) -> tcp::Socket<'static> {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; size]),
            tcp::SocketBuffer::new(vec![0; size]),
        )
    }

    /// A ledger for at most 4 sockets, buf_min 1k, buf 8k, one pool slot,
    /// with `extra` bytes of budget beyond the reservation of 4 * 2 * 1k.
    fn ledger(extra: usize) -> (Ledger, SocketSet<'static>) {
        let l = Ledger::new(8 * 1024 + extra, 4, (1024, 8192), 1, Vec::new());
        (l, SocketSet::new(Vec::new()))
    }

    #[test]
    fn held_follows_the_set_and_the_reservation_is_kept() {
        let (mut l, mut set) = ledger(16 * 1024);
        // 8k fits: 16k + 3 * 2k reserved <= 24k; then the 8k left, less the
        // reservation for two others, leaves room for 2k, not 4k.
        assert!(l.fits(8192));
        let a = l.add(&mut set, socket(8192));
        assert_eq!((l.held(), l.sockets()), (16384, 1));
        assert!(!l.fits(4096) && l.fits(2048));
        let b = l.add(&mut set, socket(2048));
        let c = l.add(&mut set, socket(1024));
        assert_eq!(l.held(), 2 * (8192 + 2048 + 1024));
        assert!(l.fits(1024) && !l.fits(2048));
        let d = l.add(&mut set, socket(1024));
        // At max_sockets nothing fits, however small.
        assert!(l.full() && !l.fits(1));
        l.remove(&mut set, a);
        assert_eq!((l.held(), l.sockets(), l.peak()), (2 * 4096, 3, 2 * 12288));
        assert!(l.fits(8192));
        assert_eq!(l.recount(&set, core::iter::empty()), l.held());
        for h in [b, c, d] {
            l.remove(&mut set, h);
        }
        assert_eq!((l.held(), l.sockets(), l.peak()), (0, 0, 2 * 12288));
    }

    #[test]
    fn spares_and_pledges_are_sums_of_their_sockets() {
        let (mut l, mut set) = ledger(64 * 1024);
        let small = l.add(&mut set, socket(1024));
        let big = l.add(&mut set, socket(8192));
        let listening = l.add(&mut set, socket(4096));
        l.keep_spare(&set, small);
        l.keep_spare(&set, big);
        assert_eq!(l.spares(), &[(small, 1024), (big, 8192)]);
        // Without the spares the figures are those of the listening socket.
        let st = l.state(true);
        assert_eq!((st.held, st.others), (2 * 4096, 1));
        assert_eq!(l.state(false).held, 2 * (1024 + 8192 + 4096));
        l.pledge(&set, listening);
        assert_eq!(l.state(false).pledged, 2 * (4096 - 1024));
        assert!(!l.listeners_at_buf());
        assert_eq!(
            l.recount(&set, [listening].into_iter()),
            2 * (1024 + 8192 + 4096)
        );
        assert_eq!(l.take_spare(1), big);
        assert_eq!(l.state(true).held, 2 * (4096 + 8192));
        l.release(&set, listening);
        assert_eq!(l.state(false).pledged, 0);
        assert!(l.listeners_at_buf());
        l.remove(&mut set, big);
        assert_eq!(l.recount(&set, core::iter::empty()), 2 * (1024 + 4096));
    }

    #[test]
    fn resize_counts_the_difference_and_keeps_the_reservation_and_pledges() {
        let (mut l, mut set) = ledger(24 * 1024);
        let a = l.add(&mut set, socket(2048));
        let listening = l.add(&mut set, socket(4096));
        set.get_mut::<tcp::Socket>(listening).listen(80).unwrap();
        l.pledge(&set, listening);
        // 2 * 2k + 2 * 4k held, 2 * 2 * 1k reserved, 2 * 3k pledged: 10k of
        // the 32k budget left, so one 2k buffer may grow to 8k (+6k).
        assert!(l.fits_growth(2048, 8192));
        assert!(l.resize(&mut set, a, Dir::Tx, vec![0; 8192]));
        assert_eq!(l.held(), 2048 + 8192 + 2 * 4096);
        // 4k left: the other direction may not grow to 8k (+6k), nor to 4k
        // (+2k: a listening socket made then would get only buf_min).
        assert!(!l.resize(&mut set, a, Dir::Rx, vec![0; 8192]));
        assert!(!l.resize(&mut set, a, Dir::Rx, vec![0; 4096]));
        assert_eq!(l.recount(&set, [listening].into_iter()), l.held());
        // Listening sockets (their pledges are on record) are refused;
        // shrinking is always paid for, and pays for the other direction.
        assert!(!l.resize(&mut set, listening, Dir::Rx, vec![0; 1024]));
        assert!(l.resize(&mut set, a, Dir::Tx, vec![0; 1024]));
        assert_eq!(l.held(), 2048 + 1024 + 2 * 4096);
        assert!(l.resize(&mut set, a, Dir::Rx, vec![0; 4096]));
        let s = set.get::<tcp::Socket>(a);
        assert_eq!((s.recv_capacity(), s.send_capacity()), (4096, 1024));
        assert_eq!(l.held(), 4096 + 1024 + 2 * 4096);
        assert_eq!(l.peak(), 2048 + 8192 + 2 * 4096);
        assert_eq!(l.recount(&set, [listening].into_iter()), l.held());
        // Removing a socket whose directions differ frees both.
        l.remove(&mut set, a);
        assert_eq!(l.held(), 2 * 4096);
        assert_eq!(l.recount(&set, [listening].into_iter()), l.held());
        // Beyond buf nothing grows, whatever the budget.
        assert!(!l.fits_growth(8192, 16384));
    }

    #[test]
    #[should_panic(expected = "pledged bytes")]
    fn recount_catches_a_missing_pledge() {
        let (mut l, mut set) = ledger(64 * 1024);
        let h = l.add(&mut set, socket(4096));
        l.recount(&set, [h].into_iter());
    }
}
