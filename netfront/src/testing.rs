//! Test harnesses, outside the library's normal build: compiled for the
//! crate's own tests and with the `testing` feature (for a fuzz crate or
//! other tests outside this crate). Nothing here is for a real guest.
//!
//! - [`xen`]: an in-memory Xen (pages, grants, event channels, xenstore) and
//!   [`FakePlatform`], the driver's `Platform` over it.
//! - [`netback`]: [`FakeNetback`], a fake Linux netback on that Xen.
//! - [`harness`]: [`H`], driver + fake netback + clock stepped together, the
//!   frames the tests send, and [`Rng`], the one pseudo-random generator.
//! - [`smoltcp_peer`]: two smoltcp stacks talking through the driver and the
//!   fake netback, generic over how dom0's side sends ([`smoltcp_peer::PeerLink`]).
//! - [`rx_assembly`]: the driver's pure RX reassembly state machine, for
//!   feeding it slots directly.
//! - [`csum`]: the driver's IPv4 TCP/UDP checksum functions.

pub mod harness;
pub mod netback;
pub mod smoltcp_peer;
pub mod xen;

pub use harness::*;
pub use netback::*;
pub use xen::*;

/// The driver's checksum code (for the fuzz target that compares it with a
/// reference implementation).
pub mod csum {
    pub use crate::csum::*;
}

/// The driver's RX reassembly state machine (no ring, no pages: slots in,
/// packets or drop reasons out).
pub mod rx_assembly {
    pub use crate::rx_assembly::{Fed, RxAssembler, RxDrop, RxPacket};
}
