//! The Miniproxy unikernel: configuration from `extra=`, netfront up, an
//! address (static or DHCP), the proxy rules listening, the ready key
//! written, then serve until `xl shutdown` (or `idle_exit`).
//!
//! One single-threaded loop: poll the NIC, the engine and xenstore, then
//! sleep in SCHEDOP_poll on their event channels until the earliest timer.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use kernel::control::{Control, Request};
use kernel::net::XenPlatform;
use kernel::profile::{Profile, Section};
use kernel::{events, println, time, Kernel, ShutdownReason};
use netfront::{Event, Netfront};
use proxy::config::{Config, IpSetting};
use proxy::engine::Engine;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress};

/// Heap kept back from the engine's budget for everything else (xenstore
/// strings, smoltcp's interface, netfront's bookkeeping, the log).
const HEAP_RESERVE: usize = 192 * 1024;

fn die(what: impl core::fmt::Display) -> ! {
    kernel::crash(format_args!("{what}"))
}

fn now() -> Instant {
    Instant::from_micros((time::now_ns() / 1000) as i64)
}

fn now_ms() -> u64 {
    time::now_ns() / 1_000_000
}

/// The clock the profile charges sections with: the vCPU's running time,
/// or wall time if Xen did not give us a runstate area.
fn cpu_ns() -> u64 {
    time::cpu().map_or_else(time::now_ns, |c| c.running)
}

/// The profile with the runstate's blocked and steal totals filled in.
fn profile_now(p: &Profile) -> Profile {
    let mut p = p.clone();
    if let Some(c) = time::cpu() {
        p.blocked_ns = c.blocked;
        p.steal_ns = c.runnable;
    }
    p
}

#[no_mangle]
fn kernel_main(mut k: Kernel) -> ! {
    println!(
        "miniproxy: memory {} KiB, heap {} KiB, {}",
        k.memory.total_pages * 4,
        k.memory.heap_size / 1024,
        k.start_info.magic_str()
    );
    let line = k.start_info.cmdline().unwrap_or_else(|e| die(format!("config: the command line is not UTF-8 ({e})")));
    let cfg = Config::parse(line).unwrap_or_else(|e| die(e));
    log::set_max_level(cfg.loglevel);
    println!("miniproxy: config: {cfg}");
    log::debug!(
        "memory: heap {} KiB at {:#x}, image ends at {:#x}, {} pages not mapped",
        k.memory.heap_size / 1024,
        k.memory.heap_start,
        k.memory.image_end,
        k.memory.unmapped_pages
    );
    let mut control = Control::init(&mut k).unwrap_or_else(|e| die(e));

    // Only "no such node" means no vif; any other xenstore failure is
    // reported as what it is.
    let has_vif = match k.xenstore.borrow_mut().read("device/vif/0/backend") {
        Ok(_) => true,
        Err(e) if e.errno() == Some(&kernel::xenstore::Errno::ENOENT) => false,
        Err(e) => die(format!("net: cannot tell whether the domain has a vif: {e}")),
    };
    if !has_vif {
        if !cfg.rules.is_empty() {
            die("net: rules are configured but the domain has no vif (add vif=[...] to the xl config)");
        }
        log::info!("no vif: not networking");
        let us = Control::ready(&mut k).unwrap_or_else(|e| die(e));
        log::info!("ready after {us} us");
        idle_without_network(k, control)
    }

    // Netfront: the xenbus handshake, polled until Connected (it times out
    // with a clear error by itself).
    let grants = k.grants.take().unwrap_or_else(|| die("net: no grant table"));
    // The backend's hotplug can take tens of seconds in a loaded dom0 (many
    // instances starting at once): wait up to a minute, then fail clearly.
    let nf_cfg = netfront::Config {
        rx_buffers: cfg.rx_bufs,
        tx_buffers: cfg.tx_bufs,
        offload: cfg.offload,
        handshake_timeout_ms: 60_000,
        // A watch on the backend's state wakes the check (below); this is
        // only the fallback should a watch event be lost.
        state_check_ms: 10_000,
        ..netfront::Config::default()
    };
    let platform = XenPlatform::new(k.xenstore.clone(), grants);
    let mut nf = Netfront::new(platform, nf_cfg).unwrap_or_else(|e| die(format!("netfront: {e}")));
    let xs_port = k.xenstore_port();
    let mac = loop {
        let mut connected = None;
        for _ in 0..8 {
            match nf.poll(now_ms()) {
                Some(Event::Connected { mac, mtu, backend }) => {
                    log::info!("netfront: connected, mac {}, mtu {mtu}, backend {backend:?}", EthernetAddress(mac));
                    log::info!("netfront: offload {}", nf.offload());
                    connected = Some(mac);
                    break;
                }
                Some(Event::Disconnected(r)) => die(format!("netfront: {r}")),
                Some(ev) => log::debug!("netfront: {ev:?}"),
                None => break,
            }
        }
        if let Some(m) = connected {
            break m;
        }
        stop_if_asked(&mut k, &mut control, None, None, &Profile::new());
        let wait = nf.poll_delay(now_ms()).unwrap_or(100).min(100);
        sleep(&[xs_port], nf.platform().port, time::now_ns() + wait * 1_000_000);
    };
    let state_path = format!("{}/state", nf.backend_path());
    control.watch_backend(&mut k, &state_path).unwrap_or_else(|e| die(format!("net: cannot watch {state_path}: {e}")));
    let mem = nf.memory();
    log::info!("netfront: {} pages ({} KiB) for rings and buffers", mem.pages(), mem.total_bytes() / 1024);

    // The proxy engine, sized to what is left of the heap.
    let (used, size) = k.heap_usage();
    let budget = size.saturating_sub(used).saturating_sub(HEAP_RESERVE);
    let hw = HardwareAddress::Ethernet(EthernetAddress(mac));
    let mut engine =
        Engine::new(&cfg, hw, time::entropy(), budget, &mut nf, now()).unwrap_or_else(|e| die(e));
    let plan = engine.plan();
    log::info!(
        "engine: {} KiB budget, {} KiB of it for socket buffers; guaranteed worst case (every connection at buf_min) {} KiB, every connection at buf would take {} KiB",
        budget / 1024,
        engine.buffer_budget() / 1024,
        plan.total / 1024,
        plan.total_max / 1024
    );

    // Address: static from the config (Engine::new applied it), or DHCP
    // (the engine runs smoltcp's client) with a deadline.
    match cfg.ip {
        IpSetting::Static { .. } => {
            if let Some(a) = engine.ipv4() {
                log::info!("net: address {a} (static), gateway {:?}", cfg.gw);
            }
        }
        IpSetting::Dhcp => {
            engine.start_dhcp();
            let deadline = time::now_ns() + cfg.dhcp_timeout.as_nanos() as u64;
            log::info!("net: asking for an address by DHCP (timeout {:?})", cfg.dhcp_timeout);
            while engine.ipv4().is_none() {
                if time::now_ns() >= deadline {
                    die(format!(
                        "net: no DHCP lease within {:?} (set ip=a.b.c.d/len for a static address)",
                        cfg.dhcp_timeout
                    ));
                }
                stop_if_asked(&mut k, &mut control, Some(&mut nf), Some(&engine), &Profile::new());
                let d = engine.poll_delay(now()).map(|d| d.total_micros() * 1000).unwrap_or(100_000_000);
                sleep(&[xs_port], nf.platform().port, (time::now_ns() + d.min(100_000_000)).min(deadline));
                nf.poll(now_ms());
                engine.poll(now(), &mut nf);
            }
            if let Some(a) = engine.ipv4() {
                log::info!("net: address {a} (DHCP)");
            }
        }
    }
    if let Some(a) = engine.ipv4() {
        let _ = k.xenstore.borrow_mut().write("data/ip", &format!("{a}"));
    }
    for r in &cfg.rules {
        log::info!("proxy: rule {r}");
    }
    let us = Control::ready(&mut k).unwrap_or_else(|e| die(e));
    log::info!("ready after {us} us");

    let mut last_stats = String::new();
    let mut last_stats_ns = 0u64;
    let mut prof = Profile::new();
    let mut t_ns = cpu_ns();
    loop {
        prof.loops += 1;
        let t = now();
        for _ in 0..8 {
            match nf.poll(t.total_millis() as u64) {
                Some(Event::Disconnected(r)) => log::warn!("netfront: link down: {r}; still running"),
                Some(Event::Connected { .. }) => log::info!("netfront: link up again"),
                Some(ev) => log::info!("netfront: {ev:?}"),
                None => break,
            }
        }
        t_ns = prof.charge(Section::Nic, t_ns, cpu_ns());
        engine.poll(t, &mut nf);
        t_ns = prof.charge(Section::Engine, t_ns, cpu_ns());
        stop_if_asked(&mut k, &mut control, Some(&mut nf), Some(&engine), &prof);
        if control.take_backend_changed() {
            nf.check_backend_soon();
        }

        // Stats under data/, at most once a second and only when changed.
        let now_ns = time::now_ns();
        if now_ns.saturating_sub(last_stats_ns) >= 1_000_000_000 {
            let line = format!("{} {}", engine.stats(), nf.stats());
            if line != last_stats {
                // The profile rides along but does not count as a change
                // (it changes on every pass, even idle ones).
                let full = format!("{line} {} notifies={}", profile_now(&prof), nf.platform().notifies);
                if let Err(e) = k.xenstore.borrow_mut().write("data/stats", &full) {
                    log::warn!("stats: {e}");
                }
                last_stats = line;
            }
            last_stats_ns = now_ns;
        }

        // idle_exit: power off after that long with no connection.
        let mut deadline = now_ns + 1_000_000_000;
        if let (Some(limit), Some(since)) = (cfg.idle_exit, engine.idle_since()) {
            let idle_for = Duration::from_micros((t - since).total_micros());
            if idle_for.total_micros() as u128 >= limit.as_micros() {
                log::info!("idle for {idle_for}: exiting (idle_exit)");
                finish(&k, &mut nf, &engine, &prof, ShutdownReason::Poweroff);
            }
            let left = limit.as_nanos() as u64 - idle_for.total_micros() * 1000;
            deadline = deadline.min(now_ns + left);
        }
        let ed = engine.poll_delay(t);
        let nd = nf.poll_delay(t.total_millis() as u64);
        if let Some(d) = ed {
            deadline = deadline.min(now_ns + d.total_micros() * 1000);
        }
        if let Some(d) = nd {
            deadline = deadline.min(now_ns + d * 1_000_000);
        }
        if prof.loops % 4096 == 0 {
            log::trace!("loop {}: engine delay {ed:?}, netfront delay {nd:?} ms", prof.loops);
        }
        t_ns = prof.charge(Section::Control, t_ns, cpu_ns());
        if deadline > time::now_ns() {
            sleep(&[xs_port], nf.platform().port, deadline);
            if time::now_ns() < deadline {
                prof.wakeups += 1;
            }
            t_ns = prof.charge(Section::Sleep, t_ns, cpu_ns());
        }
    }
}

/// Sleep until one of the ports fires or the deadline (absolute ns).
fn sleep(ports: &[u32], nic: Option<u32>, deadline_ns: u64) {
    let mut all = [0u32; 4];
    let mut n = 0;
    for &p in ports.iter().chain(nic.iter()) {
        if n < all.len() {
            all[n] = p;
            n += 1;
        }
    }
    events::poll(&all[..n], Some(deadline_ns));
}

fn stop_if_asked(
    k: &mut Kernel,
    control: &mut Control,
    nf: Option<&mut Netfront<XenPlatform>>,
    engine: Option<&Engine>,
    prof: &Profile,
) {
    match control.poll(k) {
        Ok(None) => {}
        Ok(Some(Request::DumpStats)) => {
            if let Some(e) = engine {
                println!("miniproxy: proxy {}", e.stats());
            }
            if let Some(nf) = nf {
                println!("miniproxy: vif0 {} notifies={}", nf.stats(), nf.platform().notifies);
            }
            println!("miniproxy: {}", profile_now(prof));
            let (used, size) = k.heap_usage();
            println!("miniproxy: heap {} of {} KiB used", used / 1024, size / 1024);
        }
        Ok(Some(Request::Stop(reason))) => match nf {
            Some(nf) => finish(k, nf, engine.unwrap_or_else(|| die("no engine")), prof, reason),
            None => {
                println!("miniproxy: stopping ({reason:?})");
                k.shutdown(reason)
            }
        },
        Err(e) => die(e),
    }
}

fn finish(k: &Kernel, nf: &mut Netfront<XenPlatform>, engine: &Engine, prof: &Profile, reason: ShutdownReason) -> ! {
    let (used, size) = k.heap_usage();
    println!("miniproxy: stopping ({reason:?})");
    println!("miniproxy: proxy {}", engine.stats());
    println!("miniproxy: vif0 {} notifies={}", nf.stats(), nf.platform().notifies);
    println!("miniproxy: {}", profile_now(prof));
    println!("miniproxy: heap {} of {} KiB used", used / 1024, size / 1024);
    // Let the backend unmap our pages before the domain goes (bounded).
    let already_down = nf.state() == netfront::State::Disconnected;
    nf.close();
    let deadline = time::now_ns() + 2_000_000_000;
    while !already_down && time::now_ns() < deadline {
        if let Some(Event::Released { leaked_pages }) = nf.poll(now_ms()) {
            if leaked_pages > 0 {
                log::warn!("netfront: {leaked_pages} pages still mapped by the backend at shutdown");
            }
            break;
        }
        let wait = nf.poll_delay(now_ms()).unwrap_or(10).min(10);
        sleep(&[], nf.platform().port, time::now_ns() + wait * 1_000_000);
    }
    k.shutdown(reason)
}

fn idle_without_network(mut k: Kernel, mut control: Control) -> ! {
    let xs_port = k.xenstore_port();
    loop {
        stop_if_asked(&mut k, &mut control, None, None, &Profile::new());
        events::poll(&[xs_port], None);
    }
}
