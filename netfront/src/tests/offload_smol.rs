//! Offload mode end to end through smoltcp (`testing::smoltcp_peer` with an
//! [`OffloadPeer`]): the guest's `Interface` (told about segmentation and
//! checksum offload by the driver's capabilities) runs on the driver; dom0's
//! side sends the way Linux's stack does through netback: large GSO packets
//! with the pseudo-header checksum (`csum_blank`), or checked frames
//! (`data_validated`), or frames with nothing said about them.

use std::vec;
use std::vec::Vec;

use smoltcp::iface::{Config as IfConfig, Interface};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::wire::*;

use super::*;
use crate::testing::smoltcp_peer::{Net, OffloadPeer, PeerCsum, GUEST_ADDR};

/// Both stacks over a driver with `cfg` and a netback delivering GSO
/// packets per `delivery`. `early`: create the guest Interface before the
/// handshake (smoltcp then reads the capabilities of a driver not yet
/// connected).
fn offload_net(
    cfg: Config,
    peer: OffloadPeer,
    delivery: GsoDelivery,
    early: bool,
) -> Net<OffloadPeer> {
    if early {
        let mut h = H::new(BackendSetup::default(), cfg);
        let ts = h.ts();
        let guest = Interface::new(IfConfig::new(EthernetAddress(MAC).into()), &mut h.nf, ts);
        assert!(h.step_until(100, |h| h.nf.is_connected() && h.be.is_connected()));
        h.be.gso_delivery = delivery;
        Net::with_guest(h, guest, peer)
    } else {
        let mut h = H::connected(BackendSetup::default(), cfg);
        h.be.gso_delivery = delivery;
        Net::new(h, peer)
    }
}

fn pattern(i: usize, salt: u8) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11) ^ usize::from(salt)) as u8
}

/// Move `n` bytes each way at once, checking every byte; returns ticks.
fn both_ways(net: &mut Net<OffloadPeer>, n: usize, buf: usize) -> usize {
    let (g, p) = net.connect(buf);
    let (mut g_sent, mut g_got, mut p_sent, mut p_got) = (0usize, 0usize, 0usize, 0usize);
    let mut tmp = vec![0u8; 65536];
    for tick in 0..200_000 {
        if g_got == n && p_got == n {
            return tick;
        }
        {
            let ps = net.peer_sockets.get_mut::<tcp::Socket>(p);
            if ps.can_send() && p_sent < n {
                let chunk: Vec<u8> = (p_sent..n.min(p_sent + 65536))
                    .map(|i| pattern(i, 1))
                    .collect();
                p_sent += ps.send_slice(&chunk).unwrap();
            }
            while ps.can_recv() {
                let k = ps.recv_slice(&mut tmp).unwrap();
                for (j, b) in tmp[..k].iter().enumerate() {
                    assert_eq!(*b, pattern(p_got + j, 2), "guest->peer byte {}", p_got + j);
                }
                p_got += k;
            }
            let gs = net.guest_sockets.get_mut::<tcp::Socket>(g);
            if gs.can_send() && g_sent < n {
                let chunk: Vec<u8> = (g_sent..n.min(g_sent + 65536))
                    .map(|i| pattern(i, 2))
                    .collect();
                g_sent += gs.send_slice(&chunk).unwrap();
            }
            while gs.can_recv() {
                let k = gs.recv_slice(&mut tmp).unwrap();
                for (j, b) in tmp[..k].iter().enumerate() {
                    assert_eq!(*b, pattern(g_got + j, 1), "peer->guest byte {}", g_got + j);
                }
                g_got += k;
            }
        }
        net.tick();
    }
    panic!("transfer stalled: guest got {g_got}, peer got {p_got} of {n}");
}

const MB: usize = 1 << 20;

fn clean(net: &Net<OffloadPeer>) {
    let s = net.h.nf.stats();
    assert_eq!(
        s.rx_dropped() + s.tx_dropped() + s.tx_bad_id + s.tx_bad_status + s.tx_reclaimed,
        0,
        "{s}"
    );
    assert!(net.h.nf.is_connected());
}

#[test]
fn tcp_megabytes_each_way_tso_and_gso_segmented_by_dom0() {
    let peer = OffloadPeer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = offload_net(Config::default(), peer, GsoDelivery::Segment, false);
    let ticks = both_ways(&mut net, 2 * MB, 64 * 1024);
    clean(&net);
    let s = net.h.nf.stats().clone();
    let seen = net.h.be.seen.clone();
    // The guest sent TSO frames, netback segmented them...
    assert!(s.tx_gso_frames > 20, "{s}");
    assert!(
        seen.tx_gso > 20 && seen.tx_segments > 10 * seen.tx_gso,
        "{seen:?}"
    );
    assert!(seen.tx_multi_slot > 0 && seen.tx_max_len > 4096, "{seen:?}");
    // ...and received dom0's large packets in many slots.
    assert!(s.rx_gso > 20 && s.rx_multi_slot > 20, "{s}");
    // Far fewer frames than 1460-byte segments would need.
    assert!(s.tx_frames < (2 * MB / 1460) as u64 / 4, "{s}");
    assert!(s.rx_frames < (2 * MB / 1460) as u64 / 4, "{s}");
    assert_eq!(s.rx_csum_bad, 0);
    assert!(ticks < 20_000, "{ticks} ticks");
}

#[test]
fn tcp_megabytes_each_way_gso_delivered_whole_and_validated() {
    // The peer receives the guest's TSO frames whole (larger than its MTU)
    // and sends checked frames (data_validated): nothing verified in the guest.
    let peer = OffloadPeer {
        tso: true,
        csum: PeerCsum::Validated,
    };
    let mut net = offload_net(Config::default(), peer, GsoDelivery::Intact, false);
    both_ways(&mut net, MB + 12345, 64 * 1024);
    clean(&net);
    let s = net.h.nf.stats();
    assert!(
        s.tx_gso_frames > 10 && s.rx_gso > 10 && s.rx_multi_slot > 10,
        "{s}"
    );
    assert_eq!(net.h.be.seen.tx_segments, 0);
    assert_eq!((s.rx_csum_verified, s.rx_csum_filled), (0, 0), "{s}");
}

#[test]
fn tcp_megabytes_each_way_with_unvouched_frames_checked_by_the_guest() {
    // dom0 says nothing about checksums and does not use GSO: the guest
    // verifies every TCP frame in software; it still sends TSO frames.
    let peer = OffloadPeer {
        tso: false,
        csum: PeerCsum::Plain,
    };
    let mut net = offload_net(Config::default(), peer, GsoDelivery::Segment, false);
    both_ways(&mut net, MB, 32 * 1024);
    clean(&net);
    let s = net.h.nf.stats();
    assert!(s.rx_csum_verified > 500, "{s}");
    assert_eq!((s.rx_gso, s.rx_multi_slot), (0, 0));
    assert!(s.tx_gso_frames > 10, "{s}");
}

#[test]
fn tcp_with_64k_frames_and_256_tx_buffers() {
    let cfg = Config {
        tx_buffers: 256,
        rx_buffers: 128,
        ..Default::default()
    };
    let peer = OffloadPeer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = offload_net(cfg, peer, GsoDelivery::Segment, false);
    both_ways(&mut net, 2 * MB, 256 * 1024);
    clean(&net);
    let seen = &net.h.be.seen;
    assert!(seen.tx_max_len > 60_000, "{seen:?}");
    assert_eq!(seen.tx_max_slots, 16);
}

#[test]
fn interface_created_before_the_handshake_works_without_tso() {
    // smoltcp read the capabilities of a driver that had not negotiated
    // anything: it checksums TCP itself and never sends TSO frames; the
    // driver completes csum_blank TCP from dom0 for it to verify.
    let peer = OffloadPeer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = offload_net(Config::default(), peer, GsoDelivery::Segment, true);
    assert!(net.h.nf.offload().is_on());
    both_ways(&mut net, MB, 64 * 1024);
    clean(&net);
    let s = net.h.nf.stats();
    assert_eq!(s.tx_gso_frames, 0, "{s}");
    assert!(s.rx_csum_filled > 10 && s.rx_gso > 10, "{s}");
    // Its TCP frames still go with csum_blank (the fake checks the sum).
    assert!(net.h.be.seen.tx_csum_blank > 100);
}

#[test]
fn smoltcp_takes_a_tcp_segment_larger_than_the_mtu_at_once() {
    let peer = OffloadPeer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = offload_net(Config::default(), peer, GsoDelivery::Segment, false);
    let (g, p) = net.connect(64 * 1024);
    let data: Vec<u8> = (0..40_000).map(|i| pattern(i, 9)).collect();
    let frames0 = net.h.nf.stats().rx_frames;
    assert_eq!(
        net.peer_sockets
            .get_mut::<tcp::Socket>(p)
            .send_slice(&data)
            .unwrap(),
        40_000
    );
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..20 {
        net.tick();
        let gs = net.guest_sockets.get_mut::<tcp::Socket>(g);
        while gs.can_recv() {
            let k = gs.recv_slice(&mut buf).unwrap();
            got.extend_from_slice(&buf[..k]);
        }
    }
    // Within 20 ms (no retransmission: the RTO is far longer), in one frame.
    assert_eq!(got, data);
    let s = net.h.nf.stats();
    assert_eq!(s.rx_frames - frames0, 1, "{s}");
    assert_eq!((s.rx_gso, s.rx_multi_slot), (1, 1));
}

#[test]
fn ping_and_udp_keep_software_checksums() {
    let peer = OffloadPeer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = offload_net(Config::default(), peer, GsoDelivery::Segment, false);
    // ICMP echo of every size up to the MTU.
    let sock = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 8 * 1600]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 8 * 1600]),
    );
    let hdl = net.peer_sockets.add(sock);
    net.peer_sockets
        .get_mut::<icmp::Socket>(hdl)
        .bind(icmp::Endpoint::Ident(7))
        .unwrap();
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    let (mut sent, mut got) = (0usize, 0usize);
    for _ in 0..20_000 {
        if got == 200 {
            break;
        }
        let s = net.peer_sockets.get_mut::<icmp::Socket>(hdl);
        if sent == got && sent < 200 && s.can_send() {
            let data = vec![sent as u8; [0, 1, 56, 1000, 1472][sent % 5]];
            let repr = Icmpv4Repr::EchoRequest {
                ident: 7,
                seq_no: sent as u16,
                data: &data,
            };
            let b = s
                .send(repr.buffer_len(), IpAddress::Ipv4(GUEST_ADDR))
                .unwrap();
            repr.emit(&mut Icmpv4Packet::new_unchecked(b), &caps);
            sent += 1;
        }
        if let Ok((b, _)) = s.recv() {
            let pkt = Icmpv4Packet::new_checked(b).unwrap();
            assert!(pkt.verify_checksum());
            got += 1;
        }
        net.tick();
    }
    assert_eq!(got, 200);
    // UDP echo (the guest's UDP checksums are smoltcp's).
    let mk = || {
        udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8 * 1600]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8 * 1600]),
        )
    };
    let gu = net.guest_sockets.add(mk());
    let pu = net.peer_sockets.add(mk());
    net.guest_sockets
        .get_mut::<udp::Socket>(gu)
        .bind(7)
        .unwrap();
    net.peer_sockets
        .get_mut::<udp::Socket>(pu)
        .bind(4000)
        .unwrap();
    let mut echoed = 0;
    for i in 0..5000 {
        if echoed == 50 {
            break;
        }
        let ps = net.peer_sockets.get_mut::<udp::Socket>(pu);
        if i % 10 == 0 {
            let d = vec![i as u8; 1 + (i * 7) % 1472];
            ps.send_slice(&d, (IpAddress::Ipv4(GUEST_ADDR), 7)).unwrap();
        }
        if ps.recv().is_ok() {
            echoed += 1;
        }
        let gs = net.guest_sockets.get_mut::<udp::Socket>(gu);
        if let Ok((b, meta)) = gs.recv() {
            let b = b.to_vec();
            gs.send_slice(&b, meta.endpoint).unwrap();
        }
        net.tick();
    }
    assert_eq!(echoed, 50);
    let s = net.h.nf.stats();
    assert_eq!(s.rx_dropped() + s.tx_dropped(), 0, "{s}");
    assert_eq!(s.tx_gso_frames, 0);
}
