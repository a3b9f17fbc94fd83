//! Miniproxy's kernel: everything that touches the hypervisor, behind safe
//! types. Boot as an x86_64 PV guest, memory and heap, console, time, event
//! channels, grant tables, xenstore, shutdown.
//!
//! The library builds for the host too, so the parts that do not need Xen
//! (wire formats, ring arithmetic, parsers, the runtime's phases over fakes)
//! run as ordinary unit tests; the boot code and the mem*/panic runtime are
//! only linked into the unikernel binaries. See README.md. The `hosted`
//! feature builds the library the same way for a std program outside the
//! crate (the fuzz targets in `fuzz/`): no boot code, runtime or global
//! allocator, and `xenstore::fake` exposed.
//!
//! Unsafe policy: `unsafe` is denied crate-wide and allowed only in the
//! modules marked `#[allow(unsafe_code)]` below, the ones that talk to the
//! hypervisor or own raw memory; each unsafe block says why it is sound in a
//! `// SAFETY:` comment. Everything else (control, runtime, xenstore,
//! profile) is safe code over their safe interfaces.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

/// `_start`, the ELF notes, and the Rust entry that brings the kernel up.
#[cfg(not(any(test, feature = "hosted")))]
#[allow(unsafe_code)]
pub mod boot;
pub mod boottime;
/// Boot-once cells for memory handed to Xen (replacing `static mut`).
#[allow(unsafe_code)]
pub mod cells;
/// The PV console ring (a shared page); `force_unlock` for panics.
#[allow(unsafe_code)]
pub mod console;
pub mod control;
/// shared_info, event channels, SCHEDOP_poll (hypercalls, Xen's memory).
#[allow(unsafe_code)]
pub mod events;
/// Grant table frames mapped from Xen; entries written volatile.
#[allow(unsafe_code)]
pub mod grant;
/// The global allocator (GlobalAlloc is an unsafe trait).
#[allow(unsafe_code)]
pub mod heap;
/// The hypercall stubs (inline assembly).
#[allow(unsafe_code)]
pub mod hypercall;
/// Page tables, the p2m/m2p tables, shared pages (raw memory).
#[allow(unsafe_code)]
pub mod mm;
/// Netfront's platform: frees granted pages back to the heap.
#[allow(unsafe_code)]
pub mod net;
pub mod profile;
/// mem* for the compiler, the panic handler.
#[cfg(not(any(test, feature = "hosted")))]
#[allow(unsafe_code)]
mod rt;
pub mod runtime;
/// Copies the start_info page Xen hands us.
#[allow(unsafe_code)]
pub mod start_info;
/// pvclock and the runstate area (memory Xen writes).
#[allow(unsafe_code)]
pub mod time;
/// The trap table and exception stubs (assembly).
#[allow(unsafe_code)]
pub mod traps;
pub mod xenstore;

pub use events::ShutdownReason;
pub use start_info::StartInfo;

#[cfg(not(any(test, feature = "hosted")))]
#[global_allocator]
pub(crate) static HEAP: heap::KernelHeap = heap::KernelHeap::empty();

/// How long one xenstore request may take before it is an error.
pub const XENSTORE_TIMEOUT_NS: u64 = 30_000_000_000;

/// What the boot code found, for the application's report.
#[derive(Clone, Debug)]
pub struct MemoryReport {
    pub total_pages: u64,
    pub image_end: usize,
    pub heap_start: usize,
    pub heap_size: usize,
    /// Pages the domain owns beyond Xen's initial mapping (not used yet).
    pub unmapped_pages: u64,
}

/// How the xenstore client waits: sleep in SCHEDOP_poll on its port.
pub struct XsEvents {
    pub port: events::Port,
}

impl xenstore::Events for XsEvents {
    fn notify(&mut self) {
        let _ = events::send(self.port);
    }
    fn wait(&mut self, deadline_ns: Option<u64>) {
        events::poll(&[self.port], deadline_ns);
        // Clear after waking, not before: a reply that lands in between must
        // still wake the next wait.
        events::take_pending(self.port);
    }
    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
}

pub type Xenstore = xenstore::Xenstore<mm::SharedPage, XsEvents>;
/// The one xenstore connection, shared by domain control and drivers.
pub type XenstoreHandle = alloc::rc::Rc<core::cell::RefCell<Xenstore>>;

/// The running kernel, handed to the application's main.
pub struct Kernel {
    pub start_info: StartInfo,
    pub memory: MemoryReport,
    /// Xen system time (ns) at our first instruction.
    pub boot_ns: u64,
    pub xenstore: XenstoreHandle,
    /// The grant table, until a driver takes it.
    pub grants: Option<grant::GrantTable>,
}

impl Kernel {
    pub fn now_ns(&self) -> u64 {
        time::now_ns()
    }

    /// ns since our first instruction.
    pub fn uptime_ns(&self) -> u64 {
        time::since_boot_ns()
    }

    pub fn heap_usage(&self) -> (usize, usize) {
        heap_usage()
    }

    /// The xenstore event channel: poll it with the others in the main loop.
    pub fn xenstore_port(&self) -> events::Port {
        self.start_info.store_evtchn
    }

    /// Stop the domain, after letting the console drain.
    pub fn shutdown(&self, reason: ShutdownReason) -> ! {
        let (peak, size) = stack_peak();
        println!("miniproxy: stack: deepest {peak} of {size} bytes");
        console::flush(1_000_000_000);
        events::shutdown(reason)
    }
}

/// The kernel heap's (used, size) in bytes ((0, 0) in host tests and `hosted`).
pub fn heap_usage() -> (usize, usize) {
    #[cfg(not(any(test, feature = "hosted")))]
    return HEAP.stats();
    #[cfg(any(test, feature = "hosted"))]
    return (0, 0);
}

/// The boot stack's deepest use and size in bytes ((0, 0) in host tests).
pub fn stack_peak() -> (usize, usize) {
    #[cfg(not(any(test, feature = "hosted")))]
    return boot::stack_peak();
    #[cfg(any(test, feature = "hosted"))]
    return (0, 0);
}

/// Print the reason and crash the domain (`on_crash` in the xl config
/// decides what happens next). Used by the panic handler and fatal traps.
pub fn crash(reason: core::fmt::Arguments) -> ! {
    static CRASHING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !CRASHING.swap(true, core::sync::atomic::Ordering::SeqCst) {
        println!("miniproxy: fatal: {}", reason);
        console::flush(1_000_000_000);
    }
    events::shutdown(ShutdownReason::Crash)
}
