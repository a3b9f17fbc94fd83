//! In-memory Xen for the host tests: pages, a grant table that knows which
//! grants the backend maps, event channels, a xenstore, and a fake netback
//! that follows Linux netback's xenbus state machine and services the rings
//! the way netback does (RX responses in the request's slot, grant copies
//! that check permissions), plus hooks to misbehave.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

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

    /// Consume every pending TX request, returning it with the bytes it
    /// points at (grant-copied out, checking the grant).
    pub fn take_tx(&mut self) -> Vec<(TxRequest, Vec<u8>)> {
        let world = self.world.clone();
        let c = self.c();
        let mut out = Vec::new();
        let prod = rd32(&c.tx, RING_REQ_PROD);
        assert!(
            prod.wrapping_sub(c.tx_rsp_prod_pvt) <= TX_RING_SIZE as u32,
            "frontend overfilled the tx ring"
        );
        while c.tx_req_cons != prod {
            let off = tx_slot_offset(c.tx_req_cons);
            let raw: [u8; 12] = c.tx.borrow()[off..off + 12].try_into().unwrap();
            c.tx_req_cons = c.tx_req_cons.wrapping_add(1);
            let req = TxRequest::decode(&raw);
            assert_eq!(req.flags, 0, "frontend sent tx flags");
            assert!(
                req.offset as usize + req.size as usize <= PAGE_SIZE,
                "tx request crosses the page"
            );
            assert!(req.size >= 14, "runt tx frame");
            let mem = world
                .grant_mem(req.gref, BACK_DOMID, false)
                .expect("tx gref not granted to backend");
            {
                let w = world.0.borrow();
                assert!(w.grants[&req.gref].readonly, "tx page granted writable");
            }
            let data = mem.borrow()[req.offset as usize..][..req.size as usize].to_vec();
            out.push((req, data));
        }
        // RING_FINAL_CHECK_FOR_REQUESTS: ask to be kicked for the next one.
        wr32(&c.tx, RING_REQ_EVENT, c.tx_req_cons.wrapping_add(1));
        out
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

    /// Take every TX frame, answer OKAY, push. Returns the frames.
    pub fn service_tx(&mut self) -> Vec<Vec<u8>> {
        let reqs = self.take_tx();
        for (r, _) in &reqs {
            self.put_tx_response(r.id, NETIF_RSP_OKAY);
        }
        if !reqs.is_empty() {
            self.push_tx();
        }
        reqs.into_iter().map(|(_, d)| d).collect()
    }
}
