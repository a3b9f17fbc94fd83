//! The frontend: xenbus handshake state machine, connection lifetime, and the
//! smoltcp `phy::Device`.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;
use core::num::NonZeroUsize;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;

use crate::conn::{
    Conn, Layout, Misbehavior, RxOutcome, Shared, MAX_RX_FRAME, RX_BUFFERS_FOR_OFFLOAD, TX_BUF_SIZE,
};
use crate::platform::{Error, Platform, Port, PAGE_SIZE};
use crate::stats::Stats;
use crate::wire::{RX_RING_SIZE, TX_RING_SIZE};
use crate::xenbus::{parse_flag, parse_mac, parse_u32, XenbusState};

/// Ethernet header bytes smoltcp counts in `max_transmission_unit`.
const ETH_HDR: usize = 14;
/// Largest MTU we use. Without `feature-sg` Linux netback caps the vif at
/// `ETH_DATA_LEN` (`xenvif_change_mtu`) and a frame must fit one slot; with
/// offload, large TCP transfers use segmentation offload instead, so the MTU
/// stays 1500 in both modes.
pub const MAX_MTU: u16 = 1500;
/// Smallest MTU we accept from xenstore (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// Driver configuration. `Default` is the sizing for a 4 MiB guest.
#[derive(Clone, Debug)]
pub struct Config {
    /// Device id: the driver uses `device/vif/<vif>/`.
    pub vif: u32,
    /// RX buffers kept posted, one granted page each (1..=256).
    pub rx_buffers: u16,
    /// TX buffers (1..=256). Without offload each holds one frame, two per
    /// granted page; with offload each is a page (one ring slot) and a
    /// large frame takes several (see [`Layout::tso_max_frame`]).
    pub tx_buffers: u16,
    /// Ring slots `receive()` may consume between two `poll()` calls.
    pub rx_budget: u32,
    /// From the first `poll()` to backend Connected.
    pub handshake_timeout_ms: u64,
    /// From the start of a disconnect to giving up on the backend unmapping
    /// our pages (those still mapped are then leaked, never reused).
    pub close_timeout_ms: u64,
    /// Interval between xenstore reads while waiting on the backend.
    pub retry_ms: u64,
    /// Interval between backend-state checks while connected.
    pub state_check_ms: u64,
    /// Ask for offload: TCP segmentation offload on TX, scatter-gather and
    /// GSO on RX, TCP checksum offload both ways. Used when the backend
    /// offers `feature-sg` and `feature-gso-tcpv4` and `rx_buffers >= 18`;
    /// otherwise (and when false) the driver works as without it.
    pub offload: bool,
    #[cfg(test)]
    pub(crate) ring_start: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vif: 0,
            rx_buffers: 64,
            tx_buffers: 32,
            rx_budget: 256,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            retry_ms: 10,
            state_check_ms: 500,
            offload: true,
            #[cfg(test)]
            ring_start: 0,
        }
    }
}

impl Config {
    fn validate(&self) -> Result<(), Error> {
        if !(1..=RX_RING_SIZE as u16).contains(&self.rx_buffers) {
            return Err(Error::BadConfig("rx_buffers must be 1..=256"));
        }
        if !(1..=TX_RING_SIZE as u16).contains(&self.tx_buffers) {
            return Err(Error::BadConfig("tx_buffers must be 1..=256"));
        }
        if self.rx_budget == 0 {
            return Err(Error::BadConfig("rx_budget must be > 0"));
        }
        Ok(())
    }

    /// Guest memory a connection with this sizing takes, in the mode asked
    /// for (with offload, what it takes if the backend agrees; the most it
    /// can take). [`Netfront::memory`] gives the mode in use.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse::for_layout(
            self.rx_buffers as usize,
            self.tx_buffers as usize,
            Layout {
                offload: self.offload && usize::from(self.rx_buffers) >= RX_BUFFERS_FOR_OFFLOAD,
            },
        )
    }
}

/// Memory the driver holds for one vif.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    pub ring_pages: usize,
    pub rx_pages: usize,
    pub tx_pages: usize,
    /// Bookkeeping on the heap, approximately.
    pub heap_bytes: usize,
}

impl MemoryUse {
    /// What a connection with `nrx` RX and `ntx` TX buffers takes.
    pub fn for_layout(nrx: usize, ntx: usize, layout: Layout) -> MemoryUse {
        // Copy buffers: the received frame (one page, or a whole packet of
        // up to 64 KiB reassembled from its slots) and the frame smoltcp
        // writes (one 2 KiB buffer, or the largest TSO frame).
        let copies = if layout.offload {
            MAX_RX_FRAME + Layout::tso_max_frame(ntx)
        } else {
            PAGE_SIZE + TX_BUF_SIZE
        };
        MemoryUse {
            ring_pages: 2,
            rx_pages: nrx,
            tx_pages: layout.pages(nrx, ntx) - 2 - nrx,
            // slot map + free lists + TX buffer states + the two copy buffers
            // (page handles are counted by `Netfront::memory`).
            heap_bytes: RX_RING_SIZE * 4 + nrx * 2 + ntx * 3 + copies,
        }
    }

    pub fn pages(&self) -> usize {
        self.ring_pages + self.rx_pages + self.tx_pages
    }
    pub fn total_bytes(&self) -> usize {
        self.pages() * PAGE_SIZE + self.heap_bytes
    }
}

impl fmt::Display for MemoryUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} KiB ({} pages: 2 ring, {} rx, {} tx; ~{} B heap)",
            self.total_bytes().div_ceil(1024),
            self.pages(),
            self.rx_pages,
            self.tx_pages,
            self.heap_bytes
        )
    }
}

/// What the backend advertised (read from its xenstore directory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendFeatures {
    pub rx_copy: bool,
    pub rx_flip: bool,
    pub sg: bool,
    pub gso_tcpv4: bool,
    pub gso_tcpv6: bool,
    pub ipv6_csum_offload: bool,
    pub split_event_channels: bool,
    pub multi_queue_max_queues: u32,
    pub ctrl_ring: bool,
    pub multicast_control: bool,
    pub dynamic_multicast_control: bool,
}

impl fmt::Display for BackendFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = [
            ("rx-copy", self.rx_copy),
            ("rx-flip", self.rx_flip),
            ("sg", self.sg),
            ("gso-tcpv4", self.gso_tcpv4),
            ("gso-tcpv6", self.gso_tcpv6),
            ("ipv6-csum-offload", self.ipv6_csum_offload),
            ("split-event-channels", self.split_event_channels),
            ("ctrl-ring", self.ctrl_ring),
            ("multicast-control", self.multicast_control),
            ("dynamic-multicast-control", self.dynamic_multicast_control),
        ];
        let mut first = true;
        for (name, on) in flags {
            if on {
                write!(f, "{}{name}", if first { "" } else { " " })?;
                first = false;
            }
        }
        write!(
            f,
            "{}max-queues={}",
            if first { "" } else { " " },
            self.multi_queue_max_queues
        )
    }
}

/// The keys the frontend writes besides rings, event channel and state, with
/// their values, when offload is not used. Each is a deliberate choice (see
/// the crate docs).
pub const FRONTEND_FEATURES: &[(&str, &str)] = &[
    ("request-rx-copy", "1"),
    ("feature-rx-notify", "1"),
    ("feature-sg", "0"),
    ("feature-gso-tcpv4", "0"),
    ("feature-gso-tcpv6", "0"),
    ("feature-no-csum-offload", "1"),
    ("feature-ipv6-csum-offload", "0"),
];

/// The same keys in offload mode: scatter-gather and IPv4 TCP GSO both
/// ways, IPv4 TCP/UDP checksum offload (`feature-no-csum-offload=0`);
/// still IPv4 only.
pub const FRONTEND_FEATURES_OFFLOAD: &[(&str, &str)] = &[
    ("request-rx-copy", "1"),
    ("feature-rx-notify", "1"),
    ("feature-sg", "1"),
    ("feature-gso-tcpv4", "1"),
    ("feature-gso-tcpv6", "0"),
    ("feature-no-csum-offload", "0"),
    ("feature-ipv6-csum-offload", "0"),
];

/// Whether a connection uses offload ([`Config::offload`]), and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// TCP segmentation offload on TX (frames up to `tso_max_frame` bytes
    /// with a GSO extra), scatter-gather + GSO on RX (packets up to 64 KiB
    /// over several slots), TCP checksum offload both ways.
    On {
        tso_max_frame: usize,
    },
    Off(OffloadOff),
}

/// Why offload is not in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadOff {
    /// No connection has been negotiated yet.
    NotNegotiated,
    /// [`Config::offload`] is false.
    NotRequested,
    /// The backend does not offer `feature-sg`.
    BackendLacksSg,
    /// The backend does not offer `feature-gso-tcpv4`.
    BackendLacksGsoTcpv4,
    /// `rx_buffers` is below 18, the slots netback needs posted before it
    /// delivers a 64 KiB packet.
    TooFewRxBuffers,
    /// The 64 KiB copy buffers could not be allocated.
    NoMemory,
}

impl Offload {
    pub fn is_on(&self) -> bool {
        matches!(self, Offload::On { .. })
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offload::On { tso_max_frame } => {
                write!(f, "tso+sg+csum (tx frames up to {tso_max_frame} B)")
            }
            Offload::Off(why) => {
                let why = match why {
                    OffloadOff::NotNegotiated => "not negotiated yet",
                    OffloadOff::NotRequested => "not requested",
                    OffloadOff::BackendLacksSg => "backend lacks feature-sg",
                    OffloadOff::BackendLacksGsoTcpv4 => "backend lacks feature-gso-tcpv4",
                    OffloadOff::TooFewRxBuffers => "rx_buffers below 18",
                    OffloadOff::NoMemory => "no memory for the 64 KiB copy buffers",
                };
                write!(f, "off ({why})")
            }
        }
    }
}

/// Why the link went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The backend moved to Closing/Closed (e.g. `xl network-detach`).
    BackendClosing,
    /// The backend's xenstore directory disappeared.
    BackendGone,
    /// The backend broke the ring protocol; we stopped using the rings.
    BackendMisbehaved(Misbehavior),
    /// [`Netfront::close`] was called.
    Shutdown,
    /// The handshake failed.
    Failed(Error),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::BackendClosing => f.write_str("backend closing"),
            Reason::BackendGone => f.write_str("backend gone from xenstore"),
            Reason::BackendMisbehaved(m) => write!(f, "backend misbehaved: {m}"),
            Reason::Shutdown => f.write_str("shut down"),
            Reason::Failed(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// Something the kernel should know (and log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The backend is Connected: frames flow.
    Connected {
        mac: [u8; 6],
        mtu: u16,
        backend: BackendFeatures,
    },
    /// The link is down (or never came up). The driver stays usable: the
    /// device just yields no tokens. Resources are released in the background.
    Disconnected(Reason),
    /// Disconnect finished: every page was given back except `leaked_pages`
    /// the backend kept mapped past the close timeout.
    Released { leaked_pages: usize },
}

/// Coarse driver state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Handshake in progress.
    Initialising,
    Connected,
    /// Link down, giving resources back.
    Closing,
    /// Idle; see [`Netfront::reconnect`].
    Disconnected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    WaitInitWait,
    WaitConnected,
    Connected,
    Closing { since: u64, wrote_closed: bool },
    Disconnected,
}

/// The Xen PV network frontend for one vif.
pub struct Netfront<P: Platform> {
    platform: P,
    cfg: Config,
    front: String,
    backend: String,
    backend_id: u16,
    mac: [u8; 6],
    mtu: u16,
    features: BackendFeatures,
    phase: Phase,
    now: u64,
    handshake_start: u64,
    next_check: u64,
    next_retry: u64,
    conn: Option<Conn<P>>,
    /// Pages (and the port) being given back after a disconnect.
    releasing: Vec<Shared<P::Page>>,
    leaked: Vec<P::Page>,
    events: VecDeque<Event>,
    stats: Stats,
    rx_budget: u32,
    rx_frame: Vec<u8>,
    tx_staging: Vec<u8>,
    /// The mode of the current (or last) connection.
    offload: Offload,
    /// What `capabilities()` told smoltcp: fixed by its first call. smoltcp
    /// keeps the capabilities it reads in `Interface::new` (it calls
    /// `capabilities()` again on every egress, but ignores the answer), and
    /// what it was told decides what the frames it sends look like and what
    /// it checks on the ones it receives.
    stack: Cell<StackView>,
}

/// What smoltcp was told about offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StackView {
    /// `capabilities()` not called yet: no stack to speak of; treated as
    /// `Plain`.
    Unread,
    /// Checksums all `Both`, no segmentation.
    Plain,
    /// TCP checksum `None`, TCP segmentation up to this frame size.
    Offload { tso_max_frame: usize },
}

impl<P: Platform> Netfront<P> {
    /// A driver for `device/vif/<cfg.vif>`. Touches nothing until the first
    /// [`poll`](Self::poll).
    pub fn new(platform: P, cfg: Config) -> Result<Self, Error> {
        cfg.validate()?;
        Ok(Netfront {
            platform,
            front: format!("device/vif/{}", cfg.vif),
            rx_budget: cfg.rx_budget,
            cfg,
            backend: String::new(),
            backend_id: 0,
            mac: [0; 6],
            mtu: 1500,
            features: BackendFeatures::default(),
            phase: Phase::Start,
            now: 0,
            handshake_start: 0,
            next_check: 0,
            next_retry: 0,
            conn: None,
            releasing: Vec::new(),
            leaked: Vec::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            rx_frame: Vec::with_capacity(PAGE_SIZE),
            tx_staging: Vec::with_capacity(TX_BUF_SIZE),
            offload: Offload::Off(OffloadOff::NotNegotiated),
            stack: Cell::new(StackView::Unread),
        })
    }

    /// Advance the driver: handshake and teardown steps, TX completions, RX
    /// buffer reposting, backend-state checks; and reset the RX budget.
    /// Call it on every wake-up (event or timeout) before smoltcp's
    /// `Interface::poll`. Returns at most one event per call (call again
    /// while [`poll_delay`](Self::poll_delay) says 0).
    pub fn poll(&mut self, now_ms: u64) -> Option<Event> {
        self.now = now_ms;
        if let Some(port) = self.conn.as_ref().and_then(|c| c.port) {
            if self.platform.take_pending(port) {
                self.stats.events += 1;
            }
        }
        // While waiting on the backend, xenstore is read at most every
        // retry_ms however often we are polled.
        let waiting = matches!(
            self.phase,
            Phase::WaitInitWait | Phase::WaitConnected | Phase::Closing { .. }
        );
        if waiting && now_ms < self.next_retry {
            return self.events.pop_front();
        }
        self.next_retry = now_ms.saturating_add(self.cfg.retry_ms);
        match self.phase {
            Phase::Start => self.step_start(),
            Phase::WaitInitWait => self.step_wait_initwait(),
            Phase::WaitConnected => self.step_wait_connected(),
            Phase::Connected => self.step_connected(),
            Phase::Closing { .. } => self.step_closing(),
            Phase::Disconnected => {}
        }
        self.events.pop_front()
    }

    /// Milliseconds until the driver needs [`poll`](Self::poll) again if no
    /// event arrives: `Some(0)` means now (events queued, or RX responses left
    /// over by the budget: poll smoltcp again too); `None` means only on an
    /// event (or never, once disconnected).
    pub fn poll_delay(&self, now_ms: u64) -> Option<u64> {
        if !self.events.is_empty() {
            return Some(0);
        }
        match self.phase {
            Phase::Start => Some(0),
            Phase::WaitInitWait | Phase::WaitConnected | Phase::Closing { .. } => {
                Some(self.next_retry.saturating_sub(now_ms))
            }
            Phase::Connected => {
                // Frames waiting that receive() could take now (not when it
                // waits for a TX buffer: a TX completion raises an event).
                if self.conn.as_ref().is_some_and(|c| c.rx_progress_possible()) {
                    Some(0)
                } else {
                    Some(self.next_check.saturating_sub(now_ms))
                }
            }
            Phase::Disconnected => None,
        }
    }

    /// Start a clean disconnect (e.g. at guest shutdown): state Closing, wait
    /// for the backend to follow, then Closed and resources back.
    pub fn close(&mut self) {
        match self.phase {
            Phase::Connected | Phase::WaitConnected => self.begin_closing(Reason::Shutdown, false),
            Phase::Start | Phase::WaitInitWait => {
                self.phase = Phase::Disconnected;
                self.events.push_back(Event::Disconnected(Reason::Shutdown));
            }
            Phase::Closing { .. } | Phase::Disconnected => {}
        }
    }

    /// From Disconnected, start a new handshake (e.g. after the toolstack
    /// re-plugged the backend). Returns false in any other state.
    pub fn reconnect(&mut self) -> bool {
        if self.phase != Phase::Disconnected {
            return false;
        }
        self.phase = Phase::Start;
        true
    }

    pub fn state(&self) -> State {
        match self.phase {
            Phase::Start | Phase::WaitInitWait | Phase::WaitConnected => State::Initialising,
            Phase::Connected => State::Connected,
            Phase::Closing { .. } => State::Closing,
            Phase::Disconnected => State::Disconnected,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// The MAC from xenstore (valid once the handshake has read it).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The IP MTU in use (xenstore `mtu`, default 1500, clamped to 68..=1500).
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The backend's xenstore directory (empty before the handshake read it),
    /// so the platform can watch `<backend>/state`.
    pub fn backend_path(&self) -> &str {
        &self.backend
    }

    /// Re-read the backend's state on the next [`poll`](Self::poll), e.g.
    /// because a xenstore watch on it fired. Between such calls the driver
    /// re-reads it only every `state_check_ms`: each read is a synchronous
    /// xenstore round trip, which stalls the guest for as long as a busy
    /// dom0 takes to answer.
    pub fn check_backend_soon(&mut self) {
        self.next_check = 0;
    }

    pub fn backend_features(&self) -> &BackendFeatures {
        &self.features
    }

    /// Whether the current (or last) connection uses offload, and if not,
    /// why. Decided when the backend reaches InitWait; fixed for the
    /// connection.
    ///
    /// [`capabilities`](phy::Device::capabilities) reports offload iff the
    /// connection uses it *at its first call*, and keeps that answer for
    /// the driver's lifetime, because smoltcp keeps what it reads in
    /// `Interface::new`. So create the Interface after [`Event::Connected`]:
    /// created before, it works, but smoltcp computes and checks all
    /// checksums and never sends TSO frames (received large packets still
    /// arrive whole). After a [`reconnect`](Self::reconnect) to a backend
    /// without `feature-sg`/`feature-gso-tcpv4`, an Interface told about
    /// offload keeps working for frames up to the MTU (TCP checksums are
    /// then computed and checked here), but its TSO frames are dropped
    /// (`tx_drop_bad_len`): build a new Interface and driver for such a
    /// backend.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Memory a connection takes with this driver's sizing, in the mode
    /// negotiated (before that: the mode asked for, see [`Config::memory`]).
    pub fn memory(&self) -> MemoryUse {
        match self.offload {
            Offload::Off(OffloadOff::NotNegotiated) => self.cfg.memory(),
            mode => MemoryUse::for_layout(
                self.cfg.rx_buffers as usize,
                self.cfg.tx_buffers as usize,
                Layout {
                    offload: mode.is_on(),
                },
            ),
        }
    }

    /// Pages the driver holds right now: a connection's, those being given
    /// back, and those leaked because the backend kept them mapped.
    pub fn pages_held(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.pages.len()) + self.releasing.len() + self.leaked.len()
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    /// TX frames handed to the backend and not yet answered.
    pub fn tx_in_flight(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.tx_in_flight())
    }

    // ------------------------------------------------------------ handshake

    fn fail(&mut self, err: Error) {
        log::warn!(
            "netfront: vif{}: {}",
            self.cfg.vif,
            Reason::Failed(err.clone())
        );
        if self.conn.is_some() {
            self.begin_closing(Reason::Failed(err), false);
        } else {
            self.phase = Phase::Disconnected;
            self.events
                .push_back(Event::Disconnected(Reason::Failed(err)));
        }
    }

    fn read_front(&mut self, key: &str) -> Result<String, Error> {
        let path = format!("{}/{key}", self.front);
        self.platform.xs_read(&path)
    }

    /// A node of our device directory that the protocol needs, parsed: the
    /// error says whether it is missing, unreadable or unparsable.
    fn read_front_value<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, Error> {
        match self.read_front(key) {
            Ok(v) => parse(&v).ok_or(Error::BadXenstoreValue(key)),
            Err(Error::XsNotFound) => Err(Error::MissingXenstoreValue(key)),
            Err(_) => Err(Error::XenstoreRead(key)),
        }
    }

    fn write_front(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let path = format!("{}/{key}", self.front);
        self.platform.xs_write(&path, value)
    }

    fn read_back(&mut self, key: &str) -> Option<String> {
        let path = format!("{}/{key}", self.backend);
        self.platform.xs_read(&path).ok()
    }

    /// The backend's `state` node: `Ok(None)` when it does not exist (the
    /// device is gone), `Err(())` when it cannot be read or parsed (no
    /// information: keep waiting).
    fn backend_state(&mut self) -> Result<Option<XenbusState>, ()> {
        let path = format!("{}/state", self.backend);
        match self.platform.xs_read(&path) {
            Ok(v) => parse_u32(&v)
                .and_then(XenbusState::from_u32)
                .map(Some)
                .ok_or(()),
            Err(Error::XsNotFound) => Ok(None),
            Err(_) => Err(()),
        }
    }

    fn set_state(&mut self, s: XenbusState) -> Result<(), Error> {
        self.write_front("state", s.as_str())
    }

    fn step_start(&mut self) {
        self.handshake_start = self.now;
        let backend = match self.read_front("backend") {
            Ok(b) => b,
            Err(Error::XsNotFound) => return self.fail(Error::NoDevice),
            Err(_) => return self.fail(Error::XenstoreRead("backend")),
        };
        self.backend = String::from(crate::xenbus::clean(&backend));
        if self.backend.is_empty() {
            return self.fail(Error::BadXenstoreValue("backend"));
        }
        self.backend_id = match self.read_front_value("backend-id", |v| {
            parse_u32(v).and_then(|v| u16::try_from(v).ok())
        }) {
            Ok(v) => v,
            Err(e) => return self.fail(e),
        };
        self.mac = match self.read_front_value("mac", parse_mac) {
            Ok(m) => m,
            Err(e) => return self.fail(e),
        };
        self.mtu = match self.read_front("mtu") {
            Err(Error::XsNotFound) => 1500, // netif.h: absent means 1500
            Err(_) => {
                log::warn!("netfront: xenstore error reading mtu: using 1500");
                1500
            }
            Ok(s) => match parse_u32(&s) {
                Some(m) if m > u32::from(MAX_MTU) => {
                    log::warn!(
                        "netfront: mtu {m} above {MAX_MTU} is not supported: using {MAX_MTU}"
                    );
                    MAX_MTU
                }
                Some(m) if m < u32::from(MIN_MTU) => {
                    log::warn!("netfront: mtu {m} below {MIN_MTU}: using 1500");
                    1500
                }
                Some(m) => m as u16,
                None => {
                    log::warn!("netfront: unparsable mtu {s:?}: using 1500");
                    1500
                }
            },
        };
        if let Err(e) = self.set_state(XenbusState::Initialising) {
            return self.fail(e);
        }
        log::info!(
            "netfront: vif{} backend {} (dom{}), mac {}, mtu {}",
            self.cfg.vif,
            self.backend,
            self.backend_id,
            MacFmt(self.mac),
            self.mtu
        );
        self.phase = Phase::WaitInitWait;
        self.step_wait_initwait();
    }

    fn timed_out(&self) -> bool {
        self.now.saturating_sub(self.handshake_start) >= self.cfg.handshake_timeout_ms
    }

    fn step_wait_initwait(&mut self) {
        match self.backend_state() {
            Ok(Some(XenbusState::InitWait)) => self.publish(),
            Ok(Some(XenbusState::Closing)) => self.fail(Error::BackendClosed),
            // Anything else: hotplug scripts still running (Unknown,
            // Initialising, not yet written), or Closed from an earlier
            // connection about to move to InitWait after our Initialising.
            // Wait.
            bs => {
                if self.timed_out() {
                    let backend_state = bs.ok().flatten();
                    self.fail(Error::HandshakeTimeout {
                        waiting_for: XenbusState::InitWait,
                        backend_state,
                    });
                }
            }
        }
    }

    fn read_features(&mut self) -> BackendFeatures {
        let mut flag = |key: &str| parse_flag(self.read_back(key).as_deref());
        let mut f = BackendFeatures {
            rx_copy: false, // read by the caller
            rx_flip: flag("feature-rx-flip"),
            sg: flag("feature-sg"),
            gso_tcpv4: flag("feature-gso-tcpv4"),
            gso_tcpv6: flag("feature-gso-tcpv6"),
            ipv6_csum_offload: flag("feature-ipv6-csum-offload"),
            split_event_channels: flag("feature-split-event-channels"),
            multi_queue_max_queues: 0,
            ctrl_ring: flag("feature-ctrl-ring"),
            multicast_control: flag("feature-multicast-control"),
            dynamic_multicast_control: flag("feature-dynamic-multicast-control"),
        };
        f.multi_queue_max_queues = self
            .read_back("multi-queue-max-queues")
            .as_deref()
            .and_then(parse_u32)
            .unwrap_or(1);
        f
    }

    /// Backend is InitWait: allocate and grant everything, write our keys,
    /// switch to Connected (netback connects on frontend Connected; it
    /// ignores Initialised).
    fn publish(&mut self) {
        // The one feature we need: absent is a clear error, unreadable (a
        // transient xenstore failure) is retried on the next poll.
        let path = format!("{}/feature-rx-copy", self.backend);
        let rx_copy = match self.platform.xs_read(&path) {
            Ok(v) => parse_flag(Some(&v)),
            Err(Error::XsNotFound) => false,
            Err(_) => return,
        };
        self.features = self.read_features();
        self.features.rx_copy = rx_copy;
        log::info!(
            "netfront: vif{} backend features: {}",
            self.cfg.vif,
            self.features
        );
        if !self.features.rx_copy {
            return self.fail(Error::BackendLacksRxCopy);
        }
        self.offload = self.choose_offload();
        let layout = Layout {
            offload: self.offload.is_on(),
        };
        let mut conn = Conn::new(
            self.cfg.rx_buffers as usize,
            self.cfg.tx_buffers as usize,
            layout,
        );
        if let Err(e) = self.conn_alloc(&mut conn) {
            // Nobody has seen these pages yet: give them straight back.
            let pages = core::mem::take(&mut conn.pages);
            self.release_now(pages, conn.port.take());
            return self.fail(e);
        }
        self.conn = Some(conn);
        if let Err(e) = self.write_keys() {
            return self.fail(e);
        }
        self.phase = Phase::WaitConnected;
        self.step_wait_connected();
    }

    /// Offload when asked for, offered by the backend, and affordable; the
    /// copy buffers are sized for the mode here (allocated now, so the data
    /// path never allocates).
    fn choose_offload(&mut self) -> Offload {
        let ntx = self.cfg.tx_buffers as usize;
        let tso_max_frame = Layout::tso_max_frame(ntx);
        let mode = if !self.cfg.offload {
            Offload::Off(OffloadOff::NotRequested)
        } else if !self.features.sg {
            Offload::Off(OffloadOff::BackendLacksSg)
        } else if !self.features.gso_tcpv4 {
            Offload::Off(OffloadOff::BackendLacksGsoTcpv4)
        } else if usize::from(self.cfg.rx_buffers) < RX_BUFFERS_FOR_OFFLOAD {
            Offload::Off(OffloadOff::TooFewRxBuffers)
        } else if self
            .rx_frame
            .try_reserve_exact(MAX_RX_FRAME.saturating_sub(self.rx_frame.len()))
            .is_err()
            || self
                .tx_staging
                .try_reserve_exact(tso_max_frame.saturating_sub(self.tx_staging.len()))
                .is_err()
        {
            Offload::Off(OffloadOff::NoMemory)
        } else {
            Offload::On { tso_max_frame }
        };
        if !mode.is_on() {
            // Back to the small buffers (after an offload connection).
            self.rx_frame.clear();
            self.rx_frame.shrink_to(PAGE_SIZE);
            self.tx_staging.clear();
            self.tx_staging.shrink_to(TX_BUF_SIZE);
        }
        log::debug!("netfront: vif{} offload: {mode}", self.cfg.vif);
        mode
    }

    /// Fill `conn`: pages, grants, rings, port, RX buffers posted. On failure
    /// `conn` holds what was allocated so far.
    fn conn_alloc(&mut self, conn: &mut Conn<P>) -> Result<(), Error> {
        let n = conn
            .layout()
            .pages(self.cfg.rx_buffers as usize, self.cfg.tx_buffers as usize);
        for i in 0..n {
            let page = self.platform.alloc_page()?;
            match self
                .platform
                .grant(&page, self.backend_id, conn.readonly_page(i))
            {
                Ok(gref) => conn.pages.push(Shared { page, gref }),
                Err(e) => {
                    self.platform.free_page(page);
                    return Err(e);
                }
            }
        }
        #[cfg(test)]
        conn.init_rings(self.cfg.ring_start);
        #[cfg(not(test))]
        conn.init_rings(0);
        // Post the RX buffers before the port exists: no notification is due
        // (the backend reads the ring when it connects).
        conn.rx_refill(&mut self.platform, &mut self.stats);
        conn.port = Some(self.platform.alloc_unbound(self.backend_id)?);
        Ok(())
    }

    /// Give back pages nobody else has seen yet (setup failure).
    fn release_now(&mut self, pages: Vec<Shared<P::Page>>, port: Option<Port>) {
        if let Some(p) = port {
            self.platform.close_port(p);
        }
        for s in pages {
            match self.platform.end_grant(s.gref) {
                Ok(()) => self.platform.free_page(s.page),
                Err(_) => {
                    self.stats.pages_leaked += 1;
                    self.leaked.push(s.page);
                }
            }
        }
    }

    fn write_keys(&mut self) -> Result<(), Error> {
        let conn = self.conn.as_ref().ok_or(Error::Xenstore)?;
        let (tx, rx) = (conn.tx_ring_ref().0, conn.rx_ring_ref().0);
        let port = conn.port.map_or(0, |p| p.0);
        self.write_front("tx-ring-ref", &format!("{tx}"))?;
        self.write_front("rx-ring-ref", &format!("{rx}"))?;
        self.write_front("event-channel", &format!("{port}"))?;
        let keys = if self.offload.is_on() {
            FRONTEND_FEATURES_OFFLOAD
        } else {
            FRONTEND_FEATURES
        };
        for (k, v) in keys {
            self.write_front(k, v)?;
        }
        // Last, so the backend sees every key when it reacts to the state.
        self.set_state(XenbusState::Connected)
    }

    fn step_wait_connected(&mut self) {
        match self.backend_state() {
            Ok(Some(XenbusState::Connected)) => {
                self.phase = Phase::Connected;
                self.next_check = self.now.saturating_add(self.cfg.state_check_ms);
                self.rx_budget = self.cfg.rx_budget;
                log::info!(
                    "netfront: vif{} connected, offload: {}",
                    self.cfg.vif,
                    self.offload
                );
                self.events.push_back(Event::Connected {
                    mac: self.mac,
                    mtu: self.mtu,
                    backend: self.features.clone(),
                });
            }
            Ok(Some(XenbusState::Closing | XenbusState::Closed)) => {
                self.begin_closing(Reason::Failed(Error::BackendClosed), true)
            }
            Ok(None) => self.begin_closing(Reason::BackendGone, true),
            bs => {
                if self.timed_out() {
                    let backend_state = bs.ok().flatten();
                    self.fail(Error::HandshakeTimeout {
                        waiting_for: XenbusState::Connected,
                        backend_state,
                    });
                }
            }
        }
    }

    // ------------------------------------------------------------ connected

    fn step_connected(&mut self) {
        if self.now >= self.next_check {
            self.next_check = self.now.saturating_add(self.cfg.state_check_ms);
            match self.backend_state() {
                Ok(Some(XenbusState::Closing | XenbusState::Closed)) => {
                    return self.begin_closing(Reason::BackendClosing, true)
                }
                Ok(None | Some(XenbusState::Unknown)) => {
                    return self.begin_closing(Reason::BackendGone, true)
                }
                _ => {}
            }
        }
        self.rx_budget = self.cfg.rx_budget;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(m) = conn.tx_reap(&mut self.stats) {
            return self.begin_closing(Reason::BackendMisbehaved(m), false);
        }
        conn.rx_refill(&mut self.platform, &mut self.stats);
    }

    // ------------------------------------------------------------ teardown

    /// Link down. `peer_closing`: the backend started it, so we answer with
    /// Closed at once (as Linux netfront does); otherwise we go Closing and
    /// wait for the backend to follow.
    fn begin_closing(&mut self, reason: Reason, peer_closing: bool) {
        log::info!("netfront: vif{} down: {reason}", self.cfg.vif);
        self.events.push_back(Event::Disconnected(reason));
        if let Some(mut conn) = self.conn.take() {
            if let Some(p) = conn.port.take() {
                self.platform.close_port(p);
            }
            self.releasing.append(&mut conn.pages);
        }
        let target = if peer_closing {
            XenbusState::Closed
        } else {
            XenbusState::Closing
        };
        let _ = self.set_state(target);
        self.phase = Phase::Closing {
            since: self.now,
            wrote_closed: peer_closing,
        };
        self.step_closing();
    }

    fn step_closing(&mut self) {
        let Phase::Closing {
            since,
            mut wrote_closed,
        } = self.phase
        else {
            return;
        };
        // (gone, closed, closing-or-beyond); an unreadable node tells nothing.
        let (gone, closed, closing) = match self.backend_state() {
            Ok(None | Some(XenbusState::Unknown)) => (true, false, true),
            Ok(Some(s)) => (false, s == XenbusState::Closed, s >= XenbusState::Closing),
            Err(()) => (false, false, false),
        };
        let timed_out = self.now.saturating_sub(since) >= self.cfg.close_timeout_ms;
        if !wrote_closed && (closing || timed_out) {
            let _ = self.set_state(XenbusState::Closed);
            wrote_closed = true;
        }
        self.phase = Phase::Closing {
            since,
            wrote_closed,
        };
        if !(wrote_closed && (gone || closed)) && !timed_out {
            return; // the backend may still map our rings
        }
        let pending = core::mem::take(&mut self.releasing);
        for s in pending {
            match self.platform.end_grant(s.gref) {
                Ok(()) => self.platform.free_page(s.page),
                Err(_) => self.releasing.push(s),
            }
        }
        if !self.releasing.is_empty() && !timed_out {
            return; // retry on the next poll
        }
        let leaked = self.releasing.len();
        if leaked > 0 {
            log::warn!(
                "netfront: vif{}: backend still maps {leaked} pages; leaking them",
                self.cfg.vif
            );
        }
        self.stats.pages_leaked += leaked as u64;
        for s in core::mem::take(&mut self.releasing) {
            self.leaked.push(s.page);
        }
        self.phase = Phase::Disconnected;
        self.events.push_back(Event::Released {
            leaked_pages: leaked,
        });
    }
}

struct MacFmt([u8; 6]);
impl fmt::Display for MacFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

// ---------------------------------------------------------------- smoltcp

impl<P: Platform> Netfront<P> {
    /// smoltcp was told to leave TCP checksums (and segmentation) to us.
    fn stack_offload(&self) -> bool {
        matches!(self.stack.get(), StackView::Offload { .. })
    }

    /// The largest frame a TX token from `transmit()` may carry: a TSO frame
    /// when offload is on and smoltcp was told so, else MTU + header.
    fn tx_capacity(&self) -> usize {
        match (self.offload, self.stack.get()) {
            (Offload::On { .. }, StackView::Offload { tso_max_frame }) => tso_max_frame,
            _ => usize::from(self.mtu) + ETH_HDR,
        }
    }

    /// TX buffers and ring slots for a frame of `len` bytes (and its GSO
    /// extra, if `gso`) are free (reaping completions if needed). Counts a
    /// ring-full event otherwise; disconnects on a broken ring.
    fn tx_ready(&mut self, len: usize, gso: bool) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let (bufs, slots) = conn.tx_cost(len, gso);
        match conn.tx_ready(&mut self.stats, bufs, slots) {
            Ok(true) => true,
            Ok(false) => {
                self.stats.tx_ring_full += 1;
                false
            }
            Err(m) => {
                self.begin_closing(Reason::BackendMisbehaved(m), false);
                false
            }
        }
    }
}

/// A received frame, already copied out of the granted page(s).
pub struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Permission to send one frame of up to its capacity (TX buffers and ring
/// slots for that much were free).
pub struct TxToken<'a, P: Platform> {
    platform: &'a mut P,
    conn: &'a mut Conn<P>,
    stats: &'a mut Stats,
    staging: &'a mut Vec<u8>,
    max_frame: usize,
    /// smoltcp fills TCP checksums (it was told `Checksum::Both`).
    stack_fills_tcp: bool,
    /// `PacketMeta::segmentation_offload_size`: the MSS of a TSO frame.
    gso_mss: Option<u16>,
    /// A ring slot for a GSO extra was reserved (tokens from `transmit()`
    /// in offload mode; replies never need one).
    gso_ok: bool,
}

impl<P: Platform> phy::TxToken for TxToken<'_, P> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.staging.clear();
        self.staging.resize(len, 0);
        let r = f(&mut self.staging[..]);
        if len < ETH_HDR || len > self.max_frame {
            self.stats.tx_drop_bad_len += 1;
        } else {
            self.conn.tx_send(
                self.platform,
                self.stats,
                self.staging,
                self.gso_mss.filter(|_| self.gso_ok),
                self.stack_fills_tcp,
            );
        }
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.gso_mss = meta.segmentation_offload_size.map(|m| m.get());
    }
}

impl<P: Platform> phy::Device for Netfront<P> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, P>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.phase != Phase::Connected {
            return None;
        }
        // A reply may need a TX buffer: rather than drop it, leave the frame
        // on the ring until TX completions free one (they raise an event).
        // Replies (ACKs, RSTs, echo replies) are never larger than the MTU.
        let reply_max = usize::from(self.mtu) + ETH_HDR;
        if !self.tx_ready(reply_max, false) {
            return None;
        }
        let stack_offload = self.stack_offload();
        let conn = self.conn.as_mut()?;
        let outcome = conn.rx_pull(
            &mut self.platform,
            &mut self.stats,
            &mut self.rx_budget,
            &mut self.rx_frame,
            !stack_offload,
        );
        match outcome {
            RxOutcome::Frame(len) => Some((
                RxToken {
                    frame: &self.rx_frame[..len],
                },
                TxToken {
                    platform: &mut self.platform,
                    conn: self.conn.as_mut()?,
                    stats: &mut self.stats,
                    staging: &mut self.tx_staging,
                    max_frame: reply_max,
                    stack_fills_tcp: !stack_offload,
                    gso_mss: None,
                    gso_ok: false,
                },
            )),
            RxOutcome::Empty | RxOutcome::Budget => None,
            RxOutcome::Broken(m) => {
                self.begin_closing(Reason::BackendMisbehaved(m), false);
                None
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.phase != Phase::Connected {
            return None;
        }
        // Room for the largest frame this token may carry: a frame is never
        // dropped or split for want of buffers, smoltcp just retries later.
        let max_frame = self.tx_capacity();
        // TSO frames only when smoltcp may send them (it was told).
        let gso_ok = self.offload.is_on() && self.stack_offload();
        if !self.tx_ready(max_frame, gso_ok) {
            return None;
        }
        let stack_fills_tcp = !self.stack_offload();
        Some(TxToken {
            platform: &mut self.platform,
            conn: self.conn.as_mut()?,
            stats: &mut self.stats,
            staging: &mut self.tx_staging,
            max_frame,
            stack_fills_tcp,
            gso_mss: None,
            gso_ok,
        })
    }

    /// Ethernet, MTU from xenstore (+14 for the Ethernet header, as smoltcp
    /// counts it).
    ///
    /// Without offload smoltcp computes every checksum on TX and verifies
    /// every checksum on RX (`Checksum::Both`): we never set
    /// `NETTXF_csum_blank`, and we ask the backend for complete checksums
    /// (`feature-no-csum-offload=1`, completing any `NETRXF_csum_blank`
    /// frame ourselves), so software verification is both possible and a
    /// cheap guard against a backend handing us corrupt frames.
    ///
    /// With offload, TCP is `Checksum::None` (the driver sends TCP with
    /// `csum_blank` and checks received TCP the backend did not vouch for)
    /// and `segmentation.tcpv4` is the largest TSO frame; IPv4, UDP and
    /// ICMP stay `Both`.
    ///
    /// The first call decides (offload iff the connection then uses it)
    /// and later calls repeat it: smoltcp keeps what it reads in
    /// `Interface::new`. See [`Netfront::offload`].
    fn capabilities(&self) -> DeviceCapabilities {
        let view = match (self.stack.get(), self.offload) {
            (StackView::Unread, Offload::On { tso_max_frame }) => {
                StackView::Offload { tso_max_frame }
            }
            (StackView::Unread, Offload::Off(_)) => StackView::Plain,
            (v, _) => v,
        };
        self.stack.set(view);
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(self.mtu) + ETH_HDR;
        caps.max_burst_size = None;
        caps.checksum = ChecksumCapabilities::default();
        if let StackView::Offload { tso_max_frame } = view {
            caps.checksum.tcp = Checksum::None;
            caps.segmentation.tcpv4 = NonZeroUsize::new(tso_max_frame);
        }
        caps
    }
}
