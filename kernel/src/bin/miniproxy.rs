//! The Miniproxy unikernel: configuration from `extra=`, then the main loop.
#![no_std]
#![no_main]

extern crate alloc;

use kernel::control::{Control, Request};
use kernel::{events, println, Kernel};
use proxy::config::Config;

#[no_mangle]
fn kernel_main(mut k: Kernel) -> ! {
    println!(
        "miniproxy: memory {} KiB, heap {} KiB, {}",
        k.memory.total_pages * 4,
        k.memory.heap_size / 1024,
        k.start_info.magic_str()
    );
    let line = match k.start_info.cmdline() {
        Ok(l) => l,
        Err(e) => kernel::crash(format_args!("config: the command line is not UTF-8 ({e})")),
    };
    let cfg = match Config::parse(line) {
        Ok(c) => c,
        Err(e) => kernel::crash(format_args!("{e}")),
    };
    log::set_max_level(cfg.loglevel);
    println!("miniproxy: config: {cfg}");
    log::debug!(
        "memory: heap {} KiB at {:#x}, image ends at {:#x}, {} pages beyond the initial mapping",
        k.memory.heap_size / 1024,
        k.memory.heap_start,
        k.memory.image_end,
        k.memory.unmapped_pages
    );

    let mut control = match Control::init(&mut k) {
        Ok(c) => c,
        Err(e) => kernel::crash(format_args!("{e}")),
    };
    match Control::ready(&mut k) {
        Ok(us) => log::info!("ready after {us} us"),
        Err(e) => kernel::crash(format_args!("{e}")),
    }

    let xs_port = k.xenstore_port();
    loop {
        match control.poll(&mut k) {
            Ok(Some(Request::Stop(reason))) => {
                let (used, size) = k.heap_usage();
                println!("miniproxy: stopping ({reason:?}); heap {} of {} KiB used", used / 1024, size / 1024);
                k.shutdown(reason)
            }
            Ok(None) => {}
            Err(e) => kernel::crash(format_args!("{e}")),
        }
        // Idle: sleep until xenstore (or later the NIC) has something for us.
        events::poll(&[xs_port], None);
    }
}
