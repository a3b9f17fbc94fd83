//! The phases after boot: netfront's handshake, the address, serving, and
//! idling without a network. Each one polls, answers control requests and
//! sleeps through [`Runtime::sleep`]; each ends in the next phase's input or
//! an [`Exit`].

use super::timers::{self, Idle, StatsPublisher, Timers};
use super::{Clock, Exit, Nic, Proxy, Runtime, Sleeper, Toolstack, WakeOn};
use crate::profile::Section;
use alloc::format;
use alloc::string::String;
use netfront::Event;
use proxy::config::{Config, IpSetting};
use smoltcp::wire::EthernetAddress;

/// Events taken from netfront per pass before the engine gets its turn.
pub(super) const NIC_EVENTS_PER_PASS: usize = 8;
/// Longest sleep while waiting for the handshake or a DHCP lease.
const HANDSHAKE_MAX_WAIT_MS: u64 = 100;
const DHCP_MAX_WAIT_NS: u64 = 100_000_000;

impl<C: Clock, S: Sleeper, T: Toolstack> Runtime<C, S, T> {
    fn wake_on(nic: Option<u32>) -> WakeOn {
        WakeOn {
            xenstore: true,
            nic,
        }
    }

    /// No vif: nothing to do but answer control requests until a stop.
    pub fn idle_without_network(&mut self) -> Exit {
        loop {
            if let Some(exit) = self.check_control_bare() {
                return exit;
            }
            self.sleep(Self::wake_on(None), None);
        }
    }

    /// Poll netfront until the backend is Connected; its MAC. Netfront times
    /// the handshake out by itself (a `Disconnected` event, fatal here).
    ///
    /// The backend's state is watched as soon as netfront knows where the
    /// backend is: each change then wakes the sleep and netfront reads it
    /// at once, rather than at its next retry (a xenstore round trip each,
    /// which a dom0 busy connecting the backend would answer late anyway).
    pub fn handshake<N: Nic>(&mut self, nic: &mut N) -> Result<[u8; 6], Exit> {
        let mut watching = false;
        loop {
            for _ in 0..NIC_EVENTS_PER_PASS {
                match nic.poll(self.now_ms()) {
                    Some(Event::Connected { mac, mtu, backend }) => {
                        log::info!(
                            "netfront: connected, mac {}, mtu {mtu}, backend {backend:?}",
                            EthernetAddress(mac)
                        );
                        log::info!("netfront: offload {}", nic.offload());
                        return Ok(mac);
                    }
                    Some(Event::Disconnected(r)) => {
                        return Err(Exit::Fatal(format!("netfront: {r}")))
                    }
                    Some(ev) => log::debug!("netfront: {ev:?}"),
                    None => break,
                }
            }
            if !watching {
                if let Some(path) = nic.backend_state_path() {
                    // Without the watch netfront still polls: not fatal.
                    if let Err(e) = self.toolstack.watch_backend(&path) {
                        log::warn!("netfront: cannot watch {path}: {e}");
                    }
                    watching = true;
                }
            }
            if let Some(exit) = self.check_control_bare() {
                return Err(exit);
            }
            if self.toolstack.take_backend_changed() {
                nic.check_backend_soon();
                continue;
            }
            let wait = nic
                .poll_delay(self.now_ms())
                .unwrap_or(HANDSHAKE_MAX_WAIT_MS)
                .min(HANDSHAKE_MAX_WAIT_MS);
            let until = self.clock.now_ns() + wait * 1_000_000;
            self.sleep(Self::wake_on(nic.port()), Some(until));
        }
    }

    /// The address: static (the engine applied it) or a DHCP lease within
    /// `cfg.dhcp_timeout`, and the rules, in the log; the address to publish
    /// as `data/ip`, which the caller writes with the ready key (one round
    /// trip for both).
    pub fn address<N: Nic, P: Proxy<N>>(
        &mut self,
        nic: &mut N,
        proxy: &mut P,
        cfg: &Config,
    ) -> Result<Option<String>, Exit> {
        match cfg.ip {
            IpSetting::Static { .. } => {
                if let Some(a) = proxy.ipv4() {
                    log::info!("net: address {a} (static), gateway {:?}", cfg.gw);
                }
            }
            IpSetting::Dhcp => {
                self.dhcp(nic, proxy, cfg.dhcp_timeout)?;
                if let Some(a) = proxy.ipv4() {
                    log::info!("net: address {a} (DHCP)");
                }
            }
        }
        for r in &cfg.rules {
            log::info!("proxy: rule {r}");
        }
        Ok(proxy.ipv4().map(|a| format!("{a}")))
    }

    fn dhcp<N: Nic, P: Proxy<N>>(
        &mut self,
        nic: &mut N,
        proxy: &mut P,
        timeout: core::time::Duration,
    ) -> Result<(), Exit> {
        proxy.start_dhcp();
        let deadline = self.clock.now_ns() + timeout.as_nanos() as u64;
        log::info!("net: asking for an address by DHCP (timeout {timeout:?})");
        while proxy.ipv4().is_none() {
            if self.clock.now_ns() >= deadline {
                return Err(Exit::Fatal(format!(
                    "net: no DHCP lease within {timeout:?} (set ip=a.b.c.d/len for a static address)"
                )));
            }
            if let Some(exit) = self.check_control(nic, proxy) {
                return Err(exit);
            }
            let d = proxy
                .poll_delay(self.now())
                .map(|d| d.total_micros() * 1000)
                .unwrap_or(DHCP_MAX_WAIT_NS);
            let until = (self.clock.now_ns() + d.min(DHCP_MAX_WAIT_NS)).min(deadline);
            self.sleep(Self::wake_on(nic.port()), Some(until));
            // Netfront's events are not acted on before the lease (a link
            // down shows as no lease).
            nic.poll(self.now_ms());
            proxy.poll(self.now(), nic);
        }
        Ok(())
    }

    /// Serve until stopped (`xl shutdown`, or idle_exit); `data/stats` at
    /// most once per `stats_period`.
    pub fn serve<N: Nic, P: Proxy<N>>(
        &mut self,
        nic: &mut N,
        proxy: &mut P,
        idle_exit: Option<core::time::Duration>,
        stats_period: core::time::Duration,
    ) -> Exit {
        let mut serve = Serve::new(self.clock.cpu_ns(), idle_exit).stats_period(stats_period);
        loop {
            if let Some(exit) = self.serve_pass(&mut serve, nic, proxy) {
                return exit;
            }
        }
    }

    /// One pass of the serve loop: NIC, engine, control, stats, idle_exit,
    /// then sleep until the earliest timer (see [`timers::serve_deadline`]).
    pub fn serve_pass<N: Nic, P: Proxy<N>>(
        &mut self,
        s: &mut Serve,
        nic: &mut N,
        proxy: &mut P,
    ) -> Option<Exit> {
        self.prof.loops += 1;
        let t = self.now();
        let t_ms = t.total_millis() as u64;
        // Look for a vif attached again when netfront has just released a
        // connection's pages (an attach seen while it was still closing
        // would otherwise be missed) or the vif directories changed.
        let mut look_for_vif = false;
        for _ in 0..NIC_EVENTS_PER_PASS {
            match nic.poll(t_ms) {
                // Not on its own: a handshake that failed (no vif yet, say)
                // is retried only when something changes, never in a loop.
                Some(Event::Disconnected(r)) => log::warn!(
                    "netfront: link down: {r}; still running (serving again once a vif is attached)"
                ),
                Some(ev @ Event::Released { .. }) => {
                    look_for_vif = true;
                    log::info!("netfront: {ev:?}")
                }
                Some(Event::Connected { mac, mtu, .. }) => {
                    log::info!(
                        "netfront: link up again, mac {}, mtu {mtu}, offload {}",
                        EthernetAddress(mac),
                        nic.offload()
                    );
                    proxy.link_up(mac, t);
                }
                None => break,
            }
        }
        s.t_ns = self.prof.charge(Section::Nic, s.t_ns, self.clock.cpu_ns());
        proxy.poll(t, nic);
        s.t_ns = self
            .prof
            .charge(Section::Engine, s.t_ns, self.clock.cpu_ns());
        if let Some(exit) = self.check_control(nic, proxy) {
            return Some(exit);
        }
        if self.toolstack.take_backend_changed() {
            nic.check_backend_soon();
            look_for_vif = true;
        }
        // A vif attached again after a detach: the handshake runs in the
        // next passes' polls (their deadlines are netfront's).
        if look_for_vif && nic.is_disconnected() && nic.reconnect_if_attached() {
            log::info!("netfront: a vif was attached: reconnecting");
        }

        let now_ns = self.clock.now_ns();
        if let Some(line) = s
            .stats
            .check(now_ns, || format!("{} {}", proxy.stats(), nic.stats()))
        {
            let full = format!(
                "{line} {} xen_notifies={}",
                self.profile_now(),
                nic.notifies()
            );
            if let Err(e) = self.toolstack.write("data/stats", &full) {
                log::warn!("stats: {e}");
            }
        }

        let idle_left_ns = match timers::idle_exit(s.idle_exit, proxy.idle_since(), t) {
            Idle::Off => None,
            Idle::Left(ns) => Some(ns),
            Idle::Exit(idle_for) => {
                log::info!("idle for {idle_for}: exiting (idle_exit)");
                return Some(self.drain(nic, proxy, crate::ShutdownReason::Poweroff));
            }
        };
        let engine = proxy.poll_delay(t);
        let nic_ms = nic.poll_delay(t_ms);
        let deadline = timers::serve_deadline(
            now_ns,
            Timers {
                engine,
                nic_ms,
                idle_left_ns,
            },
        );
        if self.prof.loops.is_multiple_of(4096) {
            log::trace!(
                "loop {}: engine delay {engine:?}, netfront delay {nic_ms:?} ms",
                self.prof.loops
            );
        }
        s.t_ns = self
            .prof
            .charge(Section::Control, s.t_ns, self.clock.cpu_ns());
        if deadline > self.clock.now_ns() {
            self.sleep(Self::wake_on(nic.port()), Some(deadline));
            if self.clock.now_ns() < deadline {
                self.prof.wakeups += 1;
            }
            s.t_ns = self
                .prof
                .charge(Section::Sleep, s.t_ns, self.clock.cpu_ns());
        }
        None
    }
}

/// The serve loop's own state between passes.
pub struct Serve {
    /// The profile's clock at the end of the last charged section.
    t_ns: u64,
    stats: StatsPublisher,
    idle_exit: Option<core::time::Duration>,
}

impl Serve {
    pub fn new(cpu_ns: u64, idle_exit: Option<core::time::Duration>) -> Serve {
        Serve {
            t_ns: cpu_ns,
            stats: StatsPublisher::new(),
            idle_exit,
        }
    }

    /// Publish `data/stats` at most once per `period` (default 1 s).
    pub fn stats_period(mut self, period: core::time::Duration) -> Serve {
        self.stats = StatsPublisher::every(period);
        self
    }
}
