//! RX ring I/O: posting buffers, consuming responses within the per-poll
//! budget, and deciding what to do with a complete packet (the checksum
//! policy and the counters). How slots make a packet is `rx_assembly.rs`:
//! this file only moves slots from the ring into it and buffers back onto
//! the ring.

use alloc::vec::Vec;

use super::{Datapath, FIRST_RX_PAGE, RX_RING_PAGE};
use crate::csum::{self, fill_ipv4_l4_checksum, PROTO_TCP};
use crate::platform::{Platform, SharedPage};
use crate::rx_assembly::{Fed, RxDrop, RxPacket};
use crate::stats::Stats;
use crate::types::Misbehavior;
use crate::wire::*;

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

fn count_drop(stats: &mut Stats, why: RxDrop) {
    match why {
        RxDrop::Error => stats.rx_drop_error += 1,
        RxDrop::BadId => stats.rx_drop_bad_id += 1,
        RxDrop::BadLen => stats.rx_drop_bad_len += 1,
        RxDrop::MultiSlot => stats.rx_drop_multislot += 1,
        RxDrop::ExtraInfo => stats.rx_drop_extra_info += 1,
    }
}

impl<P: Platform> Datapath<P> {
    /// Post every free RX buffer and notify the backend if it asked.
    pub fn rx_refill(&mut self, platform: &mut P, stats: &mut Stats) {
        while self.rx.free_requests() > 0 {
            let Some(buf) = self.rx_free.pop() else { break };
            let idx = self.rx.req_prod_pvt;
            let slot = idx as usize & (RX_RING_SIZE - 1);
            let req = RxRequest {
                id: buf,
                pad: 0,
                gref: self.pages[FIRST_RX_PAGE + buf as usize].gref.0,
            };
            self.pages[RX_RING_PAGE]
                .page
                .write(rx_slot_offset(idx), &req.encode());
            self.rx_slot[slot] = Some(buf);
            self.rx.req_prod_pvt = idx.wrapping_add(1);
        }
        if self.rx.push_requests(&self.pages[RX_RING_PAGE].page) {
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
            let ring_page = &self.pages[RX_RING_PAGE].page;
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

            let page = &self.pages[FIRST_RX_PAGE + buf as usize].page;
            let fed = self
                .rx_asm
                .feed(&raw, buf, out, |off, dst| page.read(off, dst));
            match fed {
                Fed::More | Fed::Dropped(None) => {}
                Fed::Dropping(why) | Fed::Dropped(Some(why)) => count_drop(stats, why),
                Fed::Packet(p) => {
                    if let Some(len) = accept(stats, &p, out, stack_verifies_tcp) {
                        return RxOutcome::Frame(len);
                    }
                }
            }
        }
    }
}

/// A complete packet is in `out`: checksum handling, counters. Returns its
/// length, or None if it is dropped.
fn accept(
    stats: &mut Stats,
    p: &RxPacket,
    out: &mut [u8],
    stack_verifies_tcp: bool,
) -> Option<usize> {
    let len = p.len;
    let frame = &mut out[..len];
    let blank = p.flags & NETRXF_CSUM_BLANK != 0;
    let validated = p.flags & NETRXF_DATA_VALIDATED != 0;
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
    if p.data_slots > 1 {
        stats.rx_multi_slot += 1;
    }
    if p.gso {
        stats.rx_gso += 1;
    }
    stats.rx_frames += 1;
    stats.rx_bytes += len as u64;
    Some(len)
}
