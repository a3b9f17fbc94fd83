//! Exception handling: every CPU exception is fatal for us. Each vector gets
//! a tiny stub that builds a frame and calls [`trap_handler`], which prints a
//! register dump to the console and crashes the domain with the reason, so
//! `on_crash` applies and the log says what happened.

use crate::hypercall::{hypercall2, SET_TRAP_TABLE};

macro_rules! trap_stubs {
    ($( $vec:literal $name:ident $err:ident ),* $(,)?) => {
        core::arch::global_asm!(
            // Xen's bounce frame on a 64-bit PV kernel stack starts with the
            // guest's %rcx and %r11 (clobbered by the syscall-based return
            // path); restore them, then the frame is the hardware one.
            ".macro trap_common",
            "    push %r15; push %r14; push %r13; push %r12; push %r11; push %r10; push %r9; push %r8",
            "    push %rdi; push %rsi; push %rbp; push %rdx; push %rcx; push %rbx; push %rax",
            "    mov %rsp, %rdi",
            "    and $-16, %rsp",
            "    call trap_handler",
            "    ud2",
            ".endm",
            ".macro trap_noerr name, vec",
            "    .globl \\name",
            "\\name:",
            "    mov (%rsp), %rcx; mov 8(%rsp), %r11; add $16, %rsp",
            "    push $0",
            "    push $\\vec",
            "    trap_common",
            ".endm",
            ".macro trap_err name, vec",
            "    .globl \\name",
            "\\name:",
            "    mov (%rsp), %rcx; mov 8(%rsp), %r11; add $16, %rsp",
            "    push $\\vec",
            "    trap_common",
            ".endm",
            $( concat!("    ", stringify!($err), " ", stringify!($name), ", ", stringify!($vec)), )*
            options(att_syntax)
        );
        extern "C" { $( fn $name(); )* }
        const STUBS: &[(u8, unsafe extern "C" fn())] = &[ $( ($vec, $name) ),* ];
    };
}

trap_stubs!(
    0 trap_divide trap_noerr,
    1 trap_debug trap_noerr,
    3 trap_int3 trap_noerr,
    4 trap_overflow trap_noerr,
    5 trap_bounds trap_noerr,
    6 trap_invalid_op trap_noerr,
    7 trap_no_device trap_noerr,
    8 trap_double_fault trap_err,
    10 trap_invalid_tss trap_err,
    11 trap_no_segment trap_err,
    12 trap_stack_fault trap_err,
    13 trap_gp trap_err,
    14 trap_page_fault trap_err,
    16 trap_fpu trap_noerr,
    17 trap_alignment trap_err,
    18 trap_machine_check trap_noerr,
    19 trap_simd trap_noerr,
);

/// What the stubs push, lowest address first.
#[rustfmt::skip]
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub rax: u64, pub rbx: u64, pub rcx: u64, pub rdx: u64, pub rbp: u64, pub rsi: u64, pub rdi: u64,
    pub r8: u64, pub r9: u64, pub r10: u64, pub r11: u64, pub r12: u64, pub r13: u64, pub r14: u64, pub r15: u64,
    pub vector: u64, pub error: u64,
    pub rip: u64, pub cs: u64, pub rflags: u64, pub rsp: u64, pub ss: u64,
}

#[rustfmt::skip]
fn name(vec: u64) -> &'static str {
    match vec {
        0 => "divide error", 1 => "debug", 3 => "breakpoint", 4 => "overflow", 5 => "bound range",
        6 => "invalid opcode", 7 => "device not available", 8 => "double fault", 10 => "invalid TSS",
        11 => "segment not present", 12 => "stack fault", 13 => "general protection", 14 => "page fault",
        16 => "x87 FPU error", 17 => "alignment check", 18 => "machine check", 19 => "SIMD exception",
        _ => "unknown",
    }
}

// One dump line per println, as it reads on the console.
#[rustfmt::skip]
#[no_mangle]
extern "C" fn trap_handler(f: &TrapFrame) -> ! {
    // SAFETY: shared_info is mapped before the trap table is installed; a
    // volatile read of one field through the raw pointer.
    let cr2 = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*crate::events::shared()).vcpu_info[0].arch.cr2)) };
    crate::println!("\n*** exception {} ({}) error={:#x} rip={:#018x} cr2={:#018x}", f.vector, name(f.vector), f.error, f.rip, cr2);
    crate::println!("rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}", f.rax, f.rbx, f.rcx, f.rdx);
    crate::println!("rsi={:#018x} rdi={:#018x} rbp={:#018x} rsp={:#018x}", f.rsi, f.rdi, f.rbp, f.rsp);
    crate::println!("r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}", f.r8, f.r9, f.r10, f.r11);
    crate::println!("r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}", f.r12, f.r13, f.r14, f.r15);
    crate::println!("cs={:#x} ss={:#x} rflags={:#x}", f.cs, f.ss, f.rflags);
    #[cfg(not(any(test, feature = "hosted")))]
    {
        let (lo, hi) = crate::boot::stack_bounds();
        if f.rsp < lo as u64 + 4096 || f.rsp > hi as u64 {
            crate::println!("stack pointer outside the boot stack [{:#x}, {:#x}): stack overflow?", lo, hi);
        }
    }
    crate::crash(format_args!("exception {} ({}) at rip={:#x}", f.vector, name(f.vector), f.rip))
}

#[repr(C)]
struct TrapInfo {
    vector: u8,
    /// Bits 0-1: the privilege level allowed to raise it with `int`.
    flags: u8,
    cs: u16,
    address: u64,
}
const _: () =
    assert!(core::mem::size_of::<TrapInfo>() == core::mem::size_of::<xen_sys::trap_info>());

/// Install the trap table.
pub fn init() -> Result<(), i64> {
    let mut table = [const {
        TrapInfo {
            vector: 0,
            flags: 0,
            cs: 0,
            address: 0,
        }
    }; 20];
    for (slot, &(vec, stub)) in table.iter_mut().zip(STUBS) {
        *slot = TrapInfo {
            vector: vec,
            flags: if vec == 3 || vec == 4 { 3 } else { 0 },
            cs: xen_sys::FLAT_KERNEL_CS64 as u16,
            address: stub as usize as u64,
        };
    }
    // The table ends with an all-zero entry (there are fewer stubs than slots).
    // SAFETY: `table` is a valid, zero-terminated trap_info array for the call.
    let rc = unsafe { hypercall2(SET_TRAP_TABLE, table.as_ptr() as u64, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}
