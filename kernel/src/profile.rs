//! Where the main loop's time goes: the vCPU's running time (from Xen's
//! runstate area, see `time::cpu`) per section of the loop, the time it was
//! blocked (asleep in SCHEDOP_poll) and runnable but not running (steal:
//! dom0 or other guests had the CPU), and how often it slept and woke.
//!
//! The guest has one vCPU and never takes an interrupt, so the sections'
//! sum is the CPU the guest used. Reading the counters costs one rdtsc and a
//! few multiplies, cheap next to a pass of the loop; it answers "is the
//! guest busy, and with what" under load, which the benchmark needs to tell
//! a guest-bound run from a dom0-bound one. Steal must stay out of the
//! sections: under emulation it is often larger than the guest's own work.

use core::fmt;

/// The parts of one pass of the main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Netfront's own poll: completions, RX refill, backend state.
    Nic = 0,
    /// The engine: smoltcp (which pulls RX frames and pushes TX frames
    /// through netfront's phy::Device, so the frame copies are in here) and
    /// the proxy's pumping between sockets.
    Engine = 1,
    /// Xenstore: control requests and the data/stats key.
    Control = 2,
    /// Going to sleep and waking (the SCHEDOP_poll hypercall's own cost).
    Sleep = 3,
}

const SECTIONS: usize = 4;
const NAMES: [&str; SECTIONS] = ["nic", "engine", "xs", "sleep"];

/// Accumulated time per section.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    ns: [u64; SECTIONS],
    /// Passes through the loop.
    pub loops: u64,
    /// Sleeps that returned because an event channel fired before the deadline.
    pub wakeups: u64,
    /// Blocked (asleep) and runnable-not-running time, from the runstate.
    pub blocked_ns: u64,
    pub steal_ns: u64,
}

impl Profile {
    pub const fn new() -> Profile {
        Profile {
            ns: [0; SECTIONS],
            loops: 0,
            wakeups: 0,
            blocked_ns: 0,
            steal_ns: 0,
        }
    }

    /// Charge the time from `start_ns` to `end_ns` to `s`; returns `end_ns`
    /// so sections can be chained with one clock read each.
    pub fn charge(&mut self, s: Section, start_ns: u64, end_ns: u64) -> u64 {
        self.ns[s as usize] += end_ns.saturating_sub(start_ns);
        end_ns
    }

    pub fn ns(&self, s: Section) -> u64 {
        self.ns[s as usize]
    }

    /// CPU used by all sections, in ns.
    pub fn busy_ns(&self) -> u64 {
        self.ns.iter().sum::<u64>()
    }
}

/// One line of `cpu_KEY=VALUE` tokens (the `cpu_` part of the guest's
/// `data/stats`, format in the top-level README, "The stats line"):
/// `cpu_nic_ms=… cpu_engine_ms=… cpu_xs_ms=… cpu_sleep_ms=… cpu_busy_ms=…
/// cpu_blocked_ms=… cpu_steal_ms=… cpu_loops=… cpu_wakeups=…`.
impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, ns) in NAMES.iter().zip(self.ns.iter()) {
            write!(f, "cpu_{name}_ms={} ", ns / 1_000_000)?;
        }
        write!(
            f,
            "cpu_busy_ms={} cpu_blocked_ms={} cpu_steal_ms={} cpu_loops={} cpu_wakeups={}",
            self.busy_ns() / 1_000_000,
            self.blocked_ns / 1_000_000,
            self.steal_ns / 1_000_000,
            self.loops,
            self.wakeups
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_sections_and_formats_one_line() {
        let mut p = Profile::new();
        let t = p.charge(Section::Nic, 0, 2_000_000);
        let t = p.charge(Section::Engine, t, 7_500_000);
        let t = p.charge(Section::Control, t, 8_000_000);
        p.charge(Section::Sleep, t, 9_000_000);
        p.loops = 3;
        p.wakeups = 1;
        p.blocked_ns = 40_000_000;
        p.steal_ns = 3_000_000;
        assert_eq!(p.busy_ns(), 9_000_000);
        assert_eq!(
            p.to_string(),
            "cpu_nic_ms=2 cpu_engine_ms=5 cpu_xs_ms=0 cpu_sleep_ms=1 cpu_busy_ms=9 \
             cpu_blocked_ms=40 cpu_steal_ms=3 cpu_loops=3 cpu_wakeups=1"
        );
    }

    #[test]
    fn a_clock_going_backwards_charges_nothing() {
        let mut p = Profile::new();
        p.charge(Section::Engine, 10, 5);
        assert_eq!(p.ns(Section::Engine), 0);
    }
}
