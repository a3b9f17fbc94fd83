//! Time from the pvclock in shared_info: Xen publishes, per vCPU, a system
//! time (ns since the domain's host booted) at a TSC stamp and the scale to
//! extrapolate with the TSC. The record is versioned like a seqlock.

use core::sync::atomic::{fence, Ordering};

/// Scale a TSC delta to ns as Xen's `pvclock` does.
pub fn scale_delta(delta: u64, mul_frac: u32, shift: i8) -> u64 {
    let d = if shift < 0 { delta >> (-shift as u32) } else { delta << shift as u32 };
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

static mut BOOT_NS: u64 = 0;
static mut BOOT_TSC: u64 = 0;

/// Record the first instant we can measure: the TSC at entry (taken before
/// shared_info is mapped) converted once the clock is available.
pub fn init(entry_tsc: u64) {
    let now = now_ns();
    let si = crate::events::shared();
    // SAFETY: single-threaded boot; shared_info mapped by the caller.
    unsafe {
        let t = core::ptr::addr_of!((*si).vcpu_info[0].time);
        let mul = core::ptr::read_volatile(core::ptr::addr_of!((*t).tsc_to_system_mul));
        let shift = core::ptr::read_volatile(core::ptr::addr_of!((*t).tsc_shift));
        let since_entry = scale_delta(rdtsc().wrapping_sub(entry_tsc), mul, shift);
        BOOT_TSC = entry_tsc;
        BOOT_NS = now.saturating_sub(since_entry);
    }
}

/// ns since our first instruction (approximately: since `_start` read the TSC).
pub fn since_boot_ns() -> u64 {
    // SAFETY: written once in init().
    now_ns().saturating_sub(unsafe { BOOT_NS })
}

pub fn boot_ns() -> u64 {
    // SAFETY: written once in init().
    unsafe { BOOT_NS }
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
        assert_eq!(scale_delta(u64::MAX >> 1, u32::MAX, 1), ((((u64::MAX >> 1) << 1) as u128 * u32::MAX as u128) >> 32) as u64);
    }
}

/// Some bits that differ from boot to boot (seeds smoltcp's sequence numbers).
pub fn entropy() -> u64 {
    let t = rdtsc();
    t ^ now_ns().rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15
}
