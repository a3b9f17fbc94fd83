//! How big things are: frame and slot limits, how a connection's pages are
//! laid out in each mode, and what that costs in memory.
//!
//! Kept apart from the code that uses these numbers because the handshake
//! (what to allocate), the data path (how to cut frames into slots) and the
//! kernel (how much memory to budget) all need the same answers.

use core::fmt;

use crate::platform::PAGE_SIZE;
use crate::wire::{RX_RING_SIZE, XEN_NETIF_MAX_TX_SIZE, XEN_NETIF_NR_SLOTS_MIN};

/// Ethernet header bytes (smoltcp counts them in `max_transmission_unit`).
pub(crate) const ETH_HDR: usize = 14;
/// Largest MTU we use. Without `feature-sg` Linux netback caps the vif at
/// `ETH_DATA_LEN` (`xenvif_change_mtu`) and a frame must fit one slot; with
/// offload, large TCP transfers use segmentation offload instead, so the MTU
/// stays 1500 in both modes.
pub const MAX_MTU: u16 = 1500;
/// Smallest MTU we accept from xenstore (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// Bytes per TX buffer without offload; two buffers share a granted page. A
/// frame is at most MTU (clamped to 1500) + 14 = 1514 bytes.
pub const TX_BUF_SIZE: usize = 2048;
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

/// Memory the driver holds for one vif.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    pub ring_pages: usize,
    pub rx_pages: usize,
    pub tx_pages: usize,
    /// Bookkeeping on the heap, approximately.
    pub heap_bytes: usize,
}

impl MemoryUse {
    /// What a connection with `nrx` RX and `ntx` TX buffers takes.
    pub fn for_layout(nrx: usize, ntx: usize, layout: Layout) -> MemoryUse {
        // Copy buffers: the received frame (one page, or a whole packet of
        // up to 64 KiB reassembled from its slots) and the frame smoltcp
        // writes (one 2 KiB buffer, or the largest TSO frame).
        let copies = if layout.offload {
            MAX_RX_FRAME + Layout::tso_max_frame(ntx)
        } else {
            PAGE_SIZE + TX_BUF_SIZE
        };
        MemoryUse {
            ring_pages: 2,
            rx_pages: nrx,
            tx_pages: layout.pages(nrx, ntx) - 2 - nrx,
            // slot map + free lists + TX buffer states + the two copy buffers
            // (page handles are counted by `Netfront::memory`).
            heap_bytes: RX_RING_SIZE * 4 + nrx * 2 + ntx * 3 + copies,
        }
    }

    pub fn pages(&self) -> usize {
        self.ring_pages + self.rx_pages + self.tx_pages
    }
    pub fn total_bytes(&self) -> usize {
        self.pages() * PAGE_SIZE + self.heap_bytes
    }
}

impl fmt::Display for MemoryUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} KiB ({} pages: 2 ring, {} rx, {} tx; ~{} B heap)",
            self.total_bytes().div_ceil(1024),
            self.pages(),
            self.rx_pages,
            self.tx_pages,
            self.heap_bytes
        )
    }
}
