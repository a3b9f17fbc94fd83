//! Pipelined requests: a batch goes onto the ring all at once, then its
//! replies are collected, so it costs one round trip to xenstored instead of
//! one per request. xenstored answers one connection's requests in order,
//! one by one, so a batch means the same as the requests made one after the
//! other; only the waiting is shared.
//!
//! At boot every round trip is a sleep until dom0's xenstored gets the CPU
//! and answers; netfront's handshake reads and writes a dozen keys at each
//! step, and the guest was mostly waiting on those, not working.

use alloc::string::String;
use alloc::vec::Vec;

use super::{check_path, malformed, Events, Op, Tx, TxId, Xenstore, XsError, MAX_ABANDONED};
use crate::xenstore::ring::SharedPage;
use crate::xenstore::wire::{self, Header, MsgType, WireError};

/// The most requests one batch may hold: each unanswered one is abandoned
/// if the batch fails, and that many late replies are recognised and
/// dropped. (xenstored also limits outstanding requests per domain, to 20 in
/// Xen 4.17's C daemon.)
pub const MAX_BATCH: usize = MAX_ABANDONED;

/// One request of a [`Xenstore::batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Req<'a> {
    Read(&'a str),
    Write(&'a str, &'a str),
    Watch(&'a str, &'a str),
}

impl Req<'_> {
    fn op(&self) -> Op {
        match self {
            Req::Read(_) => Op::Read,
            Req::Write(..) => Op::Write,
            Req::Watch(..) => Op::Watch,
        }
    }

    fn path(&self) -> &str {
        match self {
            Req::Read(p) | Req::Write(p, _) | Req::Watch(p, _) => p,
        }
    }

    fn ty(&self) -> MsgType {
        match self {
            Req::Read(_) => MsgType::Read,
            Req::Write(..) => MsgType::Write,
            Req::Watch(..) => MsgType::Watch,
        }
    }

    /// The request as one message with id `req_id`.
    fn encode(&self, req_id: u32, tx: TxId) -> Result<Vec<u8>, XsError> {
        let (op, path) = (self.op(), self.path());
        check_path(op, path)?;
        let invalid = |why| XsError::Invalid {
            op,
            path: path.into(),
            why,
        };
        let encoded = match *self {
            Req::Read(p) => wire::encode(MsgType::Read, req_id, tx.0, &[p.as_bytes(), b"\0"]),
            Req::Write(p, v) => wire::encode(
                MsgType::Write,
                req_id,
                tx.0,
                &[p.as_bytes(), b"\0", v.as_bytes()],
            ),
            Req::Watch(p, token) => {
                if token.as_bytes().contains(&0) {
                    return Err(invalid("NUL in watch token"));
                }
                let parts: [&[u8]; 4] = [p.as_bytes(), b"\0", token.as_bytes(), b"\0"];
                // Watches are never part of a transaction.
                wire::encode(MsgType::Watch, req_id, 0, &parts)
            }
        };
        encoded.map_err(|_| invalid("request over 4096 bytes"))
    }

    /// This request's result from its reply: a read's value, "" otherwise.
    fn result(&self, hdr: &Header, body: &[u8], req_id: u32) -> Result<String, XsError> {
        let (op, path) = (self.op(), self.path());
        match wire::check_reply(hdr, body, self.ty(), req_id) {
            Err(why) => malformed(op, path, Err(why)),
            Ok(Err(errno)) => Err(XsError::Server {
                op,
                path: path.into(),
                errno,
            }),
            Ok(Ok(body)) => match self {
                Req::Read(_) => malformed(op, path, wire::decode_value(body)),
                Req::Write(..) | Req::Watch(..) => {
                    malformed(op, path, wire::decode_ack(body)).map(|()| String::new())
                }
            },
        }
    }
}

impl<P: SharedPage, E: Events> Xenstore<P, E> {
    /// Sends all of `reqs` (in transaction `tx`, or `TxId::NONE`) before
    /// waiting for any reply, then collects the replies: one round trip.
    ///
    /// The inner results are each request's own, in order: a read's value,
    /// `""` for a write or watch, or its error (e.g. ENOENT). The outer
    /// error is the batch's: an invalid request (then nothing is sent), more
    /// than [`MAX_BATCH`] requests, a broken connection, no reply before the
    /// deadline, or a reply to none of them; the requests not answered by
    /// then are abandoned (their late replies are dropped), as a single
    /// request's would be.
    pub fn batch(
        &mut self,
        tx: TxId,
        reqs: &[Req<'_>],
    ) -> Result<Vec<Result<String, XsError>>, XsError> {
        let (op0, path0) = reqs.first().map_or((Op::Write, ""), |r| (r.op(), r.path()));
        if reqs.len() > MAX_BATCH {
            return Err(XsError::Invalid {
                op: op0,
                path: path0.into(),
                why: "more requests than one batch may hold",
            });
        }
        if let Some(why) = self.broken {
            return Err(XsError::Broken {
                op: op0,
                path: path0.into(),
                why,
            });
        }
        let first_id = self.next_req_id;
        let id = |i: usize| first_id.wrapping_add(i as u32);
        let mut bytes = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            bytes.extend_from_slice(&r.encode(id(i), tx)?);
        }
        self.next_req_id = id(reqs.len());
        // After whatever a timed-out request left unsent: its remains must
        // go first or xenstored would read ours as their tail.
        self.tx.extend_from_slice(&bytes);

        let mut results: Vec<Option<Result<String, XsError>>> = reqs.iter().map(|_| None).collect();
        let mut waiting = reqs.len();
        let deadline = self.events.now_ns().saturating_add(self.timeout_ns);
        while waiting > 0 {
            // The first unanswered request names the batch in its errors.
            let first = results.iter().position(Option::is_none).unwrap_or(0);
            let (op, path) = (reqs[first].op(), String::from(reqs[first].path()));
            match self.pump() {
                Err(why) => {
                    self.abandon_unanswered(&results, first_id);
                    return Err(XsError::Broken { op, path, why });
                }
                Ok(Some((hdr, body))) => {
                    let i = (0..reqs.len()).find(|&i| id(i) == hdr.req_id);
                    match i.filter(|&i| results[i].is_none()) {
                        Some(i) => {
                            results[i] = Some(reqs[i].result(&hdr, &body, id(i)));
                            waiting -= 1;
                        }
                        None => {
                            self.abandon_unanswered(&results, first_id);
                            let why = WireError::WrongReqId {
                                got: hdr.req_id,
                                want: id(first),
                            };
                            return Err(XsError::Malformed { op, path, why });
                        }
                    }
                    continue;
                }
                Ok(None) => {}
            }
            if self.events.now_ns() >= deadline {
                self.abandon_unanswered(&results, first_id);
                return Err(XsError::Timeout {
                    op,
                    path,
                    after_ns: self.timeout_ns,
                });
            }
            self.events.wait(Some(deadline));
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Writes every `(path, value)` in one transaction, pipelined: the
    /// nodes appear all at once or not at all, in three round trips (start,
    /// the writes, commit) whatever their number. Retried while xenstored
    /// answers EAGAIN, like [`Xenstore::transaction`]; the first failed
    /// write is the error.
    pub fn write_all(&mut self, writes: &[(&str, &str)]) -> Result<(), XsError> {
        let reqs: Vec<Req<'_>> = writes.iter().map(|&(p, v)| Req::Write(p, v)).collect();
        self.transaction(|tx| {
            reqs.chunks(MAX_BATCH)
                .try_for_each(|chunk| tx.batch(chunk)?.into_iter().try_for_each(|r| r.map(drop)))
        })
    }

    /// Reads every path, pipelined ([`MAX_BATCH`] at a time): a result
    /// each, in order. A batch that fails as a whole fails each of its reads
    /// with its error.
    pub fn read_all(&mut self, paths: &[&str]) -> Vec<Result<String, XsError>> {
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(MAX_BATCH) {
            let reqs: Vec<Req<'_>> = chunk.iter().map(|&p| Req::Read(p)).collect();
            match self.batch(TxId::NONE, &reqs) {
                Ok(results) => out.extend(results),
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        out
    }

    fn abandon_unanswered(&mut self, results: &[Option<Result<String, XsError>>], first_id: u32) {
        for (i, r) in results.iter().enumerate() {
            if r.is_none() {
                self.abandon(first_id.wrapping_add(i as u32));
            }
        }
    }
}

impl<P: SharedPage, E: Events> Tx<'_, P, E> {
    /// [`Xenstore::batch`] inside this transaction.
    pub fn batch(&mut self, reqs: &[Req<'_>]) -> Result<Vec<Result<String, XsError>>, XsError> {
        let id = self.id;
        self.xs.batch(id, reqs)
    }
}
