//! The frontend for one vif: [`Netfront`], its phases and its public API.
//! The phases' steps live in child modules, one concern each:
//! `handshake.rs` (up to Connected), `teardown.rs` (down to Released),
//! `device.rs` (the smoltcp `phy::Device`); the rings themselves are
//! `crate::datapath`.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::config::Config;
use crate::datapath::{Datapath, Shared};
use crate::layout::{Layout, MemoryUse, TX_BUF_SIZE};
use crate::platform::{Error, Platform, PAGE_SIZE};
use crate::stats::Stats;
use crate::types::{BackendFeatures, Event, Offload, OffloadOff, Reason, State};
use crate::xenbus::XenbusState;

mod device;
mod handshake;
mod teardown;

use device::StackView;
pub use device::{RxToken, TxToken};
pub use handshake::{FRONTEND_FEATURES, FRONTEND_FEATURES_OFFLOAD};

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
    /// This handshake told the platform about the backend's InitWait
    /// (`publish` may run more than once: it retries an unreadable key).
    initwait_seen: bool,
    next_check: u64,
    /// The interval to the next state check while connected (it grows from
    /// `state_check_ms` to `state_check_max_ms`).
    check_interval: u64,
    next_retry: u64,
    datapath: Option<Datapath<P>>,
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

impl<P: Platform> Netfront<P> {
    /// A driver for `device/vif/<cfg.vif>`. Touches nothing until the first
    /// [`poll`](Self::poll).
    pub fn new(platform: P, cfg: Config) -> Result<Self, Error> {
        cfg.validate()?;
        Ok(Netfront {
            platform,
            front: format!("device/vif/{}", cfg.vif),
            rx_budget: cfg.rx_budget,
            check_interval: cfg.state_check_ms,
            cfg,
            backend: String::new(),
            backend_id: 0,
            mac: [0; 6],
            mtu: 1500,
            features: BackendFeatures::default(),
            phase: Phase::Start,
            now: 0,
            handshake_start: 0,
            initwait_seen: false,
            next_check: 0,
            next_retry: 0,
            datapath: None,
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
        if let Some(port) = self.datapath.as_ref().and_then(|c| c.port) {
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
                if self
                    .datapath
                    .as_ref()
                    .is_some_and(|c| c.rx_progress_possible())
                {
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
    /// because a xenstore watch on it fired; in the handshake and while
    /// closing too, without waiting for `retry_ms`. Between such calls the
    /// driver re-reads it only every `state_check_ms` (`retry_ms` while
    /// waiting on the backend): each read is a synchronous xenstore round
    /// trip, which stalls the guest for as long as a busy dom0 takes to
    /// answer.
    pub fn check_backend_soon(&mut self) {
        self.next_check = 0;
        self.check_interval = self.cfg.state_check_ms;
        self.next_retry = 0;
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
        self.datapath.as_ref().map_or(0, |c| c.pages.len())
            + self.releasing.len()
            + self.leaked.len()
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    /// TX frames handed to the backend and not yet answered.
    pub fn tx_in_flight(&self) -> usize {
        self.datapath.as_ref().map_or(0, |c| c.tx_in_flight())
    }

    /// Connected: check the backend's state (every `state_check_ms`, backing
    /// off to `state_check_max_ms` while it stays connected), take back
    /// answered TX buffers, post RX buffers again, reset the RX budget.
    fn step_connected(&mut self) {
        if self.now >= self.next_check {
            match self.backend_state() {
                Ok(Some(XenbusState::Closing | XenbusState::Closed)) => {
                    return self.begin_closing(Reason::BackendClosing, true)
                }
                Ok(None | Some(XenbusState::Unknown)) => {
                    return self.begin_closing(Reason::BackendGone, true)
                }
                // Still there: the next fallback check can wait longer. (An
                // unreadable state, a transient error, keeps the interval.)
                Ok(Some(_)) => {
                    let max = self.cfg.state_check_max_ms.max(self.cfg.state_check_ms);
                    self.check_interval = self.check_interval.saturating_mul(2).min(max);
                }
                Err(_) => {}
            }
            self.next_check = self.now.saturating_add(self.check_interval);
        }
        self.rx_budget = self.cfg.rx_budget;
        let Some(datapath) = self.datapath.as_mut() else {
            return;
        };
        if let Err(m) = datapath.tx_reap(&mut self.stats) {
            return self.begin_closing(Reason::BackendMisbehaved(m), false);
        }
        datapath.rx_refill(&mut self.platform, &mut self.stats);
    }
}
