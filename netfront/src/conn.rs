//! One connection's shared resources and the TX/RX ring logic.
//!
//! Everything read from a granted page is untrusted: a slot is copied out in
//! one piece before it is decoded, the response producer index is checked
//! against what we requested, every id/status/offset/length is checked, and
//! which RX buffer a slot refers to comes from our own bookkeeping, never from
//! the backend (netif.h: an RX response sits in the slot of its request, so the
//! buffer posted in that slot is the one consumed whatever id the backend
//! writes; we only *check* the id).

use alloc::vec;
use alloc::vec::Vec;

use crate::csum::fill_ipv4_l4_checksum;
use crate::platform::{GrantRef, Platform, Port, SharedPage, PAGE_SIZE};
use crate::ring::{self, FrontRing};
use crate::stats::Stats;
use crate::wire::*;

/// Bytes per TX buffer; two buffers share a granted page. A frame is at most
/// MTU (clamped to 1500 without `feature-sg`) + 14 = 1514 bytes.
pub const TX_BUF_SIZE: usize = 2048;
pub const TX_BUFS_PER_PAGE: usize = PAGE_SIZE / TX_BUF_SIZE;

/// Pages a connection uses: two rings, one per RX buffer, and the TX buffers
/// packed two to a page.
pub fn pages_needed(nrx: usize, ntx: usize) -> usize {
    2 + nrx + ntx.div_ceil(TX_BUFS_PER_PAGE)
}

/// A ring protocol violation after which the rings cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehavior {
    /// The RX response producer covers more responses than requests posted.
    RxProducerOverflow,
    /// The TX response producer covers more responses than requests made.
    TxProducerOverflow,
}

impl core::fmt::Display for Misbehavior {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Misbehavior::RxProducerOverflow => {
                "RX response producer index jumped past our requests"
            }
            Misbehavior::TxProducerOverflow => {
                "TX response producer index jumped past our requests"
            }
        })
    }
}

/// A page we allocated and granted.
pub struct Shared<Pg> {
    pub page: Pg,
    pub gref: GrantRef,
}

/// How to treat the next RX slots of a frame being dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    None,
    /// Extra-info slots follow; after them, data slots if `then_frags`.
    Extras {
        then_frags: bool,
    },
    /// Continuation data slots follow (`NETRXF_more_data`).
    Frags,
}

/// Result of looking for the next received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// A frame of this length was copied into the output buffer.
    Frame(usize),
    /// No more responses.
    Empty,
    /// Responses remain but the per-poll budget is spent.
    Budget,
    /// The ring is broken; stop using it.
    Broken(Misbehavior),
}

pub struct Conn<P: Platform> {
    pub port: Option<Port>,
    /// `[tx ring, rx ring, rx buffers.., tx pages..]`, in allocation order
    /// (a partially built connection holds a prefix of this).
    pub pages: Vec<Shared<P::Page>>,
    nrx: usize,
    ntx: usize,
    tx: FrontRing,
    rx: FrontRing,
    /// RX ring slot -> buffer posted in it.
    rx_slot: Vec<Option<u16>>,
    /// RX buffers consumed and waiting to be posted again.
    rx_free: Vec<u16>,
    rx_skip: Skip,
    tx_inflight: Vec<bool>,
    tx_free: Vec<u16>,
}

impl<P: Platform> Conn<P> {
    pub fn new(nrx: usize, ntx: usize) -> Self {
        Conn {
            port: None,
            pages: Vec::with_capacity(pages_needed(nrx, ntx)),
            nrx,
            ntx,
            tx: FrontRing::new(TX_RING_SIZE),
            rx: FrontRing::new(RX_RING_SIZE),
            rx_slot: vec![None; RX_RING_SIZE],
            rx_free: (0..nrx as u16).rev().collect(),
            rx_skip: Skip::None,
            tx_inflight: vec![false; ntx],
            tx_free: (0..ntx as u16).rev().collect(),
        }
    }

    /// Is page `i` (in allocation order) granted read-only? Only TX pages are.
    pub fn readonly_page(&self, i: usize) -> bool {
        i >= 2 + self.nrx
    }

    pub fn tx_ring_ref(&self) -> GrantRef {
        self.pages[0].gref
    }
    pub fn rx_ring_ref(&self) -> GrantRef {
        self.pages[1].gref
    }

    fn notify(&self, platform: &mut P, stats: &mut Stats) {
        if let Some(p) = self.port {
            platform.notify(p);
            stats.notifies += 1;
        }
    }

    /// `SHARED_RING_INIT` both rings (all pages allocated). `start` is 0 in
    /// the protocol; tests start near 2^32 to cross the index wrap.
    pub fn init_rings(&mut self, start: u32) {
        ring::init_shared(&self.pages[0].page, start);
        ring::init_shared(&self.pages[1].page, start);
        self.tx = FrontRing::starting_at(TX_RING_SIZE, start);
        self.rx = FrontRing::starting_at(RX_RING_SIZE, start);
    }

    /// Are there RX responses waiting (a cheap check for `poll_delay`)?
    pub fn rx_pending(&self) -> bool {
        self.rx.read_rsp_prod(&self.pages[1].page) != self.rx.rsp_cons
    }

    // ---------------------------------------------------------------- RX

    /// Post every free RX buffer and notify the backend if it asked.
    pub fn rx_refill(&mut self, platform: &mut P, stats: &mut Stats) {
        while self.rx.free_requests() > 0 {
            let Some(buf) = self.rx_free.pop() else { break };
            let idx = self.rx.req_prod_pvt;
            let slot = idx as usize & (RX_RING_SIZE - 1);
            let req = RxRequest {
                id: buf,
                pad: 0,
                gref: self.pages[2 + buf as usize].gref.0,
            };
            self.pages[1].page.write(rx_slot_offset(idx), &req.encode());
            self.rx_slot[slot] = Some(buf);
            self.rx.req_prod_pvt = idx.wrapping_add(1);
        }
        if self.rx.push_requests(&self.pages[1].page) {
            self.notify(platform, stats);
        }
    }

    /// Consume RX responses until one valid frame is copied into `out`, the
    /// ring is empty, or `budget` slots have been consumed. Consumed buffers
    /// are posted again before returning.
    pub fn rx_pull(
        &mut self,
        platform: &mut P,
        stats: &mut Stats,
        budget: &mut u32,
        out: &mut Vec<u8>,
    ) -> RxOutcome {
        let outcome = self.rx_pull_inner(stats, budget, out);
        if !matches!(outcome, RxOutcome::Broken(_)) {
            self.rx_refill(platform, stats);
        }
        outcome
    }

    fn rx_pull_inner(
        &mut self,
        stats: &mut Stats,
        budget: &mut u32,
        out: &mut Vec<u8>,
    ) -> RxOutcome {
        loop {
            if *budget == 0 {
                if self.rx_pending() {
                    stats.rx_budget_exhausted += 1;
                    return RxOutcome::Budget;
                }
                return RxOutcome::Empty;
            }
            let ring_page = &self.pages[1].page;
            let prod = self.rx.read_rsp_prod(ring_page);
            let avail = match self.rx.available(prod) {
                Ok(a) => a,
                Err(o) => {
                    stats.rsp_prod_overflow += 1;
                    log::warn!(
                        "netfront: rx rsp_prod {} with rsp_cons {} and {} outstanding: ring broken",
                        o.rsp_prod,
                        o.rsp_cons,
                        o.outstanding
                    );
                    return RxOutcome::Broken(Misbehavior::RxProducerOverflow);
                }
            };
            if avail == 0 {
                if self.rx.arm_rsp_event(ring_page) != self.rx.rsp_cons {
                    // Responses arrived meanwhile. This costs budget too, so
                    // a backend moving rsp_prod back and forth cannot keep
                    // us here.
                    *budget -= 1;
                    continue;
                }
                return RxOutcome::Empty;
            }
            *budget -= 1;

            let idx = self.rx.rsp_cons;
            let mut raw = [0u8; RX_SLOT];
            ring_page.read(rx_slot_offset(idx), &mut raw);
            self.rx.rsp_cons = idx.wrapping_add(1);
            let slot = idx as usize & (RX_RING_SIZE - 1);
            // available() <= outstanding, so every consumable slot holds a
            // buffer we posted.
            let Some(buf) = self.rx_slot[slot].take() else {
                debug_assert!(false, "rx slot {slot} without a buffer");
                continue;
            };
            self.rx_free.push(buf);

            match self.rx_skip {
                Skip::Extras { then_frags } => {
                    let extra = ExtraInfo::decode(&raw);
                    if extra.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                        self.rx_skip = if then_frags { Skip::Frags } else { Skip::None };
                    }
                    continue;
                }
                Skip::Frags => {
                    if RxResponse::decode(&raw).flags & NETRXF_MORE_DATA == 0 {
                        self.rx_skip = Skip::None;
                    }
                    continue;
                }
                Skip::None => {}
            }

            let rsp = RxResponse::decode(&raw);
            // Framing first: whatever is wrong with this response, the slots
            // it announces belong to the same frame and are skipped with it.
            let extra = rsp.flags & NETRXF_EXTRA_INFO != 0;
            let more = rsp.flags & NETRXF_MORE_DATA != 0;
            self.rx_skip = match (extra, more) {
                (true, then_frags) => Skip::Extras { then_frags },
                (false, true) => Skip::Frags,
                (false, false) => Skip::None,
            };
            if rsp.status < 0 {
                stats.rx_drop_error += 1;
                log::debug!("netfront: rx error status {}", rsp.status);
                continue;
            }
            if rsp.id != buf {
                stats.rx_drop_bad_id += 1;
                log::debug!("netfront: rx id {} in the slot of buffer {}", rsp.id, buf);
                continue;
            }
            if more {
                stats.rx_drop_multislot += 1;
                continue;
            }
            if extra {
                stats.rx_drop_extra_info += 1;
                continue;
            }
            let (off, len) = (rsp.offset as usize, rsp.status as usize);
            if len == 0 || off + len > PAGE_SIZE {
                stats.rx_drop_bad_len += 1;
                log::debug!("netfront: rx bad offset {off} length {len}");
                continue;
            }
            out.clear();
            out.resize(len, 0);
            self.pages[2 + buf as usize].page.read(off, &mut out[..]);
            if rsp.flags & NETRXF_CSUM_BLANK != 0 {
                match fill_ipv4_l4_checksum(out) {
                    Ok(()) => stats.rx_csum_filled += 1,
                    Err(e) => {
                        stats.rx_drop_csum += 1;
                        log::debug!("netfront: rx csum_blank frame not completed: {e:?}");
                        continue;
                    }
                }
            }
            stats.rx_frames += 1;
            stats.rx_bytes += len as u64;
            return RxOutcome::Frame(len);
        }
    }

    // ---------------------------------------------------------------- TX

    /// Take back TX buffers the backend has answered for. At most two passes
    /// over at most a ring's worth of responses.
    pub fn tx_reap(&mut self, stats: &mut Stats) -> Result<(), Misbehavior> {
        for _ in 0..2 {
            let ring_page = &self.pages[0].page;
            let prod = self.tx.read_rsp_prod(ring_page);
            let avail = self.tx.available(prod).map_err(|o| {
                stats.rsp_prod_overflow += 1;
                log::warn!(
                    "netfront: tx rsp_prod {} with rsp_cons {} and {} outstanding: ring broken",
                    o.rsp_prod,
                    o.rsp_cons,
                    o.outstanding
                );
                Misbehavior::TxProducerOverflow
            })?;
            for _ in 0..avail {
                let idx = self.tx.rsp_cons;
                let mut raw = [0u8; 4];
                ring_page.read(tx_slot_offset(idx), &mut raw);
                self.tx.rsp_cons = idx.wrapping_add(1);
                let rsp = TxResponse::decode(&raw);
                if rsp.status == NETIF_RSP_NULL {
                    // Only answers an extra-info slot, and we never send any.
                    stats.tx_bad_status += 1;
                    continue;
                }
                let id = rsp.id as usize;
                if id >= self.ntx || !self.tx_inflight[id] {
                    stats.tx_bad_id += 1;
                    log::debug!("netfront: tx response for id {id}, not in flight");
                    continue;
                }
                self.tx_inflight[id] = false;
                self.tx_free.push(id as u16);
                match rsp.status {
                    NETIF_RSP_OKAY => stats.tx_completed += 1,
                    NETIF_RSP_ERROR | NETIF_RSP_DROPPED => stats.tx_error += 1,
                    _ => stats.tx_bad_status += 1,
                }
            }
            // Every request has been answered, so nothing can legitimately
            // still be in flight: take back what a faulty backend never
            // answered for (it answered some other id instead).
            if self.tx.outstanding() == 0 && self.tx_free.len() < self.ntx {
                for (id, f) in self.tx_inflight.iter_mut().enumerate() {
                    if *f {
                        *f = false;
                        self.tx_free.push(id as u16);
                        stats.tx_reclaimed += 1;
                    }
                }
            }
            if self.tx.arm_rsp_event(ring_page) == self.tx.rsp_cons {
                break;
            }
        }
        Ok(())
    }

    /// Is there a TX buffer and ring slot for one more frame? Reaps first
    /// when none is free.
    pub fn tx_ready(&mut self, stats: &mut Stats) -> Result<bool, Misbehavior> {
        if self.tx_free.is_empty() || self.tx.free_requests() == 0 {
            self.tx_reap(stats)?;
        }
        Ok(!self.tx_free.is_empty() && self.tx.free_requests() > 0)
    }

    /// Could `receive()` make progress now: RX responses waiting, and a TX
    /// buffer free (or TX responses waiting to free one)? Reads the shared
    /// producers only.
    pub fn rx_progress_possible(&self) -> bool {
        if !self.rx_pending() {
            return false;
        }
        (!self.tx_free.is_empty() && self.tx.free_requests() > 0)
            || self.tx.read_rsp_prod(&self.pages[0].page) != self.tx.rsp_cons
    }

    /// TX buffers in flight.
    pub fn tx_in_flight(&self) -> usize {
        self.ntx - self.tx_free.len()
    }

    /// Copy `frame` into a free TX buffer and put it on the ring. The caller
    /// checked `tx_ready` and the length (14..=TX_BUF_SIZE).
    pub fn tx_send(&mut self, platform: &mut P, stats: &mut Stats, frame: &[u8]) {
        debug_assert!(frame.len() <= TX_BUF_SIZE);
        if self.tx.free_requests() == 0 {
            stats.tx_ring_full += 1;
            return;
        }
        let Some(id) = self.tx_free.pop() else {
            stats.tx_ring_full += 1;
            return;
        };
        let page = &self.pages[2 + self.nrx + id as usize / TX_BUFS_PER_PAGE];
        let off = (id as usize % TX_BUFS_PER_PAGE) * TX_BUF_SIZE;
        page.page.write(off, frame);
        let req = TxRequest {
            gref: page.gref.0,
            offset: off as u16,
            flags: 0, // complete checksums, single slot, no extras
            id,
            size: frame.len() as u16,
        };
        let idx = self.tx.req_prod_pvt;
        self.pages[0].page.write(tx_slot_offset(idx), &req.encode());
        self.tx.req_prod_pvt = idx.wrapping_add(1);
        self.tx_inflight[id as usize] = true;
        stats.tx_frames += 1;
        stats.tx_bytes += frame.len() as u64;
        if self.tx.push_requests(&self.pages[0].page) {
            self.notify(platform, stats);
        }
    }
}
