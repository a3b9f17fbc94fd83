//! Time from the pvclock in shared_info: Xen publishes, per vCPU, a system
//! time (ns since the domain's host booted) at a TSC stamp and the scale to
//! extrapolate with the TSC. The record is versioned like a seqlock.

use crate::cells::XenWritten;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// Scale a TSC delta to ns as Xen's `pvclock` does.
pub fn scale_delta(delta: u64, mul_frac: u32, shift: i8) -> u64 {
    let d = if shift < 0 {
        delta >> (-shift as u32)
    } else {
        delta << shift as u32
    };
    ((d as u128 * mul_frac as u128) >> 32) as u64
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; PV guests may execute it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Xen system time in ns (monotonic).
pub fn now_ns() -> u64 {
    let si = crate::events::shared();
    if si.is_null() {
        return 0;
    }
    loop {
        // SAFETY: shared_info is mapped for our lifetime; fields are read
        // volatile because Xen rewrites them; the version check below
        // rejects torn reads.
        unsafe {
            let t = core::ptr::addr_of!((*si).vcpu_info[0].time);
            let v1 = core::ptr::read_volatile(core::ptr::addr_of!((*t).version));
            fence(Ordering::Acquire);
            let tsc_ts = core::ptr::read_volatile(core::ptr::addr_of!((*t).tsc_timestamp));
            let sys = core::ptr::read_volatile(core::ptr::addr_of!((*t).system_time));
            let mul = core::ptr::read_volatile(core::ptr::addr_of!((*t).tsc_to_system_mul));
            let shift = core::ptr::read_volatile(core::ptr::addr_of!((*t).tsc_shift));
            let tsc = rdtsc();
            fence(Ordering::Acquire);
            let v2 = core::ptr::read_volatile(core::ptr::addr_of!((*t).version));
            if v1 & 1 == 0 && v1 == v2 {
                return sys.wrapping_add(scale_delta(tsc.wrapping_sub(tsc_ts), mul, shift));
            }
        }
    }
}

/// Xen system time at our first instruction; set once by [`init`].
static BOOT_NS: AtomicU64 = AtomicU64::new(0);

/// Record the first instant we can measure: the TSC at entry (taken before
/// shared_info is mapped) converted once the clock is available. Does
/// nothing before shared_info is mapped.
pub fn init(entry_tsc: u64) {
    let now = now_ns();
    let si = crate::events::shared();
    if si.is_null() {
        return;
    }
    // SAFETY: shared_info is mapped for our lifetime; volatile reads of two
    // fields through raw pointers, no reference to the page.
    let (mul, shift) = unsafe {
        let t = core::ptr::addr_of!((*si).vcpu_info[0].time);
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*t).tsc_to_system_mul)),
            core::ptr::read_volatile(core::ptr::addr_of!((*t).tsc_shift)),
        )
    };
    let since_entry = scale_delta(rdtsc().wrapping_sub(entry_tsc), mul, shift);
    BOOT_NS.store(now.saturating_sub(since_entry), Ordering::Relaxed);
}

/// ns since our first instruction (approximately: since `_start` read the TSC).
pub fn since_boot_ns() -> u64 {
    now_ns().saturating_sub(boot_ns())
}

pub fn boot_ns() -> u64 {
    BOOT_NS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::scale_delta;
    #[test]
    fn scale_matches_pvclock_formula() {
        // mul_frac = 2^31 means 0.5 ns per (shifted) tick.
        assert_eq!(scale_delta(1000, 1 << 31, 0), 500);
        assert_eq!(scale_delta(1000, 1 << 31, 1), 1000);
        assert_eq!(scale_delta(1000, 1 << 31, -1), 250);
        // No overflow for large deltas.
        assert_eq!(
            scale_delta(u64::MAX >> 1, u32::MAX, 1),
            ((((u64::MAX >> 1) << 1) as u128 * u32::MAX as u128) >> 32) as u64
        );
    }
}

/// `struct vcpu_runstate_info` (xen/include/public/vcpu.h): where the vCPU
/// spent its time, kept up to date by Xen in our memory once registered.
#[repr(C)]
struct RunstateInfo {
    /// RUNSTATE_running (0), runnable (1), blocked (2), offline (3).
    state: i32,
    _pad: u32,
    /// System time (ns) at which `state` was entered.
    state_entry_time: u64,
    /// Time (ns) spent in each state up to `state_entry_time`.
    time: [u64; 4],
}
const _: () = assert!(core::mem::size_of::<RunstateInfo>() == 48);
const _: () = assert!(core::mem::offset_of!(RunstateInfo, state_entry_time) == 8);
const _: () = assert!(core::mem::offset_of!(RunstateInfo, time) == 16);

const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u64 = 5;
const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;
const RUNSTATE_RUNNING: usize = 0;
const RUNSTATE_RUNNABLE: usize = 1;
const RUNSTATE_BLOCKED: usize = 2;

/// vCPU 0's runstate area: Xen writes it once registered.
static RUNSTATE: XenWritten<RunstateInfo> = XenWritten::new(RunstateInfo {
    state: 0,
    _pad: 0,
    state_entry_time: 0,
    time: [0; 4],
});
static RUNSTATE_ON: AtomicBool = AtomicBool::new(false);

/// Ask Xen to keep vCPU 0's runstate in [`RUNSTATE`], so [`cpu`] can tell
/// the time we ran from the time we were runnable but not scheduled (steal:
/// under emulation, dom0 and other guests take the CPU for long stretches,
/// and wall time alone would charge that to whatever we were doing).
pub fn init_runstate() -> Result<(), i64> {
    // The argument is a guest handle: a pointer to the area, passed by
    // address. RUNSTATE is a static Xen may write for the domain's lifetime;
    // nothing else writes it, readers use volatile reads.
    let area: u64 = RUNSTATE.as_ptr() as u64;
    // SAFETY: the hypercall reads `area` (valid for the call) and keeps the
    // pointer it holds, which points at a static.
    let rc = unsafe {
        crate::hypercall::hypercall3(
            crate::hypercall::VCPU_OP,
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA,
            0,
            &area as *const u64 as u64,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    RUNSTATE_ON.store(true, Ordering::Release);
    if let Some(c) = cpu() {
        for (at, v) in RUNSTATE_AT_START
            .iter()
            .zip([c.running, c.runnable, c.blocked])
        {
            at.store(v, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Stop vCPU 0's periodic timer. Xen starts every PV vCPU with a 100 Hz
/// VIRQ_TIMER (seen in `xl debug-keys q`: "100 Hz periodic timer"); we never
/// bind that VIRQ, sleep in `SCHEDOP_poll` with our own deadlines, so the
/// ticks only cost Xen work (and, under emulation, dom0's CPU) while we run.
/// Linux and Mini-OS stop it the same way.
pub fn stop_periodic_timer() -> Result<(), i64> {
    // SAFETY: VCPUOP_stop_periodic_timer takes no argument (NULL) and only
    // changes Xen's timer state for our own vCPU 0.
    let rc = unsafe {
        crate::hypercall::hypercall3(crate::hypercall::VCPU_OP, VCPUOP_STOP_PERIODIC_TIMER, 0, 0)
    };
    if rc != 0 {
        return Err(rc);
    }
    Ok(())
}

/// The runstate totals when [`init_runstate`] registered the area: Xen
/// counts from the vCPU's creation, which includes time before our first
/// instruction.
static RUNSTATE_AT_START: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Where our vCPU's time went since the runstate area was registered (a few
/// µs after the first instruction): the boot timeline's CPU part.
pub fn cpu_since_start() -> Option<Cpu> {
    let now = cpu()?;
    let [r, q, b] = RUNSTATE_AT_START
        .each_ref()
        .map(|a| a.load(Ordering::Relaxed));
    Some(Cpu {
        running: now.running.saturating_sub(r),
        runnable: now.runnable.saturating_sub(q),
        blocked: now.blocked.saturating_sub(b),
    })
}

/// vCPU 0's time so far, in ns: running, runnable (steal) and blocked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    pub running: u64,
    pub runnable: u64,
    pub blocked: u64,
}

/// Where our vCPU's time went so far; `None` if the runstate area is not
/// registered. Read while running: Xen updates the area only when it
/// switches this (only) vCPU in or out, so it cannot change under us.
pub fn cpu() -> Option<Cpu> {
    if !RUNSTATE_ON.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: registered static, read volatile through its raw pointer (Xen
    // writes it); no reference to it exists.
    let (state, entry, time) = unsafe {
        let r = RUNSTATE.as_ptr();
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*r).state)),
            core::ptr::read_volatile(core::ptr::addr_of!((*r).state_entry_time)),
            core::ptr::read_volatile(core::ptr::addr_of!((*r).time)),
        )
    };
    let mut c = Cpu {
        running: time[RUNSTATE_RUNNING],
        runnable: time[RUNSTATE_RUNNABLE],
        blocked: time[RUNSTATE_BLOCKED],
    };
    if state as usize == RUNSTATE_RUNNING {
        c.running += now_ns().saturating_sub(entry & !(1 << 63));
    }
    Some(c)
}

/// Some bits that differ from boot to boot (seeds smoltcp's sequence numbers).
pub fn entropy() -> u64 {
    let t = rdtsc();
    t ^ now_ns().rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15
}
