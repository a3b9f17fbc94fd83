//! CUBIC congestion control (RFC 9438) in integer arithmetic.
//!
//! Windows are in bytes, times in microseconds. The constants are RFC 9438's
//! as exact fractions, so there is no floating point anywhere: the controller
//! builds without `std` or `libm` and costs no FPU state in kernels and
//! interrupt handlers.

use crate::{socket::tcp::RttEstimator, time::Instant};

use super::{Controller, initial_window, slow_start_increase};

// RFC 9438 §4.6: β_cubic = 0.7.
const BETA_NUM: usize = 7;
const BETA_DEN: usize = 10;
// RFC 9438 §4.7, fast convergence: W_max = cwnd * (1 + β_cubic) / 2 = cwnd * 17 / 20.
const FAST_CONVERGENCE_NUM: usize = 17;
const FAST_CONVERGENCE_DEN: usize = 20;
// RFC 9438 §4.2: C = 0.4 (segments per second cubed).
const C_NUM: u128 = 2;
const C_DEN: u128 = 5;
// RFC 9438 §4.3: α_cubic = 3(1 - β)/(1 + β) = 9/17, and 1 = 17/17 once W_est
// has reached the window of the last congestion event.
const ALPHA_DEN: u64 = 17;
const ALPHA_CUBIC_NUM: u64 = 9;
const ALPHA_RENO_NUM: u64 = 17;

const MICROS_PER_SEC_CUBED: u128 = 1_000_000_000_000_000_000;
// |t - K| is capped at 2^32 µs (71 minutes) so C * mss * |t - K|^3 fits in
// u128; by then the window is long limited by the receive window.
const MAX_CURVE_OFFSET_US: u64 = 1 << 32;

const DEFAULT_MSS: usize = 1024;

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cubic {
    w_max: usize, // window size prior to loss
    cwnd: usize,
    mss: usize,
    ssthresh: usize,
    rwnd: usize,
    k_us: u64,         // RFC 9438 §4.2 K: time to get back to w_max, in µs
    w_est: usize,      // RFC 9438 §4.3 Reno-friendly window, integrated per ACK
    w_est_carry: u64,  // remainder of W_est's growth, in 1/(ALPHA_DEN * cwnd) bytes
    ca_carry: usize,   // remainder of cwnd's growth towards the target, in 1/cwnd bytes
    cwnd_prior: usize, // cwnd at the most recent congestion event; gates α_cubic

    recovery_start: Option<Instant>,
    in_fast_recovery: bool,
    // Set on RTO, cleared when new data is ACKed. While set, further RTOs
    // are retransmissions of the same segment and must not reduce ssthresh
    // again (RFC 5681 section 3.1).
    in_rto_recovery: bool,
    // Set on RTO, cleared when slow start ends: RFC 3465 section 2.3 limits
    // slow start growth to one SMSS per ACK after a timeout.
    slow_start_after_rto: bool,
    // Slow start counts every byte of a stretch ACK (Socket::set_slow_start_counts_stretch_acks).
    stretch_acks: bool,
    idle_start: Option<Instant>, // RFC 9438 §4.2: when in-flight last hit 0
    // The largest flight an ACK found in the last few round trips, and when
    // (RFC 7661 pipeACK): what a loss reduces when the flight at the loss is
    // smaller because the sender had less to send.
    flight_used: usize,
    flight_used_at: Option<Instant>,
}

impl Cubic {
    pub fn new() -> Cubic {
        Cubic {
            w_max: DEFAULT_MSS * 2,
            cwnd: DEFAULT_MSS * 2,
            mss: DEFAULT_MSS,
            rwnd: 64 * DEFAULT_MSS,
            ssthresh: usize::MAX,
            k_us: 0,
            w_est: DEFAULT_MSS * 2,
            w_est_carry: 0,
            ca_carry: 0,
            cwnd_prior: DEFAULT_MSS * 2,

            recovery_start: None,
            in_fast_recovery: false,
            in_rto_recovery: false,
            slow_start_after_rto: false,
            stretch_acks: false,
            idle_start: None,
            flight_used: 0,
            flight_used_at: None,
        }
    }

    // RFC 9438 §4.2 eq. 2: K = cbrt((W_max - cwnd_epoch) / C), with the
    // windows in segments and K in seconds; here in bytes and microseconds:
    // K_us = cbrt((w_max - cwnd_epoch) / (C * mss) * 10^18).
    fn recompute_k(&mut self, cwnd_epoch: usize) {
        let drop = self.w_max.saturating_sub(cwnd_epoch) as u128;
        let mss = self.mss.max(1) as u128;
        self.k_us = cube_root(drop * C_DEN * MICROS_PER_SEC_CUBED / (C_NUM * mss));
    }

    // RFC 9438 §4.2 eq. 1: W_cubic(t) = C * (t - K)^3 + W_max, in bytes, for
    // t in microseconds since the start of the congestion avoidance stage.
    fn w_cubic(&self, t_us: u64) -> usize {
        let offset = t_us.abs_diff(self.k_us).min(MAX_CURVE_OFFSET_US) as u128;
        let cubed = offset * offset * offset;
        let delta = C_NUM * self.mss as u128 * cubed / (C_DEN * MICROS_PER_SEC_CUBED);
        let delta = usize::try_from(delta).unwrap_or(usize::MAX);
        if t_us >= self.k_us {
            self.w_max.saturating_add(delta)
        } else {
            self.w_max.saturating_sub(delta)
        }
    }

    // RFC 9438 §4.2: subtract the most recent idle period from t by sliding
    // recovery_start forward by the idle duration.
    fn absorb_idle(&mut self, now: Instant) {
        if let (Some(idle), Some(start)) = (self.idle_start, self.recovery_start)
            && now >= idle
        {
            self.recovery_start = Some(start + (now - idle));
        }
        self.idle_start = None;
    }

    // RFC 9438 §4.3: W_est += α_cubic * segments_acked / cwnd (in segments),
    // i.e. α_cubic * mss * acked / cwnd bytes, with the remainder carried.
    fn grow_w_est(&mut self, acked: usize) {
        let alpha = if self.w_est >= self.cwnd_prior {
            ALPHA_RENO_NUM
        } else {
            ALPHA_CUBIC_NUM
        };
        let den = ALPHA_DEN * self.cwnd.max(1) as u64;
        let credit = (alpha * self.mss as u64)
            .saturating_mul(acked as u64)
            .saturating_add(self.w_est_carry);
        self.w_est_carry = credit % den;
        let inc = usize::try_from(credit / den).unwrap_or(usize::MAX);
        self.w_est = self.w_est.saturating_add(inc);
    }

    // A new congestion avoidance stage starts from `cwnd_epoch`.
    fn start_epoch(&mut self, now: Instant, cwnd_epoch: usize) {
        self.recovery_start = Some(now);
        self.recompute_k(cwnd_epoch);
        self.w_est = cwnd_epoch;
        self.w_est_carry = 0;
        self.ca_carry = 0;
    }
}

impl Controller for Cubic {
    fn window(&self) -> usize {
        self.cwnd
    }

    fn on_ack(&mut self, now: Instant, len: usize, in_flight: usize, rtt: &RttEstimator) {
        self.absorb_idle(now);

        if in_flight == 0 {
            self.idle_start = Some(now);
        }

        // RFC 9438 only acts on ACKs of new data. The socket also notifies us
        // of accepted segments that acknowledge nothing (window updates, data
        // segments from the remote): those must not exit fast recovery nor
        // grow the window.
        if len == 0 {
            return;
        }

        // New data was ACKed: a timer-based loss episode, if any, is over.
        self.in_rto_recovery = false;

        // RFC 7661 §4.1 pipeACK: the largest flight an ACK found (`in_flight
        // + len`) in a sampling period of three smoothed round trips.
        let flight = in_flight.saturating_add(len);
        let period_us = u64::from(rtt.smoothed_rtt()).saturating_mul(3000);
        let stale = self
            .flight_used_at
            .is_none_or(|at| (now - at).total_micros() > period_us);
        if stale || flight >= self.flight_used {
            self.flight_used = flight;
            self.flight_used_at = Some(now);
        }

        // First new-data-ack exits fast recovery and deflates `cwnd`
        if self.in_fast_recovery {
            self.in_fast_recovery = false;
            self.cwnd = self.ssthresh;
            self.w_est = self.cwnd;
            self.w_est_carry = 0;
            return;
        } else if self.cwnd < self.ssthresh {
            // Slow start: grow by the bytes acknowledged, up to 2 SMSS per ACK.
            let inc =
                slow_start_increase(len, self.mss, self.slow_start_after_rto, self.stretch_acks);
            self.cwnd = self.cwnd.saturating_add(inc).min(self.rwnd).max(self.mss);
            return;
        }

        self.slow_start_after_rto = false;

        // ca: RFC 9438 §4.2 and §4.3: Calculate W_cubic and W_est. Use whichever grows faster.
        let recovery_start = match self.recovery_start {
            Some(t) => t,
            None => {
                // RFC 9438 §4.8: set W_max = cwnd and K = 0 at start of CA
                self.w_max = self.cwnd;
                self.start_epoch(now, self.cwnd);
                now
            }
        };

        // Elapsed time since the start of the recovery phase, in microseconds so the
        // cubic curve still advances between ACKs on sub-millisecond-RTT links.
        let Ok(t) = u64::try_from(now.total_micros() - recovery_start.total_micros()) else {
            return;
        };

        // RFC 9438 §4.3: advance the Reno-friendly estimate and use it while
        // it is ahead of the cubic curve.
        self.grow_w_est(len);
        if self.w_cubic(t) < self.w_est {
            self.cwnd = self.w_est.min(self.rwnd).max(self.mss);
            return;
        }

        // RFC 9438 §4.2: the congestion window target is W_cubic one RTT into
        // the future, at least cwnd and at most 1.5 * cwnd. srtt is in
        // milliseconds, floored at 1 ms so sub-ms RTTs still look ahead.
        let srtt_us = (u64::from(rtt.smoothed_rtt()) * 1000).max(1000);
        let target = self
            .w_cubic(t.saturating_add(srtt_us))
            .clamp(self.cwnd, self.cwnd.saturating_add(self.cwnd / 2));

        // cwnd += (target - cwnd) / cwnd per segment acknowledged, counted in
        // bytes, with the remainder carried so small steps are not lost.
        let credit = (target - self.cwnd)
            .saturating_mul(len)
            .saturating_add(self.ca_carry);
        self.ca_carry = credit % self.cwnd;
        let inc = credit / self.cwnd;
        self.cwnd = self.cwnd.saturating_add(inc).min(self.rwnd).max(self.mss);
    }

    fn on_dup_ack(&mut self, _now: Instant, len: usize, _in_flight: usize) {
        if self.in_fast_recovery {
            self.cwnd = self.cwnd.saturating_add(len).min(self.rwnd).max(self.mss);
        }
    }

    fn post_transmit(&mut self, now: Instant, _len: usize) {
        self.absorb_idle(now);
    }

    fn on_loss(&mut self, now: Instant, in_flight: usize) {
        self.idle_start = None;
        // Only cut window size on first entrance to fast recovery.
        if !self.in_fast_recovery {
            // RFC 9438 §4.3: remember the cwnd at this congestion event so W_est can
            // detect when it has recovered and switch α_cubic to 1.
            self.cwnd_prior = self.cwnd;

            // RFC 9438 §4.7: Fast Convergence
            // If loss happened at a smaller cwnd than before, it indicates a new flow.
            // Reduce the cubic plateau more than usual to create headroom.
            self.w_max = if self.cwnd < self.w_max {
                self.cwnd.saturating_mul(FAST_CONVERGENCE_NUM) / FAST_CONVERGENCE_DEN
            } else {
                self.cwnd
            };

            // RFC 9438 §4.6 reduces the flight size at the loss. When the sender
            // had less to send than its window just then (a proxy whose other
            // side stalled), that flight understates what the path carried a
            // moment before; as RFC 7661 §4.4.1 does for an application-limited
            // sender, reduce the larger of it and the recent flights
            // (pipeACK), never more than cwnd.
            let used = self.flight_used.min(self.cwnd);
            self.ssthresh = reduce(in_flight.max(used)).max(2 * self.mss);
            self.cwnd = self.ssthresh.min(self.rwnd).saturating_add(3 * self.mss);
            self.flight_used = 0;
            self.flight_used_at = None;

            self.in_fast_recovery = true;
            self.slow_start_after_rto = false;
            // The next congestion avoidance stage starts from ssthresh.
            self.start_epoch(now, self.ssthresh);
        }
    }

    fn on_rto(&mut self, _now: Instant, in_flight: usize) {
        // RFC 5681: when the retransmission timer fires for a segment that has
        // already been retransmitted by the timer (no new data was ACKed since
        // the previous RTO), ssthresh is held constant.
        if !self.in_rto_recovery {
            self.ssthresh = reduce(in_flight).max(2 * self.mss);
            self.in_rto_recovery = true;
        }

        self.cwnd = self.mss;
        self.slow_start_after_rto = true;
        self.cwnd_prior = in_flight;

        // RFC 9438 §4.8: defer W_max and K reset to the start of the next CA stage.
        self.recovery_start = None;
        self.in_fast_recovery = false;
        self.idle_start = None;
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss;
        // RFC 6928 (RFC 9438 section 4.10 keeps slow start as in RFC 5681):
        // the first flight is the initial window for this MSS.
        self.cwnd = initial_window(mss);
    }

    fn set_remote_window(&mut self, remote_window: usize) {
        if self.rwnd < remote_window {
            self.rwnd = remote_window;
        }
    }

    fn set_stretch_acks(&mut self, on: bool) {
        self.stretch_acks = on;
    }
}

/// RFC 9438 §4.6: the window after a congestion event, `β_cubic * window`.
fn reduce(window: usize) -> usize {
    // window / 10 * 7 + the rest: exact floor without overflowing usize.
    window / BETA_DEN * BETA_NUM + window % BETA_DEN * BETA_NUM / BETA_DEN
}

/// The integer cube root, `floor(cbrt(x))`, exact for every `u128`.
///
/// Digit-by-digit (binary long-hand) extraction, three bits of `x` per bit
/// of the root: with `y` the root so far, the next bit is 1 if
/// `(2y + 1)^3 - (2y)^3 = 3 * 2y * (2y + 1) + 1` still fits in what is
/// left of `x` at that position. 43 iterations, no multiplication wider
/// than the result, no floating point.
fn cube_root(x: u128) -> u64 {
    let mut rest = x;
    let mut root: u128 = 0;
    let mut shift: i32 = 126; // the highest multiple of 3 below 128
    while shift >= 0 {
        root <<= 1;
        let step = 3 * root * (root + 1) + 1;
        // `step << shift <= rest` without overflow: compare at `rest`'s scale.
        if rest >> shift >= step {
            rest -= step << shift;
            root += 1;
        }
        shift -= 3;
    }
    root as u64
}

#[cfg(test)]
mod test {
    use crate::{socket::tcp::RttEstimator, time::Instant};

    use super::*;

    const MSS: usize = 1024;

    // RFC 9438's β_cubic as the float the expectations below were written
    // with; the controller itself computes with 7/10.
    const BETA_CUBIC: f64 = 0.7;

    fn ack(cubic: &mut Cubic, len: usize, now: Instant) {
        cubic.on_ack(now, len, cubic.window().saturating_sub(MSS), &rtte())
    }

    fn rtte() -> RttEstimator {
        RttEstimator::default()
    }

    #[test]
    fn congestion_avoidance_works() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.w_max = MSS * 32;

        // Post-fast-recovery state: cwnd = ssthresh ≈ w_max * beta.
        cubic.cwnd = (MSS * 32 * 7) / 10;
        cubic.ssthresh = cubic.cwnd;
        cubic.recompute_k(cubic.cwnd);
        cubic.recovery_start = Some(Instant::from_millis(0));

        // CA at small time intervals should grow by less than 1 MSS per ACK.
        for i in 1..10 {
            let initial_cwnd = cubic.window();
            ack(&mut cubic, MSS, Instant::from_millis(i));
            assert!(cubic.window() < initial_cwnd + MSS);
        }

        // CA approaches w_max as t approaches K, and exceeds it past K.
        let pre = cubic.window();
        for i in 0..60 {
            ack(&mut cubic, MSS, Instant::from_millis(i * 100));
        }
        assert!(cubic.window() >= cubic.w_max);
        assert!(cubic.window() > pre);

        // RFC 9438 §4.2: the target is clamped to 1.5 * cwnd
        let pre = cubic.window();
        ack(&mut cubic, MSS, Instant::from_millis(100_000));
        assert!(cubic.window() <= pre + MSS);

        // CA should still cap at the receive window once enough ACKs accrue.
        for i in 0..200 {
            ack(&mut cubic, MSS, Instant::from_millis(100_000 + i * 100));
        }
        assert_eq!(cubic.window(), cubic.rwnd);
    }

    #[test]
    fn fast_recovery_works() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.cwnd = MSS * 32;

        // duplicate ACKs before fast recovery should do nothing
        let initial_cwnd = cubic.window();
        for _ in 0..3 {
            cubic.on_dup_ack(Instant::from_millis(0), MSS, initial_cwnd);
        }
        assert_eq!(cubic.window(), initial_cwnd);

        // we enter fast recovery upon minor loss (three duplicate ACKs).
        // ssthresh = flight_size * beta_cubic, cwnd = ssthresh + 3*MSS, recovery_start = now.
        // w_max = cwnd since the prior w_max (initial 2*MSS) is below cwnd.
        let in_flight = initial_cwnd / 2;
        let expected_ssthresh = (in_flight as f64 * BETA_CUBIC) as usize;
        cubic.on_loss(Instant::from_millis(0), in_flight);
        assert_eq!(cubic.ssthresh, expected_ssthresh);
        assert_eq!(cubic.cwnd, expected_ssthresh + 3 * MSS);
        assert_eq!(cubic.w_max, initial_cwnd);
        assert!(cubic.in_fast_recovery);
        assert_eq!(cubic.recovery_start, Some(Instant::from_millis(0)));

        // in fast recovery, each dup-ACK should increase the cwnd by 1 MSS
        let initial_cwnd = cubic.window();
        for i in 0..3 {
            for _ in 0..3 {
                let initial_cwnd = cubic.window();
                cubic.on_dup_ack(Instant::from_millis(i), MSS, initial_cwnd);
                assert_eq!(cubic.window(), initial_cwnd + MSS);
            }

            // multiple loss events (trip-dup-ack) should not trigger additional fast recovery reductions
            let initial_cwnd = cubic.window();
            let initial_ssthresh = cubic.ssthresh;
            let initial_w_max = cubic.w_max;
            cubic.on_loss(Instant::from_millis(i), initial_cwnd);
            assert_eq!(cubic.window(), initial_cwnd);
            assert_eq!(cubic.ssthresh, initial_ssthresh);
            assert_eq!(cubic.w_max, initial_w_max);
        }
        assert_eq!(cubic.window(), initial_cwnd + MSS * 9);

        // a non-duplicate ACK exits fast recovery and deflates cwnd to ssthresh
        ack(&mut cubic, MSS, Instant::from_millis(10));
        assert_eq!(cubic.window(), cubic.ssthresh);
        assert!(!cubic.in_fast_recovery);
    }

    fn rtte_of(ms: u32) -> RttEstimator {
        let mut rtt = RttEstimator::default();
        rtt.sample(ms);
        rtt
    }

    #[test]
    fn loss_after_the_flight_shrank_reduces_the_recent_flight() {
        // A sender filled a 100-segment window, then had only 20 segments to
        // send (its application stalled) when a loss was detected one round
        // trip later: β_cubic of the 100 segments it had in flight, not of 20.
        let rtt = rtte_of(25);
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.set_remote_window(1 << 20);
        cubic.cwnd = 100 * MSS;
        cubic.ssthresh = 100 * MSS; // congestion avoidance
        cubic.on_ack(Instant::from_millis(0), MSS, 99 * MSS, &rtt);
        cubic.on_ack(Instant::from_millis(25), MSS, 19 * MSS, &rtt);
        let cwnd = cubic.window();
        assert!(cwnd >= 100 * MSS);
        cubic.on_loss(Instant::from_millis(30), 20 * MSS);
        assert_eq!(cubic.ssthresh, 70 * MSS);
        assert_eq!(cubic.window(), 73 * MSS);
        assert_eq!(cubic.w_max, cwnd);

        // Never more than cwnd: a flight above it (cwnd just reduced) counts
        // only up to cwnd, and the flight at the loss as before.
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.ssthresh = 10 * MSS;
        cubic.on_ack(Instant::from_millis(0), MSS, 30 * MSS, &rtt);
        cubic.cwnd = 10 * MSS;
        cubic.on_loss(Instant::from_millis(1), 5 * MSS);
        assert_eq!(cubic.ssthresh, 7 * MSS);
    }

    #[test]
    fn loss_reduces_the_flight_at_the_loss_once_older_flights_are_stale() {
        // The 100-segment flight was more than three round trips before the
        // loss; since then every ACK found 20 segments in flight: those are
        // what the path carries now (RFC 9438 §4.6 flight_size).
        let rtt = rtte_of(25);
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.set_remote_window(1 << 20);
        cubic.cwnd = 100 * MSS;
        cubic.ssthresh = 100 * MSS;
        cubic.on_ack(Instant::from_millis(0), MSS, 99 * MSS, &rtt);
        for t in [80, 90, 100] {
            cubic.on_ack(Instant::from_millis(t), MSS, 19 * MSS, &rtt);
        }
        cubic.on_loss(Instant::from_millis(101), 20 * MSS);
        assert_eq!(cubic.ssthresh, 14 * MSS);

        // A loss starts a new sample: the next loss does not see flights
        // from before the first.
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.set_remote_window(1 << 20);
        cubic.cwnd = 100 * MSS;
        cubic.ssthresh = 100 * MSS;
        cubic.on_ack(Instant::from_millis(0), MSS, 99 * MSS, &rtt);
        cubic.on_loss(Instant::from_millis(1), 100 * MSS);
        cubic.on_ack(Instant::from_millis(2), MSS, 19 * MSS, &rtt); // ends recovery
        cubic.on_loss(Instant::from_millis(3), 20 * MSS);
        assert_eq!(cubic.ssthresh, 14 * MSS);
    }

    #[test]
    fn zero_length_ack_does_not_exit_fast_recovery() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.cwnd = MSS * 32;

        cubic.on_loss(Instant::from_millis(0), cubic.cwnd);
        assert!(cubic.in_fast_recovery);

        let cwnd = cubic.window();
        let ssthresh = cubic.ssthresh;

        // Accepted segments that acknowledge no new data (window updates,
        // data segments from the remote) must not end fast recovery or
        // change the window.
        ack(&mut cubic, 0, Instant::from_millis(1));
        assert!(cubic.in_fast_recovery);
        assert_eq!(cubic.window(), cwnd);
        assert_eq!(cubic.ssthresh, ssthresh);

        // The first ACK of new data still exits and deflates.
        ack(&mut cubic, MSS, Instant::from_millis(2));
        assert!(!cubic.in_fast_recovery);
        assert_eq!(cubic.window(), ssthresh);
    }

    #[test]
    fn repeated_rto_holds_ssthresh() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.cwnd = MSS * 32;

        // First RTO reduces ssthresh based on the flight size.
        cubic.on_rto(Instant::from_millis(0), MSS * 32);
        let ssthresh = cubic.ssthresh;
        assert_eq!(ssthresh, (32.0 * MSS as f64 * BETA_CUBIC) as usize);

        // Until new data is ACKed, further RTOs are retransmissions of the
        // same segment and must hold ssthresh constant instead of collapsing
        // it towards the minimum.
        cubic.on_rto(Instant::from_millis(1), MSS);
        assert_eq!(cubic.ssthresh, ssthresh);

        // Once new data is ACKed, the next RTO is a fresh loss detection
        // and reduces ssthresh again.
        ack(&mut cubic, MSS, Instant::from_millis(2));
        cubic.on_rto(Instant::from_millis(3), MSS * 4);
        assert_eq!(cubic.ssthresh, (4.0 * MSS as f64 * BETA_CUBIC) as usize);
    }

    #[test]
    fn slow_start_works() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.cwnd = MSS * 32;
        cubic.ssthresh = MSS * 16;

        // we enter slow start upon major loss (an RTO)
        // window resets to MSS, ssthresh becomes a fraction of the inflight bytes,
        // recovery_start is cleared so any later CA uses a fresh epoch,
        // and w_max is preserved (RFC 9438 §4.8 defers it to the next CA stage).
        let w_max_before_rto = cubic.w_max;
        let inflight = cubic.window();
        cubic.on_rto(Instant::from_millis(0), inflight);
        assert_eq!(cubic.ssthresh, (inflight as f64 * BETA_CUBIC) as usize);
        assert_eq!(cubic.window(), MSS);
        assert!(!cubic.in_fast_recovery);
        assert_eq!(cubic.recovery_start, None);
        assert_eq!(cubic.w_max, w_max_before_rto);

        // slow start grows by at most the MSS per ack
        let initial_cwnd = cubic.window();
        for i in 0..10 {
            let initial_cwnd = cubic.window();
            let now = Instant::from_millis(i);
            ack(&mut cubic, MSS * 2, now);
            assert_eq!(cubic.window(), initial_cwnd + MSS);
        }
        assert_eq!(cubic.window(), initial_cwnd + MSS * 10);

        // slow start uses the number of ACKed bytes if they're less than the MSS
        let initial_cwnd = cubic.window();
        for i in 0..10 {
            let initial_cwnd = cubic.window();
            let now = Instant::from_millis(10 + i);
            ack(&mut cubic, MSS / 2, now);
            assert_eq!(cubic.window(), initial_cwnd + MSS / 2);
        }
        assert_eq!(cubic.window(), initial_cwnd + MSS / 2 * 10);

        // slow start transitions to congestion avoidance at ssthresh
        let initial_cwnd = cubic.window();
        cubic.ssthresh = initial_cwnd + MSS;
        ack(&mut cubic, MSS, Instant::from_millis(30));
        assert_eq!(cubic.window(), initial_cwnd + MSS);
        assert_eq!(cubic.ssthresh, initial_cwnd + MSS);
    }

    #[test]
    fn slow_start_counts_stretch_acks_in_full_when_enabled() {
        let mut cubic = Cubic::new();
        cubic.set_stretch_acks(true);
        cubic.set_mss(MSS);
        let iw = cubic.window();

        // A stretch ACK covering five segments grows the window by five.
        ack(&mut cubic, 5 * MSS, Instant::from_millis(1));
        assert_eq!(cubic.window(), iw + 5 * MSS);
        ack(&mut cubic, MSS / 2, Instant::from_millis(2));
        assert_eq!(cubic.window(), iw + 5 * MSS + MSS / 2);

        // After a timeout, slow start still counts one segment per ACK
        // (RFC 3465 section 2.3).
        cubic.on_rto(Instant::from_millis(3), 8 * MSS);
        let w = cubic.window();
        ack(&mut cubic, 5 * MSS, Instant::from_millis(4));
        assert_eq!(cubic.window(), w + MSS);
    }

    #[test]
    fn slow_start_counts_bytes_up_to_two_segments_per_ack() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        let iw = cubic.window();

        // RFC 3465 L = 2: a delayed ACK covering two segments grows the
        // window by two segments; a stretch ACK by no more than two.
        ack(&mut cubic, 2 * MSS, Instant::from_millis(1));
        assert_eq!(cubic.window(), iw + 2 * MSS);
        ack(&mut cubic, 5 * MSS, Instant::from_millis(2));
        assert_eq!(cubic.window(), iw + 4 * MSS);
        ack(&mut cubic, MSS / 2, Instant::from_millis(3));
        assert_eq!(cubic.window(), iw + 4 * MSS + MSS / 2);
    }

    #[test]
    fn progress_to_ca_via_rto() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);

        let mut time = 0;

        // slow start from default state
        let initial_cwnd = cubic.window();
        for _ in 0..30 {
            time += 1;
            ack(&mut cubic, MSS, Instant::from_millis(time));
        }
        assert_eq!(cubic.window(), initial_cwnd + MSS * 30);
        assert!(cubic.window() < cubic.ssthresh);

        // rto: cwnd resets to MSS and sstresh reduces
        let rto_cwnd = cubic.window();
        cubic.on_rto(Instant::from_millis(time), rto_cwnd);
        assert_eq!(cubic.window(), MSS);
        assert_eq!(cubic.ssthresh, (rto_cwnd as f64 * BETA_CUBIC) as usize);

        // slow start again until cwnd reaches new ssthresh
        while cubic.window() < cubic.ssthresh {
            time += 1;
            let initial_cwnd = cubic.window();
            ack(&mut cubic, MSS, Instant::from_millis(time));
            assert_eq!(cubic.window(), initial_cwnd + MSS);
        }
        assert!(cubic.window() >= cubic.ssthresh);
        assert!(cubic.window() < cubic.ssthresh + MSS);

        // ca: first CA ACK starts a fresh epoch with W_max = cwnd and K = 0.
        time += 1;
        let cwnd_at_ca_entry = cubic.window();
        ack(&mut cubic, MSS, Instant::from_millis(time));
        assert_eq!(cubic.w_max, cwnd_at_ca_entry);
        assert_eq!(cubic.k_us, 0);
        assert!(cubic.window() >= cwnd_at_ca_entry);
    }

    #[test]
    fn progress_to_ca_via_loss() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);

        let mut time = 0;

        // slow start from default state
        let initial_cwnd = cubic.window();
        for _ in 0..30 {
            time += 1;
            ack(&mut cubic, MSS, Instant::from_millis(time));
        }
        assert_eq!(cubic.window(), initial_cwnd + MSS * 30);
        assert!(cubic.window() < cubic.ssthresh);

        // dup ACKs: ssthresh = cwnd * beta, cwnd = ssthresh + 3*MSS, recovery_start = now
        time += 1;
        let loss_cwnd = cubic.window();
        let expected_ssthresh = (loss_cwnd as f64 * BETA_CUBIC) as usize;
        cubic.on_loss(Instant::from_millis(time), loss_cwnd);
        assert_eq!(cubic.ssthresh, expected_ssthresh);
        assert_eq!(cubic.window(), expected_ssthresh + 3 * MSS);
        assert!(cubic.in_fast_recovery);
        assert_eq!(cubic.recovery_start, Some(Instant::from_millis(time)));

        // inflate cwnd on each duplicate ACK
        for _ in 0..9 {
            time += 1;
            let initial_cwnd = cubic.window();
            cubic.on_dup_ack(Instant::from_millis(time), MSS, cubic.cwnd);
            assert_eq!(cubic.window(), initial_cwnd + MSS);
        }

        // non-duplicate ACK deflates cwnd to ssthresh
        time += 1;
        ack(&mut cubic, MSS, Instant::from_millis(time));
        assert_eq!(cubic.window(), expected_ssthresh);
        assert!(!cubic.in_fast_recovery);

        // ca: subsequent ACKs follow the cubic curve
        time += 1;
        let initial_cwnd = cubic.window();
        ack(&mut cubic, MSS, Instant::from_millis(time));
        assert!(cubic.window() >= initial_cwnd);
    }

    #[test]
    fn fast_convergence_reduces_w_max() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.w_max = MSS * 50;
        cubic.cwnd = MSS * 30;

        // Loss while cwnd < w_max (a new competing flow) should pull w_max down.
        let w_max_prev = cubic.w_max;
        cubic.on_loss(Instant::from_millis(0), cubic.cwnd);
        assert!(cubic.w_max < w_max_prev);
    }

    #[test]
    fn cube_root_is_exact() {
        // Every root on a grid, and its neighbours: floor(cbrt(r^3 - 1)) = r - 1.
        for r in (1u128..2_000_000)
            .step_by(997)
            .chain([1, 2, 3, (1 << 42) - 1, 1 << 42])
        {
            let cube = r * r * r;
            assert_eq!(cube_root(cube) as u128, r, "cbrt({cube})");
            assert_eq!(cube_root(cube - 1) as u128, r - 1, "cbrt({cube} - 1)");
            assert_eq!(cube_root(cube + 1) as u128, r, "cbrt({cube} + 1)");
        }
        assert_eq!(cube_root(0), 0);
        // The largest input: 6981463658331^3 <= 2^128 - 1 < 6981463658332^3.
        assert_eq!(cube_root(u128::MAX), 6_981_463_658_331);
        // Between cubes: floor(cbrt(x)) for x spread over the u64 range.
        let mut x: u128 = 7;
        while x < u64::MAX as u128 {
            let r = cube_root(x) as u128;
            assert!(
                r * r * r <= x && (r + 1) * (r + 1) * (r + 1) > x,
                "cbrt({x}) = {r}"
            );
            x = x * 3 + 1;
        }
    }

    /// RFC 9438 eq. 1 and 2 in floating point, in bytes and seconds.
    fn rfc9438_w_cubic(w_max: f64, cwnd_epoch: f64, mss: f64, t: f64) -> f64 {
        let c = 0.4 * mss;
        let k = ((w_max - cwnd_epoch) / c).cbrt();
        c * (t - k).powi(3) + w_max
    }

    #[test]
    fn w_cubic_follows_rfc9438() {
        for mss in [536, 1448, 1460, 8960] {
            for w_max_segments in [4, 10, 45, 100, 1000, 10_000, 100_000] {
                let mut cubic = Cubic::new();
                cubic.set_mss(mss);
                cubic.w_max = w_max_segments * mss;
                let cwnd_epoch = cubic.w_max * 7 / 10;
                cubic.recompute_k(cwnd_epoch);

                let k = ((cubic.w_max - cwnd_epoch) as f64 / (0.4 * mss as f64)).cbrt();
                assert!((cubic.k_us as f64 - k * 1e6).abs() <= 1.0, "K {k} s");

                // t from 0 to 2K + 5 s, in uneven steps.
                let end_us = (2.0 * k * 1e6) as u64 + 5_000_000;
                let mut t_us = 0;
                while t_us <= end_us {
                    let expected = rfc9438_w_cubic(
                        cubic.w_max as f64,
                        cwnd_epoch as f64,
                        mss as f64,
                        t_us as f64 / 1e6,
                    );
                    let found = cubic.w_cubic(t_us) as f64;
                    // A floor of at most a microsecond in K and a byte in the
                    // product: within a byte plus 10 ppm.
                    let tolerance = 1.0 + expected.abs() * 1e-5;
                    assert!(
                        (found - expected.max(0.0)).abs() <= tolerance,
                        "mss {mss} W_max {w_max_segments} segs, t {t_us} us: {found} vs {expected}"
                    );
                    t_us += 12_345 + t_us / 7;
                }
            }
        }
    }

    #[test]
    fn concave_then_convex_around_w_max() {
        // After a loss at 100 segments, congestion avoidance climbs back
        // towards W_max, flattens near it at t = K, then probes beyond.
        let mss = 1460;
        let mut cubic = Cubic::new();
        cubic.set_mss(mss);
        cubic.rwnd = usize::MAX;
        cubic.cwnd = 100 * mss;
        cubic.on_loss(Instant::from_millis(0), 100 * mss);
        ack(&mut cubic, mss, Instant::from_millis(1)); // exits fast recovery
        assert_eq!(cubic.window(), 70 * mss);
        let k_ms = cubic.k_us / 1000;
        // K = cbrt(30 / 0.4) = 4.217 s
        assert_eq!(k_ms, 4217);

        // Every ACK of one segment, 100 per 100 ms "round trip", for 8 s.
        let mut samples = Vec::new();
        for ms in 2..8000 {
            cubic.on_ack(Instant::from_millis(ms), mss, cubic.window(), &rtte());
            if ms % 500 == 0 {
                samples.push(cubic.window());
            }
        }
        let at = |ms: usize| samples[ms / 500 - 1];
        // Below W_max before K, growing ever more slowly (concave)...
        assert!(at(2000) < 100 * mss && at(4000) <= 100 * mss + mss);
        assert!(at(1000) - at(500) > at(4000) - at(3500));
        // ... and beyond it after K, ever faster (convex).
        assert!(at(7500) > 100 * mss + 5 * mss);
        assert!(at(7500) - at(7000) > at(5500) - at(5000));
    }

    #[test]
    fn reno_friendly_region_uses_w_est() {
        // With a small W_max the cubic curve is nearly flat for a short
        // RTT; W_est (Reno's AIMD with α_cubic = 9/17) then sets the window.
        let mss = 1000;
        let mut cubic = Cubic::new();
        cubic.set_mss(mss);
        cubic.rwnd = usize::MAX;
        cubic.cwnd = 20 * mss;
        cubic.on_loss(Instant::from_millis(0), 20 * mss);
        ack(&mut cubic, mss, Instant::from_millis(1));
        assert_eq!(cubic.window(), 14 * mss);

        // ACK one window's worth of bytes, one segment per ACK, within 10 ms:
        // W_cubic(0.01 s) is still below 14 segments plus a fraction, W_est
        // grows by α_cubic = 9/17 of a segment per window acknowledged.
        for i in 0..14 {
            cubic.on_ack(
                Instant::from_micros(1000 + 500 * i),
                mss,
                cubic.window(),
                &rtte(),
            );
        }
        let growth = cubic.window() - 14 * mss;
        let expected = mss * 9 / 17; // 529
        assert!(
            (expected - 20..=expected).contains(&growth),
            "grew {growth}, expected about {expected}"
        );
    }

    #[test]
    fn fast_convergence_sets_w_max_to_17_20ths() {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.w_max = MSS * 50;
        cubic.cwnd = MSS * 40;
        cubic.on_loss(Instant::from_millis(0), MSS * 40);
        // (1 + β) / 2 = 0.85
        assert_eq!(cubic.w_max, MSS * 34);
        assert_eq!(cubic.ssthresh, MSS * 28);
        // K from W_max - cwnd_epoch = 6 segments: cbrt(6 / 0.4) = 2.466 s.
        assert_eq!(cubic.k_us / 1000, 2466);
    }
}
