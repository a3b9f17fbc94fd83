//! The PV console: a ring in a page shared with xenconsoled (dom0), which
//! copies what we write to `xl console` and its log file. A domU may not use
//! the hypervisor's own console_io on release builds of Xen.

use crate::events::{self, Port};
use crate::mm::SharedPage;
use core::fmt;

// struct xencons_interface (xen/include/public/io/console.h): in[1024] (we
// never read console input), out[2048], then the four indices.
const OUT_OFF: usize = 1024;
const OUT_SIZE: u32 = 2048;
const OUT_CONS: usize = 3080;
const OUT_PROD: usize = 3084;
/// How long to wait for xenconsoled to make room before dropping output.
const FULL_WAIT_NS: u64 = 2_000_000_000;

pub struct Console {
    page: SharedPage,
    port: Port,
    dropped: u64,
    /// Set once xenconsoled has not drained for FULL_WAIT_NS: from then on
    /// output is dropped rather than waited for, so a stuck console never
    /// hangs the proxy.
    stuck: bool,
}

impl Console {
    pub fn new(page: SharedPage, port: Port) -> Console {
        Console {
            page,
            port,
            dropped: 0,
            stuck: false,
        }
    }

    pub fn write_bytes(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let cons = self.page.read_u32(OUT_CONS);
            let prod = self.page.read_u32(OUT_PROD);
            let used = prod.wrapping_sub(cons);
            if used > OUT_SIZE {
                // xenconsoled's index is nonsense: do not trust the ring.
                self.dropped += data.len() as u64;
                return;
            }
            let space = (OUT_SIZE - used) as usize;
            if space == 0 {
                if self.stuck || !self.wait_for_room() {
                    self.stuck = true;
                    self.dropped += data.len() as u64;
                    return;
                }
                continue;
            }
            self.stuck = false;
            let n = space.min(data.len());
            for (i, &b) in data[..n].iter().enumerate() {
                let idx = (prod.wrapping_add(i as u32) % OUT_SIZE) as usize;
                self.page.write(OUT_OFF + idx, &[b]);
            }
            // The bytes must be visible before the producer index moves.
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            self.page.write_u32(OUT_PROD, prod.wrapping_add(n as u32));
            data = &data[n..];
        }
        let _ = events::send(self.port);
    }

    fn wait_for_room(&mut self) -> bool {
        let _ = events::send(self.port);
        let deadline = crate::time::now_ns() + FULL_WAIT_NS;
        while crate::time::now_ns() < deadline {
            events::take_pending(self.port);
            let used = self
                .page
                .read_u32(OUT_PROD)
                .wrapping_sub(self.page.read_u32(OUT_CONS));
            if used < OUT_SIZE {
                return true;
            }
            events::poll(&[self.port], Some(crate::time::now_ns() + 10_000_000));
        }
        false
    }

    /// Wait (bounded) until xenconsoled has read everything: used before the
    /// domain stops, so the last lines reach the log.
    pub fn flush(&mut self, timeout_ns: u64) {
        let _ = events::send(self.port);
        let deadline = crate::time::now_ns() + timeout_ns;
        while self.page.read_u32(OUT_PROD) != self.page.read_u32(OUT_CONS)
            && crate::time::now_ns() < deadline
        {
            events::take_pending(self.port);
            events::poll(&[self.port], Some(crate::time::now_ns() + 5_000_000));
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // The console wants CRLF line ends.
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                self.write_bytes(b"\r\n");
            }
            self.write_bytes(part.as_bytes());
        }
        Ok(())
    }
}

static CONSOLE: spin::Mutex<Option<Console>> = spin::Mutex::new(None);

pub fn install(c: Console) {
    *CONSOLE.lock() = Some(c);
}

/// Write to the console if it is up. Never blocks on the lock forever: a
/// panic while printing must still be able to print (try_lock, then steal).
pub fn with<F: FnOnce(&mut Console)>(f: F) {
    let mut guard = match CONSOLE.try_lock() {
        Some(g) => g,
        None => {
            // SAFETY: single CPU, no preemption: the holder is our own
            // interrupted frame (a panic while printing); it will never
            // resume, so taking the lock over is sound.
            unsafe { CONSOLE.force_unlock() };
            CONSOLE.lock()
        }
    };
    if let Some(c) = guard.as_mut() {
        f(c)
    }
}

pub fn flush(timeout_ns: u64) {
    with(|c| c.flush(timeout_ns));
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::console::with(|c| {
            let _ = core::fmt::Write::write_fmt(c, format_args!($($arg)*));
            let _ = core::fmt::Write::write_str(c, "\n");
        });
    }};
}

/// `log` output to the console, one line per record with the time since boot.
pub struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = crate::time::since_boot_ns();
        crate::println!(
            "[{:5}.{:06}] {:5} {}: {}",
            t / 1_000_000_000,
            (t / 1000) % 1_000_000,
            r.level(),
            r.target(),
            r.args()
        );
    }
    fn flush(&self) {}
}

pub static LOGGER: Logger = Logger;
