//! The serve loop's clocks, as pure functions of the time: when to wake
//! next, when to publish the stats, when idle_exit fires.

use alloc::string::String;
use smoltcp::time::{Duration, Instant};

/// The serve loop never sleeps longer than this (it looks at the stats
/// then: a look at unchanged counters costs no xenstore request).
pub const STATS_PERIOD_NS: u64 = 1_000_000_000;

/// What the serve loop's next wake-up is the earliest of, as delays from
/// `now_ns` (`None`: that source has no timer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timers {
    /// The engine's `poll_delay` (smoltcp retransmits, ARP, DHCP, ...).
    pub engine: Option<Duration>,
    /// Netfront's `poll_delay` in ms (RX refill retry, backend state check).
    pub nic_ms: Option<u64>,
    /// What is left of the idle_exit time, in ns.
    pub idle_left_ns: Option<u64>,
}

/// The absolute deadline (ns) for the serve loop's sleep: one stats period
/// from `now_ns`, or sooner if the engine, netfront or idle_exit need it.
pub fn serve_deadline(now_ns: u64, t: Timers) -> u64 {
    let mut deadline = now_ns + STATS_PERIOD_NS;
    if let Some(left) = t.idle_left_ns {
        deadline = deadline.min(now_ns + left);
    }
    if let Some(d) = t.engine {
        deadline = deadline.min(now_ns + d.total_micros() * 1000);
    }
    if let Some(ms) = t.nic_ms {
        deadline = deadline.min(now_ns + ms * 1_000_000);
    }
    deadline
}

/// `data/stats`: rewritten at most once per period (the `stats_period=`
/// key, default 1 s), and only when the counters changed (the profile that
/// rides along changes on every pass, even idle ones, so it does not
/// count): an idle instance writes nothing, and a busy one at most once a
/// period, whatever its traffic.
#[derive(Debug)]
pub struct StatsPublisher {
    last_line: String,
    /// When the counters were last looked at (`None`: never; the first
    /// look is at once).
    last_ns: Option<u64>,
    period_ns: u64,
}

impl Default for StatsPublisher {
    fn default() -> StatsPublisher {
        StatsPublisher::new()
    }
}

impl StatsPublisher {
    /// Once a second (the key's default).
    pub fn new() -> StatsPublisher {
        StatsPublisher::every(core::time::Duration::from_nanos(STATS_PERIOD_NS))
    }

    /// Looks at the counters at most once per `period` (at least 1 ms;
    /// the config key bounds it to 100 ms..=1 h).
    pub fn every(period: core::time::Duration) -> StatsPublisher {
        StatsPublisher {
            last_line: String::new(),
            last_ns: None,
            period_ns: (period.as_nanos() as u64).max(1_000_000),
        }
    }

    /// At `now_ns`: if a period passed since the last look, take the
    /// counters' line from `line` and return it when it differs from the
    /// last one published (the caller writes it); `None` otherwise.
    pub fn check(&mut self, now_ns: u64, line: impl FnOnce() -> String) -> Option<&str> {
        if self
            .last_ns
            .is_some_and(|last| now_ns.saturating_sub(last) < self.period_ns)
        {
            return None;
        }
        self.last_ns = Some(now_ns);
        let line = line();
        if line == self.last_line {
            return None;
        }
        self.last_line = line;
        Some(&self.last_line)
    }
}

/// idle_exit: what to do about the time without a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// No limit, or a connection is open: no timer.
    Off,
    /// Idle, with this many ns left before the exit.
    Left(u64),
    /// Idle for this long, the limit or more: exit now.
    Exit(Duration),
}

/// Where idle_exit stands at `now`, for a `limit` (`None`: off) and the
/// engine's `idle_since` (`None` while a connection is open).
pub fn idle_exit(
    limit: Option<core::time::Duration>,
    idle_since: Option<Instant>,
    now: Instant,
) -> Idle {
    let (Some(limit), Some(since)) = (limit, idle_since) else {
        return Idle::Off;
    };
    let idle_for = Duration::from_micros((now - since).total_micros());
    if idle_for.total_micros() as u128 >= limit.as_micros() {
        return Idle::Exit(idle_for);
    }
    Idle::Left(limit.as_nanos() as u64 - idle_for.total_micros() * 1000)
}
