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

use crate::csum::{self, fill_ipv4_l4_checksum, PROTO_TCP};
use crate::platform::{GrantRef, Platform, Port, SharedPage, PAGE_SIZE};
use crate::ring::{self, FrontRing};
use crate::stats::Stats;
use crate::wire::*;

/// Bytes per TX buffer without offload; two buffers share a granted page. A
/// frame is at most MTU (clamped to 1500) + 14 = 1514 bytes.
pub const TX_BUF_SIZE: usize = 2048;

/// Ethernet header bytes.
const ETH_HDR: usize = 14;

/// Largest TX frame in offload mode, in TX pages: 16 pages hold the largest
/// packet the wire format can describe (`XEN_NETIF_MAX_TX_SIZE`, 65535
/// bytes, since the first request's `size` is 16 bits), in 16 slots, fewer
/// than the 18 every backend accepts (`XEN_NETIF_NR_SLOTS_MIN`) and within
/// Linux netback's `MAX_SKB_FRAGS` (17) so it never takes its frag-list
/// copy path.
pub const TSO_MAX_PAGES: usize = 16;
/// A received packet (all its slots) may be at most this long: an Ethernet
/// header and the largest IPv4 packet. Linux netback's GSO packets are at
/// most this (its GSO limit is 64 KiB of IP packet).
pub const MAX_RX_FRAME: usize = ETH_HDR + 65535;
/// Data slots a received packet may use: `XEN_NETIF_NR_SLOTS_MIN` plus one
/// (Linux netfront's bound). 64 KiB in full pages takes 17.
pub const RX_MAX_DATA_SLOTS: u32 = XEN_NETIF_NR_SLOTS_MIN as u32 + 1;
/// Extra-info slots a received packet may carry (one per defined type at
/// most: GSO, hash, XDP; we enable none but GSO).
pub const RX_MAX_EXTRAS: u32 = 4;
/// RX buffers offload needs posted: Linux netback delivers a packet only
/// once `DIV_ROUND_UP(len, 4096)` slots, plus one for the GSO extra, are
/// posted (`xenvif_rx_ring_slots_available`); a 64 KiB GSO packet needs
/// 17 + 1. With fewer, such a packet would wait forever (and netback turns
/// the carrier off after 60 s).
pub const RX_BUFFERS_FOR_OFFLOAD: usize = 18;

/// How a connection lays out its TX buffers and treats frames, fixed when it
/// is set up (from what was negotiated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offload mode: `feature-sg` + `feature-gso-tcpv4` + checksum offload.
    pub offload: bool,
}

impl Layout {
    /// Bytes per TX buffer: 2 KiB without offload, a page with it (a
    /// multi-slot frame is a chain of page-sized slots).
    pub fn tx_buf_size(self) -> usize {
        if self.offload {
            PAGE_SIZE
        } else {
            TX_BUF_SIZE
        }
    }

    pub fn tx_bufs_per_page(self) -> usize {
        PAGE_SIZE / self.tx_buf_size()
    }

    /// Pages a connection uses: two rings, one per RX buffer, and the TX
    /// buffers (two to a page without offload, one with it).
    pub fn pages(self, nrx: usize, ntx: usize) -> usize {
        2 + nrx + ntx.div_ceil(self.tx_bufs_per_page())
    }

    /// With offload: the largest frame (Ethernet header included) we send,
    /// i.e. the TCP segmentation size advertised to smoltcp. Sized so that
    /// four such frames fill the TX buffers (`ntx / 4` pages each, between 1
    /// and 16 pages), so a big frame in flight never starves the others for
    /// long; capped at 65535 bytes (`XEN_NETIF_MAX_TX_SIZE`).
    pub fn tso_max_frame(ntx: usize) -> usize {
        ((ntx / 4).clamp(1, TSO_MAX_PAGES) * PAGE_SIZE).min(XEN_NETIF_MAX_TX_SIZE)
    }
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

/// Which slot of a received packet comes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The first slot of a packet.
    Start,
    /// Extra-info slots; after them, data slots if `then_data`.
    Extras { then_data: bool },
    /// Continuation data slots (`NETRXF_more_data`).
    Data,
}

/// The received packet being put together, across calls if its slots are
/// published in several pushes. Its bytes accumulate in the caller's buffer.
#[derive(Clone, Copy, Debug)]
struct Assembly {
    next: Next,
    /// A problem was found (and counted): consume the rest of the packet's
    /// slots and drop it.
    dropping: bool,
    /// The first slot's flags (checksum flags live there).
    flags: u16,
    /// Bytes assembled so far.
    len: usize,
    data_slots: u32,
    extras: u32,
    /// A valid GSO extra came with it.
    gso: bool,
}

impl Assembly {
    const IDLE: Assembly = Assembly {
        next: Next::Start,
        dropping: false,
        flags: 0,
        len: 0,
        data_slots: 0,
        extras: 0,
        gso: false,
    };
}

/// Why a received packet is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxDrop {
    Error,
    BadId,
    BadLen,
    MultiSlot,
    ExtraInfo,
}

/// What is wrong with an RX data slot before its bytes are looked at: an
/// error status, or a response for another buffer than the one posted in
/// the slot.
fn rx_slot_fault(rsp: &RxResponse, buf: u16) -> Option<RxDrop> {
    if rsp.status < 0 {
        log::debug!("netfront: rx error status {}", rsp.status);
        Some(RxDrop::Error)
    } else if rsp.id != buf {
        log::debug!("netfront: rx id {} in the slot of buffer {}", rsp.id, buf);
        Some(RxDrop::BadId)
    } else {
        None
    }
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

/// What a TX buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxBuf {
    Free,
    /// The first slot of a frame in flight (its response tells the frame's fate).
    Head,
    /// A continuation slot of a frame in flight.
    Frag,
}

pub struct Conn<P: Platform> {
    pub port: Option<Port>,
    /// `[tx ring, rx ring, rx buffers.., tx pages..]`, in allocation order
    /// (a partially built connection holds a prefix of this).
    pub pages: Vec<Shared<P::Page>>,
    nrx: usize,
    ntx: usize,
    layout: Layout,
    tx: FrontRing,
    rx: FrontRing,
    /// RX ring slot -> buffer posted in it.
    rx_slot: Vec<Option<u16>>,
    /// RX buffers consumed and waiting to be posted again.
    rx_free: Vec<u16>,
    rx_asm: Assembly,
    tx_state: Vec<TxBuf>,
    tx_free: Vec<u16>,
    /// Extra-info TX slots sent and not yet answered (each gets a
    /// `NETIF_RSP_NULL`).
    tx_extras: u32,
}

impl<P: Platform> Conn<P> {
    pub fn new(nrx: usize, ntx: usize, layout: Layout) -> Self {
        Conn {
            port: None,
            pages: Vec::with_capacity(layout.pages(nrx, ntx)),
            nrx,
            ntx,
            layout,
            tx: FrontRing::new(TX_RING_SIZE),
            rx: FrontRing::new(RX_RING_SIZE),
            rx_slot: vec![None; RX_RING_SIZE],
            rx_free: (0..nrx as u16).rev().collect(),
            rx_asm: Assembly::IDLE,
            tx_state: vec![TxBuf::Free; ntx],
            tx_free: (0..ntx as u16).rev().collect(),
            tx_extras: 0,
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
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
    /// are posted again before returning. A packet whose slots are not all
    /// published yet stays half-assembled in `out` until they are.
    /// `stack_verifies_tcp`: smoltcp checks TCP checksums itself (it was
    /// given `Checksum::Both` for TCP); otherwise the driver does, for the
    /// frames the backend did not vouch for.
    pub fn rx_pull(
        &mut self,
        platform: &mut P,
        stats: &mut Stats,
        budget: &mut u32,
        out: &mut Vec<u8>,
        stack_verifies_tcp: bool,
    ) -> RxOutcome {
        let outcome = self.rx_pull_inner(stats, budget, out, stack_verifies_tcp);
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
        stack_verifies_tcp: bool,
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

            let done = match self.rx_asm.next {
                Next::Start => self.rx_first_slot(stats, &raw, buf, out),
                Next::Extras { then_data } => self.rx_extra_slot(stats, &raw, then_data),
                Next::Data => self.rx_data_slot(stats, &raw, buf, out),
            };
            if !done {
                continue;
            }
            let asm = core::mem::replace(&mut self.rx_asm, Assembly::IDLE);
            if asm.dropping {
                continue;
            }
            if let Some(len) = self.rx_finish(stats, &asm, out, stack_verifies_tcp) {
                return RxOutcome::Frame(len);
            }
        }
    }

    /// Mark the packet being assembled as dropped, counting why (once).
    fn rx_drop(&mut self, stats: &mut Stats, why: RxDrop) {
        if self.rx_asm.dropping {
            return;
        }
        self.rx_asm.dropping = true;
        match why {
            RxDrop::Error => stats.rx_drop_error += 1,
            RxDrop::BadId => stats.rx_drop_bad_id += 1,
            RxDrop::BadLen => stats.rx_drop_bad_len += 1,
            RxDrop::MultiSlot => stats.rx_drop_multislot += 1,
            RxDrop::ExtraInfo => stats.rx_drop_extra_info += 1,
        }
    }

    /// Check a data slot and append its bytes to `out` (from 0 for the first
    /// slot); a bad one drops the packet.
    fn rx_take_data(
        &mut self,
        stats: &mut Stats,
        rsp: &RxResponse,
        buf: u16,
        out: &mut Vec<u8>,
        first: bool,
    ) {
        if let Some(why) = rx_slot_fault(rsp, buf) {
            return self.rx_drop(stats, why);
        }
        let (off, len) = (rsp.offset as usize, rsp.status as usize);
        if (first && len == 0) || off + len > PAGE_SIZE {
            log::debug!("netfront: rx bad offset {off} length {len}");
            return self.rx_drop(stats, RxDrop::BadLen);
        }
        if !first && self.rx_asm.data_slots > RX_MAX_DATA_SLOTS {
            log::debug!("netfront: rx packet longer than {RX_MAX_DATA_SLOTS} slots");
            return self.rx_drop(stats, RxDrop::MultiSlot);
        }
        let at = if first { 0 } else { self.rx_asm.len };
        if at + len > MAX_RX_FRAME {
            log::debug!("netfront: rx packet longer than {MAX_RX_FRAME} bytes");
            return self.rx_drop(stats, RxDrop::MultiSlot);
        }
        out.truncate(at);
        out.resize(at + len, 0);
        self.pages[2 + buf as usize].page.read(off, &mut out[at..]);
        self.rx_asm.len = at + len;
    }

    /// The first slot of a packet; true if the packet ends with it.
    fn rx_first_slot(
        &mut self,
        stats: &mut Stats,
        raw: &[u8; RX_SLOT],
        buf: u16,
        out: &mut Vec<u8>,
    ) -> bool {
        let rsp = RxResponse::decode(raw);
        // Framing first: whatever is wrong with this response, the slots it
        // announces belong to the same packet and are consumed with it.
        let extra = rsp.flags & NETRXF_EXTRA_INFO != 0;
        let more = rsp.flags & NETRXF_MORE_DATA != 0;
        self.rx_asm = Assembly {
            next: match (extra, more) {
                (true, then_data) => Next::Extras { then_data },
                (false, true) => Next::Data,
                (false, false) => Next::Start,
            },
            flags: rsp.flags,
            data_slots: 1,
            ..Assembly::IDLE
        };
        if !self.layout.offload {
            // Without feature-sg/GSO neither more slots nor extra info can
            // legitimately occur; a faulty slot is reported as that first.
            let why = rx_slot_fault(&rsp, buf)
                .or(more.then_some(RxDrop::MultiSlot))
                .or(extra.then_some(RxDrop::ExtraInfo));
            if let Some(why) = why {
                self.rx_drop(stats, why);
            }
        }
        if !self.rx_asm.dropping {
            self.rx_take_data(stats, &rsp, buf, out, true);
        }
        self.rx_asm.next == Next::Start
    }

    /// An extra-info slot; true if the packet ends with it.
    fn rx_extra_slot(&mut self, stats: &mut Stats, raw: &[u8; RX_SLOT], then_data: bool) -> bool {
        let e = GsoExtra::decode(raw);
        self.rx_asm.extras = self.rx_asm.extras.saturating_add(1);
        if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
            self.rx_asm.next = if then_data { Next::Data } else { Next::Start };
        }
        if !self.rx_asm.dropping {
            let ok = self.rx_asm.extras <= RX_MAX_EXTRAS
                && match e.ty {
                    XEN_NETIF_EXTRA_TYPE_GSO => {
                        let good = e.size != 0
                            && matches!(
                                e.gso_type,
                                XEN_NETIF_GSO_TYPE_TCPV4 | XEN_NETIF_GSO_TYPE_TCPV6
                            );
                        self.rx_asm.gso |= good;
                        good
                    }
                    // Defined, and nothing we need to act on.
                    XEN_NETIF_EXTRA_TYPE_MCAST_ADD
                    | XEN_NETIF_EXTRA_TYPE_MCAST_DEL
                    | XEN_NETIF_EXTRA_TYPE_HASH
                    | XEN_NETIF_EXTRA_TYPE_XDP => true,
                    _ => false,
                };
            if !ok {
                log::debug!(
                    "netfront: rx bad extra info type {} flags {:#x}",
                    e.ty,
                    e.flags
                );
                self.rx_drop(stats, RxDrop::ExtraInfo);
            }
        }
        self.rx_asm.next == Next::Start
    }

    /// A continuation data slot; true if the packet ends with it.
    fn rx_data_slot(
        &mut self,
        stats: &mut Stats,
        raw: &[u8; RX_SLOT],
        buf: u16,
        out: &mut Vec<u8>,
    ) -> bool {
        let rsp = RxResponse::decode(raw);
        self.rx_asm.data_slots = self.rx_asm.data_slots.saturating_add(1);
        if rsp.flags & NETRXF_MORE_DATA == 0 {
            self.rx_asm.next = Next::Start;
        }
        if !self.rx_asm.dropping {
            self.rx_take_data(stats, &rsp, buf, out, false);
        }
        self.rx_asm.next == Next::Start
    }

    /// A complete packet is in `out`: checksum handling, counters. Returns
    /// its length, or None if it is dropped.
    fn rx_finish(
        &mut self,
        stats: &mut Stats,
        asm: &Assembly,
        out: &mut [u8],
        stack_verifies_tcp: bool,
    ) -> Option<usize> {
        let len = asm.len;
        let frame = &mut out[..len];
        let blank = asm.flags & NETRXF_CSUM_BLANK != 0;
        let validated = asm.flags & NETRXF_DATA_VALIDATED != 0;
        let tcp = csum::ipv4_protocol(frame) == Some(PROTO_TCP);
        if tcp && !stack_verifies_tcp {
            // smoltcp does not look at TCP checksums: the backend vouches
            // for the frame (it was made in this host: csum_blank, or
            // checked by dom0 or its NIC: data_validated), or we check.
            if !(blank || validated) {
                match csum::verify_ipv4_tcp(frame) {
                    Ok(true) => stats.rx_csum_verified += 1,
                    r => {
                        stats.rx_csum_bad += 1;
                        log::debug!("netfront: rx tcp checksum bad or uncheckable: {r:?}");
                        return None;
                    }
                }
            }
        } else if blank {
            // smoltcp verifies this protocol's checksum: complete it.
            match fill_ipv4_l4_checksum(frame) {
                Ok(()) => stats.rx_csum_filled += 1,
                Err(e) => {
                    stats.rx_drop_csum += 1;
                    log::debug!("netfront: rx csum_blank frame not completed: {e:?}");
                    return None;
                }
            }
        }
        if asm.data_slots > 1 {
            stats.rx_multi_slot += 1;
        }
        if asm.gso {
            stats.rx_gso += 1;
        }
        stats.rx_frames += 1;
        stats.rx_bytes += len as u64;
        Some(len)
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
                    // Answers an extra-info slot (its id is whatever our
                    // extra left in the slot).
                    if self.tx_extras > 0 {
                        self.tx_extras -= 1;
                    } else {
                        stats.tx_bad_status += 1;
                    }
                    continue;
                }
                let id = rsp.id as usize;
                if id >= self.ntx || self.tx_state[id] == TxBuf::Free {
                    stats.tx_bad_id += 1;
                    log::debug!("netfront: tx response for id {id}, not in flight");
                    continue;
                }
                let was = core::mem::replace(&mut self.tx_state[id], TxBuf::Free);
                self.tx_free.push(id as u16);
                // A frame's fate is its first slot's status (netback answers
                // every slot; the others follow the first).
                match (rsp.status, was) {
                    (NETIF_RSP_OKAY, TxBuf::Head) => stats.tx_completed += 1,
                    (NETIF_RSP_ERROR | NETIF_RSP_DROPPED, TxBuf::Head) => stats.tx_error += 1,
                    (NETIF_RSP_OKAY | NETIF_RSP_ERROR | NETIF_RSP_DROPPED, _) => {}
                    _ => stats.tx_bad_status += 1,
                }
            }
            // Every request has been answered, so nothing can legitimately
            // still be in flight: take back what a faulty backend never
            // answered for (it answered some other id instead).
            if self.tx.outstanding() == 0 {
                self.tx_extras = 0;
                if self.tx_free.len() < self.ntx {
                    for (id, st) in self.tx_state.iter_mut().enumerate() {
                        if *st != TxBuf::Free {
                            *st = TxBuf::Free;
                            self.tx_free.push(id as u16);
                            stats.tx_reclaimed += 1;
                        }
                    }
                }
            }
            if self.tx.arm_rsp_event(ring_page) == self.tx.rsp_cons {
                break;
            }
        }
        Ok(())
    }

    /// TX buffers and ring slots a frame of `len` bytes takes (a GSO frame
    /// one slot more, for its extra).
    pub fn tx_cost(&self, len: usize, gso: bool) -> (usize, u32) {
        let bufs = len.max(1).div_ceil(self.layout.tx_buf_size());
        (bufs, bufs as u32 + u32::from(gso))
    }

    /// Are there `bufs` TX buffers and `slots` ring slots free? Reaps first
    /// when not.
    pub fn tx_ready(
        &mut self,
        stats: &mut Stats,
        bufs: usize,
        slots: u32,
    ) -> Result<bool, Misbehavior> {
        let room = |c: &Self| c.tx_free.len() >= bufs && c.tx.free_requests() >= slots;
        if !room(self) {
            self.tx_reap(stats)?;
        }
        Ok(room(self))
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

    /// TX buffers in flight (a multi-slot frame holds several).
    pub fn tx_in_flight(&self) -> usize {
        self.ntx - self.tx_free.len()
    }

    /// Put `frame` on the ring: copied into as many free TX buffers as it
    /// needs (one slot each; the first slot's size is the whole frame's,
    /// `NETTXF_more_data` on all but the last), with a GSO extra-info slot
    /// after the first when `gso_mss` is given (offload mode, TCP only).
    /// In offload mode a TCP frame gets the pseudo-header sum in its checksum
    /// field and `NETTXF_csum_blank | NETTXF_data_validated`; other frames
    /// go as smoltcp made them. Without offload, `stack_fills_tcp == false`
    /// (smoltcp was told not to) makes us compute TCP checksums here.
    /// The caller checked the length (14..=its token's capacity) and that
    /// `tx_ready` holds for it; returns false (counted) if not.
    pub fn tx_send(
        &mut self,
        platform: &mut P,
        stats: &mut Stats,
        frame: &mut [u8],
        gso_mss: Option<u16>,
        stack_fills_tcp: bool,
    ) -> bool {
        let mut flags = 0u16;
        let mut gso = None;
        if self.layout.offload {
            if csum::set_tcp_pseudo_checksum(frame).is_ok() {
                flags = NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED;
                gso = gso_mss.filter(|&m| m > 0);
            }
        } else if !stack_fills_tcp && csum::ipv4_protocol(frame) == Some(PROTO_TCP) {
            let _ = fill_ipv4_l4_checksum(frame);
        }
        let (bufs, slots) = self.tx_cost(frame.len(), gso.is_some());
        if self.tx_free.len() < bufs
            || self.tx.free_requests() < slots
            || frame.len() > XEN_NETIF_MAX_TX_SIZE
        {
            debug_assert!(false, "tx_send without room");
            stats.tx_ring_full += 1;
            return false;
        }
        let buf_size = self.layout.tx_buf_size();
        let per_page = self.layout.tx_bufs_per_page();
        let mut idx = self.tx.req_prod_pvt;
        for (k, chunk) in frame.chunks(buf_size).enumerate() {
            let Some(id) = self.tx_free.pop() else {
                break; // checked above
            };
            let first = k == 0;
            let page = &self.pages[2 + self.nrx + id as usize / per_page];
            let off = (id as usize % per_page) * buf_size;
            page.page.write(off, chunk);
            let mut f = if first { flags } else { 0 };
            if k + 1 < bufs {
                f |= NETTXF_MORE_DATA;
            }
            if first && gso.is_some() {
                f |= NETTXF_EXTRA_INFO;
            }
            let req = TxRequest {
                gref: page.gref.0,
                offset: off as u16,
                flags: f,
                id,
                // The first request carries the whole packet's length.
                size: if first { frame.len() } else { chunk.len() } as u16,
            };
            self.pages[0].page.write(tx_slot_offset(idx), &req.encode());
            idx = idx.wrapping_add(1);
            self.tx_state[id as usize] = if first { TxBuf::Head } else { TxBuf::Frag };
            if let (true, Some(mss)) = (first, gso) {
                let extra = GsoExtra::tcpv4(mss);
                self.pages[0]
                    .page
                    .write(tx_slot_offset(idx), &extra.encode_tx());
                idx = idx.wrapping_add(1);
                self.tx_extras += 1;
            }
        }
        self.tx.req_prod_pvt = idx;
        stats.tx_frames += 1;
        stats.tx_bytes += frame.len() as u64;
        stats.tx_slots += u64::from(slots);
        if gso.is_some() {
            stats.tx_gso_frames += 1;
        }
        if self.tx.push_requests(&self.pages[0].page) {
            self.notify(platform, stats);
        }
        true
    }
}
