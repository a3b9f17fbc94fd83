//! The shared_info page, event channels and blocking.
//!
//! Upcalls stay masked for the guest's whole life (the host-target code uses
//! the red zone, which an asynchronous upcall frame would overwrite). Instead
//! the main loop tests and clears pending bits and sleeps in `SCHEDOP_poll`,
//! which wakes on a pending port or a timeout even with upcalls masked.

use crate::cells::ForeignPages;
use crate::hypercall::{hypercall2, hypercall3, EVENT_CHANNEL_OP, SCHED_OP};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use xen_sys::shared_info;

const EVTCHNOP_BIND_VIRQ: u64 = 1;
const EVTCHNOP_CLOSE: u64 = 3;
const EVTCHNOP_SEND: u64 = 4;
const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
const EVTCHNOP_UNMASK: u64 = 9;
const SCHEDOP_YIELD: u64 = 0;
const SCHEDOP_SHUTDOWN: u64 = 2;
const SCHEDOP_POLL: u64 = 3;
const DOMID_SELF: u16 = 0x7FF0;
pub const VIRQ_TIMER: u32 = 0;
/// 2-level event channel ABI: 64 words of 64 bits.
pub const MAX_PORTS: u32 = 4096;

pub type Port = u32;

/// The page whose mapping we replace with Xen's shared_info frame.
static SHARED_INFO_PAGE: ForeignPages<1> = ForeignPages::new();
static SHARED_INFO_CLAIMED: AtomicBool = AtomicBool::new(false);
/// shared_info once mapped (null before `init`).
static SHARED: AtomicPtr<shared_info> = AtomicPtr::new(core::ptr::null_mut());

// Offsets from xen/include/public/xen.h (x86_64).
const _: () = {
    assert!(core::mem::size_of::<xen_sys::vcpu_info>() == 64);
    assert!(core::mem::offset_of!(shared_info, evtchn_pending) == 2048);
    assert!(core::mem::offset_of!(shared_info, evtchn_mask) == 2560);
    assert!(core::mem::offset_of!(shared_info, wc_version) == 3072);
};

/// Map shared_info and mask upcalls.
///
/// Map shared_info and mask upcalls. A second call fails (-EBUSY).
///
/// # Safety
/// `shared_info_maddr` must be start_info's shared_info machine address.
pub unsafe fn init(shared_info_maddr: u64) -> Result<(), i64> {
    let va = SHARED_INFO_PAGE.claim(&SHARED_INFO_CLAIMED).ok_or(-16i64)?;
    // SAFETY: the page is ours alone (claimed once) and never used as Rust
    // memory; the caller vouches for the frame.
    unsafe { crate::mm::map_foreign_frame(va, shared_info_maddr)? };
    let si = va as *mut shared_info;
    // SAFETY: `si` now maps shared_info; a volatile write of one field, no
    // reference to the page is made.
    unsafe {
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*si).vcpu_info[0].evtchn_upcall_mask),
            1,
        )
    };
    SHARED.store(si, Ordering::Release);
    Ok(())
}

/// shared_info, mapped for the domain's life; null before [`init`].
pub(crate) fn shared() -> *mut shared_info {
    SHARED.load(Ordering::Acquire)
}

fn word(base: *mut u64, port: Port) -> &'static AtomicU64 {
    // SAFETY: port < MAX_PORTS is checked by callers, so the word is inside
    // the 64-word array of the mapped shared_info page; AtomicU64 has the
    // layout of u64 and Xen updates these words with locked operations too.
    unsafe { &*(base.add((port / 64) as usize) as *const AtomicU64) }
}

fn pending_word(port: Port) -> &'static AtomicU64 {
    // SAFETY: shared() is mapped (init runs before anything polls a port);
    // taking the field's address only, no reference to the page.
    word(
        unsafe { core::ptr::addr_of_mut!((*shared()).evtchn_pending) } as *mut u64,
        port,
    )
}

/// Is `port` pending? Does not clear it.
pub fn is_pending(port: Port) -> bool {
    port < MAX_PORTS && pending_word(port).load(Ordering::Acquire) & (1 << (port % 64)) != 0
}

/// Test and clear the pending bit of `port`.
pub fn take_pending(port: Port) -> bool {
    if port >= MAX_PORTS {
        return false;
    }
    let bit = 1u64 << (port % 64);
    pending_word(port).fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

fn evtchn_op<T>(cmd: u64, arg: &mut T) -> Result<(), i64> {
    // SAFETY: `arg` is a live, properly laid-out struct for `cmd`.
    let rc = unsafe { hypercall2(EVENT_CHANNEL_OP, cmd, arg as *mut T as u64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

/// Notify the other end of `port`.
pub fn send(port: Port) -> Result<(), i64> {
    let mut a = xen_sys::evtchn_send { port };
    evtchn_op(EVTCHNOP_SEND, &mut a)
}

/// Allocate a port that domain `remote` may bind to (for a device ring).
pub fn alloc_unbound(remote: u16) -> Result<Port, i64> {
    let mut a = xen_sys::evtchn_alloc_unbound {
        dom: DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    evtchn_op(EVTCHNOP_ALLOC_UNBOUND, &mut a)?;
    Ok(a.port)
}

pub fn bind_virq(virq: u32) -> Result<Port, i64> {
    let mut a = xen_sys::evtchn_bind_virq {
        virq,
        vcpu: 0,
        port: 0,
    };
    evtchn_op(EVTCHNOP_BIND_VIRQ, &mut a)?;
    Ok(a.port)
}

pub fn unmask(port: Port) -> Result<(), i64> {
    let mut a = xen_sys::evtchn_unmask { port };
    evtchn_op(EVTCHNOP_UNMASK, &mut a)
}

pub fn close(port: Port) -> Result<(), i64> {
    let mut a = xen_sys::evtchn_close { port };
    evtchn_op(EVTCHNOP_CLOSE, &mut a)
}

#[repr(C)]
struct SchedPoll {
    ports: *const Port,
    nr_ports: u32,
    timeout: u64,
}
const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);

/// Block until one of `ports` is pending or the system time reaches
/// `deadline_ns` (None: no timeout). Returns at once if one is pending.
pub fn poll(ports: &[Port], deadline_ns: Option<u64>) {
    let mut arg = SchedPoll {
        ports: ports.as_ptr(),
        nr_ports: ports.len() as u32,
        // Xen treats 0 as "no timeout"; a deadline already past wakes at once.
        timeout: deadline_ns.map(|d| d.max(1)).unwrap_or(0),
    };
    // SAFETY: `arg` and `ports` outlive the call.
    let rc = unsafe { hypercall2(SCHED_OP, SCHEDOP_POLL, &mut arg as *mut SchedPoll as u64) };
    if rc != 0 {
        // Should not happen with upcalls masked; do not spin hot on it.
        sched_yield();
    }
}

pub fn sched_yield() {
    // SAFETY: SCHEDOP_yield takes no argument.
    unsafe { hypercall2(SCHED_OP, SCHEDOP_YIELD, 0) };
}

/// Why the domain stops; numbers from xen/include/public/sched.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    Poweroff = 0,
    Reboot = 1,
    Crash = 3,
}

/// Ask Xen to stop this domain. Does not return.
pub fn shutdown(reason: ShutdownReason) -> ! {
    loop {
        let mut r = reason as u32;
        // SAFETY: sched_shutdown is one u32.
        unsafe { hypercall3(SCHED_OP, SCHEDOP_SHUTDOWN, &mut r as *mut u32 as u64, 0) };
        // Still running (should not happen): keep asking, without burning CPU.
        sched_yield();
    }
}
