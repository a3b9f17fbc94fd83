//! Offload mode against the fake netback: negotiation (and falling back to
//! the exact keys of the mode without it), TX slot chains with the GSO
//! extra, back-pressure, completions, RX reassembly, checksum policy, and
//! malformed chains.

use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use smoltcp::phy::{Checksum, Device};
use smoltcp::wire::{IpAddress, Ipv4Address, TcpPacket, UdpPacket};

use super::*;
use crate::testing::{BackendSetup, FrontendOffload, FRONT};
use crate::wire::*;
use crate::{Layout, Offload, OffloadOff, FRONTEND_FEATURES, FRONTEND_FEATURES_OFFLOAD, PAGE_SIZE};

fn peer() -> IpAddress {
    IpAddress::Ipv4(Ipv4Address::from(PEER_IP))
}
fn guest() -> IpAddress {
    IpAddress::Ipv4(Ipv4Address::from(GUEST_IP))
}

/// The frontend's writes as (key, value), ring refs and port blanked.
fn writes(h: &H) -> Vec<(String, String)> {
    h.world
        .inner()
        .xs_writes
        .iter()
        .map(|(k, v)| {
            let k = k[FRONT.len() + 1..].to_string();
            let v = match k.as_str() {
                "tx-ring-ref" | "rx-ring-ref" | "event-channel" => String::from("*"),
                _ => v.clone(),
            };
            (k, v)
        })
        .collect()
}

fn expected_writes(features: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut w = vec![(String::from("state"), String::from("1"))];
    for k in ["tx-ring-ref", "rx-ring-ref", "event-channel"] {
        w.push((k.into(), "*".into()));
    }
    for (k, v) in features {
        w.push((String::from(*k), String::from(*v)));
    }
    w.push(("state".into(), "4".into()));
    w
}

// ------------------------------------------------------------ negotiation

#[test]
fn linux_backend_gets_sg_gso_and_checksum_offload() {
    let mut h = H::offload_connected();
    h.step();
    assert_eq!(writes(&h), expected_writes(FRONTEND_FEATURES_OFFLOAD));
    let keys = &h.be.seen_keys;
    let get = |k: &str| keys.get(k).map(String::as_str);
    assert_eq!(get("feature-sg"), Some("1"));
    assert_eq!(get("feature-gso-tcpv4"), Some("1"));
    assert_eq!(get("feature-no-csum-offload"), Some("0"));
    assert_eq!(get("feature-gso-tcpv6"), Some("0"));
    assert_eq!(get("feature-ipv6-csum-offload"), Some("0"));
    assert_eq!(
        h.be.fe,
        FrontendOffload {
            sg: true,
            gso_tcpv4: true,
            csum: true
        }
    );
    assert_eq!(
        h.nf.offload(),
        Offload::On {
            tso_max_frame: 32768
        }
    );
    assert_eq!(
        format!("{}", h.nf.offload()),
        "tso+sg+csum (tx frames up to 32768 B)"
    );
    let c = h.nf.capabilities();
    assert_eq!(c.max_transmission_unit, 1514);
    assert!(matches!(c.checksum.tcp, Checksum::None));
    for ck in [c.checksum.ipv4, c.checksum.udp, c.checksum.icmpv4] {
        assert!(matches!(ck, Checksum::Both));
    }
    assert_eq!(c.segmentation.tcpv4.map(|n| n.get()), Some(32768));
}

#[test]
fn without_offload_the_keys_and_capabilities_are_exactly_the_old_ones() {
    let debian = BackendSetup::default();
    let no_sg = BackendSetup {
        features: vec![("feature-rx-copy", "1"), ("feature-gso-tcpv4", "1")],
        ..Default::default()
    };
    let no_gso = BackendSetup {
        features: vec![("feature-rx-copy", "1"), ("feature-sg", "1")],
        ..Default::default()
    };
    let few_rx = Config {
        rx_buffers: 17,
        ..Default::default()
    };
    for (setup, cfg, why) in [
        (debian.clone(), legacy(), OffloadOff::NotRequested),
        (no_sg, Config::default(), OffloadOff::BackendLacksSg),
        (no_gso, Config::default(), OffloadOff::BackendLacksGsoTcpv4),
        (debian, few_rx, OffloadOff::TooFewRxBuffers),
    ] {
        let mut h = H::connected(setup, cfg);
        h.step();
        assert_eq!(h.nf.offload(), Offload::Off(why));
        assert_eq!(writes(&h), expected_writes(FRONTEND_FEATURES), "{why:?}");
        assert_eq!(
            h.be.fe,
            FrontendOffload::default(),
            "netback sees no offload"
        );
        let c = h.nf.capabilities();
        assert_eq!(c.max_transmission_unit, 1514);
        for ck in [
            c.checksum.ipv4,
            c.checksum.tcp,
            c.checksum.udp,
            c.checksum.icmpv4,
        ] {
            assert!(matches!(ck, Checksum::Both));
        }
        assert_eq!(c.segmentation.tcpv4, None);
        // And frames flow as before: one slot, no flags, two per page.
        assert_eq!(h.nf.memory().tx_pages, 16);
        assert!(h.tx(&tcp_frame(1, 1460, false)));
        let p = h.be.take_tx_packets();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].first.flags, 0);
        assert!(p[0].frags.is_empty());
        assert_eq!(p[0].data, tcp_frame(1, 1460, false), "untouched");
    }
    assert_eq!(
        format!("{}", Offload::Off(OffloadOff::BackendLacksSg)),
        "off (backend lacks feature-sg)"
    );
}

#[test]
fn tso_frame_size_follows_the_tx_buffers() {
    for (ntx, want) in [
        (1, 4096),
        (7, 4096),
        (8, 8192),
        (32, 32768),
        (63, 61440),
        (64, 65535),
        (256, 65535),
    ] {
        assert_eq!(Layout::tso_max_frame(ntx), want, "{ntx}");
    }
    let h = H::offload_with(Config {
        tx_buffers: 64,
        ..Default::default()
    });
    let c = h.nf.capabilities();
    assert_eq!(c.segmentation.tcpv4.map(|n| n.get()), Some(65535));
    assert_eq!(h.nf.memory().tx_pages, 64);
}

#[test]
fn reconnect_renegotiates_the_mode() {
    let mut h = H::offload_connected();
    assert_eq!(h.world.live_pages(), 98);
    h.nf.close();
    assert!(h.step_until(100, |h| h.nf.state() == State::Disconnected));
    h.assert_all_released();
    // The backend stops offering SG (say, a different netback).
    h.world
        .xs_set(&format!("{}/feature-sg", crate::testing::BACK), "0");
    assert!(h.nf.reconnect());
    assert!(h.step_until(200, |h| h.nf.is_connected() && h.be.is_connected()));
    assert_eq!(h.nf.offload(), Offload::Off(OffloadOff::BackendLacksSg));
    assert_eq!(h.world.live_pages(), 82);
    assert_eq!(h.nf.memory(), legacy().memory());
    assert_eq!(
        h.be.seen_keys.get("feature-sg").map(String::as_str),
        Some("0")
    );
    assert_eq!(
        h.be.seen_keys
            .get("feature-no-csum-offload")
            .map(String::as_str),
        Some("1")
    );
    // smoltcp still believes in offload (its Interface read the capabilities
    // during the first connection): TCP checksums are computed here, small
    // frames flow, received TCP is verified here.
    assert!(h.tx(&{
        let mut f = tcp_frame(3, 100, false);
        f[50] = 0;
        f[51] = 0;
        f
    }));
    let p = h.be.take_tx_packets();
    assert_eq!(p[0].first.flags, 0);
    assert_eq!(crate::csum::verify_ipv4_tcp(&p[0].data), Ok(true));
    let mut bad = tcp_frame(4, 100, true);
    bad[60] ^= 1;
    assert!(h.be.send_frame(&bad));
    assert!(h.be.send_frame(&tcp_frame(5, 100, true)));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![tcp_frame(5, 100, true)]);
    assert_eq!(h.nf.stats().rx_csum_bad, 1);
}

// ------------------------------------------------------------ TX

#[test]
fn tso_frame_goes_out_as_a_slot_chain_with_a_gso_extra() {
    let mut h = H::offload_connected();
    let frame = tcp_frame(1, 20000, false); // 20054 bytes: 5 pages
    assert!(h.tx_meta(&frame, Some(1460)));
    assert_eq!(h.nf.tx_in_flight(), 5);
    let s = h.nf.stats().clone();
    assert_eq!((s.tx_frames, s.tx_gso_frames, s.tx_slots), (1, 1, 6));
    let pkts = h.be.take_tx_packets();
    assert_eq!(pkts.len(), 1);
    let p = &pkts[0];
    assert_eq!(
        p.first.size as usize,
        frame.len(),
        "first size = whole packet"
    );
    assert_eq!(
        p.first.flags,
        NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED | NETTXF_MORE_DATA | NETTXF_EXTRA_INFO
    );
    assert_eq!(p.first.offset, 0);
    assert_eq!(p.extras, vec![[1, 0, 0xb4, 0x05, 1, 0, 0, 0]]);
    assert_eq!(p.gso, Some(GsoExtra::tcpv4(1460)));
    let sizes: Vec<u16> = p.frags.iter().map(|r| r.size).collect();
    assert_eq!(sizes, [4096, 4096, 4096, 3670]);
    let flags: Vec<u16> = p.frags.iter().map(|r| r.flags).collect();
    assert_eq!(
        flags,
        [NETTXF_MORE_DATA, NETTXF_MORE_DATA, NETTXF_MORE_DATA, 0]
    );
    // Same bytes, but the checksum field holds the pseudo-header sum.
    assert_eq!(p.data[..50], frame[..50]);
    assert_eq!(p.data[52..], frame[52..]);
    let tcp = TcpPacket::new_checked(&p.data[34..]).unwrap();
    assert!(tcp.verify_partial_checksum(&guest(), &peer()));
    // Netback answers: first slot, NULL for the extra, then the rest.
    h.be.answer_tx(p, NETIF_RSP_OKAY);
    h.be.push_tx();
    h.step();
    let s = h.nf.stats().clone();
    assert_eq!(h.nf.tx_in_flight(), 0);
    assert_eq!(
        (s.tx_completed, s.tx_bad_status, s.tx_bad_id, s.tx_reclaimed),
        (1, 0, 0, 0),
        "{s}"
    );
    // What Linux's tcp_gso_segment makes of it (the fake's segmenter).
    let segs = crate::testing::gso_segment(&p.data, 1460);
    assert_eq!(segs.len(), 14);
    let mut payload = Vec::new();
    for (i, f) in segs.iter().enumerate() {
        assert!(f.len() <= 1514);
        let t = TcpPacket::new_checked(&f[34..]).unwrap();
        assert!(t.verify_checksum(&guest(), &peer()), "segment {i}");
        assert_eq!(t.seq_number().0 as u32, 7919 + (i * 1460) as u32);
        assert_eq!(t.psh(), i == 13);
        payload.extend_from_slice(t.payload());
    }
    assert_eq!(payload, frame[54..]);
}

#[test]
fn frames_without_segmentation() {
    let mut h = H::offload_connected();
    // TCP that fits the MTU: one slot, checksum offloaded, no extra.
    assert!(h.tx_meta(&tcp_frame(1, 1460, false), None));
    // UDP and anything else: as smoltcp made them.
    assert!(h.tx(&udp_frame(2, 1000, false)));
    assert!(h.tx(&test_frame(3, 1514)));
    // A TCP frame above a page without segmentation: several slots, no extra.
    assert!(h.tx_meta(&tcp_frame(4, 5000, false), None));
    // A TSO frame whose payload fits one segment: still one GSO packet.
    assert!(h.tx_meta(&tcp_frame(5, 536, false), Some(536)));
    let p = h.be.take_tx_packets();
    assert_eq!(p.len(), 5);
    assert_eq!(p[0].first.flags, NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED);
    assert!(p[0].frags.is_empty() && p[0].extras.is_empty());
    assert_eq!(p[1].first.flags, 0);
    assert_eq!(p[1].data, udp_frame(2, 1000, false));
    assert_eq!(p[2].first.flags, 0);
    assert_eq!(p[2].data, test_frame(3, 1514));
    assert_eq!(
        p[3].first.flags,
        NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED | NETTXF_MORE_DATA
    );
    assert_eq!(p[3].frags.len(), 1);
    assert!(p[3].gso.is_none());
    assert_eq!(p[4].gso, Some(GsoExtra::tcpv4(536)));
    assert!(p[4].frags.is_empty());
    let s = h.nf.stats();
    assert_eq!((s.tx_frames, s.tx_gso_frames, s.tx_slots), (5, 1, 7));
    for p in &p {
        h.be.answer_tx(p, NETIF_RSP_OKAY);
    }
    h.be.push_tx();
    h.step();
    assert_eq!(h.nf.tx_in_flight(), 0);
    assert_eq!(h.nf.stats().tx_completed, 5);
}

#[test]
fn completions_out_of_order_errors_and_stray_nulls() {
    let mut h = H::offload_connected();
    h.be.tx_frags_first = true;
    for i in 0..3 {
        assert!(h.tx_meta(&tcp_frame(i, 9000, false), Some(1460)));
    }
    assert_eq!(h.nf.tx_in_flight(), 9);
    let p = h.be.take_tx_packets();
    h.be.answer_tx(&p[0], NETIF_RSP_OKAY);
    h.be.answer_tx(&p[1], NETIF_RSP_ERROR);
    h.be.push_tx();
    h.step();
    assert_eq!(h.nf.tx_in_flight(), 3);
    let s = h.nf.stats().clone();
    assert_eq!((s.tx_completed, s.tx_error, s.tx_bad_status), (1, 1, 0));
    // A NULL where a data slot's answer belongs: a bad status, and that
    // buffer comes back once every ring slot is answered.
    assert!(h.tx_meta(&tcp_frame(7, 100, false), None));
    let _ = h.be.take_tx_packets();
    h.be.put_tx_null();
    h.be.answer_tx(&p[2], NETIF_RSP_OKAY);
    h.be.push_tx();
    h.step();
    let s = h.nf.stats().clone();
    assert_eq!((s.tx_completed, s.tx_bad_status, s.tx_reclaimed), (2, 1, 1));
    assert_eq!(h.nf.tx_in_flight(), 0);
    // A backend answering the first slot only: once every ring slot is
    // answered, the rest are taken back.
    assert!(h.tx_meta(&tcp_frame(9, 9000, false), Some(1460)));
    let p = h.be.take_tx_packets();
    h.be.put_tx_response(p[0].first.id, NETIF_RSP_OKAY);
    h.be.put_tx_null();
    h.be.put_tx_response(p[0].first.id, NETIF_RSP_OKAY); // twice
    h.be.put_tx_response(999, NETIF_RSP_OKAY);
    h.be.push_tx();
    h.step();
    let s = h.nf.stats().clone();
    assert_eq!((s.tx_bad_id, s.tx_reclaimed), (2, 3), "{s}");
    assert_eq!(h.nf.tx_in_flight(), 0);
    // Still fully working.
    for i in 0..4 {
        assert!(h.tx_meta(&tcp_frame(20 + i, 32768 - 54, false), Some(1460)));
    }
    assert_eq!(h.be.service_tx().len(), 4 * 23);
}

#[test]
fn big_frames_wait_for_buffers_instead_of_being_dropped_or_split() {
    // 32 TX pages, TSO frames up to 8 pages.
    let mut h = H::offload_connected();
    let big = |i: u32| tcp_frame(i, 32768 - 54, false);
    for i in 0..3 {
        assert!(h.tx_meta(&big(i), Some(1460)), "big {i}");
    }
    assert_eq!(h.nf.tx_in_flight(), 24);
    // A small frame goes; now 7 pages are free, not enough for a token of
    // the largest size: transmit() says no, for small frames too.
    assert!(h.tx_meta(&tcp_frame(10, 100, false), None));
    assert_eq!(h.nf.tx_in_flight(), 25);
    let full0 = h.nf.stats().tx_ring_full;
    assert!(!h.tx_meta(&big(11), Some(1460)));
    assert!(!h.tx(&test_frame(12, 60)));
    assert!(h.nf.stats().tx_ring_full >= full0 + 2);
    // Received frames still get in (their replies need one page).
    assert!(h.be.send_frame(&test_frame(13, 100)));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(13, 100)]);
    // Nothing to do until a TX completion: no busy polling.
    h.step();
    assert_ne!(h.nf.poll_delay(h.now), Some(0));
    // One big frame completes: 15 pages free, the next big frame goes.
    let p = h.be.take_tx_packets();
    assert_eq!(p.len(), 4);
    h.be.answer_tx(&p[0], NETIF_RSP_OKAY);
    assert!(h.be.push_tx(), "the completion must raise an event");
    h.step();
    assert!(h.tx_meta(&big(14), Some(1460)));
    // Nothing was dropped or split: every frame arrived whole, in order.
    for p in &p[1..] {
        h.be.answer_tx(p, NETIF_RSP_OKAY);
    }
    h.be.push_tx();
    let p2 = h.be.take_tx_packets();
    assert_eq!(p2.len(), 1);
    assert_eq!(p2[0].data.len(), 32768);
    let lens: Vec<usize> = p.iter().map(|p| p.data.len()).collect();
    assert_eq!(lens, [32768, 32768, 32768, 154]);
    assert_eq!(h.nf.stats().tx_dropped(), 0);
}

#[test]
fn ring_slots_run_out_before_buffers_with_many_gso_frames() {
    // 256 TX pages and TSO frames of 16 pages + 1 extra slot: 15 such frames
    // take 255 of the 256 ring slots while 16 pages are still free.
    let mut h = H::offload_with(Config {
        tx_buffers: 256,
        ..Default::default()
    });
    let big = |i: u32| tcp_frame(i, 65535 - 54, false);
    for i in 0..15 {
        assert!(h.tx_meta(&big(i), Some(1448)), "big {i}");
    }
    assert_eq!(h.nf.tx_in_flight(), 240);
    assert!(!h.tx_meta(&big(15), Some(1448)), "ring slots short");
    // A reply needs one slot, not two: received frames still get in.
    assert!(h.be.send_frame(&test_frame(99, 200)));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![test_frame(99, 200)]);
    h.step();
    assert_ne!(
        h.nf.poll_delay(h.now),
        Some(0),
        "nothing to do: no busy loop"
    );
    let p = h.be.take_tx_packets();
    assert_eq!(p.len(), 15);
    assert!(p
        .iter()
        .all(|p| p.frags.len() == 15 && p.data.len() == 65535));
    assert_eq!(h.be.seen.tx_max_slots, 16);
    for p in &p {
        h.be.answer_tx(p, NETIF_RSP_OKAY);
    }
    h.be.push_tx();
    h.step();
    assert_eq!(h.nf.tx_in_flight(), 0);
    assert_eq!(h.nf.stats().tx_completed, 15);
    assert!(h.tx_meta(&big(15), Some(1448)));
}

#[test]
fn frames_beyond_the_token_capacity_are_dropped_and_counted() {
    let mut h = H::offload_connected();
    assert!(h.tx_meta(&tcp_frame(1, 32768 - 54 + 1, false), Some(1460)));
    assert!(h.tx(&[0u8; 13]));
    assert!(h.tx_meta(&tcp_frame(2, 32768 - 54, false), Some(1460)));
    let p = h.be.take_tx_packets();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].data.len(), 32768);
    assert_eq!(h.nf.stats().tx_drop_bad_len, 2);
    // A reply token (from receive()) carries at most the MTU.
    assert!(h.be.send_frame(&test_frame(3, 100)));
    h.be.push_rx();
    let ts = h.ts();
    let (rx, tx) = h.nf.receive(ts).unwrap();
    rx.consume(|_| ());
    tx.consume(1515, |_| ());
    assert_eq!(h.nf.stats().tx_drop_bad_len, 3);
}

#[test]
fn offload_datapath_wraps_the_rings() {
    let cfg = Config {
        tx_buffers: 64,
        ring_start: u32::MAX - 300,
        ..Default::default()
    };
    let mut h = H::offload_with(cfg);
    super::datapath::pump(&mut h, 3000);
    let s = h.nf.stats().clone();
    assert_eq!(
        (s.rx_frames, s.tx_frames, s.tx_completed),
        (3000, 3000, 3000)
    );
    assert_eq!(
        s.rx_dropped() + s.tx_dropped() + s.tx_bad_id + s.rsp_prod_overflow,
        0,
        "{s}"
    );
    // Now big packets both ways across the index wrap.
    for i in 0..300u32 {
        let len = [100usize, 5000, 20000, 65535 - 54][i as usize % 4];
        let f = tcp_frame(i, len, true);
        assert!(h
            .be
            .send_packet(&f, Some(1460), NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED));
        h.be.push_rx();
        let got = h.rx_all();
        assert_eq!(got.len(), 1, "rx {i}");
        let t = TcpPacket::new_checked(&got[0][34..]).unwrap();
        assert!(t.verify_partial_checksum(&peer(), &guest()));
        assert_eq!(got[0][54..], f[54..], "rx {i}");
        assert!(h.tx_meta(&tcp_frame(i, len.min(65535 - 54), false), Some(1460)));
        let out = h.be.service_tx();
        assert_eq!(out.len(), (len.div_ceil(1460)).max(1), "tx {i}");
        h.step();
    }
    let s = h.nf.stats();
    assert_eq!(s.rx_gso, 300);
    assert_eq!(s.rx_multi_slot, 225);
    assert_eq!(s.tx_gso_frames, 300);
    assert_eq!(h.nf.tx_in_flight(), 0);
    assert_eq!(h.be.rx_requests_available(), 64);
}

// ------------------------------------------------------------ RX

#[test]
fn gso_packet_over_many_slots_is_reassembled() {
    let mut h = H::offload_connected();
    for len in [65535 + 14 - 54, 60000, 4096 - 54, 4097 - 54, 1] {
        let f = tcp_frame(len as u32, len, true);
        assert!(h
            .be
            .send_packet(&f, Some(1460), NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED));
        h.be.push_rx();
        let got = h.rx_all();
        assert_eq!(got.len(), 1, "len {len}");
        assert_eq!(got[0].len(), f.len());
        assert_eq!(got[0][..50], f[..50]);
        assert_eq!(got[0][52..], f[52..]);
        assert_eq!(h.be.rx_requests_available(), 64, "buffers reposted");
    }
    let s = h.nf.stats();
    assert_eq!((s.rx_frames, s.rx_gso, s.rx_multi_slot), (5, 5, 3));
    assert_eq!(s.rx_dropped(), 0, "{s}");
    // The largest one took 17 data slots and the extra.
    assert_eq!(h.be.seen.rx_multi_slot, 3);
}

#[test]
fn a_packet_published_in_two_pushes_is_delivered_once_complete() {
    let mut h = H::offload_connected();
    let f = tcp_frame(1, 10000, true);
    // First slot, extra: pushed.
    let r = h.be.take_rx_request().unwrap();
    h.be.copy_to_grant(r.gref, 0, &f[..4096]);
    h.be.put_rx_raw(
        RxResponse {
            id: r.id,
            offset: 0,
            flags: NETRXF_MORE_DATA | NETRXF_EXTRA_INFO | NETRXF_DATA_VALIDATED,
            status: 4096,
        }
        .encode(),
    );
    let _ = h.be.take_rx_request().unwrap();
    h.be.put_rx_raw(GsoExtra::tcpv4(1460).encode());
    h.be.push_rx();
    assert!(h.rx_all().is_empty());
    h.step();
    assert!(h.rx_all().is_empty());
    assert_eq!(h.be.rx_requests_available(), 64, "consumed slots reposted");
    // The rest, from an offset (allowed) and in smaller slots, later.
    let rest: Vec<&[u8]> = f[4096..].chunks(3000).collect();
    for (i, c) in rest.iter().enumerate() {
        let r = h.be.take_rx_request().unwrap();
        h.be.copy_to_grant(r.gref, 100, c);
        let last = i + 1 == rest.len();
        h.be.put_rx_raw(
            RxResponse {
                id: r.id,
                offset: 100,
                flags: if last { 0 } else { NETRXF_MORE_DATA },
                status: c.len() as i16,
            }
            .encode(),
        );
    }
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![f]);
    let s = h.nf.stats();
    assert_eq!((s.rx_gso, s.rx_multi_slot, s.rx_dropped()), (1, 1, 0));
}

#[test]
fn checksum_policy_on_receive() {
    let mut h = H::offload_connected();
    let good = tcp_frame(1, 500, true);
    let mut bad = good.clone();
    bad[100] ^= 0x01;
    let mut frag = tcp_frame(2, 500, true);
    frag[20] = 0x20; // more fragments (IP header checksum no longer matters)
    let udp = udp_frame(3, 300, true);
    let mut icmp = good.clone();
    icmp[23] = 1;
    // (frame, flags, delivered as)
    let cases: Vec<(Vec<u8>, u16, Option<Vec<u8>>)> = vec![
        (good.clone(), 0, Some(good.clone())), // verified here
        (bad.clone(), 0, None),                // wrong: dropped
        (bad.clone(), NETRXF_DATA_VALIDATED, Some(bad.clone())), // vouched for
        (frag, 0, None),                       // cannot be verified
        (udp.clone(), NETRXF_CSUM_BLANK, Some(udp.clone())), // completed for smoltcp
    ];
    for (f, flags, _) in &cases {
        assert!(h.be.send_frame_flags(f, *flags));
    }
    // csum_blank TCP through the faithful path (pseudo-header sum in it):
    // delivered as is, smoltcp does not check.
    assert!(h
        .be
        .send_packet(&good, None, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED));
    assert!(h.be.send_frame_flags(&icmp, NETRXF_CSUM_BLANK)); // cannot complete
    h.be.push_rx();
    let got = h.rx_all();
    let want: Vec<Vec<u8>> = cases.iter().filter_map(|c| c.2.clone()).collect();
    assert_eq!(got.len(), want.len() + 1);
    assert_eq!(got[..want.len()], want[..]);
    let udp_got = UdpPacket::new_checked(&got[2][34..]).unwrap();
    assert!(udp_got.verify_checksum(&peer(), &guest()));
    let t = TcpPacket::new_checked(&got[3][34..]).unwrap();
    assert!(t.verify_partial_checksum(&peer(), &guest()));
    let s = h.nf.stats();
    assert_eq!(
        (
            s.rx_csum_verified,
            s.rx_csum_bad,
            s.rx_csum_filled,
            s.rx_drop_csum
        ),
        (1, 2, 1, 1),
        "{s}"
    );
}

#[test]
fn interface_made_before_the_handshake_still_gets_checked_frames() {
    // capabilities() was never read with offload on: smoltcp checks TCP
    // itself, so a csum_blank TCP frame is completed here.
    let mut h = H::connected(BackendSetup::default(), Config::default());
    assert!(h.nf.offload().is_on());
    let f = tcp_frame(1, 3000, true);
    assert!(h
        .be
        .send_packet(&f, None, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![f]);
    assert_eq!(h.nf.stats().rx_csum_filled, 1);
    // And TX tokens carry at most the MTU (smoltcp was not told about TSO).
    assert!(h.tx_meta(&tcp_frame(2, 1460, false), None));
    assert!(h.tx_meta(&tcp_frame(3, 1461, false), None));
    assert_eq!(h.be.take_tx_packets().len(), 1);
    assert_eq!(h.nf.stats().tx_drop_bad_len, 1);
}

// ------------------------------------------------------------ malformed RX

/// Answer the next RX request with a data slot.
fn data_slot(h: &mut H, data: &[u8], offset: u16, flags: u16, status: Option<i16>) {
    let r = h.be.take_rx_request().expect("no rx request");
    if !data.is_empty() && offset as usize + data.len() <= PAGE_SIZE {
        h.be.copy_to_grant(r.gref, offset as usize, data);
    }
    h.be.put_rx_raw(
        RxResponse {
            id: r.id,
            offset,
            flags,
            status: status.unwrap_or(data.len() as i16),
        }
        .encode(),
    );
}

fn extra_slot(h: &mut H, raw: [u8; 8]) {
    let _ = h.be.take_rx_request().expect("no rx request");
    h.be.put_rx_raw(raw);
}

/// A good frame after the bad ones proves the framing recovered.
fn then_good(h: &mut H, seed: u32) {
    let f = tcp_frame(seed, 300, true);
    assert!(h.be.send_packet(&f, None, 0));
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![f], "seed {seed}");
    assert_eq!(h.be.rx_requests_available(), 64, "rx buffers leaked");
    assert!(h.nf.is_connected());
}

#[test]
fn chains_too_long_too_big_or_badly_sized_are_dropped() {
    let mut h = H::offload_connected();
    let d = [0x55u8; 100];
    // 20 data slots (more than 19).
    for i in 0..20 {
        data_slot(
            &mut h,
            &d,
            0,
            if i < 19 { NETRXF_MORE_DATA } else { 0 },
            None,
        );
    }
    h.be.push_rx();
    then_good(&mut h, 1);
    assert_eq!(h.nf.stats().rx_drop_multislot, 1);
    // 17 full pages: 69632 bytes, more than 14 + 65535.
    let page = [0x66u8; 4096];
    for i in 0..17 {
        data_slot(
            &mut h,
            &page,
            0,
            if i < 16 { NETRXF_MORE_DATA } else { 0 },
            None,
        );
    }
    h.be.push_rx();
    then_good(&mut h, 2);
    assert_eq!(h.nf.stats().rx_drop_multislot, 2);
    // A continuation slot running past its page.
    data_slot(&mut h, &d, 0, NETRXF_MORE_DATA, None);
    data_slot(&mut h, &[], 4000, NETRXF_MORE_DATA, Some(200));
    data_slot(&mut h, &d, 0, 0, None);
    h.be.push_rx();
    then_good(&mut h, 3);
    assert_eq!(h.nf.stats().rx_drop_bad_len, 1);
    // An empty first slot (an empty continuation is harmless).
    data_slot(&mut h, &[], 0, NETRXF_MORE_DATA, Some(0));
    data_slot(&mut h, &d, 0, 0, None);
    h.be.push_rx();
    then_good(&mut h, 4);
    assert_eq!(h.nf.stats().rx_drop_bad_len, 2);
    // An error status, and a wrong id, in a continuation slot.
    data_slot(&mut h, &d, 0, NETRXF_MORE_DATA, None);
    data_slot(&mut h, &d, 0, NETRXF_MORE_DATA, Some(NETIF_RSP_ERROR));
    data_slot(&mut h, &d, 0, 0, None);
    let r = h.be.take_rx_request().unwrap();
    h.be.put_rx_raw(
        RxResponse {
            id: r.id,
            offset: 0,
            flags: NETRXF_MORE_DATA,
            status: 60,
        }
        .encode(),
    );
    let r = h.be.take_rx_request().unwrap();
    h.be.put_rx_raw(
        RxResponse {
            id: r.id ^ 1,
            offset: 0,
            flags: 0,
            status: 60,
        }
        .encode(),
    );
    h.be.push_rx();
    then_good(&mut h, 5);
    let s = h.nf.stats();
    assert_eq!((s.rx_drop_error, s.rx_drop_bad_id), (1, 1));
    assert_eq!(s.rx_frames, 5);
}

#[test]
fn extra_info_garbage_is_dropped() {
    let mut h = H::offload_connected();
    let d = [0x77u8; 200];
    let gso = |size: u16, ty: u8, flags: u8| {
        let mut g = GsoExtra::tcpv4(size);
        g.gso_type = ty;
        g.flags = flags;
        g.encode()
    };
    let garbage: Vec<Vec<[u8; 8]>> = vec![
        vec![[0, 0, 1, 2, 3, 4, 5, 6]],   // type 0
        vec![[200, 0, 1, 2, 3, 4, 5, 6]], // unknown type
        vec![gso(0, 1, 0)],               // GSO size 0
        vec![gso(1460, 9, 0)],            // unknown GSO type
        vec![gso(1460, 1, 1); 5],         // five extras (MORE on the first four)
    ];
    for (i, extras) in garbage.iter().enumerate() {
        data_slot(&mut h, &d, 0, NETRXF_EXTRA_INFO | NETRXF_MORE_DATA, None);
        let n = extras.len();
        for (k, e) in extras.iter().enumerate() {
            let mut e = *e;
            if k + 1 == n {
                e[1] &= !XEN_NETIF_EXTRA_FLAG_MORE;
            }
            extra_slot(&mut h, e);
        }
        data_slot(&mut h, &d, 0, 0, None);
        h.be.push_rx();
        then_good(&mut h, 10 + i as u32);
    }
    assert_eq!(h.nf.stats().rx_drop_extra_info, 5);
    // Defined extras we do not use (hash) are skipped, the packet kept.
    let f = tcp_frame(99, 5000, true);
    data_slot(
        &mut h,
        &f[..4096],
        0,
        NETRXF_EXTRA_INFO | NETRXF_MORE_DATA,
        None,
    );
    extra_slot(&mut h, [XEN_NETIF_EXTRA_TYPE_HASH, 1, 3, 1, 9, 9, 9, 9]);
    extra_slot(&mut h, GsoExtra::tcpv4(1460).encode());
    data_slot(&mut h, &f[4096..], 0, 0, None);
    h.be.push_rx();
    assert_eq!(h.rx_all(), vec![f]);
    assert_eq!(h.nf.stats().rx_gso, 1);
}

#[test]
fn a_chain_that_stops_or_never_ends() {
    let mut h = H::offload_connected();
    // The backend publishes a first slot announcing more and then nothing:
    // no frame, no busy loop, the buffer is back in the ring.
    data_slot(&mut h, &[1u8; 100], 0, NETRXF_MORE_DATA, None);
    h.be.push_rx();
    assert!(h.rx_all().is_empty());
    for _ in 0..5 {
        h.step();
    }
    assert_ne!(h.nf.poll_delay(h.now), Some(0));
    assert_eq!(h.be.rx_requests_available(), 64);
    assert!(h.rx_all().is_empty());
    // Then a chain of 600 slots, all announcing more, in ring-sized rounds:
    // one drop, counted once, each round bounded.
    for round in 0..10 {
        for _ in 0..60 {
            data_slot(&mut h, &[2u8; 100], 0, NETRXF_MORE_DATA, None);
        }
        h.be.push_rx();
        assert!(h.rx_all().is_empty(), "round {round}");
        h.step();
        assert!(h.nf.is_connected());
    }
    data_slot(&mut h, &[3u8; 100], 0, 0, None);
    h.be.push_rx();
    assert!(h.rx_all().is_empty());
    let s = h.nf.stats();
    assert_eq!((s.rx_drop_multislot, s.rx_frames), (1, 0));
    then_good(&mut h, 1);
}

#[test]
fn random_garbage_in_offload_mode_never_panics_or_leaks() {
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    let mut h = H::offload_with(Config {
        tx_buffers: 64,
        ..Default::default()
    });
    for round in 0..3000 {
        for _ in 0..rng.next_u64() % 20 {
            match rng.next_u64() % 6 {
                0 => {
                    let s = rng.next_u64() as u32;
                    let len = (rng.next_u64() % 65000) as usize;
                    let f = tcp_frame(s, len, true);
                    let gso = rng.next_u64().is_multiple_of(2).then_some(1460);
                    let _ =
                        h.be.send_packet(&f, gso, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED);
                }
                1 => {
                    // Plausible slots with random flags, offsets and lengths.
                    if let Some(r) = h.be.take_rx_request() {
                        let v = rng.next_u64();
                        let rsp = RxResponse {
                            id: if v.is_multiple_of(7) { v as u16 } else { r.id },
                            offset: (v >> 16) as u16 % 4200,
                            flags: (v >> 32) as u16 & 0x1f,
                            status: ((v >> 48) as i16) % 4200,
                        };
                        h.be.put_rx_raw(rsp.encode());
                    }
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
        for _ in 0..rng.next_u64() % 4 {
            let s = rng.next_u64() as u32;
            let len = (rng.next_u64() % 16000) as usize;
            let _ = h.tx_meta(&tcp_frame(s, len, false), Some(1460));
        }
        // One response per ring slot (as netback), each one possibly wrong:
        // a random id, status or NULL.
        let pkts = h.be.take_tx_packets();
        for p in &pkts {
            let v = rng.next_u64();
            if v.is_multiple_of(3) {
                h.be.answer_tx(p, (v >> 8) as i16 % 3);
                continue;
            }
            let ids: Vec<u16> = std::iter::once(p.first.id)
                .chain(p.extras.iter().map(|_| u16::MAX))
                .chain(p.frags.iter().map(|r| r.id))
                .collect();
            for id in ids {
                let w = rng.next_u64();
                match w % 6 {
                    0 => h.be.put_tx_null(),
                    1 => h.be.put_tx_response(w as u16, NETIF_RSP_OKAY),
                    2 => h.be.put_tx_response(id, (w >> 8) as i16),
                    _ if id == u16::MAX => h.be.put_tx_null(),
                    _ => h.be.put_tx_response(id, NETIF_RSP_OKAY),
                }
            }
        }
        h.be.push_tx();
        h.step();
        assert!(h.nf.is_connected(), "round {round}: {:?}", h.events);
        assert!(h.be.rx_requests_available() <= 64);
    }
    // Flush any half-skipped packet with slots that end it.
    for _ in 0..30 {
        data_slot(&mut h, &[], 0, 0, Some(-1));
    }
    h.be.push_rx();
    let _ = h.rx_all();
    h.step();
    let _ = h.be.service_tx();
    h.step();
    assert_eq!(h.be.rx_requests_available(), 64, "rx buffers leaked");
    assert_eq!(h.nf.tx_in_flight(), 0, "tx buffers leaked");
    then_good(&mut h, 42);
    let s = h.nf.stats();
    assert!(
        s.rx_dropped() > 1000 && s.rx_frames > 1000 && s.rx_gso > 100,
        "{s}"
    );
}
