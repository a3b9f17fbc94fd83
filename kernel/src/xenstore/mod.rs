//! Xenstore client for the guest: the shared-page ring and message protocol of
//! Xen's `xen/include/public/io/xs_wire.h`.
//!
//! - [`wire`]: message header, types, errno names, payload encode/decode.
//! - [`ring`]: the shared page and its two byte rings, behind
//!   [`netfront::SharedPage`] (the workspace's one shared-page trait).
//! - [`client`]: [`Xenstore`], requests with deadlines, transactions with
//!   retry, watch events; pipelined batches (`batch.rs`).
//!
//! The kernel supplies the page (its `mm::SharedPage` over the mapped
//! `start_info.store_mfn` page) and the event channel and clock (an
//! [`Events`] over `start_info.store_evtchn`, `SCHEDOP_poll` and pvclock).
//! No `unsafe` here: `mm::SharedPage` is the only place that touches shared
//! memory.

pub mod client;
pub mod ring;
pub mod wire;

#[cfg(test)]
mod batch_tests;
/// The fake xenstored of the tests, also for the fuzz targets (`hosted`).
#[cfg(any(test, feature = "hosted"))]
pub mod fake;
#[cfg(test)]
mod tests;

pub use client::{
    Broken, Events, Op, Req, Tx, TxId, Xenstore, XsError, DEFAULT_TIMEOUT_NS, MAX_BATCH,
    MAX_QUEUED_EVENTS, MAX_TX_ATTEMPTS,
};
pub use wire::{Errno, WatchEvent, WireError};
