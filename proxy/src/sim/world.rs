//! The engine and hosts on one network, driven by virtual time.

use alloc::vec::Vec;

use crate::engine::Engine;
use smoltcp::time::{Duration, Instant};

use super::{Host, Net};

/// The proxy engine and hosts on one simulated network, driven by virtual time.
pub struct World {
    pub net: Net,
    pub proxy: Engine,
    pub proxy_port: usize,
    pub hosts: Vec<Host>,
    /// Polls of the proxy so far.
    pub proxy_polls: u64,
    /// A monotonic clock in nanoseconds (the benchmark's), to time the engine's
    /// polls apart from the simulated hosts'; `None` in tests.
    pub clock: Option<fn() -> u64>,
    /// Nanoseconds spent in the engine's polls, when `clock` is set.
    pub proxy_nanos: u64,
}

impl World {
    pub fn now(&self) -> Instant {
        self.net.now()
    }

    /// Poll everything once at the current time. Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let now = self.net.now();
        self.net.advance(now);
        let t0 = self.clock.map(|c| c());
        let mut any = self.proxy.poll(now, &mut self.net.port(self.proxy_port));
        if let (Some(c), Some(t0)) = (self.clock, t0) {
            self.proxy_nanos += c().saturating_sub(t0);
        }
        self.proxy_polls += 1;
        for h in &mut self.hosts {
            any |= h.poll(&mut self.net);
        }
        self.net.advance(now);
        any
    }

    /// Run until `cond` holds (true) or `limit` of virtual time passed (false).
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&World) -> bool) -> bool {
        let deadline = self.net.now() + limit;
        loop {
            let progressed = self.step();
            if cond(self) {
                return true;
            }
            let now = self.net.now();
            if self.net.any_rx() {
                continue;
            }
            let mut next: Option<Instant> = self.net.next_arrival();
            let mut consider = |d: Option<Duration>| {
                if let Some(d) = d {
                    let t = now + d;
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            };
            consider(self.proxy.poll_delay(now));
            for h in &mut self.hosts {
                consider(h.poll_delay(now));
            }
            let Some(mut t) = next else {
                return false; // nothing will ever happen again
            };
            if t <= now && !progressed {
                t = now + Duration::from_micros(1);
            }
            if t > deadline {
                self.net.advance(deadline);
                return cond(self);
            }
            self.net.advance(t);
        }
    }

    /// Run for exactly `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }
}
