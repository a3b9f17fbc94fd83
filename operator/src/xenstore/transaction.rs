//! Transactions on a connection: run and commit one (again after a
//! concurrent change), or hold one open with what was read in it
//! ([`Held`], for crate::warm::prepared) and abort it later without a
//! round trip of its own.

use super::{wire, Req, Tx, Xs, XsError, NO_TX};
use std::time::Instant;

/// A transaction left open on a connection with what was read in it
/// (crate::warm::prepared): xenstored fails its commit (EAGAIN) if any of
/// those nodes changed since, so the values may be trusted by a commit.
#[derive(Debug, Clone)]
pub struct Held {
    pub tx: Tx,
    /// When it was started.
    pub since: Instant,
    /// (path, value): a directory's entries joined by NULs ([`entries`]).
    pub reads: Vec<(String, Option<String>)>,
}

impl Held {
    /// The value read at `path`, if it was read.
    pub fn get(&self, path: &str) -> Option<&Option<String>> {
        self.reads.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }
}

impl Xs {
    /// Keep `h` open on this connection; one held before is abandoned.
    /// xenstored refuses too many transactions per connection: one held
    /// at a time, and [`Xs::transaction_after`] abandons it before its own.
    pub fn hold(&mut self, h: Held) {
        if let Some(old) = self.held.replace(h) {
            self.abandon(old.tx);
        }
    }

    /// The held transaction, now the caller's (to commit or abandon).
    pub fn take_held(&mut self) -> Option<Held> {
        self.held.take()
    }

    /// The held transaction, still held.
    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// Abort transaction `tx` in the round trip of the next request (no
    /// round trip of its own: the abort's reply is not worth a wait).
    pub fn abandon(&mut self, tx: Tx) {
        if tx != NO_TX && !self.abandoned.contains(&tx) {
            self.abandoned.push(tx);
        }
    }

    /// Abandon the held transaction, if any.
    pub fn drop_held(&mut self) {
        if let Some(h) = self.held.take() {
            self.abandon(h.tx);
        }
    }

    /// Within a transaction's body: send `reqs` (writes, permissions) with
    /// the commit, in its round trip, instead of one round trip of their
    /// own. A refusal of one of them is the transaction's error, but the
    /// commit has then applied the others: a caller uses this only where
    /// it undoes all on an error (the warm hand-over destroys the domain).
    /// A bad request is refused here, before anything is sent.
    pub fn at_commit(&mut self, reqs: &[Req<'_>]) -> Result<(), XsError> {
        for r in reqs {
            let m = r.message()?;
            self.at_commit.push(m);
        }
        Ok(())
    }

    /// Run `body` in a transaction and commit it (with what the body left
    /// for the commit, [`Xs::at_commit`]); when the commit meets a
    /// concurrent change (EAGAIN) run it again, `attempts` times at most.
    /// A failing `body` aborts the transaction and gives its error.
    pub fn transaction<T, E: From<XsError>>(
        &mut self,
        attempts: u32,
        body: impl FnMut(&mut Xs, Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        self.transaction_after(&[], attempts, body)
    }

    /// [`Xs::transaction`], its first start sent in one round trip after
    /// `first` (requests outside it: a watch, say). A refusal of one of
    /// them is the error (the transaction is then aborted).
    pub fn transaction_after<T, E: From<XsError>>(
        &mut self,
        first: &[Req<'_>],
        attempts: u32,
        mut body: impl FnMut(&mut Xs, Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut left = attempts.max(1);
        // Its own transaction is the connection's only one.
        self.drop_held();
        let mut first: Vec<(Tx, Req<'_>)> = first.iter().map(|r| (NO_TX, *r)).collect();
        loop {
            self.at_commit.clear();
            first.push((NO_TX, Req::TransactionStart));
            let mut got = self.batch_each(&std::mem::take(&mut first))?;
            let tx = match got.pop() {
                Some(Ok(Some(id))) => id
                    .parse::<Tx>()
                    .map_err(|_| self.broke(XsError::Protocol(format!("transaction id {id:?}"))))?,
                Some(Err(e)) => return Err(e.into()),
                _ => {
                    return Err(E::from(
                        self.broke(XsError::Protocol("no transaction id".into())),
                    ))
                }
            };
            if let Some(Err(e)) = got.into_iter().find(Result::is_err) {
                let _ = self.acked(wire::XS_TRANSACTION_END, tx, b"F\0", "abort a transaction");
                return Err(e.into());
            }
            let value = match body(self, tx) {
                Ok(v) => v,
                Err(e) => {
                    self.at_commit.clear();
                    // Best effort: the error to report is the body's.
                    let _ = self.acked(wire::XS_TRANSACTION_END, tx, b"F\0", "abort a transaction");
                    return Err(e);
                }
            };
            let mut msgs = std::mem::take(&mut self.at_commit);
            msgs.push((
                wire::XS_TRANSACTION_END,
                b"T\0".to_vec(),
                "commit a transaction".into(),
            ));
            let mut replies = self.pipeline(tx, &msgs)?;
            let commit = replies
                .pop()
                .unwrap_or_else(|| Err(XsError::Protocol("commit a transaction: no reply".into())));
            match commit {
                Ok(p) => {
                    if let Err(e) = wire::expect_ok(&p) {
                        let e = XsError::Protocol(format!("commit a transaction: {e}"));
                        return Err(E::from(self.broke(e)));
                    }
                }
                Err(e) if e.is("EAGAIN") && left > 1 => {
                    left -= 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            for (reply, (_, _, what)) in replies.into_iter().zip(&msgs) {
                match reply {
                    Ok(p) => {
                        if let Err(e) = wire::expect_ok(&p) {
                            let e = XsError::Protocol(format!("{what}: {e}"));
                            return Err(E::from(self.broke(e)));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(value);
        }
    }
}

#[cfg(test)]
mod tests;
