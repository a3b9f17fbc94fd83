//! The unikernel's runtime: one single-threaded loop through explicit
//! phases, with one way to wait.
//!
//! ```text
//! boot ──> handshake ──> address ──> serve ──> drain/stop
//!   │         (netfront     (static or   (NIC, engine,   (no new connections,
//!   │          Connected)    DHCP lease)  control, stats,  the open ones get
//!   │                                     idle_exit, vif   drain_timeout then
//!   │                                     re-attach)       RST; report, close
//!   │                                                      netfront, wait for
//!   │                                                      its pages)
//!   └─ no vif: idle until asked to stop
//! ```
//!
//! Every phase polls what it has, then sleeps in [`Runtime::sleep`] (the
//! only wait: `SCHEDOP_poll` on the xenstore and NIC event channels until a
//! deadline) and goes round again; every phase answers `xl shutdown` and the
//! stats-dump key. A vif detached while serving is waited for: when one is
//! attached again, netfront reconnects and the engine announces its
//! address again. Nothing here touches Xen directly: the phases work on
//! small traits ([`Clock`], [`Sleeper`], [`Toolstack`], [`Nic`], [`Proxy`])
//! that [`xen`] implements over the kernel and the host tests implement with
//! fakes, so the deadlines, the stats rate, shutdown and idle_exit are
//! tested on the host.
//!
//! - [`timers`]: the pure parts: the serve deadline, the stats publisher,
//!   the idle_exit check.
//! - [`phases`]: handshake, address, serve, no-network idle.
//! - [`budget`]: the engine's memory budget (`mem=` or the heap).
//! - [`drain`]: the stop: connections drained, report, netfront closed.
//! - [`pool`]: a warm-pool member's wait for its configuration (`pool=on`).
//! - [`xen`]: the kernel's implementations and the boot sequence that runs
//!   the phases (the unikernel's main).

pub mod budget;
pub mod drain;
pub mod phases;
pub mod pool;
pub mod timers;
pub mod xen;

#[cfg(test)]
mod tests;

use crate::control::Request;
use crate::profile::Profile;
use crate::time::Cpu;
use crate::xenstore::XsError;
use crate::ShutdownReason;
use alloc::format;
use alloc::string::String;
use netfront::Event;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::Ipv4Cidr;

/// Time, as the runtime reads it.
pub trait Clock {
    /// Xen system time in ns (monotonic); every deadline is in this clock.
    fn now_ns(&self) -> u64;
    /// The clock the profile charges sections with: the vCPU's running time,
    /// or wall time without a runstate area.
    fn cpu_ns(&self) -> u64;
    /// The vCPU's runstate totals, if Xen keeps them for us.
    fn runstate(&self) -> Option<Cpu>;
}

/// Which event channels a sleep wakes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeOn {
    /// The xenstore port (control requests, watch events).
    pub xenstore: bool,
    /// The NIC's port, once netfront has one.
    pub nic: Option<u32>,
}

/// The event channels: the one blocking wait, and clearing the xenstore port.
pub trait Sleeper {
    /// Block until one of the chosen ports is pending or the clock reaches
    /// `deadline_ns` (`None`: no deadline). Returns at once if a port is
    /// already pending; early returns are fine, callers look again.
    fn wait(&mut self, on: WakeOn, deadline_ns: Option<u64>);
    /// Clear the xenstore port's pending bit; called before the xenstore
    /// ring is drained, so a bit left set cannot turn every later wait into
    /// an instant return (a busy loop).
    fn take_xenstore_event(&mut self);
}

/// The xenstore side: control requests and the keys the runtime publishes.
pub trait Toolstack {
    /// Handle watch events that arrived (non-blocking); a request once the
    /// toolstack asked for one (see [`crate::control::Control::poll`]).
    fn poll_request(&mut self) -> Result<Option<Request>, XsError>;
    /// Whether the watched backend state may have changed since the last call.
    fn take_backend_changed(&mut self) -> bool;
    /// Watch a backend's state node; its changes show in
    /// [`take_backend_changed`](Self::take_backend_changed). Watching a path
    /// already watched does nothing.
    fn watch_backend(&mut self, state_path: &str) -> Result<(), XsError>;
    fn write(&mut self, path: &str, value: &str) -> Result<(), XsError>;
    /// Read a node (a warm-pool member's configuration key).
    fn read(&mut self, path: &str) -> Result<String, XsError>;
    /// Watch a node that dom0 writes (the pool's configuration key); its
    /// events show in [`take_backend_changed`](Self::take_backend_changed),
    /// the one "a watched node changed" flag.
    fn watch_config(&mut self, path: &str) -> Result<(), XsError>;
}

/// The NIC (netfront), as the runtime drives it.
pub trait Nic {
    /// Run the driver; its next event, if any.
    fn poll(&mut self, now_ms: u64) -> Option<Event>;
    /// How long (ms) until the driver's next timer, if it has one.
    fn poll_delay(&self, now_ms: u64) -> Option<u64>;
    /// The device's event channel, once it has one.
    fn port(&self) -> Option<u32>;
    /// Re-read the backend's state soon (its watch fired).
    fn check_backend_soon(&mut self);
    /// The backend's state node, once the handshake has read where the
    /// backend is.
    fn backend_state_path(&self) -> Option<String>;
    /// The offload mode, for the log.
    fn offload(&self) -> String;
    /// The driver's counters, one line.
    fn stats(&self) -> String;
    /// Event-channel kicks sent to the backend.
    fn notifies(&self) -> u64;
    /// Start the disconnect; [`Event::Released`] reports its end.
    fn close(&mut self);
    /// Already disconnected (nothing left to release).
    fn is_disconnected(&self) -> bool;
    /// Frames handed to the backend that it has not taken yet.
    fn tx_in_flight(&self) -> usize;
    /// Disconnected, and a vif attached again: start a new handshake
    /// (its `Connected` event follows). Whether one was started.
    fn reconnect_if_attached(&mut self) -> bool;
}

/// The proxy engine over a NIC `N`.
pub trait Proxy<N> {
    /// Receive, splice, transmit: one bounded round of work.
    fn poll(&mut self, now: Instant, nic: &mut N);
    /// How long until the engine needs polling again (`None`: only on input).
    fn poll_delay(&mut self, now: Instant) -> Option<Duration>;
    /// Since when no connection has been held, or `None` while one is.
    fn idle_since(&self) -> Option<Instant>;
    /// The engine's counters, one line.
    fn stats(&self) -> String;
    /// Connections held now.
    fn active(&self) -> usize;
    /// Stop accepting; the open connections have until `now + timeout`,
    /// then both sides of each are reset (see `Engine::start_drain`).
    fn start_drain(&mut self, now: Instant, timeout: Duration);
    /// No connection left and every RST sent (false before `start_drain`).
    fn drained(&self) -> bool;
    /// The link is back (with this MAC): announce the address again.
    fn link_up(&mut self, mac: [u8; 6], now: Instant);
    fn start_dhcp(&mut self);
    fn ipv4(&self) -> Option<Ipv4Cidr>;
}

/// How the runtime ends: the binary stops the domain accordingly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stop the domain (after the drain, where there was a NIC).
    Shutdown(ShutdownReason),
    /// Crash it with this reason (`miniproxy: fatal: ...` on the console).
    Fatal(String),
}

/// The runtime's state across phases: its machine, and the profile of the
/// serve loop (empty before serve).
pub struct Runtime<C: Clock, S: Sleeper, T: Toolstack> {
    pub clock: C,
    pub sleeper: S,
    pub toolstack: T,
    /// Heap (used, size) in bytes, for the reports.
    pub heap_usage: fn() -> (usize, usize),
    /// Where the operator's report lines go (one line per call): the
    /// console, or a test's capture.
    pub console: fn(core::fmt::Arguments),
    pub prof: Profile,
    /// How long open connections may finish on a stop (`drain_timeout=`).
    pub drain_timeout: core::time::Duration,
}

impl<C: Clock, S: Sleeper, T: Toolstack> Runtime<C, S, T> {
    pub fn new(
        clock: C,
        sleeper: S,
        toolstack: T,
        heap_usage: fn() -> (usize, usize),
        console: fn(core::fmt::Arguments),
    ) -> Self {
        Runtime {
            clock,
            sleeper,
            toolstack,
            heap_usage,
            console,
            prof: Profile::new(),
            drain_timeout: proxy::config::Config::default().drain_timeout,
        }
    }

    /// The one wait: sleep on the chosen ports until `deadline_ns`.
    pub fn sleep(&mut self, on: WakeOn, deadline_ns: Option<u64>) {
        self.sleeper.wait(on, deadline_ns)
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros((self.clock.now_ns() / 1000) as i64)
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ns() / 1_000_000
    }

    /// The profile with the runstate's blocked and steal totals filled in.
    pub fn profile_now(&self) -> Profile {
        let mut p = self.prof.clone();
        if let Some(c) = self.clock.runstate() {
            p.blocked_ns = c.blocked;
            p.steal_ns = c.runnable;
        }
        p
    }

    /// A control request, if one arrived; a xenstore failure is fatal.
    pub fn control_request(&mut self) -> Result<Option<Request>, Exit> {
        self.sleeper.take_xenstore_event();
        self.toolstack
            .poll_request()
            .map_err(|e| Exit::Fatal(format!("{e}")))
    }

    /// Answer control requests while nothing is networking (no vif, or
    /// netfront still in its handshake): a stop is immediate.
    pub fn check_control_bare(&mut self) -> Option<Exit> {
        match self.control_request() {
            Ok(None) => None,
            Ok(Some(Request::DumpStats)) => {
                self.print_profile_and_heap();
                None
            }
            Ok(Some(Request::Stop(reason))) => {
                (self.console)(format_args!("miniproxy: stopping ({reason:?})"));
                Some(Exit::Shutdown(reason))
            }
            Err(e) => Some(e),
        }
    }

    /// Answer control requests with the NIC and engine up: a stop drains.
    pub fn check_control<N: Nic, P: Proxy<N>>(
        &mut self,
        nic: &mut N,
        proxy: &mut P,
    ) -> Option<Exit> {
        match self.control_request() {
            Ok(None) => None,
            Ok(Some(Request::DumpStats)) => {
                self.print_net(nic, proxy);
                self.print_profile_and_heap();
                None
            }
            Ok(Some(Request::Stop(reason))) => Some(self.drain(nic, proxy, reason)),
            Err(e) => Some(e),
        }
    }

    pub(super) fn print_net<N: Nic, P: Proxy<N>>(&self, nic: &N, proxy: &P) {
        (self.console)(format_args!("miniproxy: proxy {}", proxy.stats()));
        (self.console)(format_args!(
            "miniproxy: vif0 {} notifies={}",
            nic.stats(),
            nic.notifies()
        ));
    }

    pub(super) fn print_profile_and_heap(&self) {
        (self.console)(format_args!("miniproxy: {}", self.profile_now()));
        let (used, size) = (self.heap_usage)();
        (self.console)(format_args!(
            "miniproxy: heap {} of {} KiB used",
            used / 1024,
            size / 1024
        ));
    }
}
