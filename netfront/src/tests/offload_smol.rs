//! Offload mode end to end through smoltcp: the guest's `Interface` (told
//! about segmentation and checksum offload by the driver's capabilities)
//! runs on the driver; dom0's side is a peer `Interface` on the fake netback
//! that sends the way Linux's stack does through netback: large GSO packets
//! with the pseudo-header checksum (`csum_blank`), or checked frames
//! (`data_validated`), or frames with nothing said about them.

use std::collections::VecDeque;
use std::vec;
use std::vec::Vec;

use core::num::NonZeroUsize;

use smoltcp::iface::{Config as IfConfig, Interface, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::*;

use super::*;
use crate::csum;
use crate::fake::{FakeNetback, GsoDelivery};
use crate::wire::*;

const G_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
const P_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);

/// How dom0's frames reach the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerCsum {
    /// Made in dom0: `csum_blank | data_validated`, pseudo-header sum.
    Partial,
    /// Checked by dom0 or its NIC: `data_validated`, full checksum.
    Validated,
    /// Nothing said: full checksum, the guest checks.
    Plain,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    /// dom0 sends TCP as GSO packets (up to 64 KiB).
    tso: bool,
    csum: PeerCsum,
}

/// Slots netback wants posted before it sends the largest packet.
const RX_NEEDED: u32 = 18;

struct PeerDev<'a> {
    be: &'a mut FakeNetback,
    inbox: VecDeque<Vec<u8>>,
    peer: Peer,
}

struct PeerRx(Vec<u8>);
impl phy::RxToken for PeerRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct PeerTx<'a> {
    be: &'a mut FakeNetback,
    peer: Peer,
    gso: Option<u16>,
}

impl phy::TxToken for PeerTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        let mut flags = 0;
        if csum::ipv4_protocol(&buf) == Some(csum::PROTO_TCP) {
            match self.peer.csum {
                // send_packet puts the pseudo-header sum in.
                PeerCsum::Partial => flags = NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
                PeerCsum::Validated => {
                    csum::fill_ipv4_l4_checksum(&mut buf).unwrap();
                    flags = NETRXF_DATA_VALIDATED;
                }
                PeerCsum::Plain => csum::fill_ipv4_l4_checksum(&mut buf).unwrap(),
            }
        }
        assert!(
            self.be.send_packet(&buf, self.gso, flags),
            "no rx slots although transmit() checked"
        );
        self.be.push_rx();
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.gso = meta.segmentation_offload_size.map(|m| m.get());
    }
}

impl phy::Device for PeerDev<'_> {
    type RxToken<'a>
        = PeerRx
    where
        Self: 'a;
    type TxToken<'a>
        = PeerTx<'a>
    where
        Self: 'a;
    fn receive(&mut self, _: Instant) -> Option<(PeerRx, PeerTx<'_>)> {
        if self.inbox.is_empty() {
            self.inbox.extend(self.be.service_tx());
        }
        // netback queues rather than drops while the guest posts too few
        // RX buffers: so does this peer.
        if self.be.rx_requests_available() < RX_NEEDED {
            return None;
        }
        let f = self.inbox.pop_front()?;
        Some((
            PeerRx(f),
            PeerTx {
                be: self.be,
                peer: self.peer,
                gso: None,
            },
        ))
    }
    fn transmit(&mut self, _: Instant) -> Option<PeerTx<'_>> {
        if self.be.rx_requests_available() < RX_NEEDED {
            return None;
        }
        Some(PeerTx {
            be: self.be,
            peer: self.peer,
            gso: None,
        })
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        if self.peer.tso {
            c.checksum.tcp = Checksum::None;
            c.segmentation.tcpv4 = NonZeroUsize::new(14 + 65535);
        } else if self.peer.csum != PeerCsum::Partial {
            c.checksum.tcp = Checksum::None; // filled by PeerTx
        }
        c
    }
}

struct Net {
    h: H,
    guest: Interface,
    gs: SocketSet<'static>,
    peer: Interface,
    ps: SocketSet<'static>,
    inbox: VecDeque<Vec<u8>>,
    peer_cfg: Peer,
}

impl Net {
    /// `early`: create the guest Interface before the handshake (smoltcp
    /// then reads the capabilities of a driver not yet connected).
    fn new(cfg: Config, peer_cfg: Peer, delivery: GsoDelivery, early: bool) -> Net {
        let (mut h, guest) = if early {
            let mut h = H::new(crate::fake::BackendSetup::default(), cfg);
            let ts = h.ts();
            let guest = Interface::new(IfConfig::new(EthernetAddress(MAC).into()), &mut h.nf, ts);
            assert!(h.step_until(100, |h| h.nf.is_connected() && h.be.is_connected()));
            (h, guest)
        } else {
            let mut h = H::connected(crate::fake::BackendSetup::default(), cfg);
            let ts = h.ts();
            let guest = Interface::new(
                IfConfig::new(EthernetAddress(h.nf.mac()).into()),
                &mut h.nf,
                ts,
            );
            (h, guest)
        };
        let mut guest = guest;
        guest.update_ip_addrs(|a| a.push(IpCidr::new(G_IP.into(), 24)).unwrap());
        h.be.gso_delivery = delivery;
        let ts = h.ts();
        let mut dev = PeerDev {
            be: &mut h.be,
            inbox: VecDeque::new(),
            peer: peer_cfg,
        };
        let mut peer = Interface::new(
            IfConfig::new(EthernetAddress(PEER_MAC).into()),
            &mut dev,
            ts,
        );
        peer.update_ip_addrs(|a| a.push(IpCidr::new(P_IP.into(), 24)).unwrap());
        Net {
            h,
            guest,
            gs: SocketSet::new(vec![]),
            peer,
            ps: SocketSet::new(vec![]),
            inbox: VecDeque::new(),
            peer_cfg,
        }
    }

    fn tick(&mut self) {
        self.h.step();
        let ts = self.h.ts();
        self.guest.poll(ts, &mut self.h.nf, &mut self.gs);
        let mut dev = PeerDev {
            be: &mut self.h.be,
            inbox: core::mem::take(&mut self.inbox),
            peer: self.peer_cfg,
        };
        self.peer.poll(ts, &mut dev, &mut self.ps);
        self.inbox = dev.inbox;
    }

    /// A TCP connection peer -> guest:80 with `buf`-byte socket buffers;
    /// returns (guest socket, peer socket) once established.
    fn connect(
        &mut self,
        buf: usize,
    ) -> (smoltcp::iface::SocketHandle, smoltcp::iface::SocketHandle) {
        // No congestion control, whatever smoltcp's default: the default
        // follows its features, and cargo unifies those across the
        // workspace (the proxy enables `socket-tcp-reno`, whose 2 KiB
        // initial window would take several round trips for what these
        // tests expect in one).
        let mk = || {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; buf]),
                tcp::SocketBuffer::new(vec![0; buf]),
            );
            s.set_congestion_control(tcp::CongestionControl::None);
            s
        };
        let g = self.gs.add(mk());
        let p = self.ps.add(mk());
        self.gs.get_mut::<tcp::Socket>(g).listen(80).unwrap();
        let cx = self.peer.context();
        self.ps
            .get_mut::<tcp::Socket>(p)
            .connect(cx, (IpAddress::Ipv4(G_IP), 80), 49152)
            .unwrap();
        for _ in 0..1000 {
            if self.gs.get::<tcp::Socket>(g).state() == tcp::State::Established
                && self.ps.get::<tcp::Socket>(p).state() == tcp::State::Established
            {
                return (g, p);
            }
            self.tick();
        }
        panic!(
            "no connection: {} / {:?} / {:?}",
            self.h.nf.stats(),
            self.h.be.seen,
            self.gs.get::<tcp::Socket>(g).state()
        );
    }
}

fn pattern(i: usize, salt: u8) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11) ^ usize::from(salt)) as u8
}

/// Move `n` bytes each way at once, checking every byte; returns ticks.
fn both_ways(net: &mut Net, n: usize, buf: usize) -> usize {
    let (g, p) = net.connect(buf);
    let (mut g_sent, mut g_got, mut p_sent, mut p_got) = (0usize, 0usize, 0usize, 0usize);
    let mut tmp = vec![0u8; 65536];
    for tick in 0..200_000 {
        if g_got == n && p_got == n {
            return tick;
        }
        {
            let ps = net.ps.get_mut::<tcp::Socket>(p);
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
            let gs = net.gs.get_mut::<tcp::Socket>(g);
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

fn clean(net: &Net) {
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
    let peer = Peer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = Net::new(Config::default(), peer, GsoDelivery::Segment, false);
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
    let peer = Peer {
        tso: true,
        csum: PeerCsum::Validated,
    };
    let mut net = Net::new(Config::default(), peer, GsoDelivery::Intact, false);
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
    let peer = Peer {
        tso: false,
        csum: PeerCsum::Plain,
    };
    let mut net = Net::new(Config::default(), peer, GsoDelivery::Segment, false);
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
    let peer = Peer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = Net::new(cfg, peer, GsoDelivery::Segment, false);
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
    let peer = Peer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = Net::new(Config::default(), peer, GsoDelivery::Segment, true);
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
    let peer = Peer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = Net::new(Config::default(), peer, GsoDelivery::Segment, false);
    let (g, p) = net.connect(64 * 1024);
    let data: Vec<u8> = (0..40_000).map(|i| pattern(i, 9)).collect();
    let frames0 = net.h.nf.stats().rx_frames;
    assert_eq!(
        net.ps.get_mut::<tcp::Socket>(p).send_slice(&data).unwrap(),
        40_000
    );
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..20 {
        net.tick();
        let gs = net.gs.get_mut::<tcp::Socket>(g);
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
    let peer = Peer {
        tso: true,
        csum: PeerCsum::Partial,
    };
    let mut net = Net::new(Config::default(), peer, GsoDelivery::Segment, false);
    // ICMP echo of every size up to the MTU.
    let sock = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 8 * 1600]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 8 * 1600]),
    );
    let hdl = net.ps.add(sock);
    net.ps
        .get_mut::<icmp::Socket>(hdl)
        .bind(icmp::Endpoint::Ident(7))
        .unwrap();
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    let (mut sent, mut got) = (0usize, 0usize);
    for _ in 0..20_000 {
        if got == 200 {
            break;
        }
        let s = net.ps.get_mut::<icmp::Socket>(hdl);
        if sent == got && sent < 200 && s.can_send() {
            let data = vec![sent as u8; [0, 1, 56, 1000, 1472][sent % 5]];
            let repr = Icmpv4Repr::EchoRequest {
                ident: 7,
                seq_no: sent as u16,
                data: &data,
            };
            let b = s.send(repr.buffer_len(), IpAddress::Ipv4(G_IP)).unwrap();
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
    let gu = net.gs.add(mk());
    let pu = net.ps.add(mk());
    net.gs.get_mut::<udp::Socket>(gu).bind(7).unwrap();
    net.ps.get_mut::<udp::Socket>(pu).bind(4000).unwrap();
    let mut echoed = 0;
    for i in 0..5000 {
        if echoed == 50 {
            break;
        }
        let ps = net.ps.get_mut::<udp::Socket>(pu);
        if i % 10 == 0 {
            let d = vec![i as u8; 1 + (i * 7) % 1472];
            ps.send_slice(&d, (IpAddress::Ipv4(G_IP), 7)).unwrap();
        }
        if ps.recv().is_ok() {
            echoed += 1;
        }
        let gs = net.gs.get_mut::<udp::Socket>(gu);
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
