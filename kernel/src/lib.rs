//! Miniproxy's kernel: everything that touches the hypervisor, behind safe
//! types. Boot as an x86_64 PV guest, memory and heap, console, time, event
//! channels, grant tables, xenstore, shutdown.
//!
//! The library builds for the host too, so the parts that do not need Xen
//! (wire formats, ring arithmetic, parsers) run as ordinary unit tests; the
//! boot code and runtime are only linked into the unikernel binaries.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[cfg(not(test))]
pub mod boot;
pub mod console;
pub mod control;
pub mod events;
pub mod grant;
pub mod heap;
pub mod hypercall;
pub mod mm;
pub mod net;
pub mod profile;
#[cfg(not(test))]
mod rt;
pub mod runtime;
pub mod start_info;
pub mod time;
pub mod traps;
pub mod xenstore;

pub use events::ShutdownReason;
pub use start_info::StartInfo;

#[cfg(not(test))]
#[global_allocator]
static HEAP: heap::KernelHeap = heap::KernelHeap::empty();

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
        console::flush(1_000_000_000);
        events::shutdown(reason)
    }
}

/// The kernel heap's (used, size) in bytes ((0, 0) in host tests).
pub fn heap_usage() -> (usize, usize) {
    #[cfg(not(test))]
    return HEAP.stats();
    #[cfg(test)]
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

#[cfg(not(test))]
extern "Rust" {
    /// Provided by each unikernel binary.
    fn kernel_main(k: Kernel) -> !;
}

#[cfg(not(test))]
extern "C" {
    static _end: u8;
}

/// Rust entry, called by `_start` on the boot stack.
#[cfg(not(test))]
#[no_mangle]
unsafe extern "C" fn kernel_entry(si: *const xen_sys::start_info, entry_tsc: u64) -> ! {
    // SAFETY (whole function): runs once, single-threaded, before anything
    // else; each step relies on the ones before it.
    let info = StartInfo::read(si);
    mm::init(info.mfn_list, info.nr_pages, info.pt_base);
    if !hypercall::page_ready() {
        // Without hypercalls we cannot even report this; stop dead.
        loop {
            core::arch::asm!("ud2");
        }
    }
    if events::init(info.shared_info_maddr).is_err() {
        events::shutdown(ShutdownReason::Crash);
    }
    time::init(entry_tsc);
    // Without it the profile falls back to wall time (see profile.rs).
    let runstate = time::init_runstate();

    let console_va = (mm::mfn_to_pfn(info.console_mfn) as usize) * mm::PAGE_SIZE;
    console::install(console::Console::new(mm::SharedPage::from_va(console_va), info.console_evtchn));
    let _ = log::set_logger(&console::LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    if let Err(rc) = runstate {
        log::warn!("no vCPU runstate area (VCPUOP rc {rc}): the profile counts wall time");
    }

    if let Err(rc) = traps::init() {
        crash(format_args!("set_trap_table failed: {rc}"));
    }
    if let Err(rc) = mm::unmap(0) {
        log::warn!("could not unmap the guard page: {rc}");
    }

    // Free memory: everything after our image and the pages Xen placed after
    // it (p2m list, start_info, xenstore and console rings, page tables, its
    // boot stack), as far as the initial mapping reaches.
    let pfn_of = |va: u64| va / mm::PAGE_SIZE as u64;
    let image_end = core::ptr::addr_of!(_end) as usize;
    let mut first_free = pfn_of(image_end as u64 + mm::PAGE_SIZE as u64 - 1);
    first_free = first_free.max(pfn_of(info.pt_base) + info.nr_pt_frames + 1);
    first_free = first_free.max(pfn_of(info.va) + 1);
    first_free = first_free.max(mm::mfn_to_pfn(info.store_mfn) + 1);
    first_free = first_free.max(mm::mfn_to_pfn(info.console_mfn) + 1);
    let mut end = first_free;
    while end < info.nr_pages && mm::is_mapped(end * mm::PAGE_SIZE as u64) {
        end += 1;
    }
    // Map the rest of our memory (Xen maps only up to a 4 MiB boundary).
    let initial_end = end;
    match mm::map_rest(end, info.nr_pages, &mut first_free) {
        Ok(e) => end = e,
        Err(rc) => log::warn!("could not map memory beyond {} KiB: {rc}", initial_end * 4),
    }
    let heap_start = (first_free as usize) * mm::PAGE_SIZE;
    let heap_size = ((end - first_free) as usize) * mm::PAGE_SIZE;
    HEAP.init(heap_start, heap_size);

    let memory = MemoryReport {
        total_pages: info.nr_pages,
        image_end,
        heap_start,
        heap_size,
        unmapped_pages: info.nr_pages - end,
    };
    let store_va = (mm::mfn_to_pfn(info.store_mfn) as usize) * mm::PAGE_SIZE;
    let mut xenstore = xenstore::Xenstore::new(mm::SharedPage::from_va(store_va), XsEvents { port: info.store_evtchn });
    // xenstored in a busy dom0 (many guests booting at once, hotplug
    // scripts) can take seconds per request; give up only after 30 s.
    xenstore.set_timeout_ns(XENSTORE_TIMEOUT_NS);
    let xenstore = alloc::rc::Rc::new(core::cell::RefCell::new(xenstore));
    let grants = match grant::GrantTable::init() {
        Ok(g) => Some(g),
        Err(e) => {
            log::warn!("no grant table: {e}");
            None
        }
    };
    let k = Kernel { start_info: info, memory, boot_ns: time::boot_ns(), xenstore, grants };
    kernel_main(k)
}
