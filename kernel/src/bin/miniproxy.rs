//! The Miniproxy unikernel: configuration from `extra=`, netfront up, an
//! address (static or DHCP), the proxy rules listening, the ready key
//! written, then serve until `xl shutdown` (or `idle_exit`).
//!
//! The phases and their one wait live in `kernel::runtime` (host-tested);
//! this is only where the boot code hands over and the domain stops.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use kernel::runtime::{xen, Exit};
use kernel::Kernel;

// `no_mangle` counts as unsafe code: boot::kernel_entry calls this by
// name, and each binary defines it exactly once.
#[allow(unsafe_code)]
#[no_mangle]
fn kernel_main(mut k: Kernel) -> ! {
    match xen::run(&mut k) {
        Exit::Shutdown(reason) => k.shutdown(reason),
        Exit::Fatal(what) => kernel::crash(format_args!("{what}")),
    }
}
