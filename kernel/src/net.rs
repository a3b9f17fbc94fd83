//! The kernel side of the netfront driver: pages, grants, event channels and
//! xenstore behind netfront's `Platform` trait, so the driver itself stays
//! free of `unsafe` and runs in host tests against a fake backend.

use crate::boottime::{Mark, TIMELINE};
use crate::grant::{GrantError, GrantTable};
use crate::mm::SharedPage;
use crate::xenstore::{Errno, XsError};
use crate::{events, XenstoreHandle};
use alloc::string::String;
use alloc::vec::Vec;
use netfront::{Error, GrantRef, HandshakeStep, Platform, Port};

impl netfront::SharedPage for SharedPage {
    fn read(&self, off: usize, buf: &mut [u8]) {
        SharedPage::read(self, off, buf)
    }
    fn write(&self, off: usize, data: &[u8]) {
        SharedPage::write(self, off, data)
    }
    fn read_u32(&self, off: usize) -> u32 {
        SharedPage::read_u32(self, off)
    }
    fn write_u32(&self, off: usize, v: u32) {
        SharedPage::write_u32(self, off, v)
    }
}

pub struct XenPlatform {
    xs: XenstoreHandle,
    grants: GrantTable,
    /// Pages handed out and not yet returned, for the memory report.
    pub pages_out: usize,
    /// The device's event channel (netfront allocates one), so the main loop
    /// can sleep on it.
    pub port: Option<u32>,
    /// Event-channel kicks sent to the backend (each one a hypercall).
    pub notifies: u64,
}

impl XenPlatform {
    pub fn new(xs: XenstoreHandle, grants: GrantTable) -> XenPlatform {
        XenPlatform {
            xs,
            grants,
            pages_out: 0,
            port: None,
            notifies: 0,
        }
    }

    pub fn grants_available(&self) -> usize {
        self.grants.available()
    }
}

impl Platform for XenPlatform {
    type Page = SharedPage;

    fn alloc_page(&mut self) -> Result<SharedPage, Error> {
        let p = SharedPage::alloc().ok_or(Error::NoMemory)?;
        self.pages_out += 1;
        Ok(p)
    }

    fn free_page(&mut self, page: SharedPage) {
        self.pages_out -= 1;
        // SAFETY: netfront returns only pages from alloc_page whose grant has
        // ended (its contract), so no other domain maps them any more.
        unsafe { page.free() }
    }

    fn grant(&mut self, page: &SharedPage, domid: u16, readonly: bool) -> Result<GrantRef, Error> {
        let mfn = page.mfn().ok_or(Error::NoMemory)?;
        match self.grants.grant(domid, mfn, readonly) {
            Ok(r) => Ok(GrantRef(r)),
            Err(GrantError::Exhausted) => Err(Error::NoGrants),
            Err(_) => Err(Error::NoGrants),
        }
    }

    fn end_grant(&mut self, gref: GrantRef) -> Result<(), Error> {
        match self.grants.end_access(gref.0) {
            Ok(()) => Ok(()),
            Err(GrantError::InUse(_)) => Err(Error::GrantInUse),
            Err(e) => {
                // A reference we do not know: its page's state is unknown, so
                // report it as still in use and let the driver keep (leak)
                // the page rather than reuse memory someone may map.
                log::warn!("netfront: end_grant: {e}");
                Err(Error::GrantInUse)
            }
        }
    }

    fn alloc_unbound(&mut self, remote: u16) -> Result<Port, Error> {
        let p = events::alloc_unbound(remote).map_err(|_| Error::EventChannel)?;
        self.port = Some(p);
        Ok(Port(p))
    }

    fn close_port(&mut self, port: Port) {
        if self.port == Some(port.0) {
            self.port = None;
        }
        let _ = events::close(port.0);
    }

    fn notify(&mut self, port: Port) {
        self.notifies += 1;
        let _ = events::send(port.0);
    }

    fn take_pending(&mut self, port: Port) -> bool {
        events::take_pending(port.0)
    }

    fn xs_read(&mut self, path: &str) -> Result<String, Error> {
        let result = self.xs.borrow_mut().read(path);
        read_result(result)
    }

    fn xs_write(&mut self, path: &str, value: &str) -> Result<(), Error> {
        self.xs.borrow_mut().write(path, value).map_err(|e| {
            log::warn!("netfront: {e}");
            Error::Xenstore
        })
    }

    /// Pipelined: one round trip for the lot (`Xenstore::read_all`).
    fn xs_read_all(&mut self, paths: &[&str]) -> Vec<Result<String, Error>> {
        let results = self.xs.borrow_mut().read_all(paths);
        results.into_iter().map(read_result).collect()
    }

    /// One transaction, the writes pipelined (`Xenstore::write_all`).
    fn xs_write_all(&mut self, writes: &[(&str, &str)]) -> Result<(), Error> {
        self.xs.borrow_mut().write_all(writes).map_err(|e| {
            log::warn!("netfront: {e}");
            Error::Xenstore
        })
    }

    fn handshake_step(&mut self, step: HandshakeStep) {
        TIMELINE.mark(match step {
            HandshakeStep::DeviceRead => Mark::NfFront,
            HandshakeStep::BackendInitWait => Mark::NfInitWait,
            HandshakeStep::KeysWritten => Mark::NfKeys,
            HandshakeStep::BackendConnected => Mark::NfConn,
        });
    }
}

/// A xenstore read as netfront wants it: ENOENT is "not found", any other
/// failure is logged (netfront only learns that the read failed).
fn read_result(r: Result<String, XsError>) -> Result<String, Error> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.errno() == Some(&Errno::ENOENT) => Err(Error::XsNotFound),
        Err(e) => {
            log::warn!("netfront: {e}");
            Err(Error::Xenstore)
        }
    }
}
