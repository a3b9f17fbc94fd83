//! Entry point and the ELF notes Xen's generic PV loader needs.
//!
//! Xen starts a 64-bit PV guest in (ring 3) kernel mode with paging on, the
//! image mapped at VIRT_BASE, `%rsi` pointing at the start_info page and event
//! upcalls masked. We switch to our own stack and call into Rust.
//! Only the unikernel binaries link this; host tests never see it.

core::arch::global_asm!(
    r#"
    .macro note_head type
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 2f - 1f
    .long \type
    .asciz "Xen"
    .balign 4
    .endm
    .macro note_str type, value
    note_head \type
1:  .asciz "\value"
2:  .balign 4
    .popsection
    .endm
    .macro note_quad type, value
    note_head \type
1:  .quad \value
2:  .balign 4
    .popsection
    .endm

    /* Numbers from xen/include/public/elfnote.h */
    note_str 6, "Miniproxy"      /* GUEST_OS */
    note_str 7, "0.1"            /* GUEST_VERSION */
    note_str 5, "xen-3.0"        /* XEN_VERSION: required */
    note_str 8, "generic"        /* LOADER: required with XEN_VERSION */
    note_quad 3, 0                 /* VIRT_BASE */
    note_quad 4, 0                 /* PADDR_OFFSET */
    note_quad 1, _start            /* ENTRY */
    note_quad 2, hypercall_page    /* HYPERCALL_PAGE */

    /* Page 0: a guard page, unmapped once we run. */
    .pushsection .text.guard, "ax"
    .fill 4096, 1, 0
    .popsection

    .pushsection .text.boot, "ax"
    .globl _start
_start:
    cld
    mov %rsi, %rdi          /* arg 1: start_info */
    rdtsc                   /* arg 2: TSC at our first instruction */
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rsi
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    call kernel_entry
1:  ud2
    jmp 1b
    .popsection

    /* A guard page (unmapped once we run: an overflow faults instead of
       overwriting the .data below), then the stack. */
    .pushsection .bss.boot_stack, "aw", @nobits
    .balign 4096
boot_stack_guard:
    .skip 4096
boot_stack:
    .skip 128 * 1024
boot_stack_top:
    .popsection
"#,
    options(att_syntax)
);

use crate::{boottime, console, crash, events, grant, hypercall, mm, time, traps, xenstore};
use crate::{Kernel, MemoryReport, ShutdownReason, StartInfo, XsEvents, XENSTORE_TIMEOUT_NS};

extern "C" {
    static boot_stack_guard: u8;
    static boot_stack: u8;
    static boot_stack_top: u8;
}

/// What an unused stack byte holds (see [`paint_stack`]).
const STACK_PAINT: u8 = 0xA5;
/// Bytes below the stack pointer left unpainted (the red zone and more).
const PAINT_MARGIN: usize = 1024;

/// Fill the stack below the current frame with [`STACK_PAINT`], so that
/// [`stack_peak`] can later tell how deep it went. Once, at entry.
#[inline(never)]
fn paint_stack() {
    let (lo, _) = stack_bounds();
    let sp: usize;
    // SAFETY: reads the stack pointer; no memory access.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
    let end = sp.saturating_sub(PAINT_MARGIN);
    if end > lo {
        // SAFETY: [lo, end) is our own stack below every live frame (end is
        // PAINT_MARGIN below the stack pointer), and nothing else uses it.
        unsafe { core::ptr::write_bytes(lo as *mut u8, STACK_PAINT, end - lo) };
    }
}

/// The deepest the stack has been since boot, in bytes from its top (as far
/// as painting can tell: a frame that left the paint value in place is not
/// seen), and its size.
pub fn stack_peak() -> (usize, usize) {
    let (lo, hi) = stack_bounds();
    let mut a = lo;
    // SAFETY: [lo, hi) is our stack, mapped; bytes below the current frame
    // are read, never written.
    while a < hi && unsafe { core::ptr::read_volatile(a as *const u8) } == STACK_PAINT {
        a += 1;
    }
    (hi - a, hi - lo)
}

/// The boot stack's bounds, for the register dump and the memory report.
pub fn stack_bounds() -> (usize, usize) {
    // Only the addresses of the linker-placed symbols are taken.
    (
        core::ptr::addr_of!(boot_stack) as usize,
        core::ptr::addr_of!(boot_stack_top) as usize,
    )
}

extern "Rust" {
    /// Provided by each unikernel binary.
    fn kernel_main(k: Kernel) -> !;
}

extern "C" {
    /// End of our image (kernel/link.ld).
    static _end: u8;
}

/// Rust entry, called by `_start` on the boot stack: brings up memory,
/// events, time, the console, traps, the heap, xenstore and the grant table,
/// in that order (each step relies on the ones before it), then hands the
/// [`Kernel`] to the binary's `kernel_main`.
///
/// # Safety
/// Only `_start` calls it, once, single-threaded, with the start_info
/// pointer Xen passed in `%rsi`.
#[no_mangle]
unsafe extern "C" fn kernel_entry(si: *const xen_sys::start_info, entry_tsc: u64) -> ! {
    paint_stack();
    // SAFETY: `si` is the start_info page Xen passed us (our contract).
    let info = unsafe { StartInfo::read(si) };
    // SAFETY: start_info's p2m list and L4 table, mapped for our lifetime.
    unsafe { mm::init(info.mfn_list, info.nr_pages, info.pt_base) };
    if !hypercall::page_ready() {
        // Without hypercalls we cannot even report this; stop dead.
        loop {
            // SAFETY: ud2 only raises #UD (which, without a trap table, ends
            // the domain).
            unsafe { core::arch::asm!("ud2") };
        }
    }
    // SAFETY: start_info's shared_info address, mapped once here.
    if unsafe { events::init(info.shared_info_maddr) }.is_err() {
        events::shutdown(ShutdownReason::Crash);
    }
    time::init(entry_tsc);
    // Without it the profile falls back to wall time (see profile.rs).
    let runstate = time::init_runstate();
    let periodic = time::stop_periodic_timer();

    let console_va = (mm::mfn_to_pfn(info.console_mfn) as usize) * mm::PAGE_SIZE;
    // SAFETY: the console ring page Xen placed in our initial mapping; only
    // the console uses it.
    let console_page = unsafe { mm::SharedPage::from_va(console_va) };
    console::install(console::Console::new(console_page, info.console_evtchn));
    let _ = log::set_logger(&console::LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    if let Err(rc) = runstate {
        log::warn!("no vCPU runstate area (VCPUOP rc {rc}): the profile counts wall time");
    }
    if let Err(rc) = periodic {
        log::warn!("could not stop the periodic timer (VCPUOP rc {rc})");
    }

    if let Err(rc) = traps::init() {
        crash(format_args!("set_trap_table failed: {rc}"));
    }
    if let Err(rc) = mm::unmap(0) {
        log::warn!("could not unmap the guard page: {rc}");
    }
    // Below the stack: an overflow then faults (and the domain crashes, as
    // the fault cannot be delivered on that stack) instead of silently
    // overwriting .data.
    let guard = core::ptr::addr_of!(boot_stack_guard) as usize;
    if let Err(rc) = mm::unmap(guard) {
        log::warn!("could not unmap the stack's guard page: {rc}");
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
    // SAFETY: once, before the heap takes [first_free, ..): the pages from
    // first_free to `end` are mapped and unused.
    match unsafe { mm::map_rest(end, info.nr_pages, &mut first_free) } {
        Ok(e) => end = e,
        Err(rc) => log::warn!("could not map memory beyond {} KiB: {rc}", initial_end * 4),
    }
    boottime::TIMELINE.mark(boottime::Mark::Mem);
    let heap_start = (first_free as usize) * mm::PAGE_SIZE;
    let heap_size = ((end - first_free) as usize) * mm::PAGE_SIZE;
    // SAFETY: [heap_start, heap_start + heap_size) is mapped, writable and
    // unused (past everything Xen placed and the tables map_rest took).
    unsafe { crate::HEAP.init(heap_start, heap_size) };
    boottime::TIMELINE.mark(boottime::Mark::Heap);

    let memory = MemoryReport {
        total_pages: info.nr_pages,
        image_end,
        heap_start,
        heap_size,
        unmapped_pages: info.nr_pages - end,
    };
    let store_va = (mm::mfn_to_pfn(info.store_mfn) as usize) * mm::PAGE_SIZE;
    // SAFETY: the xenstore ring page Xen placed in our initial mapping; only
    // the xenstore client uses it.
    let store_page = unsafe { mm::SharedPage::from_va(store_va) };
    let mut xenstore = xenstore::Xenstore::new(
        store_page,
        XsEvents {
            port: info.store_evtchn,
        },
    );
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
    let k = Kernel {
        start_info: info,
        memory,
        boot_ns: time::boot_ns(),
        xenstore,
        grants,
    };
    // SAFETY: every unikernel binary defines kernel_main with this signature.
    unsafe { kernel_main(k) }
}
