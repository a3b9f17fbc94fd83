//! The xenbus handshake (`xen/include/public/io/xenbus.h`, netif.h's
//! "frontend/backend" keys): read our device keys, wait for the backend's
//! InitWait, read its features and choose the mode, allocate and grant
//! rings and buffers, write our keys and Connected, wait for its Connected.
//!
//! Every step reads xenstore once and returns; `Netfront::poll` calls the
//! step of the current phase again after `retry_ms`, so nothing blocks and a
//! backend that never answers ends in `Error::HandshakeTimeout`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::{Netfront, Phase};
use crate::datapath::{Datapath, Shared};
use crate::layout::{Layout, MAX_MTU, MAX_RX_FRAME, MIN_MTU, RX_BUFFERS_FOR_OFFLOAD, TX_BUF_SIZE};
use crate::platform::{Error, HandshakeStep, Platform, PAGE_SIZE};
use crate::types::{BackendFeatures, Event, Offload, OffloadOff, Reason};
use crate::xenbus::{parse_flag, parse_mac, parse_u32, XenbusState};

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

impl<P: Platform> Netfront<P> {
    pub(super) fn fail(&mut self, err: Error) {
        log::warn!(
            "netfront: vif{}: {}",
            self.cfg.vif,
            Reason::Failed(err.clone())
        );
        if self.datapath.is_some() {
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

    /// Several nodes of `dir` read at once (one xenstore round trip where
    /// the platform pipelines them), a result per key in order.
    fn read_all<const N: usize>(
        &mut self,
        dir: &str,
        keys: [&str; N],
    ) -> [Result<String, Error>; N] {
        let paths = keys.map(|k| format!("{dir}/{k}"));
        let refs = paths.each_ref().map(String::as_str);
        let mut got = self.platform.xs_read_all(&refs).into_iter();
        // A platform that answered fewer than asked: the rest is unreadable.
        core::array::from_fn(|_| got.next().unwrap_or(Err(Error::Xenstore)))
    }

    fn write_front(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let path = format!("{}/{key}", self.front);
        self.platform.xs_write(&path, value)
    }

    /// The backend's `state` node: `Ok(None)` when it does not exist (the
    /// device is gone), `Err(())` when it cannot be read or parsed (no
    /// information: keep waiting).
    pub(super) fn backend_state(&mut self) -> Result<Option<XenbusState>, ()> {
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

    pub(super) fn set_state(&mut self, s: XenbusState) -> Result<(), Error> {
        self.write_front("state", s.as_str())
    }

    /// After a disconnect: if our device directory names a backend that is
    /// setting up (Initialising or InitWait: the vif was attached again,
    /// e.g. by `xl network-attach`), start a new handshake with it
    /// ([`reconnect`](Self::reconnect)). Returns whether one was started.
    /// Anything else (no device, the old backend still tearing down, a
    /// xenstore error) leaves the driver Disconnected: the caller asks again
    /// when the device directory changes.
    pub fn reconnect_if_attached(&mut self) -> bool {
        if self.phase != Phase::Disconnected {
            return false;
        }
        let Ok(backend) = self.read_front("backend") else {
            return false;
        };
        let path = format!("{}/state", crate::xenbus::clean(&backend));
        let state = self
            .platform
            .xs_read(&path)
            .ok()
            .and_then(|v| parse_u32(&v))
            .and_then(XenbusState::from_u32);
        match state {
            Some(XenbusState::Initialising | XenbusState::InitWait) => {
                log::info!(
                    "netfront: vif{}: attached again: reconnecting",
                    self.cfg.vif
                );
                self.reconnect()
            }
            _ => false,
        }
    }

    pub(super) fn step_start(&mut self) {
        self.handshake_start = self.now;
        self.initwait_seen = false;
        let front = self.front.clone();
        let [backend, backend_id, mac, mtu] =
            self.read_all(&front, ["backend", "backend-id", "mac", "mtu"]);
        let backend = match backend {
            Ok(b) => b,
            Err(Error::XsNotFound) => return self.fail(Error::NoDevice),
            Err(_) => return self.fail(Error::XenstoreRead("backend")),
        };
        self.backend = String::from(crate::xenbus::clean(&backend));
        if self.backend.is_empty() {
            return self.fail(Error::BadXenstoreValue("backend"));
        }
        self.backend_id = match front_value("backend-id", backend_id, |v| {
            parse_u32(v).and_then(|v| u16::try_from(v).ok())
        }) {
            Ok(v) => v,
            Err(e) => return self.fail(e),
        };
        self.mac = match front_value("mac", mac, parse_mac) {
            Ok(m) => m,
            Err(e) => return self.fail(e),
        };
        self.mtu = match mtu {
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
        self.platform.handshake_step(HandshakeStep::DeviceRead);
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

    pub(super) fn step_wait_initwait(&mut self) {
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

    /// The backend's features, read in one batch: `Err` when the one we
    /// need, `feature-rx-copy`, could not be read (absent reads as off; an
    /// optional one unreadable reads as absent).
    fn read_features(&mut self) -> Result<BackendFeatures, ()> {
        let backend = self.backend.clone();
        let [rx_copy, rx_flip, sg, gso4, gso6, csum6, split, ctrl, mc, dmc, queues] = self
            .read_all(
                &backend,
                [
                    "feature-rx-copy",
                    "feature-rx-flip",
                    "feature-sg",
                    "feature-gso-tcpv4",
                    "feature-gso-tcpv6",
                    "feature-ipv6-csum-offload",
                    "feature-split-event-channels",
                    "feature-ctrl-ring",
                    "feature-multicast-control",
                    "feature-dynamic-multicast-control",
                    "multi-queue-max-queues",
                ],
            );
        let rx_copy = match rx_copy {
            Ok(v) => parse_flag(Some(&v)),
            Err(Error::XsNotFound) => false,
            Err(_) => return Err(()),
        };
        let flag = |r: Result<String, Error>| parse_flag(r.ok().as_deref());
        Ok(BackendFeatures {
            rx_copy,
            rx_flip: flag(rx_flip),
            sg: flag(sg),
            gso_tcpv4: flag(gso4),
            gso_tcpv6: flag(gso6),
            ipv6_csum_offload: flag(csum6),
            split_event_channels: flag(split),
            multi_queue_max_queues: queues.ok().as_deref().and_then(parse_u32).unwrap_or(1),
            ctrl_ring: flag(ctrl),
            multicast_control: flag(mc),
            dynamic_multicast_control: flag(dmc),
        })
    }

    /// Backend is InitWait: allocate and grant everything, write our keys,
    /// switch to Connected (netback connects on frontend Connected; it
    /// ignores Initialised).
    fn publish(&mut self) {
        if !self.initwait_seen {
            self.initwait_seen = true;
            self.platform.handshake_step(HandshakeStep::BackendInitWait);
        }
        // The one feature we need: absent is a clear error, unreadable (a
        // transient xenstore failure) is retried on the next poll.
        self.features = match self.read_features() {
            Ok(f) => f,
            Err(()) => return,
        };
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
        let mut datapath = Datapath::new(
            self.cfg.rx_buffers as usize,
            self.cfg.tx_buffers as usize,
            layout,
        );
        if let Err(e) = self.alloc_datapath(&mut datapath) {
            // Nobody has seen these pages yet: give them straight back.
            let pages = core::mem::take(&mut datapath.pages);
            self.release_now(pages, datapath.port.take());
            return self.fail(e);
        }
        self.datapath = Some(datapath);
        if let Err(e) = self.write_keys() {
            return self.fail(e);
        }
        self.platform.handshake_step(HandshakeStep::KeysWritten);
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

    /// Fill `datapath`: pages, grants, rings, port, RX buffers posted. On failure
    /// `datapath` holds what was allocated so far.
    fn alloc_datapath(&mut self, datapath: &mut Datapath<P>) -> Result<(), Error> {
        let n = datapath
            .layout()
            .pages(self.cfg.rx_buffers as usize, self.cfg.tx_buffers as usize);
        for i in 0..n {
            let page = self.platform.alloc_page()?;
            match self
                .platform
                .grant(&page, self.backend_id, datapath.readonly_page(i))
            {
                Ok(gref) => datapath.pages.push(Shared { page, gref }),
                Err(e) => {
                    self.platform.free_page(page);
                    return Err(e);
                }
            }
        }
        #[cfg(any(test, feature = "testing"))]
        datapath.init_rings(self.cfg.ring_start);
        #[cfg(not(any(test, feature = "testing")))]
        datapath.init_rings(0);
        // Post the RX buffers before the port exists: no notification is due
        // (the backend reads the ring when it connects).
        datapath.rx_refill(&mut self.platform, &mut self.stats);
        datapath.port = Some(self.platform.alloc_unbound(self.backend_id)?);
        Ok(())
    }

    /// Our keys and Connected, all at once (one transaction where the
    /// platform has them): the backend never sees a half-written set.
    fn write_keys(&mut self) -> Result<(), Error> {
        let datapath = self.datapath.as_ref().ok_or(Error::Xenstore)?;
        let (tx, rx) = (datapath.tx_ring_ref().0, datapath.rx_ring_ref().0);
        let port = datapath.port.map_or(0, |p| p.0);
        let features = if self.offload.is_on() {
            FRONTEND_FEATURES_OFFLOAD
        } else {
            FRONTEND_FEATURES
        };
        let values = [format!("{tx}"), format!("{rx}"), format!("{port}")];
        let keys = ["tx-ring-ref", "rx-ring-ref", "event-channel"]
            .into_iter()
            .zip(values.iter().map(String::as_str))
            .chain(features.iter().copied())
            // Last, so the backend sees every key when it reacts to the state.
            .chain([("state", XenbusState::Connected.as_str())]);
        let paths: Vec<(String, &str)> = keys
            .map(|(k, v)| (format!("{}/{k}", self.front), v))
            .collect();
        let writes: Vec<(&str, &str)> = paths.iter().map(|(p, v)| (p.as_str(), *v)).collect();
        self.platform.xs_write_all(&writes)
    }

    pub(super) fn step_wait_connected(&mut self) {
        match self.backend_state() {
            Ok(Some(XenbusState::Connected)) => {
                self.platform
                    .handshake_step(HandshakeStep::BackendConnected);
                self.phase = Phase::Connected;
                self.check_interval = self.cfg.state_check_ms;
                self.next_check = self.now.saturating_add(self.check_interval);
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
}

/// A node of our device directory that the protocol needs, parsed: the
/// error says whether it is missing, unreadable or unparsable.
fn front_value<T>(
    key: &'static str,
    read: Result<String, Error>,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, Error> {
    match read {
        Ok(v) => parse(&v).ok_or(Error::BadXenstoreValue(key)),
        Err(Error::XsNotFound) => Err(Error::MissingXenstoreValue(key)),
        Err(_) => Err(Error::XenstoreRead(key)),
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
