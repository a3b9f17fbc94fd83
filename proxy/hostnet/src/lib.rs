//! Linux host networking for Miniproxy's host tools and tests (never in the
//! unikernel): waiting for a TAP device to come up (`miniproxy-tap`,
//! `miniproxy-tcptool`), and the network-namespace [`testbed`] of the TAP test
//! and the benchmark.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

pub mod testbed;

/// Wait until network device `name` is up (`IFF_UP` in
/// `/sys/class/net/NAME/flags`), checking every 10 ms; an error if it is not
/// within `timeout` or the flags cannot be read.
pub fn wait_until_up(name: &str, timeout: Duration) -> Result<(), String> {
    let path = format!("/sys/class/net/{name}/flags");
    let start = Instant::now();
    loop {
        let flags = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        let v = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
            .map_err(|_| format!("{path}: unexpected content '{}'", flags.trim()))?;
        if v & 1 != 0 {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{name} was not brought up within {} s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
