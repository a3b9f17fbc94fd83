//! `miniproxy serve`: the resident spawner. Under TCG a PV dom0 needs
//! 100-300 ms to start and end a process, most of a warm spawn's time; a
//! long-lived process that already has its xenstored connection open takes
//! requests over a Unix socket instead and answers each with the line the
//! CLI would print. The work itself is the CLI's (crate::spawn,
//! crate::stop): the same checks and the same file locks, so the CLI and
//! the daemon can be used side by side.

use crate::env::{self, Env};
use crate::warm::prepared;
use crate::xenstore::{Req, Xs, NO_TX};
use crate::{args, bad, fail, lock, pool, spawn, stop, Failure, Outcome};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest request line, its newline not counted. A spawn's whole line
/// is far shorter (the guest takes 1022 bytes of configuration).
pub const MAX_REQUEST: usize = 8192;

pub fn usage() -> String {
    let env = Env::load();
    format!(
        "Usage: miniproxy serve [--socket PATH]
A resident spawner: one long-lived process that takes spawn and stop
requests over a Unix stream socket and answers each with the line the
command prints, without a process per request (under TCG dom0 needs
100-300 ms to start and end one) and on a xenstored connection it keeps
open. A warm spawn's refill runs in a thread of the daemon, started after
the reply. While idle the daemon prepares the next warm hand-over (a
xenstore transaction holding what the checks read), which cuts a warm
spawn to two xenstored round trips; a stale one falls back to the full
path.
  --socket PATH  where to listen (default {run}/serve.sock, mode 0600).
                 A stale socket file (nobody listening) is replaced; one
                 another daemon serves is an error (exit 1)
It prints 'serving socket=PATH' once it listens, serves until SIGTERM or
SIGINT, then removes the socket file, answers further requests with rc=1,
and exits (0) once the requests and refills at work are done (120 s at
most).
Protocol: one request per line, the words of a miniproxy command line
separated by TAB characters (an --extra value with spaces needs no quotes):
  spawn<TAB>--name<TAB>c1<TAB>--mode<TAB>reverse<TAB>...<LF>
The reply is one line: on success what the command prints on stdout
(spawn's 'spawned ... how=warm|cold', stop's 'stopped ...'; the JSON object
with --json), else 'error rc=N MESSAGE' (N: the command's exit status, 2
for a bad request, 1 for a failed operation; MESSAGE: what it prints on
stderr after 'miniproxy COMMAND: ', its first line). Served: spawn (every
option) and stop NAME (one per request); anything else is rc=2. A
connection may carry many requests, one after another; each connection has
its own thread, and spawns lock against each other and the CLI's as the
CLI's do. An empty or non-UTF-8 line is rc=2; one over {max} bytes is rc=2
and closes the connection.
One request from a shell: 'miniproxy ask WORD...' (no relay process; see
'miniproxy ask --help'). From bash, one connection for many requests:
  coproc MP {{ socat - UNIX-CONNECT:{run}/serve.sock; }}
  printf 'spawn\\t--name\\tc1\\t...\\n' >&\"${{MP[1]}}\"; read -r reply <&\"${{MP[0]}}\"
Its stderr: errors, the refills' messages and, with MINIPROXY_TRACE=1,
each spawn's phases as the CLI prints them.
",
        run = env.run_dir.display(),
        max = MAX_REQUEST
    )
}

/// What every connection's thread shares.
struct Shared {
    /// Loaded once, before any thread (Env::load changes PATH).
    env: Env,
    /// Open xenstored connections no request uses now: a spawn takes one
    /// (or opens one) and puts it back, its watches released
    /// ([`Xs::release_watches`]).
    idle: Mutex<Vec<Xs>>,
    /// Requests and refills at work: SIGTERM waits for them.
    busy: Arc<AtomicUsize>,
    /// SIGTERM came: new requests are refused.
    stopping: AtomicBool,
    /// One preparation (crate::warm::prepared) at a time.
    preparing: Mutex<()>,
    /// A preparation is asked for and has not started yet.
    prepare_wanted: AtomicBool,
    /// Refills whose fill is at work: the domains they create fail a
    /// prepared hand-over's commit, so none is prepared or used meanwhile.
    filling: AtomicUsize,
}

/// One request or refill at work, while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(count))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long SIGTERM waits for the requests and refills at work: a spawn
/// cut short leaves a domain without its reply, a refill one without its
/// record.
const STOP_WAIT: Duration = Duration::from_secs(120);

pub fn run(argv: &[String]) -> Outcome {
    use args::flags;
    /// `--socket PATH` or `--socket=PATH`, the path not empty.
    const FLAGS: &[flags::Flag] = &[flags::Flag::value("--socket", "a value").nonempty()];
    let mut socket: Option<PathBuf> = None;
    for arg in flags::parse(argv, FLAGS, false) {
        match arg? {
            flags::Arg::Help => return flags::help(&usage()),
            flags::Arg::Value(_, path) => socket = Some(path.into()),
            a => unreachable!("not a flag of serve: {a:?}"),
        }
    }
    let env = Env::load();
    env::need_root()?;
    let path = socket.unwrap_or_else(|| env.path("serve.sock"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .or_else(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    // Held for the daemon's life: two daemons never share a socket.
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let _one = match lock::try_take(&lock_path) {
        Ok(Some(f)) => f,
        Ok(None) => return fail(format!("another daemon serves {}", path.display())),
        Err(e) => return fail(format!("cannot lock {}: {e}", lock_path.display())),
    };
    let listener = bind(&path)?;
    let ino = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .or_else(|e| fail(format!("cannot catch SIGTERM: {e}")))?;
    let shared = Arc::new(Shared {
        env,
        idle: Mutex::new(Vec::new()),
        busy: Arc::new(AtomicUsize::new(0)),
        stopping: AtomicBool::new(false),
        preparing: Mutex::new(()),
        prepare_wanted: AtomicBool::new(false),
        filling: AtomicUsize::new(0),
    });
    let (sock, sh) = (path.clone(), Arc::clone(&shared));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                sh.stopping.store(true, Ordering::SeqCst);
                // Only our own file: not one a later daemon put there.
                let now = std::fs::metadata(&sock).map(|m| (m.dev(), m.ino())).ok();
                if now.is_some() && now == ino {
                    let _ = std::fs::remove_file(&sock);
                }
                let t0 = std::time::Instant::now();
                while sh.busy.load(Ordering::SeqCst) > 0 && t0.elapsed() < STOP_WAIT {
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::process::exit(0);
            }
        })
        .or_else(|e| fail(format!("cannot start a thread: {e}")))?;
    println!("serving socket={}", path.display());
    let _ = std::io::stdout().flush();
    // The first spawn already finds a prepared hand-over.
    prepare_soon(&shared);
    let sh = Arc::clone(&shared);
    let watcher = std::thread::Builder::new()
        .name("domains".into())
        .spawn(move || watch_domains(&sh));
    if let Err(e) = watcher {
        eprintln!("miniproxy serve: cannot start a thread: {e}");
    }
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: the clients already served go on.
                eprintln!("miniproxy serve: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let sh = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || serve_conn(&sh, conn));
        if let Err(e) = started {
            eprintln!("miniproxy serve: cannot start a thread for a client: {e}");
        }
    }
    fail("the socket stopped accepting")
}

/// Listen on `path` (mode 0600): a file there that nobody listens on is
/// replaced. Bound under a temporary name, given its mode, then renamed:
/// nobody can connect before the mode is set.
fn bind(path: &Path) -> Result<UnixListener, Failure> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return fail(format!("{} exists and is not a socket", path.display()));
        }
        if UnixStream::connect(path).is_ok() {
            return fail(format!("{} is served by another process", path.display()));
        }
    }
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .or_else(|e| fail(format!("cannot bind {}: {e}", tmp.display())))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return fail(format!("cannot put the socket at {}: {e}", path.display()));
    }
    Ok(listener)
}

/// The token of the daemon's watches of domains created and gone.
const DOMAINS_TOKEN: &str = "miniproxy-serve-domains";

/// How long the domains watched stay quiet before a new preparation: a
/// create or destroy comes with more xenstore changes right after it.
const SETTLE: Duration = Duration::from_millis(300);

/// A prepared hand-over is made again after this long without a reason
/// (before it is too old to be used, prepared::PREPARED_MAX_AGE).
const REFRESH: Duration = Duration::from_secs(20);

/// Prepare a hand-over again whenever a domain is created or goes away
/// (xenstored's @introduceDomain and @releaseDomain): the CLI, xl or a
/// refill process did it, not this daemon, and the prepared one would
/// fail its commit (a wasted round trip). And every REFRESH. On its own
/// connection, for the daemon's life.
fn watch_domains(shared: &Arc<Shared>) {
    let watches = [
        Req::Watch("@introduceDomain", DOMAINS_TOKEN),
        Req::Watch("@releaseDomain", DOMAINS_TOKEN),
    ];
    loop {
        let mut xs = match Xs::open().and_then(|mut x| x.batch(NO_TX, &watches).map(|_| x)) {
            Ok(x) => x,
            Err(e) => {
                shared.env.trace(&format!("{e}: no watch of domains"));
                std::thread::sleep(REFRESH);
                continue;
            }
        };
        while let Ok(event) = xs.wait_watch(DOMAINS_TOKEN, Instant::now() + REFRESH) {
            if event.is_some() {
                while let Ok(Some(_)) = xs.wait_watch(DOMAINS_TOKEN, Instant::now() + SETTLE) {}
            }
            prepare_soon(shared);
        }
        // The connection broke: a new one, not at once.
        std::thread::sleep(SETTLE);
    }
}

/// Prepare a hand-over (crate::warm::prepared) in a thread of its own,
/// unless one is already asked for and not started: never before a reply,
/// on a connection no request holds.
fn prepare_soon(shared: &Arc<Shared>) {
    if shared.prepare_wanted.swap(true, Ordering::SeqCst) {
        return;
    }
    let sh = Arc::clone(shared);
    let started = std::thread::Builder::new()
        .name("prepare".into())
        .spawn(move || {
            let _one = sh.preparing.lock().unwrap_or_else(|p| p.into_inner());
            sh.prepare_wanted.store(false, Ordering::SeqCst);
            prepare_now(&sh);
        });
    if started.is_err() {
        shared.prepare_wanted.store(false, Ordering::SeqCst);
    }
}

/// The preparation itself, on the idle connection that holds one (its new
/// transaction replaces the old), else the last one put back, else a new
/// one. A request that comes meanwhile takes another connection.
fn prepare_now(shared: &Shared) {
    if shared.stopping.load(Ordering::SeqCst) || shared.filling.load(Ordering::SeqCst) > 0 {
        return;
    }
    let env = shared.env.restarted();
    let idle = || shared.idle.lock().unwrap_or_else(|p| p.into_inner());
    let taken = take_idle(&mut idle());
    let mut xs = match taken.map_or_else(Xs::open, Ok) {
        Ok(x) => x,
        Err(e) => {
            env.trace(&format!("{e}: no prepared hand-over"));
            return;
        }
    };
    if let Err(e) = prepared::prepare(&env, &mut xs) {
        env.trace(&format!("preparing a hand-over: {e}"));
    }
    if xs.usable() {
        idle().push(xs);
    }
}

/// An idle connection: the one holding the newest prepared hand-over, else
/// the last one put back. Older prepared ones are abandoned: one open at a
/// time (their aborts go with their connections' next requests).
fn take_idle(list: &mut Vec<Xs>) -> Option<Xs> {
    let newest = (0..list.len())
        .filter_map(|i| Some((list[i].held()?.since, i)))
        .max()
        .map(|(_, i)| i);
    let taken = match newest {
        Some(i) => Some(list.remove(i)),
        None => list.pop(),
    };
    list.iter_mut().for_each(Xs::drop_held);
    taken
}

/// One client: requests and replies until it closes, sends a line that is
/// too long, or cannot be written to.
fn serve_conn(shared: &Arc<Shared>, conn: UnixStream) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    loop {
        let mut line = Vec::new();
        // One byte more than a request may have, newline included.
        let limit = MAX_REQUEST as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Until the reply is written: SIGTERM waits for it.
        let _busy = Busy::new(&shared.busy);
        let mut after = After::default();
        let reply = if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            match String::from_utf8(line) {
                Ok(text) => request(shared, &text, &mut after),
                Err(_) => "error rc=2 the request is not UTF-8".to_string(),
            }
        } else if line.len() as u64 >= limit {
            let r = format!("error rc=2 a request is at most {MAX_REQUEST} bytes\n");
            let _ = out.write_all(r.as_bytes());
            return;
        } else {
            // The client went mid-line: nobody to answer.
            return;
        };
        // One line whatever a message holds.
        let reply = reply.replace(['\n', '\r'], " ");
        let written = out.write_all(format!("{reply}\n").as_bytes());
        after.run(shared);
        if written.is_err() {
            return;
        }
    }
}

/// What a request leaves for after its reply.
#[derive(Default)]
struct After {
    /// A warm spawn took a member: its refill (with the spawn's Env).
    refill: Option<Env>,
}

impl After {
    /// Start the refill (a thread: unlike the CLI's process it costs the
    /// reply nothing worth starting early), then prepare the next
    /// hand-over: a spawn or stop may have changed what it reads.
    fn run(self, shared: &Arc<Shared>) {
        if let Some(env) = self.refill {
            let (a, b) = (Arc::clone(shared), Arc::clone(shared));
            let filling = move || {
                a.filling.fetch_add(1, Ordering::SeqCst);
            };
            let filled = move || {
                b.filling.fetch_sub(1, Ordering::SeqCst);
                prepare_soon(&b);
            };
            pool::refill_in_thread(&env, Busy::new(&shared.busy), (filling, filled));
            env.trace("refill started");
        }
        prepare_soon(shared);
    }
}

/// One request line: its reply line.
fn request(shared: &Shared, text: &str, after: &mut After) -> String {
    if shared.stopping.load(Ordering::SeqCst) {
        return "error rc=1 the daemon is stopping (SIGTERM)".into();
    }
    let words: Vec<String> = text.split('\t').map(String::from).collect();
    let env = shared.env.restarted();
    let (cmd, rest) = match words.split_first() {
        Some((c, r)) if !c.is_empty() => (c.as_str(), r),
        _ => return "error rc=2 an empty request (spawn or stop, TAB-separated)".into(),
    };
    let result = match cmd {
        "spawn" => serve_spawn(shared, &env, rest, after),
        "stop" => stop::one(&env, rest),
        other => bad(format!("'{other}' is not served (spawn, stop)")),
    };
    let reply = match result {
        Ok(line) => line,
        Err(Failure::Bad(m)) => {
            eprintln!("{} {cmd}: {m}", crate::PROG);
            format!("error rc=2 {m}")
        }
        Err(Failure::Fail(m)) => {
            eprintln!("{} {cmd}: {m}", crate::PROG);
            format!("error rc=1 {m}")
        }
        // Already on stderr.
        Err(Failure::Reported(m)) => format!("error rc=1 {m}"),
    };
    env.trace("replied");
    reply
}

/// A spawn on one of the daemon's xenstored connections (the one holding
/// a prepared hand-over if one is idle), its refill in a thread after the
/// reply.
fn serve_spawn(
    shared: &Shared,
    env: &Env,
    argv: &[String],
    after: &mut After,
) -> Result<String, Failure> {
    env.trace("request read");
    let Some(s) = args::parse_spawn(argv)? else {
        return bad("--help is not served: run 'miniproxy spawn --help'");
    };
    let idle = || shared.idle.lock().unwrap_or_else(|p| p.into_inner());
    let mut xs = take_idle(&mut idle());
    if shared.filling.load(Ordering::SeqCst) > 0 {
        if let Some(x) = xs.as_mut().filter(|x| x.held().is_some()) {
            // Its commit would fail: no round trip for it (the abort goes
            // with the full path's first).
            env.trace("a refill creates domains: prepared hand-over dropped");
            x.drop_held();
        }
    }
    let wanted = std::cell::RefCell::new(None);
    let refill = |env: &Env| *wanted.borrow_mut() = Some(env.clone());
    let result = spawn::spawn(env, &s, &mut xs, &refill);
    after.refill = wanted.into_inner();
    // A connection that broke is closed. Its watches go with its next
    // request (no round trip here, before the reply).
    if let Some(mut x) = xs.filter(Xs::usable) {
        x.release_watches();
        idle().push(x);
    }
    result
}
