//! The floor for boot-time comparisons: the smallest PV kernel that does
//! what any instance must before it is useful — boot, connect to xenstore,
//! write the ready key — and then powers off. `scripts/bench-boot` times it
//! beside Miniproxy in the same run.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use kernel::{control::Control, Kernel, ShutdownReason};

// `no_mangle` counts as unsafe code: boot::kernel_entry calls this by
// name, and each binary defines it exactly once.
#[allow(unsafe_code)]
#[no_mangle]
fn kernel_main(mut k: Kernel) -> ! {
    match Control::ready(&mut k) {
        Ok(us) => kernel::println!("floor: ready after {us} us"),
        Err(e) => kernel::crash(format_args!("floor: {e}")),
    }
    k.shutdown(ShutdownReason::Poweroff)
}
