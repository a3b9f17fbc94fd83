//! The split-TCP engine: one poll-driven object owning the smoltcp [`Interface`]
//! and [`SocketSet`], usable with any [`smoltcp::phy::Device`].
//!
//! The caller's main loop gives it the time and the device ([`Engine::poll`]) and
//! asks when it next needs to run ([`Engine::poll_delay`]), so a unikernel can
//! sleep until then or until a packet arrives.
//!
//! # What happens to a connection
//!
//! A SYN is taken by one of the rule's listening sockets (`listeners`), which
//! leaves its pool (refilled at once) and becomes the client side; the
//! upstream side is opened in the same poll (`connections`), or the SYN is
//! refused with an RST beyond `max_conns`. Bytes are then moved between the
//! two sockets with backpressure, FINs forwarded, resets and timeouts
//! propagated (`splice`). A finished socket becomes a spare for reuse, after
//! sending its RST if it has one (`sockets`). When an address is set, static,
//! by hand or by DHCP, it is announced with gratuitous ARP (`address`). Each
//! module's documentation says how and why.
//!
//! # Memory
//!
//! Every socket buffer comes out of the memory budget given to [`Engine::new`]:
//! admission (`plan`) refuses a config whose worst case does not fit, the
//! sizing policy (`sizing`) decides each new socket's buffer size from what
//! the budget affords, the ledger (`ledger`) counts every byte held and
//! pledged, and the socket pool (`sockets`) reuses spares and frees what is
//! not needed. [`Stats`] reports the bytes held in buffers and their
//! high-water mark.
//!
//! # Modules
//!
//! | module | one concern |
//! |---|---|
//! | `plan` | memory plan, admission, [`EngineError`] |
//! | `sizing` | the adaptive buffer policy: how large a new socket's buffers are |
//! | `growth` | connections' buffers grown while they limit it, shrunk when memory is short |
//! | `rightsize` | receive buffers sized from what each round trip delivers |
//! | `ledger` | buffer accounting: held, spare and pledged bytes |
//! | `sockets` | the socket pool: spares, dying sockets, allocation |
//! | `listeners` | the listen pools of the rules |
//! | `connections` | accept, open upstream, end connections |
//! | `halfopen` | half-open clients: `syn_timeout`, eviction at `max_conns`, deferred upstream |
//! | `splice` | one connection's life: splice, FINs, resets, timeouts |
//! | `address` | own address: static, DHCP, gratuitous ARP, ARP guard |
//! | `drain` | before a stop: listeners closed, grace time, resets |
//! | `relink` | the link back after a detach: new MAC, address announced again |
//! | `ports` | ephemeral ports |
//! | `tuning` | per-socket TCP settings |
//! | `stats` | counters and their log line |

mod address;
mod connections;
mod drain;
mod growth;
mod halfopen;
mod ledger;
mod listeners;
mod neighbours;
mod plan;
mod ports;
mod relink;
mod rightsize;
mod sizing;
mod sockets;
mod splice;
mod stats;
mod tuning;

use alloc::vec::Vec;
use core::fmt;

use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollIngressSingleResult, PollResult, SocketSet, SocketStorage,
};
use smoltcp::phy::{Device, Medium};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

pub use drain::RST_FLUSH_BOUND;
pub use plan::{EngineError, MemoryPlan};
pub use ports::EPHEMERAL_FIRST;
pub use stats::Stats;

use crate::config::{Config, IpSetting, RuleKind};
use address::{Address, ArpGuard, Lease};
use halfopen::HalfOpen;
use ledger::{Dir, Ledger};
use listeners::Listeners;
use neighbours::Neighbours;
use plan::{buf_range, try_vec};
use ports::PortMap;
use sizing::Role;
use sockets::Sockets;
use splice::Conn;
use tuning::Tuning;

/// Ingress packets handled between two splice passes.
const BATCH: usize = 32;
/// Ingress/splice/egress rounds per `poll` before yielding to the caller.
const MAX_ROUNDS: usize = 64;
/// Socket-set slots reserved for the engine's DHCP client and sockets the caller adds.
pub const EXTRA_SOCKETS: usize = 4;

/// The split-TCP proxy engine. See the module documentation.
pub struct Engine {
    iface: Interface,
    /// The socket set, with the socket pool and the buffer ledger.
    sockets: Sockets,
    listeners: Listeners,
    conns: Vec<Conn>,
    ports: PortMap,
    addr: Address,
    /// The upstreams whose ARP entries are kept fresh.
    neighbours: Neighbours,
    tune: Tuning,
    half_open_cfg: HalfOpen,
    plan: MemoryPlan,
    stats: Stats,
    /// Run again at once (`poll_delay` zero): the last poll stopped with
    /// work left, or the DHCP client was just started.
    more_work: bool,
    /// Consecutive polls that did nothing at all (see [`Engine::poll_delay`]).
    fruitless_polls: u32,
    idle_since: Instant,
    /// The time of the latest poll.
    now: Instant,
    /// Draining (see `drain`): when what is left gets reset.
    drain_deadline: Option<Instant>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("stats", &self.stats)
            .field("plan", &self.plan)
            .field("owned_sockets", &self.sockets.ledger.sockets())
            .field("buf_budget", &self.sockets.ledger.budget())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The worst-case memory plan of `cfg`.
    pub fn memory_plan(cfg: &Config) -> MemoryPlan {
        MemoryPlan::for_config(cfg)
    }

    /// Build an engine for `cfg` on `device`.
    ///
    /// `hw` is the interface's MAC address, `seed` seeds smoltcp's random numbers
    /// (sequence numbers; use a different value every boot), `mem_budget` is the
    /// memory the engine may use: a config whose worst case does not fit is refused.
    /// A static `ip=`/`gw=` from the config is applied; with `ip=dhcp` the caller
    /// either calls [`Engine::start_dhcp`] or sets the address itself with
    /// [`Engine::set_ipv4`].
    pub fn new<D: Device + ?Sized>(
        cfg: &Config,
        hw: HardwareAddress,
        seed: u64,
        mem_budget: usize,
        device: &mut D,
        now: Instant,
    ) -> Result<Engine, EngineError> {
        let plan = MemoryPlan::admit(cfg, mem_budget)?;
        let caps = device.capabilities();
        if caps.medium != Medium::Ethernet {
            return Err(EngineError::UnsupportedMedium);
        }
        let tso = caps.segmentation.tcpv4.is_some() || caps.segmentation.tcpv6.is_some();
        if tso && caps.checksum.tcp.tx() {
            return Err(EngineError::InconsistentOffload);
        }
        let mac = match hw {
            HardwareAddress::Ethernet(mac) if mac.is_unicast() => mac,
            _ => return Err(EngineError::BadHardwareAddress),
        };
        let mut icfg = IfaceConfig::new(hw);
        icfg.random_seed = seed;
        let mut iface = Interface::new(icfg, device, now);
        let any_ip = cfg
            .rules
            .iter()
            .any(|r| matches!(r.kind, RuleKind::Transparent));
        iface.set_any_ip(any_ip);

        let storage: Vec<SocketStorage<'static>> =
            try_vec(plan.max_sockets + EXTRA_SOCKETS, "socket table")?;
        let listeners = Listeners::new(&cfg.rules, cfg.backlog)?;
        let pool_slots = cfg.rules.len() * cfg.backlog;
        let conns = try_vec(cfg.max_conns, "connection table")?;
        let dying = try_vec(plan.max_sockets, "socket lists")?;
        let spares = try_vec(plan.max_sockets, "socket lists")?;
        let spare_max = (2 * pool_slots).max(16).min(plan.max_sockets);
        let ledger = Ledger::new(
            mem_budget - plan.without_buffers(),
            plan.max_sockets,
            buf_range(cfg),
            pool_slots,
            spares,
        );
        let sockets = Sockets::new(SocketSet::new(storage), ledger, dying, spare_max);
        let mut engine = Engine {
            iface,
            sockets,
            listeners,
            conns,
            ports: PortMap::new(seed),
            addr: Address::new(any_ip, mac, now),
            neighbours: Neighbours::new(&cfg.rules)?,
            tune: Tuning::from_config(cfg),
            half_open_cfg: HalfOpen {
                syn_timeout: tuning::dur(cfg.syn_timeout),
                defer_from: cfg.max_conns / halfopen::DEFER_FRACTION,
            },
            plan,
            stats: Stats::default(),
            more_work: true,
            fruitless_polls: 0,
            idle_since: now,
            now,
            drain_deadline: None,
        };
        for r in &cfg.rules {
            engine.ports.set(r.listen_port, true);
        }
        if let IpSetting::Static { addr, prefix_len } = cfg.ip {
            engine.set_ipv4(Ipv4Cidr::new(addr, prefix_len), cfg.gw)?;
        }
        engine.refill(now);
        Ok(engine)
    }

    // ---- address -------------------------------------------------------------

    /// Assign the interface's IPv4 address and default gateway (replacing any
    /// previous ones), e.g. after DHCP. Listening sockets bound to the old
    /// address are re-created. A new address is announced with gratuitous ARP
    /// (see [`Engine::poll`]).
    pub fn set_ipv4(&mut self, cidr: Ipv4Cidr, gw: Option<Ipv4Address>) -> Result<(), EngineError> {
        if self.addr.set(&mut self.iface, cidr, gw, self.now)? {
            self.drop_listeners();
        }
        Ok(())
    }

    /// Remove the interface's IPv4 address (e.g. the DHCP lease was lost).
    pub fn clear_ipv4(&mut self) {
        self.addr.clear(&mut self.iface);
        self.drop_listeners();
    }

    /// The interface's IPv4 address, if any.
    pub fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.iface.ip_addrs().iter().find_map(|c| match c {
            IpCidr::Ipv4(c) => Some(*c),
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }

    /// Run smoltcp's DHCP client inside the engine's polls: the lease's address
    /// and router are applied when it comes ([`Engine::ipv4`] is then `Some`;
    /// `dhcp_timeout=` is the caller's to enforce) and removed if it is lost.
    /// Calling it again does nothing. It uses one of the [`EXTRA_SOCKETS`] slots.
    pub fn start_dhcp(&mut self) {
        if self.addr.start_dhcp(&mut self.sockets.set) {
            self.more_work = true;
        }
    }

    /// Whether the engine runs its DHCP client.
    pub fn uses_dhcp(&self) -> bool {
        self.addr.uses_dhcp()
    }

    /// Apply what the DHCP client learnt, if anything. Returns whether it changed.
    fn dhcp_event(&mut self) -> bool {
        match self.addr.dhcp_event(&mut self.sockets.set) {
            None => return false,
            Some(Lease::Got(cidr, router)) => match self.set_ipv4(cidr, router) {
                Ok(()) => log::info!("proxy: DHCP: address {cidr}, gateway {router:?}"),
                Err(e) => log::warn!("proxy: DHCP lease refused: {e}"),
            },
            Some(Lease::Lost) => {
                log::warn!("proxy: DHCP: lease lost, address removed");
                self.clear_ipv4();
            }
        }
        true
    }

    // ---- access for the caller -----------------------------------------------

    /// The smoltcp interface, e.g. to read its MAC or add routes.
    pub fn interface(&self) -> &Interface {
        &self.iface
    }

    /// The smoltcp interface, mutable. Change addresses with [`Engine::set_ipv4`]
    /// rather than here, so that listening sockets follow.
    pub fn interface_mut(&mut self) -> &mut Interface {
        &mut self.iface
    }

    /// The socket set. The caller may add up to [`EXTRA_SOCKETS`]` - 1` sockets of
    /// its own; they are polled with the engine's. It must not touch the engine's
    /// TCP sockets.
    pub fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets.set
    }

    /// The socket set, to read (e.g. a socket's TCP state in a test).
    pub fn sockets(&self) -> &SocketSet<'static> {
        &self.sockets.set
    }

    /// The interface and the socket set together (e.g. to drive a socket of the caller's).
    pub fn interface_and_sockets(&mut self) -> (&mut Interface, &mut SocketSet<'static>) {
        (&mut self.iface, &mut self.sockets.set)
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.active = self.conns.len();
        s.buf_bytes = self.sockets.ledger.held();
        s.buf_peak = self.sockets.ledger.peak();
        s
    }

    /// The memory plan this engine was admitted with.
    pub fn plan(&self) -> MemoryPlan {
        self.plan
    }

    /// The memory budget given to [`Engine::new`].
    pub fn budget(&self) -> usize {
        // The ledger's buffer budget is this less the plan's fixed part.
        self.sockets.ledger.budget() + self.plan.without_buffers()
    }

    /// The part of the budget for socket buffers: the budget less
    /// [`MemoryPlan::without_buffers`]. `Stats::buf_bytes` never exceeds it.
    pub fn buffer_budget(&self) -> usize {
        self.sockets.ledger.budget()
    }

    /// The per-direction buffer size a listening socket created now would get
    /// (e.g. the replacement of a pool socket that accepts), and the upstream
    /// side of its connection, budget permitting.
    pub fn next_buffer_size(&self) -> usize {
        self.sockets.ledger.state(false).size_for(Role::Listen)
    }

    /// The buffer size (per direction) of every listening pool socket:
    /// `(rule index in config order, size)`, rule by rule.
    pub fn listener_buffers(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.listeners
            .sockets()
            .map(|(i, h)| (i, self.sockets.size_of(h)))
    }

    /// The buffer size (per direction; the larger of a socket's two) of both
    /// sockets of every connection held, in no particular order: `(client
    /// side, upstream side)`.
    pub fn connection_buffers(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.connection_buffers_by_dir()
            .map(|((c_rx, c_tx), (u_rx, u_tx))| (c_rx.max(c_tx), u_rx.max(u_tx)))
    }

    /// The receive and transmit buffer sizes of both sockets of every
    /// connection held, as [`Engine::connection_buffers`]: `((client rx,
    /// client tx), (upstream rx, upstream tx))`.
    pub fn connection_buffers_by_dir(
        &self,
    ) -> impl Iterator<Item = ((usize, usize), (usize, usize))> + '_ {
        let dirs = |h| {
            (
                self.sockets.dir_size(h, Dir::Rx),
                self.sockets.dir_size(h, Dir::Tx),
            )
        };
        self.conns
            .iter()
            .map(move |c| (dirs(c.client), dirs(c.upstream)))
    }

    /// Recount the bytes held by our sockets' buffers from the sockets
    /// themselves, checking the ledger's other figures on the way (tests: the
    /// running count must equal it).
    #[cfg(test)]
    pub(crate) fn recount_buffers(&self) -> usize {
        let listening = self.listeners.sockets().map(|(_, h)| h);
        self.sockets.ledger.recount(&self.sockets.set, listening)
    }

    /// Tests: buffer allocations larger than `limit` fail (a fragmented heap).
    #[cfg(test)]
    pub(crate) fn set_alloc_limit(&mut self, limit: usize) {
        self.sockets.alloc_limit = limit;
    }

    /// Sockets the engine currently holds (listening, connected, closing, spare).
    pub fn socket_count(&self) -> usize {
        self.sockets.ledger.sockets()
    }

    /// Since when no connection has been held, or `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        self.conns.is_empty().then_some(self.idle_since)
    }

    // ---- polling -------------------------------------------------------------

    /// Run the engine: receive what the device has, accept, splice, close, and
    /// transmit. Returns whether anything happened. Bounded work per call: if it
    /// stopped with work left, [`Engine::poll_delay`] returns zero.
    ///
    /// After an address is set (static in [`Engine::new`], [`Engine::set_ipv4`],
    /// or a DHCP lease), polls also send gratuitous ARP, like Linux's
    /// `arp_notify`: an ARP request from our MAC for our own address (sender
    /// and target IP both ours, target MAC zero) to the broadcast address,
    /// three times one second apart, so that peers still holding the MAC of
    /// whoever had the address before (an instance restarted under another
    /// name) update their ARP entries at once. The deadlines are part of
    /// [`Engine::poll_delay`]; if the device has no TX room, the next poll retries.
    /// Polls also refresh the ARP entries of upstreams in use before they
    /// expire (see `neighbours`), with deadlines in [`Engine::poll_delay`] too.
    pub fn poll<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        if self.addr.any_ip() {
            let mut guard = ArpGuard {
                inner: device,
                own: self.addr.own(),
            };
            self.poll_inner(now, &mut guard)
        } else {
            self.poll_inner(now, device)
        }
    }

    fn poll_inner<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        self.now = now;
        self.iface.poll_maintenance(now);
        self.drain_expired(now);
        let mut activity = self.announce(now, device);
        self.more_work = true;
        for _ in 0..MAX_ROUNDS {
            let mut packets = 0;
            while packets < BATCH {
                match self
                    .iface
                    .poll_ingress_single(now, device, &mut self.sockets.set)
                {
                    PollIngressSingleResult::None => break,
                    PollIngressSingleResult::PacketProcessed => packets += 1,
                    PollIngressSingleResult::SocketStateChanged => {
                        packets += 1;
                        // Take accepted sockets out of the pools and refill them
                        // before the next packet, so a burst of SYNs finds
                        // listeners as long as capacity remains.
                        self.accept(now);
                    }
                }
            }
            let mut worked = self.service(now);
            worked |= self.resize_buffers();
            let mut egress_changed = false;
            for _ in 0..MAX_ROUNDS {
                match self.iface.poll_egress(now, device, &mut self.sockets.set) {
                    PollResult::None => break,
                    PollResult::SocketStateChanged => egress_changed = true,
                }
            }
            if packets == 0 && !worked && !egress_changed {
                self.more_work = false;
                break;
            }
            activity = true;
        }
        // An address leased in this poll is announced at once.
        activity |= self.announce(now, device);
        self.neighbours
            .note_use(self.conns.iter().map(|c| c.rule), now);
        activity |= self.neighbours.refresh(&mut self.iface, device, now);
        self.fruitless_polls = if activity {
            0
        } else {
            self.fruitless_polls.saturating_add(1)
        };
        activity
    }

    /// Send the gratuitous ARP announcement that is due, if any (counted).
    fn announce<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        let sent = self.addr.announce(now, device);
        if sent {
            self.stats.garp += 1;
        }
        sent
    }

    /// When the engine next needs to run, from `now`: `Some(0)` = at once,
    /// `None` = only when a packet arrives. After polls that did nothing at
    /// all, a deadline already past gives 1 ms, doubling up to 16 ms, never
    /// zero again and again (see `fruitless_floor`).
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        if self.more_work {
            return Some(Duration::ZERO);
        }
        let mut at = self.iface.poll_at(now, &self.sockets.set);
        let mut earliest = |t: Instant| {
            at = Some(match at {
                Some(a) if a <= t => a,
                _ => t,
            })
        };
        for c in &self.conns {
            c.deadlines(&self.tune).for_each(&mut earliest);
            self.half_open_cfg
                .deadline(c)
                .into_iter()
                .for_each(&mut earliest);
        }
        self.sockets.dying_deadlines().for_each(&mut earliest);
        if let Some(r) = self.sockets.retry_at {
            earliest(r);
        }
        if let Some(t) = self.addr.announce_at() {
            earliest(t);
        }
        if let Some(t) = self.neighbours.refresh_at(&self.iface, now) {
            earliest(t);
        }
        if let Some(t) = self.drain_at() {
            earliest(t);
        }
        at.map(|t| {
            let d = if t > now { t - now } else { Duration::ZERO };
            d.max(fruitless_floor(self.fruitless_polls))
        })
    }
}

/// The least delay after `n` consecutive polls that did nothing: zero after a
/// poll that did something, then 1 ms doubling up to [`FRUITLESS_MAX`]. A
/// deadline that stays in the past without a poll being able to act on it
/// (a socket that cannot send, a device without TX room) would otherwise
/// make the caller spin; a deadline that passes is acted on by the next poll,
/// which then counts as having done something.
fn fruitless_floor(n: u32) -> Duration {
    match n {
        0 => Duration::ZERO,
        n => Duration::from_millis(1 << (n - 1).min(4)).min(FRUITLESS_MAX),
    }
}

/// The longest floor [`fruitless_floor`] puts on the delay.
const FRUITLESS_MAX: Duration = Duration::from_millis(16);

#[cfg(test)]
pub(crate) use plan::tests_fmt_size;
