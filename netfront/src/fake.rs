//! In-memory Xen for the host tests: pages, a grant table that knows which
//! grants the backend maps, event channels, a xenstore, and a fake netback
//! that follows Linux netback's xenbus state machine and services the rings
//! the way netback does (RX responses in the request's slot, grant copies
//! that check permissions), plus hooks to misbehave.
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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use crate::csum;
use crate::platform::{Error, GrantRef, Platform, Port, SharedPage, PAGE_SIZE};
use crate::ring::needs_notify;
use crate::wire::*;
use crate::xenbus::{parse_u32, XenbusState};

pub const FRONT_DOMID: u16 = 7;
pub const BACK_DOMID: u16 = 0;
pub const FRONT: &str = "/local/domain/7/device/vif/0";
pub const BACK: &str = "/local/domain/0/backend/vif/7/0";
pub const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];

type Mem = Rc<RefCell<Vec<u8>>>;

struct GrantEntry {
    mem: Mem,
    domid: u16,
    readonly: bool,
    mapped: u32,
}

#[derive(Default)]
struct PortEntry {
    remote: u16,
    pending: bool,
    kicks: u64,
    closed: bool,
}

#[derive(Default)]
pub struct WorldInner {
    pub xs: BTreeMap<String, String>,
    grants: BTreeMap<u32, GrantEntry>,
    next_gref: u32,
    pub grant_limit: Option<usize>,
    pub live_pages: usize,
    pub page_limit: Option<usize>,
    pub pages_allocated: u64,
    ports: BTreeMap<u32, PortEntry>,
    next_port: u32,
    pub xs_reads: u64,
    /// The next this-many frontend reads fail with `Error::Xenstore`.
    pub xs_fail_reads: u32,
    /// Reads of paths containing `.0` fail `.1` more times.
    pub xs_fail_path: Option<(String, u32)>,
    pub xs_writes: Vec<(String, String)>,
}

/// Shared handle to the fake hypervisor state.
#[derive(Clone, Default)]
pub struct World(pub Rc<RefCell<WorldInner>>);

impl World {
    pub fn new() -> Self {
        let w = World::default();
        w.0.borrow_mut().next_gref = 8; // like Linux: the first refs are reserved
        w.0.borrow_mut().next_port = 3;
        w
    }

    pub fn inner(&self) -> std::cell::RefMut<'_, WorldInner> {
        self.0.borrow_mut()
    }

    pub fn xs_get(&self, path: &str) -> Option<String> {
        self.0.borrow().xs.get(path).cloned()
    }

    pub fn xs_set(&self, path: &str, v: &str) {
        self.0
            .borrow_mut()
            .xs
            .insert(path.to_string(), v.to_string());
    }

    pub fn xs_rm_tree(&self, prefix: &str) {
        self.0
            .borrow_mut()
            .xs
            .retain(|k, _| !(k == prefix || k.starts_with(&format!("{prefix}/"))));
    }

    pub fn front_state(&self) -> Option<XenbusState> {
        self.xs_get(&format!("{FRONT}/state"))
            .as_deref()
            .and_then(parse_u32)
            .and_then(XenbusState::from_u32)
    }

    pub fn live_grants(&self) -> usize {
        self.0.borrow().grants.len()
    }

    pub fn live_pages(&self) -> usize {
        self.0.borrow().live_pages
    }

    pub fn open_ports(&self) -> usize {
        self.0.borrow().ports.values().filter(|p| !p.closed).count()
    }

    pub fn kicks(&self, port: u32) -> u64 {
        self.0.borrow().ports.get(&port).map_or(0, |p| p.kicks)
    }

    /// The backend side of a grant: the page, if `gref` is granted to `domid`
    /// (and writable when `write`).
    fn grant_mem(&self, gref: u32, domid: u16, write: bool) -> Option<Mem> {
        let w = self.0.borrow();
        let g = w.grants.get(&gref)?;
        if g.domid != domid || (write && g.readonly) {
            return None;
        }
        Some(g.mem.clone())
    }

    fn map(&self, gref: u32, domid: u16) -> Option<Mem> {
        let m = self.grant_mem(gref, domid, true)?;
        self.0.borrow_mut().grants.get_mut(&gref)?.mapped += 1;
        Some(m)
    }

    fn unmap(&self, gref: u32) {
        if let Some(g) = self.0.borrow_mut().grants.get_mut(&gref) {
            g.mapped = g.mapped.saturating_sub(1);
        }
    }

    /// Backend raising the frontend's event.
    fn send_to_front(&self, port: u32) {
        if let Some(p) = self.0.borrow_mut().ports.get_mut(&port) {
            if !p.closed {
                p.pending = true;
            }
        }
    }

    pub fn front_pending(&self, port: u32) -> bool {
        self.0.borrow().ports.get(&port).is_some_and(|p| p.pending)
    }
}

pub struct FakePage {
    mem: Mem,
}

impl SharedPage for FakePage {
    fn read(&self, off: usize, buf: &mut [u8]) {
        assert!(
            off + buf.len() <= PAGE_SIZE,
            "read out of page: {off}+{}",
            buf.len()
        );
        buf.copy_from_slice(&self.mem.borrow()[off..off + buf.len()]);
    }
    fn write(&self, off: usize, data: &[u8]) {
        assert!(
            off + data.len() <= PAGE_SIZE,
            "write out of page: {off}+{}",
            data.len()
        );
        self.mem.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }
    fn read_u32(&self, off: usize) -> u32 {
        assert!(off.is_multiple_of(4) && off + 4 <= PAGE_SIZE);
        u32::from_le_bytes(self.mem.borrow()[off..off + 4].try_into().unwrap())
    }
    fn write_u32(&self, off: usize, v: u32) {
        assert!(off.is_multiple_of(4) && off + 4 <= PAGE_SIZE);
        self.mem.borrow_mut()[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// The frontend's view: implements `Platform`.
pub struct FakePlatform {
    pub world: World,
}

fn abs(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/local/domain/{FRONT_DOMID}/{path}")
    }
}

impl Platform for FakePlatform {
    type Page = FakePage;

    fn alloc_page(&mut self) -> Result<FakePage, Error> {
        let mut w = self.world.0.borrow_mut();
        if w.page_limit.is_some_and(|l| w.live_pages >= l) {
            return Err(Error::NoMemory);
        }
        w.live_pages += 1;
        w.pages_allocated += 1;
        Ok(FakePage {
            mem: Rc::new(RefCell::new(vec![0u8; PAGE_SIZE])),
        })
    }

    fn free_page(&mut self, page: FakePage) {
        let mut w = self.world.0.borrow_mut();
        assert!(
            !w.grants.values().any(|g| Rc::ptr_eq(&g.mem, &page.mem)),
            "page freed while still granted"
        );
        w.live_pages -= 1;
    }

    fn grant(&mut self, page: &FakePage, domid: u16, readonly: bool) -> Result<GrantRef, Error> {
        let mut w = self.world.0.borrow_mut();
        if w.grant_limit.is_some_and(|l| w.grants.len() >= l) {
            return Err(Error::NoGrants);
        }
        let r = w.next_gref;
        w.next_gref += 1;
        w.grants.insert(
            r,
            GrantEntry {
                mem: page.mem.clone(),
                domid,
                readonly,
                mapped: 0,
            },
        );
        Ok(GrantRef(r))
    }

    fn end_grant(&mut self, gref: GrantRef) -> Result<(), Error> {
        let mut w = self.world.0.borrow_mut();
        match w.grants.get(&gref.0) {
            None => panic!("end_grant of unknown ref {}", gref.0),
            Some(g) if g.mapped > 0 => Err(Error::GrantInUse),
            Some(_) => {
                w.grants.remove(&gref.0);
                Ok(())
            }
        }
    }

    fn alloc_unbound(&mut self, remote: u16) -> Result<Port, Error> {
        let mut w = self.world.0.borrow_mut();
        let p = w.next_port;
        w.next_port += 1;
        w.ports.insert(
            p,
            PortEntry {
                remote,
                ..Default::default()
            },
        );
        Ok(Port(p))
    }

    fn close_port(&mut self, port: Port) {
        let mut w = self.world.0.borrow_mut();
        let p = w.ports.get_mut(&port.0).expect("close of unknown port");
        assert!(!p.closed, "port closed twice");
        p.closed = true;
    }

    fn notify(&mut self, port: Port) {
        let mut w = self.world.0.borrow_mut();
        let p = w.ports.get_mut(&port.0).expect("notify on unknown port");
        assert!(!p.closed, "notify on closed port");
        p.kicks += 1;
    }

    fn take_pending(&mut self, port: Port) -> bool {
        let mut w = self.world.0.borrow_mut();
        let p = w
            .ports
            .get_mut(&port.0)
            .expect("take_pending on unknown port");
        core::mem::take(&mut p.pending)
    }

    fn xs_read(&mut self, path: &str) -> Result<String, Error> {
        let mut w = self.world.0.borrow_mut();
        w.xs_reads += 1;
        if w.xs_fail_reads > 0 {
            w.xs_fail_reads -= 1;
            return Err(Error::Xenstore);
        }
        if let Some((needle, n)) = &mut w.xs_fail_path {
            if *n > 0 && path.contains(needle.as_str()) {
                *n -= 1;
                return Err(Error::Xenstore);
            }
        }
        w.xs.get(&abs(path)).cloned().ok_or(Error::XsNotFound)
    }

    fn xs_write(&mut self, path: &str, value: &str) -> Result<(), Error> {
        let mut w = self.world.0.borrow_mut();
        let p = abs(path);
        assert!(
            p.starts_with(FRONT),
            "frontend wrote outside its directory: {p}"
        );
        w.xs_writes.push((p.clone(), value.to_string()));
        w.xs.insert(p, value.to_string());
        Ok(())
    }
}

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

/// A TX packet as netback assembles it.
#[derive(Clone, Debug)]
pub struct TxPacket {
    pub first: TxRequest,
    /// The raw extra-info slots.
    pub extras: Vec<[u8; 8]>,
    pub gso: Option<GsoExtra>,
    /// The continuation data slots.
    pub frags: Vec<TxRequest>,
    pub data: Vec<u8>,
}

/// `tcp_gso_segment` for an Ethernet/IPv4/TCP frame: `mss`-byte segments,
/// headers copied, IPv4 total length, id (+1 per segment) and header
/// checksum redone, sequence numbers advanced, FIN and PSH only on the last
/// segment, CWR only on the first, full TCP checksums.
pub fn gso_segment(frame: &[u8], mss: usize) -> Vec<Vec<u8>> {
    let l4 = csum::ipv4_l4(frame).expect("gso packet is not IPv4 TCP");
    assert_eq!(l4.proto, csum::PROTO_TCP, "gso packet is not TCP");
    let thl = usize::from(frame[l4.start + 12] >> 4) * 4;
    let hdr = l4.start + thl;
    let payload = &frame[hdr..l4.start + l4.len];
    assert!(mss > 0);
    let seq0 = u32::from_be_bytes(frame[l4.start + 4..l4.start + 8].try_into().unwrap());
    let id0 = u16::from_be_bytes([frame[18], frame[19]]);
    let flags = frame[l4.start + 13];
    let n = payload.len().div_ceil(mss).max(1);
    let mut out = Vec::new();
    for (i, chunk) in payload.chunks(mss).enumerate().chain(
        // An empty payload still makes one segment.
        (payload.is_empty()).then_some((0, &payload[..0])),
    ) {
        let mut f = frame[..hdr].to_vec();
        f.extend_from_slice(chunk);
        let ip_total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&ip_total.to_be_bytes());
        f[18..20].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        f[24] = 0;
        f[25] = 0;
        let ihl = l4.start - 14;
        let c = ip_header_checksum(&f[14..14 + ihl]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let seq = seq0.wrapping_add((i * mss) as u32);
        f[l4.start + 4..l4.start + 8].copy_from_slice(&seq.to_be_bytes());
        let mut fl = flags;
        if i + 1 < n {
            fl &= !(0x01 | 0x08); // FIN, PSH
        }
        if i > 0 {
            fl &= !0x80; // CWR
        }
        f[l4.start + 13] = fl;
        csum::fill_ipv4_l4_checksum(&mut f).unwrap();
        out.push(f);
    }
    out
}

fn ip_header_checksum(h: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for c in h.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
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

    // -------------------------------------------------------------- RX side

    fn c(&mut self) -> &mut BackConn {
        self.conn.as_mut().expect("backend not connected")
    }

    /// RX requests posted by the frontend and not yet consumed.
    pub fn rx_requests_available(&mut self) -> u32 {
        let c = self.c();
        rd32(&c.rx, RING_REQ_PROD).wrapping_sub(c.rx_req_cons)
    }

    /// Consume one RX request (None if the frontend posted none).
    pub fn take_rx_request(&mut self) -> Option<RxRequest> {
        let c = self.c();
        let prod = rd32(&c.rx, RING_REQ_PROD);
        if prod == c.rx_req_cons {
            return None;
        }
        assert!(
            prod.wrapping_sub(c.rx_rsp_prod_pvt) <= RX_RING_SIZE as u32,
            "frontend overfilled the rx ring"
        );
        let off = rx_slot_offset(c.rx_req_cons);
        let raw: [u8; 8] = c.rx.borrow()[off..off + 8].try_into().unwrap();
        c.rx_req_cons = c.rx_req_cons.wrapping_add(1);
        Some(RxRequest::decode(&raw))
    }

    /// Write a raw 8-byte RX response in the next response slot.
    pub fn put_rx_raw(&mut self, raw: [u8; 8]) {
        let c = self.c();
        let off = rx_slot_offset(c.rx_rsp_prod_pvt);
        c.rx.borrow_mut()[off..off + 8].copy_from_slice(&raw);
        c.rx_rsp_prod_pvt = c.rx_rsp_prod_pvt.wrapping_add(1);
    }

    /// Grant-copy `data` into the frontend page behind `gref` at `off`.
    pub fn copy_to_grant(&mut self, gref: u32, off: usize, data: &[u8]) {
        let mem = self
            .world
            .grant_mem(gref, BACK_DOMID, true)
            .expect("rx gref not writable by backend");
        mem.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }

    /// Deliver one frame the way netback does (copy, response in the
    /// request's slot, offset 0). Not yet visible: call `push_rx`.
    pub fn send_frame_flags(&mut self, frame: &[u8], flags: u16) -> bool {
        let Some(req) = self.take_rx_request() else {
            return false;
        };
        self.copy_to_grant(req.gref, 0, frame);
        let rsp = RxResponse {
            id: req.id,
            offset: 0,
            flags,
            status: frame.len() as i16,
        };
        self.put_rx_raw(rsp.encode());
        true
    }

    pub fn send_frame(&mut self, frame: &[u8]) -> bool {
        self.send_frame_flags(frame, 0)
    }

    /// Deliver one packet the way `xenvif_rx_skb` does: data in full-page
    /// slots from offset 0, `NETRXF_more_data` on all but the last, a GSO
    /// extra after the first slot when `gso` (the MSS) is given, `flags`
    /// (checksum flags) on the first slot. With `NETRXF_csum_blank` the TCP
    /// or UDP checksum field is set to the pseudo-header sum, as a
    /// `CHECKSUM_PARTIAL` skb has it. Waits (returns false, consumes
    /// nothing) until enough requests are posted, like
    /// `xenvif_rx_ring_slots_available`. Not yet visible: call `push_rx`.
    pub fn send_packet(&mut self, frame: &[u8], gso: Option<u16>, flags: u16) -> bool {
        let nslots = frame.len().div_ceil(PAGE_SIZE).max(1);
        let needed = nslots + usize::from(gso.is_some());
        if (self.rx_requests_available() as usize) < needed {
            return false;
        }
        assert!(
            nslots == 1 || self.fe.sg,
            "multi-slot rx without feature-sg"
        );
        assert!(
            gso.is_none() || self.fe.gso_tcpv4,
            "gso rx without feature-gso-tcpv4"
        );
        assert!(
            flags & NETRXF_CSUM_BLANK == 0 || self.fe.csum,
            "csum_blank rx with feature-no-csum-offload"
        );
        let mut frame = frame.to_vec();
        if flags & NETRXF_CSUM_BLANK != 0 {
            let l4 = csum::ipv4_l4(&frame).expect("csum_blank on a frame that is not TCP/UDP");
            frame[l4.csum_at..l4.csum_at + 2].copy_from_slice(&l4.pseudo.to_be_bytes());
        }
        for (i, chunk) in frame.chunks(PAGE_SIZE).enumerate() {
            let req = self.take_rx_request().unwrap();
            self.copy_to_grant(req.gref, 0, chunk);
            let mut f = 0;
            if i == 0 {
                f |= flags;
                if gso.is_some() {
                    f |= NETRXF_EXTRA_INFO;
                }
            }
            if i + 1 < nslots {
                f |= NETRXF_MORE_DATA;
            }
            let rsp = RxResponse {
                id: req.id,
                offset: 0,
                flags: f,
                status: chunk.len() as i16,
            };
            self.put_rx_raw(rsp.encode());
            if let (0, Some(mss)) = (i, gso) {
                let _ = self.take_rx_request().unwrap();
                self.put_rx_raw(GsoExtra::tcpv4(mss).encode());
            }
        }
        self.seen.rx_packets += 1;
        self.seen.rx_multi_slot += u64::from(nslots > 1);
        self.seen.rx_gso += u64::from(gso.is_some());
        true
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY` on the RX ring.
    pub fn push_rx(&mut self) -> bool {
        let world = self.world.clone();
        let c = self.c();
        let old = rd32(&c.rx, RING_RSP_PROD);
        let new = c.rx_rsp_prod_pvt;
        wr32(&c.rx, RING_RSP_PROD, new);
        let notify = needs_notify(old, new, rd32(&c.rx, RING_RSP_EVENT));
        if notify {
            world.send_to_front(c.port);
        }
        notify
    }

    /// Overwrite the RX `rsp_prod` directly (misbehaviour).
    pub fn set_rx_rsp_prod(&mut self, v: u32) {
        let c = self.c();
        wr32(&c.rx, RING_RSP_PROD, v);
    }

    pub fn rx_rsp_prod_pvt(&mut self) -> u32 {
        self.c().rx_rsp_prod_pvt
    }

    /// The frontend's RX `req_event` ... and ours to set, as netback does when
    /// it runs out of requests (`req_event = req_cons + 1`).
    pub fn arm_rx_req_event(&mut self) {
        let c = self.c();
        wr32(&c.rx, RING_REQ_EVENT, c.rx_req_cons.wrapping_add(1));
    }

    // -------------------------------------------------------------- TX side

    /// Grant-copy TX bytes out of a frontend page, checking that it is
    /// granted to us read-only and that the slot stays inside its page.
    fn tx_bytes(world: &World, req: &TxRequest, len: usize) -> Vec<u8> {
        assert!(
            req.offset as usize + len <= PAGE_SIZE,
            "tx request crosses the page: offset {} size {len}",
            req.offset
        );
        let mem = world
            .grant_mem(req.gref, BACK_DOMID, false)
            .expect("tx gref not granted to backend");
        {
            let w = world.0.borrow();
            assert!(w.grants[&req.gref].readonly, "tx page granted writable");
        }
        let v = mem.borrow()[req.offset as usize..][..len].to_vec();
        v
    }

    /// Consume every pending TX packet (all its slots), checking it the way
    /// netback would: anything netback would drop or treat as fatal fails
    /// the test.
    pub fn take_tx_packets(&mut self) -> Vec<TxPacket> {
        let world = self.world.clone();
        let fe = self.fe;
        let seen = &mut self.seen;
        let c = self.conn.as_mut().expect("backend not connected");
        let mut out = Vec::new();
        let prod = rd32(&c.tx, RING_REQ_PROD);
        assert!(
            prod.wrapping_sub(c.tx_rsp_prod_pvt) <= TX_RING_SIZE as u32,
            "frontend overfilled the tx ring"
        );
        let next = |c: &mut BackConn| -> [u8; 12] {
            assert!(c.tx_req_cons != prod, "tx packet continues past req_prod");
            let off = tx_slot_offset(c.tx_req_cons);
            c.tx_req_cons = c.tx_req_cons.wrapping_add(1);
            c.tx.borrow()[off..off + 12].try_into().unwrap()
        };
        while c.tx_req_cons != prod {
            let first = TxRequest::decode(&next(c));
            if !fe.sg && !fe.csum {
                assert_eq!(first.flags, 0, "frontend sent tx flags");
            }
            let mut extras = Vec::new();
            let mut gso = None;
            if first.flags & NETTXF_EXTRA_INFO != 0 {
                loop {
                    let raw: [u8; 8] = next(c)[..8].try_into().unwrap();
                    let e = GsoExtra::decode(&raw);
                    assert!(
                        (1..=XEN_NETIF_EXTRA_TYPE_HASH).contains(&e.ty),
                        "invalid extra type {}",
                        e.ty
                    );
                    if e.ty == XEN_NETIF_EXTRA_TYPE_GSO {
                        assert!(fe.gso_tcpv4, "gso without feature-gso-tcpv4");
                        assert!(e.size > 0, "GSO size must not be zero");
                        assert_eq!(e.gso_type, XEN_NETIF_GSO_TYPE_TCPV4, "bad GSO type");
                        gso = Some(e);
                    }
                    extras.push(raw);
                    if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                        break;
                    }
                }
            }
            // xenvif_count_requests
            let mut frags = Vec::new();
            let mut remaining = first.size as usize;
            let mut more = first.flags & NETTXF_MORE_DATA != 0;
            while more {
                assert!(fe.sg, "multi-slot tx without feature-sg");
                assert!(
                    frags.len() < XEN_NETIF_NR_SLOTS_MIN,
                    "more than {XEN_NETIF_NR_SLOTS_MIN} slots"
                );
                let r = TxRequest::decode(&next(c));
                assert!(
                    r.size as usize <= remaining,
                    "slot size {} > remaining size {remaining}",
                    r.size
                );
                remaining -= r.size as usize;
                assert!(
                    r.offset as usize + r.size as usize <= PAGE_SIZE,
                    "cross page"
                );
                assert!(r.size > 0, "empty continuation slot");
                more = r.flags & NETTXF_MORE_DATA != 0;
                assert_eq!(
                    r.flags & !NETTXF_MORE_DATA,
                    0,
                    "flags on a continuation slot"
                );
                frags.push(r);
            }
            assert!(first.size >= 14, "runt tx frame");
            assert!(remaining > 0, "empty first slot");
            let mut data = Self::tx_bytes(&world, &first, remaining);
            for r in &frags {
                data.extend(Self::tx_bytes(&world, r, r.size as usize));
            }
            assert_eq!(data.len(), first.size as usize);
            // Checksum offload: checksum_setup/skb_checksum_setup.
            let blank = first.flags & NETTXF_CSUM_BLANK != 0;
            if first.flags & (NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED) != 0 {
                assert!(fe.csum, "checksum flags with feature-no-csum-offload=1");
            }
            if blank {
                assert!(
                    first.flags & NETTXF_DATA_VALIDATED != 0,
                    "csum_blank without data_validated"
                );
                let l4 = csum::ipv4_l4(&data).expect("csum_blank on a non TCP/UDP frame");
                let field = u16::from_be_bytes([data[l4.csum_at], data[l4.csum_at + 1]]);
                assert_eq!(field, l4.pseudo, "csum_blank without the pseudo-header sum");
                seen.tx_csum_blank += 1;
            }
            if gso.is_some() {
                assert!(
                    blank,
                    "gso packet without csum_blank (netback would fix it up)"
                );
                assert_eq!(csum::ipv4_l4(&data).unwrap().proto, csum::PROTO_TCP);
                seen.tx_gso += 1;
            }
            seen.tx_packets += 1;
            seen.tx_multi_slot += u64::from(!frags.is_empty());
            seen.tx_max_len = seen.tx_max_len.max(data.len());
            seen.tx_max_slots = seen.tx_max_slots.max(1 + frags.len());
            out.push(TxPacket {
                first,
                extras,
                gso,
                frags,
                data,
            });
        }
        // RING_FINAL_CHECK_FOR_REQUESTS: ask to be kicked for the next one.
        wr32(&c.tx, RING_REQ_EVENT, c.tx_req_cons.wrapping_add(1));
        out
    }

    /// Consume every pending TX packet, returning its first request with
    /// the packet's bytes.
    pub fn take_tx(&mut self) -> Vec<(TxRequest, Vec<u8>)> {
        self.take_tx_packets()
            .into_iter()
            .map(|p| (p.first, p.data))
            .collect()
    }

    /// Answer a packet like netback: its first slot (followed by a NULL per
    /// extra) and every continuation slot, with `status`.
    pub fn answer_tx(&mut self, p: &TxPacket, status: i16) {
        let head = |be: &mut Self| {
            be.put_tx_response(p.first.id, status);
            for _ in &p.extras {
                // make_tx_response: only the status of an extra's slot is
                // written; its id bytes stay what the frontend put there.
                be.put_tx_null();
            }
        };
        if !self.tx_frags_first {
            head(self);
        }
        for r in &p.frags {
            self.put_tx_response(r.id, status);
        }
        if self.tx_frags_first {
            head(self);
        }
    }

    /// `RING_GET_RESPONSE(..)->status = XEN_NETIF_RSP_NULL` for an extra's slot.
    pub fn put_tx_null(&mut self) {
        let c = self.c();
        let off = tx_slot_offset(c.tx_rsp_prod_pvt);
        c.tx.borrow_mut()[off + 2..off + 4].copy_from_slice(&NETIF_RSP_NULL.to_le_bytes());
        c.tx_rsp_prod_pvt = c.tx_rsp_prod_pvt.wrapping_add(1);
    }

    /// Write a TX response (id, status) in the next response slot.
    pub fn put_tx_response(&mut self, id: u16, status: i16) {
        let c = self.c();
        let off = tx_slot_offset(c.tx_rsp_prod_pvt);
        c.tx.borrow_mut()[off..off + 4].copy_from_slice(&TxResponse { id, status }.encode());
        c.tx_rsp_prod_pvt = c.tx_rsp_prod_pvt.wrapping_add(1);
    }

    pub fn push_tx(&mut self) -> bool {
        let world = self.world.clone();
        let c = self.c();
        let old = rd32(&c.tx, RING_RSP_PROD);
        let new = c.tx_rsp_prod_pvt;
        wr32(&c.tx, RING_RSP_PROD, new);
        let notify = needs_notify(old, new, rd32(&c.tx, RING_RSP_EVENT));
        if notify {
            world.send_to_front(c.port);
        }
        notify
    }

    pub fn set_tx_rsp_prod(&mut self, v: u32) {
        let c = self.c();
        wr32(&c.tx, RING_RSP_PROD, v);
    }

    /// Take every TX packet, answer OKAY, push. Returns the frames as a
    /// peer on the bridge sees them: checksums completed, GSO packets
    /// segmented (or whole, per `gso_delivery`).
    pub fn service_tx(&mut self) -> Vec<Vec<u8>> {
        let pkts = self.take_tx_packets();
        for p in &pkts {
            self.answer_tx(p, NETIF_RSP_OKAY);
        }
        if !pkts.is_empty() {
            self.push_tx();
        }
        let mut out = Vec::new();
        for mut p in pkts {
            match p.gso {
                Some(g) if self.gso_delivery == GsoDelivery::Segment => {
                    let segs = gso_segment(&p.data, g.size as usize);
                    self.seen.tx_segments += segs.len() as u64;
                    out.extend(segs);
                }
                _ => {
                    if p.first.flags & NETTXF_CSUM_BLANK != 0 {
                        csum::fill_ipv4_l4_checksum(&mut p.data).unwrap();
                    }
                    out.push(p.data);
                }
            }
        }
        out
    }
}
