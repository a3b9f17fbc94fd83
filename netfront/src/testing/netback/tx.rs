//! The fake netback's TX side: parsing the frontend's slot chains with
//! netback's rules, answering them, and delivering the frames (GSO packets
//! segmented like Linux's `tcp_gso_segment`, or whole).

use std::vec::Vec;

use super::{rd32, wr32, BackConn, FakeNetback, GsoDelivery};
use crate::csum;
use crate::platform::PAGE_SIZE;
use crate::ring::needs_notify;
use crate::testing::xen::{World, BACK_DOMID};
use crate::wire::*;

/// A TX packet as netback assembles it.
#[derive(Clone, Debug)]
pub struct TxPacket {
    pub first: TxRequest,
    /// The raw extra-info slots.
    pub extras: Vec<[u8; 8]>,
    pub gso: Option<GsoExtra>,
    /// The continuation data slots.
    pub frags: Vec<TxRequest>,
    pub data: Vec<u8>,
}

/// `tcp_gso_segment` for an Ethernet/IPv4/TCP frame: `mss`-byte segments,
/// headers copied, IPv4 total length, id (+1 per segment) and header
/// checksum redone, sequence numbers advanced, FIN and PSH only on the last
/// segment, CWR only on the first, full TCP checksums.
pub fn gso_segment(frame: &[u8], mss: usize) -> Vec<Vec<u8>> {
    let l4 = csum::ipv4_l4(frame).expect("gso packet is not IPv4 TCP");
    assert_eq!(l4.proto, csum::PROTO_TCP, "gso packet is not TCP");
    let thl = usize::from(frame[l4.start + 12] >> 4) * 4;
    let hdr = l4.start + thl;
    let payload = &frame[hdr..l4.start + l4.len];
    assert!(mss > 0);
    let seq0 = u32::from_be_bytes(frame[l4.start + 4..l4.start + 8].try_into().unwrap());
    let id0 = u16::from_be_bytes([frame[18], frame[19]]);
    let flags = frame[l4.start + 13];
    let n = payload.len().div_ceil(mss).max(1);
    let mut out = Vec::new();
    for (i, chunk) in payload.chunks(mss).enumerate().chain(
        // An empty payload still makes one segment.
        (payload.is_empty()).then_some((0, &payload[..0])),
    ) {
        let mut f = frame[..hdr].to_vec();
        f.extend_from_slice(chunk);
        let ip_total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&ip_total.to_be_bytes());
        f[18..20].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        f[24] = 0;
        f[25] = 0;
        let ihl = l4.start - 14;
        let c = ip_header_checksum(&f[14..14 + ihl]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let seq = seq0.wrapping_add((i * mss) as u32);
        f[l4.start + 4..l4.start + 8].copy_from_slice(&seq.to_be_bytes());
        let mut fl = flags;
        if i + 1 < n {
            fl &= !(0x01 | 0x08); // FIN, PSH
        }
        if i > 0 {
            fl &= !0x80; // CWR
        }
        f[l4.start + 13] = fl;
        csum::fill_ipv4_l4_checksum(&mut f).unwrap();
        out.push(f);
    }
    out
}

fn ip_header_checksum(h: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for c in h.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

impl FakeNetback {
    /// Grant-copy TX bytes out of a frontend page, checking that it is
    /// granted to us read-only and that the slot stays inside its page.
    fn tx_bytes(world: &World, req: &TxRequest, len: usize) -> Vec<u8> {
        assert!(
            req.offset as usize + len <= PAGE_SIZE,
            "tx request crosses the page: offset {} size {len}",
            req.offset
        );
        let mem = world
            .grant_mem(req.gref, BACK_DOMID, false)
            .expect("tx gref not granted to backend");
        {
            let w = world.0.borrow();
            assert!(w.grants[&req.gref].readonly, "tx page granted writable");
        }
        let v = mem.borrow()[req.offset as usize..][..len].to_vec();
        v
    }

    /// Consume every pending TX packet (all its slots), checking it the way
    /// netback would: anything netback would drop or treat as fatal fails
    /// the test.
    pub fn take_tx_packets(&mut self) -> Vec<TxPacket> {
        let world = self.world.clone();
        let fe = self.fe;
        let seen = &mut self.seen;
        let c = self.conn.as_mut().expect("backend not connected");
        let mut out = Vec::new();
        let prod = rd32(&c.tx, RING_REQ_PROD);
        assert!(
            prod.wrapping_sub(c.tx_rsp_prod_pvt) <= TX_RING_SIZE as u32,
            "frontend overfilled the tx ring"
        );
        let next = |c: &mut BackConn| -> [u8; 12] {
            assert!(c.tx_req_cons != prod, "tx packet continues past req_prod");
            let off = tx_slot_offset(c.tx_req_cons);
            c.tx_req_cons = c.tx_req_cons.wrapping_add(1);
            c.tx.borrow()[off..off + 12].try_into().unwrap()
        };
        while c.tx_req_cons != prod {
            let first = TxRequest::decode(&next(c));
            if !fe.sg && !fe.csum {
                assert_eq!(first.flags, 0, "frontend sent tx flags");
            }
            let mut extras = Vec::new();
            let mut gso = None;
            if first.flags & NETTXF_EXTRA_INFO != 0 {
                loop {
                    let raw: [u8; 8] = next(c)[..8].try_into().unwrap();
                    let e = GsoExtra::decode(&raw);
                    assert!(
                        (1..=XEN_NETIF_EXTRA_TYPE_HASH).contains(&e.ty),
                        "invalid extra type {}",
                        e.ty
                    );
                    if e.ty == XEN_NETIF_EXTRA_TYPE_GSO {
                        assert!(fe.gso_tcpv4, "gso without feature-gso-tcpv4");
                        assert!(e.size > 0, "GSO size must not be zero");
                        assert_eq!(e.gso_type, XEN_NETIF_GSO_TYPE_TCPV4, "bad GSO type");
                        gso = Some(e);
                    }
                    extras.push(raw);
                    if e.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                        break;
                    }
                }
            }
            // xenvif_count_requests
            let mut frags = Vec::new();
            let mut remaining = first.size as usize;
            let mut more = first.flags & NETTXF_MORE_DATA != 0;
            while more {
                assert!(fe.sg, "multi-slot tx without feature-sg");
                assert!(
                    frags.len() < XEN_NETIF_NR_SLOTS_MIN,
                    "more than {XEN_NETIF_NR_SLOTS_MIN} slots"
                );
                let r = TxRequest::decode(&next(c));
                assert!(
                    r.size as usize <= remaining,
                    "slot size {} > remaining size {remaining}",
                    r.size
                );
                remaining -= r.size as usize;
                assert!(
                    r.offset as usize + r.size as usize <= PAGE_SIZE,
                    "cross page"
                );
                assert!(r.size > 0, "empty continuation slot");
                more = r.flags & NETTXF_MORE_DATA != 0;
                assert_eq!(
                    r.flags & !NETTXF_MORE_DATA,
                    0,
                    "flags on a continuation slot"
                );
                frags.push(r);
            }
            assert!(first.size >= 14, "runt tx frame");
            assert!(remaining > 0, "empty first slot");
            let mut data = Self::tx_bytes(&world, &first, remaining);
            for r in &frags {
                data.extend(Self::tx_bytes(&world, r, r.size as usize));
            }
            assert_eq!(data.len(), first.size as usize);
            // Checksum offload: checksum_setup/skb_checksum_setup.
            let blank = first.flags & NETTXF_CSUM_BLANK != 0;
            if first.flags & (NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED) != 0 {
                assert!(fe.csum, "checksum flags with feature-no-csum-offload=1");
            }
            if blank {
                assert!(
                    first.flags & NETTXF_DATA_VALIDATED != 0,
                    "csum_blank without data_validated"
                );
                let l4 = csum::ipv4_l4(&data).expect("csum_blank on a non TCP/UDP frame");
                let field = u16::from_be_bytes([data[l4.csum_at], data[l4.csum_at + 1]]);
                assert_eq!(field, l4.pseudo, "csum_blank without the pseudo-header sum");
                seen.tx_csum_blank += 1;
            }
            if gso.is_some() {
                assert!(
                    blank,
                    "gso packet without csum_blank (netback would fix it up)"
                );
                assert_eq!(csum::ipv4_l4(&data).unwrap().proto, csum::PROTO_TCP);
                seen.tx_gso += 1;
            }
            seen.tx_packets += 1;
            seen.tx_multi_slot += u64::from(!frags.is_empty());
            seen.tx_max_len = seen.tx_max_len.max(data.len());
            seen.tx_max_slots = seen.tx_max_slots.max(1 + frags.len());
            out.push(TxPacket {
                first,
                extras,
                gso,
                frags,
                data,
            });
        }
        // RING_FINAL_CHECK_FOR_REQUESTS: ask to be kicked for the next one.
        wr32(&c.tx, RING_REQ_EVENT, c.tx_req_cons.wrapping_add(1));
        out
    }

    /// Consume every pending TX packet, returning its first request with
    /// the packet's bytes.
    pub fn take_tx(&mut self) -> Vec<(TxRequest, Vec<u8>)> {
        self.take_tx_packets()
            .into_iter()
            .map(|p| (p.first, p.data))
            .collect()
    }

    /// Answer a packet like netback: its first slot (followed by a NULL per
    /// extra) and every continuation slot, with `status`.
    pub fn answer_tx(&mut self, p: &TxPacket, status: i16) {
        let head = |be: &mut Self| {
            be.put_tx_response(p.first.id, status);
            for _ in &p.extras {
                // make_tx_response: only the status of an extra's slot is
                // written; its id bytes stay what the frontend put there.
                be.put_tx_null();
            }
        };
        if !self.tx_frags_first {
            head(self);
        }
        for r in &p.frags {
            self.put_tx_response(r.id, status);
        }
        if self.tx_frags_first {
            head(self);
        }
    }

    /// `RING_GET_RESPONSE(..)->status = XEN_NETIF_RSP_NULL` for an extra's slot.
    pub fn put_tx_null(&mut self) {
        let c = self.c();
        let off = tx_slot_offset(c.tx_rsp_prod_pvt);
        c.tx.borrow_mut()[off + 2..off + 4].copy_from_slice(&NETIF_RSP_NULL.to_le_bytes());
        c.tx_rsp_prod_pvt = c.tx_rsp_prod_pvt.wrapping_add(1);
    }

    /// Write a TX response (id, status) in the next response slot.
    pub fn put_tx_response(&mut self, id: u16, status: i16) {
        let c = self.c();
        let off = tx_slot_offset(c.tx_rsp_prod_pvt);
        c.tx.borrow_mut()[off..off + 4].copy_from_slice(&TxResponse { id, status }.encode());
        c.tx_rsp_prod_pvt = c.tx_rsp_prod_pvt.wrapping_add(1);
    }

    pub fn push_tx(&mut self) -> bool {
        let world = self.world.clone();
        let c = self.c();
        let old = rd32(&c.tx, RING_RSP_PROD);
        let new = c.tx_rsp_prod_pvt;
        wr32(&c.tx, RING_RSP_PROD, new);
        let notify = needs_notify(old, new, rd32(&c.tx, RING_RSP_EVENT));
        if notify {
            world.send_to_front(c.port);
        }
        notify
    }

    pub fn set_tx_rsp_prod(&mut self, v: u32) {
        let c = self.c();
        wr32(&c.tx, RING_RSP_PROD, v);
    }

    /// Take every TX packet, answer OKAY, push. Returns the frames as a
    /// peer on the bridge sees them: checksums completed, GSO packets
    /// segmented (or whole, per `gso_delivery`).
    pub fn service_tx(&mut self) -> Vec<Vec<u8>> {
        let pkts = self.take_tx_packets();
        for p in &pkts {
            self.answer_tx(p, NETIF_RSP_OKAY);
        }
        if !pkts.is_empty() {
            self.push_tx();
        }
        let mut out = Vec::new();
        for mut p in pkts {
            match p.gso {
                Some(g) if self.gso_delivery == GsoDelivery::Segment => {
                    let segs = gso_segment(&p.data, g.size as usize);
                    self.seen.tx_segments += segs.len() as u64;
                    out.extend(segs);
                }
                _ => {
                    if p.first.flags & NETTXF_CSUM_BLANK != 0 {
                        csum::fill_ipv4_l4_checksum(&mut p.data).unwrap();
                    }
                    out.push(p.data);
                }
            }
        }
        out
    }
}
