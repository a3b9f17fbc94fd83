//! Raw hypercalls through the hypercall page Xen fills in at boot.
//!
//! Each hypercall is a `call` into a 32-byte stub at `hypercall_page + 32*nr`.
//! The host target's code may keep live data in the 128-byte red zone below
//! `%rsp`, and a `call` pushes a return address there, so every stub call
//! first steps over the red zone. Only this module and the safe wrappers in
//! the rest of the kernel issue hypercalls.

use core::arch::asm;

pub use xen_sys::{
    __HYPERVISOR_event_channel_op as EVENT_CHANNEL_OP,
    __HYPERVISOR_grant_table_op as GRANT_TABLE_OP, __HYPERVISOR_memory_op as MEMORY_OP,
    __HYPERVISOR_mmu_update as MMU_UPDATE, __HYPERVISOR_mmuext_op as MMUEXT_OP,
    __HYPERVISOR_sched_op as SCHED_OP, __HYPERVISOR_set_timer_op as SET_TIMER_OP,
    __HYPERVISOR_set_trap_table as SET_TRAP_TABLE,
    __HYPERVISOR_update_va_mapping as UPDATE_VA_MAPPING, __HYPERVISOR_vcpu_op as VCPU_OP,
    __HYPERVISOR_xen_version as XEN_VERSION,
};

extern "C" {
    static hypercall_page: [u8; 4096];
}

#[inline(always)]
fn entry(nr: u32) -> usize {
    debug_assert!(nr < 128);
    // Only the address of the linker-placed page is taken.
    core::ptr::addr_of!(hypercall_page) as usize + nr as usize * 32
}

/// True once Xen has written the hypercall page (its first stub is not zero).
pub fn page_ready() -> bool {
    // SAFETY: the page is part of our image and always mapped readable.
    let first =
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(hypercall_page) as *const u64) };
    first != 0
}

/// # Safety
/// The caller must pass arguments valid for hypercall `nr`: pointers to
/// memory that stays valid (and writable where Xen writes) for the call.
#[inline(always)]
pub unsafe fn hypercall5(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the stub is Xen's code in the hypercall page; it clobbers only
    // the registers listed (rcx, r11 and the argument registers) and the
    // red zone is stepped over; the caller vouches for the arguments.
    unsafe {
        asm!(
            "lea rsp, [rsp - 128]",   // step over the red zone before `call` pushes
            "call {stub}",
            "lea rsp, [rsp + 128]",
            stub = in(reg) entry(nr),
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall2(nr: u32, a1: u64, a2: u64) -> i64 {
    // SAFETY: the caller's contract is hypercall5's.
    unsafe { hypercall5(nr, a1, a2, 0, 0, 0) }
}

/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall3(nr: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: the caller's contract is hypercall5's.
    unsafe { hypercall5(nr, a1, a2, a3, 0, 0) }
}

/// # Safety
/// As for [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall4(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    // SAFETY: the caller's contract is hypercall5's.
    unsafe { hypercall5(nr, a1, a2, a3, a4, 0) }
}
