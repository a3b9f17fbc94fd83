//! The byte streams a xenstore connection runs over, each read bounded by
//! a deadline: xenstored's unix socket (a socket read timeout) and the
//! xenbus device (a file with no timeout: a reader thread hands its bytes
//! over a channel that can be waited on with one).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub trait Link: Send {
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Some bytes into `buf` (Ok(0): the other end closed), or an error of
    /// kind TimedOut if none came by `deadline`.
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize>;
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

impl Link for UnixStream {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.write_all(msg)
    }

    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        // A zero timeout would mean "forever".
        self.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match self.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(timed_out())
            }
            other => other,
        }
    }
}

/// /dev/xen/xenbus: writes go to the file; a thread reads it. When the
/// connection is dropped the thread stays blocked in its read until the
/// process ends (the operator is a short-lived command).
pub struct Device {
    file: std::fs::File,
    chunks: Receiver<io::Result<Vec<u8>>>,
    pending: Vec<u8>,
}

impl Device {
    pub fn open(path: &str) -> io::Result<Device> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let mut reader = file.try_clone()?;
        let (tx, chunks) = mpsc::channel();
        std::thread::Builder::new()
            .name("xenbus-reader".into())
            .spawn(move || loop {
                let mut buf = vec![0u8; 4096 + 16];
                let r = reader.read(&mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                let end = !matches!(&r, Ok(b) if !b.is_empty());
                if tx.send(r).is_err() || end {
                    return;
                }
            })?;
        Ok(Device {
            file,
            chunks,
            pending: Vec::new(),
        })
    }
}

impl Link for Device {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        // The kernel takes a message in one write.
        self.file.write_all(msg)
    }

    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        if self.pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(Ok(chunk)) if chunk.is_empty() => return Ok(0),
                Ok(Ok(chunk)) => self.pending = chunk,
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => return Err(timed_out()),
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}
