//! A xenstore client that talks to xenstored itself (its unix socket, or
//! the xenbus device: the same protocol) instead of running `xenstore-*`
//! and `xl` processes: under TCG each process costs tens to hundreds of
//! milliseconds, a request on an open connection about one. One request at
//! a time; every wait has a deadline, and a reply that is short, too long,
//! out of order or not what was asked is an error ([`XsError`]), never a
//! hang or a panic. After a protocol error or a timeout mid-message the
//! connection is unusable and says so.

mod domain;
mod link;
mod transaction;
pub mod wire;

#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod tests;

pub use domain::{domains_and_name_paths, domid_of, vm_path};
pub use transaction::Held;

use link::Link;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};
use wire::{Header, HEADER_LEN};

/// Where dom0's xenstored listens (XEN_RUN_STORED/socket), then the device
/// the kernel relays the same messages through.
const SOCKETS: [&str; 2] = ["/run/xenstored/socket", "/var/run/xenstored/socket"];
const DEVICE: &str = "/dev/xen/xenbus";

/// How long one request may wait for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests sent at once on one connection at most ([`Xs::batch`]):
/// xenstored bounds how many a connection may have outstanding.
const MAX_PIPELINE: usize = 16;

/// One request of a [`Xs::batch`].
#[derive(Debug, Clone, Copy)]
pub enum Req<'a> {
    Read(&'a str),
    Write(&'a str, &'a str),
    /// PATH's permissions as xenstore-chmod spells them: the owner first
    /// ("n0": dom0, nobody else by default), then grants ("r5").
    SetPerms(&'a str, &'a [&'a str]),
    /// PATH's children's names: in a batch's result, joined by NULs
    /// ([`entries`] splits them).
    Directory(&'a str),
    /// Watch PATH (and below), its events carrying TOKEN
    /// ([`Xs::wait_watch`]). xenstored also sends one event at once, so a
    /// waiter looks at the node after each.
    Watch(&'a str, &'a str),
    /// Start a transaction: its id is the result ([`Xs::transaction_after`]
    /// sends it with other requests).
    TransactionStart,
    /// End the request's transaction: commit it (`true`) or abort it.
    TransactionEnd(bool),
}

impl Req<'_> {
    /// (type, payload, what it is for errors); bad permissions never leave.
    fn message(&self) -> Result<(u32, Vec<u8>, String), XsError> {
        Ok(match *self {
            Req::Read(p) => (wire::XS_READ, wire::strings(&[p]), format!("read {p}")),
            Req::Directory(p) => (
                wire::XS_DIRECTORY,
                wire::strings(&[p]),
                format!("directory {p}"),
            ),
            Req::Write(p, v) => (
                wire::XS_WRITE,
                wire::write_payload(p, v),
                format!("write {p}"),
            ),
            Req::SetPerms(p, perms) => {
                let ok = !perms.is_empty()
                    && perms.iter().all(|q| {
                        let (kind, id) = q.split_at(q.len().min(1));
                        matches!(kind, "n" | "r" | "w" | "b")
                            && !id.is_empty()
                            && id.bytes().all(|b| b.is_ascii_digit())
                    });
                if !ok {
                    return Err(XsError::Protocol(format!("bad permissions {perms:?}")));
                }
                let mut parts = vec![p];
                parts.extend_from_slice(perms);
                (
                    wire::XS_SET_PERMS,
                    wire::strings(&parts),
                    format!("set permissions of {p}"),
                )
            }
            Req::Watch(p, token) => (
                wire::XS_WATCH,
                wire::strings(&[p, token]),
                format!("watch {p}"),
            ),
            Req::TransactionStart => (
                wire::XS_TRANSACTION_START,
                b"\0".to_vec(),
                "start a transaction".into(),
            ),
            Req::TransactionEnd(true) => (
                wire::XS_TRANSACTION_END,
                b"T\0".to_vec(),
                "commit a transaction".into(),
            ),
            Req::TransactionEnd(false) => (
                wire::XS_TRANSACTION_END,
                b"F\0".to_vec(),
                "abort a transaction".into(),
            ),
        })
    }
}

/// A transaction's id (0 is "none").
pub type Tx = u32;
pub const NO_TX: Tx = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XsError {
    /// xenstored refused a request: `err` is its errno name (ENOENT, EAGAIN...).
    Refused { what: String, err: String },
    /// No connection, or it broke or timed out.
    Io(String),
    /// xenstored sent something that is not a reply to what was asked.
    Protocol(String),
}

impl XsError {
    pub fn is(&self, errno: &str) -> bool {
        matches!(self, XsError::Refused { err, .. } if err == errno)
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Refused { what, err } => write!(f, "xenstore {what}: {err}"),
            XsError::Io(why) => write!(f, "xenstore: {why}"),
            XsError::Protocol(why) => write!(f, "xenstore: bad reply: {why}"),
        }
    }
}

impl From<wire::WireError> for XsError {
    fn from(e: wire::WireError) -> XsError {
        XsError::Protocol(e.to_string())
    }
}

/// The names a [`Req::Directory`] gave in a batch.
pub fn entries(joined: &str) -> Vec<String> {
    joined
        .split('\0')
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// One connection to xenstored.
pub struct Xs {
    link: Box<dyn Link>,
    next_req: u32,
    /// Watch events that arrived while a reply was awaited: (path, token).
    events: VecDeque<(String, String)>,
    timeout: Duration,
    /// Why the connection can no longer be used.
    broken: Option<String>,
    /// Requests a transaction's body left for its commit ([`Xs::at_commit`]).
    at_commit: Vec<(u32, Vec<u8>, String)>,
    /// The watches set on this connection: (path, token).
    watches: Vec<(String, String)>,
    /// Watches to remove with the next request ([`Xs::release_watches`]).
    released: Vec<(String, String)>,
    /// The transaction held open on this connection ([`Xs::hold`]).
    held: Option<Held>,
    /// Transactions to abort with the next request ([`Xs::abandon`]).
    abandoned: Vec<Tx>,
}

impl Xs {
    /// Connect to dom0's xenstored: XENSTORED_PATH (as libxenstore reads
    /// it: a socket, or the device) if set, else its usual places.
    pub fn open() -> Result<Xs, XsError> {
        if let Some(p) = std::env::var_os("XENSTORED_PATH").filter(|p| !p.is_empty()) {
            let p = std::path::PathBuf::from(p);
            return match std::os::unix::net::UnixStream::connect(&p) {
                Ok(sock) => Ok(Xs::over(Box::new(sock), REPLY_TIMEOUT)),
                Err(_) if p.to_str() == Some(DEVICE) => link::Device::open(DEVICE)
                    .map(|d| Xs::over(Box::new(d), REPLY_TIMEOUT))
                    .map_err(|e| XsError::Io(format!("cannot open {DEVICE}: {e}"))),
                Err(e) => Err(XsError::Io(format!(
                    "cannot reach xenstored at {} (XENSTORED_PATH): {e}",
                    p.display()
                ))),
            };
        }
        let mut why = Vec::new();
        for s in SOCKETS {
            match std::os::unix::net::UnixStream::connect(s) {
                Ok(sock) => return Ok(Xs::over(Box::new(sock), REPLY_TIMEOUT)),
                Err(e) => why.push(format!("{s}: {e}")),
            }
        }
        match link::Device::open(DEVICE) {
            Ok(dev) => Ok(Xs::over(Box::new(dev), REPLY_TIMEOUT)),
            Err(e) => {
                why.push(format!("{DEVICE}: {e}"));
                Err(XsError::Io(format!(
                    "cannot reach xenstored ({})",
                    why.join("; ")
                )))
            }
        }
    }

    fn over(link: Box<dyn Link>, timeout: Duration) -> Xs {
        Xs {
            link,
            next_req: 1,
            events: VecDeque::new(),
            timeout,
            broken: None,
            at_commit: Vec::new(),
            watches: Vec::new(),
            released: Vec::new(),
            held: None,
            abandoned: Vec::new(),
        }
    }

    /// Whether requests may still be sent (no broken stream).
    pub fn usable(&self) -> bool {
        self.broken.is_none()
    }

    /// Give up every watch set on this connection: they are removed, and
    /// their pending events dropped, in the round trip of the next request
    /// (no round trip of their own), so a connection kept for the next
    /// request (the daemon's, crate::serve) starts clean, with no watches
    /// growing in xenstored (which refuses a watch it already has).
    pub fn release_watches(&mut self) {
        let w = std::mem::take(&mut self.watches);
        self.released.extend(w);
    }

    /// Drop the events of TOKEN's watch received so far (the caller knows
    /// they are stale: its node cannot have changed before now).
    pub fn drop_events(&mut self, token: &str) {
        self.events.retain(|(_, t)| t != token);
    }

    /// Forget the oldest queued event of `token` (a watch's first, sent
    /// when it was set), keeping later ones.
    pub fn drop_first_event(&mut self, token: &str) {
        if let Some(k) = self.events.iter().position(|(_, t)| t == token) {
            self.events.remove(k);
        }
    }

    /// `e`, after marking the connection unusable unless xenstored merely
    /// refused (then the stream is still in step).
    fn broke(&mut self, e: XsError) -> XsError {
        if !matches!(e, XsError::Refused { .. }) {
            self.broken = Some(e.to_string());
        }
        e
    }

    fn fail<T>(&mut self, e: XsError) -> Result<T, XsError> {
        Err(self.broke(e))
    }

    /// Exactly `buf.len()` bytes. Waits until `first` for the first byte,
    /// then `self.timeout` for the rest: `Ok(false)` if nothing came by
    /// `first` (the stream is still whole).
    fn fill(&mut self, buf: &mut [u8], first: Instant) -> Result<bool, XsError> {
        let mut got = 0;
        let mut deadline = first;
        while got < buf.len() {
            match self.link.recv(&mut buf[got..], deadline) {
                Ok(0) => return Err(XsError::Io("xenstored closed the connection".into())),
                Ok(n) => {
                    if got == 0 {
                        deadline = deadline.max(Instant::now() + self.timeout);
                    }
                    got += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut && got == 0 => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(XsError::Io(format!(
                        "a message cut short: {got} of {} bytes, then nothing for {} ms",
                        buf.len(),
                        self.timeout.as_millis()
                    )))
                }
                Err(e) => return Err(XsError::Io(format!("reading: {e}"))),
            }
        }
        Ok(true)
    }

    /// The next message, if one starts by `until`.
    fn next_msg(&mut self, until: Instant) -> Result<Option<(Header, Vec<u8>)>, XsError> {
        if let Some(why) = &self.broken {
            return Err(XsError::Io(format!("connection unusable: {why}")));
        }
        let mut h = [0u8; HEADER_LEN];
        let got = match self.fill(&mut h, until) {
            Ok(got) => got,
            Err(e) => return self.fail(e),
        };
        if !got {
            return Ok(None);
        }
        let header = match Header::decode(&h) {
            Ok(h) => h,
            Err(e) => return self.fail(e.into()),
        };
        let mut payload = vec![0u8; header.len as usize];
        let now = Instant::now();
        match self.fill(&mut payload, now + self.timeout) {
            Ok(true) => Ok(Some((header, payload))),
            Ok(false) => {
                let e = XsError::Io(format!(
                    "a header promised {} bytes, none came in {} ms",
                    header.len,
                    self.timeout.as_millis()
                ));
                self.fail(e)
            }
            Err(e) => self.fail(e),
        }
    }

    /// Send one request and wait for its reply's payload; watch events
    /// that arrive meanwhile are kept for [`Xs::wait_watch`].
    fn request(&mut self, ty: u32, tx: Tx, payload: &[u8], what: &str) -> Result<Vec<u8>, XsError> {
        let mut replies = self.pipeline(tx, &[(ty, payload.to_vec(), what.to_string())])?;
        replies
            .pop()
            .unwrap_or_else(|| Err(XsError::Protocol(format!("{what}: no reply"))))
    }

    /// Send every request at once, then take their replies in order
    /// (xenstored answers a connection's requests in the order they came):
    /// one round trip's wait for all of them. Each request's reply payload,
    /// or its refusal; a broken stream or an unexpected reply fails the
    /// whole (and the connection).
    #[allow(clippy::type_complexity)]
    fn pipeline(
        &mut self,
        tx: Tx,
        reqs: &[(u32, Vec<u8>, String)],
    ) -> Result<Vec<Result<Vec<u8>, XsError>>, XsError> {
        let at: Vec<(Tx, &(u32, Vec<u8>, String))> = reqs.iter().map(|r| (tx, r)).collect();
        self.pipeline_at(&at, &mut || {})
    }

    /// [`Xs::pipeline`] with each request's own transaction id (a watch
    /// set, or a transaction started, with requests within another). Watches
    /// released by [`Xs::release_watches`] are removed first, and
    /// transactions abandoned ([`Xs::abandon`]) aborted, in the same round
    /// trip; their refusals (no such watch or transaction) are ignored.
    /// `meanwhile` runs once they are sent, before the first reply is read.
    #[allow(clippy::type_complexity)]
    fn pipeline_at(
        &mut self,
        reqs: &[(Tx, &(u32, Vec<u8>, String))],
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Vec<Result<Vec<u8>, XsError>>, XsError> {
        if let Some(why) = &self.broken {
            return Err(XsError::Io(format!("connection unusable: {why}")));
        }
        let released = std::mem::take(&mut self.released);
        let abandoned = std::mem::take(&mut self.abandoned);
        let unwatch: Vec<(Tx, (u32, Vec<u8>, String))> = abandoned
            .iter()
            .map(|tx| {
                let end = (
                    wire::XS_TRANSACTION_END,
                    b"F\0".to_vec(),
                    "abort a transaction".to_string(),
                );
                (*tx, end)
            })
            .chain(released.iter().map(|(p, t)| {
                let m = (
                    wire::XS_UNWATCH,
                    wire::strings(&[p, t]),
                    format!("unwatch {p}"),
                );
                (NO_TX, m)
            }))
            .collect();
        let all: Vec<(Tx, &(u32, Vec<u8>, String))> = unwatch
            .iter()
            .map(|(tx, m)| (*tx, m))
            .chain(reqs.iter().copied())
            .collect();
        let mut msg = Vec::new();
        let mut ids = Vec::with_capacity(all.len());
        for (tx, (ty, payload, what)) in &all {
            let req_id = self.next_req;
            self.next_req = self.next_req.wrapping_add(1).max(1);
            let m = match wire::encode(*ty, req_id, *tx, payload) {
                Ok(m) => m,
                Err(e) => {
                    // Nothing sent: the watches go with the next request.
                    self.released = released;
                    self.abandoned = abandoned;
                    return Err(XsError::Protocol(format!("{what}: {e}")));
                }
            };
            msg.extend_from_slice(&m);
            ids.push(req_id);
        }
        if let Err(e) = self.link.send(&msg) {
            let what = all.first().map_or("", |r| r.1 .2.as_str());
            return self.fail(XsError::Io(format!("{what}: sending: {e}")));
        }
        meanwhile();
        let mut out = Vec::with_capacity(reqs.len());
        for (k, ((_, (ty, _, what)), req_id)) in all.iter().zip(ids).enumerate() {
            let reply = self.reply(*ty, req_id, what)?;
            if k < unwatch.len() {
                // Refused (no such watch or transaction): nothing to end.
                if let Ok(p) = reply {
                    if let Err(e) = wire::expect_ok(&p) {
                        return self.fail(XsError::Protocol(format!("{what}: {e}")));
                    }
                }
                if k + 1 == unwatch.len() {
                    // Every event of those watches came before this reply:
                    // drop them, not the events of a watch set again below.
                    self.events
                        .retain(|(_, t)| !released.iter().any(|(_, r)| r == t));
                }
                continue;
            }
            out.push(reply);
        }
        Ok(out)
    }

    /// The reply to request `req_id` (of type `ty`): its payload, or
    /// xenstored's refusal (the inner error; the stream is still in step).
    fn reply(
        &mut self,
        ty: u32,
        req_id: u32,
        what: &str,
    ) -> Result<Result<Vec<u8>, XsError>, XsError> {
        let until = Instant::now() + self.timeout;
        loop {
            let Some((h, p)) = self.next_msg(until)? else {
                let e = XsError::Io(format!(
                    "{what}: no reply in {} ms",
                    self.timeout.as_millis()
                ));
                return self.fail(e);
            };
            if h.ty == wire::XS_WATCH_EVENT {
                match wire::watch_event(&p) {
                    Ok(ev) => self.events.push_back(ev),
                    Err(e) => return self.fail(e.into()),
                }
                continue;
            }
            if h.req_id != req_id {
                let e = XsError::Protocol(format!(
                    "{what}: a reply to request {} (this was {req_id})",
                    h.req_id
                ));
                return self.fail(e);
            }
            if h.ty == wire::XS_ERROR {
                return match wire::error_name(&p) {
                    Ok(err) => Ok(Err(XsError::Refused {
                        what: what.into(),
                        err,
                    })),
                    Err(e) => self.fail(e.into()),
                };
            }
            if h.ty != ty {
                let e = XsError::Protocol(format!(
                    "{what}: a reply of type {} to a request of type {ty}",
                    h.ty
                ));
                return self.fail(e);
            }
            return Ok(Ok(p));
        }
    }

    /// Several requests in one round trip ([`Req`]), in order: each read's
    /// value (`None`: no such node), `None` for the others. The first
    /// refusal other than a read's ENOENT is the error, once every reply
    /// is in (the connection stays usable).
    pub fn batch(&mut self, tx: Tx, reqs: &[Req<'_>]) -> Result<Vec<Option<String>>, XsError> {
        let at: Vec<(Tx, Req<'_>)> = reqs.iter().map(|r| (tx, *r)).collect();
        self.batch_at(&at)
    }

    /// [`Xs::batch`] with each request's own transaction id: e.g. a watch
    /// (outside any transaction) set in the round trip of reads within one.
    pub fn batch_at(&mut self, reqs: &[(Tx, Req<'_>)]) -> Result<Vec<Option<String>>, XsError> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut refused = None;
        for r in self.batch_each(reqs)? {
            match r {
                Ok(v) => out.push(v),
                Err(e) => {
                    refused.get_or_insert(e);
                    out.push(None);
                }
            }
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Each request's result: a read's value (`None`: ENOENT), a transaction
    /// id for [`Req::TransactionStart`], `None` for the others; or its
    /// refusal. In rounds of at most MAX_PIPELINE requests; an error of the
    /// stream fails the whole.
    #[allow(clippy::type_complexity)]
    pub fn batch_each(
        &mut self,
        reqs: &[(Tx, Req<'_>)],
    ) -> Result<Vec<Result<Option<String>, XsError>>, XsError> {
        self.batch_each_meanwhile(reqs, &mut || {})
    }

    /// [`Xs::batch_each`], running `meanwhile` once the first round's
    /// requests are sent, before their replies are read: local work that
    /// overlaps xenstored's (it does not run if nothing could be sent).
    #[allow(clippy::type_complexity)]
    pub fn batch_each_meanwhile(
        &mut self,
        reqs: &[(Tx, Req<'_>)],
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Vec<Result<Option<String>, XsError>>, XsError> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut first = Some(meanwhile);
        for chunk in reqs.chunks(MAX_PIPELINE) {
            let msgs = chunk
                .iter()
                .map(|(_, r)| r.message())
                .collect::<Result<Vec<_>, _>>()?;
            let at: Vec<(Tx, &(u32, Vec<u8>, String))> =
                chunk.iter().map(|(tx, _)| *tx).zip(&msgs).collect();
            let replies = match first.take() {
                Some(m) => self.pipeline_at(&at, m)?,
                None => self.pipeline_at(&at, &mut || {})?,
            };
            for (((_, req), (_, _, what)), reply) in chunk.iter().zip(&msgs).zip(replies) {
                let p = match (req, reply) {
                    (Req::Read(_), Err(e)) if e.is("ENOENT") => {
                        out.push(Ok(None));
                        continue;
                    }
                    (_, Err(e)) => {
                        out.push(Err(e));
                        continue;
                    }
                    (_, Ok(p)) => p,
                };
                let v = match req {
                    Req::Read(_) => Some(String::from_utf8_lossy(&p).into_owned()),
                    Req::Directory(_) => match wire::split_strings(&p) {
                        Ok(names) => Some(names.join("\0")),
                        Err(e) => return self.fail(XsError::Protocol(format!("{what}: {e}"))),
                    },
                    Req::TransactionStart => match wire::transaction_id(&p) {
                        Ok(tx) => Some(tx.to_string()),
                        Err(e) => return self.fail(e.into()),
                    },
                    _ => {
                        if let Err(e) = wire::expect_ok(&p) {
                            return self.fail(XsError::Protocol(format!("{what}: {e}")));
                        }
                        if let Req::Watch(path, token) = req {
                            self.watches.push((path.to_string(), token.to_string()));
                        }
                        None
                    }
                };
                out.push(Ok(v));
            }
        }
        Ok(out)
    }

    /// Every path's value (`None`: no such node), in one round trip.
    pub fn read_many(&mut self, tx: Tx, paths: &[&str]) -> Result<Vec<Option<String>>, XsError> {
        let reqs: Vec<Req<'_>> = paths.iter().map(|p| Req::Read(p)).collect();
        self.batch(tx, &reqs)
    }

    fn acked(&mut self, ty: u32, tx: Tx, payload: &[u8], what: &str) -> Result<(), XsError> {
        let p = self.request(ty, tx, payload, what)?;
        match wire::expect_ok(&p) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(XsError::Protocol(format!("{what}: {e}"))),
        }
    }

    /// PATH's value; `None` if there is no such node.
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Option<String>, XsError> {
        Ok(self.batch(tx, &[Req::Read(path)])?.pop().flatten())
    }

    /// PATH's children's names.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>, XsError> {
        let what = format!("directory {path}");
        let p = self.request(wire::XS_DIRECTORY, tx, &wire::strings(&[path]), &what)?;
        match wire::split_strings(&p) {
            Ok(v) => Ok(v),
            Err(e) => self.fail(XsError::Protocol(format!("{what}: {e}"))),
        }
    }

    pub fn write(&mut self, tx: Tx, path: &str, value: &str) -> Result<(), XsError> {
        self.batch(tx, &[Req::Write(path, value)]).map(drop)
    }

    /// Remove PATH and everything below.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        let what = format!("rm {path}");
        self.acked(wire::XS_RM, NO_TX, &wire::strings(&[path]), &what)
    }

    /// The path of the next event of TOKEN's watch; `None` if none came by
    /// `until`.
    pub fn wait_watch(&mut self, token: &str, until: Instant) -> Result<Option<String>, XsError> {
        loop {
            if let Some(i) = self.events.iter().position(|(_, t)| t == token) {
                return Ok(self.events.remove(i).map(|(path, _)| path));
            }
            let Some((h, p)) = self.next_msg(until)? else {
                return Ok(None);
            };
            if h.ty != wire::XS_WATCH_EVENT {
                let e = XsError::Protocol(format!(
                    "a message of type {} (request {}) while no request was waiting",
                    h.ty, h.req_id
                ));
                return self.fail(e);
            }
            match wire::watch_event(&p) {
                Ok(ev) => self.events.push_back(ev),
                Err(e) => return self.fail(e.into()),
            }
        }
    }
}
