//! What the driver needs from the kernel: pages, grants, one event channel and
//! xenstore. The kernel implements these two traits (all its `unsafe` stays on
//! its side); the host tests implement them with in-memory fakes.
//!
//! Every method is non-blocking from the driver's point of view: the driver
//! never waits for anything itself, it is polled. (A xenstore read is a round
//! trip the kernel may spin on; that is the kernel's business.)

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Size of a Xen page and of every page the driver shares.
pub const PAGE_SIZE: usize = 4096;

/// A grant reference (`grant_ref_t`, `uint32_t` in `grant_table.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(pub u32);

/// An event-channel port (`evtchn_port_t`, `uint32_t` in `event_channel.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

/// One 4 KiB page of guest memory that may be granted to the backend.
///
/// The backend can write to a granted page at any time, so the kernel must
/// implement every access as a volatile (or atomic) access to the page, and
/// the driver treats whatever it reads as untrusted: it copies bytes out with
/// [`read`](SharedPage::read) before looking at them, and reads each ring
/// index exactly once per use with [`read_u32`](SharedPage::read_u32).
///
/// Methods take `&self` because the memory is shared with another domain
/// anyway (interior mutability is the honest model).
///
/// The driver only ever passes in-bounds arguments: `off + len <= PAGE_SIZE`,
/// and `off % 4 == 0` for the `u32` accessors. An implementation may panic on
/// anything else (it would be a bug in this crate, never backend input).
pub trait SharedPage {
    /// Copy `buf.len()` bytes starting at `off` out of the page.
    fn read(&self, off: usize, buf: &mut [u8]);
    /// Copy `data` into the page starting at `off`.
    fn write(&self, off: usize, data: &[u8]);
    /// One aligned 32-bit little-endian load (a single access: ring indexes
    /// are read this way so the value cannot tear).
    fn read_u32(&self, off: usize) -> u32;
    /// One aligned 32-bit little-endian store.
    fn write_u32(&self, off: usize, v: u32);
}

/// The kernel services the driver uses.
///
/// Xenstore paths: the driver passes relative paths for its own device
/// directory (`device/vif/0/...`, relative to `/local/domain/<self>/`, as the
/// xenstore wire protocol allows) and absolute paths for the backend's
/// directory (taken from the `backend` key).
pub trait Platform {
    /// A page handle. Dropping one does not free it: the driver hands every
    /// page back through [`free_page`](Platform::free_page), or keeps it
    /// forever when the backend still maps it.
    type Page: SharedPage;

    /// A zero-filled, page-aligned 4 KiB page.
    fn alloc_page(&mut self) -> Result<Self::Page, Error>;
    /// Return a page obtained from `alloc_page` whose grant (if any) has ended.
    fn free_page(&mut self, page: Self::Page);

    /// Grant `domid` access to `page` (grant table v1, `GTF_permit_access`,
    /// plus `GTF_readonly` when `readonly`). Running out of grant references is
    /// [`Error::NoGrants`], never a panic.
    fn grant(&mut self, page: &Self::Page, domid: u16, readonly: bool) -> Result<GrantRef, Error>;
    /// End a grant and recycle its reference. Must fail with
    /// [`Error::GrantInUse`] (and leave the grant in place) when the remote
    /// domain still has the page mapped (v1: `GTF_reading`/`GTF_writing` set;
    /// clear the flags word with a compare-exchange that only succeeds when
    /// they are clear, as Linux's `gnttab_end_foreign_access_ref` does); the
    /// driver then keeps the page rather than reuse it.
    fn end_grant(&mut self, gref: GrantRef) -> Result<(), Error>;

    /// `EVTCHNOP_alloc_unbound` for `remote`: a fresh port the backend binds to.
    /// The driver never needs an upcall; the kernel may keep the port masked
    /// and sleep on it with `SCHEDOP_poll`.
    fn alloc_unbound(&mut self, remote: u16) -> Result<Port, Error>;
    /// `EVTCHNOP_close`.
    fn close_port(&mut self, port: Port);
    /// `EVTCHNOP_send`.
    fn notify(&mut self, port: Port);
    /// Test and clear the port's pending bit.
    fn take_pending(&mut self, port: Port) -> bool;

    /// Read a xenstore node. A node that does not exist is
    /// [`Error::XsNotFound`] (the driver treats absent optional keys as their
    /// documented default); any other failure is [`Error::Xenstore`].
    fn xs_read(&mut self, path: &str) -> Result<String, Error>;
    /// Write (create or overwrite) a xenstore node.
    fn xs_write(&mut self, path: &str, value: &str) -> Result<(), Error>;

    /// Read several nodes: one result each, in order, as
    /// [`xs_read`](Platform::xs_read) gives them. A kernel that can send
    /// them all before waiting (one round trip instead of one each) should;
    /// by default they are read one by one.
    fn xs_read_all(&mut self, paths: &[&str]) -> Vec<Result<String, Error>> {
        paths.iter().map(|p| self.xs_read(p)).collect()
    }

    /// Write several nodes, in order, all or none: a kernel should use one
    /// xenstore transaction (retried while xenstored reports a conflict)
    /// and send the writes without waiting for each. By default they are
    /// written one by one, stopping at the first failure.
    fn xs_write_all(&mut self, writes: &[(&str, &str)]) -> Result<(), Error> {
        writes.iter().try_for_each(|(p, v)| self.xs_write(p, v))
    }

    /// The handshake just passed `step` (for the kernel's boot timeline);
    /// called once per step and connection, right after the step's xenstore
    /// work. Nothing by default.
    fn handshake_step(&mut self, step: HandshakeStep) {
        let _ = step;
    }
}

/// The points of the xenbus handshake [`Platform::handshake_step`] reports,
/// in the order a connection passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Our device's keys (backend, mac, mtu) read, Initialising written.
    DeviceRead,
    /// The backend is in InitWait (its hotplug is done).
    BackendInitWait,
    /// Our rings, event channel, features and Connected written.
    KeysWritten,
    /// The backend is Connected.
    BackendConnected,
}

/// Errors from the platform and from the driver itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The kernel has no page to give.
    NoMemory,
    /// The grant table has no free reference.
    NoGrants,
    /// `end_grant` refused: the backend still maps the page.
    GrantInUse,
    /// An event-channel operation failed.
    EventChannel,
    /// The xenstore node does not exist (`ENOENT`).
    XsNotFound,
    /// Any other xenstore failure.
    Xenstore,
    /// A [`Config`](crate::Config) value is out of range.
    BadConfig(&'static str),
    /// The vif's xenstore directory has no `backend` node: no such device.
    NoDevice,
    /// A xenstore node the protocol needs has a value we cannot parse.
    BadXenstoreValue(&'static str),
    /// A xenstore node the protocol needs does not exist.
    MissingXenstoreValue(&'static str),
    /// Reading a xenstore node the protocol needs failed (a xenstore error
    /// or timeout, not a missing node); the kernel logs the cause.
    XenstoreRead(&'static str),
    /// The backend does not offer `feature-rx-copy`; this driver only does
    /// receive-by-copy (page flipping is obsolete and unsupported).
    BackendLacksRxCopy,
    /// The backend did not reach the state we waited for in time.
    HandshakeTimeout {
        /// The backend state we were waiting for.
        waiting_for: crate::XenbusState,
        /// The backend state we saw last (`None`: node absent or unreadable).
        backend_state: Option<crate::XenbusState>,
    },
    /// The backend went to Closing/Closed during the handshake.
    BackendClosed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoMemory => f.write_str("out of memory"),
            Error::NoGrants => f.write_str("grant table exhausted"),
            Error::GrantInUse => f.write_str("grant still mapped by the backend"),
            Error::EventChannel => f.write_str("event channel operation failed"),
            Error::XsNotFound => f.write_str("xenstore node not found"),
            Error::Xenstore => f.write_str("xenstore operation failed"),
            Error::BadConfig(what) => write!(f, "bad netfront config: {what}"),
            Error::NoDevice => f.write_str("no such vif (no backend node in xenstore)"),
            Error::BadXenstoreValue(key) => write!(f, "unparsable xenstore value for {key}"),
            Error::MissingXenstoreValue(key) => write!(f, "missing xenstore value for {key}"),
            Error::XenstoreRead(key) => write!(f, "xenstore error reading {key}"),
            Error::BackendLacksRxCopy => {
                f.write_str("backend does not offer feature-rx-copy (required)")
            }
            Error::HandshakeTimeout {
                waiting_for,
                backend_state,
            } => {
                write!(
                    f,
                    "timed out waiting for backend state {waiting_for}, backend is "
                )?;
                match backend_state {
                    Some(s) => write!(f, "{s}"),
                    None => f.write_str("absent"),
                }
            }
            Error::BackendClosed => f.write_str("backend closed during the handshake"),
        }
    }
}
