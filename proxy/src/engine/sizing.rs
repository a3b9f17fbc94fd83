//! How large a new socket's buffers are: the adaptive buffer policy.
//!
//! A socket's buffers are sized here when the socket is created; a
//! connection's may later grow or shrink (module `growth`, through the
//! ledger). The
//! [`Ledger`](super::ledger::Ledger) counts the bytes the engine's sockets'
//! buffers hold (`held`) and keeps, at all times,
//!
//! ```text
//! held + (max_sockets - sockets held) * 2 * buf_min <= buffer budget
//! ```
//!
//! i.e. every socket that may still be needed can get `buf_min`. The *surplus*
//! is what the buffer budget has beyond that reservation (the new socket's own
//! minimum included) and beyond the *pledges* below. Sizes are on the ladder
//! `buf_min, 2*buf_min, 4*buf_min, ... (< buf), buf` (few distinct sizes, each
//! half of the next: friendly to the kernel's first-fit heap, whose freed blocks
//! are then reused whole or split evenly).
//!
//! * The **listening** sockets are the client sides of future connections, and
//!   share the surplus equally. With `N = rules * backlog` of them (the pools
//!   as they are refilled), the *pool surplus* is the surplus with what every
//!   listening socket holds beyond `buf_min` and pledges released: what the
//!   listening sockets and their partners have to share. A listening socket
//!   gets the largest size on the ladder whose pair (itself and its future
//!   upstream partner) fits one share, `4 * (size - buf_min) <= pool surplus
//!   / max(N, 2)` (a pair never takes more than half), and never more than
//!   the surplus actually free. It *pledges* `2 * (size - buf_min)` to
//!   the partner while it listens. Every listening socket created at a given
//!   moment gets the same size, whichever rule it serves and in whatever order
//!   the pools are filled.
//! * The **upstream** socket of a connection gets the client side's size if the
//!   surplus (with that pledge released) affords it, never more: a larger one
//!   would not make the connection faster.
//!
//! So a lone connection gets `buf` both sides once the pool surplus holds `N`
//! pairs at `buf`; when a pool socket accepts, its replacement is sized from
//! the pool surplus left then (a crowd tapers gently, by about `1 / N` of the
//! surplus per connection, down to `buf_min` in matched pairs); and the budget
//! is never exceeded (pledges are advisory; the reservation is not). If an
//! allocation fails anyway (a fragmented heap), the next smaller size is tried,
//! down to `buf_min`; only then is the connection refused (and allocation
//! retried after a pause).
//!
//! This module is the policy alone (figures in, a size out); the ledger
//! supplies the figures and the socket pool acts on the answer.

/// A listening socket and its future partner take at most `1 / SURPLUS_SHARE`
/// of the pool surplus, however few listening sockets there are.
const SURPLUS_SHARE: usize = 2;

/// The buffer sizes a socket may get, smallest first: `buf_min`, doubled while
/// below `buf`, then `buf`.
pub(super) fn size_ladder(buf_min: usize, buf: usize) -> impl Iterator<Item = usize> {
    let mut next = Some(buf_min.min(buf));
    core::iter::from_fn(move || {
        let cur = next?;
        next = match cur.checked_mul(2) {
            _ if cur >= buf => None,
            Some(d) if d < buf => Some(d),
            _ => Some(buf),
        };
        Some(cur)
    })
}

/// What a new socket is for, which decides how much of the surplus it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// A listening pool socket: the client side of a future connection, whose
    /// upstream side will want the same size. The pair takes one equal share
    /// of the pool surplus: `4 * (size - buf_min) <= pool surplus / listeners`
    /// (at most half of it), half for itself and half *pledged* to its
    /// partner, and never more than the surplus free now.
    Listen,
    /// The upstream side of a connection whose client side has `client`-sized
    /// buffers: that size if the surplus (with the client side's pledge now
    /// released) affords it. Larger would not make the connection faster.
    Upstream { client: usize },
}

/// Budget figures a new socket's size is decided from.
#[derive(Debug, Clone, Copy)]
pub(super) struct BufferState {
    /// The buffer budget.
    pub(super) budget: usize,
    /// Bytes held by the other sockets' buffers.
    pub(super) held: usize,
    /// Bytes pledged to the partners of listening sockets.
    pub(super) pledged: usize,
    /// Sockets existing besides the new one.
    pub(super) others: usize,
    /// Listening sockets the pool surplus is shared by: every pool's
    /// `backlog` (those that exist and those about to be (re)created).
    pub(super) listeners: usize,
    pub(super) max_sockets: usize,
    pub(super) buf_min: usize,
    pub(super) buf: usize,
}

impl BufferState {
    /// What the buffer budget has beyond the pledges and the reservation of
    /// `buf_min` for every socket that may still come (the new one included).
    pub(super) fn surplus(&self) -> usize {
        self.unpledged().saturating_sub(self.pledged)
    }

    /// What the buffer budget has beyond the reservation, pledges included.
    fn unpledged(&self) -> usize {
        let reserve = self
            .max_sockets
            .saturating_sub(self.others)
            .saturating_mul(2)
            .saturating_mul(self.buf_min);
        self.budget
            .saturating_sub(self.held)
            .saturating_sub(reserve)
    }

    /// What the listening sockets and their partners share: the surplus with
    /// every listening socket's buffers beyond `buf_min` and its pledge
    /// released. A listening socket holds `2 * (size - buf_min)` beyond
    /// `buf_min` and pledges as much again, so that is the surplus plus twice
    /// the pledges; it does not change when a listening socket is left out
    /// of the figures (`held`, `others`, `pledged`), as one about to be
    /// re-created is.
    pub(super) fn pool_surplus(&self) -> usize {
        self.unpledged().saturating_add(self.pledged)
    }

    /// The per-direction buffer size for a new socket of `role`, on the ladder,
    /// never below `buf_min` (the reservation guarantees that much).
    pub(super) fn size_for(&self, role: Role) -> usize {
        let surplus = self.surplus();
        let limit = match role {
            Role::Listen => {
                // One equal share per listening socket, for its pair: the
                // same size for all, whatever order they are made in.
                let share = self.pool_surplus() / self.listeners.max(SURPLUS_SHARE);
                // Never more than is free now (listening sockets made when
                // memory was plentiful may hold more than today's share).
                self.buf_min.saturating_add(share.min(surplus) / 4)
            }
            Role::Upstream { client } => self.buf_min.saturating_add(surplus / 2).min(client),
        };
        size_ladder(self.buf_min, self.buf)
            .take_while(|s| *s <= limit)
            .last()
            .unwrap_or(self.buf_min)
    }

    /// The figures with one listening socket of `size`-byte buffers left out
    /// (its buffers and its pledge released), as if it were about to be
    /// re-created: what it would get then is `without_listener(size).size_for(Role::Listen)`.
    pub(super) fn without_listener(&self, size: usize) -> BufferState {
        BufferState {
            held: self.held - 2 * size,
            pledged: self.pledged - 2 * (size - self.buf_min),
            others: self.others - 1,
            ..*self
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use alloc::vec;

    #[test]
    fn ladder_doubles_from_buf_min_to_buf() {
        let l = |a, b| size_ladder(a, b).collect::<Vec<_>>();
        assert_eq!(l(4096, 65536), vec![4096, 8192, 16384, 32768, 65536]);
        assert_eq!(l(3072, 65536), vec![3072, 6144, 12288, 24576, 49152, 65536]);
        assert_eq!(l(8192, 8192), vec![8192]);
        assert_eq!(l(1024, 1500), vec![1024, 1500]);
        assert_eq!(l(1, 16 << 20).len(), 25);
    }

    /// One listening socket (one rule, `backlog=1`): a pair takes at most
    /// half of the surplus.
    fn state(budget: usize, held: usize, pledged: usize, others: usize) -> BufferState {
        pool_state(budget, held, pledged, others, 1)
    }

    fn pool_state(
        budget: usize,
        held: usize,
        pledged: usize,
        others: usize,
        listeners: usize,
    ) -> BufferState {
        BufferState {
            budget,
            held,
            pledged,
            others,
            listeners,
            max_sockets: 100,
            buf_min: 4096,
            buf: 65536,
        }
    }

    #[test]
    fn sizes_keep_the_reservation_and_taper() {
        let reserve = 100 * 2 * 4096;
        // No surplus: buf_min.
        assert_eq!(state(reserve, 0, 0, 0).size_for(Role::Listen), 4096);
        assert_eq!(
            state(reserve, 0, 0, 0).size_for(Role::Upstream { client: 65536 }),
            4096
        );
        // Ample: buf.
        assert_eq!(
            state(reserve + (1 << 20), 0, 0, 0).size_for(Role::Listen),
            65536
        );
        // 128k of surplus: a listening socket and its partner take at most
        // half: 4 * (size - 4k) <= 64k, size <= 20k, 16k on the ladder.
        let s = state(reserve + (128 << 10), 0, 0, 0);
        assert_eq!(s.surplus(), 128 << 10);
        assert_eq!(s.size_for(Role::Listen), 16384);
        // An upstream socket matches its client side if the surplus affords
        // it, and never exceeds it.
        assert_eq!(s.size_for(Role::Upstream { client: 32768 }), 32768);
        assert_eq!(s.size_for(Role::Upstream { client: 8192 }), 8192);
        assert_eq!(s.size_for(Role::Upstream { client: 65536 }), 65536);
        assert_eq!(
            state(reserve + (24 << 10), 0, 0, 0).size_for(Role::Upstream { client: 65536 }),
            16384
        );
        // Pledges count against the surplus.
        assert_eq!(
            state(reserve + (128 << 10), 0, 128 << 10, 0).size_for(Role::Listen),
            4096
        );
        // Sockets created one after another never break the reservation, and
        // sizes only taper: pairs (listening socket, then its upstream side).
        let budget = reserve + (600 << 10);
        let (mut held, mut last) = (0, 65536);
        for owned in (0..100).step_by(2) {
            let client = state(budget, held, 0, owned).size_for(Role::Listen);
            held += 2 * client;
            let up = state(budget, held, 0, owned + 1).size_for(Role::Upstream { client });
            assert_eq!(up, client, "pair {owned}");
            held += 2 * up;
            assert!(client >= 4096 && client <= last, "pair {owned}: {client}");
            assert!(held + (100 - owned - 2) * 2 * 4096 <= budget);
            last = client;
        }
        assert_eq!(last, 4096);
    }

    /// Create `n` listening sockets one after another from `st` (the running
    /// figures updated as the engine does); returns their sizes.
    fn make_listeners(mut st: BufferState, n: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        for _ in 0..n {
            let size = st.size_for(Role::Listen);
            st.held += 2 * size;
            st.pledged += 2 * (size - st.buf_min);
            st.others += 1;
            assert!(st.held + (st.max_sockets - st.others) * 2 * st.buf_min <= st.budget);
            sizes.push(size);
        }
        sizes
    }

    #[test]
    fn listeners_share_the_surplus_equally() {
        let reserve = 100 * 2 * 4096;
        // 600 KiB shared by 16 listening sockets: 37.5k per pair, 4 * (size -
        // 4k) <= 37.5k: 13.4k, 8k on the ladder, for every one of them (the
        // old rule gave the first one half the surplus: 64k, then 64k, 32k,
        // ... down to 4k).
        let sizes = make_listeners(pool_state(reserve + (600 << 10), 0, 0, 0, 16), 16);
        assert_eq!(sizes, [8192; 16]);
        // The same with 1 MiB: 64k per pair, 20k, 16k on the ladder.
        let sizes = make_listeners(pool_state(reserve + (1 << 20), 0, 0, 0, 16), 16);
        assert_eq!(sizes, [16384; 16]);
        // Four listening sockets with 1 MiB: 256k per pair, buf.
        let sizes = make_listeners(pool_state(reserve + (1 << 20), 0, 0, 0, 4), 4);
        assert_eq!(sizes, [65536; 4]);
        // At exactly four pairs at buf (4 * 240k) every one still gets buf;
        // a byte less and every one gets 32k.
        let exact = reserve + 4 * 4 * (65536 - 4096);
        assert_eq!(make_listeners(pool_state(exact, 0, 0, 0, 4), 4), [65536; 4]);
        assert_eq!(
            make_listeners(pool_state(exact - 1, 0, 0, 0, 4), 4),
            [32768; 4]
        );
        // Whatever the pool holds, a socket re-created in it (left out of the
        // figures) gets the same size as the others: the pool surplus does
        // not depend on what the listening sockets hold.
        let st = pool_state(reserve + (600 << 10), 0, 0, 0, 16);
        let mut after = st;
        after.held = 15 * 2 * 8192;
        after.pledged = 15 * 2 * (8192 - 4096);
        after.others = 15;
        assert_eq!(after.pool_surplus(), st.pool_surplus());
        assert_eq!(after.size_for(Role::Listen), 8192);
        // Connections hold memory: a replacement gets the share of what is
        // left, and never more than is free now.
        let mut busy = after;
        busy.held += 40 * 2 * 8192; // 20 connections of 8k pairs
        busy.others += 40;
        // Pool surplus 600k - 20 * 16k = 280k: 17.5k per pair, 8k.
        assert_eq!(busy.size_for(Role::Listen), 8192);
        busy.held += 4 * 2 * 8192; // two more: 248k, 15.5k per pair, 4k
        busy.others += 4;
        assert_eq!(busy.size_for(Role::Listen), 4096);
        // Listening sockets made large earlier (three at buf) hold most of
        // what is free: 100k is left, the pool surplus is 100k + 3 * 240k,
        // a share 205k (32k), but the new one gets what fits in 100k: 16k.
        let mut three = pool_state(reserve + (820 << 10), 0, 0, 0, 4);
        three.held = 3 * 2 * 65536;
        three.pledged = 3 * 2 * (65536 - 4096);
        three.others = 3;
        assert_eq!(
            (three.surplus(), three.pool_surplus()),
            (100 << 10, 820 << 10)
        );
        assert_eq!(three.size_for(Role::Listen), 16384);
        // No surplus: buf_min for all; ample: buf for all.
        assert_eq!(
            make_listeners(pool_state(reserve, 0, 0, 0, 16), 16),
            [4096; 16]
        );
        assert_eq!(
            make_listeners(pool_state(reserve + (64 << 20), 0, 0, 0, 16), 16),
            [65536; 16]
        );
    }
}
