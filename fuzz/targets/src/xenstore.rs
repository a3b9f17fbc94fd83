//! Target `xenstore`: the kernel's xenstore client against a xenstored that
//! lies. The fake xenstored of the kernel's tests (`xenstore::fake`, exposed
//! by the kernel's `hosted` feature) serves a real tree, and the input tells
//! it, between client calls, to rewrite its next reply, to send raw bytes
//! before it or unprompted, to stop answering or listening, or to refuse
//! commits. Property: every call returns (a value or an error), the client
//! never panics, and no call waits without end (a bound on the waits of one
//! call; the fake clock jumps to each deadline, so timeouts cost nothing).

use std::cell::RefCell;
use std::rc::Rc;

use kernel::xenstore::fake::{message, watch_event, FakeEvents, Server};
use kernel::xenstore::ring::testpage::TestPage;
use kernel::xenstore::{Events, Xenstore, XsError};

use crate::input::Input;

/// More waits than this in one call is a hang: a real request needs a
/// handful, a timed-out one one more.
const MAX_WAITS_PER_CALL: u32 = 10_000;

const PATHS: [&str; 6] = [
    "device/vif/0/state",
    "control/shutdown",
    "a",
    "a/b",
    "/local/domain/1/name",
    "",
];

/// `FakeEvents` that counts the waits of the current call.
struct Bounded {
    inner: FakeEvents,
    waits: Rc<RefCell<u32>>,
}

impl Events for Bounded {
    fn notify(&mut self) {
        self.inner.notify();
    }
    fn wait(&mut self, deadline_ns: Option<u64>) {
        let mut w = self.waits.borrow_mut();
        *w += 1;
        assert!(
            *w <= MAX_WAITS_PER_CALL,
            "a xenstore call waited {} times: hang",
            *w
        );
        drop(w);
        self.inner.wait(deadline_ns);
    }
    fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }
}

type Client = Xenstore<TestPage, Bounded>;

/// A message-shaped chunk: a header with the input's type and ids, then the
/// payload; or plain bytes.
fn raw_message(inp: &mut Input) -> Vec<u8> {
    if inp.bool() {
        let ty = u32::from(inp.u8() % 24);
        let req_id = u32::from(inp.u8());
        let tx_id = u32::from(inp.u8() % 4);
        message(ty, req_id, tx_id, inp.chunk())
    } else {
        inp.chunk().to_vec()
    }
}

fn server_op(srv: &Rc<RefCell<Server>>, op: u8, inp: &mut Input) {
    let mut s = srv.borrow_mut();
    match op {
        0 => {
            // Replace the next reply wholesale.
            let bytes = raw_message(inp);
            s.mangle = Some(Box::new(move |_| bytes.clone()));
        }
        1 => {
            // Flip bits of the next reply at chosen positions.
            let edits: Vec<(usize, u8)> = (0..inp.u8() % 4)
                .map(|_| (usize::from(inp.u8()), inp.u8()))
                .collect();
            s.mangle = Some(Box::new(move |mut m| {
                for (at, x) in &edits {
                    if !m.is_empty() {
                        let i = at % m.len();
                        m[i] ^= x;
                    }
                }
                m
            }));
        }
        2 => {
            // Cut the next reply short, or pad it.
            let n = usize::from(inp.u8());
            let pad = inp.bool();
            s.mangle = Some(Box::new(move |mut m| {
                if pad {
                    m.extend(std::iter::repeat_n(0u8, n));
                } else {
                    m.truncate(n);
                }
                m
            }));
        }
        3 => {
            let m = raw_message(inp);
            s.before_reply.push(m);
        }
        4 => {
            let m = raw_message(inp);
            s.send_raw(&m);
        }
        5 => {
            let path = PATHS[usize::from(inp.u8()) % PATHS.len()];
            let token = ["t", "", "tok"][usize::from(inp.u8()) % 3];
            s.send_raw(&watch_event(path, token));
        }
        6 => s.deaf = !s.deaf,
        7 => s.mute = !s.mute,
        _ => s.eagain_commits = u32::from(inp.u8() % 12),
    }
}

fn client_op(xs: &mut Client, op: u8, inp: &mut Input) -> Result<(), XsError> {
    let path = PATHS[usize::from(inp.u8()) % PATHS.len()];
    match op {
        0 => xs.read(path).map(drop),
        1 => {
            let value = String::from_utf8_lossy(inp.chunk()).into_owned();
            xs.write(path, &value)
        }
        2 => xs.directory(path).map(drop),
        3 => xs.rm(path),
        4 => xs.watch(path, "t"),
        5 => xs.unwatch(path, "t"),
        6 => {
            while xs.poll_watch()?.is_some() {}
            let _ = xs.take_events_lost();
            Ok(())
        }
        7 => {
            let tx = xs.transaction_start()?;
            let r = xs.in_transaction(tx).read(path).map(drop);
            xs.transaction_end(tx, inp.bool())?;
            r
        }
        _ => xs.transaction(|tx| {
            let v = tx.read(path).unwrap_or_default();
            tx.write(path, &format!("{v}x"))
        }),
    }
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let page = TestPage::zeroed();
    let srv = Rc::new(RefCell::new(Server::new(page.clone())));
    srv.borrow_mut().tree.insert("a".into(), "1".into());
    let waits = Rc::new(RefCell::new(0));
    let mut xs = Xenstore::new(
        page,
        Bounded {
            inner: FakeEvents { srv: srv.clone() },
            waits: waits.clone(),
        },
    );
    if inp.bool() {
        xs.set_timeout_ns(1_000_000 * u64::from(inp.u8()));
    }
    let mut calls = 0;
    while !inp.is_empty() && calls < 64 {
        let op = inp.u8();
        if op & 0x80 != 0 {
            server_op(&srv, op & 0x0f, &mut inp);
        } else {
            *waits.borrow_mut() = 0;
            if let Err(e) = client_op(&mut xs, op % 9, &mut inp) {
                // Errors must describe themselves.
                let _ = e.to_string();
                let _ = e.errno();
            }
            calls += 1;
        }
    }
}
