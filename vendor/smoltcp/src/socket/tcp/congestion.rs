use crate::time::Instant;

use super::RttEstimator;

pub(super) mod no_control;

#[cfg(feature = "socket-tcp-cubic")]
pub(super) mod cubic;

#[cfg(feature = "socket-tcp-reno")]
pub(super) mod reno;

/// RFC 6928 section 2: the initial congestion window in bytes for a sender
/// maximum segment size of `mss` bytes, `min(10*MSS, max(2*MSS, 14600))`.
///
/// Linux sends this first flight (ten 1460-byte segments on Ethernet) since
/// 2.6.39; starting at two segments instead costs about two round trips on
/// every connection that sends more than a few kilobytes.
#[cfg(any(feature = "socket-tcp-reno", feature = "socket-tcp-cubic"))]
pub(super) fn initial_window(mss: usize) -> usize {
    mss.saturating_mul(10).min(mss.saturating_mul(2).max(14600))
}

/// RFC 3465 (Appropriate Byte Counting) section 2.2: in slow start an ACK
/// grows the window by the bytes it acknowledges, at most `L * SMSS` with
/// L = 2, so a delayed ACK covering two segments grows it by two segments as
/// two ACKs would. Section 2.3: in the slow start that follows a
/// retransmission timeout, L = 1 (an ACK then may cover segments that had
/// left the network long ago, and must not release a burst).
///
/// With `stretch_acks` (see `Socket::set_slow_start_counts_stretch_acks`),
/// outside that post-timeout slow start an ACK grows the window by every byte
/// it acknowledges, as Linux does: a receiver that acknowledges three or more
/// segments at once (a Linux receiver whose quick-ACK budget ran out, GRO,
/// LRO) otherwise leaves the window short of the doubling per round trip that
/// slow start is for, and the tail of a short transfer waits a round trip.
#[cfg(any(feature = "socket-tcp-reno", feature = "socket-tcp-cubic"))]
pub(super) fn slow_start_increase(
    acked: usize,
    mss: usize,
    after_rto: bool,
    stretch_acks: bool,
) -> usize {
    let limit = if after_rto {
        mss
    } else if stretch_acks {
        usize::MAX
    } else {
        mss.saturating_mul(2)
    };
    acked.min(limit)
}

#[allow(unused_variables)]
pub(super) trait Controller {
    /// Returns the number of bytes that can be sent.
    fn window(&self) -> usize;

    /// Set the remote window size.
    fn set_remote_window(&mut self, remote_window: usize) {}

    fn on_ack(&mut self, now: Instant, len: usize, in_flight: usize, rtt: &RttEstimator) {}

    /// Fired on each duplicate ack received, after `on_loss` has been called.
    fn on_dup_ack(&mut self, now: Instant, len: usize, in_flight: usize) {}

    /// Fired on a retransmission timeout.
    fn on_rto(&mut self, now: Instant, in_flight: usize) {}

    /// Fired after an inferred loss via three duplicate acks.
    fn on_loss(&mut self, now: Instant, in_flight: usize) {}

    fn pre_transmit(&mut self, now: Instant) {}

    fn post_transmit(&mut self, now: Instant, len: usize) {}

    /// Set the sender maximum segment size. The socket calls this once per
    /// connection, when the SYN or SYN|ACK tells it the peer's MSS (or that it
    /// sent none), before any data is sent: the controller also starts its
    /// congestion window at the initial window for that MSS (RFC 6928).
    fn set_mss(&mut self, mss: usize) {}

    /// Count every byte a stretch ACK acknowledges in slow start (see
    /// `slow_start_increase`); off by default (RFC 3465's L = 2 SMSS).
    fn set_stretch_acks(&mut self, on: bool) {}
}

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) enum AnyController {
    None(no_control::NoControl),

    #[cfg(feature = "socket-tcp-reno")]
    Reno(reno::Reno),

    #[cfg(feature = "socket-tcp-cubic")]
    Cubic(cubic::Cubic),
}

impl AnyController {
    /// Create a new congestion controller.
    /// `AnyController::new()` selects the best congestion controller based on the features.
    ///
    /// - If `socket-tcp-cubic` feature is enabled, it will use `Cubic`.
    /// - If `socket-tcp-reno` feature is enabled, it will use `Reno`.
    /// - If both `socket-tcp-cubic` and `socket-tcp-reno` features are enabled, it will use `Cubic`.
    ///    - `Cubic` is more efficient regarding throughput.
    ///    - `Reno` is more conservative and is suitable for low-power devices.
    /// - If no congestion controller is available, it will use `NoControl`.
    ///
    /// Users can also select a congestion controller manually by [`super::Socket::set_congestion_control()`]
    /// method at run-time.
    #[allow(unreachable_code)]
    #[inline]
    pub fn new() -> Self {
        #[cfg(feature = "socket-tcp-cubic")]
        {
            return AnyController::Cubic(cubic::Cubic::new());
        }

        #[cfg(feature = "socket-tcp-reno")]
        {
            return AnyController::Reno(reno::Reno::new());
        }

        AnyController::None(no_control::NoControl)
    }

    #[inline]
    pub fn inner_mut(&mut self) -> &mut dyn Controller {
        match self {
            AnyController::None(n) => n,

            #[cfg(feature = "socket-tcp-reno")]
            AnyController::Reno(r) => r,

            #[cfg(feature = "socket-tcp-cubic")]
            AnyController::Cubic(c) => c,
        }
    }

    #[inline]
    pub fn inner(&self) -> &dyn Controller {
        match self {
            AnyController::None(n) => n,

            #[cfg(feature = "socket-tcp-reno")]
            AnyController::Reno(r) => r,

            #[cfg(feature = "socket-tcp-cubic")]
            AnyController::Cubic(c) => c,
        }
    }
}

#[cfg(test)]
#[cfg(any(feature = "socket-tcp-reno", feature = "socket-tcp-cubic"))]
mod test {
    use super::*;

    #[test]
    fn initial_window_follows_rfc6928() {
        // min(10*MSS, max(2*MSS, 14600))
        assert_eq!(initial_window(1460), 14600);
        assert_eq!(initial_window(536), 5360);
        assert_eq!(initial_window(1000), 10000);
        assert_eq!(initial_window(1461), 14600);
        assert_eq!(initial_window(4000), 14600);
        assert_eq!(initial_window(7300), 14600);
        assert_eq!(initial_window(9000), 18000);
        assert_eq!(initial_window(48), 480);
        assert_eq!(initial_window(usize::MAX), usize::MAX);
    }

    #[test]
    fn set_mss_starts_at_the_initial_window() {
        let controllers = [
            #[cfg(feature = "socket-tcp-reno")]
            AnyController::Reno(reno::Reno::new()),
            #[cfg(feature = "socket-tcp-cubic")]
            AnyController::Cubic(cubic::Cubic::new()),
        ];
        for mut cc in controllers {
            for (mss, window) in [(1460, 14600), (536, 5360), (9000, 18000)] {
                cc.inner_mut().set_mss(mss);
                assert_eq!(cc.inner().window(), window, "{cc:?} mss {mss}");
            }
        }
    }
}
