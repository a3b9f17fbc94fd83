//! Xen PV network frontend (`xen/include/public/io/netif.h`) as a smoltcp
//! [`phy::Device`](smoltcp::phy::Device), for Miniproxy's unikernel.
//!
//! The crate is `no_std` + `alloc` and has no `unsafe`: everything that
//! touches hardware (grant table, event channels, xenstore, the shared pages)
//! is behind the [`Platform`] and [`SharedPage`] traits, which the kernel
//! implements and the host tests fake.
//!
//! # Use
//!
//! ```text
//! let mut nf = Netfront::new(kernel_platform, Config::default())?;
//! loop {
//!     if let Some(ev) = nf.poll(now_ms) { log(ev) }          // handshake, TX completions, refill
//!     iface.poll(now, &mut nf, &mut sockets);                // smoltcp pulls frames via receive()/transmit()
//!     sleep on nf's event channel for min(nf.poll_delay(now), iface.poll_delay(..))
//! }
//! ```
//!
//! Nothing blocks. [`Netfront::poll`] advances the xenbus state machine by
//! re-reading xenstore every `retry_ms` while waiting on the backend, and
//! fails with a clear [`Error::HandshakeTimeout`] after
//! `handshake_timeout_ms` instead of hanging.
//!
//! # Handshake
//!
//! Reads `device/vif/N/backend`, `backend-id`, `mac` and `mtu` (absent: 1500;
//! above 1500 needs `feature-sg`, so clamped to 1500), writes `state=1`
//! (Initialising), waits for the backend's InitWait (2), reads the backend's
//! features, allocates and grants both rings and the buffers, allocates an
//! unbound event channel, posts every RX buffer, writes the keys below and
//! then `state=4` (Connected — Linux netback connects on frontend Connected
//! and ignores Initialised), and waits for the backend's Connected (4).
//! While connected it re-reads the backend state every `state_check_ms`;
//! backend Closing/Closed (e.g. `xl network-detach`) or a vanished backend
//! directory makes it answer Closed, report [`Event::Disconnected`], wait for
//! the backend to reach Closed, end every grant and free the pages (a page
//! the backend still maps after `close_timeout_ms` is leaked, never reused),
//! report [`Event::Released`], and stay alive in [`State::Disconnected`]
//! ([`Netfront::reconnect`] starts over).
//!
//! # Feature keys
//!
//! Written by the frontend (besides `tx-ring-ref`, `rx-ring-ref`,
//! `event-channel`, `state`):
//!
//! | key | value | why |
//! |---|---|---|
//! | `request-rx-copy` | 1 | the backend copies into our granted pages; page flipping is obsolete and Linux netback refuses frontends without it |
//! | `feature-rx-notify` | 1 | we notify after posting RX requests (per `req_event`); netback relies on it |
//! | `feature-sg` | 0 | one frame = one slot keeps RX/TX simple and bounded; it caps the MTU at 1500 (netback limits a non-SG vif to 1500) |
//! | `feature-gso-tcpv4`, `feature-gso-tcpv6` | 0 | smoltcp neither produces nor consumes GSO superframes; they would need SG anyway |
//! | `feature-no-csum-offload` | 1 | ask for fully checksummed RX frames so smoltcp can verify them; netback then computes checksums in dom0 |
//! | `feature-ipv6-csum-offload` | 0 | IPv4 only; explicit for clarity (absent means 0) |
//!
//! Deliberately not written: `multi-queue-num-queues` (one queue; netif.h:
//! single-queue frontends use the top-level keys, compatible with every
//! backend), `event-channel-tx`/`-rx` (no split event channels: one port,
//! one poll loop), `request-multicast-control` (we receive the flood; no
//! filtering needed at our rates), `ctrl-ring-ref` (hashing is for
//! multi-queue), `xdp-headroom` (no XDP), `feature-gso-tcpv4-prefix`
//! (obsolete).
//!
//! Read from the backend ([`BackendFeatures`], logged and reported with
//! [`Event::Connected`]): `feature-rx-copy` is required (otherwise
//! [`Error::BackendLacksRxCopy`]); every other one is only reported, since we
//! use none of them — so a backend lacking any of them changes nothing.
//!
//! # Data path
//!
//! RX: `rx_buffers` pages (default 64), each granted writable to the backend
//! for the whole connection and posted on the RX ring; the backend copies a
//! frame into one and answers in the same ring slot. The driver copies the
//! frame out (the backend could still write the page) before anything looks
//! at it, posts the buffer again, and hands smoltcp the copy. TX: the frame
//! smoltcp builds is copied into one of `tx_buffers` 2 KiB buffers (default
//! 32, two per read-only granted page); the backend's response frees it.
//! When no TX buffer is free, `transmit()` and `receive()` return `None`
//! (smoltcp retries; a TX completion raises an event), so replies are
//! delayed, not dropped.
//!
//! Checksums: [`DeviceCapabilities`](smoltcp::phy::DeviceCapabilities) keeps
//! smoltcp's default `Checksum::Both` everywhere: smoltcp fills every
//! checksum on TX (we never set `NETTXF_csum_blank`) and verifies every one
//! on RX. A frame flagged `NETRXF_csum_blank` despite
//! `feature-no-csum-offload=1` gets its IPv4 TCP/UDP checksum computed here;
//! one we cannot complete is dropped and counted. `NETRXF_data_validated`
//! is ignored (smoltcp verifies anyway).
//!
//! Multi-slot frames (`NETRXF_more_data`) and frames with extra-info slots
//! cannot occur without `feature-sg`/GSO; if a backend sends them anyway,
//! all their slots are consumed, their buffers reposted, and the frame is
//! dropped and counted. We never send multi-slot frames.
//!
//! # The backend is untrusted
//!
//! Shared memory is read with single copies (`SharedPage::read`,
//! `read_u32`); a response producer index that covers more responses than
//! requests outstanding breaks the ring (we disconnect cleanly, like Linux's
//! hardened netfront); every response's id, status, offset and length is
//! checked and a bad one is dropped and counted in [`Stats`]; which RX
//! buffer a response refers to comes from our own slot bookkeeping; TX
//! buffers the backend never answers for are taken back once every ring slot
//! is answered. Work per `poll` is bounded (`rx_budget` RX slots; at most two
//! ring's worth of TX responses). Nothing the backend writes can panic the
//! driver.
//!
//! # Memory
//!
//! Default sizing: 2 ring pages + 64 RX pages + 16 TX pages = 82 pages =
//! 328 KiB, plus about 7 KiB of heap: 336 KiB ([`Config::memory`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod conn;
mod csum;
mod driver;
mod platform;
mod ring;
mod stats;
pub mod wire;
mod xenbus;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use conn::{
    Layout, Misbehavior, MAX_RX_FRAME, RX_BUFFERS_FOR_OFFLOAD, RX_MAX_DATA_SLOTS, TSO_MAX_PAGES,
    TX_BUF_SIZE,
};
pub use driver::{
    BackendFeatures, Config, Event, MemoryUse, Netfront, Offload, OffloadOff, Reason, RxToken,
    State, TxToken, FRONTEND_FEATURES, FRONTEND_FEATURES_OFFLOAD, MAX_MTU, MIN_MTU,
};
pub use platform::{Error, GrantRef, Platform, Port, SharedPage, PAGE_SIZE};
pub use stats::Stats;
pub use xenbus::XenbusState;
