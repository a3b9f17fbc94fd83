//! One direction of an emulated link: frames go in with [`Link::offer`] and come
//! out with [`Link::pop_due`] once their one-way delay (plus their turn on a
//! rate-limited wire) has passed. Pure logic on a caller-supplied clock, so the
//! host tests drive it with synthetic time and every run is repeatable.
//!
//! * **Delay**: every frame is due exactly `delay` after it finished being
//!   serialised (after it arrived, without a rate limit). The delay is constant
//!   and the wire is FIFO, so frames never overtake each other.
//! * **Rate**: with `rate_bps > 0` a frame occupies the wire for
//!   `len * 8 / rate` after the previous one; a frame that would wait longer
//!   than `queue_limit` for the wire is dropped (drop-tail queue).
//! * **Loss**: each IPv4/IPv6 frame is lost with probability `loss`, drawn from
//!   a PRNG seeded per direction: one draw per IP frame, so after a (re)seed
//!   with [`Link::reseed`] the k-th IP frame is lost or not whatever came
//!   before (a benchmark pairs its targets' transfers on the same decisions).
//!   ARP and other non-IP frames are never lost and draw nothing: a lost ARP
//!   request costs a 1 s retry timer, which is not what a TCP benchmark sets
//!   out to measure.
//! * `max_frames` bounds the memory held (frames in flight); a frame past it is
//!   dropped and counted as a queue drop.

use std::collections::VecDeque;
use std::time::Duration;

/// Parameters of one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    pub delay: Duration,
    /// Bits per second; 0 means no rate limit.
    pub rate_bps: u64,
    /// Longest wait for the wire before a frame is dropped (only with a rate).
    pub queue_limit: Duration,
    /// Probability (0.0..=1.0) that an IP frame is lost.
    pub loss: f64,
    /// Most frames held in flight at once.
    pub max_frames: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            rate_bps: 0,
            queue_limit: Duration::from_millis(100),
            loss: 0.0,
            max_frames: 200_000,
        }
    }
}

/// What happened to an offered frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Queued; leaves the link at this time.
    Queued(Duration),
    /// Lost at random.
    Lost,
    /// Dropped: the queue (rate limit) or the in-flight bound was full.
    QueueFull,
}

/// Frame counts of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub received: u64,
    pub forwarded: u64,
    pub bytes_forwarded: u64,
    pub lost: u64,
    pub queue_dropped: u64,
}

/// The project's one seeded PRNG (SplitMix64, crate `rng/`): loss decisions.
pub use miniproxy_rng::Rng;

/// Whether a frame is subject to random loss: IPv4 or IPv6 (by EtherType).
pub fn subject_to_loss(frame: &[u8]) -> bool {
    matches!(frame.get(12..14), Some([0x08, 0x00]) | Some([0x86, 0xdd]))
}

/// One direction of the link.
pub struct Link {
    cfg: LinkConfig,
    rng: Rng,
    /// Frames in flight with their due times, oldest (and earliest) first.
    queue: VecDeque<(Duration, Vec<u8>)>,
    /// When the wire is free again (rate limit only).
    wire_free_at: Duration,
    counters: Counters,
}

impl Link {
    pub fn new(cfg: LinkConfig, seed: u64) -> Link {
        Link {
            cfg,
            rng: Rng::new(seed),
            queue: VecDeque::new(),
            wire_free_at: Duration::ZERO,
            counters: Counters::default(),
        }
    }

    /// Restart the loss decisions from `seed`, as [`Link::new`] does: the IP
    /// frames offered from now on meet the same losses as those offered to a
    /// new link with this seed. Frames in flight and the counters are kept.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Frames in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Offer a frame that arrived at `now` (which must not go backwards).
    pub fn offer(&mut self, now: Duration, frame: Vec<u8>) -> Verdict {
        self.counters.received += 1;
        if subject_to_loss(&frame) && self.rng.chance(self.cfg.loss) {
            self.counters.lost += 1;
            return Verdict::Lost;
        }
        if self.queue.len() >= self.cfg.max_frames {
            self.counters.queue_dropped += 1;
            return Verdict::QueueFull;
        }
        let sent = if self.cfg.rate_bps == 0 {
            now
        } else {
            let start = self.wire_free_at.max(now);
            if start - now > self.cfg.queue_limit {
                self.counters.queue_dropped += 1;
                return Verdict::QueueFull;
            }
            let nanos =
                (frame.len() as u128 * 8 * 1_000_000_000).div_ceil(self.cfg.rate_bps as u128);
            self.wire_free_at = start + Duration::from_nanos(nanos as u64);
            self.wire_free_at
        };
        let due = sent + self.cfg.delay;
        self.queue.push_back((due, frame));
        Verdict::Queued(due)
    }

    /// When the oldest frame in flight is due, if any.
    pub fn next_due(&self) -> Option<Duration> {
        self.queue.front().map(|(t, _)| *t)
    }

    /// The oldest frame if it is due at `now`.
    pub fn pop_due(&mut self, now: Duration) -> Option<Vec<u8>> {
        if self.next_due()? > now {
            return None;
        }
        let (_, frame) = self.queue.pop_front()?;
        self.counters.forwarded += 1;
        self.counters.bytes_forwarded += frame.len() as u64;
        Some(frame)
    }
}
