//! End to end through smoltcp without offload (`testing::smoltcp_peer`
//! with a [`PlainPeer`]): ICMP, UDP and TCP between the guest's stack on
//! the driver and dom0's on the fake netback.

use std::vec;
use std::vec::Vec;

use smoltcp::iface::SocketHandle;
use smoltcp::phy::{Checksum, ChecksumCapabilities, Medium};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::wire::*;

use super::*;
use crate::testing::smoltcp_peer::{Net, PlainPeer, GUEST_ADDR};

/// Both stacks over a driver connected with offload off.
fn plain_net() -> Net<PlainPeer> {
    Net::new(H::legacy_connected(), PlainPeer::default())
}

#[test]
fn capabilities_are_deliberate() {
    let h = H::legacy_connected();
    let c = h.nf.capabilities();
    assert_eq!(c.medium, Medium::Ethernet);
    assert_eq!(c.max_transmission_unit, 1514);
    assert_eq!(c.ip_mtu(), 1500);
    for ck in [
        c.checksum.ipv4,
        c.checksum.tcp,
        c.checksum.udp,
        c.checksum.icmpv4,
    ] {
        assert!(matches!(ck, Checksum::Both));
    }
}

#[test]
fn ping_of_every_size_comes_back_intact() {
    let mut net = plain_net();
    let sock = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1600]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1600]),
    );
    let hdl: SocketHandle = net.peer_sockets.add(sock);
    net.peer_sockets
        .get_mut::<icmp::Socket>(hdl)
        .bind(icmp::Endpoint::Ident(0x77))
        .unwrap();
    let caps = ChecksumCapabilities::default();
    const TOTAL: usize = 1000;
    // Max ICMP payload at MTU 1500: 1500 - 20 (IP) - 8 (ICMP) = 1472.
    let payload = |i: usize| -> Vec<u8> {
        let len = [0, 1, 56, 100, 1000, 1471, 1472][i % 7];
        (0..len)
            .map(|b| (b as u8) ^ (i as u8) ^ ((b >> 8) as u8))
            .collect()
    };
    let (mut sent, mut replies) = (0usize, 0usize);
    let mut seen = vec![false; TOTAL];
    for _ in 0..50_000 {
        if replies == TOTAL {
            break;
        }
        {
            let s = net.peer_sockets.get_mut::<icmp::Socket>(hdl);
            // A bounded flood: up to 8 echo requests in flight (ping -l 8).
            while sent < TOTAL && sent - replies < 8 && s.can_send() {
                let data = payload(sent);
                let repr = Icmpv4Repr::EchoRequest {
                    ident: 0x77,
                    seq_no: sent as u16,
                    data: &data,
                };
                let buf = s.send(repr.buffer_len(), GUEST_ADDR.into()).unwrap();
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
                sent += 1;
            }
            while let Ok((buf, from)) = s.recv() {
                assert_eq!(from, IpAddress::Ipv4(GUEST_ADDR));
                let pkt = Icmpv4Packet::new_checked(buf).unwrap();
                let Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                } = Icmpv4Repr::parse(&pkt, &caps).unwrap()
                else {
                    panic!("not an echo reply")
                };
                assert_eq!(ident, 0x77);
                let i = seq_no as usize;
                assert!(!seen[i], "duplicate reply {i}");
                assert_eq!(data, &payload(i)[..], "payload of echo {i}");
                seen[i] = true;
                replies += 1;
            }
        }
        net.tick();
    }
    assert_eq!(replies, TOTAL);
    let st = net.h.nf.stats();
    assert_eq!(st.rx_dropped() + st.tx_dropped(), 0, "{st}");
    assert_eq!(net.link.dropped, 0);
    assert!(st.rx_frames >= TOTAL as u64 && st.tx_frames >= TOTAL as u64);
}

#[test]
fn udp_echo_up_to_the_mtu() {
    let mut net = plain_net();
    let mk = || {
        udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1600]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1600]),
        )
    };
    let g = net.guest_sockets.add(mk());
    let p = net.peer_sockets.add(mk());
    net.guest_sockets.get_mut::<udp::Socket>(g).bind(7).unwrap();
    net.peer_sockets
        .get_mut::<udp::Socket>(p)
        .bind(4000)
        .unwrap();
    // Max UDP payload at MTU 1500: 1500 - 20 - 8 = 1472.
    let sizes = [1usize, 2, 100, 512, 1000, 1471, 1472];
    let data = |i: usize| -> Vec<u8> {
        (0..sizes[i % sizes.len()])
            .map(|b| (b * 31 + i) as u8)
            .collect()
    };
    let mut next = 0;
    let mut echoed = 0;
    for _ in 0..20_000 {
        if echoed == 200 {
            break;
        }
        {
            let ps = net.peer_sockets.get_mut::<udp::Socket>(p);
            if next == echoed && next < 200 {
                ps.send_slice(&data(next), (IpAddress::Ipv4(GUEST_ADDR), 7))
                    .unwrap();
                next += 1;
            }
            if let Ok((buf, _)) = ps.recv() {
                assert_eq!(buf, &data(echoed)[..], "datagram {echoed}");
                echoed += 1;
            }
            let gs = net.guest_sockets.get_mut::<udp::Socket>(g);
            if let Ok((buf, meta)) = gs.recv() {
                let b = buf.to_vec();
                gs.send_slice(&b, meta.endpoint).unwrap();
            }
        }
        net.tick();
    }
    assert_eq!(echoed, 200);
}

#[test]
fn tcp_stream_both_ways_byte_for_byte() {
    let mut net = plain_net();
    // No congestion control whatever smoltcp's features (see offload_smol.rs).
    let mk = || {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 32 * 1024]),
            tcp::SocketBuffer::new(vec![0; 32 * 1024]),
        );
        s.set_congestion_control(tcp::CongestionControl::None);
        s
    };
    let g = net.guest_sockets.add(mk());
    let p = net.peer_sockets.add(mk());
    net.guest_sockets
        .get_mut::<tcp::Socket>(g)
        .listen(80)
        .unwrap();
    {
        let cx = net.peer.context();
        net.peer_sockets
            .get_mut::<tcp::Socket>(p)
            .connect(cx, (IpAddress::Ipv4(GUEST_ADDR), 80), 49152)
            .unwrap();
    }
    const N: usize = 300_000;
    let byte = |i: usize| (i.wrapping_mul(7) ^ (i >> 9)) as u8;
    let (mut sent, mut echoed, mut back) = (0usize, 0usize, 0usize);
    let mut buf = vec![0u8; 8192];
    for _ in 0..200_000 {
        if back == N {
            break;
        }
        {
            // Peer sends the pattern...
            let ps = net.peer_sockets.get_mut::<tcp::Socket>(p);
            if ps.can_send() && sent < N {
                let chunk: Vec<u8> = (sent..N.min(sent + 4000)).map(byte).collect();
                sent += ps.send_slice(&chunk).unwrap();
            }
            // ...and checks what comes back.
            if ps.can_recv() {
                let n = ps.recv_slice(&mut buf).unwrap();
                for (k, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, byte(back + k), "byte {}", back + k);
                }
                back += n;
            }
            // Guest echoes (what the proxy does, in one direction).
            let gs = net.guest_sockets.get_mut::<tcp::Socket>(g);
            if gs.can_recv() && gs.can_send() {
                let room = gs.send_capacity() - gs.send_queue();
                let n = gs.recv_slice(&mut buf[..room.min(8192)]).unwrap();
                assert_eq!(gs.send_slice(&buf[..n]).unwrap(), n);
                echoed += n;
            }
        }
        net.tick();
    }
    assert_eq!(back, N, "echoed {echoed}");
    let st = net.h.nf.stats();
    assert_eq!(st.rx_dropped() + st.tx_dropped() + st.tx_bad_id, 0, "{st}");
}
