//! `miniproxy-tap`: the Miniproxy engine on a Linux TAP device, for host testing
//! and benchmarking. Same config line as the unikernel's `extra=`:
//!
//! ```text
//! miniproxy-tap [--tap NAME] [--mac XX:XX:XX:XX:XX:XX] [--stats SECS] -- ip=10.9.0.2/24 rule=reverse:80:10.9.0.20:8080 ...
//! ```
//!
//! It creates (or attaches to) the TAP device, prints `miniproxy-tap: ready on NAME`,
//! waits until the device is up (`ip link set NAME up`, usually also `master BRIDGE`),
//! then runs the engine: poll, then sleep until the engine's next deadline or a
//! frame. It prints the stats line every `--stats` seconds and when it exits, which it
//! does after `idle_exit=` without connections, or when stdin reaches end of file
//! if `--stdin-exit` is given (so a parent can stop it cleanly).
//! The memory budget is `mem=` (default 64m). With `ip=dhcp` the engine's DHCP
//! client gets the address (a DHCP server must answer on the TAP's segment).
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant as StdInstant, SystemTime};

use proxy::config::{Config, IpSetting};
use proxy::engine::Engine;
use smoltcp::phy::{wait, Medium, TunTapInterface};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress};

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

struct Args {
    tap: String,
    mac: EthernetAddress,
    stats: Option<StdDuration>,
    stdin_exit: bool,
    line: String,
}

fn usage() -> String {
    "usage: miniproxy-tap [--tap NAME] [--mac XX:XX:XX:XX:XX:XX] [--stats SECS] [--stdin-exit] -- CONFIG...".into()
}

fn parse_mac(s: &str) -> Option<EthernetAddress> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut b = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        b[i] = u8::from_str_radix(p, 16).ok()?;
    }
    let m = EthernetAddress(b);
    m.is_unicast().then_some(m)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        tap: "tap0".into(),
        mac: EthernetAddress([0x02, 0x4d, 0x50, 0x00, 0x00, 0x02]),
        stats: None,
        stdin_exit: false,
        line: String::new(),
    };
    let mut it = std::env::args().skip(1);
    let mut rest = Vec::new();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--tap" => {
                a.tap = it.next().ok_or("--tap needs a value")?;
                if a.tap.is_empty() || a.tap.len() > 15 {
                    return Err(format!(
                        "bad value for --tap: '{}' (1 to 15 characters)",
                        a.tap
                    ));
                }
            }
            "--mac" => {
                let v = it.next().ok_or("--mac needs a value")?;
                a.mac = parse_mac(&v).ok_or_else(|| {
                    format!("bad value for --mac: '{v}' (expected a unicast MAC like 02:00:00:00:00:02)")
                })?;
            }
            "--stats" => {
                let v = it.next().ok_or("--stats needs a value")?;
                let secs: u64 = v.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("bad value for --stats: '{v}' (expected whole seconds > 0)")
                })?;
                a.stats = Some(StdDuration::from_secs(secs));
            }
            "--stdin-exit" => a.stdin_exit = true,
            "--" => {
                rest.extend(it.by_ref());
                break;
            }
            "-h" | "--help" => return Err(usage()),
            s if s.starts_with("--") => return Err(format!("unknown option '{s}'\n{}", usage())),
            _ => rest.push(arg),
        }
    }
    a.line = rest.join(" ");
    Ok(a)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let cfg = Config::parse(&args.line).map_err(|e| e.to_string())?;
    log::set_logger(&LOGGER).map_err(|e| e.to_string())?;
    log::set_max_level(cfg.loglevel);
    let mut dev = TunTapInterface::new(&args.tap, Medium::Ethernet)
        .map_err(|e| format!("opening TAP device '{}': {e}", args.tap))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dev);
    let budget = cfg.mem.unwrap_or(64 << 20);
    let epoch = StdInstant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut engine = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(args.mac),
        seed,
        budget,
        &mut dev,
        now(),
    )
    .map_err(|e| e.to_string())?;
    if cfg.ip == IpSetting::Dhcp {
        engine.start_dhcp();
    }
    println!("miniproxy-tap: config: {cfg}");
    let plan = engine.plan();
    println!(
        "miniproxy-tap: memory plan: {} bytes worst case at buf_min ({} sockets of {} bytes; {} at buf), \
         budget {budget}, {} for socket buffers",
        plan.total,
        plan.max_sockets,
        plan.per_socket,
        plan.total_max,
        engine.buffer_budget()
    );
    println!("miniproxy-tap: ready on {}", args.tap);
    let _ = std::io::stdout().flush();

    let stop = Arc::new(AtomicBool::new(false));
    if args.stdin_exit {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                if line.is_err() {
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    hostnet::wait_until_up(&args.tap, StdDuration::from_secs(300))?;
    let mut next_stats = args.stats.map(|s| StdInstant::now() + s);
    let idle_exit = cfg
        .idle_exit
        .map(|d| Duration::from_micros(d.as_micros() as u64));
    loop {
        let t = now();
        engine.poll(t, &mut dev);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let (Some(limit), Some(since)) = (idle_exit, engine.idle_since()) {
            if t >= since + limit {
                println!("miniproxy-tap: idle for {limit}, exiting");
                break;
            }
        }
        if let (Some(n), Some(every)) = (next_stats, args.stats) {
            if StdInstant::now() >= n {
                println!("miniproxy-tap: stats: {}", engine.stats());
                let _ = std::io::stdout().flush();
                next_stats = Some(n + every);
            }
        }
        // Sleep until the engine's next deadline or a frame, but wake at least
        // every 100 ms for the stats, idle exit and stop checks.
        let mut delay = engine
            .poll_delay(now())
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        if let Some(limit) = idle_exit {
            if let Some(since) = engine.idle_since() {
                let left = (since + limit) - now().min(since + limit);
                delay = delay.min(left);
            }
        }
        if delay > Duration::ZERO {
            wait(fd, Some(delay)).map_err(|e| format!("waiting on the TAP device: {e}"))?;
        }
    }
    println!("miniproxy-tap: stats: {}", engine.stats());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("miniproxy-tap: {e}");
            ExitCode::from(2)
        }
    }
}
