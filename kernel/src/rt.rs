//! What a C runtime would otherwise give the compiler: mem* functions, and
//! the panic handler. Only the unikernel binaries link this.

use core::arch::asm;

// The compiler lowers copies and zeroing to these symbols. They use string
// instructions so that LLVM cannot turn their bodies back into calls to
// themselves.

#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees n valid, non-overlapping bytes.
    asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
         options(nostack, preserves_flags));
    dst
}

#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        return memcpy(dst, src, n);
    }
    // Overlapping with dst above src: copy backwards.
    // SAFETY: the caller guarantees n valid bytes at both; std/cld restore DF.
    asm!("std", "rep movsb", "cld",
         inout("rcx") n => _, inout("rdi") dst.add(n).wrapping_sub(1) => _,
         inout("rsi") src.add(n).wrapping_sub(1) => _, options(nostack));
    dst
}

#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees n writable bytes.
    asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
         options(nostack, preserves_flags));
    dst
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees n readable bytes; volatile keeps LLVM
        // from recognising this loop as a call to memcmp/bcmp.
        let (x, y) = (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i)));
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

#[no_mangle]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller passes a NUL-terminated string.
    while core::ptr::read_volatile(s.add(n)) != 0 {
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
    crate::crash(format_args!("_Unwind_Resume called: unwinding is not supported"))
}
