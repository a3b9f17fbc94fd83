//! A fake Linux netback: it follows netback's xenbus state machine (with
//! hotplug and connect delays, `xl network-detach`, libxl removing the
//! directories), reads the frontend's keys the way netback's `connect()`
//! does, and services the rings the way netback does: RX in `netback/rx.rs`,
//! TX in `netback/tx.rs`. Hooks let tests misbehave on its behalf.
//!
//! With the frontend's `feature-sg`/`feature-gso-tcpv4`/checksum offload it
//! behaves like netback with them: TX packets are parsed slot chain by slot
//! chain with netback's rules (first size = whole packet, extras after the
//! first slot, no slot crossing its page, at most 18 slots; what would be a
//! drop or a fatal error in netback is a test failure here, since our
//! frontend must never cause one), `csum_blank` TCP must carry the
//! pseudo-header sum, each slot is answered with its id and each extra with
//! `NETIF_RSP_NULL` right after the first slot's answer; GSO packets are
//! segmented the way Linux's `tcp_gso_segment` does (or delivered whole,
//! checksum completed). On RX, packets are laid out like `xenvif_rx_skb`:
//! full-page data slots from offset 0, the extras after the first slot,
//! checksum flags on the first slot.

use std::collections::BTreeMap;
use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use super::xen::{Mem, World, BACK, BACK_DOMID, FRONT, FRONT_DOMID};
use crate::wire::*;
use crate::xenbus::{parse_u32, XenbusState};

mod rx;
mod tx;

pub use tx::{gso_segment, TxPacket};

/// What the fake backend advertises.
#[derive(Clone, Debug)]
pub struct BackendSetup {
    /// `(key, value)` written into the backend directory at creation.
    pub features: Vec<(&'static str, &'static str)>,
    /// Steps before the backend leaves Initialising for InitWait (hotplug).
    pub hotplug_delay: u32,
    /// Steps between seeing frontend Connected and writing Connected.
    pub connect_delay: u32,
    /// `mtu` node in the frontend directory, if any.
    pub mtu: Option<&'static str>,
    pub mac: &'static str,
}

impl Default for BackendSetup {
    /// What Debian's Linux netback writes.
    fn default() -> Self {
        BackendSetup {
            features: vec![
                ("feature-sg", "1"),
                ("feature-gso-tcpv4", "1"),
                ("feature-gso-tcpv6", "1"),
                ("feature-ipv6-csum-offload", "1"),
                ("feature-rx-copy", "1"),
                ("feature-rx-flip", "0"),
                ("feature-multicast-control", "1"),
                ("feature-dynamic-multicast-control", "1"),
                ("feature-split-event-channels", "1"),
                ("multi-queue-max-queues", "4"),
                ("feature-ctrl-ring", "1"),
            ],
            hotplug_delay: 0,
            connect_delay: 0,
            mtu: None,
            mac: "00:16:3e:12:34:56",
        }
    }
}

struct BackConn {
    tx: Mem,
    rx: Mem,
    tx_gref: u32,
    rx_gref: u32,
    port: u32,
    tx_req_cons: u32,
    tx_rsp_prod_pvt: u32,
    rx_req_cons: u32,
    rx_rsp_prod_pvt: u32,
}

fn rd32(m: &Mem, off: usize) -> u32 {
    u32::from_le_bytes(m.borrow()[off..off + 4].try_into().unwrap())
}
fn wr32(m: &Mem, off: usize, v: u32) {
    m.borrow_mut()[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// A fake Linux netback.
pub struct FakeNetback {
    pub world: World,
    pub state: XenbusState,
    pub setup: BackendSetup,
    delay: u32,
    conn: Option<BackConn>,
    /// Xenstore `online`: false after a detach, the dirs vanish once Closed.
    pub online: bool,
    /// When the backend refused to connect, why.
    pub fatal: Option<String>,
    /// Keys the frontend had written when we connected.
    pub seen_keys: BTreeMap<String, String>,
    /// What the frontend negotiated (read at connect).
    pub fe: FrontendOffload,
    /// GSO packets from the frontend: segment them (like Linux forwarding
    /// to a device without TSO) or deliver them whole.
    pub gso_delivery: GsoDelivery,
    /// Answer a multi-slot packet's continuation slots before its first
    /// (netback releases slots as the stack lets go of their pages).
    pub tx_frags_first: bool,
    /// What went through, for assertions.
    pub seen: BackSeen,
}

/// The offload keys the frontend wrote, as netback reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendOffload {
    pub sg: bool,
    pub gso_tcpv4: bool,
    /// IPv4 checksum offload (`feature-no-csum-offload` absent or 0).
    pub csum: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GsoDelivery {
    #[default]
    Segment,
    Intact,
}

/// Counters of the fake backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackSeen {
    pub tx_packets: u64,
    pub tx_multi_slot: u64,
    pub tx_gso: u64,
    pub tx_csum_blank: u64,
    /// Largest TX packet, and most slots in one.
    pub tx_max_len: usize,
    pub tx_max_slots: usize,
    /// Segments made from GSO packets.
    pub tx_segments: u64,
    pub rx_packets: u64,
    pub rx_multi_slot: u64,
    pub rx_gso: u64,
}

impl FakeNetback {
    /// Create the vif: frontend and backend directories as the toolstack would.
    pub fn new(world: &World, setup: BackendSetup) -> Self {
        world.xs_set(&format!("{FRONT}/backend"), BACK);
        world.xs_set(&format!("{FRONT}/backend-id"), &BACK_DOMID.to_string());
        world.xs_set(&format!("{FRONT}/mac"), setup.mac);
        world.xs_set(&format!("{FRONT}/handle"), "0");
        world.xs_set(&format!("{FRONT}/state"), "1");
        if let Some(m) = setup.mtu {
            world.xs_set(&format!("{FRONT}/mtu"), m);
        }
        world.xs_set(&format!("{BACK}/frontend"), FRONT);
        world.xs_set(&format!("{BACK}/frontend-id"), &FRONT_DOMID.to_string());
        world.xs_set(&format!("{BACK}/mac"), setup.mac);
        world.xs_set(&format!("{BACK}/online"), "1");
        world.xs_set(&format!("{BACK}/state"), "1");
        for (k, v) in &setup.features {
            world.xs_set(&format!("{BACK}/{k}"), v);
        }
        FakeNetback {
            world: world.clone(),
            state: XenbusState::Initialising,
            delay: setup.hotplug_delay,
            setup,
            conn: None,
            online: true,
            fatal: None,
            seen_keys: BTreeMap::new(),
            fe: FrontendOffload::default(),
            gso_delivery: GsoDelivery::Segment,
            tx_frags_first: false,
            seen: BackSeen::default(),
        }
    }

    fn set_state(&mut self, s: XenbusState) {
        self.state = s;
        if self.world.xs_get(&format!("{BACK}/state")).is_some() || s != XenbusState::Closed {
            self.world.xs_set(&format!("{BACK}/state"), s.as_str());
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state == XenbusState::Connected && self.conn.is_some()
    }

    pub fn port(&self) -> u32 {
        self.conn.as_ref().expect("not connected").port
    }

    fn front_key(&self, k: &str) -> Option<u32> {
        self.world
            .xs_get(&format!("{FRONT}/{k}"))
            .as_deref()
            .and_then(parse_u32)
    }

    /// Like netback's `connect()`: read and check the frontend's keys, map
    /// the rings. On failure the backend goes Closing (`xenbus_dev_fatal`).
    fn connect(&mut self) -> Result<(), String> {
        for (k, v) in self.world.0.borrow().xs.range(format!("{FRONT}/")..) {
            if !k.starts_with(FRONT) {
                break;
            }
            self.seen_keys
                .insert(k[FRONT.len() + 1..].to_string(), v.clone());
        }
        if self.front_key("request-rx-copy") != Some(1) {
            return Err("request-rx-copy missing".into());
        }
        if self.front_key("feature-rx-notify") != Some(1) {
            return Err("feature-rx-notify missing".into());
        }
        // netback: can_sg, gso_mask, ip_csum = !feature-no-csum-offload.
        self.fe = FrontendOffload {
            sg: self.front_key("feature-sg") == Some(1),
            gso_tcpv4: self.front_key("feature-gso-tcpv4") == Some(1),
            csum: self.front_key("feature-no-csum-offload").unwrap_or(0) == 0,
        };
        let tx_gref = self.front_key("tx-ring-ref").ok_or("no tx-ring-ref")?;
        let rx_gref = self.front_key("rx-ring-ref").ok_or("no rx-ring-ref")?;
        let port = self.front_key("event-channel").ok_or("no event-channel")?;
        {
            let w = self.world.0.borrow();
            let p = w.ports.get(&port).ok_or("unknown port")?;
            if p.remote != BACK_DOMID || p.closed {
                return Err("port not bindable".into());
            }
        }
        let tx = self
            .world
            .map(tx_gref, BACK_DOMID)
            .ok_or("cannot map tx ring")?;
        let rx = self
            .world
            .map(rx_gref, BACK_DOMID)
            .ok_or("cannot map rx ring")?;
        // BACK_RING_ATTACH at the indexes the frontend initialised.
        let tx_start = rd32(&tx, RING_RSP_PROD);
        let rx_start = rd32(&rx, RING_RSP_PROD);
        self.conn = Some(BackConn {
            tx,
            rx,
            tx_gref,
            rx_gref,
            port,
            tx_req_cons: tx_start,
            tx_rsp_prod_pvt: tx_start,
            rx_req_cons: rx_start,
            rx_rsp_prod_pvt: rx_start,
        });
        Ok(())
    }

    fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            self.world.unmap(c.tx_gref);
            self.world.unmap(c.rx_gref);
        }
    }

    /// One reaction to xenstore, as netback's watches would do.
    pub fn step(&mut self) {
        use XenbusState::*;
        let fe = self.world.front_state();
        match self.state {
            Initialising => {
                if self.delay > 0 {
                    self.delay -= 1;
                } else {
                    self.set_state(InitWait);
                    self.delay = self.setup.connect_delay;
                }
            }
            InitWait => match fe {
                Some(Connected) => {
                    if self.delay > 0 {
                        self.delay -= 1;
                    } else {
                        match self.connect() {
                            Ok(()) => self.set_state(Connected),
                            Err(e) => {
                                self.fatal = Some(e);
                                self.set_state(Closing);
                            }
                        }
                    }
                }
                Some(Closing | Closed) => self.set_state(Closing),
                _ => {}
            },
            Connected => match fe {
                Some(Closing) => {
                    self.disconnect();
                    self.set_state(Closing);
                }
                Some(Closed) | None => {
                    self.disconnect();
                    self.set_state(Closed);
                    self.maybe_remove();
                }
                _ => {}
            },
            Closing => {
                if matches!(fe, Some(Closed) | None) {
                    self.disconnect();
                    self.set_state(Closed);
                    self.maybe_remove();
                }
            }
            Closed if fe == Some(Initialising) && self.online => {
                self.set_state(InitWait);
                self.delay = self.setup.connect_delay;
            }
            _ => {}
        }
    }

    fn maybe_remove(&mut self) {
        if !self.online {
            // libxl removes both directories once the backend is Closed.
            self.world.xs_rm_tree(BACK);
            self.world.xs_rm_tree(FRONT);
        }
    }

    /// `xl network-detach`: online=0, state=Closing, written by the
    /// toolstack; netback disconnects once the frontend answers Closed.
    pub fn detach(&mut self) {
        self.online = false;
        self.world.xs_set(&format!("{BACK}/online"), "0");
        self.state = XenbusState::Closing;
        self.world.xs_set(&format!("{BACK}/state"), "5");
    }

    /// The connection's ring state (rings serviced only while connected).
    fn c(&mut self) -> &mut BackConn {
        self.conn.as_mut().expect("backend not connected")
    }
}
