//! TX ring I/O: putting a frame on the ring as a chain of buffer slots (with
//! a GSO extra for a TSO frame and the checksum-offload flags), taking
//! buffers back from the backend's responses, and telling the device
//! whether a frame of a given size fits now.

use super::{Datapath, FIRST_RX_PAGE, TX_RING_PAGE};
use crate::csum::{self, fill_ipv4_l4_checksum, PROTO_TCP};
use crate::platform::{Platform, SharedPage};
use crate::stats::Stats;
use crate::types::Misbehavior;
use crate::wire::*;

/// What a TX buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxBuf {
    Free,
    /// The first slot of a frame in flight (its response tells the frame's fate).
    Head,
    /// A continuation slot of a frame in flight.
    Frag,
}

impl<P: Platform> Datapath<P> {
    /// Take back TX buffers the backend has answered for. At most two passes
    /// over at most a ring's worth of responses.
    pub fn tx_reap(&mut self, stats: &mut Stats) -> Result<(), Misbehavior> {
        for _ in 0..2 {
            let ring_page = &self.pages[TX_RING_PAGE].page;
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
            let page = &self.pages[FIRST_RX_PAGE + self.nrx + id as usize / per_page];
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
            self.pages[TX_RING_PAGE]
                .page
                .write(tx_slot_offset(idx), &req.encode());
            idx = idx.wrapping_add(1);
            self.tx_state[id as usize] = if first { TxBuf::Head } else { TxBuf::Frag };
            if let (true, Some(mss)) = (first, gso) {
                let extra = GsoExtra::tcpv4(mss);
                self.pages[TX_RING_PAGE]
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
        if self.tx.push_requests(&self.pages[TX_RING_PAGE].page) {
            self.notify(platform, stats);
        }
        true
    }
}
