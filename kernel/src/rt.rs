//! What a C runtime would otherwise give the compiler: mem* functions, and
//! the panic handler. Only the unikernel binaries link this.

use core::arch::asm;

// The compiler lowers copies and zeroing to these symbols. They use string
// instructions so that LLVM cannot turn their bodies back into calls to
// themselves.

/// # Safety
/// `n` valid bytes at `src` and writable at `dst`, not overlapping.
#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees n valid, non-overlapping bytes; DF is
    // clear (the ABI's state, and memmove restores it).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// `n` valid bytes at `src` and writable at `dst`; they may overlap.
#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when dst is below src or the
        // ranges do not overlap; the caller guarantees the bytes.
        return unsafe { memcpy(dst, src, n) };
    }
    // Overlapping with dst above src: copy backwards. Only the last byte's
    // address is computed (wrapping: n > 0 here, as dst > src).
    let (d, s) = (
        dst.wrapping_add(n).wrapping_sub(1),
        src.wrapping_add(n).wrapping_sub(1),
    );
    // SAFETY: the caller guarantees n valid bytes at both; std/cld restore DF.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") d => _, inout("rsi") s => _, options(nostack));
    }
    dst
}

/// # Safety
/// `n` writable bytes at `dst`.
#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees n writable bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// `n` readable bytes at `a` and at `b`.
#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees n readable bytes; volatile keeps LLVM
        // from recognising this loop as a call to memcmp/bcmp.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// As for `memcmp`.
#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract is memcmp's.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// `s` must be a NUL-terminated string.
#[no_mangle]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller passes a NUL-terminated string: every byte up to
    // the NUL is readable.
    while unsafe { core::ptr::read_volatile(s.add(n)) } != 0 {
        n += 1;
    }
    n
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::crash(format_args!("panic: {}", info))
}

/// The precompiled liballoc is built for unwinding and refers to the
/// personality routine from its (never used) landing pads. We abort on
/// panic, so nothing ever calls it.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Referenced from the same landing pads; unreachable because nothing ever
/// unwinds (panic = "abort").
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    crate::crash(format_args!(
        "_Unwind_Resume called: unwinding is not supported"
    ))
}
