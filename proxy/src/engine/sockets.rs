//! The engine's TCP sockets as a pool: made, reused, retired and freed.
//!
//! A finished socket (closed, or in TIME-WAIT) is kept as a *spare* and
//! reused by the next `listen`/`connect` (which resets it); spares beyond a
//! small reserve are removed from the socket set and their memory freed. A
//! socket that still has an RST to send is *dying*: kept until it has sent
//! it (at most [`RST_GRACE`]), holding its buffers until it is a spare, or
//! until the pool is at capacity and needs it; an RST not sent by then (its
//! peer's address does not resolve) is given up.
//!
//! **Spares** keep their buffers and are a cache: a socket is taken from the
//! smallest spare at least as large as what the budget would afford with every
//! spare freed (and at most twice that: a connection's grown buffers are not
//! handed to a socket whose share is smaller); if none is, the spares (all smaller: sized when memory was
//! short) are freed and a new socket of that size is made. Beyond the small
//! reserve of spares, the smallest is freed. Every buffer is allocated
//! fallibly: if an allocation fails (a fragmented heap), the next smaller size
//! of the ladder is tried, down to `buf_min`; only then does the caller get
//! no socket (one connection refused, never a panic), and allocation is
//! retried after [`ALLOC_RETRY`].
//!
//! Sizes come from the `sizing` policy, every byte is counted by the
//! [`Ledger`], which this pool owns along with the socket set.

use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};

use super::ledger::{Dir, Ledger};
use super::sizing::{size_ladder, Role};

/// How long an aborted socket may wait to send its RST before it is reclaimed anyway.
pub(super) const RST_GRACE: Duration = Duration::from_millis(1000);
/// How long a dying socket's RST must have been stuck (its peer's address
/// unresolved) before the pool, at capacity, may reclaim the socket.
const RST_STUCK: Duration = Duration::from_millis(100);
/// How long to wait before retrying after an allocation failure.
pub(super) const ALLOC_RETRY: Duration = Duration::from_millis(100);

/// The socket set and the engine's sockets in it. See the module documentation.
pub(super) struct Sockets {
    /// The socket set smoltcp polls: the engine's TCP sockets, its DHCP
    /// client and the caller's own sockets.
    pub(super) set: SocketSet<'static>,
    /// The buffer accounting; also holds the spare list.
    pub(super) ledger: Ledger,
    /// Aborted sockets that still have an RST to send, with a deadline.
    dying: Vec<(SocketHandle, Instant)>,
    /// Spares kept at most (the smallest is freed beyond it).
    spare_max: usize,
    /// Memory was freed or a spare appeared since listening sockets were last
    /// compared with what the budget affords.
    pub(super) stale: bool,
    /// After an allocation failure: when to try again (`poll_delay` wakes then).
    pub(super) retry_at: Option<Instant>,
    /// Tests: buffer allocations larger than this fail (a fragmented heap).
    #[cfg(test)]
    pub(super) alloc_limit: usize,
}

/// A zeroed buffer, or `None` if the allocation fails.
fn try_buffer(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return None;
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0);
    Some(v)
}

impl Sockets {
    /// A pool over `set` (empty of TCP sockets). `dying` is the (empty) list,
    /// reserved up front for every socket the plan allows.
    pub(super) fn new(
        set: SocketSet<'static>,
        ledger: Ledger,
        dying: Vec<(SocketHandle, Instant)>,
        spare_max: usize,
    ) -> Sockets {
        Sockets {
            set,
            ledger,
            dying,
            spare_max,
            stale: false,
            retry_at: None,
            #[cfg(test)]
            alloc_limit: usize::MAX,
        }
    }

    pub(super) fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(h)
    }

    /// Per-direction buffer size of one of our sockets: the larger of its
    /// two (a connection's may differ, module `growth`; a listening socket's
    /// and a spare's are equal).
    pub(super) fn size_of(&self, h: SocketHandle) -> usize {
        let s = self.set.get::<tcp::Socket>(h);
        s.recv_capacity().max(s.send_capacity())
    }

    /// The size of buffer `dir` of one of our sockets.
    pub(super) fn dir_size(&self, h: SocketHandle, dir: Dir) -> usize {
        dir.capacity(self.set.get::<tcp::Socket>(h))
    }

    /// Whether a socket's two buffers are the same size.
    fn equal_dirs(&self, h: SocketHandle) -> bool {
        let s = self.set.get::<tcp::Socket>(h);
        s.recv_capacity() == s.send_capacity()
    }

    /// A closed socket to (re)use for `role`: the smallest spare at least as
    /// large as what the budget affords (the most recently retired of equals),
    /// else a new socket of that size, after freeing the spares (all smaller:
    /// sized when memory was short) to make room.
    pub(super) fn take(&mut self, now: Instant, role: Role) -> Option<SocketHandle> {
        let ideal = self.ledger.state(true).size_for(role);
        let spares = self.ledger.spares();
        // The common case first: the most recent spare fits exactly.
        let mut fit = match spares.last() {
            Some(&(_, size)) if size == ideal => Some((spares.len() - 1, size)),
            _ => None,
        };
        if fit.is_none() {
            // A spare more than twice the ideal (grown by its connection,
            // module `growth`) would give this socket more than its share.
            for (i, &(_, size)) in spares.iter().enumerate() {
                if size >= ideal && size / 2 <= ideal && fit.is_none_or(|(_, b)| size <= b) {
                    fit = Some((i, size));
                }
            }
        }
        if let Some((i, _)) = fit {
            let h = self.ledger.take_spare(i);
            return Some(self.reseat(h));
        }
        while let Some(last) = self.ledger.spares().len().checked_sub(1) {
            let h = self.ledger.take_spare(last);
            self.free(h);
        }
        if !self.ledger.full() {
            // With the spares freed this is `ideal` again.
            let want = self.ledger.state(false).size_for(role);
            return self.new_socket(want, self.ledger.buf_range().0, now);
        }
        // At capacity, the dying socket closest to its deadline gives up its
        // RST (most likely to an address that does not resolve: a spoofed or
        // vanished peer) rather than a new connection being refused while
        // fewer than `max_conns` are held.
        if self.reclaim_dying(now) {
            return self.take(now, role);
        }
        // Nothing to reclaim: the pool shrinks, and smoltcp itself answers
        // further SYNs with RST.
        None
    }

    /// The spare `h` in a fresh slot of the socket set (the same one, most
    /// likely: it was just freed), buffers and settings kept. smoltcp keeps
    /// per-slot neighbour state across `listen`/`connect`: a socket whose
    /// last peer's address did not resolve (a spoofed SYN's) stays silenced
    /// for up to a second, and its next connection, to a peer whose address
    /// resolves, would send nothing until then; under a SYN flood that
    /// reuses sockets every few hundred milliseconds a real client's SYN-ACK
    /// never left (test `flood`).
    fn reseat(&mut self, h: SocketHandle) -> SocketHandle {
        let s = self.set.remove(h);
        self.set.add(s)
    }

    /// Give up the RST of the dying socket whose deadline comes first, if
    /// it has waited at least [`RST_STUCK`] (an RST to a reachable peer
    /// leaves in the poll that made it), and make it a spare. Returns
    /// whether there was one.
    fn reclaim_dying(&mut self, now: Instant) -> bool {
        let Some(i) = (0..self.dying.len()).min_by_key(|&i| self.dying[i].1) else {
            return false;
        };
        if now + RST_GRACE < self.dying[i].1 + RST_STUCK {
            return false;
        }
        let (h, _) = self.dying.swap_remove(i);
        self.drop_rst(h);
        self.make_spare(h);
        true
    }

    /// Forget the RST an aborted socket has not managed to send (its peer's
    /// address does not resolve), so that as a spare it does not go on
    /// asking for the address once a second until it is reused. A closed
    /// socket that still has a peer is made to listen (which resets it) and
    /// aborted again (a listening socket closes without sending anything).
    pub(super) fn drop_rst(&mut self, h: SocketHandle) {
        let s = self.tcp(h);
        if s.state() != State::Closed || s.remote_endpoint().is_none() {
            return;
        }
        let Some(local) = s.local_endpoint() else {
            return;
        };
        if s.listen(local).is_ok() {
            s.abort();
        }
    }

    /// A new socket with buffers of `want` bytes each, or of the next smaller
    /// size of the ladder down to `floor` if the allocation fails.
    fn new_socket(&mut self, want: usize, floor: usize, now: Instant) -> Option<SocketHandle> {
        debug_assert!(!self.ledger.full());
        let mut sizes: [usize; 64] = [0; 64];
        let mut n = 0;
        let (buf_min, buf) = self.ledger.buf_range();
        for s in size_ladder(buf_min, buf) {
            if s >= floor && s <= want && n < sizes.len() {
                sizes[n] = s;
                n += 1;
            }
        }
        for &size in sizes[..n].iter().rev() {
            // The sizing policy never asks for more than the reservation
            // leaves; the ledger's word is final all the same.
            if !self.ledger.fits(size) {
                continue;
            }
            #[cfg(test)]
            if size > self.alloc_limit {
                continue;
            }
            if let (Some(rx), Some(tx)) = (try_buffer(size), try_buffer(size)) {
                let socket =
                    tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
                return Some(self.ledger.add(&mut self.set, socket));
            }
        }
        log::warn!("proxy: out of memory for a socket");
        self.retry_at = Some(now + ALLOC_RETRY);
        None
    }

    /// Give connected socket `h` a buffer of `size` bytes for direction
    /// `dir`, keeping its data (see [`Ledger::resize`]). False if refused or
    /// out of memory.
    pub(super) fn resize(&mut self, h: SocketHandle, dir: Dir, size: usize) -> bool {
        // Spares are a cache: they give way to a connection's growth.
        let from = self.dir_size(h, dir);
        while size > from && !self.ledger.fits_growth(from, size) {
            let Some(last) = self.ledger.spares().len().checked_sub(1) else {
                return false;
            };
            let spare = self.ledger.take_spare(last);
            self.free(spare);
        }
        #[cfg(test)]
        if size > self.alloc_limit {
            return false;
        }
        let Some(storage) = try_buffer(size) else {
            return false;
        };
        self.ledger.resize(&mut self.set, h, dir, storage)
    }

    /// Remove one of our sockets from the set and free its buffers.
    pub(super) fn free(&mut self, h: SocketHandle) {
        self.ledger.remove(&mut self.set, h);
        self.stale = true;
    }

    /// Abort a socket and keep it until it has sent its RST.
    pub(super) fn abort(&mut self, h: SocketHandle, now: Instant) {
        self.tcp(h).abort();
        self.dying.push((h, now + RST_GRACE));
    }

    /// Give a socket that is finished with back: spare, dying or freed.
    pub(super) fn retire(&mut self, h: SocketHandle, now: Instant) {
        let s = self.tcp(h);
        match s.state() {
            State::Closed | State::TimeWait | State::Listen => {
                if s.state() == State::Listen {
                    s.abort(); // no peer: just closes, sends nothing
                }
                if s.state() == State::Closed && s.remote_endpoint().is_some() {
                    self.dying.push((h, now + RST_GRACE));
                } else {
                    self.make_spare(h);
                }
            }
            _ => self.abort(h, now),
        }
    }

    /// Keep a finished socket for reuse; beyond `spare_max` spares, free the
    /// smallest (this one if no spare is smaller). A socket whose two buffers
    /// differ (grown for one direction of its connection) is freed: a spare
    /// is reused for either role, and its size must say what it holds.
    pub(super) fn make_spare(&mut self, h: SocketHandle) {
        self.stale = true;
        if !self.equal_dirs(h) {
            self.free(h);
            return;
        }
        if self.ledger.spares().len() < self.spare_max {
            self.ledger.keep_spare(&self.set, h);
            return;
        }
        let size = self.size_of(h);
        let mut smallest: Option<(usize, usize)> = None;
        for (i, &(_, s)) in self.ledger.spares().iter().enumerate() {
            if smallest.is_none_or(|(_, b)| s < b) {
                smallest = Some((i, s));
            }
        }
        match smallest {
            Some((i, s)) if s < size => {
                let o = self.ledger.take_spare(i);
                self.free(o);
                self.ledger.keep_spare(&self.set, h);
            }
            _ => self.free(h),
        }
    }

    /// Move sockets that have sent their RST (or waited too long) to the spares.
    pub(super) fn reap(&mut self, now: Instant) -> bool {
        let mut i = 0;
        let mut any = false;
        while i < self.dying.len() {
            let (h, deadline) = self.dying[i];
            let s = self.tcp(h);
            if s.remote_endpoint().is_none() || s.state() != State::Closed || now >= deadline {
                self.dying.swap_remove(i);
                self.drop_rst(h);
                self.make_spare(h);
                any = true;
            } else {
                i += 1;
            }
        }
        any
    }

    /// When dying sockets are reclaimed even if their RST is not sent.
    pub(super) fn dying_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.dying.iter().map(|&(_, deadline)| deadline)
    }
}
