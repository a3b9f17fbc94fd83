//! A fake xenstored for the rig: the operator's own xenstore client
//! (XENSTORED_PATH) reaches the same fake xenstore as tests/fakexen's
//! scripts, the file tree under `xs/`. Reads and directory listings read
//! it; a write or a permission change runs the fake `xenstore-write` or
//! `xenstore-chmod` (so the fake guests react alike, and the call log shows
//! it); a transaction keeps them until its commit, which fails with EAGAIN
//! (applying nothing) when a node it read changed since, as C xenstored's
//! does (and src/xenstore/fake.rs, whose rule this mirrors); watches are
//! noticed by looking at the watched subtree every 10 ms. The wire format is
//! xs_wire.h's, written here again on purpose: the tests do not take the
//! operator's word for it.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_WATCH: u32 = 4;
const XS_UNWATCH: u32 = 5;
const XS_TRANSACTION_START: u32 = 6;
const XS_TRANSACTION_END: u32 = 7;
const XS_WRITE: u32 = 11;
const XS_SET_PERMS: u32 = 14;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;

/// Serve `socket` from a thread for the rest of the test process; `cmd`
/// makes the fake scripts' commands (their environment).
pub fn start(
    socket: PathBuf,
    root: PathBuf,
    cmd: impl Fn(&str) -> Command + Send + Sync + 'static,
) {
    let listener = UnixListener::bind(&socket).unwrap();
    let cmd = std::sync::Arc::new(cmd);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (root, cmd) = (root.clone(), cmd.clone());
            std::thread::spawn(move || serve(conn, &root, &*cmd));
        }
    });
}

type Op = (u32, Vec<String>);
type Seen = (String, bool, Option<String>);

struct Conn<'a> {
    s: UnixStream,
    root: &'a Path,
    cmd: &'a dyn Fn(&str) -> Command,
    watches: Vec<(String, String, String)>,
    /// Transaction id -> its writes and permission changes.
    txs: std::collections::BTreeMap<u32, Vec<Op>>,
    /// Transaction id -> the nodes it read (and whether as a directory),
    /// each as it was outside the transaction when first read.
    seen: std::collections::BTreeMap<u32, Vec<Seen>>,
    next_tx: u32,
}

fn send(s: &mut UnixStream, ty: u32, req: u32, tx: u32, payload: &[u8]) {
    let mut m = Vec::new();
    for v in [ty, req, tx, payload.len() as u32] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(payload);
    let _ = s.write_all(&m);
}

fn nul_joined(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.bytes().chain([0])).collect()
}

/// What a subtree holds now: every file under it and its contents.
fn snapshot(root: &Path, path: &str) -> String {
    fn walk(p: &Path, out: &mut String) {
        if let Ok(v) = std::fs::read(p) {
            out.push_str(&format!(
                "{}={}\n",
                p.display(),
                String::from_utf8_lossy(&v)
            ));
        } else if let Ok(rd) = std::fs::read_dir(p) {
            let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            names.sort();
            for n in names {
                walk(&n, out);
            }
        }
    }
    let mut out = String::new();
    walk(&root.join(path.trim_start_matches('/')), &mut out);
    out
}

impl Conn<'_> {
    fn file(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, tx: u32, path: &str) -> Option<String> {
        let pending = self.txs.get(&tx).and_then(|ops| {
            ops.iter()
                .rev()
                .find(|(ty, a)| *ty == XS_WRITE && a[0] == path)
                .map(|(_, a)| a[1].clone())
        });
        pending.or_else(|| std::fs::read_to_string(self.file(path)).ok())
    }

    /// PATH as seen from outside any transaction: its value, or (`dir`)
    /// its children's names (None: no such node).
    fn outside(&self, path: &str, dir: bool) -> Option<String> {
        if !dir {
            return std::fs::read_to_string(self.file(path)).ok();
        }
        let rd = std::fs::read_dir(self.file(path)).ok()?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Some(names.join("\0"))
    }

    fn note_read(&mut self, tx: u32, path: &str, dir: bool) {
        let now = self.outside(path, dir);
        if let Some(seen) = self.seen.get_mut(&tx) {
            if !seen.iter().any(|(p, d, _)| p == path && *d == dir) {
                seen.push((path.to_string(), dir, now));
            }
        }
    }

    /// Whether a node transaction `tx` read changed outside it since.
    fn conflicts(&self, tx: u32) -> bool {
        self.seen
            .get(&tx)
            .is_some_and(|seen| seen.iter().any(|(p, dir, v)| self.outside(p, *dir) != *v))
    }

    /// Run a write or a permission change with the fake scripts.
    fn apply(&self, (ty, args): &Op) -> bool {
        let prog = if *ty == XS_WRITE {
            "xenstore-write"
        } else {
            "xenstore-chmod"
        };
        (self.cmd)(prog)
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    fn fire_changed(&mut self) {
        for i in 0..self.watches.len() {
            let now = snapshot(self.root, &self.watches[i].0);
            if now != self.watches[i].2 {
                self.watches[i].2 = now;
                let (p, t) = (self.watches[i].0.clone(), self.watches[i].1.clone());
                send(&mut self.s, XS_WATCH_EVENT, 0, 0, &nul_joined(&[&p, &t]));
            }
        }
    }

    fn handle(&mut self, ty: u32, req: u32, tx: u32, payload: &[u8]) {
        let parts: Vec<String> = payload
            .split(|b| *b == 0)
            .map(|x| String::from_utf8_lossy(x).into_owned())
            .collect();
        let path = parts[0].clone();
        let ok = b"OK\0";
        if matches!(ty, XS_READ | XS_DIRECTORY) {
            self.note_read(tx, &path, ty == XS_DIRECTORY);
        }
        let reply: Result<Vec<u8>, &str> = match ty {
            XS_READ => self.read(tx, &path).map(String::into_bytes).ok_or("ENOENT"),
            XS_DIRECTORY => match self.outside(&path, true) {
                Some(names) if names.is_empty() => Ok(Vec::new()),
                Some(names) => Ok(format!("{names}\0").into_bytes()),
                None => Err("ENOENT"),
            },
            XS_WRITE | XS_SET_PERMS => {
                let args: Vec<String> = if ty == XS_WRITE {
                    let value = &payload[(path.len() + 1).min(payload.len())..];
                    vec![path, String::from_utf8_lossy(value).into_owned()]
                } else {
                    parts.iter().filter(|p| !p.is_empty()).cloned().collect()
                };
                let op = (ty, args);
                if let Some(ops) = self.txs.get_mut(&tx) {
                    ops.push(op);
                    Ok(ok.to_vec())
                } else if self.apply(&op) {
                    Ok(ok.to_vec())
                } else {
                    Err("ENOENT")
                }
            }
            XS_WATCH => {
                let token = parts.get(1).cloned().unwrap_or_default();
                // As xenstored: a connection's watch is set once.
                if self
                    .watches
                    .iter()
                    .any(|(p, t, _)| p == &path && t == &token)
                {
                    send(&mut self.s, XS_ERROR, req, tx, &nul_joined(&["EEXIST"]));
                    return;
                }
                self.watches
                    .push((path.clone(), token.clone(), snapshot(self.root, &path)));
                send(&mut self.s, ty, req, tx, ok);
                // The event xenstored sends when a watch is set.
                send(
                    &mut self.s,
                    XS_WATCH_EVENT,
                    0,
                    0,
                    &nul_joined(&[&path, &token]),
                );
                return;
            }
            XS_UNWATCH => {
                let token = parts.get(1).cloned().unwrap_or_default();
                self.watches
                    .retain(|(p, t, _)| !(p == &path && t == &token));
                Ok(ok.to_vec())
            }
            XS_TRANSACTION_START => {
                self.next_tx += 1;
                self.txs.insert(self.next_tx, Vec::new());
                self.seen.insert(self.next_tx, Vec::new());
                Ok(format!("{}\0", self.next_tx).into_bytes())
            }
            XS_TRANSACTION_END => {
                let conflict = self.conflicts(tx);
                self.seen.remove(&tx);
                match self.txs.remove(&tx) {
                    Some(_) if path == "T" && conflict => Err("EAGAIN"),
                    Some(ops) if path == "T" => {
                        // All or nothing is not needed here: the fake
                        // scripts do not fail on the nodes a spawn writes.
                        if ops.iter().all(|op| self.apply(op)) {
                            Ok(ok.to_vec())
                        } else {
                            Err("EINVAL")
                        }
                    }
                    Some(_) => Ok(ok.to_vec()),
                    None => Err("ENOENT"),
                }
            }
            _ => Err("ENOSYS"),
        };
        match reply {
            Ok(p) => send(&mut self.s, ty, req, tx, &p),
            Err(e) => send(&mut self.s, XS_ERROR, req, tx, &nul_joined(&[e])),
        }
    }
}

/// Connections served so far: each one's number in `xenstored.rounds`.
static CONNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One line per round trip in ROOT/../xenstored.rounds: the connection's
/// number, then the types of the requests that came in one read while
/// nothing was left unanswered (a client sends a round's requests in one
/// write and waits for their replies before the next).
fn log_round(root: &Path, conn: usize, types: &[u32]) {
    use std::io::Write as _;
    if types.is_empty() {
        return;
    }
    let line: Vec<String> = types.iter().map(u32::to_string).collect();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.with_file_name("xenstored.rounds"))
    {
        let _ = writeln!(f, "{conn} {}", line.join(","));
    }
}

fn serve(s: UnixStream, root: &Path, cmd: &dyn Fn(&str) -> Command) {
    let conn = CONNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut c = Conn {
        s,
        root,
        cmd,
        watches: Vec::new(),
        txs: Default::default(),
        seen: Default::default(),
        next_tx: 0,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match c.s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        let mut round = Vec::new();
        while buf.len() >= 16 {
            let w = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap());
            let (ty, req, tx, len) = (w(0), w(4), w(8), w(12) as usize);
            if buf.len() < 16 + len {
                break;
            }
            let payload: Vec<u8> = buf[16..16 + len].to_vec();
            buf.drain(..16 + len);
            round.push((ty, req, tx, payload));
        }
        let types: Vec<u32> = round.iter().map(|r| r.0).collect();
        // While ROOT/../xenstored.hold exists (10 s at most), a round that
        // starts a transaction waits, unlogged and unanswered: a test sees
        // what a client does before it has that reply.
        if types.contains(&XS_TRANSACTION_START) {
            let hold = root.with_file_name("xenstored.hold");
            let t0 = std::time::Instant::now();
            while hold.exists() && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Logged before any reply: a client that has its replies sees it.
        log_round(root, conn, &types);
        for (ty, req, tx, payload) in round {
            c.handle(ty, req, tx, &payload);
        }
        c.fire_changed();
    }
}
