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
//! above 1500 is clamped to 1500 in both modes), writes `state=1`
//! (Initialising), waits for the backend's InitWait (2), reads the backend's
//! features, decides the mode (offload or not, see below), allocates and
//! grants both rings and the buffers, allocates an unbound event channel,
//! posts every RX buffer, writes the keys below and then `state=4`
//! (Connected — Linux netback connects on frontend Connected and ignores
//! Initialised), and waits for the backend's Connected (4). It logs
//! `netfront: vif0 connected, offload: tso+sg+csum (tx frames up to N B)`
//! or `..., offload: off (reason)`; [`Netfront::offload`] says the same.
//! While connected it re-reads the backend state every `state_check_ms`
//! (backing off to `state_check_max_ms` while nothing changes);
//! backend Closing/Closed (e.g. `xl network-detach`) or a vanished backend
//! directory makes it answer Closed, report [`Event::Disconnected`], wait for
//! the backend to reach Closed, end every grant and free the pages (a page
//! the backend still maps after `close_timeout_ms` is leaked, never reused),
//! report [`Event::Released`], and stay alive in [`State::Disconnected`]
//! ([`Netfront::reconnect`] starts over, negotiating again).
//!
//! # Two modes
//!
//! *Offload* ([`Config::offload`], default on) is used when the backend
//! offers `feature-sg` and `feature-gso-tcpv4` and `rx_buffers >= 18`
//! (netback only delivers a 64 KiB packet once 17 + 1 slots are posted);
//! otherwise the driver behaves exactly as it did before offload existed
//! ("plain" below). Offload exists because the per-frame cost in dom0
//! bounds throughput: with it, TCP moves in frames of up to 64 KiB that
//! netback segments (or hands whole to dom0's stack), and dom0 neither
//! computes nor checks TCP checksums for us.
//!
//! # Feature keys
//!
//! Written by the frontend (besides `tx-ring-ref`, `rx-ring-ref`,
//! `event-channel`, `state`), [`FRONTEND_FEATURES`] / [`FRONTEND_FEATURES_OFFLOAD`]:
//!
//! | key | plain | offload | why |
//! |---|---|---|---|
//! | `request-rx-copy` | 1 | 1 | the backend copies into our granted pages; page flipping is obsolete and Linux netback refuses frontends without it |
//! | `feature-rx-notify` | 1 | 1 | we notify after posting RX requests (per `req_event`); netback relies on it |
//! | `feature-sg` | 0 | 1 | plain: one frame = one slot keeps RX/TX simple and bounded (netback limits a non-SG vif to 1500); offload: packets span several slots both ways |
//! | `feature-gso-tcpv4` | 0 | 1 | offload: we send TSO frames with a GSO extra, netback may send us up to 64 KiB TCP packets |
//! | `feature-gso-tcpv6` | 0 | 0 | IPv4 only |
//! | `feature-no-csum-offload` | 1 | 0 | plain: ask for fully checksummed RX frames so smoltcp can verify them (netback then checksums in dom0); offload: IPv4 TCP/UDP checksum offload both ways |
//! | `feature-ipv6-csum-offload` | 0 | 0 | IPv4 only; explicit for clarity (absent means 0) |
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
//! [`Error::BackendLacksRxCopy`]); `feature-sg` and `feature-gso-tcpv4`
//! allow offload; the others are only reported.
//!
//! # Data path
//!
//! RX: `rx_buffers` pages (default 64), each granted writable to the backend
//! for the whole connection and posted on the RX ring; the backend copies
//! into them and answers in the same ring slots. The driver copies the frame
//! out (the backend could still write the page) before anything looks at
//! it, posts the buffers again, and hands smoltcp the copy.
//!
//! TX, plain: the frame smoltcp builds is copied into one of `tx_buffers`
//! 2 KiB buffers (default 32, two per read-only granted page); the backend's
//! response frees it. TX, offload: `tx_buffers` page-sized buffers (one
//! granted page each); a frame takes `ceil(len / 4096)` of them, one ring
//! slot each: the first request's `size` is the whole frame,
//! `NETTXF_more_data` is set on all but the last, and a TSO frame has
//! `NETTXF_extra_info` on the first request followed by a
//! `XEN_NETIF_EXTRA_TYPE_GSO` slot (`gso.size` = smoltcp's MSS,
//! `gso.type` = TCPV4). Each slot is answered with its id, the extra with
//! `NETIF_RSP_NULL` (its id is whatever our extra left there); a frame's
//! fate is its first slot's status.
//!
//! TSO frame size: smoltcp is told `segmentation.tcpv4` =
//! `min(65535, clamp(tx_buffers / 4, 1, 16) pages)` bytes
//! ([`Layout::tso_max_frame`]): four such frames fill the TX buffers (32
//! buffers: 32 KiB frames; 64 or more: 65535 bytes, the most a 16-bit first
//! `size` can say, in 16 slots, under netback's limits of 18 slots and 17
//! frags). `transmit()` only hands out a token when buffers and ring slots
//! for the largest frame are free (plus the GSO extra's slot), and
//! `receive()` only when there is room for an MTU-sized reply; otherwise they
//! return `None` (smoltcp retries; a TX completion raises an event), so
//! frames are delayed, never dropped or split.
//!
//! RX, offload: a packet may span several slots (`NETRXF_more_data`), its
//! first slot possibly flagged `NETRXF_extra_info` and followed by
//! extra-info slots (GSO: a TCP packet of up to 64 KiB). The slots are
//! copied, in order, into one contiguous buffer of 14 + 65535 bytes (kept
//! across calls when a packet's slots arrive in several pushes) and handed
//! to smoltcp whole: smoltcp's TCP accepts segments larger than its MTU.
//! Dropped and counted, the rest of the packet's slots consumed and reposted:
//! more than 19 data slots or 14 + 65535 bytes (`rx_drop_multislot`), an
//! error status, wrong id, or offset/length outside the page in any slot,
//! an empty first slot, and extras of type 0 or unknown, GSO extras of size 0
//! or unknown type, or more than 4 extras (`rx_drop_extra_info`). A chain
//! that never ends is consumed slot by slot (within the RX budget) and
//! dropped once. RX, plain: multi-slot and extra-info frames cannot occur
//! without `feature-sg`/GSO; if a backend sends them anyway, all their slots
//! are consumed, their buffers reposted, and the frame is dropped and
//! counted.
//!
//! # Checksums
//!
//! Plain: [`DeviceCapabilities`](smoltcp::phy::DeviceCapabilities) keeps
//! smoltcp's default `Checksum::Both` everywhere: smoltcp fills every
//! checksum on TX (we never set `NETTXF_csum_blank`) and verifies every one
//! on RX. A frame flagged `NETRXF_csum_blank` despite
//! `feature-no-csum-offload=1` gets its IPv4 TCP/UDP checksum computed here;
//! one we cannot complete is dropped and counted. `NETRXF_data_validated`
//! is ignored (smoltcp verifies anyway).
//!
//! Offload: TCP is `Checksum::None` (IPv4, UDP, ICMP stay `Both`). On TX
//! every IPv4 TCP frame gets the pseudo-header sum (folded, not
//! complemented, over the whole segment length) in its checksum field and
//! `NETTXF_csum_blank | NETTXF_data_validated`, which is what Linux's
//! `CHECKSUM_PARTIAL` is (netback's `checksum_setup` does not recompute it);
//! other frames go as smoltcp checksummed them, without flags. On RX a TCP
//! frame flagged `csum_blank` (made in this host) or `data_validated`
//! (checked by dom0 or its NIC) is trusted; one with neither is verified
//! here and dropped (`rx_csum_bad`) if wrong or not checkable (an IPv4
//! fragment); a non-TCP frame flagged `csum_blank` is completed as in plain
//! mode.
//!
//! smoltcp keeps the capabilities it reads in `Interface::new`; the driver
//! fixes its answer at the first `capabilities()` call (see
//! [`Netfront::offload`]) and treats frames according to what smoltcp was
//! told: create the Interface after [`Event::Connected`] to get offload.
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
//! Plain, default sizing: 2 ring pages + 64 RX pages + 16 TX pages = 82
//! pages = 328 KiB, plus about 7 KiB of heap: 336 KiB. Offload: one page
//! per TX buffer and 64 KiB copy buffers: 2 + 64 + 32 = 98 pages = 392 KiB,
//! plus about 98 KiB of heap (14 + 65535 for the received packet, the
//! largest TSO frame for the one smoltcp writes): 490 KiB
//! ([`Config::memory`], [`Netfront::memory`]). With the kernel's
//! `tx_bufs=64`: plain 98 pages, offload 130 pages and 64 KiB TSO frames.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod config;
mod csum;
mod datapath;
mod driver;
mod layout;
mod platform;
mod ring;
mod rx_assembly;
mod stats;
mod types;
pub mod wire;
mod xenbus;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
#[cfg(all(feature = "testing", not(test)))]
extern crate std;

pub use config::Config;
pub use driver::{Netfront, RxToken, TxToken, FRONTEND_FEATURES, FRONTEND_FEATURES_OFFLOAD};
pub use layout::{
    Layout, MemoryUse, MAX_MTU, MAX_RX_FRAME, MIN_MTU, RX_BUFFERS_FOR_OFFLOAD, RX_MAX_DATA_SLOTS,
    TSO_MAX_PAGES, TX_BUF_SIZE,
};
pub use platform::{Error, GrantRef, HandshakeStep, Platform, Port, SharedPage, PAGE_SIZE};
pub use stats::Stats;
pub use types::{BackendFeatures, Event, Misbehavior, Offload, OffloadOff, Reason, State};
pub use xenbus::XenbusState;
