//! A fake xenstored for host tests. It serves the other side of a
//! [`TestPage`] with an in-memory tree, and can be told to misbehave.
//!
//! It runs only inside [`FakeEvents::wait`] (or when a test calls
//! [`Server::step`]), standing in for the other domain doing its work while
//! the guest is blocked.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use super::client::{Events, Xenstore};
use super::ring::{self, testpage::TestPage, SharedPage};
use super::wire::{Header, MsgType, HEADER_LEN};

type Tree = BTreeMap<String, String>;
type Mangler = Box<dyn FnMut(Vec<u8>) -> Vec<u8>>;

pub struct Server {
    pub page: TestPage,
    pub tree: Tree,
    txs: BTreeMap<u32, Tree>,
    next_tx: u32,
    watches: Vec<(String, String)>,
    rx: Vec<u8>,
    out: VecDeque<u8>,
    /// Fake clock, in ns. Advances a little per productive step and jumps to
    /// the deadline when the client waits for nothing.
    pub now: u64,
    /// Stops taking requests off the ring (a hung xenstored).
    pub deaf: bool,
    /// Takes requests but never answers.
    pub mute: bool,
    /// Answers this many `XS_TRANSACTION_END T` with EAGAIN.
    pub eagain_commits: u32,
    /// Rewrites the next reply (header and payload bytes) before sending it.
    pub mangle: Option<Mangler>,
    /// Raw messages sent just before the next reply.
    pub before_reply: Vec<Vec<u8>>,
    /// Every request taken: (type, tx_id, payload).
    pub log: Vec<(u32, u32, Vec<u8>)>,
    pub waits: u32,
    pub notifies: u32,
}

pub fn message(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Header {
        ty,
        req_id,
        tx_id,
        len: payload.len() as u32,
    }
    .to_bytes()
    .to_vec();
    m.extend_from_slice(payload);
    m
}

pub fn watch_event(path: &str, token: &str) -> Vec<u8> {
    message(
        MsgType::WatchEvent as u32,
        0,
        0,
        format!("{path}\0{token}\0").as_bytes(),
    )
}

fn is_under(path: &str, top: &str) -> bool {
    path == top
        || path
            .strip_prefix(top)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("test client sent non-UTF-8")
}

impl Server {
    pub fn new(page: TestPage) -> Server {
        Server {
            page,
            tree: Tree::new(),
            txs: BTreeMap::new(),
            next_tx: 1,
            watches: Vec::new(),
            rx: Vec::new(),
            out: VecDeque::new(),
            now: 0,
            deaf: false,
            mute: false,
            eagain_commits: 0,
            mangle: None,
            before_reply: Vec::new(),
            log: Vec::new(),
            waits: 0,
            notifies: 0,
        }
    }

    /// Sends an unsolicited message (a watch event, or garbage) right away.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.out.extend(bytes);
        self.step();
    }

    /// Moves bytes both ways and serves complete requests. Returns whether
    /// anything moved.
    pub fn step(&mut self) -> bool {
        let mut progress = false;
        if !self.deaf {
            let mut buf = [0u8; 1024];
            loop {
                let n = ring::consume(&self.page, ring::REQUESTS, &mut buf)
                    .expect("fake: req ring corrupt");
                if n == 0 {
                    break;
                }
                progress = true;
                self.rx.extend_from_slice(&buf[..n]);
            }
            while self.rx.len() >= HEADER_LEN {
                let hdr = Header::parse(self.rx[..HEADER_LEN].try_into().unwrap())
                    .expect("fake: client sent over 4096");
                let end = HEADER_LEN + hdr.len as usize;
                if self.rx.len() < end {
                    break;
                }
                let payload = self.rx[HEADER_LEN..end].to_vec();
                self.rx.drain(..end);
                self.log.push((hdr.ty, hdr.tx_id, payload.clone()));
                self.serve(hdr, &payload);
            }
        }
        while !self.out.is_empty() {
            let (a, _) = self.out.as_slices();
            let n = ring::produce(&self.page, ring::RESPONSES, a).expect("fake: rsp ring corrupt");
            if n == 0 {
                break;
            }
            progress = true;
            self.out.drain(..n);
        }
        progress
    }

    fn reply(&mut self, hdr: Header, ty: MsgType, payload: &[u8]) {
        if self.mute {
            return;
        }
        for m in core::mem::take(&mut self.before_reply) {
            self.out.extend(m);
        }
        let mut m = message(ty as u32, hdr.req_id, hdr.tx_id, payload);
        if let Some(mut f) = self.mangle.take() {
            m = f(m);
        }
        self.out.extend(m);
    }

    fn ack(&mut self, hdr: Header) {
        self.reply(hdr, MsgType::from_u32(hdr.ty).unwrap(), b"OK\0");
    }

    fn error(&mut self, hdr: Header, errno: &str) {
        self.reply(hdr, MsgType::Error, format!("{errno}\0").as_bytes());
    }

    fn fire(&mut self, path: &str) {
        let hits: Vec<_> = self
            .watches
            .iter()
            .filter(|(w, _)| is_under(path, w))
            .cloned()
            .collect();
        for (_, token) in hits {
            self.out.extend(watch_event(path, &token));
        }
    }

    fn serve(&mut self, hdr: Header, payload: &[u8]) {
        let fields: Vec<String> = payload.split(|&b| b == 0).map(text).collect();
        let tx = hdr.tx_id;
        if tx != 0 && !self.txs.contains_key(&tx) && hdr.ty != MsgType::Watch as u32 {
            return self.error(hdr, "EINVAL");
        }
        let Some(ty) = MsgType::from_u32(hdr.ty) else {
            return self.error(hdr, "EINVAL");
        };
        let path = fields[0].clone();
        match ty {
            MsgType::Read => match self.store(tx).get(&path).cloned() {
                Some(v) => self.reply(hdr, ty, v.as_bytes()),
                None => self.error(hdr, "ENOENT"),
            },
            MsgType::Write => {
                // The value is everything after the first NUL, NULs included.
                let value = text(&payload[path.len() + 1..]);
                let mut parent = path.as_str();
                while let Some(i) = parent.rfind('/') {
                    parent = &parent[..i];
                    self.store(tx).entry(parent.into()).or_default();
                }
                self.store(tx).insert(path.clone(), value);
                self.ack(hdr);
                if tx == 0 {
                    self.fire(&path);
                }
            }
            MsgType::Directory => {
                if !self.store(tx).contains_key(&path) {
                    return self.error(hdr, "ENOENT");
                }
                let prefix = format!("{path}/");
                let mut list = Vec::new();
                for k in self.store(tx).keys() {
                    if let Some(name) = k.strip_prefix(&prefix).filter(|n| !n.contains('/')) {
                        list.extend_from_slice(name.as_bytes());
                        list.push(0);
                    }
                }
                self.reply(hdr, ty, &list);
            }
            MsgType::Rm => {
                self.store(tx).retain(|k, _| !is_under(k, &path));
                self.ack(hdr);
                if tx == 0 {
                    self.fire(&path);
                }
            }
            MsgType::Watch => {
                self.watches.push((path.clone(), fields[1].clone()));
                self.ack(hdr);
                self.out.extend(watch_event(&path, &fields[1]));
            }
            MsgType::Unwatch => {
                self.watches
                    .retain(|(p, t)| !(*p == path && *t == fields[1]));
                self.ack(hdr);
            }
            MsgType::TransactionStart => {
                let id = self.next_tx;
                self.next_tx += 1;
                self.txs.insert(id, self.tree.clone());
                self.reply(hdr, ty, format!("{id}\0").as_bytes());
            }
            MsgType::TransactionEnd => {
                let snapshot = self.txs.remove(&tx).unwrap();
                if path == "T" && self.eagain_commits > 0 {
                    self.eagain_commits -= 1;
                    return self.error(hdr, "EAGAIN");
                }
                if path == "T" {
                    self.tree = snapshot;
                }
                self.ack(hdr);
            }
            _ => self.error(hdr, "ENOSYS"),
        }
    }

    fn store(&mut self, tx: u32) -> &mut Tree {
        if tx == 0 {
            &mut self.tree
        } else {
            self.txs.get_mut(&tx).unwrap()
        }
    }
}

pub struct FakeEvents {
    pub srv: Rc<RefCell<Server>>,
}

impl Events for FakeEvents {
    fn notify(&mut self) {
        self.srv.borrow_mut().notifies += 1;
    }

    fn wait(&mut self, deadline_ns: Option<u64>) {
        let mut s = self.srv.borrow_mut();
        s.waits += 1;
        if s.step() {
            s.now += 1_000;
        } else {
            let deadline = deadline_ns.expect("wait without a deadline would hang");
            s.now = s.now.max(deadline);
        }
    }

    fn now_ns(&self) -> u64 {
        self.srv.borrow().now
    }
}

pub type Client = Xenstore<TestPage, FakeEvents>;

/// A client and its server over a fresh page whose four ring indices all
/// start at `start` (real rings need not start at 0).
pub fn setup_at(start: u32) -> (Client, Rc<RefCell<Server>>) {
    let page = TestPage::zeroed();
    for off in [
        ring::REQ_CONS,
        ring::REQ_PROD,
        ring::RSP_CONS,
        ring::RSP_PROD,
    ] {
        page.write_u32(off, start);
    }
    let srv = Rc::new(RefCell::new(Server::new(page.clone())));
    (Xenstore::new(page, FakeEvents { srv: srv.clone() }), srv)
}

pub fn setup() -> (Client, Rc<RefCell<Server>>) {
    setup_at(0)
}
