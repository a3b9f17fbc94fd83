//! flock(2) locks on files in the run directory (std's `File::lock`).
//!
//! `RUN_DIR/.lock`: short, around the name/address checks and putting a
//! config in place. `RUN_DIR/NAME.lock`: held by a spawn of NAME for its
//! whole run (a second spawn of NAME fails at once; `list` shows NAME as
//! starting). `RUN_DIR/.slot.N`: the create slots (MINIPROXY_PARALLEL).
//! `RUN_DIR/.virsh.lock`: held around each virsh create (one at a time).
//! Our descriptors are close-on-exec, so xl's daemon never keeps a lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
}

/// The lock on `path` if nobody holds it now (`Ok(None)` if somebody does).
pub fn try_take(path: &Path) -> std::io::Result<Option<File>> {
    let f = open(path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The lock on `path`, waiting (blocked in flock, not polling: a dozen
/// queued spawns must not eat a small dom0's CPU) up to `wait`.
/// `Ok(None)`: not within `wait`. The waiting thread is left blocked then;
/// the caller gives up and exits.
pub fn take_within(path: &Path, wait: Duration) -> std::io::Result<Option<File>> {
    if let Some(f) = try_take(path)? {
        return Ok(Some(f));
    }
    let f = open(path)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = f.lock().map(|()| f);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(wait) {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

/// Somebody holds `path`'s lock (a spawn of that name runs now).
pub fn is_held(path: &Path) -> bool {
    matches!(try_take(path), Ok(None))
}
