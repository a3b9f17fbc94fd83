//! A backend that lies: bad statuses, ids, offsets, lengths, producer jumps,
//! unrequested slots, and random garbage.

use std::vec;
use std::vec::Vec;

use super::*;
use crate::wire::*;
use crate::{Misbehavior, Reason};

/// Consume one RX request and answer it with `rsp` (after optionally copying
/// `data` into the buffer at `data_off`).
fn answer(h: &mut H, data: Option<(usize, &[u8])>, f: impl FnOnce(RxRequest) -> RxResponse) {
    let req = h.be.take_rx_request().expect("no rx request");
    if let Some((off, d)) = data {
        h.be.copy_to_grant(req.gref, off, d);
    }
    let rsp = f(req);
    h.be.put_rx_raw(rsp.encode());
}

fn good(h: &mut H, seed: u32) {
    assert!(h.be.send_frame(&test_frame(seed, 300)));
}

#[test]
fn rx_error_statuses_are_dropped_and_buffers_reposted() {
    let mut h = H::legacy_connected();
    answer(&mut h, None, |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: 0,
        status: NETIF_RSP_ERROR,
    });
    answer(&mut h, None, |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: 0,
        status: NETIF_RSP_DROPPED,
    });
    answer(&mut h, None, |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: 0,
        status: i16::MIN,
    });
    good(&mut h, 1);
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(1, 300)]);
    assert_eq!(h.nf.stats().rx_drop_error, 3);
    assert_eq!(h.be.rx_requests_available(), 64);
}

#[test]
fn rx_bad_ids_are_dropped_and_the_right_buffer_reposted() {
    let mut h = H::legacy_connected();
    let f = test_frame(2, 200);
    answer(&mut h, Some((0, &f)), |r| RxResponse {
        id: r.id ^ 1,
        offset: 0,
        flags: 0,
        status: 200,
    });
    answer(&mut h, Some((0, &f)), |_| RxResponse {
        id: 9999,
        offset: 0,
        flags: 0,
        status: 200,
    });
    answer(&mut h, Some((0, &f)), |_| RxResponse {
        id: u16::MAX,
        offset: 0,
        flags: 0,
        status: 200,
    });
    good(&mut h, 3);
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(3, 300)]);
    assert_eq!(h.nf.stats().rx_drop_bad_id, 3);
    assert_eq!(h.be.rx_requests_available(), 64);
    // Posted ids are still unique and in range after recycling.
    let mut ids: Vec<u16> = (0..64)
        .map(|_| h.be.take_rx_request().unwrap().id)
        .collect();
    ids.sort();
    assert_eq!(ids, (0..64).collect::<Vec<u16>>());
}

#[test]
fn rx_bad_offsets_and_lengths_are_dropped() {
    let mut h = H::legacy_connected();
    for (offset, status) in [
        (0u16, 0i16),
        (4000, 200),
        (0, 4097),
        (4096, 1),
        (u16::MAX, 1),
        (1, 4096),
        (2048, i16::MAX),
    ] {
        answer(&mut h, None, |r| RxResponse {
            id: r.id,
            offset,
            flags: 0,
            status,
        });
    }
    // Legal extremes are delivered: a frame ending exactly at the page end.
    let f = test_frame(4, 96);
    answer(&mut h, Some((4000, &f)), |r| RxResponse {
        id: r.id,
        offset: 4000,
        flags: 0,
        status: 96,
    });
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![f]);
    assert_eq!(h.nf.stats().rx_drop_bad_len, 7);
    assert_eq!(h.be.rx_requests_available(), 64);
}

#[test]
fn multi_slot_frames_are_dropped_whole_even_across_pushes() {
    let mut h = H::legacy_connected();
    answer(&mut h, None, |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: NETRXF_MORE_DATA,
        status: 1000,
    });
    h.be.push_rx();
    assert!(h.rx_all().is_empty());
    // The rest of the frame arrives later; its continuation slots must not be
    // taken for frames.
    let f = test_frame(5, 60);
    answer(&mut h, Some((0, &f)), |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: NETRXF_MORE_DATA,
        status: 60,
    });
    answer(&mut h, Some((0, &f)), |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: 0,
        status: 60,
    });
    good(&mut h, 6);
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(6, 300)]);
    assert_eq!(h.nf.stats().rx_drop_multislot, 1);
    assert_eq!(h.be.rx_requests_available(), 64);
}

#[test]
fn extra_info_slots_are_skipped() {
    let mut h = H::legacy_connected();
    // Frame with a GSO extra chained to a second extra, then one data fragment.
    answer(&mut h, None, |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: NETRXF_EXTRA_INFO | NETRXF_MORE_DATA,
        status: 1400,
    });
    let _ = h.be.take_rx_request();
    h.be.put_rx_raw(
        ExtraInfo {
            ty: 1,
            flags: XEN_NETIF_EXTRA_FLAG_MORE,
            data: [0xff; 6],
        }
        .encode(),
    );
    let _ = h.be.take_rx_request();
    h.be.put_rx_raw(
        ExtraInfo {
            ty: 4,
            flags: 0,
            data: [0xff; 6],
        }
        .encode(),
    );
    answer(&mut h, None, |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: 0,
        status: 100,
    });
    // A single-slot frame with one extra.
    answer(&mut h, None, |r| RxResponse {
        id: r.id,
        offset: 0,
        flags: NETRXF_EXTRA_INFO,
        status: 100,
    });
    let _ = h.be.take_rx_request();
    // An extra slot that looks like a frame with more_data: must still be read as an extra.
    h.be.put_rx_raw(
        RxResponse {
            id: 0,
            offset: 0,
            flags: NETRXF_MORE_DATA,
            status: 60,
        }
        .encode(),
    );
    good(&mut h, 7);
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(7, 300)]);
    assert_eq!(h.nf.stats().rx_drop_extra_info, 1);
    assert_eq!(h.nf.stats().rx_drop_multislot, 1);
    assert_eq!(h.be.rx_requests_available(), 64);
}

#[test]
fn rx_producer_jump_breaks_the_ring_cleanly() {
    // (From rsp_cons + 1: u32::MAX - 1 lands one *behind* rsp_cons.)
    for jump in [64u32, 1000, 0x8000_0000, u32::MAX - 1] {
        let mut h = H::legacy_connected();
        good(&mut h, 1);
        h.be.push_rx();
        let p = h.be.rx_rsp_prod_pvt();
        h.be.set_rx_rsp_prod(p.wrapping_add(jump));
        assert!(h.rx_all().is_empty(), "jump {jump}");
        assert_eq!(h.nf.stats().rsp_prod_overflow, 1);
        assert!(h.step_until(100, |h| h.nf.state() == State::Disconnected));
        assert_eq!(
            h.events[1..],
            [
                Event::Disconnected(Reason::BackendMisbehaved(Misbehavior::RxProducerOverflow)),
                Event::Released { leaked_pages: 0 }
            ]
        );
        h.assert_all_released();
    }
}

#[test]
fn tx_producer_jump_breaks_the_ring_cleanly() {
    let mut h = H::legacy_connected();
    assert!(h.tx(&test_frame(1, 100)));
    let _ = h.be.take_tx();
    h.be.set_tx_rsp_prod(7);
    h.step();
    assert_eq!(h.nf.stats().rsp_prod_overflow, 1);
    assert!(h.step_until(100, |h| h.nf.state() == State::Disconnected));
    assert!(h.has_event(&Event::Disconnected(Reason::BackendMisbehaved(
        Misbehavior::TxProducerOverflow
    ))));
    h.assert_all_released();
}

#[test]
fn tx_bad_ids_statuses_and_errors() {
    let mut h = H::legacy_connected();
    for i in 0..4 {
        assert!(h.tx(&test_frame(i, 100)));
    }
    let reqs = h.be.take_tx();
    let ids: Vec<u16> = reqs.iter().map(|r| r.0.id).collect();
    h.be.put_tx_response(ids[0], NETIF_RSP_OKAY);
    h.be.put_tx_response(ids[1], NETIF_RSP_ERROR);
    h.be.put_tx_response(ids[2], NETIF_RSP_DROPPED);
    h.be.put_tx_response(ids[3], NETIF_RSP_NULL); // not an answer for a data slot
    h.be.push_tx();
    h.step();
    let s = h.nf.stats().clone();
    assert_eq!((s.tx_completed, s.tx_error, s.tx_bad_status), (1, 2, 1));
    // The NULL did not free ids[3] by itself, but every slot is now answered,
    // so the buffer is taken back.
    assert_eq!(s.tx_reclaimed, 1);
    assert_eq!(h.nf.tx_in_flight(), 0);

    // Wrong ids: out of range, and one already completed.
    assert!(h.tx(&test_frame(10, 100)));
    assert!(h.tx(&test_frame(11, 100)));
    let reqs = h.be.take_tx();
    h.be.put_tx_response(500, NETIF_RSP_OKAY);
    h.be.put_tx_response(ids[0], NETIF_RSP_OKAY);
    h.be.push_tx();
    h.step();
    assert_eq!(h.nf.stats().tx_bad_id, 2);
    assert_eq!(h.nf.stats().tx_reclaimed, 3);
    assert_eq!(h.nf.tx_in_flight(), 0);
    let _ = reqs;
    // Odd status values on a real id.
    assert!(h.tx(&test_frame(12, 100)));
    let r = h.be.take_tx();
    h.be.put_tx_response(r[0].0.id, 77);
    h.be.push_tx();
    h.step();
    assert_eq!(h.nf.stats().tx_bad_status, 2);
    assert_eq!(h.nf.tx_in_flight(), 0);
    // Still fully working.
    for i in 0..32 {
        assert!(h.tx(&test_frame(100 + i, 100)));
    }
    assert_eq!(h.be.service_tx().len(), 32);
}

#[test]
fn csum_blank_frames_are_completed_or_dropped() {
    use smoltcp::wire::*;
    let mut h = H::legacy_connected();
    let src = Ipv4Address::new(10, 0, 0, 1);
    let dst = Ipv4Address::new(10, 0, 0, 2);
    let mut f = vec![0u8; 14 + 20 + 20 + 5];
    {
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(EthernetAddress(crate::testing::MAC));
        eth.set_src_addr(EthernetAddress([2, 0, 0, 0, 0, 1]));
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(45);
        ip.set_hop_limit(64);
        ip.set_next_header(IpProtocol::Tcp);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.set_src_port(5000);
        tcp.set_dst_port(80);
        tcp.set_header_len(20);
        tcp.payload_mut().copy_from_slice(b"hello");
    }
    assert!(h
        .be
        .send_frame_flags(&f, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED));
    let mut icmp = f.clone();
    icmp[14 + 9] = 1; // protocol ICMP: cannot be completed
    assert!(h.be.send_frame_flags(&icmp, NETRXF_CSUM_BLANK));
    assert!(h.be.send_frame_flags(&f, NETRXF_DATA_VALIDATED)); // delivered as is
    h.be.push_rx();
    let got = h.rx_all();
    assert_eq!(got.len(), 2);
    let tcp = TcpPacket::new_checked(&got[0][34..]).unwrap();
    assert!(tcp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)));
    assert_eq!(tcp.payload(), b"hello");
    assert_eq!(got[1], f);
    assert_eq!(h.nf.stats().rx_csum_filled, 1);
    assert_eq!(h.nf.stats().rx_drop_csum, 1);
}

#[test]
fn random_garbage_responses_never_panic_or_leak_buffers() {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut h = H::legacy_connected();
    for round in 0..3000 {
        // Answer a random number of RX requests with random bytes (or a
        // real frame now and then), and TX requests with random responses.
        let n = rng.next_u64() % 20;
        for _ in 0..n {
            match rng.next_u64() % 4 {
                0 => {
                    let s = rng.next_u64() as u32;
                    let _ = h.be.send_frame(&test_frame(s, size_for(s)));
                }
                _ => {
                    if h.be.take_rx_request().is_some() {
                        let r = rng.next_u64().to_le_bytes();
                        h.be.put_rx_raw(r);
                    }
                }
            }
        }
        h.be.push_rx();
        let _ = h.rx_all();
        for _ in 0..rng.next_u64() % 5 {
            let s = rng.next_u64() as u32;
            let _ = h.tx(&test_frame(s, size_for(s)));
        }
        let reqs = h.be.take_tx();
        for (r, _) in &reqs {
            let v = rng.next_u64();
            let id = if v.is_multiple_of(3) { v as u16 } else { r.id };
            h.be.put_tx_response(id, (v >> 16) as i16 % 3);
        }
        h.be.push_tx();
        h.step();
        assert!(h.nf.is_connected(), "round {round}: {:?}", h.events);
        // Skip states end with the frame: drain any pending multi-slot tail.
        assert!(h.be.rx_requests_available() <= 64);
    }
    // With well-formed traffic afterwards everything works again.
    for _ in 0..4 {
        // Random continuation flags may leave a frame half-skipped: flush it.
        answer(&mut h, None, |r| RxResponse {
            id: r.id,
            offset: 0,
            flags: 0,
            status: -1,
        });
    }
    h.be.push_rx();
    let _ = h.rx_all();
    h.step();
    let _ = h.be.service_tx();
    h.step();
    assert_eq!(h.be.rx_requests_available(), 64, "rx buffers leaked");
    assert_eq!(h.nf.tx_in_flight(), 0, "tx buffers leaked");
    good(&mut h, 42);
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(42, 300)]);
    let s = h.nf.stats();
    assert!(s.rx_dropped() > 1000 && s.rx_frames > 1000, "{s}");
}
