//! The fake netback's RX side: consuming the frontend's RX requests and
//! delivering frames into its granted pages the way netback does.

use super::{rd32, wr32, FakeNetback};
use crate::csum;
use crate::platform::PAGE_SIZE;
use crate::ring::needs_notify;
use crate::testing::xen::BACK_DOMID;
use crate::wire::*;

impl FakeNetback {
    /// RX requests posted by the frontend and not yet consumed.
    pub fn rx_requests_available(&mut self) -> u32 {
        let c = self.c();
        rd32(&c.rx, RING_REQ_PROD).wrapping_sub(c.rx_req_cons)
    }

    /// Consume one RX request (None if the frontend posted none).
    pub fn take_rx_request(&mut self) -> Option<RxRequest> {
        let c = self.c();
        let prod = rd32(&c.rx, RING_REQ_PROD);
        if prod == c.rx_req_cons {
            return None;
        }
        assert!(
            prod.wrapping_sub(c.rx_rsp_prod_pvt) <= RX_RING_SIZE as u32,
            "frontend overfilled the rx ring"
        );
        let off = rx_slot_offset(c.rx_req_cons);
        let raw: [u8; 8] = c.rx.borrow()[off..off + 8].try_into().unwrap();
        c.rx_req_cons = c.rx_req_cons.wrapping_add(1);
        Some(RxRequest::decode(&raw))
    }

    /// Write a raw 8-byte RX response in the next response slot.
    pub fn put_rx_raw(&mut self, raw: [u8; 8]) {
        let c = self.c();
        let off = rx_slot_offset(c.rx_rsp_prod_pvt);
        c.rx.borrow_mut()[off..off + 8].copy_from_slice(&raw);
        c.rx_rsp_prod_pvt = c.rx_rsp_prod_pvt.wrapping_add(1);
    }

    /// Grant-copy `data` into the frontend page behind `gref` at `off`.
    pub fn copy_to_grant(&mut self, gref: u32, off: usize, data: &[u8]) {
        let mem = self
            .world
            .grant_mem(gref, BACK_DOMID, true)
            .expect("rx gref not writable by backend");
        mem.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }

    /// Deliver one frame the way netback does (copy, response in the
    /// request's slot, offset 0). Not yet visible: call `push_rx`.
    pub fn send_frame_flags(&mut self, frame: &[u8], flags: u16) -> bool {
        let Some(req) = self.take_rx_request() else {
            return false;
        };
        self.copy_to_grant(req.gref, 0, frame);
        let rsp = RxResponse {
            id: req.id,
            offset: 0,
            flags,
            status: frame.len() as i16,
        };
        self.put_rx_raw(rsp.encode());
        true
    }

    pub fn send_frame(&mut self, frame: &[u8]) -> bool {
        self.send_frame_flags(frame, 0)
    }

    /// Deliver one packet the way `xenvif_rx_skb` does: data in full-page
    /// slots from offset 0, `NETRXF_more_data` on all but the last, a GSO
    /// extra after the first slot when `gso` (the MSS) is given, `flags`
    /// (checksum flags) on the first slot. With `NETRXF_csum_blank` the TCP
    /// or UDP checksum field is set to the pseudo-header sum, as a
    /// `CHECKSUM_PARTIAL` skb has it. Waits (returns false, consumes
    /// nothing) until enough requests are posted, like
    /// `xenvif_rx_ring_slots_available`. Not yet visible: call `push_rx`.
    pub fn send_packet(&mut self, frame: &[u8], gso: Option<u16>, flags: u16) -> bool {
        let nslots = frame.len().div_ceil(PAGE_SIZE).max(1);
        let needed = nslots + usize::from(gso.is_some());
        if (self.rx_requests_available() as usize) < needed {
            return false;
        }
        assert!(
            nslots == 1 || self.fe.sg,
            "multi-slot rx without feature-sg"
        );
        assert!(
            gso.is_none() || self.fe.gso_tcpv4,
            "gso rx without feature-gso-tcpv4"
        );
        assert!(
            flags & NETRXF_CSUM_BLANK == 0 || self.fe.csum,
            "csum_blank rx with feature-no-csum-offload"
        );
        let mut frame = frame.to_vec();
        if flags & NETRXF_CSUM_BLANK != 0 {
            let l4 = csum::ipv4_l4(&frame).expect("csum_blank on a frame that is not TCP/UDP");
            frame[l4.csum_at..l4.csum_at + 2].copy_from_slice(&l4.pseudo.to_be_bytes());
        }
        for (i, chunk) in frame.chunks(PAGE_SIZE).enumerate() {
            let req = self.take_rx_request().unwrap();
            self.copy_to_grant(req.gref, 0, chunk);
            let mut f = 0;
            if i == 0 {
                f |= flags;
                if gso.is_some() {
                    f |= NETRXF_EXTRA_INFO;
                }
            }
            if i + 1 < nslots {
                f |= NETRXF_MORE_DATA;
            }
            let rsp = RxResponse {
                id: req.id,
                offset: 0,
                flags: f,
                status: chunk.len() as i16,
            };
            self.put_rx_raw(rsp.encode());
            if let (0, Some(mss)) = (i, gso) {
                let _ = self.take_rx_request().unwrap();
                self.put_rx_raw(GsoExtra::tcpv4(mss).encode());
            }
        }
        self.seen.rx_packets += 1;
        self.seen.rx_multi_slot += u64::from(nslots > 1);
        self.seen.rx_gso += u64::from(gso.is_some());
        true
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY` on the RX ring.
    pub fn push_rx(&mut self) -> bool {
        let world = self.world.clone();
        let c = self.c();
        let old = rd32(&c.rx, RING_RSP_PROD);
        let new = c.rx_rsp_prod_pvt;
        wr32(&c.rx, RING_RSP_PROD, new);
        let notify = needs_notify(old, new, rd32(&c.rx, RING_RSP_EVENT));
        if notify {
            world.send_to_front(c.port);
        }
        notify
    }

    /// Overwrite the RX `rsp_prod` directly (misbehaviour).
    pub fn set_rx_rsp_prod(&mut self, v: u32) {
        let c = self.c();
        wr32(&c.rx, RING_RSP_PROD, v);
    }

    pub fn rx_rsp_prod_pvt(&mut self) -> u32 {
        self.c().rx_rsp_prod_pvt
    }

    /// The frontend's RX `req_event` ... and ours to set, as netback does when
    /// it runs out of requests (`req_event = req_cons + 1`).
    pub fn arm_rx_req_event(&mut self) {
        let c = self.c();
        wr32(&c.rx, RING_REQ_EVENT, c.rx_req_cons.wrapping_add(1));
    }
}
