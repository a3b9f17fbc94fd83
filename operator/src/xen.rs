//! The Xen toolstack commands this tool runs (`xl`, `xenstore-*`), with the
//! retry rules they need: xl's rare abort at exit (rc 134, after the work)
//! counts as success, and a xenstore mid-change is asked again.

use crate::xenstore::{Xs, XsError, NO_TX};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Run `prog args`; its exit code (None: killed or not started) and stdout.
fn run(prog: &str, args: &[&str]) -> (Option<i32>, String) {
    match Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) => (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        Err(_) => (None, String::new()),
    }
}

/// xl ARGS, its output thrown away; rc 134 counts as 0.
pub fn xl_ok(args: &[&str]) -> bool {
    matches!(run("xl", args).0, Some(0) | Some(134))
}

/// `xl create CFG`, its output appended to `log`; the exit code.
pub fn xl_create(cfg: &str, log: &std::path::Path, limit: Duration) -> Option<i32> {
    let mut cmd = Command::new("xl");
    cmd.args(["create", cfg]);
    run_logged_within(cmd, "xl create", log, limit)
}

/// Run `cmd` with its output appended to `log`; its exit code, or None if it
/// could not start or did not end within `limit` (then it is killed and the
/// log says so). Under TCG an `xl create` has been seen never to return, with
/// dom0 otherwise idle: a spawn must end by its --timeout all the same.
pub fn run_logged_within(
    mut cmd: Command,
    what: &str,
    log: &std::path::Path,
    limit: Duration,
) -> Option<i32> {
    cmd.stdin(Stdio::null());
    let out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log);
    if let Ok(f) = out {
        if let Ok(f2) = f.try_clone() {
            cmd.stdout(f).stderr(f2);
        }
    }
    let mut child = cmd.spawn().ok()?;
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
                    use std::io::Write;
                    let _ = writeln!(
                        f,
                        "{what} did not return within {} ms: killed",
                        limit.as_millis()
                    );
                }
                return None;
            }
        }
    }
}

/// `xl domid NAME`, asked again after an rc-134 abort (three times at most).
pub fn xl_domid(name: &str) -> Option<u32> {
    for _ in 0..3 {
        match run("xl", &["domid", name]) {
            (Some(0), out) => return out.trim().parse().ok(),
            (Some(134), _) => continue,
            _ => return None,
        }
    }
    None
}

/// One row of `xl list`: (name, domid, state letters).
pub fn xl_list() -> Vec<(String, u32, String)> {
    let (_, out) = run("xl", &["list"]);
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(4)?.to_string(),
            ))
        })
        .collect()
}

/// The state letters of domain `id` (`r-----`, `--c---`...), if it is listed.
pub fn xl_state(id: u32) -> Option<String> {
    let (rc, out) = run("xl", &["list", &id.to_string()]);
    if rc != Some(0) {
        return None;
    }
    out.lines()
        .nth(1)?
        .split_whitespace()
        .nth(4)
        .map(String::from)
}

/// `f` on this process's one connection to xenstored (made at first use,
/// made again after an error broke it); `None` if xenstored cannot be
/// reached or `f` failed: the caller then runs the xenstore-* command.
/// One connection, not one per call: over the xenbus device each keeps a
/// reader thread until the process ends.
fn with_xenstored<T>(f: impl FnOnce(&mut Xs) -> Result<T, XsError>) -> Option<T> {
    static CONN: Mutex<Option<Xs>> = Mutex::new(None);
    let mut conn = CONN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if conn.is_none() {
        *conn = Xs::open().ok();
    }
    match f(conn.as_mut()?) {
        Ok(v) => Some(v),
        Err(e) => {
            if !matches!(e, XsError::Refused { .. }) {
                *conn = None;
            }
            None
        }
    }
}

/// One or more paths' values, or None if any is missing: asked of
/// xenstored itself (crate::xenstore), or with xenstore-read if that
/// cannot be reached or fails.
pub fn read_all(paths: &[&str]) -> Option<Vec<String>> {
    // One pipelined round trip (Xs::read_many), as read_each.
    let direct = with_xenstored(|xs| {
        xs.read_many(NO_TX, paths)
            .map(|v| v.into_iter().collect::<Option<Vec<String>>>())
    });
    if let Some(values) = direct {
        return values;
    }
    xenstore_read(paths)
}

/// `xenstore-read PATHS`: every value, or None if one is missing.
fn xenstore_read(paths: &[&str]) -> Option<Vec<String>> {
    match run("xenstore-read", paths) {
        (Some(0), out) => {
            let mut v: Vec<String> = out.lines().map(String::from).collect();
            // An empty value is an empty line: pad what `lines` dropped.
            v.resize(paths.len(), String::new());
            Some(v)
        }
        _ => None,
    }
}

/// Every path's value (`None`: no such node), missing ones included:
/// asked of xenstored in one round trip (its requests pipelined,
/// [`Xs::read_many`]), else one xenstore-read per path (the command
/// fails the lot when one path is missing).
pub fn read_each(paths: &[&str]) -> Vec<Option<String>> {
    if let Some(values) = with_xenstored(|xs| xs.read_many(NO_TX, paths)) {
        return values;
    }
    paths
        .iter()
        .map(|p| xenstore_read(&[p]).and_then(|mut v| v.pop()))
        .collect()
}

pub fn read(path: &str) -> Option<String> {
    read_all(&[path]).and_then(|mut v| v.pop())
}

pub fn write(path: &str, value: &str) -> bool {
    if with_xenstored(|xs| xs.write(NO_TX, path, value)).is_some() {
        return true;
    }
    run("xenstore-write", &[path, value]).0 == Some(0)
}

/// NAME's domid from xenstore: asked of xenstored itself, else with two
/// small processes (instead of an xl); asks xl when xenstore is mid-change
/// (a domain without a name yet).
pub fn domid_of(name: &str) -> Option<u32> {
    if let Some(id) = with_xenstored(|xs| crate::xenstore::domid_of(xs, NO_TX, name)) {
        return id;
    }
    let (rc, out) = run("xenstore-list", &["/local/domain"]);
    let ids: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    if rc != Some(0) || ids.is_empty() {
        return xl_domid(name);
    }
    let paths: Vec<String> = ids
        .iter()
        .map(|i| format!("/local/domain/{i}/name"))
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let Some(names) = read_all(&refs) else {
        return xl_domid(name);
    };
    ids.iter()
        .zip(names.iter())
        .find(|(_, n)| n.as_str() == name)
        .and_then(|(i, _)| i.parse().ok())
}

/// Until PATH's xenstore watch fires (or `wait` is up). A failing watch
/// costs a pause, so that a broken xenstore-watch cannot make a caller spin.
pub fn wait_event(path: &str, wait: Duration) {
    let child = Command::new("xenstore-watch")
        .args(["-n", "2", path])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        std::thread::sleep(Duration::from_millis(300));
        return;
    };
    let end = Instant::now() + wait;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    std::thread::sleep(Duration::from_millis(300).min(wait));
                }
                return;
            }
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(test: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("mp-{test}-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// The one shared xenstored connection: used again while it works,
    /// dropped when it breaks (that call falls back to the xenstore-read
    /// process, absent here), made again at the next call.
    #[test]
    fn the_shared_xenstored_connection_is_reused_and_remade_after_a_break() {
        use crate::xenstore::wire;
        use std::io::{Read, Write};
        let sock = std::env::temp_dir().join(format!("mp-xenstored-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // Answer `reads` reads with "v", then close.
        fn answer(mut s: std::os::unix::net::UnixStream, reads: usize) {
            for _ in 0..reads {
                let mut h = [0u8; 16];
                if s.read_exact(&mut h).is_err() {
                    return;
                }
                let len = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
                let mut p = vec![0u8; len];
                s.read_exact(&mut p).unwrap();
                let req = u32::from_le_bytes(h[4..8].try_into().unwrap());
                s.write_all(&wire::encode(wire::XS_READ, req, 0, b"v").unwrap())
                    .unwrap();
            }
        }
        let server = std::thread::spawn(move || {
            let (first, _) = listener.accept().unwrap();
            answer(first, 2);
            let (second, _) = listener.accept().unwrap();
            answer(second, 1);
        });
        // (The host has no xenstore-read for the fallback; PATH is left
        // alone: the other tests run commands meanwhile.)
        std::env::set_var("XENSTORED_PATH", &sock);
        assert_eq!(read_all(&["/a", "/b"]), Some(vec!["v".into(), "v".into()]));
        // The first connection is closed now: this read fails over to
        // xenstore-read (not on PATH)...
        assert_eq!(read("/c"), None);
        // ...and the next one connects again.
        assert_eq!(read("/d").as_deref(), Some("v"));
        server.join().unwrap();
        let _ = std::fs::remove_file(&sock);
    }

    #[test]
    fn a_command_that_ends_gives_its_exit_code_and_output() {
        let l = log("run-ends");
        let mut c = Command::new("sh");
        c.args(["-c", "echo made; exit 3"]);
        assert_eq!(
            run_logged_within(c, "sh", &l, Duration::from_secs(20)),
            Some(3)
        );
        assert_eq!(std::fs::read_to_string(&l).unwrap(), "made\n");
    }

    #[test]
    fn a_command_that_hangs_is_killed_at_its_limit_and_the_log_says_so() {
        let l = log("run-hangs");
        let t0 = Instant::now();
        let mut c = Command::new("sleep");
        c.arg("30");
        assert_eq!(
            run_logged_within(c, "xl create", &l, Duration::from_millis(300)),
            None
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let text = std::fs::read_to_string(&l).unwrap();
        assert!(
            text.contains("xl create did not return within 300 ms: killed"),
            "{text}"
        );
    }
}
