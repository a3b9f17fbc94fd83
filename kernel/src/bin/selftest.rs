//! A test kernel for what must never happen in Miniproxy itself: it faults
//! or panics on request (`extra="fault"`, `"ud"` or `"panic"`), so the Xen
//! tests can check that the trap table prints a register dump and that both
//! paths crash the domain with the reason on the console.
#![no_std]
#![no_main]

use kernel::{control::Control, println, Kernel, ShutdownReason};

#[no_mangle]
fn kernel_main(mut k: Kernel) -> ! {
    let what = k.start_info.cmdline().unwrap_or("");
    println!("selftest: {what}");
    match what.trim() {
        "fault" => {
            // Page 0 is the unmapped guard page.
            let p = core::hint::black_box(0usize) as *const u64;
            // SAFETY: deliberately invalid: the point is the page fault.
            let v = unsafe { core::ptr::read_volatile(p) };
            println!("selftest: read {v} from address 0: the guard page is mapped!");
        }
        // SAFETY: ud2 only raises #UD.
        "ud" => unsafe { core::arch::asm!("ud2") },
        "panic" => {
            let n = core::hint::black_box(3usize);
            let v = [1u8, 2, 3];
            println!("selftest: {}", v[n]);
        }
        _ => {
            let _ = Control::ready(&mut k);
            println!("selftest: nothing to do");
        }
    }
    k.shutdown(ShutdownReason::Poweroff)
}
