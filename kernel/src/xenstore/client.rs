//! The xenstore client: one request at a time over the shared page, replies
//! checked against the request, watch events queued on the side.
//!
//! The client is synchronous on purpose. The guest talks to xenstore at boot
//! (read config, write the ready key) and then only listens for watch events,
//! which [`Xenstore::poll_watch`] collects without blocking. One outstanding
//! request keeps reply matching trivial and every wait bounded by a deadline;
//! the one exception, [`Xenstore::batch`] (`batch.rs`), sends several at once
//! where a round trip each would add up (netfront's handshake).

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::ring::{self, Corrupt, SharedPage};
use super::wire::{self, Errno, Header, MsgType, WatchEvent, WireError, HEADER_LEN};

#[path = "batch.rs"]
mod batch;
pub use batch::{Req, MAX_BATCH};

/// The xenstore event channel and the clock, as the client needs them.
pub trait Events {
    /// Signal xenstored (`EVTCHNOP_send` on the xenstore port). Called after
    /// every index update, as xenstore-ring.txt requires.
    fn notify(&mut self);

    /// Block until the xenstore port fires (or has fired since the last
    /// `wait`), or until `now_ns() >= deadline_ns`; `None` means no deadline,
    /// but the client always passes one. Early and spurious returns are fine:
    /// the client looks at the ring and the clock again after every return.
    /// What must not happen is missing an event raised after the client last
    /// looked, so clear the port's pending bit after waking, not before.
    fn wait(&mut self, deadline_ns: Option<u64>);

    /// Monotonic time in nanoseconds, the clock deadlines are given in.
    fn now_ns(&self) -> u64;
}

/// How long a request may wait for its reply, unless changed with
/// [`Xenstore::set_timeout_ns`]. Generous: xenstored in a busy dom0 can be
/// slow, and a timeout at boot ends the guest anyway.
pub const DEFAULT_TIMEOUT_NS: u64 = 5_000_000_000;
/// Distinct watch events kept between [`Xenstore::poll_watch`] calls.
pub const MAX_QUEUED_EVENTS: usize = 32;
/// Attempts [`Xenstore::transaction`] makes while xenstored says EAGAIN.
pub const MAX_TX_ATTEMPTS: u32 = 8;
/// Timed-out requests whose late replies are still recognised and dropped.
const MAX_ABANDONED: usize = 16;

/// A transaction id from `XS_TRANSACTION_START`; `TxId::NONE` is "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxId(pub u32);

impl TxId {
    pub const NONE: TxId = TxId(0);
}

/// The operation an error belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Directory,
    Rm,
    Watch,
    Unwatch,
    TransactionStart,
    TransactionEnd,
    PollWatch,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Directory => "directory",
            Op::Rm => "rm",
            Op::Watch => "watch",
            Op::Unwatch => "unwatch",
            Op::TransactionStart => "transaction start",
            Op::TransactionEnd => "transaction end",
            Op::PollWatch => "poll watch",
        })
    }
}

/// Why the connection can no longer be used. Once one of these happens the
/// byte stream has no trustworthy message boundary (or xenstored has left),
/// so every later call fails with the same reason instead of guessing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Ring indices that claim more than a ring's worth of data.
    Ring(Corrupt),
    /// A header whose length cannot be honoured.
    Framing(WireError),
    /// xenstored set the page's `error` field (`XENSTORE_ERROR_*`).
    Server(u32),
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Ring(c) => write!(
                f,
                "xenstore ring corrupt ({} prod {} cons {})",
                c.ring, c.prod, c.cons
            ),
            Broken::Framing(w) => write!(f, "stream lost: {w}"),
            Broken::Server(e) => write!(f, "xenstored closed the connection (error {e})"),
        }
    }
}

/// Everything a xenstore call can fail with. `Display` gives one line such as
/// `xenstore: read device/vif/0/mac: ENOENT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XsError {
    /// xenstored refused the request.
    Server { op: Op, path: String, errno: Errno },
    /// The reply broke the protocol. The connection stays usable: the bad
    /// message was well framed and has been consumed.
    Malformed {
        op: Op,
        path: String,
        why: WireError,
    },
    /// No reply before the deadline. A late reply will be recognised and
    /// dropped.
    Timeout { op: Op, path: String, after_ns: u64 },
    /// The request was refused before sending (bad path, too big).
    Invalid {
        op: Op,
        path: String,
        why: &'static str,
    },
    /// The connection is unusable; see [`Broken`].
    Broken { op: Op, path: String, why: Broken },
    /// [`Xenstore::transaction`] gave up after this many EAGAINs.
    Conflict { attempts: u32 },
}

impl XsError {
    /// The errno xenstored answered with, if it answered with one.
    pub fn errno(&self) -> Option<&Errno> {
        match self {
            XsError::Server { errno, .. } => Some(errno),
            _ => None,
        }
    }

    fn is_eagain(&self) -> bool {
        self.errno() == Some(&Errno::EAGAIN)
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, path) = match self {
            XsError::Server { op, path, .. }
            | XsError::Malformed { op, path, .. }
            | XsError::Timeout { op, path, .. }
            | XsError::Invalid { op, path, .. }
            | XsError::Broken { op, path, .. } => (op, path),
            XsError::Conflict { attempts } => {
                return write!(
                    f,
                    "xenstore: transaction: still EAGAIN after {attempts} attempts"
                );
            }
        };
        write!(f, "xenstore: {op}")?;
        if !path.is_empty() {
            write!(f, " {path}")?;
        }
        match self {
            XsError::Server { errno, .. } => write!(f, ": {errno}"),
            XsError::Malformed { why, .. } => write!(f, ": malformed reply: {why}"),
            XsError::Timeout { after_ns, .. } => {
                write!(f, ": no reply after {} ms", after_ns / 1_000_000)
            }
            XsError::Invalid { why, .. } => write!(f, ": {why}"),
            XsError::Broken { why, .. } => write!(f, ": {why}"),
            XsError::Conflict { .. } => Ok(()),
        }
    }
}

/// A xenstore connection over the page `P`, signalled through `E`.
pub struct Xenstore<P: SharedPage, E: Events> {
    page: P,
    events: E,
    timeout_ns: u64,
    next_req_id: u32,
    /// Request bytes not yet in the ring. Left non-empty between calls only
    /// when a timeout struck mid-send; they go out before anything else, or
    /// xenstored would read the next request as the tail of this one.
    tx: Vec<u8>,
    /// The header of the message being received, once all 16 bytes are in.
    rx_header: Option<Header>,
    /// Bytes of the header, then of the payload, received so far.
    rx: Vec<u8>,
    /// Requests given up on; their replies may still arrive and are dropped.
    abandoned: VecDeque<u32>,
    queued: VecDeque<WatchEvent>,
    events_lost: bool,
    broken: Option<Broken>,
}

impl<P: SharedPage, E: Events> Xenstore<P, E> {
    /// Takes over a connected page: xenstored and the guest may have used it
    /// before (a boot loader), so the indices are not assumed to be zero.
    pub fn new(page: P, events: E) -> Self {
        Xenstore {
            page,
            events,
            timeout_ns: DEFAULT_TIMEOUT_NS,
            next_req_id: 1,
            tx: Vec::new(),
            rx_header: None,
            rx: Vec::new(),
            abandoned: VecDeque::new(),
            queued: VecDeque::new(),
            events_lost: false,
            broken: None,
        }
    }

    pub fn set_timeout_ns(&mut self, timeout_ns: u64) {
        self.timeout_ns = timeout_ns;
    }

    pub fn read(&mut self, path: &str) -> Result<String, XsError> {
        self.read_in(TxId::NONE, path)
    }

    pub fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        self.write_in(TxId::NONE, path, value)
    }

    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.directory_in(TxId::NONE, path)
    }

    /// Removes `path` and everything under it; a missing `path` is not an
    /// error (but a missing parent is).
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.rm_in(TxId::NONE, path)
    }

    /// Registers a watch. xenstored fires it once straight away, so the first
    /// event arrives without any change.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.watch_op(Op::Watch, MsgType::Watch, path, token)
    }

    /// Removes a watch. Events it raised earlier may still be queued.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.watch_op(Op::Unwatch, MsgType::Unwatch, path, token)
    }

    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let op = Op::TransactionStart;
        let body = self.call(op, "", TxId::NONE, MsgType::TransactionStart, &[b"\0"])?;
        Ok(TxId(malformed(op, "", wire::decode_tx_id(&body))?))
    }

    /// Commits (`commit == true`) or discards the transaction. A commit that
    /// lost a race fails with EAGAIN ([`XsError::errno`]).
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        let op = Op::TransactionEnd;
        let flag: &[u8] = if commit { b"T\0" } else { b"F\0" };
        let body = self.call(op, "", tx, MsgType::TransactionEnd, &[flag])?;
        malformed(op, "", wire::decode_ack(&body))
    }

    /// Operations inside a transaction started with
    /// [`Xenstore::transaction_start`].
    pub fn in_transaction(&mut self, tx: TxId) -> Tx<'_, P, E> {
        Tx { xs: self, id: tx }
    }

    /// Runs `body` in a transaction and commits it, starting over while
    /// xenstored answers EAGAIN (from the commit or from inside `body`), at
    /// most [`MAX_TX_ATTEMPTS`] times. `body` may therefore run more than
    /// once, and only the result of the attempt that committed is returned.
    /// Any other error from `body` discards the transaction and is returned.
    pub fn transaction<T, F>(&mut self, mut body: F) -> Result<T, XsError>
    where
        F: FnMut(&mut Tx<'_, P, E>) -> Result<T, XsError>,
    {
        for _ in 0..MAX_TX_ATTEMPTS {
            let id = self.transaction_start()?;
            let err = match body(&mut self.in_transaction(id)) {
                Ok(value) => match self.transaction_end(id, true) {
                    Ok(()) => return Ok(value),
                    Err(e) => e,
                },
                Err(e) => {
                    // Discarding needs a working connection; after a timeout
                    // or breakage it would only wait for nothing again.
                    if !matches!(e, XsError::Timeout { .. } | XsError::Broken { .. }) {
                        let _ = self.transaction_end(id, false);
                    }
                    e
                }
            };
            if !err.is_eagain() {
                return Err(err);
            }
        }
        Err(XsError::Conflict {
            attempts: MAX_TX_ATTEMPTS,
        })
    }

    /// Returns the next watch event without blocking, after taking whatever
    /// xenstored has sent meanwhile off the ring. Call it when the xenstore
    /// port fires, until it returns `Ok(None)`.
    ///
    /// An error is reported before queued events; the events stay queued for
    /// the next call.
    pub fn poll_watch(&mut self) -> Result<Option<WatchEvent>, XsError> {
        let op = Op::PollWatch;
        if self.broken.is_none() {
            match self.pump() {
                Ok(None) => {}
                Ok(Some((h, _))) => {
                    let why = WireError::Unsolicited {
                        ty: h.ty,
                        req_id: h.req_id,
                    };
                    return Err(XsError::Malformed {
                        op,
                        path: String::new(),
                        why,
                    });
                }
                Err(why) => {
                    return Err(XsError::Broken {
                        op,
                        path: String::new(),
                        why,
                    })
                }
            }
        }
        if let Some(ev) = self.queued.pop_front() {
            return Ok(Some(ev));
        }
        match self.broken {
            Some(why) => Err(XsError::Broken {
                op,
                path: String::new(),
                why,
            }),
            None => Ok(None),
        }
    }

    /// Whether watch events were lost since the last call (the queue was full
    /// or an event was malformed), clearing the flag. After a loss, re-read
    /// every watched path, as if each watch had fired.
    pub fn take_events_lost(&mut self) -> bool {
        core::mem::take(&mut self.events_lost)
    }

    fn read_in(&mut self, tx: TxId, path: &str) -> Result<String, XsError> {
        let op = Op::Read;
        check_path(op, path)?;
        let body = self.call(op, path, tx, MsgType::Read, &[path.as_bytes(), b"\0"])?;
        malformed(op, path, wire::decode_value(&body))
    }

    fn write_in(&mut self, tx: TxId, path: &str, value: &str) -> Result<(), XsError> {
        let op = Op::Write;
        check_path(op, path)?;
        let body = self.call(
            op,
            path,
            tx,
            MsgType::Write,
            &[path.as_bytes(), b"\0", value.as_bytes()],
        )?;
        malformed(op, path, wire::decode_ack(&body))
    }

    fn directory_in(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        let op = Op::Directory;
        check_path(op, path)?;
        let body = self.call(op, path, tx, MsgType::Directory, &[path.as_bytes(), b"\0"])?;
        malformed(op, path, wire::decode_directory(&body))
    }

    fn rm_in(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        let op = Op::Rm;
        check_path(op, path)?;
        let body = self.call(op, path, tx, MsgType::Rm, &[path.as_bytes(), b"\0"])?;
        malformed(op, path, wire::decode_ack(&body))
    }

    fn watch_op(&mut self, op: Op, ty: MsgType, path: &str, token: &str) -> Result<(), XsError> {
        check_path(op, path)?;
        if token.as_bytes().contains(&0) {
            return Err(XsError::Invalid {
                op,
                path: path.into(),
                why: "NUL in watch token",
            });
        }
        let payload: [&[u8]; 4] = [path.as_bytes(), b"\0", token.as_bytes(), b"\0"];
        let body = self.call(op, path, TxId::NONE, ty, &payload)?;
        malformed(op, path, wire::decode_ack(&body))
    }

    /// Sends one request and waits for its reply, queueing watch events that
    /// arrive meanwhile. Returns the reply payload, already checked to be a
    /// non-error reply of type `ty` to this request.
    fn call(
        &mut self,
        op: Op,
        path: &str,
        tx: TxId,
        ty: MsgType,
        payload: &[&[u8]],
    ) -> Result<Vec<u8>, XsError> {
        let err_path = || String::from(path);
        if let Some(why) = self.broken {
            return Err(XsError::Broken {
                op,
                path: err_path(),
                why,
            });
        }
        let req_id = self.next_req_id;
        let Ok(msg) = wire::encode(ty, req_id, tx.0, payload) else {
            return Err(XsError::Invalid {
                op,
                path: err_path(),
                why: "request over 4096 bytes",
            });
        };
        self.next_req_id = req_id.wrapping_add(1);
        let deadline = self.events.now_ns().saturating_add(self.timeout_ns);
        // `Some` until the request is handed to `self.tx`, which waits for the
        // remains of an earlier, timed-out request to leave first.
        let mut unsent = Some(msg);
        loop {
            if self.tx.is_empty() {
                if let Some(m) = unsent.take() {
                    self.tx = m;
                }
            }
            match self.pump() {
                Err(why) => {
                    return Err(XsError::Broken {
                        op,
                        path: err_path(),
                        why,
                    })
                }
                Ok(Some((hdr, body))) => {
                    return match wire::check_reply(&hdr, &body, ty, req_id) {
                        Ok(Ok(_)) => Ok(body),
                        Ok(Err(errno)) => Err(XsError::Server {
                            op,
                            path: err_path(),
                            errno,
                        }),
                        Err(why) => {
                            if hdr.req_id != req_id && unsent.is_none() {
                                self.abandon(req_id);
                            }
                            Err(XsError::Malformed {
                                op,
                                path: err_path(),
                                why,
                            })
                        }
                    };
                }
                Ok(None) => {}
            }
            if self.events.now_ns() >= deadline {
                if unsent.is_none() {
                    self.abandon(req_id);
                }
                return Err(XsError::Timeout {
                    op,
                    path: err_path(),
                    after_ns: self.timeout_ns,
                });
            }
            self.events.wait(Some(deadline));
        }
    }

    fn abandon(&mut self, req_id: u32) {
        if self.abandoned.len() == MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(req_id);
    }

    /// Moves bytes both ways without blocking: sends what fits of `self.tx`,
    /// queues watch events, drops replies to abandoned requests, and returns
    /// the first other complete message. Any [`Broken`] sticks.
    fn pump(&mut self) -> Result<Option<(Header, Vec<u8>)>, Broken> {
        if let Some(why) = self.broken {
            return Err(why);
        }
        let result = self.pump_once();
        if let Err(why) = result {
            self.broken = Some(why);
        }
        result
    }

    fn pump_once(&mut self) -> Result<Option<(Header, Vec<u8>)>, Broken> {
        if !self.tx.is_empty() {
            let n = ring::produce(&self.page, ring::REQUESTS, &self.tx).map_err(Broken::Ring)?;
            if n > 0 {
                self.tx.drain(..n);
                self.events.notify();
            }
        }
        while let Some((hdr, body)) = self.receive()? {
            if hdr.ty == MsgType::WatchEvent as u32 {
                self.queue_event(&body);
            } else if let Some(i) = self.abandoned.iter().position(|&id| id == hdr.req_id) {
                self.abandoned.remove(i);
            } else {
                return Ok(Some((hdr, body)));
            }
        }
        if self.page.read_u32(ring::SERVER_FEATURES) & ring::FEATURE_ERROR != 0 {
            let error = self.page.read_u32(ring::ERROR);
            if error != 0 {
                return Err(Broken::Server(error));
            }
        }
        Ok(None)
    }

    /// Reassembles one message from the response ring, which may deliver it
    /// in pieces (a 4096-byte payload never fits the 1024-byte ring at once).
    /// Takes only the bytes of the current message, so nothing is buffered
    /// beyond one header plus [`wire::PAYLOAD_MAX`].
    fn receive(&mut self) -> Result<Option<(Header, Vec<u8>)>, Broken> {
        loop {
            let want = self.rx_header.map_or(HEADER_LEN, |h| h.len as usize);
            if self.rx.len() == want {
                match self.rx_header.take() {
                    Some(h) => return Ok(Some((h, core::mem::take(&mut self.rx)))),
                    None => {
                        let mut raw = [0u8; HEADER_LEN];
                        raw.copy_from_slice(&self.rx);
                        self.rx.clear();
                        self.rx_header = Some(Header::parse(&raw).map_err(Broken::Framing)?);
                        continue;
                    }
                }
            }
            let mut chunk = [0u8; ring::RING_SIZE as usize];
            let room = (want - self.rx.len()).min(chunk.len());
            let n = ring::consume(&self.page, ring::RESPONSES, &mut chunk[..room])
                .map_err(Broken::Ring)?;
            if n == 0 {
                return Ok(None);
            }
            self.rx.extend_from_slice(&chunk[..n]);
            // xenstored may be waiting for the space we just freed.
            self.events.notify();
        }
    }

    /// Duplicates are coalesced: a watch event only says "look again", so a
    /// second identical one adds nothing. A full queue or an undecodable
    /// event sets the lost flag instead.
    fn queue_event(&mut self, body: &[u8]) {
        match wire::decode_watch_event(body) {
            Ok(ev) if self.queued.contains(&ev) => {}
            Ok(ev) if self.queued.len() < MAX_QUEUED_EVENTS => self.queued.push_back(ev),
            _ => self.events_lost = true,
        }
    }
}

/// Operations inside one transaction; see [`Xenstore::transaction`].
pub struct Tx<'a, P: SharedPage, E: Events> {
    xs: &'a mut Xenstore<P, E>,
    id: TxId,
}

impl<P: SharedPage, E: Events> Tx<'_, P, E> {
    pub fn id(&self) -> TxId {
        self.id
    }

    pub fn read(&mut self, path: &str) -> Result<String, XsError> {
        self.xs.read_in(self.id, path)
    }

    pub fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        self.xs.write_in(self.id, path, value)
    }

    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.xs.directory_in(self.id, path)
    }

    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.xs.rm_in(self.id, path)
    }
}

/// xenstored refuses these anyway, but a NUL would also cut the path short
/// on the wire and turn the rest into the value.
fn check_path(op: Op, path: &str) -> Result<(), XsError> {
    let why = if path.is_empty() {
        "empty path"
    } else if path.as_bytes().contains(&0) {
        "NUL in path"
    } else {
        return Ok(());
    };
    Err(XsError::Invalid {
        op,
        path: path.into(),
        why,
    })
}

fn malformed<T>(op: Op, path: &str, r: Result<T, WireError>) -> Result<T, XsError> {
    r.map_err(|why| XsError::Malformed {
        op,
        path: path.into(),
        why,
    })
}
