//! An in-memory Xen for the host tests: pages, a grant table that knows
//! which grants the backend maps (and refuses to end those), event channels,
//! and a xenstore; [`FakePlatform`] is the frontend's [`Platform`] over it,
//! with hooks to make xenstore reads, grants and pages fail.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use crate::platform::{Error, GrantRef, HandshakeStep, Platform, Port, SharedPage, PAGE_SIZE};
use crate::xenbus::{parse_u32, XenbusState};

pub const FRONT_DOMID: u16 = 7;
pub const BACK_DOMID: u16 = 0;
pub const FRONT: &str = "/local/domain/7/device/vif/0";
pub const BACK: &str = "/local/domain/0/backend/vif/7/0";
pub const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];

/// A page's bytes, shared by the frontend's handle and the backend's mapping.
pub(super) type Mem = Rc<RefCell<Vec<u8>>>;

pub(super) struct GrantEntry {
    mem: Mem,
    domid: u16,
    pub(super) readonly: bool,
    mapped: u32,
}

#[derive(Default)]
pub(super) struct PortEntry {
    pub(super) remote: u16,
    pending: bool,
    kicks: u64,
    pub(super) closed: bool,
}

#[derive(Default)]
pub struct WorldInner {
    pub xs: BTreeMap<String, String>,
    pub(super) grants: BTreeMap<u32, GrantEntry>,
    next_gref: u32,
    pub grant_limit: Option<usize>,
    pub live_pages: usize,
    pub page_limit: Option<usize>,
    pub pages_allocated: u64,
    pub(super) ports: BTreeMap<u32, PortEntry>,
    next_port: u32,
    pub xs_reads: u64,
    /// The next this-many frontend reads fail with `Error::Xenstore`.
    pub xs_fail_reads: u32,
    /// Reads of paths containing `.0` fail `.1` more times.
    pub xs_fail_path: Option<(String, u32)>,
    pub xs_writes: Vec<(String, String)>,
    /// Every `handshake_step` call, in order.
    pub handshake_steps: Vec<HandshakeStep>,
    /// `xs_read_all` calls, and `xs_write_all` calls with their sizes.
    pub xs_read_batches: u32,
    pub xs_write_batches: Vec<usize>,
    /// The next this-many `xs_write_all` calls fail, writing nothing (a
    /// transaction that could not commit).
    pub xs_fail_write_all: u32,
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
    pub(super) fn grant_mem(&self, gref: u32, domid: u16, write: bool) -> Option<Mem> {
        let w = self.0.borrow();
        let g = w.grants.get(&gref)?;
        if g.domid != domid || (write && g.readonly) {
            return None;
        }
        Some(g.mem.clone())
    }

    pub(super) fn map(&self, gref: u32, domid: u16) -> Option<Mem> {
        let m = self.grant_mem(gref, domid, true)?;
        self.0.borrow_mut().grants.get_mut(&gref)?.mapped += 1;
        Some(m)
    }

    pub(super) fn unmap(&self, gref: u32) {
        if let Some(g) = self.0.borrow_mut().grants.get_mut(&gref) {
            g.mapped = g.mapped.saturating_sub(1);
        }
    }

    /// Backend raising the frontend's event.
    pub(super) fn send_to_front(&self, port: u32) {
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

    fn xs_read_all(&mut self, paths: &[&str]) -> Vec<Result<String, Error>> {
        self.world.0.borrow_mut().xs_read_batches += 1;
        paths.iter().map(|p| self.xs_read(p)).collect()
    }

    fn xs_write_all(&mut self, writes: &[(&str, &str)]) -> Result<(), Error> {
        {
            let mut w = self.world.0.borrow_mut();
            w.xs_write_batches.push(writes.len());
            if w.xs_fail_write_all > 0 {
                w.xs_fail_write_all -= 1;
                return Err(Error::Xenstore);
            }
        }
        writes.iter().try_for_each(|(p, v)| self.xs_write(p, v))
    }

    fn handshake_step(&mut self, step: HandshakeStep) {
        self.world.0.borrow_mut().handshake_steps.push(step);
    }
}
