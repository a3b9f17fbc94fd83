//! The runtime on Xen: the kernel's clock, event channels, xenstore,
//! netfront and the proxy engine behind the runtime's traits, and the boot
//! phase that reads the configuration and runs the phases in order.

use super::budget::{engine_budget, Budget};
use super::pool;
use super::{Clock, Exit, Nic, Proxy, Runtime, Sleeper, Toolstack, WakeOn};
use crate::boottime::{Mark, TIMELINE};
use crate::control::{Control, Request};
use crate::net::XenPlatform;
use crate::time::{self, Cpu};
use crate::xenstore::{Errno, Events, Xenstore, XsError};
use crate::{events, Kernel};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use netfront::{Event, Netfront, SharedPage};
use proxy::config::Config;
use proxy::engine::Engine;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Cidr};

/// Where our vifs' frontend directories are (relative to the domain's home).
const VIFS_PATH: &str = "device/vif";
/// The first vif's backend node: there is a vif iff it exists.
const VIF_BACKEND_PATH: &str = "device/vif/0/backend";

/// pvclock time and the vCPU runstate.
pub struct XenClock;

impl Clock for XenClock {
    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
    fn cpu_ns(&self) -> u64 {
        time::cpu().map_or_else(time::now_ns, |c| c.running)
    }
    fn runstate(&self) -> Option<Cpu> {
        time::cpu()
    }
}

/// `SCHEDOP_poll` on the xenstore port and the NIC's.
pub struct XenSleeper {
    pub xenstore_port: events::Port,
}

impl Sleeper for XenSleeper {
    fn wait(&mut self, on: WakeOn, deadline_ns: Option<u64>) {
        let mut ports = [0u32; 2];
        let mut n = 0;
        for p in on
            .xenstore
            .then_some(self.xenstore_port)
            .into_iter()
            .chain(on.nic)
        {
            ports[n] = p;
            n += 1;
        }
        events::poll(&ports[..n], deadline_ns);
    }
    fn take_xenstore_event(&mut self) {
        events::take_pending(self.xenstore_port);
    }
}

/// Domain control ([`Control`]) over a shared xenstore connection.
pub struct XsToolstack<P: SharedPage, E: Events> {
    pub xs: Rc<RefCell<Xenstore<P, E>>>,
    pub control: Control,
    /// The paths watched with the backend token (xenstored refuses the same
    /// watch twice).
    watched: Vec<String>,
}

impl<P: SharedPage, E: Events> XsToolstack<P, E> {
    /// Advertise shutdown support and watch the control keys.
    pub fn init(xs: Rc<RefCell<Xenstore<P, E>>>) -> Result<Self, XsError> {
        Ok(Self::init_reading(xs, &[])?.0)
    }

    /// [`init`](Self::init), reading `reads` in the same round trip
    /// ([`Control::init_reading`]).
    pub fn init_reading(
        xs: Rc<RefCell<Xenstore<P, E>>>,
        reads: &[&str],
    ) -> Result<(Self, Vec<Result<String, XsError>>), XsError> {
        let (control, read) = Control::init_reading(&mut xs.borrow_mut(), reads)?;
        let toolstack = XsToolstack {
            xs,
            control,
            watched: Vec::new(),
        };
        Ok((toolstack, read))
    }

    /// Watch our vif directories too (`device/vif`: a vif detached or
    /// attached), reported the same way: the serve loop then re-checks the
    /// backend and, once disconnected, looks for a vif attached again.
    pub fn watch_vifs(&mut self) -> Result<(), XsError> {
        self.watch_backend(VIFS_PATH)
    }

    /// Both of the above in one round trip (the ones not watched yet).
    pub fn watch_backend_and_vifs(&mut self, state_path: &str) -> Result<(), XsError> {
        let new: Vec<&str> = [state_path, VIFS_PATH]
            .into_iter()
            .filter(|p| !self.watched.iter().any(|w| w == p))
            .collect();
        self.control
            .watch_backends(&mut self.xs.borrow_mut(), &new)?;
        self.watched.extend(new.into_iter().map(String::from));
        Ok(())
    }
}

impl<P: SharedPage, E: Events> Toolstack for XsToolstack<P, E> {
    fn poll_request(&mut self) -> Result<Option<Request>, XsError> {
        self.control.poll(&mut self.xs.borrow_mut())
    }
    fn take_backend_changed(&mut self) -> bool {
        self.control.take_backend_changed()
    }
    fn watch_backend(&mut self, state_path: &str) -> Result<(), XsError> {
        if self.watched.iter().any(|w| w == state_path) {
            return Ok(());
        }
        self.control
            .watch_backend(&mut self.xs.borrow_mut(), state_path)?;
        self.watched.push(state_path.into());
        Ok(())
    }
    fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        self.xs.borrow_mut().write(path, value)
    }
    fn read(&mut self, path: &str) -> Result<String, XsError> {
        self.xs.borrow_mut().read(path)
    }
    fn watch_config(&mut self, path: &str) -> Result<(), XsError> {
        self.watch_backend(path)
    }
}

impl Nic for Netfront<XenPlatform> {
    fn poll(&mut self, now_ms: u64) -> Option<Event> {
        Netfront::poll(self, now_ms)
    }
    fn poll_delay(&self, now_ms: u64) -> Option<u64> {
        Netfront::poll_delay(self, now_ms)
    }
    fn port(&self) -> Option<u32> {
        self.platform().port
    }
    fn check_backend_soon(&mut self) {
        Netfront::check_backend_soon(self)
    }
    fn backend_state_path(&self) -> Option<String> {
        let backend = self.backend_path();
        (!backend.is_empty()).then(|| format!("{backend}/state"))
    }
    fn offload(&self) -> String {
        Netfront::offload(self).to_string()
    }
    fn stats(&self) -> String {
        Netfront::stats(self).to_string()
    }
    fn notifies(&self) -> u64 {
        self.platform().notifies
    }
    fn close(&mut self) {
        Netfront::close(self)
    }
    fn is_disconnected(&self) -> bool {
        self.state() == netfront::State::Disconnected
    }
    fn tx_in_flight(&self) -> usize {
        Netfront::tx_in_flight(self)
    }
    fn reconnect_if_attached(&mut self) -> bool {
        Netfront::reconnect_if_attached(self)
    }
}

impl Proxy<Netfront<XenPlatform>> for Engine {
    fn poll(&mut self, now: Instant, nic: &mut Netfront<XenPlatform>) {
        Engine::poll(self, now, nic);
    }
    fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        Engine::poll_delay(self, now)
    }
    fn idle_since(&self) -> Option<Instant> {
        Engine::idle_since(self)
    }
    fn stats(&self) -> String {
        Engine::stats(self).to_string()
    }
    fn active(&self) -> usize {
        Engine::stats(self).active
    }
    fn start_drain(&mut self, now: Instant, timeout: Duration) {
        Engine::start_drain(self, now, timeout)
    }
    fn drained(&self) -> bool {
        Engine::drained(self)
    }
    fn link_up(&mut self, mac: [u8; 6], now: Instant) {
        if let Err(e) = Engine::link_up(self, EthernetAddress(mac), now) {
            log::warn!(
                "engine: the link came back with MAC {}: {e}",
                EthernetAddress(mac)
            );
        }
    }
    fn start_dhcp(&mut self) {
        Engine::start_dhcp(self)
    }
    fn ipv4(&self) -> Option<Ipv4Cidr> {
        Engine::ipv4(self)
    }
}

type XenRuntime =
    Runtime<XenClock, XenSleeper, XsToolstack<crate::mm::SharedPage, crate::XsEvents>>;

/// The boot phase and then every other phase, in order: configuration from
/// `extra=`, netfront up, an address, the ready key, serve until stopped.
pub fn run(k: &mut Kernel) -> Exit {
    match boot(k) {
        Ok(exit) | Err(exit) => exit,
    }
}

fn console_line(line: core::fmt::Arguments) {
    crate::println!("{line}");
}

fn fatal(what: impl core::fmt::Display) -> Exit {
    Exit::Fatal(format!("{what}"))
}

/// A pool member's takeover: wait for its configuration (see [`pool`]),
/// then apply what a cold boot applies when it has parsed its command line.
fn take_over(
    rt: &mut XenRuntime,
    nf: &mut Netfront<XenPlatform>,
    boot: &Config,
) -> Result<Config, Exit> {
    let t0 = time::now_ns();
    let line = rt.wait_for_config(nf)?;
    let cfg = pool::take_config(&line, boot)?;
    log::set_max_level(cfg.loglevel);
    crate::println!(
        "miniproxy: config (from {}, after {} ms in the pool): {cfg}",
        pool::CONFIG_PATH,
        time::now_ns().saturating_sub(t0) / 1_000_000
    );
    rt.drain_timeout = cfg.drain_timeout;
    Ok(cfg)
}

fn boot(k: &mut Kernel) -> Result<Exit, Exit> {
    crate::println!(
        "miniproxy: memory {} KiB, heap {} KiB, {}",
        k.memory.total_pages * 4,
        k.memory.heap_size / 1024,
        k.start_info.magic_str()
    );
    let line = k.start_info.cmdline().map_err(fatal)?;
    let cfg = Config::parse(line).map_err(fatal)?;
    TIMELINE.mark(Mark::Cfg);
    log::set_max_level(cfg.loglevel);
    crate::println!("miniproxy: config: {cfg}");
    log::debug!(
        "memory: heap {} KiB at {:#x}, image ends at {:#x}, {} pages not mapped",
        k.memory.heap_size / 1024,
        k.memory.heap_start,
        k.memory.image_end,
        k.memory.unmapped_pages
    );
    // Whether there is a vif rides along with the control keys: one round
    // trip for both.
    let (toolstack, read) =
        XsToolstack::init_reading(k.xenstore.clone(), &[VIF_BACKEND_PATH]).map_err(fatal)?;
    TIMELINE.mark(Mark::Xs);
    let vif_backend = read
        .into_iter()
        .next()
        .ok_or_else(|| fatal("xenstore: no reply"))?;
    let sleeper = XenSleeper {
        xenstore_port: k.xenstore_port(),
    };
    let mut rt: XenRuntime = Runtime::new(
        XenClock,
        sleeper,
        toolstack,
        crate::heap_usage,
        console_line,
    );
    rt.drain_timeout = cfg.drain_timeout;

    // Only "no such node" means no vif; any other xenstore failure is
    // reported as what it is.
    let has_vif = match vif_backend {
        Ok(_) => true,
        Err(e) if e.errno() == Some(&Errno::ENOENT) => false,
        Err(e) => {
            return Err(fatal(format!(
                "net: cannot tell whether the domain has a vif: {e}"
            )))
        }
    };
    if !has_vif {
        if cfg.pool {
            return Err(fatal(
                "pool: pool=on needs a vif (a pool member waits with its vif connected)",
            ));
        }
        if !cfg.rules.is_empty() {
            return Err(fatal("net: rules are configured but the domain has no vif (add vif=[...] to the xl config)"));
        }
        log::info!("no vif: not networking");
        let us = Control::ready(k).map_err(fatal)?;
        log::info!("ready after {us} us");
        return Ok(rt.idle_without_network());
    }

    // Netfront: the xenbus handshake, polled until Connected (it times out
    // with a clear error by itself).
    let grants = k
        .grants
        .take()
        .ok_or_else(|| fatal("net: no grant table"))?;
    // The backend's hotplug can take tens of seconds in a loaded dom0 (many
    // instances starting at once): wait up to a minute, then fail clearly.
    let nf_cfg = netfront::Config {
        rx_buffers: cfg.rx_bufs,
        tx_buffers: cfg.tx_bufs,
        offload: cfg.offload,
        handshake_timeout_ms: 60_000,
        // A watch on the backend's state wakes the check (serve); this is
        // only the fallback should a watch event be lost: 10 s after
        // connecting, backing off to ~5 min while nothing changes, so an
        // idle instance reads nothing from xenstore for minutes at a time
        // (10 s apart it was 0.1 requests/s per instance, 5 per second for 50).
        state_check_ms: 10_000,
        state_check_max_ms: 320_000,
        // The same watch, set in the handshake, wakes netfront when the
        // backend moves; polling is only the fallback (the default, 10 ms,
        // is a xenstore round trip every 10 ms while dom0 connects the
        // backend).
        retry_ms: 50,
        ..netfront::Config::default()
    };
    let platform = XenPlatform::new(k.xenstore.clone(), grants);
    let mut nf = Netfront::new(platform, nf_cfg).map_err(|e| fatal(format!("netfront: {e}")))?;
    let mac = rt.handshake(&mut nf)?;
    // A pool member: wait here, vif connected, for the real configuration.
    let taken_ns = cfg.pool.then(time::now_ns);
    let cfg = match taken_ns {
        Some(_) => take_over(&mut rt, &mut nf, &cfg)?,
        None => cfg,
    };
    let taken_ns = taken_ns.map(|_| time::now_ns());
    let mem = nf.memory();
    log::info!(
        "netfront: {} pages ({} KiB) for rings and buffers",
        mem.pages(),
        mem.total_bytes() / 1024
    );

    // The proxy engine, sized to what is left of the heap.
    let (used, size) = crate::heap_usage();
    let budget = match engine_budget(cfg.mem, used, size).map_err(fatal)? {
        Budget::CutToHeap { asked, budget } => {
            log::warn!(
                "engine: mem={} KiB is more than the heap leaves; the budget is {} KiB",
                asked / 1024,
                budget / 1024
            );
            budget
        }
        b => b.bytes(),
    };
    let hw = HardwareAddress::Ethernet(EthernetAddress(mac));
    let mut engine =
        Engine::new(&cfg, hw, time::entropy(), budget, &mut nf, rt.now()).map_err(fatal)?;
    let plan = engine.plan();
    log::info!(
        "engine: {} KiB budget, {} KiB of it for socket buffers; guaranteed worst case (every connection at buf_min) {} KiB, every connection at buf would take {} KiB",
        budget / 1024,
        engine.buffer_budget() / 1024,
        plan.total / 1024,
        plan.total_max / 1024
    );

    let ip = rt.address(&mut nf, &mut engine, &cfg)?;
    TIMELINE.mark(Mark::Addr);
    // data/ip and, for a pool member, its own time from its configuration
    // to ready go in the ready key's round trip, ahead of it: whoever
    // waits for ready finds them.
    let taken = taken_ns.map(|t| {
        let us = time::now_ns().saturating_sub(t) / 1000;
        format!("taken us={us}")
    });
    let before: Vec<(&str, &str)> = ip
        .as_deref()
        .map(|a| ("data/ip", a))
        .into_iter()
        .chain(taken.as_deref().map(|t| (pool::POOL_STATE_PATH, t)))
        .collect();
    let us = Control::ready_with(k, &before).map_err(fatal)?;
    log::info!("ready after {us} us");
    // After ready, which they do not need: a watch fires once when set, so
    // a change before this is not missed, only seen a moment later.
    let state_path = format!("{}/state", nf.backend_path());
    rt.toolstack
        .watch_backend_and_vifs(&state_path)
        .map_err(|e| {
            fatal(format!(
                "net: cannot watch {state_path} and {VIFS_PATH}: {e}"
            ))
        })?;
    Ok(rt.serve(&mut nf, &mut engine, cfg.idle_exit, cfg.stats_period))
}
