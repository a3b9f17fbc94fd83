//! Putting a received packet together from its RX ring slots, as a pure
//! state machine: it is fed one slot response at a time (the 8 bytes read
//! from the ring, the buffer we posted in that slot, and a way to copy bytes
//! out of that buffer) and says when a packet is complete or why it is
//! dropped. It never touches the ring, the grants or the counters.
//!
//! Why apart from the ring I/O (`rx.rs`): the framing rules (first slot,
//! extra-info slots, `NETRXF_more_data` continuations, and every limit a
//! hostile backend could try to break) are the part worth testing
//! exhaustively, and here they can be driven with made-up slots on the host
//! or by a fuzzer, without a fake backend.
//!
//! A packet whose slots are published in several pushes simply stays in the
//! middle of its state (and its bytes in the caller's buffer) until they
//! arrive. A bad slot does not end the packet: the slots it announced still
//! belong to it and are consumed with it, then it is dropped as a whole.

use alloc::vec::Vec;

use crate::layout::{MAX_RX_FRAME, RX_MAX_DATA_SLOTS, RX_MAX_EXTRAS};
use crate::platform::PAGE_SIZE;
use crate::wire::*;

/// Why a received packet is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// A data slot with an error status.
    Error,
    /// A response for another buffer than the one posted in its slot.
    BadId,
    /// Offset/length outside the page, or an empty first slot.
    BadLen,
    /// Too many slots or bytes (or any continuation without offload).
    MultiSlot,
    /// Bad, unknown or too many extra-info slots (or any without offload).
    ExtraInfo,
}

/// A complete packet, its bytes in the caller's buffer (`out[..len]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxPacket {
    pub len: usize,
    /// The first slot's flags (checksum flags live there).
    pub flags: u16,
    pub data_slots: u32,
    /// A valid GSO extra came with it.
    pub gso: bool,
}

/// What feeding one slot did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fed {
    /// The packet goes on in the next slot.
    More,
    /// The packet goes on, and is to be dropped for this reason, found in
    /// this slot (reported once per packet).
    Dropping(RxDrop),
    /// The packet ended with this slot and is good.
    Packet(RxPacket),
    /// The packet ended with this slot and is dropped; the reason if it
    /// was found in this very slot (otherwise it was reported already).
    Dropped(Option<RxDrop>),
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

/// The packet being put together.
#[derive(Clone, Copy, Debug)]
struct Assembly {
    next: Next,
    /// A problem was found: consume the rest of the packet's slots and drop it.
    dropping: bool,
    /// The first slot's flags.
    flags: u16,
    /// Bytes assembled so far.
    len: usize,
    data_slots: u32,
    extras: u32,
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

/// What is wrong with an RX data slot before its bytes are looked at: an
/// error status, or a response for another buffer than the one posted in
/// the slot.
fn slot_fault(rsp: &RxResponse, buf: u16) -> Option<RxDrop> {
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

/// Reassembles received packets slot by slot (see the module docs).
#[derive(Clone, Debug)]
pub struct RxAssembler {
    /// Offload mode: multi-slot packets and extra-info slots are allowed.
    offload: bool,
    asm: Assembly,
    /// The drop reason found in the slot being fed (reported once).
    found: Option<RxDrop>,
}

impl RxAssembler {
    pub fn new(offload: bool) -> Self {
        RxAssembler {
            offload,
            asm: Assembly::IDLE,
            found: None,
        }
    }

    /// Feed the response read from the next RX ring slot. `buf` is the
    /// buffer we posted in that slot (from our own bookkeeping, so a
    /// response naming another id is caught); `read(offset, dst)` copies
    /// `dst.len()` bytes at `offset` out of that buffer's page, and is only
    /// called for a valid data slot, with `offset + dst.len() <= PAGE_SIZE`.
    /// The packet's bytes accumulate in `out` (from 0 on its first slot).
    pub fn feed(
        &mut self,
        raw: &[u8; RX_SLOT],
        buf: u16,
        out: &mut Vec<u8>,
        read: impl FnOnce(usize, &mut [u8]),
    ) -> Fed {
        self.found = None;
        match self.asm.next {
            Next::Start => self.first_slot(raw, buf, out, read),
            Next::Extras { then_data } => self.extra_slot(raw, then_data),
            Next::Data => self.data_slot(raw, buf, out, read),
        }
        let found = self.found.take();
        if self.asm.next != Next::Start {
            return found.map_or(Fed::More, Fed::Dropping);
        }
        let asm = core::mem::replace(&mut self.asm, Assembly::IDLE);
        if asm.dropping {
            return Fed::Dropped(found);
        }
        Fed::Packet(RxPacket {
            len: asm.len,
            flags: asm.flags,
            data_slots: asm.data_slots,
            gso: asm.gso,
        })
    }

    /// Mark the packet as dropped, remembering why (once).
    fn drop_packet(&mut self, why: RxDrop) {
        if self.asm.dropping {
            return;
        }
        self.asm.dropping = true;
        self.found = Some(why);
    }

    /// Check a data slot and append its bytes to `out` (from 0 for the first
    /// slot); a bad one drops the packet.
    fn take_data(
        &mut self,
        rsp: &RxResponse,
        buf: u16,
        out: &mut Vec<u8>,
        first: bool,
        read: impl FnOnce(usize, &mut [u8]),
    ) {
        if let Some(why) = slot_fault(rsp, buf) {
            return self.drop_packet(why);
        }
        let (off, len) = (rsp.offset as usize, rsp.status as usize);
        if (first && len == 0) || off + len > PAGE_SIZE {
            log::debug!("netfront: rx bad offset {off} length {len}");
            return self.drop_packet(RxDrop::BadLen);
        }
        if !first && self.asm.data_slots > RX_MAX_DATA_SLOTS {
            log::debug!("netfront: rx packet longer than {RX_MAX_DATA_SLOTS} slots");
            return self.drop_packet(RxDrop::MultiSlot);
        }
        let at = if first { 0 } else { self.asm.len };
        if at + len > MAX_RX_FRAME {
            log::debug!("netfront: rx packet longer than {MAX_RX_FRAME} bytes");
            return self.drop_packet(RxDrop::MultiSlot);
        }
        out.truncate(at);
        out.resize(at + len, 0);
        read(off, &mut out[at..]);
        self.asm.len = at + len;
    }

    /// The first slot of a packet.
    fn first_slot(
        &mut self,
        raw: &[u8; RX_SLOT],
        buf: u16,
        out: &mut Vec<u8>,
        read: impl FnOnce(usize, &mut [u8]),
    ) {
        let rsp = RxResponse::decode(raw);
        // Framing first: whatever is wrong with this response, the slots it
        // announces belong to the same packet and are consumed with it.
        let extra = rsp.flags & NETRXF_EXTRA_INFO != 0;
        let more = rsp.flags & NETRXF_MORE_DATA != 0;
        self.asm = Assembly {
            next: match (extra, more) {
                (true, then_data) => Next::Extras { then_data },
                (false, true) => Next::Data,
                (false, false) => Next::Start,
            },
            flags: rsp.flags,
            data_slots: 1,
            ..Assembly::IDLE
        };
        if !self.offload {
            // Without feature-sg/GSO neither more slots nor extra info can
            // legitimately occur; a faulty slot is reported as that first.
            let why = slot_fault(&rsp, buf)
                .or(more.then_some(RxDrop::MultiSlot))
                .or(extra.then_some(RxDrop::ExtraInfo));
            if let Some(why) = why {
                self.drop_packet(why);
            }
        }
        if !self.asm.dropping {
            self.take_data(&rsp, buf, out, true, read);
        }
    }

    /// An extra-info slot (its buffer carries no data).
    fn extra_slot(&mut self, raw: &[u8; RX_SLOT], then_data: bool) {
        let e = GsoExtra::decode(raw);
        self.asm.extras = self.asm.extras.saturating_add(1);
        if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
            self.asm.next = if then_data { Next::Data } else { Next::Start };
        }
        if self.asm.dropping {
            return;
        }
        let ok = self.asm.extras <= RX_MAX_EXTRAS
            && match e.ty {
                XEN_NETIF_EXTRA_TYPE_GSO => {
                    let good = e.size != 0
                        && matches!(
                            e.gso_type,
                            XEN_NETIF_GSO_TYPE_TCPV4 | XEN_NETIF_GSO_TYPE_TCPV6
                        );
                    self.asm.gso |= good;
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
            self.drop_packet(RxDrop::ExtraInfo);
        }
    }

    /// A continuation data slot.
    fn data_slot(
        &mut self,
        raw: &[u8; RX_SLOT],
        buf: u16,
        out: &mut Vec<u8>,
        read: impl FnOnce(usize, &mut [u8]),
    ) {
        let rsp = RxResponse::decode(raw);
        self.asm.data_slots = self.asm.data_slots.saturating_add(1);
        if rsp.flags & NETRXF_MORE_DATA == 0 {
            self.asm.next = Next::Start;
        }
        if !self.asm.dropping {
            self.take_data(&rsp, buf, out, false, read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A data slot response for buffer `id`: `len` bytes at offset 0.
    fn data(id: u16, len: i16, flags: u16) -> [u8; RX_SLOT] {
        RxResponse {
            id,
            offset: 0,
            flags,
            status: len,
        }
        .encode()
    }

    /// Feed `raw` (posted buffer `buf`) from a page whose every byte is `buf`.
    fn feed(a: &mut RxAssembler, raw: [u8; RX_SLOT], buf: u16, out: &mut Vec<u8>) -> Fed {
        a.feed(&raw, buf, out, |off, dst| {
            assert!(off + dst.len() <= PAGE_SIZE);
            dst.fill(buf as u8)
        })
    }

    #[test]
    fn gso_packet_over_three_slots_comes_out_whole() {
        let mut a = RxAssembler::new(true);
        let mut out = Vec::new();
        let first = NETRXF_MORE_DATA | NETRXF_EXTRA_INFO | NETRXF_CSUM_BLANK;
        assert_eq!(feed(&mut a, data(1, 4096, first), 1, &mut out), Fed::More);
        let extra = GsoExtra::tcpv4(1448).encode();
        assert_eq!(feed(&mut a, extra, 2, &mut out), Fed::More);
        assert_eq!(
            feed(&mut a, data(3, 4096, NETRXF_MORE_DATA), 3, &mut out),
            Fed::More
        );
        let end = feed(&mut a, data(4, 100, 0), 4, &mut out);
        let want = RxPacket {
            len: 4096 + 4096 + 100,
            flags: first,
            data_slots: 3,
            gso: true,
        };
        assert_eq!(end, Fed::Packet(want));
        let mut bytes = vec![1u8; 4096];
        bytes.extend(vec![3u8; 4096]);
        bytes.extend(vec![4u8; 100]);
        assert_eq!(out, bytes);
        // The next slot starts a new packet (from 0 in `out`).
        let next = feed(&mut a, data(5, 60, 0), 5, &mut out);
        assert!(
            matches!(next, Fed::Packet(RxPacket { len: 60, .. })),
            "{next:?}"
        );
        assert_eq!(out, vec![5u8; 60]);
    }

    #[test]
    fn a_chain_that_never_ends_is_dropped_once() {
        let mut a = RxAssembler::new(true);
        let mut out = Vec::new();
        let more = NETRXF_MORE_DATA;
        assert_eq!(feed(&mut a, data(0, 100, more), 0, &mut out), Fed::More);
        let mut dropping = 0;
        for i in 1..1000u16 {
            match feed(&mut a, data(i, 100, more), i, &mut out) {
                Fed::More => {}
                Fed::Dropping(why) => {
                    // Slot RX_MAX_DATA_SLOTS + 1 is one too many; reported
                    // once, the rest consumed silently.
                    assert_eq!((why, u32::from(i)), (RxDrop::MultiSlot, RX_MAX_DATA_SLOTS));
                    dropping += 1;
                }
                other => panic!("slot {i}: {other:?}"),
            }
        }
        assert_eq!(dropping, 1);
        assert_eq!(
            feed(&mut a, data(7, 100, 0), 7, &mut out),
            Fed::Dropped(None)
        );
    }

    #[test]
    fn without_offload_more_data_and_extras_drop_the_frame() {
        let mut a = RxAssembler::new(false);
        let mut out = Vec::new();
        let raw = data(0, 100, NETRXF_MORE_DATA);
        assert_eq!(
            feed(&mut a, raw, 0, &mut out),
            Fed::Dropping(RxDrop::MultiSlot)
        );
        assert_eq!(
            feed(&mut a, data(1, 100, 0), 1, &mut out),
            Fed::Dropped(None)
        );
        let raw = data(2, 100, NETRXF_EXTRA_INFO);
        assert_eq!(
            feed(&mut a, raw, 2, &mut out),
            Fed::Dropping(RxDrop::ExtraInfo)
        );
        let extra = GsoExtra::tcpv4(1448).encode();
        assert_eq!(feed(&mut a, extra, 3, &mut out), Fed::Dropped(None));
        // A faulty slot is reported as that first.
        assert_eq!(
            feed(&mut a, data(9, 100, NETRXF_MORE_DATA), 4, &mut out),
            Fed::Dropping(RxDrop::BadId)
        );
        assert_eq!(
            feed(&mut a, data(5, 100, 0), 5, &mut out),
            Fed::Dropped(None)
        );
    }

    #[test]
    fn bad_first_slots_are_dropped_with_their_reason() {
        let mut a = RxAssembler::new(true);
        let mut out = Vec::new();
        let cases = [
            (data(0, -1, 0), RxDrop::Error),
            (data(1, 100, 0), RxDrop::BadId),
            (data(0, 0, 0), RxDrop::BadLen),
            (
                RxResponse {
                    id: 0,
                    offset: 4000,
                    flags: 0,
                    status: 100,
                }
                .encode(),
                RxDrop::BadLen,
            ),
        ];
        for (raw, why) in cases {
            assert_eq!(feed(&mut a, raw, 0, &mut out), Fed::Dropped(Some(why)));
        }
        // A GSO extra of size 0 drops the packet; the rest is consumed.
        let first = NETRXF_EXTRA_INFO | NETRXF_MORE_DATA;
        assert_eq!(feed(&mut a, data(0, 4096, first), 0, &mut out), Fed::More);
        let zero = GsoExtra::tcpv4(0).encode();
        assert_eq!(
            feed(&mut a, zero, 1, &mut out),
            Fed::Dropping(RxDrop::ExtraInfo)
        );
        assert_eq!(
            feed(&mut a, data(2, 10, 0), 2, &mut out),
            Fed::Dropped(None)
        );
    }
}
