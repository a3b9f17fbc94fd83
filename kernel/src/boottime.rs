//! The boot timeline: when each phase of the boot ended, and where the
//! vCPU's time went until ready, published once as the `data/boot` key and
//! a console line.
//!
//! The marks are Xen system time (ns) kept in a fixed array of atomics: the
//! first ones are taken before the heap exists, and a static needs no
//! `unsafe`. Each mark keeps its first value, so a later reconnect of the
//! vif does not move the boot's. At ready, [`BootReport`] turns them into
//! µs offsets from our first instruction, in boot order:
//!
//! ```text
//! mem_us=… heap_us=… cfg_us=… xs_us=… nf_front_us=… nf_initwait_us=…
//! nf_keys_us=… nf_conn_us=… addr_us=… ready_us=… run_us=… steal_us=… blocked_us=…
//! mem_run_us=… heap_run_us=… … ready_run_us=…
//! ```
//!
//! (one line; marks a boot does not reach, e.g. netfront's without a vif,
//! are left out). `run_us`/`steal_us`/`blocked_us` are the vCPU's running,
//! runnable-but-not-running and blocked time from the runstate area's
//! registration (a few µs after the first instruction) to ready: the
//! guest's own CPU time apart from the time it waited for dom0 (xenstored,
//! the backend's hotplug) or for a physical CPU. `KEY_run_us` is the
//! running time at each mark, so a phase's own CPU time is the difference
//! between its mark's and the one before.

use crate::time::Cpu;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// The end of one boot phase, in boot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// All of our memory mapped (`mm::map_rest`).
    Mem = 0,
    /// The heap initialised: allocation works from here on.
    Heap,
    /// The configuration read from `extra=` and parsed.
    Cfg,
    /// Xenstore in use: the control keys written and their watches set.
    Xs,
    /// Netfront read our device's keys and wrote Initialising.
    NfFront,
    /// The backend reached InitWait (its hotplug is done).
    NfInitWait,
    /// Our rings, event channel, features and Connected written.
    NfKeys,
    /// The backend reached Connected.
    NfConn,
    /// The address is set (static, or the DHCP lease) and announced.
    Addr,
    /// The rules listen and `data/ready` is written.
    Ready,
}

pub const MARKS: usize = 10;
const ORDER: [Mark; MARKS] = [
    Mark::Mem,
    Mark::Heap,
    Mark::Cfg,
    Mark::Xs,
    Mark::NfFront,
    Mark::NfInitWait,
    Mark::NfKeys,
    Mark::NfConn,
    Mark::Addr,
    Mark::Ready,
];

impl Mark {
    /// The key's name in `data/boot`, without `_us`.
    pub fn name(self) -> &'static str {
        match self {
            Mark::Mem => "mem",
            Mark::Heap => "heap",
            Mark::Cfg => "cfg",
            Mark::Xs => "xs",
            Mark::NfFront => "nf_front",
            Mark::NfInitWait => "nf_initwait",
            Mark::NfKeys => "nf_keys",
            Mark::NfConn => "nf_conn",
            Mark::Addr => "addr",
            Mark::Ready => "ready",
        }
    }
}

/// A mark not taken (Xen system time never gets there).
const UNSET: u64 = u64::MAX;

/// The marks of one boot.
pub struct Timeline {
    at: [AtomicU64; MARKS],
    /// The vCPU's running time (runstate total) at each mark, if known.
    run_at: [AtomicU64; MARKS],
}

/// The unikernel's timeline, marked by the boot code, the runtime's Xen
/// glue and netfront's platform.
pub static TIMELINE: Timeline = Timeline::new();

impl Timeline {
    pub const fn new() -> Timeline {
        Timeline {
            at: [const { AtomicU64::new(UNSET) }; MARKS],
            run_at: [const { AtomicU64::new(UNSET) }; MARKS],
        }
    }

    /// Record `m` at Xen system time `now_ns`, with the vCPU's running
    /// total `run_ns` if known, unless `m` was recorded before.
    pub fn mark_at(&self, m: Mark, now_ns: u64, run_ns: Option<u64>) {
        let first = self.at[m as usize]
            .compare_exchange(
                UNSET,
                now_ns.min(UNSET - 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if let Some(run) = run_ns.filter(|_| first) {
            self.run_at[m as usize].store(run.min(UNSET - 1), Ordering::Relaxed);
        }
    }

    /// Record `m` now, with the vCPU's running time since the runstate's
    /// registration.
    pub fn mark(&self, m: Mark) {
        let run = crate::time::cpu_since_start().map(|c| c.running);
        self.mark_at(m, crate::time::now_ns(), run);
    }

    /// When `m` was recorded (Xen system time), if it was.
    pub fn get(&self, m: Mark) -> Option<u64> {
        Some(self.at[m as usize].load(Ordering::Relaxed)).filter(|&t| t != UNSET)
    }

    /// The vCPU's running time when `m` was recorded, if known.
    pub fn run_at(&self, m: Mark) -> Option<u64> {
        Some(self.run_at[m as usize].load(Ordering::Relaxed)).filter(|&t| t != UNSET)
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

/// The timeline as published: offsets (ns) from the first instruction, and
/// the vCPU's time over the boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootReport {
    /// Indexed by `Mark as usize`; `None` for marks not reached.
    pub offsets_ns: [Option<u64>; MARKS],
    /// The vCPU's running time at each mark (from the runstate's
    /// registration), `None` where not known.
    pub run_ns: [Option<u64>; MARKS],
    /// Running / runnable / blocked from the runstate's registration to
    /// ready; `None` without a runstate area.
    pub cpu: Option<Cpu>,
}

impl BootReport {
    /// The report of `t` for a boot whose first instruction ran at
    /// `boot_ns` (a mark before it, which the clock should not allow,
    /// counts as 0).
    pub fn new(t: &Timeline, boot_ns: u64, cpu: Option<Cpu>) -> BootReport {
        let mut offsets_ns = [None; MARKS];
        let mut run_ns = [None; MARKS];
        for m in ORDER {
            offsets_ns[m as usize] = t.get(m).map(|at| at.saturating_sub(boot_ns));
            run_ns[m as usize] = t.run_at(m);
        }
        BootReport {
            offsets_ns,
            run_ns,
            cpu,
        }
    }

    pub fn offset_ns(&self, m: Mark) -> Option<u64> {
        self.offsets_ns[m as usize]
    }

    /// The first pair of marks that are out of boot order (the later phase
    /// recorded before the earlier one): a mark in the wrong place, which
    /// would make the phase durations derived from the line meaningless.
    pub fn out_of_order(&self) -> Option<(Mark, Mark)> {
        let mut last: Option<(Mark, u64)> = None;
        for m in ORDER {
            let Some(t) = self.offset_ns(m) else { continue };
            if let Some((prev, pt)) = last {
                if t < pt {
                    return Some((prev, m));
                }
            }
            last = Some((m, t));
        }
        None
    }
}

/// The `data/boot` line (see the module doc).
impl fmt::Display for BootReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for m in ORDER {
            if let Some(ns) = self.offset_ns(m) {
                write!(f, "{sep}{}_us={}", m.name(), ns / 1000)?;
                sep = " ";
            }
        }
        if let Some(c) = self.cpu {
            write!(
                f,
                "{sep}run_us={} steal_us={} blocked_us={}",
                c.running / 1000,
                c.runnable / 1000,
                c.blocked / 1000
            )?;
            sep = " ";
        }
        for m in ORDER {
            if let Some(ns) = self.run_ns[m as usize] {
                write!(f, "{sep}{}_run_us={}", m.name(), ns / 1000)?;
                sep = " ";
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const BOOT: u64 = 7_000_000_000;

    #[test]
    fn offsets_from_the_first_instruction_in_boot_order() {
        let t = Timeline::new();
        // Marked out of code order on purpose: the line is in boot order.
        t.mark_at(Mark::Ready, BOOT + 90_000_000, None);
        t.mark_at(Mark::Mem, BOOT + 1_500, None);
        t.mark_at(Mark::Heap, BOOT + 2_999, None);
        t.mark_at(Mark::Cfg, BOOT + 40_000, None);
        t.mark_at(Mark::Xs, BOOT + 3_000_000, None);
        t.mark_at(Mark::NfFront, BOOT + 5_000_000, None);
        t.mark_at(Mark::NfInitWait, BOOT + 60_000_000, None);
        t.mark_at(Mark::NfKeys, BOOT + 70_000_000, None);
        t.mark_at(Mark::NfConn, BOOT + 80_000_000, None);
        t.mark_at(Mark::Addr, BOOT + 85_000_000, None);
        let cpu = Cpu {
            running: 12_345_678,
            runnable: 1_000_999,
            blocked: 70_000_000,
        };
        let r = BootReport::new(&t, BOOT, Some(cpu));
        assert_eq!(
            r.to_string(),
            "mem_us=1 heap_us=2 cfg_us=40 xs_us=3000 nf_front_us=5000 nf_initwait_us=60000 \
             nf_keys_us=70000 nf_conn_us=80000 addr_us=85000 ready_us=90000 \
             run_us=12345 steal_us=1000 blocked_us=70000"
        );
        assert_eq!(r.out_of_order(), None);
    }

    #[test]
    fn marks_not_reached_are_left_out() {
        // A boot without a vif: no netfront marks, no address; no runstate.
        let t = Timeline::new();
        t.mark_at(Mark::Mem, BOOT + 1_000, None);
        t.mark_at(Mark::Heap, BOOT + 2_000, None);
        t.mark_at(Mark::Ready, BOOT + 9_000, None);
        let r = BootReport::new(&t, BOOT, None);
        assert_eq!(r.to_string(), "mem_us=1 heap_us=2 ready_us=9");
        assert_eq!(r.offset_ns(Mark::NfConn), None);
        assert_eq!(
            BootReport::new(&Timeline::new(), BOOT, None).to_string(),
            ""
        );
    }

    #[test]
    fn running_time_at_each_mark_follows_the_offsets() {
        let t = Timeline::new();
        t.mark_at(Mark::Mem, BOOT + 1_000_000, Some(900_000));
        t.mark_at(Mark::Xs, BOOT + 9_000_000, Some(2_000_000));
        // A mark without a runstate reading has no run key.
        t.mark_at(Mark::Cfg, BOOT + 2_000_000, None);
        t.mark_at(Mark::Ready, BOOT + 20_000_000, Some(5_500_999));
        let cpu = Cpu {
            running: 5_500_999,
            runnable: 1_000,
            blocked: 13_000_000,
        };
        assert_eq!(
            BootReport::new(&t, BOOT, Some(cpu)).to_string(),
            "mem_us=1000 cfg_us=2000 xs_us=9000 ready_us=20000 \
             run_us=5500 steal_us=1 blocked_us=13000 \
             mem_run_us=900 xs_run_us=2000 ready_run_us=5500"
        );
        // Only the first mark's running time counts, like its time.
        t.mark_at(Mark::Mem, BOOT + 7_000_000, Some(1));
        assert_eq!(t.run_at(Mark::Mem), Some(900_000));
    }

    #[test]
    fn the_first_mark_stays() {
        // A reconnect after a detach passes the netfront marks again.
        let t = Timeline::new();
        t.mark_at(Mark::NfConn, BOOT + 10, None);
        t.mark_at(Mark::NfConn, BOOT + 99_000, None);
        assert_eq!(t.get(Mark::NfConn), Some(BOOT + 10));
        assert_eq!(t.get(Mark::NfKeys), None);
    }

    #[test]
    fn a_mark_before_the_first_instruction_counts_as_zero() {
        let t = Timeline::new();
        t.mark_at(Mark::Mem, BOOT - 5, None);
        assert_eq!(
            BootReport::new(&t, BOOT, None).offset_ns(Mark::Mem),
            Some(0)
        );
    }

    #[test]
    fn reports_the_first_pair_out_of_order() {
        let t = Timeline::new();
        t.mark_at(Mark::Mem, BOOT + 10, None);
        t.mark_at(Mark::Heap, BOOT + 20, None);
        // Cfg skipped: ordering looks across gaps.
        t.mark_at(Mark::Xs, BOOT + 15, None);
        t.mark_at(Mark::NfFront, BOOT + 5, None);
        let r = BootReport::new(&t, BOOT, None);
        assert_eq!(r.out_of_order(), Some((Mark::Heap, Mark::Xs)));
        // Equal times are in order (two marks in one clock tick).
        let t = Timeline::new();
        t.mark_at(Mark::Mem, BOOT + 10, None);
        t.mark_at(Mark::Heap, BOOT + 10, None);
        assert_eq!(BootReport::new(&t, BOOT, None).out_of_order(), None);
    }

    #[test]
    fn names_follow_the_marks() {
        for (i, m) in ORDER.iter().enumerate() {
            assert_eq!(*m as usize, i, "ORDER must list the marks in index order");
        }
        let names: alloc::vec::Vec<_> = ORDER.iter().map(|m| m.name()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), MARKS, "duplicate key names: {names:?}");
    }
}
