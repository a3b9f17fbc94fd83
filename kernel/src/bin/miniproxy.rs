//! The Miniproxy unikernel.
#![no_std]
#![no_main]

extern crate alloc;

use kernel::{println, Kernel, ShutdownReason};

#[no_mangle]
fn kernel_main(k: Kernel) -> ! {
    println!("miniproxy: booting ({}), {} pages", k.start_info.magic_str(), k.memory.total_pages);
    match k.start_info.cmdline() {
        Ok(c) => println!("miniproxy: cmdline '{}'", c),
        Err(_) => println!("miniproxy: cmdline is not UTF-8"),
    }
    println!(
        "miniproxy: heap {} KiB at {:#x}, image ends {:#x}, {} pages unmapped, up {} us",
        k.memory.heap_size / 1024,
        k.memory.heap_start,
        k.memory.image_end,
        k.memory.unmapped_pages,
        k.uptime_ns() / 1000
    );
    let v: alloc::vec::Vec<u32> = (0..1000).collect();
    println!("miniproxy: heap works: sum {}", v.iter().sum::<u32>());
    k.shutdown(ShutdownReason::Poweroff)
}
