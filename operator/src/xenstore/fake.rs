//! A small xenstored for the tests: an in-memory tree served over one end
//! of a socket pair, with transactions (applied at commit, or refused with
//! EAGAIN: a set number of times, and as C xenstored does when a node read
//! in the transaction changed outside it before its commit), watches (and
//! their first event at once) and a "guest" that writes nodes when a node
//! it waits for is written.

use super::wire::{self, Header, HEADER_LEN};
use super::Xs;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

/// A change a transaction holds until its commit: (path, value, permissions).
type Change = (String, Option<String>, Option<Vec<String>>);

/// What a transaction read, as it was outside it then: (path, whether as
/// a directory, the value or the children's names).
type Seen = (String, bool, Option<String>);

#[derive(Default, Debug, Clone)]
pub struct State {
    /// path -> (value, permissions)
    pub nodes: BTreeMap<String, (String, Vec<String>)>,
    /// Commits to refuse with EAGAIN before accepting one.
    pub eagain_commits: u32,
    /// When the key is written (committed), these nodes are written too.
    pub guest: Option<(String, Vec<(String, String)>)>,
    /// The guest's writes wait until the client has sent nothing for this
    /// long (as a real guest, which needs time to act on the key: a client
    /// that looks at once finds nothing yet).
    pub guest_after: Option<Duration>,
    pending_guest: Vec<(String, String)>,
    /// Every request: (type, first string of its payload, tx id).
    pub log: Vec<(u32, String, u32)>,
    /// Round trips: requests that came when none was waiting to be read
    /// behind the one before, i.e. after the client had waited for replies
    /// (a client sends each round's requests in one write).
    pub rounds: u32,
    /// The index in `log` of each round's first request.
    pub round_starts: Vec<usize>,
    watches: Vec<(String, String)>,
    txs: BTreeMap<u32, Vec<Change>>,
    /// Each open transaction's reads.
    seen: BTreeMap<u32, Vec<Seen>>,
    next_tx: u32,
}

impl State {
    pub fn with(nodes: &[(&str, &str)]) -> State {
        let mut s = State::default();
        for (p, v) in nodes {
            s.nodes
                .insert(p.to_string(), (v.to_string(), vec!["n0".into()]));
        }
        s
    }

    pub fn value(&self, path: &str) -> Option<&str> {
        self.nodes.get(path).map(|(v, _)| v.as_str())
    }

    /// PATH's children's names, outside any transaction.
    fn children(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        let mut names: Vec<String> = self
            .nodes
            .keys()
            .filter_map(|k| Some(k.strip_prefix(&prefix)?.split('/').next()?.to_string()))
            .collect();
        names.dedup();
        names
    }

    /// PATH as a transaction that reads it now sees it from outside: its
    /// value, or (`dir`) its children (None: no such node).
    fn outside(&self, path: &str, dir: bool) -> Option<String> {
        if dir {
            let c = self.children(path);
            (!c.is_empty() || self.nodes.contains_key(path)).then(|| c.join("\0"))
        } else {
            self.value(path).map(String::from)
        }
    }

    /// Whether a node transaction `tx` read changed outside it since:
    /// C xenstored then fails the commit (EAGAIN), applying nothing.
    fn conflicts(&self, tx: u32) -> bool {
        self.seen
            .get(&tx)
            .is_some_and(|seen| seen.iter().any(|(p, dir, v)| self.outside(p, *dir) != *v))
    }

    fn note_read(&mut self, tx: u32, path: &str, dir: bool) {
        let now = self.outside(path, dir);
        if let Some(seen) = self.seen.get_mut(&tx) {
            if !seen.iter().any(|(p, d, _)| p == path && *d == dir) {
                seen.push((path.to_string(), dir, now));
            }
        }
    }
}

/// A client connected to a fake xenstored over `state`; joining the
/// handle (after dropping the client) gives the final state.
pub fn serve(state: State) -> (Xs, JoinHandle<State>) {
    let (client, server) = UnixStream::pair().unwrap();
    let h = std::thread::spawn(move || run(server, state));
    (Xs::over(Box::new(client), Duration::from_millis(500)), h)
}

/// A client whose xenstored is `script` (raw bytes, for hostile replies).
pub fn scripted<R: Send + 'static>(
    script: impl FnOnce(UnixStream) -> R + Send + 'static,
) -> (Xs, JoinHandle<R>) {
    let (client, server) = UnixStream::pair().unwrap();
    let h = std::thread::spawn(move || script(server));
    (Xs::over(Box::new(client), Duration::from_millis(300)), h)
}

/// Read one request from the client end (None: it closed).
pub fn read_request(s: &mut UnixStream) -> Option<(Header, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).ok()?;
    let h = Header::decode(&h).ok()?;
    let mut p = vec![0u8; h.len as usize];
    s.read_exact(&mut p).ok()?;
    Some((h, p))
}

pub fn send(s: &mut UnixStream, ty: u32, req_id: u32, tx: u32, payload: &[u8]) {
    let _ = s.write_all(&wire::encode(ty, req_id, tx, payload).unwrap());
}

fn fire(s: &mut UnixStream, st: &State, path: &str) {
    for (w, token) in &st.watches {
        let under = path == w
            || path
                .strip_prefix(w.as_str())
                .is_some_and(|r| r.starts_with('/'));
        if under {
            send(
                s,
                wire::XS_WATCH_EVENT,
                0,
                0,
                &wire::strings(&[path, token]),
            );
        }
    }
}

fn commit(s: &mut UnixStream, st: &mut State, changes: Vec<Change>) {
    for (path, value, perms) in changes {
        let e = st
            .nodes
            .entry(path.clone())
            .or_insert((String::new(), vec!["n0".into()]));
        if let Some(v) = value {
            e.0 = v;
        }
        if let Some(p) = perms {
            e.1 = p;
        }
        fire(s, st, &path);
        if let Some((key, writes)) = st.guest.clone() {
            if key == path && st.guest_after.is_some() {
                st.guest = None;
                st.pending_guest = writes;
            } else if key == path {
                st.guest = None;
                commit(
                    s,
                    st,
                    writes
                        .into_iter()
                        .map(|(p, v)| (p, Some(v), None))
                        .collect(),
                );
            }
        }
    }
}

/// The next request, from `buf` (bytes read before) and then `s`; a
/// delayed guest acts when the client is quiet.
fn next_request(
    s: &mut UnixStream,
    buf: &mut Vec<u8>,
    st: &mut State,
) -> Option<(Header, Vec<u8>)> {
    loop {
        let quiet = (!st.pending_guest.is_empty())
            .then_some(st.guest_after)
            .flatten();
        let _ = s.set_read_timeout(quiet);
        if buf.len() >= HEADER_LEN {
            let h = Header::decode(buf[..HEADER_LEN].try_into().ok()?).ok()?;
            let end = HEADER_LEN + h.len as usize;
            if buf.len() >= end {
                let p = buf[HEADER_LEN..end].to_vec();
                buf.drain(..end);
                return Some((h, p));
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let writes = std::mem::take(&mut st.pending_guest);
                let changes = writes.into_iter().map(|(p, v)| (p, Some(v), None));
                commit(s, st, changes.collect());
            }
            Err(_) => return None,
        }
    }
}

/// Whether bytes are waiting to be read (in `buf` or on `s`), without
/// waiting for any.
fn more_waiting(s: &mut UnixStream, buf: &mut Vec<u8>) -> bool {
    if !buf.is_empty() {
        return true;
    }
    let mut chunk = [0u8; 4096];
    let _ = s.set_nonblocking(true);
    let n = s.read(&mut chunk).unwrap_or(0);
    let _ = s.set_nonblocking(false);
    buf.extend_from_slice(&chunk[..n]);
    n > 0
}

fn run(mut s: UnixStream, mut st: State) -> State {
    let mut in_round = false;
    let mut buf = Vec::new();
    while let Some((h, p)) = next_request(&mut s, &mut buf, &mut st) {
        // Asked before anything is answered: a client that waits for its
        // replies cannot have sent the next round yet.
        if !in_round {
            st.rounds += 1;
            st.round_starts.push(st.log.len());
        }
        in_round = more_waiting(&mut s, &mut buf);
        let parts: Vec<String> = p
            .split(|b| *b == 0)
            .map(|x| String::from_utf8_lossy(x).into_owned())
            .collect();
        let path = parts[0].clone();
        st.log.push((h.ty, path.clone(), h.tx_id));
        let overlay = st.txs.get(&h.tx_id).cloned().unwrap_or_default();
        let lookup = |st: &State, p: &str| -> Option<String> {
            overlay
                .iter()
                .rev()
                .find(|(q, v, _)| q == p && v.is_some())
                .and_then(|(_, v, _)| v.clone())
                .or_else(|| st.value(p).map(String::from))
        };
        let err = |s: &mut UnixStream, e: &str| {
            send(s, wire::XS_ERROR, h.req_id, h.tx_id, &wire::strings(&[e]))
        };
        let ok = |s: &mut UnixStream| send(s, h.ty, h.req_id, h.tx_id, b"OK\0");
        if matches!(h.ty, wire::XS_READ | wire::XS_DIRECTORY) {
            st.note_read(h.tx_id, &path, h.ty == wire::XS_DIRECTORY);
        }
        match h.ty {
            wire::XS_READ => match lookup(&st, &path) {
                Some(v) => send(&mut s, h.ty, h.req_id, h.tx_id, v.as_bytes()),
                None => err(&mut s, "ENOENT"),
            },
            wire::XS_DIRECTORY => {
                let prefix = format!("{path}/");
                let mut names: Vec<String> = st
                    .nodes
                    .keys()
                    .cloned()
                    .chain(overlay.iter().map(|(q, _, _)| q.clone()))
                    .filter_map(|k| Some(k.strip_prefix(&prefix)?.split('/').next()?.to_string()))
                    .collect();
                names.sort();
                names.dedup();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                send(&mut s, h.ty, h.req_id, h.tx_id, &wire::strings(&refs));
            }
            wire::XS_WRITE => {
                let value = String::from_utf8_lossy(&p[path.len() + 1..]).into_owned();
                match st.txs.get_mut(&h.tx_id) {
                    Some(t) => t.push((path, Some(value), None)),
                    None => commit(&mut s, &mut st, vec![(path, Some(value), None)]),
                }
                ok(&mut s);
            }
            wire::XS_SET_PERMS => {
                if lookup(&st, &path).is_none() {
                    err(&mut s, "ENOENT");
                    continue;
                }
                let perms: Vec<String> = parts[1..]
                    .iter()
                    .filter(|x| !x.is_empty())
                    .cloned()
                    .collect();
                match st.txs.get_mut(&h.tx_id) {
                    Some(t) => t.push((path, None, Some(perms))),
                    None => commit(&mut s, &mut st, vec![(path, None, Some(perms))]),
                }
                ok(&mut s);
            }
            wire::XS_WATCH => {
                // As xenstored: a connection's watch is set once.
                let w = (path.clone(), parts[1].clone());
                if st.watches.contains(&w) {
                    err(&mut s, "EEXIST");
                    continue;
                }
                st.watches.push(w);
                ok(&mut s);
                send(
                    &mut s,
                    wire::XS_WATCH_EVENT,
                    0,
                    0,
                    &wire::strings(&[&path, &parts[1]]),
                );
            }
            wire::XS_TRANSACTION_START => {
                st.next_tx += 1;
                let id = st.next_tx;
                st.txs.insert(id, Vec::new());
                st.seen.insert(id, Vec::new());
                send(&mut s, h.ty, h.req_id, 0, format!("{id}\0").as_bytes());
            }
            wire::XS_TRANSACTION_END => {
                let Some(changes) = st.txs.remove(&h.tx_id) else {
                    err(&mut s, "ENOENT");
                    continue;
                };
                let conflict = st.conflicts(h.tx_id);
                st.seen.remove(&h.tx_id);
                if path == "T" && conflict {
                    err(&mut s, "EAGAIN");
                    continue;
                }
                if path == "T" && st.eagain_commits > 0 {
                    st.eagain_commits -= 1;
                    err(&mut s, "EAGAIN");
                    continue;
                }
                ok(&mut s);
                if path == "T" {
                    commit(&mut s, &mut st, changes);
                }
            }
            wire::XS_UNWATCH => {
                let w = (path.clone(), parts[1].clone());
                match st.watches.iter().position(|x| *x == w) {
                    Some(i) => {
                        st.watches.remove(i);
                        ok(&mut s);
                    }
                    None => err(&mut s, "ENOENT"),
                }
            }
            wire::XS_RM if h.tx_id == 0 => {
                let below = format!("{path}/");
                let before = st.nodes.len();
                st.nodes.retain(|k, _| *k != path && !k.starts_with(&below));
                if st.nodes.len() == before {
                    err(&mut s, "ENOENT");
                    continue;
                }
                ok(&mut s);
                fire(&mut s, &st, &path);
            }
            _ => err(&mut s, "ENOSYS"),
        }
    }
    st
}
