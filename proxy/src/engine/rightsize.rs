//! Receive windows that follow the path: dynamic right-sizing.
//!
//! A connection's buffers grow when one of them fills (module `growth`).
//! That misses the receive side of a long leg whose data the engine passes
//! on at once to a fast other leg: the receive buffer never fills, yet the
//! window it advertises is all the long leg's sender may have in flight, and
//! one window per round trip is the connection's speed.
//!
//! So, as Linux sizes a receive buffer from what the application read in the
//! last round trip (its "dynamic right-sizing"), the engine counts, for each
//! socket, the bytes it took out of the socket's receive buffer in each round
//! trip of that socket's leg (smoltcp's smoothed round-trip time, vendored
//! patch 21). The window a round trip needs is twice what it delivered (a
//! sender in slow start sends twice as much in the next one), and, if that
//! was more than the round trip before delivered, that much more again in
//! proportion to the growth (Linux's `tcp_rcv_space_adjust` does the same):
//! a window grows only in the ACKs of the round trip after the one that asked
//! for it, so one sized for the next round trip alone is short in the one
//! after. When that is more than the buffer, the socket asks for the size on
//! the ladder that holds it. (Asking only for twice the last round trip, and
//! only once it filled half the buffer, a 512k buffer on a 45 ms leg took
//! three round trips to reach 4m, each at the window; with the growth but
//! still from half full, a round trip of 934k in a 2m buffer asked nothing
//! and the one after the next was held to 2m.) `growth` grants it, up to
//! `buf`, if the ledger can pay for it without touching any other
//! connection's guarantee, and never while memory is short.
//!
//! A round trip is counted from the first byte taken after the previous one
//! ended, so an idle connection asks for nothing, and a socket without a
//! round-trip sample yet (before its handshake completes) is not measured.

use smoltcp::time::{Duration, Instant};

use super::sizing::size_ladder;

/// The shortest round trip counted: smoltcp's estimate is in milliseconds,
/// and a LAN's rounds to zero.
const MIN_ROUND: Duration = Duration::from_millis(1);

/// One socket's receive-side measurement. See the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RcvSpace {
    /// When the round trip being counted began: the first byte taken after
    /// the last one ended.
    start: Option<Instant>,
    /// Bytes taken out of the receive buffer since `start`.
    taken: usize,
    /// Bytes the last round trip delivered (0 before the first).
    last: usize,
    /// The buffer size (per direction) the last full round trip asked for,
    /// 0 for none; `growth` takes it.
    want: usize,
}

impl RcvSpace {
    /// `taken` bytes were just taken (at `now`) out of the receive buffer of
    /// a socket with buffers of `capacity` bytes whose leg's round trip is
    /// estimated at `rtt`.
    pub(super) fn account(
        &mut self,
        now: Instant,
        taken: usize,
        rtt: Option<Duration>,
        capacity: usize,
    ) {
        let Some(rtt) = rtt else {
            return;
        };
        if let Some(start) = self.start {
            if now >= start + rtt.max(MIN_ROUND) {
                // The round trip is over: bytes taken now belong to the next.
                let mut want = self.taken.saturating_mul(2);
                if self.last > 0 && self.taken > self.last {
                    // The sender's window grows: as much more again.
                    let growth = want as u64 * (self.taken - self.last) as u64 / self.last as u64;
                    want = want.saturating_add(usize::try_from(growth).unwrap_or(usize::MAX));
                }
                if want > capacity {
                    self.want = self.want.max(want);
                }
                self.last = self.taken;
                self.start = None;
                self.taken = 0;
            }
        }
        if taken > 0 {
            self.start.get_or_insert(now);
            self.taken = self.taken.saturating_add(taken);
        }
    }

    /// The size a socket now at `size` asked to grow to, on the ladder
    /// `buf_min..=buf` (the smallest size holding what it asked for, or
    /// `buf`), if larger than `size`; the request is consumed.
    pub(super) fn take_want(&mut self, size: usize, buf_min: usize, buf: usize) -> Option<usize> {
        let want = core::mem::take(&mut self.want);
        if want <= size {
            return None;
        }
        let to = size_ladder(buf_min, buf)
            .find(|&s| s >= want)
            .unwrap_or(buf);
        (to > size).then_some(to)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    const K: usize = 1024;

    fn ms(n: i64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn a_round_trip_that_delivers_over_half_the_buffer_asks_for_twice_it() {
        let rtt = Some(Duration::from_millis(45));
        let mut r = RcvSpace::default();
        // 300k in one 45 ms round trip of a 512k buffer: ask for 600k, 1m on
        // the ladder 4k..=1m (capped at buf=768k: buf).
        r.account(ms(0), 100 * K, rtt, 512 * K);
        r.account(ms(20), 200 * K, rtt, 512 * K);
        assert_eq!(r.want, 0, "not before the round trip ends");
        r.account(ms(45), 50 * K, rtt, 512 * K);
        assert_eq!(r.want, 600 * K);
        assert_eq!(r.take_want(512 * K, 4 * K, 1024 * K), Some(1024 * K));
        assert_eq!(r.take_want(512 * K, 4 * K, 1024 * K), None, "consumed");
        r.want = 600 * K;
        assert_eq!(r.take_want(512 * K, 4 * K, 768 * K), Some(768 * K));
        // The 50k taken at 45 ms began the next round trip; 200k more in it
        // is under half: nothing asked.
        r.account(ms(60), 150 * K, rtt, 512 * K);
        r.account(ms(90), 0, rtt, 512 * K);
        assert_eq!(r.want, 0);
    }

    #[test]
    fn a_round_trip_that_delivers_more_than_the_last_asks_for_the_growth_too() {
        let rtt = Some(Duration::from_millis(45));
        let mut r = RcvSpace::default();
        // 200k, then 400k (slow start doubled) of a 512k buffer: 2 * 400k,
        // and as much again (the round trip delivered twice the last): 1600k,
        // 2m on the ladder; 4m would take another round trip at the window.
        r.account(ms(0), 200 * K, rtt, 512 * K);
        r.account(ms(45), 400 * K, rtt, 512 * K);
        assert_eq!(r.want, 0, "200k is under half");
        r.account(ms(90), 0, rtt, 512 * K);
        assert_eq!(r.want, 1600 * K);
        assert_eq!(r.take_want(512 * K, 4 * K, 4096 * K), Some(2048 * K));
        // Growing, a round trip asks before it fills half the buffer: 467k,
        // then 934k of a 2m buffer (under half; the next round trip will
        // send 1.87m, the one after 3.7m, and the window for that one is
        // what the ACKs of the next carry): 3.7m, 4m on the ladder.
        let mut r = RcvSpace::default();
        r.account(ms(0), 467 * K, rtt, 2048 * K);
        r.account(ms(45), 934 * K, rtt, 2048 * K);
        r.account(ms(90), 0, rtt, 2048 * K);
        assert_eq!(r.want, 3736 * K);
        assert_eq!(r.take_want(2048 * K, 4 * K, 4096 * K), Some(4096 * K));
        // Not growing, the same round trip asks for nothing.
        let mut r = RcvSpace::default();
        r.account(ms(0), 934 * K, rtt, 2048 * K);
        r.account(ms(45), 934 * K, rtt, 2048 * K);
        r.account(ms(90), 0, rtt, 2048 * K);
        assert_eq!(r.take_want(2048 * K, 4 * K, 4096 * K), None);
        // A round trip delivering 1.5 times the last asks for 2 * 1.5.
        let mut r = RcvSpace::default();
        r.account(ms(0), 400 * K, rtt, 512 * K);
        r.account(ms(45), 600 * K, rtt, 1024 * K);
        r.account(ms(90), 0, rtt, 1024 * K);
        assert_eq!(r.want, 1800 * K);
        // The same as the last: twice it, no more.
        let mut r = RcvSpace::default();
        r.account(ms(0), 400 * K, rtt, 512 * K);
        r.account(ms(45), 400 * K, rtt, 512 * K);
        r.account(ms(90), 0, rtt, 512 * K);
        assert_eq!(r.want, 800 * K);
    }

    #[test]
    fn idle_unmeasured_or_satisfied_sockets_ask_for_nothing() {
        let mut r = RcvSpace::default();
        // No round-trip estimate yet: not counted.
        r.account(ms(0), 400 * K, None, 512 * K);
        assert_eq!(r, RcvSpace::default());
        // A round trip begins with its first byte: an idle gap is no round
        // trip (256k at 0 ms, then nothing until 1 s: one round trip of 256k,
        // exactly half, asks for nothing).
        let rtt = Some(Duration::from_millis(10));
        r.account(ms(0), 256 * K, rtt, 512 * K);
        r.account(ms(1000), 256 * K, rtt, 512 * K);
        assert_eq!(r.want, 0);
        assert_eq!(r.start, Some(ms(1000)));
        // A want below the size it has is no request.
        r.want = 300 * K;
        assert_eq!(r.take_want(512 * K, 4 * K, 1024 * K), None);
        // A zero estimate (a LAN) counts 1 ms round trips.
        let mut r = RcvSpace::default();
        r.account(ms(0), 3 * K, Some(Duration::ZERO), 4 * K);
        r.account(ms(0), 0, Some(Duration::ZERO), 4 * K);
        assert_eq!(r.want, 0);
        r.account(ms(1), 0, Some(Duration::ZERO), 4 * K);
        assert_eq!(r.want, 6 * K);
        assert_eq!(r.take_want(4 * K, 4 * K, 64 * K), Some(8 * K));
    }
}
