//! The data path of one connection: the pages it granted (both rings and
//! every buffer), its event channel port, and the bookkeeping of which
//! buffer sits in which ring slot. RX ring I/O is in `datapath/rx.rs`, TX
//! in `datapath/tx.rs`, and how slots make a packet in `rx_assembly.rs` (a
//! pure state machine, no ring access); this file holds what they share.
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

use crate::layout::Layout;
use crate::platform::{GrantRef, Platform, Port};
use crate::ring::{self, FrontRing};
use crate::rx_assembly::RxAssembler;
use crate::stats::Stats;
use crate::wire::{RX_RING_SIZE, TX_RING_SIZE};

mod rx;
mod tx;

pub use rx::RxOutcome;
use tx::TxBuf;

/// A page we allocated and granted.
pub struct Shared<Pg> {
    pub page: Pg,
    pub gref: GrantRef,
}

/// One connection's shared pages, port and ring state (see the module docs).
pub struct Datapath<P: Platform> {
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
    rx_asm: RxAssembler,
    tx_state: Vec<TxBuf>,
    tx_free: Vec<u16>,
    /// Extra-info TX slots sent and not yet answered (each gets a
    /// `NETIF_RSP_NULL`).
    tx_extras: u32,
}

/// Index in [`Datapath::pages`] of the TX ring page.
const TX_RING_PAGE: usize = 0;
/// Index in [`Datapath::pages`] of the RX ring page.
const RX_RING_PAGE: usize = 1;
/// Index in [`Datapath::pages`] of the first RX buffer page.
const FIRST_RX_PAGE: usize = 2;

impl<P: Platform> Datapath<P> {
    pub fn new(nrx: usize, ntx: usize, layout: Layout) -> Self {
        Datapath {
            port: None,
            pages: Vec::with_capacity(layout.pages(nrx, ntx)),
            nrx,
            ntx,
            layout,
            tx: FrontRing::new(TX_RING_SIZE),
            rx: FrontRing::new(RX_RING_SIZE),
            rx_slot: vec![None; RX_RING_SIZE],
            rx_free: (0..nrx as u16).rev().collect(),
            rx_asm: RxAssembler::new(layout.offload),
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
        i >= FIRST_RX_PAGE + self.nrx
    }

    pub fn tx_ring_ref(&self) -> GrantRef {
        self.pages[TX_RING_PAGE].gref
    }
    pub fn rx_ring_ref(&self) -> GrantRef {
        self.pages[RX_RING_PAGE].gref
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
        ring::init_shared(&self.pages[TX_RING_PAGE].page, start);
        ring::init_shared(&self.pages[RX_RING_PAGE].page, start);
        self.tx = FrontRing::starting_at(TX_RING_SIZE, start);
        self.rx = FrontRing::starting_at(RX_RING_SIZE, start);
    }

    /// Are there RX responses waiting (a cheap check for `poll_delay`)?
    pub fn rx_pending(&self) -> bool {
        self.rx.read_rsp_prod(&self.pages[RX_RING_PAGE].page) != self.rx.rsp_cons
    }

    /// Could `receive()` make progress now: RX responses waiting, and a TX
    /// buffer free (or TX responses waiting to free one)? Reads the shared
    /// producers only.
    pub fn rx_progress_possible(&self) -> bool {
        if !self.rx_pending() {
            return false;
        }
        (!self.tx_free.is_empty() && self.tx.free_requests() > 0)
            || self.tx.read_rsp_prod(&self.pages[TX_RING_PAGE].page) != self.tx.rsp_cons
    }

    /// TX buffers in flight (a multi-slot frame holds several).
    pub fn tx_in_flight(&self) -> usize {
        self.ntx - self.tx_free.len()
    }
}
