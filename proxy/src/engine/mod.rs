//! The split-TCP engine: one poll-driven object owning the smoltcp [`Interface`]
//! and [`SocketSet`], usable with any [`smoltcp::phy::Device`].
//!
//! The caller's main loop gives it the time and the device ([`Engine::poll`]) and
//! asks when it next needs to run ([`Engine::poll_delay`]), so a unikernel can
//! sleep until then or until a packet arrives.
//!
//! # What happens to a connection
//!
//! * **Accept.** Every rule keeps a pool of `backlog` listening sockets (smoltcp has
//!   no listen backlog: a SYN that finds no listening socket is answered with RST).
//!   When a pool socket receives a SYN it leaves the pool, the pool is refilled at
//!   once (after every ingress packet that changed a socket), and the upstream
//!   connection is opened in the same poll, in parallel with the client handshake.
//!   Beyond `max_conns` the SYN is refused with an RST (counted in `refused`) and the
//!   existing connections are not disturbed.
//! * **Splice.** Bytes are moved straight from one socket's receive buffer into the
//!   other socket's transmit buffer, never more than the transmit buffer can take,
//!   so a slow reader shrinks the window advertised to the fast writer
//!   (backpressure) and no byte is ever queued anywhere else.
//! * **Half-close.** A FIN from one side is forwarded (as `close()` on the other
//!   socket) once every byte before it has been moved; the other direction keeps
//!   flowing.
//! * **Resets.** A reset (or smoltcp's own timeout) on either socket aborts the other
//!   one, which sends an RST. Upstream refused, unreachable or not connected within
//!   `connect_timeout` resets the client; a client that does not complete its
//!   handshake within `connect_timeout` is dropped with its upstream.
//! * **Idle timeout** aborts both sides after `idle_timeout` without a byte moved.
//!   Keep-alive is set on both sockets, with a smoltcp user timeout of three
//!   keep-alive intervals (two minutes without keep-alive), so a dead peer never
//!   leaves a connection half-open forever.
//! * **Recycling.** A finished socket (closed, or in TIME-WAIT) is kept as a spare
//!   and reused by the next `listen`/`connect` (which resets it); spares beyond a
//!   small reserve are removed from the socket set and their memory freed. A socket
//!   that still has an RST to send is kept until it has sent it (at most one
//!   second).
//! * **Address announcements.** When an address is set (static, by hand or
//!   by DHCP) the engine broadcasts gratuitous ARP three times, a second
//!   apart, from its own polls (see [`Engine::poll`]): an instance restarted
//!   on an address another MAC held a moment ago is reachable at once, not
//!   when the peers' ARP entries expire.
//!
//! # Memory
//!
//! The engine never holds more than `2 * max_conns + 2 * rules * backlog` sockets
//! (two per connection, the listen pools, and as many again for refused SYNs
//! whose RST has not been sent yet), each with one receive and one transmit
//! buffer of the same size, between `buf_min` and `buf` bytes. [`MemoryPlan`]
//! computes, from the config alone, what everything but the buffers costs (the
//! socket table, the connection table and the lists are reserved up front at
//! their largest) and the worst case with every socket at `buf_min`;
//! [`Engine::new`] refuses a config whose worst case at `buf_min` exceeds the
//! budget, saying which `max_conns` or `buf_min` would fit. What is left of the
//! budget after the fixed part is the *buffer budget*.
//!
//! **Adaptive buffers.** A socket's buffers are sized once, when the socket is
//! created (smoltcp cannot resize them, and the window scale is fixed by the
//! handshake). The engine counts the bytes its sockets' buffers hold (`held`)
//! and keeps, at all times,
//!
//! ```text
//! held + (max_sockets - sockets held) * 2 * buf_min <= buffer budget
//! ```
//!
//! i.e. every socket that may still be needed can get `buf_min`. The *surplus*
//! is what the buffer budget has beyond that reservation (the new socket's own
//! minimum included) and beyond the *pledges* below. Sizes are on the ladder
//! `buf_min, 2*buf_min, 4*buf_min, ... (< buf), buf` (few distinct sizes, each
//! half of the next: friendly to the kernel's first-fit heap, whose freed blocks
//! are then reused whole or split evenly).
//!
//! * The **listening** sockets are the client sides of future connections, and
//!   share the surplus equally. With `N = rules * backlog` of them (the pools
//!   as they are refilled), the *pool surplus* is the surplus with what every
//!   listening socket holds beyond `buf_min` and pledges released: what the
//!   listening sockets and their partners have to share. A listening socket
//!   gets the largest size on the ladder whose pair (itself and its future
//!   upstream partner) fits one share, `4 * (size - buf_min) <= pool surplus
//!   / max(N, 2)` (a pair never takes more than half), and never more than
//!   the surplus actually free. It *pledges* `2 * (size - buf_min)` to
//!   the partner while it listens. Every listening socket created at a given
//!   moment gets the same size, whichever rule it serves and in whatever order
//!   the pools are filled.
//! * The **upstream** socket of a connection gets the client side's size if the
//!   surplus (with that pledge released) affords it, never more: a larger one
//!   would not make the connection faster.
//!
//! So a lone connection gets `buf` both sides once the pool surplus holds `N`
//! pairs at `buf`; when a pool socket accepts, its replacement is sized from
//! the pool surplus left then (a crowd tapers gently, by about `1 / N` of the
//! surplus per connection, down to `buf_min` in matched pairs); and the budget
//! is never exceeded (pledges are advisory; the reservation is not). If an
//! allocation fails anyway (a fragmented heap), the next smaller size is tried,
//! down to `buf_min`; only then is the connection refused (and allocation
//! retried after a pause).
//!
//! **Spares** keep their buffers and are a cache: a socket is taken from the
//! smallest spare at least as large as what the budget would afford with every
//! spare freed; if none is, the spares (all smaller: sized when memory was
//! short) are freed and a new socket of that size is made. Beyond the small
//! reserve of spares, the smallest is freed. Listening sockets made when memory
//! was short are re-created larger once it comes back (a connection ended).
//! Sockets waiting to send an RST hold their buffers until they are spares.
//! [`Stats`] reports the bytes held in buffers and their high-water mark. Every
//! buffer is allocated fallibly: an allocation failure refuses one connection,
//! it never panics.

mod plan;
mod ports;
mod stats;
mod tuning;

use alloc::vec::Vec;
use core::fmt;

use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
    SocketStorage,
};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, PacketMeta, RxToken, TxToken};
use smoltcp::socket::tcp::{self, State};
use smoltcp::socket::{dhcpv4, AnySocket};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, Ipv4Address, Ipv4Cidr,
};

pub use plan::{EngineError, MemoryPlan};
pub use ports::EPHEMERAL_FIRST;
pub use stats::Stats;

use crate::config::{Config, IpSetting, Rule, RuleKind};
use plan::buf_range;
use ports::PortMap;
use tuning::Tuning;

/// How long an aborted socket may wait to send its RST before it is reclaimed anyway.
const RST_GRACE: Duration = Duration::from_millis(1000);
/// How long to wait before retrying after an allocation failure.
const ALLOC_RETRY: Duration = Duration::from_millis(100);
/// Ingress packets handled between two splice passes.
const BATCH: usize = 32;
/// Ingress/splice/egress rounds per `poll` before yielding to the caller.
const MAX_ROUNDS: usize = 64;
/// Socket-set slots reserved for the engine's DHCP client and sockets the caller adds.
pub const EXTRA_SOCKETS: usize = 4;
/// A listening socket and its future partner take at most `1 / SURPLUS_SHARE`
/// of the pool surplus, however few listening sockets there are.
const SURPLUS_SHARE: usize = 2;
/// Gratuitous ARP announcements sent when an address is set, `GARP_INTERVAL`
/// apart. More than one because an announcement is a broadcast nobody
/// acknowledges: a single lost frame (an instance's first frames race the
/// hotplug script attaching its vif to the bridge; a busy dom0 or bridge
/// drops) would leave peers sending to the MAC that held the address before,
/// until their ARP entries expire (minutes on Linux). Three over two seconds
/// ride out such start-up loss, as RFC 5227's announcements (two, 2 s apart)
/// and `arping -U -c 3` do; then they stop: a notification, not a keep-alive.
const GARP_COUNT: u8 = 3;
const GARP_INTERVAL: Duration = Duration::from_secs(1);
/// When the device had no room for an announcement: retried at the next
/// poll, and `poll_delay` asks for one this soon so it does not wait long.
const GARP_RETRY: Duration = Duration::from_millis(10);

/// The buffer sizes a socket may get, smallest first: `buf_min`, doubled while
/// below `buf`, then `buf`.
fn size_ladder(buf_min: usize, buf: usize) -> impl Iterator<Item = usize> {
    let mut next = Some(buf_min.min(buf));
    core::iter::from_fn(move || {
        let cur = next?;
        next = match cur.checked_mul(2) {
            _ if cur >= buf => None,
            Some(d) if d < buf => Some(d),
            _ => Some(buf),
        };
        Some(cur)
    })
}

/// What a new socket is for, which decides how much of the surplus it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A listening pool socket: the client side of a future connection, whose
    /// upstream side will want the same size. The pair takes one equal share
    /// of the pool surplus: `4 * (size - buf_min) <= pool surplus / listeners`
    /// (at most half of it), half for itself and half *pledged* to its
    /// partner, and never more than the surplus free now.
    Listen,
    /// The upstream side of a connection whose client side has `client`-sized
    /// buffers: that size if the surplus (with the client side's pledge now
    /// released) affords it. Larger would not make the connection faster.
    Upstream { client: usize },
}

/// Budget figures a new socket's size is decided from.
#[derive(Debug, Clone, Copy)]
struct BufferState {
    /// The buffer budget.
    budget: usize,
    /// Bytes held by the other sockets' buffers.
    held: usize,
    /// Bytes pledged to the partners of listening sockets.
    pledged: usize,
    /// Sockets existing besides the new one.
    others: usize,
    /// Listening sockets the pool surplus is shared by: every pool's
    /// `backlog` (those that exist and those about to be (re)created).
    listeners: usize,
    max_sockets: usize,
    buf_min: usize,
    buf: usize,
}

impl BufferState {
    /// What the buffer budget has beyond the pledges and the reservation of
    /// `buf_min` for every socket that may still come (the new one included).
    fn surplus(&self) -> usize {
        self.unpledged().saturating_sub(self.pledged)
    }

    /// What the buffer budget has beyond the reservation, pledges included.
    fn unpledged(&self) -> usize {
        let reserve = self
            .max_sockets
            .saturating_sub(self.others)
            .saturating_mul(2)
            .saturating_mul(self.buf_min);
        self.budget
            .saturating_sub(self.held)
            .saturating_sub(reserve)
    }

    /// What the listening sockets and their partners share: the surplus with
    /// every listening socket's buffers beyond `buf_min` and its pledge
    /// released. A listening socket holds `2 * (size - buf_min)` beyond
    /// `buf_min` and pledges as much again, so that is the surplus plus twice
    /// the pledges; it does not change when a listening socket is left out
    /// of the figures (`held`, `others`, `pledged`), as one about to be
    /// re-created is.
    fn pool_surplus(&self) -> usize {
        self.unpledged().saturating_add(self.pledged)
    }

    /// The per-direction buffer size for a new socket of `role`, on the ladder,
    /// never below `buf_min` (the reservation guarantees that much).
    fn size_for(&self, role: Role) -> usize {
        let surplus = self.surplus();
        let limit = match role {
            Role::Listen => {
                // One equal share per listening socket, for its pair: the
                // same size for all, whatever order they are made in.
                let share = self.pool_surplus() / self.listeners.max(SURPLUS_SHARE);
                // Never more than is free now (listening sockets made when
                // memory was plentiful may hold more than today's share).
                self.buf_min.saturating_add(share.min(surplus) / 4)
            }
            Role::Upstream { client } => self.buf_min.saturating_add(surplus / 2).min(client),
        };
        size_ladder(self.buf_min, self.buf)
            .take_while(|s| *s <= limit)
            .last()
            .unwrap_or(self.buf_min)
    }
}

/// Listening sockets of one rule.
#[derive(Debug)]
pub(super) struct RulePool {
    rule: Rule,
    listening: Vec<SocketHandle>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Conn {
    rule: u8,
    client: SocketHandle,
    upstream: SocketHandle,
    local_port: u16,
    started: Instant,
    last_active: Instant,
    /// The client handshake completed.
    client_ready: bool,
    /// The upstream handshake completed.
    upstream_ready: bool,
    /// A FIN was received from the client / from upstream.
    client_fin: bool,
    upstream_fin: bool,
    /// We forwarded a FIN to upstream / to the client.
    fin_to_upstream: bool,
    fin_to_client: bool,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Completed,
    ClientReset,
    UpstreamReset,
    UpstreamFailed,
    Timeout,
}

/// The split-TCP proxy engine. See the module documentation.
pub struct Engine {
    iface: Interface,
    sockets: SocketSet<'static>,
    tune: Tuning,
    pools: Vec<RulePool>,
    conns: Vec<Conn>,
    /// Aborted sockets that still have an RST to send, with a deadline.
    dying: Vec<(SocketHandle, Instant)>,
    /// Finished sockets ready for reuse (closed or in TIME-WAIT).
    /// With their per-direction buffer size.
    spare: Vec<(SocketHandle, usize)>,
    spare_max: usize,
    /// Sockets of ours in the set (pools + conns + dying + spare).
    owned: usize,
    plan: MemoryPlan,
    /// The memory budget given to `new`, and what of it is for socket buffers.
    budget: usize,
    buf_budget: usize,
    /// Bytes held by our sockets' buffers now, and the most they held.
    buf_held: usize,
    buf_peak: usize,
    /// Memory was freed or a spare appeared since listening sockets were last
    /// compared with what the budget affords.
    listeners_stale: bool,
    /// Bytes held by the spares' buffers.
    spare_bytes: usize,
    /// Bytes pledged by listening sockets to their future partners:
    /// `2 * (size - buf_min)` each.
    pledged: usize,
    /// Tests: buffer allocations larger than this fail (a fragmented heap).
    #[cfg(test)]
    pub(crate) alloc_limit: usize,
    ports: PortMap,
    stats: Stats,
    any_ip: bool,
    /// The interface's MAC address.
    mac: EthernetAddress,
    own_addr: Option<Ipv4Address>,
    /// Gratuitous ARP announcements of `own_addr` still to send, when the
    /// next is due, and whether the device had no room for the last try (then
    /// the next poll retries, whenever it comes).
    garp_left: u8,
    garp_at: Instant,
    garp_retry: bool,
    retry_at: Option<Instant>,
    more_work: bool,
    idle_since: Instant,
    /// The time of the latest poll.
    now: Instant,
    /// The DHCP client, with `ip=dhcp`.
    dhcp: Option<SocketHandle>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("stats", &self.stats)
            .field("plan", &self.plan)
            .field("owned_sockets", &self.owned)
            .field("buf_budget", &self.buf_budget)
            .finish_non_exhaustive()
    }
}

fn try_vec<T>(cap: usize, what: &'static str) -> Result<Vec<T>, EngineError> {
    let mut v = Vec::new();
    v.try_reserve_exact(cap)
        .map_err(|_| EngineError::OutOfMemory(what))?;
    Ok(v)
}

/// A zeroed buffer, or `None` if the allocation fails.
fn try_buffer(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return None;
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0);
    Some(v)
}

fn fin_received(s: State) -> bool {
    matches!(
        s,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    )
}

fn handshake_done(s: State) -> bool {
    !matches!(
        s,
        State::Closed | State::Listen | State::SynSent | State::SynReceived
    )
}

/// Move bytes from `src`'s receive buffer into `dst`'s transmit buffer, as many
/// as `dst` has room for. Returns the count.
fn pump(src: &mut tcp::Socket<'_>, dst: &mut tcp::Socket<'_>) -> usize {
    let mut total = 0;
    // At most two rounds per buffer (ring wrap-around on either side), so the
    // loop ends; bounded anyway.
    for _ in 0..4 {
        if !src.can_recv() || !dst.may_send() {
            break;
        }
        let room = dst.send_capacity() - dst.send_queue();
        if room == 0 {
            break;
        }
        let moved = src.recv(|data| {
            let n = data.len().min(room);
            let sent = dst.send_slice(&data[..n]).unwrap_or(0);
            (sent, sent)
        });
        match moved {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    total
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
        let plan = MemoryPlan::for_config(cfg);
        if plan.total > mem_budget {
            return Err(EngineError::TooBig {
                needed: plan.total,
                budget: mem_budget,
                max_conns: cfg.max_conns,
                buf_min: buf_range(cfg).0,
                fit_max_conns: MemoryPlan::max_conns_fitting(cfg, mem_budget),
                fit_buf_min: MemoryPlan::buf_min_fitting(cfg, mem_budget),
            });
        }
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
        let pool_cap = cfg.rules.len() * cfg.backlog;
        let mut pools = try_vec(cfg.rules.len(), "rule table")?;
        for r in &cfg.rules {
            pools.push(RulePool {
                rule: *r,
                listening: try_vec(cfg.backlog, "listen pool")?,
            });
        }
        let spare_max = (2 * pool_cap).max(16).min(plan.max_sockets);
        let mut engine = Engine {
            iface,
            sockets: SocketSet::new(storage),
            tune: Tuning::from_config(cfg),
            pools,
            conns: try_vec(cfg.max_conns, "connection table")?,
            dying: try_vec(plan.max_sockets, "socket lists")?,
            spare: try_vec(plan.max_sockets, "socket lists")?,
            spare_max,
            owned: 0,
            plan,
            budget: mem_budget,
            buf_budget: mem_budget - plan.without_buffers(),
            buf_held: 0,
            buf_peak: 0,
            listeners_stale: false,
            spare_bytes: 0,
            pledged: 0,
            #[cfg(test)]
            alloc_limit: usize::MAX,
            ports: PortMap::new(seed),
            stats: Stats::default(),
            any_ip,
            mac,
            own_addr: None,
            garp_left: 0,
            garp_at: now,
            garp_retry: false,
            retry_at: None,
            more_work: true,
            idle_since: now,
            now,
            dhcp: None,
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

    /// Assign the interface's IPv4 address and default gateway (replacing any
    /// previous ones), e.g. after DHCP. Listening sockets bound to the old
    /// address are re-created. A new address is announced with gratuitous ARP
    /// (see [`Engine::poll`]).
    pub fn set_ipv4(&mut self, cidr: Ipv4Cidr, gw: Option<Ipv4Address>) -> Result<(), EngineError> {
        let a = cidr.address();
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
            return Err(EngineError::BadAddress(a));
        }
        if let Some(g) = gw {
            if g.is_unspecified() || g.is_broadcast() || g.is_multicast() {
                return Err(EngineError::BadAddress(g));
            }
        }
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            // Capacity is at least 1, so this cannot fail after clear().
            let _ = addrs.push(IpCidr::Ipv4(cidr));
        });
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some(g) = gw {
            // The table was just emptied of its default route, so this fits.
            let _ = routes.add_default_ipv4_route(g);
        }
        let changed = self.own_addr != Some(a);
        self.own_addr = Some(a);
        if changed {
            self.drop_listeners();
            self.garp_left = GARP_COUNT;
            self.garp_at = self.now;
            self.garp_retry = false;
        }
        Ok(())
    }

    /// Apply what the DHCP client learnt, if anything. Returns whether it changed.
    fn dhcp_event(&mut self) -> bool {
        let Some(h) = self.dhcp else { return false };
        let lease = match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            None => return false,
            Some(dhcpv4::Event::Configured(c)) => Some((c.address, c.router)),
            Some(dhcpv4::Event::Deconfigured) => None,
        };
        match lease {
            Some((cidr, router)) => match self.set_ipv4(cidr, router) {
                Ok(()) => log::info!("proxy: DHCP: address {cidr}, gateway {router:?}"),
                Err(e) => log::warn!("proxy: DHCP lease refused: {e}"),
            },
            None => {
                log::warn!("proxy: DHCP: lease lost, address removed");
                self.clear_ipv4();
            }
        }
        true
    }

    /// Run smoltcp's DHCP client inside the engine's polls: the lease's address
    /// and router are applied when it comes ([`Engine::ipv4`] is then `Some`;
    /// `dhcp_timeout=` is the caller's to enforce) and removed if it is lost.
    /// Calling it again does nothing. It uses one of the [`EXTRA_SOCKETS`] slots.
    pub fn start_dhcp(&mut self) {
        if self.dhcp.is_none() {
            self.dhcp = Some(self.sockets.add(dhcpv4::Socket::new()));
            self.more_work = true;
        }
    }

    /// Whether the engine runs its DHCP client.
    pub fn uses_dhcp(&self) -> bool {
        self.dhcp.is_some()
    }

    /// Remove the interface's IPv4 address (e.g. the DHCP lease was lost).
    pub fn clear_ipv4(&mut self) {
        self.iface.update_ip_addrs(|addrs| addrs.clear());
        self.iface.routes_mut().remove_default_ipv4_route();
        self.own_addr = None;
        self.garp_left = 0;
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
        &mut self.sockets
    }

    /// The interface and the socket set together (e.g. to drive a socket of the caller's).
    pub fn interface_and_sockets(&mut self) -> (&mut Interface, &mut SocketSet<'static>) {
        (&mut self.iface, &mut self.sockets)
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.active = self.conns.len();
        s.buf_bytes = self.buf_held;
        s.buf_peak = self.buf_peak;
        s
    }

    /// The memory plan this engine was admitted with.
    pub fn plan(&self) -> MemoryPlan {
        self.plan
    }

    /// The memory budget given to [`Engine::new`].
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The part of the budget for socket buffers: the budget less
    /// [`MemoryPlan::without_buffers`]. `Stats::buf_bytes` never exceeds it.
    pub fn buffer_budget(&self) -> usize {
        self.buf_budget
    }

    /// The per-direction buffer size a listening socket created now would get
    /// (e.g. the replacement of a pool socket that accepts), and the upstream
    /// side of its connection, budget permitting.
    pub fn next_buffer_size(&self) -> usize {
        self.buffer_state(false).size_for(Role::Listen)
    }

    /// The buffer size (per direction) of every listening pool socket:
    /// `(rule index in config order, size)`, rule by rule.
    pub fn listener_buffers(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.pools.iter().enumerate().flat_map(move |(i, p)| {
            p.listening
                .iter()
                .map(move |&h| (i, self.sockets.get::<tcp::Socket>(h).recv_capacity()))
        })
    }

    /// The buffer size (per direction) of both sockets of every connection
    /// held, in no particular order: `(client side, upstream side)`.
    pub fn connection_buffers(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.conns.iter().map(|c| {
            let size = |h| self.sockets.get::<tcp::Socket>(h).recv_capacity();
            (size(c.client), size(c.upstream))
        })
    }

    /// Recount the bytes held by our sockets' buffers from the sockets
    /// themselves (tests: the running count must equal it).
    #[cfg(test)]
    pub(crate) fn recount_buffers(&self) -> usize {
        let mut n = 0;
        let mut sockets = 0;
        for (h, s) in self.sockets.iter() {
            if Some(h) == self.dhcp {
                continue;
            }
            if let Some(t) = tcp::Socket::downcast(s) {
                n += t.recv_capacity() + t.send_capacity();
                sockets += 1;
            }
        }
        assert_eq!(sockets, self.owned, "sockets in the set vs owned");
        let spare: usize = self.spare.iter().map(|&(h, _)| 2 * self.buf_of(h)).sum();
        assert_eq!(spare, self.spare_bytes, "spare bytes");
        assert!(self.spare.iter().all(|&(h, size)| self.buf_of(h) == size));
        let pledged: usize = self
            .pools
            .iter()
            .flat_map(|p| p.listening.iter())
            .map(|&h| self.pledge(self.buf_of(h)))
            .sum();
        assert_eq!(pledged, self.pledged, "pledged bytes");
        n
    }

    /// Sockets the engine currently holds (listening, connected, closing, spare).
    pub fn socket_count(&self) -> usize {
        self.owned
    }

    /// Since when no connection has been held, or `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        self.conns.is_empty().then_some(self.idle_since)
    }

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
    pub fn poll<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        if self.any_ip {
            let mut guard = ArpGuard {
                inner: device,
                own: self.own_addr,
            };
            self.poll_inner(now, &mut guard)
        } else {
            self.poll_inner(now, device)
        }
    }

    fn poll_inner<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        self.now = now;
        self.iface.poll_maintenance(now);
        let mut activity = self.announce(now, device);
        self.more_work = true;
        for _ in 0..MAX_ROUNDS {
            let mut packets = 0;
            while packets < BATCH {
                match self
                    .iface
                    .poll_ingress_single(now, device, &mut self.sockets)
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
            let worked = self.service(now);
            let mut egress_changed = false;
            for _ in 0..MAX_ROUNDS {
                match self.iface.poll_egress(now, device, &mut self.sockets) {
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
        activity
    }

    /// Send the gratuitous ARP announcement that is due, if any. Returns
    /// whether one was sent.
    fn announce<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        if self.garp_left == 0 || !(self.garp_retry || now >= self.garp_at) {
            return false;
        }
        let Some(ip) = self.own_addr else {
            self.garp_left = 0;
            return false;
        };
        let Some(tx) = device.transmit(now) else {
            self.garp_retry = true;
            self.garp_at = now + GARP_RETRY;
            return false;
        };
        let arp = gratuitous_arp(self.mac, ip);
        tx.consume(14 + arp.buffer_len(), |buf| {
            let mut frame = EthernetFrame::new_unchecked(buf);
            frame.set_dst_addr(EthernetAddress::BROADCAST);
            frame.set_src_addr(self.mac);
            frame.set_ethertype(EthernetProtocol::Arp);
            arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        });
        self.garp_left -= 1;
        self.garp_at = now + GARP_INTERVAL;
        self.garp_retry = false;
        self.stats.garp += 1;
        log::debug!("proxy: gratuitous ARP for {ip}");
        true
    }

    /// When the engine next needs to run, from `now`: `Some(0)` = at once,
    /// `None` = only when a packet arrives.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        if self.more_work {
            return Some(Duration::ZERO);
        }
        let mut at = self.iface.poll_at(now, &self.sockets);
        let mut earliest = |t: Instant| {
            at = Some(match at {
                Some(a) if a <= t => a,
                _ => t,
            })
        };
        for c in &self.conns {
            if !(c.client_ready && c.upstream_ready) {
                earliest(c.started + self.tune.connect_timeout);
            }
            if let Some(idle) = self.tune.idle_timeout {
                earliest(c.last_active + idle);
            }
        }
        for (_, deadline) in &self.dying {
            earliest(*deadline);
        }
        if let Some(r) = self.retry_at {
            earliest(r);
        }
        if self.garp_left > 0 {
            earliest(self.garp_at);
        }
        at.map(|t| if t > now { t - now } else { Duration::ZERO })
    }

    // ---- sockets -------------------------------------------------------------

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Per-direction buffer size of one of our sockets.
    fn buf_of(&self, h: SocketHandle) -> usize {
        self.sockets.get::<tcp::Socket>(h).recv_capacity()
    }

    /// The budget figures for a new socket: every socket counts, the spares
    /// too unless `without_spares` (spares are a cache: they give way to
    /// larger buffers).
    fn buffer_state(&self, without_spares: bool) -> BufferState {
        let (held, others) = if without_spares {
            (
                self.buf_held - self.spare_bytes,
                self.owned - self.spare.len(),
            )
        } else {
            (self.buf_held, self.owned)
        };
        BufferState {
            budget: self.buf_budget,
            held,
            pledged: self.pledged,
            others,
            listeners: self.pool_slots(),
            max_sockets: self.plan.max_sockets,
            buf_min: self.tune.buf_min,
            buf: self.tune.buf,
        }
    }

    /// Listening sockets the pools hold when full: `rules * backlog`.
    fn pool_slots(&self) -> usize {
        self.pools.len() * self.tune.backlog
    }

    /// Bytes a listening socket with `size`-byte buffers pledges to its partner.
    fn pledge(&self, size: usize) -> usize {
        2 * (size - self.tune.buf_min)
    }

    fn pool_push(&mut self, i: usize, h: SocketHandle) {
        self.pledged += self.pledge(self.buf_of(h));
        self.pools[i].listening.push(h);
    }

    fn pool_insert(&mut self, i: usize, j: usize, h: SocketHandle) {
        self.pledged += self.pledge(self.buf_of(h));
        self.pools[i].listening.insert(j, h);
    }

    /// Take listening socket `j` of pool `i` out (order kept if `keep_order`).
    fn pool_take(&mut self, i: usize, j: usize, keep_order: bool) -> SocketHandle {
        let h = if keep_order {
            self.pools[i].listening.remove(j)
        } else {
            self.pools[i].listening.swap_remove(j)
        };
        self.pledged -= self.pledge(self.buf_of(h));
        h
    }

    fn spare_push(&mut self, h: SocketHandle) {
        let size = self.buf_of(h);
        self.spare_bytes += 2 * size;
        self.spare.push((h, size));
    }

    fn spare_take(&mut self, i: usize) -> SocketHandle {
        let (h, size) = self.spare.remove(i);
        self.spare_bytes -= 2 * size;
        h
    }

    /// A closed socket to (re)use for `role`: the smallest spare at least as
    /// large as what the budget affords (the most recently retired of equals),
    /// else a new socket of that size, after freeing the spares (all smaller:
    /// sized when memory was short) to make room.
    fn take_socket(&mut self, now: Instant, role: Role) -> Option<SocketHandle> {
        let ideal = self.buffer_state(true).size_for(role);
        // The common case first: the most recent spare fits exactly.
        let mut fit = match self.spare.last() {
            Some(&(_, size)) if size == ideal => Some((self.spare.len() - 1, size)),
            _ => None,
        };
        if fit.is_none() {
            for (i, &(_, size)) in self.spare.iter().enumerate() {
                if size >= ideal && fit.is_none_or(|(_, b)| size <= b) {
                    fit = Some((i, size));
                }
            }
        }
        if let Some((i, _)) = fit {
            return Some(self.spare_take(i));
        }
        while !self.spare.is_empty() {
            let h = self.spare_take(self.spare.len() - 1);
            self.free_socket(h);
        }
        if self.owned < self.plan.max_sockets {
            // With the spares freed this is `ideal` again.
            let want = self.buffer_state(false).size_for(role);
            return self.new_socket(want, self.tune.buf_min, now);
        }
        // Never take a dying socket: its RST would be lost. At capacity the
        // pool shrinks instead, and smoltcp itself answers further SYNs with RST.
        None
    }

    /// A new socket with buffers of `want` bytes each, or of the next smaller
    /// size of the ladder down to `floor` if the allocation fails.
    fn new_socket(&mut self, want: usize, floor: usize, now: Instant) -> Option<SocketHandle> {
        debug_assert!(self.owned < self.plan.max_sockets);
        let mut sizes: [usize; 64] = [0; 64];
        let mut n = 0;
        for s in size_ladder(self.tune.buf_min, self.tune.buf) {
            if s >= floor && s <= want && n < sizes.len() {
                sizes[n] = s;
                n += 1;
            }
        }
        for &size in sizes[..n].iter().rev() {
            #[cfg(test)]
            if size > self.alloc_limit {
                continue;
            }
            if let (Some(rx), Some(tx)) = (try_buffer(size), try_buffer(size)) {
                self.owned += 1;
                self.buf_held += 2 * size;
                self.buf_peak = self.buf_peak.max(self.buf_held);
                return Some(self.sockets.add(tcp::Socket::new(
                    tcp::SocketBuffer::new(rx),
                    tcp::SocketBuffer::new(tx),
                )));
            }
        }
        log::warn!("proxy: out of memory for a socket");
        self.retry_at = Some(now + ALLOC_RETRY);
        None
    }

    /// Remove one of our sockets from the set and free its buffers.
    fn free_socket(&mut self, h: SocketHandle) {
        let size = self.buf_of(h);
        self.sockets.remove(h);
        self.owned -= 1;
        self.buf_held -= 2 * size;
        self.listeners_stale = true;
    }

    /// Give a socket that is finished with back: spare, dying or freed.
    fn retire(&mut self, h: SocketHandle, now: Instant) {
        let s = self.tcp(h);
        match s.state() {
            State::Closed | State::TimeWait | State::Listen => {
                if s.state() == State::Listen {
                    s.abort(); // no peer: just closes, sends nothing
                }
                if s.state() == State::Closed && s.remote_endpoint().is_some() {
                    self.dying.push((h, now + RST_GRACE));
                } else {
                    self.make_spare(h);
                }
            }
            _ => {
                s.abort();
                self.dying.push((h, now + RST_GRACE));
            }
        }
    }

    /// Keep a finished socket for reuse; beyond `spare_max` spares, free the
    /// smallest (this one if no spare is smaller).
    fn make_spare(&mut self, h: SocketHandle) {
        self.listeners_stale = true;
        if self.spare.len() < self.spare_max {
            self.spare_push(h);
            return;
        }
        let size = self.buf_of(h);
        let mut smallest: Option<(usize, usize)> = None;
        for (i, &(_, s)) in self.spare.iter().enumerate() {
            if smallest.is_none_or(|(_, b)| s < b) {
                smallest = Some((i, s));
            }
        }
        match smallest {
            Some((i, s)) if s < size => {
                let o = self.spare_take(i);
                self.free_socket(o);
                self.spare_push(h);
            }
            _ => self.free_socket(h),
        }
    }

    /// Move sockets that have sent their RST (or waited too long) to the spares.
    fn reap(&mut self, now: Instant) -> bool {
        let mut i = 0;
        let mut any = false;
        while i < self.dying.len() {
            let (h, deadline) = self.dying[i];
            let s = self.tcp(h);
            if s.remote_endpoint().is_none() || s.state() != State::Closed || now >= deadline {
                self.dying.swap_remove(i);
                self.make_spare(h);
                any = true;
            } else {
                i += 1;
            }
        }
        any
    }

    /// Abort every listening socket (the address changed); `refill` re-creates them.
    fn drop_listeners(&mut self) {
        for i in 0..self.pools.len() {
            // Take the list out (keeping its allocation) to release the borrow.
            let mut list = core::mem::take(&mut self.pools[i].listening);
            for &h in &list {
                self.pledged -= self.pledge(self.buf_of(h));
            }
            for h in list.drain(..) {
                let s = self.tcp(h);
                if s.state() == State::Listen {
                    s.abort(); // no peer yet: closes without sending anything
                    self.make_spare(h);
                } else {
                    // Took a SYN since the last pass: refuse it.
                    s.abort();
                    self.stats.refused += 1;
                    self.dying.push((h, self.now + RST_GRACE));
                }
            }
            self.pools[i].listening = list;
        }
    }

    fn listen_endpoint(&self, rule: &Rule) -> Option<IpListenEndpoint> {
        match rule.kind {
            RuleKind::Transparent => Some(IpListenEndpoint {
                addr: None,
                port: rule.listen_port,
            }),
            // With any-ip on, a reverse rule must only take connections to our
            // own address, not transit traffic to the same port.
            RuleKind::Reverse { .. } if self.any_ip => Some(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(self.own_addr?)),
                port: rule.listen_port,
            }),
            RuleKind::Reverse { .. } => Some(IpListenEndpoint {
                addr: None,
                port: rule.listen_port,
            }),
        }
    }

    /// Top every rule's pool up to `backlog` listening sockets.
    fn refill(&mut self, now: Instant) {
        if self.own_addr.is_none() {
            return; // nothing can reach us yet
        }
        for i in 0..self.pools.len() {
            let Some(ep) = self.listen_endpoint(&self.pools[i].rule) else {
                continue;
            };
            while self.pools[i].listening.len() < self.tune.backlog {
                let Some(h) = self.take_socket(now, Role::Listen) else {
                    return;
                };
                let tune = self.tune;
                let s = self.tcp(h);
                tune.apply(s);
                match s.listen(ep) {
                    Ok(()) => self.pool_push(i, h),
                    Err(_) => {
                        // Cannot happen for a closed socket and a non-zero port;
                        // keep the socket rather than leak it.
                        self.make_spare(h);
                        return;
                    }
                }
            }
        }
    }

    /// Give listening sockets made when memory was short what the budget
    /// affords now (a large enough spare, or new buffers): a pool socket
    /// becomes the client side of the next connection, whose window is fixed
    /// from the handshake on. Each pool socket is looked at once per call.
    fn upgrade_listeners(&mut self, now: Instant) {
        let listening: usize = self.pools.iter().map(|p| p.listening.len()).sum();
        if self.pledged == listening * self.pledge(self.tune.buf) {
            // Every listening socket has `buf` already.
            self.listeners_stale = false;
            return;
        }
        for i in 0..self.pools.len() {
            let Some(ep) = self.listen_endpoint(&self.pools[i].rule) else {
                continue;
            };
            // The figures without the spares; recomputed after each replacement.
            let mut base = self.buffer_state(true);
            let mut j = 0;
            while j < self.pools[i].listening.len() {
                let h = self.pools[i].listening[j];
                let have = self.buf_of(h);
                // As `buffer_state(Some(h), true)`, in constant time.
                let without_h = BufferState {
                    held: base.held - 2 * have,
                    pledged: base.pledged - 2 * (have - base.buf_min),
                    others: base.others - 1,
                    ..base
                };
                if have >= self.tune.buf
                    || self.tcp(h).state() != State::Listen
                    || without_h.size_for(Role::Listen) <= have
                {
                    j += 1;
                    continue;
                }
                self.pool_take(i, j, true);
                self.tcp(h).abort(); // LISTEN: closes without sending anything
                self.free_socket(h);
                let taken = self.take_socket(now, Role::Listen);
                if let Some(n) = taken {
                    let tune = self.tune;
                    let s = self.tcp(n);
                    tune.apply(s);
                    if s.listen(ep).is_ok() {
                        self.pool_insert(i, j, n);
                        j += 1;
                    } else {
                        self.make_spare(n);
                    }
                } // else the pool is one short; refill retries
                base = self.buffer_state(true);
            }
        }
        self.listeners_stale = false;
    }

    /// Take pool sockets that received a SYN and start their connections.
    fn accept(&mut self, now: Instant) -> bool {
        let mut any = false;
        for i in 0..self.pools.len() {
            let mut j = 0;
            while j < self.pools[i].listening.len() {
                let h = self.pools[i].listening[j];
                if self.tcp(h).state() == State::Listen {
                    j += 1;
                    continue;
                }
                self.pool_take(i, j, false);
                any = true;
                self.start_conn(i, h, now);
            }
        }
        if any {
            self.refill(now);
        }
        any
    }

    fn refuse(&mut self, client: SocketHandle, now: Instant) {
        self.stats.refused += 1;
        self.tcp(client).abort();
        self.dying.push((client, now + RST_GRACE));
    }

    fn start_conn(&mut self, rule_idx: usize, client: SocketHandle, now: Instant) {
        if self.conns.len() >= self.tune.max_conns {
            log::debug!("proxy: max_conns reached, refusing");
            return self.refuse(client, now);
        }
        let rule = self.pools[rule_idx].rule;
        let Some(local) = self.tcp(client).local_endpoint() else {
            // Reset before we looked: nothing to do.
            return self.make_spare(client);
        };
        let dest = match rule.kind {
            RuleKind::Reverse {
                upstream,
                upstream_port,
            } => IpEndpoint::new(IpAddress::Ipv4(upstream), upstream_port),
            RuleKind::Transparent => {
                if Some(local.addr) == self.own_addr.map(IpAddress::Ipv4) {
                    log::debug!("proxy: transparent connection to the instance itself, refusing");
                    return self.refuse(client, now);
                }
                // smoltcp is built with IPv6 (for segmentation offload) and any-ip
                // takes every destination; upstream connections are IPv4 only.
                if !matches!(local.addr, IpAddress::Ipv4(_)) {
                    log::debug!("proxy: transparent connection over IPv6, refusing");
                    return self.refuse(client, now);
                }
                local
            }
        };
        let Some(port) = self.ports.alloc() else {
            log::warn!("proxy: no ephemeral port left, refusing");
            return self.refuse(client, now);
        };
        let role = Role::Upstream {
            client: self.buf_of(client),
        };
        let Some(up) = self.take_socket(now, role) else {
            self.ports.set(port, false);
            return self.refuse(client, now);
        };
        let tune = self.tune;
        let s = self.sockets.get_mut::<tcp::Socket>(up);
        tune.apply(s);
        if let Err(e) = s.connect(self.iface.context(), dest, port) {
            log::debug!("proxy: connect to {dest} failed: {e}");
            self.ports.set(port, false);
            self.make_spare(up);
            self.stats.upstream_failures += 1;
            self.tcp(client).abort();
            self.dying.push((client, now + RST_GRACE));
            return;
        }
        self.stats.accepted += 1;
        self.conns.push(Conn {
            rule: rule_idx as u8,
            client,
            upstream: up,
            local_port: port,
            started: now,
            last_active: now,
            client_ready: false,
            upstream_ready: false,
            client_fin: false,
            upstream_fin: false,
            fin_to_upstream: false,
            fin_to_client: false,
        });
        log::debug!(
            "proxy: rule {} accepted {:?} -> {dest}",
            rule_idx,
            self.tcp(client).remote_endpoint()
        );
    }

    /// One pass over every connection: splice, forward FINs and resets, apply
    /// timeouts, end finished connections, reap and refill. Returns whether
    /// anything changed.
    fn service(&mut self, now: Instant) -> bool {
        let mut worked = self.dhcp_event();
        worked |= self.accept(now);
        worked |= self.reap(now);
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }

        // A table of every TCP socket, in handle order, so that two sockets can
        // be borrowed mutably at once and bytes moved without a copy in between.
        let mut table: Vec<(SocketHandle, &mut tcp::Socket<'static>)> = Vec::new();
        if table.try_reserve_exact(self.owned + EXTRA_SOCKETS).is_err() {
            self.retry_at = Some(now + ALLOC_RETRY);
            return worked;
        }
        for (h, s) in self.sockets.iter_mut() {
            if let Some(t) = tcp::Socket::downcast_mut(s) {
                if table.len() < table.capacity() {
                    table.push((h, t));
                }
            }
        }
        let mut ended: Vec<(usize, End)> = Vec::new();
        let tune = self.tune;
        for (idx, c) in self.conns.iter_mut().enumerate() {
            let (Ok(ci), Ok(ui)) = (
                table.binary_search_by_key(&c.client, |e| e.0),
                table.binary_search_by_key(&c.upstream, |e| e.0),
            ) else {
                continue;
            };
            let Ok([(_, cs), (_, us)]) = table.get_disjoint_mut([ci, ui]) else {
                continue;
            };
            let end = step_conn(c, cs, us, &tune, now, &mut self.stats, &mut worked);
            if let Some(e) = end {
                if ended.try_reserve(1).is_ok() {
                    ended.push((idx, e));
                }
            }
        }
        drop(table);

        // End connections, highest index first so swap_remove keeps indices valid.
        for &(idx, end) in ended.iter().rev() {
            let c = self.conns.swap_remove(idx);
            match end {
                End::Completed => self.stats.completed += 1,
                End::ClientReset => self.stats.client_resets += 1,
                End::UpstreamReset => self.stats.upstream_resets += 1,
                End::UpstreamFailed => self.stats.upstream_failures += 1,
                End::Timeout => self.stats.timeouts += 1,
            }
            log::debug!("proxy: connection on rule {} ended: {end:?}", c.rule);
            self.ports.set(c.local_port, false);
            self.retire(c.client, now);
            self.retire(c.upstream, now);
            worked = true;
        }
        if !ended.is_empty() {
            if self.conns.is_empty() {
                self.idle_since = now;
            }
            self.reap(now);
        }
        self.refill(now);
        if self.listeners_stale {
            self.upgrade_listeners(now);
        }
        worked
    }
}

/// Advance one connection. Returns how it ended, if it did.
fn step_conn(
    c: &mut Conn,
    cs: &mut tcp::Socket<'static>,
    us: &mut tcp::Socket<'static>,
    tune: &Tuning,
    now: Instant,
    stats: &mut Stats,
    worked: &mut bool,
) -> Option<End> {
    let (cst, ust) = (cs.state(), us.state());
    c.client_ready |= handshake_done(cst);
    c.upstream_ready |= handshake_done(ust);
    c.client_fin |= fin_received(cst);
    c.upstream_fin |= fin_received(ust);

    let abort_both = |cs: &mut tcp::Socket<'static>, us: &mut tcp::Socket<'static>| {
        for s in [cs, us] {
            if s.is_active() {
                s.abort();
            }
        }
    };

    // A reset in SYN-RECEIVED sends a listen()ed socket back to LISTEN.
    if cst == State::Listen {
        abort_both(cs, us);
        return Some(End::ClientReset);
    }
    // Closed without both FINs exchanged on that socket: reset or smoltcp timeout.
    if cst == State::Closed && !(c.client_fin && c.fin_to_client) {
        abort_both(cs, us);
        return Some(End::ClientReset);
    }
    if ust == State::Closed && !(c.upstream_fin && c.fin_to_upstream) {
        abort_both(cs, us);
        return Some(if c.upstream_ready {
            End::UpstreamReset
        } else {
            End::UpstreamFailed
        });
    }
    if !(c.client_ready && c.upstream_ready) && now >= c.started + tune.connect_timeout {
        abort_both(cs, us);
        return Some(if c.upstream_ready {
            End::Timeout
        } else {
            End::UpstreamFailed
        });
    }
    if let Some(idle) = tune.idle_timeout {
        if now >= c.last_active + idle {
            abort_both(cs, us);
            return Some(End::Timeout);
        }
    }

    let up = pump(cs, us);
    let down = pump(us, cs);
    if up + down > 0 {
        stats.bytes_up += up as u64;
        stats.bytes_down += down as u64;
        c.last_active = now;
        *worked = true;
    }

    // Forward a FIN once everything before it has been moved.
    if c.client_fin
        && !c.fin_to_upstream
        && cs.recv_queue() == 0
        && matches!(us.state(), State::Established | State::CloseWait)
    {
        us.close();
        c.fin_to_upstream = true;
        c.last_active = now;
        *worked = true;
    }
    if c.upstream_fin
        && !c.fin_to_client
        && us.recv_queue() == 0
        && matches!(cs.state(), State::Established | State::CloseWait)
    {
        cs.close();
        c.fin_to_client = true;
        c.last_active = now;
        *worked = true;
    }

    let done = |s: State| matches!(s, State::Closed | State::TimeWait);
    if c.fin_to_client && c.fin_to_upstream && done(cs.state()) && done(us.state()) {
        return Some(End::Completed);
    }
    None
}

/// The gratuitous ARP announcement of `ip` by `mac`: a request with sender
/// and target IP both `ip` and a zero target MAC (sent to the broadcast
/// address), as Linux sends for `arp_notify` and `arping -U`. Linux peers
/// update an existing entry for `ip` from it (they do not create one).
fn gratuitous_arp(mac: EthernetAddress, ip: Ipv4Address) -> ArpRepr {
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ip,
    }
}

/// With any-ip on, smoltcp answers ARP for every address; on a shared segment
/// that would steal other hosts' addresses. This wrapper hides ARP packets whose
/// target is not the instance's own address.
struct ArpGuard<'d, D: Device + ?Sized> {
    inner: &'d mut D,
    own: Option<Ipv4Address>,
}

struct GuardRx<R> {
    inner: R,
    own: Option<Ipv4Address>,
}

fn foreign_arp(frame: &[u8], own: Option<Ipv4Address>) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Arp {
        return false;
    }
    let Ok(pkt) = ArpPacket::new_checked(eth.payload()) else {
        return false;
    };
    match ArpRepr::parse(&pkt) {
        Ok(ArpRepr::EthernetIpv4 {
            target_protocol_addr,
            ..
        }) => Some(target_protocol_addr) != own,
        _ => false,
    }
}

impl<R: RxToken> RxToken for GuardRx<R> {
    fn consume<T, F>(self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        let own = self.own;
        self.inner.consume(|frame| {
            if foreign_arp(frame, own) {
                f(&[])
            } else {
                f(frame)
            }
        })
    }

    fn meta(&self) -> PacketMeta {
        self.inner.meta()
    }
}

impl<'d, D: Device + ?Sized> Device for ArpGuard<'d, D> {
    type RxToken<'a>
        = GuardRx<D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = D::TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let own = self.own;
        self.inner
            .receive(timestamp)
            .map(|(rx, tx)| (GuardRx { inner: rx, own }, tx))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.inner.transmit(timestamp)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

#[cfg(test)]
pub(crate) use plan::tests_fmt_size;

#[cfg(test)]
mod unit {
    use super::*;
    use alloc::vec;

    #[test]
    fn ladder_doubles_from_buf_min_to_buf() {
        let l = |a, b| size_ladder(a, b).collect::<Vec<_>>();
        assert_eq!(l(4096, 65536), vec![4096, 8192, 16384, 32768, 65536]);
        assert_eq!(l(3072, 65536), vec![3072, 6144, 12288, 24576, 49152, 65536]);
        assert_eq!(l(8192, 8192), vec![8192]);
        assert_eq!(l(1024, 1500), vec![1024, 1500]);
        assert_eq!(l(1, 16 << 20).len(), 25);
    }

    /// One listening socket (one rule, `backlog=1`): a pair takes at most
    /// half of the surplus.
    fn state(budget: usize, held: usize, pledged: usize, others: usize) -> BufferState {
        pool_state(budget, held, pledged, others, 1)
    }

    fn pool_state(
        budget: usize,
        held: usize,
        pledged: usize,
        others: usize,
        listeners: usize,
    ) -> BufferState {
        BufferState {
            budget,
            held,
            pledged,
            others,
            listeners,
            max_sockets: 100,
            buf_min: 4096,
            buf: 65536,
        }
    }

    #[test]
    fn sizes_keep_the_reservation_and_taper() {
        let reserve = 100 * 2 * 4096;
        // No surplus: buf_min.
        assert_eq!(state(reserve, 0, 0, 0).size_for(Role::Listen), 4096);
        assert_eq!(
            state(reserve, 0, 0, 0).size_for(Role::Upstream { client: 65536 }),
            4096
        );
        // Ample: buf.
        assert_eq!(
            state(reserve + (1 << 20), 0, 0, 0).size_for(Role::Listen),
            65536
        );
        // 128k of surplus: a listening socket and its partner take at most
        // half: 4 * (size - 4k) <= 64k, size <= 20k, 16k on the ladder.
        let s = state(reserve + (128 << 10), 0, 0, 0);
        assert_eq!(s.surplus(), 128 << 10);
        assert_eq!(s.size_for(Role::Listen), 16384);
        // An upstream socket matches its client side if the surplus affords
        // it, and never exceeds it.
        assert_eq!(s.size_for(Role::Upstream { client: 32768 }), 32768);
        assert_eq!(s.size_for(Role::Upstream { client: 8192 }), 8192);
        assert_eq!(s.size_for(Role::Upstream { client: 65536 }), 65536);
        assert_eq!(
            state(reserve + (24 << 10), 0, 0, 0).size_for(Role::Upstream { client: 65536 }),
            16384
        );
        // Pledges count against the surplus.
        assert_eq!(
            state(reserve + (128 << 10), 0, 128 << 10, 0).size_for(Role::Listen),
            4096
        );
        // Sockets created one after another never break the reservation, and
        // sizes only taper: pairs (listening socket, then its upstream side).
        let budget = reserve + (600 << 10);
        let (mut held, mut last) = (0, 65536);
        for owned in (0..100).step_by(2) {
            let client = state(budget, held, 0, owned).size_for(Role::Listen);
            held += 2 * client;
            let up = state(budget, held, 0, owned + 1).size_for(Role::Upstream { client });
            assert_eq!(up, client, "pair {owned}");
            held += 2 * up;
            assert!(client >= 4096 && client <= last, "pair {owned}: {client}");
            assert!(held + (100 - owned - 2) * 2 * 4096 <= budget);
            last = client;
        }
        assert_eq!(last, 4096);
    }

    /// Create `n` listening sockets one after another from `st` (the running
    /// figures updated as the engine does); returns their sizes.
    fn make_listeners(mut st: BufferState, n: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        for _ in 0..n {
            let size = st.size_for(Role::Listen);
            st.held += 2 * size;
            st.pledged += 2 * (size - st.buf_min);
            st.others += 1;
            assert!(st.held + (st.max_sockets - st.others) * 2 * st.buf_min <= st.budget);
            sizes.push(size);
        }
        sizes
    }

    #[test]
    fn listeners_share_the_surplus_equally() {
        let reserve = 100 * 2 * 4096;
        // 600 KiB shared by 16 listening sockets: 37.5k per pair, 4 * (size -
        // 4k) <= 37.5k: 13.4k, 8k on the ladder, for every one of them (the
        // old rule gave the first one half the surplus: 64k, then 64k, 32k,
        // ... down to 4k).
        let sizes = make_listeners(pool_state(reserve + (600 << 10), 0, 0, 0, 16), 16);
        assert_eq!(sizes, [8192; 16]);
        // The same with 1 MiB: 64k per pair, 20k, 16k on the ladder.
        let sizes = make_listeners(pool_state(reserve + (1 << 20), 0, 0, 0, 16), 16);
        assert_eq!(sizes, [16384; 16]);
        // Four listening sockets with 1 MiB: 256k per pair, buf.
        let sizes = make_listeners(pool_state(reserve + (1 << 20), 0, 0, 0, 4), 4);
        assert_eq!(sizes, [65536; 4]);
        // At exactly four pairs at buf (4 * 240k) every one still gets buf;
        // a byte less and every one gets 32k.
        let exact = reserve + 4 * 4 * (65536 - 4096);
        assert_eq!(make_listeners(pool_state(exact, 0, 0, 0, 4), 4), [65536; 4]);
        assert_eq!(
            make_listeners(pool_state(exact - 1, 0, 0, 0, 4), 4),
            [32768; 4]
        );
        // Whatever the pool holds, a socket re-created in it (left out of the
        // figures) gets the same size as the others: the pool surplus does
        // not depend on what the listening sockets hold.
        let st = pool_state(reserve + (600 << 10), 0, 0, 0, 16);
        let mut after = st;
        after.held = 15 * 2 * 8192;
        after.pledged = 15 * 2 * (8192 - 4096);
        after.others = 15;
        assert_eq!(after.pool_surplus(), st.pool_surplus());
        assert_eq!(after.size_for(Role::Listen), 8192);
        // Connections hold memory: a replacement gets the share of what is
        // left, and never more than is free now.
        let mut busy = after;
        busy.held += 40 * 2 * 8192; // 20 connections of 8k pairs
        busy.others += 40;
        // Pool surplus 600k - 20 * 16k = 280k: 17.5k per pair, 8k.
        assert_eq!(busy.size_for(Role::Listen), 8192);
        busy.held += 4 * 2 * 8192; // two more: 248k, 15.5k per pair, 4k
        busy.others += 4;
        assert_eq!(busy.size_for(Role::Listen), 4096);
        // Listening sockets made large earlier (three at buf) hold most of
        // what is free: 100k is left, the pool surplus is 100k + 3 * 240k,
        // a share 205k (32k), but the new one gets what fits in 100k: 16k.
        let mut three = pool_state(reserve + (820 << 10), 0, 0, 0, 4);
        three.held = 3 * 2 * 65536;
        three.pledged = 3 * 2 * (65536 - 4096);
        three.others = 3;
        assert_eq!(
            (three.surplus(), three.pool_surplus()),
            (100 << 10, 820 << 10)
        );
        assert_eq!(three.size_for(Role::Listen), 16384);
        // No surplus: buf_min for all; ample: buf for all.
        assert_eq!(
            make_listeners(pool_state(reserve, 0, 0, 0, 16), 16),
            [4096; 16]
        );
        assert_eq!(
            make_listeners(pool_state(reserve + (64 << 20), 0, 0, 0, 16), 16),
            [65536; 16]
        );
    }
}
