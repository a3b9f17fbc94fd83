//! A deterministic in-memory network for testing and benchmarking the engine
//! on the host (compiled for the crate's tests and with the `testing` feature
//! only). Its [`Rng`] is the one PRNG of the proxy's tests and tools.
//!
//! [`Net`] is an Ethernet switch with one [`Link`] per port (one-way delay,
//! random extra delay that reorders frames, loss, bandwidth, queue limit), all
//! driven by a seeded PRNG ([`Rng`]) and a virtual clock, so a run is exactly
//! repeatable and a 60 s idle timeout costs nothing. An optional [`Router`]
//! port forwards IPv4 between subnets by host routes, so transparent-mode
//! destinations can live "behind" a gateway; like a Linux neighbour table, a
//! route's MAC is updated by any ARP packet from its address (gratuitous ARP
//! included), and never created by one. [`Host`] is a plain smoltcp
//! endpoint (client or server) running scripted [`Flow`]s whose content is
//! checked byte for byte by the tests.
//!
//! **Offload mode** ([`Net::set_offload`]) makes one port behave like a Xen
//! netfront whose backend does TCP segmentation and checksum offload: its device
//! advertises TSO for frames up to [`TSO_MAX_FRAME`] and leaves TCP checksums
//! to the wire (`Checksum::Rx`); the wire cuts every oversized TCP frame it sends
//! into MSS-sized segments (the size smoltcp puts in `PacketMeta`), with the IP
//! length, ident and checksum, the TCP sequence number, flags and checksum of
//! each, as netback/Linux GSO would, and fills the checksum of the others. In
//! the other direction, consecutive in-order segments of one TCP flow queued
//! for that port are merged into one large frame (like Linux GRO: same ACK,
//! window and options; no SYN/RST/URG; a PSH or FIN ends the merge).

use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;

use crate::engine::Engine;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};

use core::num::NonZeroUsize;
use smoltcp::phy::{Checksum, ChecksumCapabilities, PacketMeta};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpProtocol,
    Ipv4Address, Ipv4Cidr, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
};

/// Largest frame (Ethernet header included) an offload port's device may send
/// or receive: Xen's `XEN_NETIF_MAX_TX_SIZE`.
pub const TSO_MAX_FRAME: usize = 0xFFFF;
/// Ethernet MTU of every port (frame without FCS).
pub const MTU_FRAME: usize = 1514;

/// A small, fast, seeded PRNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `p` (0.0..=1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`: the content of a test stream.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    pattern_rng(seed).fill(&mut v);
    v
}

/// The generator of `pattern(seed, _)`: filling consecutive buffers whose
/// lengths are multiples of 8 from it gives the same bytes, piece by piece.
pub fn pattern_rng(seed: u64) -> Rng {
    Rng::new(seed ^ 0xA5A5_5A5A_1234_5678)
}

/// The link between one switch port and its device, used in both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra random delay, uniform in `0..=jitter`; frames may overtake each other.
    pub jitter: Duration,
    /// Probability that a frame is lost on this link.
    pub loss: f64,
    /// Bytes per second; 0 = unlimited.
    pub bandwidth: u64,
    /// Frames queued for serialization beyond which new ones are dropped.
    pub queue_limit: usize,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            bandwidth: 0,
            queue_limit: 1000,
        }
    }
}

impl Link {
    pub fn delay_ms(ms: u64) -> Link {
        Link {
            delay: Duration::from_millis(ms),
            ..Link::default()
        }
    }
}

#[derive(Debug, Default)]
struct Port {
    link: Link,
    rx: VecDeque<Vec<u8>>,
    /// When the uplink/downlink finish serializing what they carry.
    up_busy: u64,
    down_busy: u64,
    /// Segmentation and checksum offload (see the module docs).
    offload: bool,
    stats: PortStats,
}

/// Counters of the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub overflowed: u64,
    /// Frames larger than the MTU that no offload could carry (dropped).
    pub oversize: u64,
    /// Frames the offload produced whose checksums did not verify (a bug of
    /// the simulator; dropped).
    pub bad_checksum: u64,
}

/// Offload counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames the port's device handed over.
    pub tx_frames: u64,
    /// Of those, frames larger than the MTU, cut into segments by the wire.
    pub tso_frames: u64,
    /// Segments made from them.
    pub tso_segments: u64,
    /// Payload bytes in them.
    pub tso_bytes: u64,
    /// The largest frame the device handed over.
    pub largest_tx: usize,
    /// Segments merged into the frame before them on the way to the device.
    pub gro_merged: u64,
    /// The largest frame delivered to the device.
    pub largest_rx: usize,
}

type InFlight = (u64, u64, usize, Vec<u8>);

/// A simple IPv4 router attached to one switch port.
#[derive(Debug)]
pub struct Router {
    port: usize,
    mac: EthernetAddress,
    ips: Vec<Ipv4Address>,
    hosts: Vec<(Ipv4Address, EthernetAddress)>,
}

/// A minimal DHCP server attached to one switch port: offers and acknowledges
/// one address per client MAC from a range.
#[derive(Debug)]
pub struct DhcpServer {
    port: usize,
    mac: EthernetAddress,
    ip: Ipv4Address,
    next: u32,
    prefix_len: u8,
    router: Option<Ipv4Address>,
    lease_secs: u32,
    leases: Vec<(EthernetAddress, Ipv4Address)>,
    /// When false the server ignores everything (to test lease loss).
    pub enabled: bool,
    /// DHCP messages answered.
    pub answered: u32,
}

/// An Ethernet switch with per-port links and an optional router. See the module docs.
#[derive(Debug)]
pub struct Net {
    now: u64,
    seq: u64,
    ports: Vec<Port>,
    fdb: Vec<(EthernetAddress, usize)>,
    /// (arrival time, sequence, destination port, frame), earliest first.
    in_flight: BinaryHeap<Reverse<InFlight>>,
    router: Option<Router>,
    pub dhcp: Option<DhcpServer>,
    rng: Rng,
    pub stats: NetStats,
    /// Largest RX queue a port may have before frames are dropped.
    pub rx_limit: usize,
    /// Record every frame sent in `captured`, with its time and source port.
    pub capture: bool,
    pub captured: Vec<(Instant, usize, Vec<u8>)>,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        Net {
            now: 0,
            seq: 0,
            ports: Vec::new(),
            fdb: Vec::new(),
            in_flight: BinaryHeap::new(),
            router: None,
            dhcp: None,
            rng: Rng::new(seed),
            stats: NetStats::default(),
            rx_limit: 4096,
            capture: false,
            captured: Vec::new(),
        }
    }

    /// Add a port with this link; returns its index.
    pub fn add_port(&mut self, link: Link) -> usize {
        self.ports.push(Port {
            link,
            ..Port::default()
        });
        self.ports.len() - 1
    }

    pub fn set_link(&mut self, port: usize, link: Link) {
        self.ports[port].link = link;
    }

    /// Give a port segmentation and checksum offload (see the module docs).
    /// Set it before an interface is made on the port: smoltcp reads the
    /// capabilities once.
    pub fn set_offload(&mut self, port: usize, on: bool) {
        self.ports[port].offload = on;
    }

    /// The offload counters of a port.
    pub fn port_stats(&self, port: usize) -> PortStats {
        self.ports[port].stats
    }

    /// Attach a router on a new port with this link; it answers ARP for `ips`.
    pub fn add_router(&mut self, mac: EthernetAddress, ips: &[Ipv4Address], link: Link) -> usize {
        let port = self.add_port(link);
        self.fdb.push((mac, port));
        self.router = Some(Router {
            port,
            mac,
            ips: ips.to_vec(),
            hosts: Vec::new(),
        });
        port
    }

    /// Attach a DHCP server at `ip` handing out addresses from `first` upwards,
    /// with this prefix length, router and lease time.
    #[allow(clippy::too_many_arguments)]
    pub fn add_dhcp_server(
        &mut self,
        mac: EthernetAddress,
        ip: Ipv4Address,
        first: Ipv4Address,
        prefix_len: u8,
        router: Option<Ipv4Address>,
        lease_secs: u32,
        link: Link,
    ) -> usize {
        let port = self.add_port(link);
        self.fdb.push((mac, port));
        self.dhcp = Some(DhcpServer {
            port,
            mac,
            ip,
            next: u32::from(first),
            prefix_len,
            router,
            lease_secs,
            leases: Vec::new(),
            enabled: true,
            answered: 0,
        });
        port
    }

    /// Tell the router where `ip` lives.
    pub fn route_host(&mut self, ip: Ipv4Address, mac: EthernetAddress) {
        if let Some(r) = &mut self.router {
            r.hosts.push((ip, mac));
        }
    }

    /// The MAC the router sends `ip`'s packets to, if it has a route.
    pub fn router_neighbor(&self, ip: Ipv4Address) -> Option<EthernetAddress> {
        let r = self.router.as_ref()?;
        r.hosts.iter().find(|(a, _)| *a == ip).map(|(_, m)| *m)
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(self.now as i64)
    }

    /// The device of one port.
    pub fn port(&mut self, port: usize) -> PortDevice<'_> {
        PortDevice { net: self, port }
    }

    /// Whether a port has frames waiting to be received.
    pub fn has_rx(&self, port: usize) -> bool {
        !self.ports[port].rx.is_empty()
    }

    /// Whether any port has frames waiting.
    pub fn any_rx(&self) -> bool {
        self.ports.iter().any(|p| !p.rx.is_empty())
    }

    /// When the next frame in flight arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight
            .peek()
            .map(|Reverse((t, ..))| Instant::from_micros(*t as i64))
    }

    /// Set the clock and deliver every frame due by then (routing what reaches the router).
    pub fn advance(&mut self, now: Instant) {
        let now = now.total_micros().max(0) as u64;
        if now > self.now {
            self.now = now;
        }
        loop {
            match self.in_flight.peek() {
                Some(Reverse((t, ..))) if *t <= self.now => {}
                _ => break,
            }
            let Some(Reverse((_, _, dst, frame))) = self.in_flight.pop() else {
                break;
            };
            if self.router.as_ref().is_some_and(|r| r.port == dst) {
                self.route(frame);
            } else if self.dhcp.as_ref().is_some_and(|d| d.port == dst) {
                self.serve_dhcp(&frame);
            } else if self.ports[dst].offload && self.gro_merge(dst, &frame) {
                self.stats.delivered += 1;
            } else if self.ports[dst].rx.len() >= self.rx_limit {
                self.stats.overflowed += 1;
            } else {
                self.stats.delivered += 1;
                let p = &mut self.ports[dst];
                p.stats.largest_rx = p.stats.largest_rx.max(frame.len());
                p.rx.push_back(frame);
            }
        }
    }

    fn delay_of(&mut self, link: &Link) -> u64 {
        let j = link.jitter.total_micros();
        link.delay.total_micros() + if j > 0 { self.rng.below(j + 1) } else { 0 }
    }

    /// A frame leaves `src`'s device.
    fn send(&mut self, src: usize, frame: Vec<u8>) {
        self.stats.sent += 1;
        if self.capture {
            self.captured.push((self.now(), src, frame.clone()));
        }
        if frame.len() > MTU_FRAME {
            self.stats.oversize += 1;
            return;
        }
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            return;
        };
        let (dst_mac, src_mac) = (eth.dst_addr(), eth.src_addr());
        if src_mac.is_unicast() && !self.fdb.iter().any(|(m, _)| *m == src_mac) {
            self.fdb.push((src_mac, src));
        }
        let dsts: Vec<usize> = match self.fdb.iter().find(|(m, _)| *m == dst_mac) {
            Some((_, p)) if dst_mac.is_unicast() => vec![*p],
            _ => (0..self.ports.len()).filter(|p| *p != src).collect(),
        };
        let len = frame.len() as u64;
        // Uplink: loss, serialization, queue limit, delay.
        let up = self.ports[src].link;
        if self.rng.chance(up.loss) {
            self.stats.lost += 1;
            return;
        }
        let mut t = self.now;
        if let Some(ser) = (len * 1_000_000).checked_div(up.bandwidth) {
            let start = self.ports[src].up_busy.max(t);
            if (start - t) > ser * up.queue_limit as u64 {
                self.stats.overflowed += 1;
                return;
            }
            self.ports[src].up_busy = start + ser;
            t = start + ser;
        }
        t += self.delay_of(&up);
        for d in dsts {
            let down = self.ports[d].link;
            if self.rng.chance(down.loss) {
                self.stats.lost += 1;
                continue;
            }
            let mut td = t;
            if let Some(ser) = (len * 1_000_000).checked_div(down.bandwidth) {
                let start = self.ports[d].down_busy.max(td);
                if (start - td) > ser * down.queue_limit as u64 {
                    self.stats.overflowed += 1;
                    continue;
                }
                self.ports[d].down_busy = start + ser;
                td = start + ser;
            }
            td += self.delay_of(&down);
            self.seq += 1;
            self.in_flight
                .push(Reverse((td, self.seq, d, frame.clone())));
        }
    }

    /// A frame leaves an offload port's device: cut it into segments if smoltcp
    /// asked for it, fill TCP checksums, then send.
    fn offload_tx(&mut self, src: usize, mut frame: Vec<u8>, meta: PacketMeta) {
        let st = &mut self.ports[src].stats;
        st.tx_frames += 1;
        st.largest_tx = st.largest_tx.max(frame.len());
        let Some((ihl, thl)) = ipv4_tcp_headers(&frame) else {
            // Not IPv4/TCP: smoltcp computed every checksum itself.
            return self.send(src, frame);
        };
        let mss = meta.segmentation_offload_size.map(|m| usize::from(m.get()));
        let hdr = 14 + ihl + thl;
        let payload_len = frame.len() - hdr;
        match mss {
            Some(mss) if payload_len > mss => {
                let st = &mut self.ports[src].stats;
                st.tso_frames += 1;
                st.tso_bytes += payload_len as u64;
                let n = payload_len.div_ceil(mss);
                st.tso_segments += n as u64;
                let (seq, ident, fin, psh) = {
                    let ip = Ipv4Packet::new_unchecked(&frame[14..]);
                    let tcp = TcpPacket::new_unchecked(&frame[14 + ihl..]);
                    (tcp.seq_number(), ip.ident(), tcp.fin(), tcp.psh())
                };
                for k in 0..n {
                    let (a, b) = (hdr + k * mss, (hdr + (k + 1) * mss).min(frame.len()));
                    let mut seg = Vec::with_capacity(hdr + b - a);
                    seg.extend_from_slice(&frame[..hdr]);
                    seg.extend_from_slice(&frame[a..b]);
                    let last = k + 1 == n;
                    {
                        let mut ip = Ipv4Packet::new_unchecked(&mut seg[14..]);
                        ip.set_total_len((ihl + thl + b - a) as u16);
                        ip.set_ident(ident.wrapping_add(k as u16));
                        ip.fill_checksum();
                    }
                    {
                        let mut tcp = TcpPacket::new_unchecked(&mut seg[14 + ihl..]);
                        tcp.set_seq_number(seq + k * mss);
                        tcp.set_fin(fin && last);
                        tcp.set_psh(psh && last);
                    }
                    fill_tcp_checksum(&mut seg, ihl);
                    self.send_checked(src, seg);
                }
            }
            _ if frame.len() > MTU_FRAME => {
                self.stats.oversize += 1;
            }
            _ => {
                fill_tcp_checksum(&mut frame, ihl);
                self.send_checked(src, frame);
            }
        }
    }

    /// Send a frame the offload made, after checking its checksums the way a
    /// receiving stack would.
    fn send_checked(&mut self, src: usize, frame: Vec<u8>) {
        if checksums_ok(&frame) {
            self.send(src, frame);
        } else {
            self.stats.bad_checksum += 1;
        }
    }

    /// Merge `frame` into the last frame queued for offload port `dst` if it
    /// continues the same TCP flow. Returns whether it did.
    fn gro_merge(&mut self, dst: usize, frame: &[u8]) -> bool {
        let port = &mut self.ports[dst];
        let Some(prev) = port.rx.back_mut() else {
            return false;
        };
        let (Some((ihl, thl)), Some((pihl, pthl))) =
            (ipv4_tcp_headers(frame), ipv4_tcp_headers(prev))
        else {
            return false;
        };
        let (hdr, phdr) = (14 + ihl + thl, 14 + pihl + pthl);
        if ihl != 20 || pihl != 20 || thl != pthl || frame.len() == hdr || prev.len() == phdr {
            return false;
        }
        if prev.len() + frame.len() - hdr > TSO_MAX_FRAME || frame[..14] != prev[..14] {
            return false;
        }
        {
            let (ip, pip) = (
                Ipv4Packet::new_unchecked(&frame[14..]),
                Ipv4Packet::new_unchecked(&prev[14..]),
            );
            if ip.src_addr() != pip.src_addr() || ip.dst_addr() != pip.dst_addr() {
                return false;
            }
            let (t, pt) = (
                TcpPacket::new_unchecked(&frame[14 + ihl..]),
                TcpPacket::new_unchecked(&prev[14 + pihl..]),
            );
            let plen = prev.len() - phdr;
            if t.src_port() != pt.src_port()
                || t.dst_port() != pt.dst_port()
                || t.seq_number() != pt.seq_number() + plen
                || t.ack_number() != pt.ack_number()
                || t.window_len() != pt.window_len()
                || !t.ack()
                || !pt.ack()
                || t.syn()
                || t.rst()
                || t.urg()
                || pt.syn()
                || pt.rst()
                || pt.urg()
                || pt.psh()
                || pt.fin()
                || frame[14 + ihl + 20..hdr] != prev[14 + pihl + 20..phdr]
            {
                return false;
            }
        }
        let (fin, psh) = {
            let t = TcpPacket::new_unchecked(&frame[14 + ihl..]);
            (t.fin(), t.psh())
        };
        prev.extend_from_slice(&frame[hdr..]);
        let total = prev.len() - 14;
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut prev[14..]);
            ip.set_total_len(total as u16);
            ip.fill_checksum();
            let mut t = TcpPacket::new_unchecked(&mut prev[14 + pihl..]);
            t.set_fin(fin);
            t.set_psh(psh);
        }
        fill_tcp_checksum(prev, pihl);
        port.stats.gro_merged += 1;
        port.stats.largest_rx = port.stats.largest_rx.max(prev.len());
        if !checksums_ok(prev) {
            self.stats.bad_checksum += 1;
        }
        true
    }

    /// The DHCP server handles a frame that reached its port.
    fn serve_dhcp(&mut self, frame: &[u8]) {
        let caps = ChecksumCapabilities::default();
        let Some(d) = &mut self.dhcp else { return };
        if !d.enabled {
            return;
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return;
        };
        let Ok(ip_repr) = Ipv4Repr::parse(&ip, &caps) else {
            return;
        };
        if ip_repr.next_header != IpProtocol::Udp {
            return;
        }
        let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
            return;
        };
        if udp.dst_port() != 67 {
            return;
        }
        let Ok(pkt) = DhcpPacket::new_checked(udp.payload()) else {
            return;
        };
        let Ok(req) = DhcpRepr::parse(&pkt) else {
            return;
        };
        let client = req.client_hardware_address;
        let addr = match d.leases.iter().find(|(m, _)| *m == client) {
            Some((_, a)) => *a,
            None => {
                let a = Ipv4Address::from(d.next);
                d.next += 1;
                d.leases.push((client, a));
                a
            }
        };
        let message_type = match req.message_type {
            DhcpMessageType::Discover => DhcpMessageType::Offer,
            DhcpMessageType::Request => DhcpMessageType::Ack,
            _ => return,
        };
        d.answered += 1;
        let mask = Ipv4Cidr::new(addr, d.prefix_len).netmask();
        let reply = DhcpRepr {
            message_type,
            transaction_id: req.transaction_id,
            secs: 0,
            client_hardware_address: client,
            client_ip: Ipv4Address::UNSPECIFIED,
            your_ip: addr,
            server_ip: d.ip,
            router: d.router,
            subnet_mask: Some(mask),
            relay_agent_ip: Ipv4Address::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(d.ip),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: Some(d.lease_secs),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let dhcp_len = reply.buffer_len();
        let udp_repr = UdpRepr {
            src_port: 67,
            dst_port: 68,
        };
        let ip_out = Ipv4Repr {
            src_addr: d.ip,
            dst_addr: Ipv4Address::BROADCAST,
            next_header: IpProtocol::Udp,
            payload_len: 8 + dhcp_len,
            hop_limit: 64,
        };
        let mut out = vec![0u8; 14 + ip_out.buffer_len() + 8 + dhcp_len];
        let mut f = EthernetFrame::new_unchecked(&mut out[..]);
        f.set_src_addr(d.mac);
        f.set_dst_addr(EthernetAddress::BROADCAST);
        f.set_ethertype(EthernetProtocol::Ipv4);
        let mut ipp = Ipv4Packet::new_unchecked(f.payload_mut());
        ip_out.emit(&mut ipp, &caps);
        let mut udpp = UdpPacket::new_unchecked(ipp.payload_mut());
        udp_repr.emit(
            &mut udpp,
            &IpAddress::Ipv4(ip_out.src_addr),
            &IpAddress::Ipv4(ip_out.dst_addr),
            dhcp_len,
            |buf| {
                let _ = reply.emit(&mut DhcpPacket::new_unchecked(buf));
            },
            &caps,
        );
        let port = d.port;
        self.send(port, out);
    }

    /// The router handles a frame that reached its port.
    fn route(&mut self, mut frame: Vec<u8>) {
        let Some(r) = &mut self.router else { return };
        let (rport, rmac) = (r.port, r.mac);
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let Ok(pkt) = ArpPacket::new_checked(eth.payload()) else {
                    return;
                };
                // Linux's arp_process: an existing entry for the sender takes
                // its MAC from any request or reply, gratuitous ones included.
                if let Ok(ArpRepr::EthernetIpv4 {
                    source_hardware_addr,
                    source_protocol_addr,
                    ..
                }) = ArpRepr::parse(&pkt)
                {
                    for (ip, mac) in r.hosts.iter_mut() {
                        if *ip == source_protocol_addr && source_hardware_addr.is_unicast() {
                            *mac = source_hardware_addr;
                        }
                    }
                }
                let Ok(ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                }) = ArpRepr::parse(&pkt)
                else {
                    return;
                };
                if !r.ips.contains(&target_protocol_addr) {
                    return;
                }
                let reply = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr: rmac,
                    source_protocol_addr: target_protocol_addr,
                    target_hardware_addr: source_hardware_addr,
                    target_protocol_addr: source_protocol_addr,
                };
                let mut out = vec![0u8; 14 + reply.buffer_len()];
                let mut f = EthernetFrame::new_unchecked(&mut out[..]);
                f.set_src_addr(rmac);
                f.set_dst_addr(source_hardware_addr);
                f.set_ethertype(EthernetProtocol::Arp);
                reply.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
                self.send(rport, out);
            }
            EthernetProtocol::Ipv4 if eth.dst_addr() == rmac => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    return;
                };
                let dst = ip.dst_addr();
                let Some((_, mac)) = r.hosts.iter().find(|(a, _)| *a == dst) else {
                    return; // no route: dropped (the destination is unreachable)
                };
                let mac = *mac;
                let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
                f.set_src_addr(rmac);
                f.set_dst_addr(mac);
                self.send(rport, frame);
            }
            _ => {}
        }
    }
}

/// The smoltcp device of one switch port.
pub struct PortDevice<'n> {
    net: &'n mut Net,
    port: usize,
}

pub struct SimRx(Vec<u8>);
pub struct SimTx<'n> {
    net: &'n mut Net,
    port: usize,
    meta: PacketMeta,
}

impl RxToken for SimRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for SimTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        if self.net.ports[self.port].offload {
            self.net.offload_tx(self.port, buf, self.meta);
        } else {
            let st = &mut self.net.ports[self.port].stats;
            st.tx_frames += 1;
            st.largest_tx = st.largest_tx.max(buf.len());
            self.net.send(self.port, buf);
        }
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.meta = meta;
    }
}

impl Device for PortDevice<'_> {
    type RxToken<'a>
        = SimRx
    where
        Self: 'a;
    type TxToken<'a>
        = SimTx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _t: Instant) -> Option<(SimRx, SimTx<'_>)> {
        let frame = self.net.ports[self.port].rx.pop_front()?;
        Some((
            SimRx(frame),
            SimTx {
                net: self.net,
                port: self.port,
                meta: PacketMeta::default(),
            },
        ))
    }

    fn transmit(&mut self, _t: Instant) -> Option<SimTx<'_>> {
        Some(SimTx {
            net: self.net,
            port: self.port,
            meta: PacketMeta::default(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU_FRAME;
        if self.net.ports[self.port].offload {
            // TSO needs TX checksum offload; received checksums are still verified.
            caps.checksum.tcp = Checksum::Rx;
            caps.segmentation.tcpv4 = NonZeroUsize::new(TSO_MAX_FRAME);
        }
        caps
    }
}

/// IPv4 and TCP header lengths of an Ethernet/IPv4/TCP frame (not a fragment).
fn ipv4_tcp_headers(frame: &[u8]) -> Option<(usize, usize)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp
        || ip.more_frags()
        || ip.frag_offset() != 0
        || usize::from(ip.total_len()) != frame.len() - 14
    {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((ip.header_len().into(), tcp.header_len().into()))
}

/// Compute the TCP checksum of an Ethernet/IPv4/TCP frame in place.
fn fill_tcp_checksum(frame: &mut [u8], ihl: usize) {
    let (src, dst) = {
        let ip = Ipv4Packet::new_unchecked(&frame[14..]);
        (ip.src_addr(), ip.dst_addr())
    };
    let mut tcp = TcpPacket::new_unchecked(&mut frame[14 + ihl..]);
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
}

/// Whether an Ethernet/IPv4/TCP frame's IP and TCP checksums verify.
fn checksums_ok(frame: &[u8]) -> bool {
    let caps = ChecksumCapabilities::default();
    let Ok(ip) = Ipv4Packet::new_checked(&frame[14..]) else {
        return false;
    };
    let Ok(repr) = Ipv4Repr::parse(&ip, &caps) else {
        return false;
    };
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return false;
    };
    TcpRepr::parse(
        &tcp,
        &IpAddress::Ipv4(repr.src_addr),
        &IpAddress::Ipv4(repr.dst_addr),
        &caps,
    )
    .is_ok()
}

/// A MAC address for test node `n`.
pub fn mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0, 0, 0, 0, n])
}

/// What a stream end does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Never close.
    Never,
    /// Close (FIN) once everything was sent.
    AfterSend,
    /// Close once everything was sent and the peer's FIN was received.
    AfterPeerFin,
    /// Abort (RST) once this many bytes were received.
    AbortAfterRecv(usize),
    /// Abort (RST) once this many bytes were sent.
    AbortAfterSend(usize),
}

/// One TCP connection of a [`Host`], with a script and what it saw.
#[derive(Debug)]
pub struct Flow {
    pub handle: SocketHandle,
    /// What to send.
    pub data: Vec<u8>,
    pub sent: usize,
    /// Echo what is received instead of sending `data`.
    pub echo: bool,
    pub close: Close,
    /// Everything received, or only its length when `keep` is false.
    pub received: Vec<u8>,
    pub received_len: usize,
    pub keep: bool,
    /// Saw the peer's FIN.
    pub fin: bool,
    /// The connection was reset (or never established).
    pub reset: bool,
    pub established: bool,
    pub closed_by_us: bool,
    pub aborted_by_us: bool,
    /// The socket is finished with (closed, TIME-WAIT or reset).
    pub done: bool,
    /// When the flow started, was established, and finished.
    pub t_start: Instant,
    pub t_established: Option<Instant>,
    pub t_done: Option<Instant>,
    pub t_first_byte: Option<Instant>,
    /// When the peer's FIN was seen, and how much had been sent by then.
    pub t_fin: Option<Instant>,
    pub sent_at_fin: usize,
    reclaimed: bool,
}

impl Flow {
    fn new(handle: SocketHandle, data: Vec<u8>, echo: bool, close: Close, now: Instant) -> Flow {
        Flow {
            handle,
            data,
            sent: 0,
            echo,
            close,
            received: Vec::new(),
            received_len: 0,
            keep: true,
            fin: false,
            reset: false,
            established: false,
            closed_by_us: false,
            aborted_by_us: false,
            done: false,
            t_start: now,
            t_established: None,
            t_done: None,
            t_first_byte: None,
            t_fin: None,
            sent_at_fin: 0,
            reclaimed: false,
        }
    }
}

/// What a listening [`Host`] does with each accepted connection.
#[derive(Debug, Clone)]
pub enum Serve {
    /// Echo everything; close after the peer's FIN.
    Echo,
    /// Read and keep everything; close after the peer's FIN.
    Sink,
    /// Send this many bytes of `pattern(seed)` and close; keep what is received.
    Source { len: usize, seed: u64 },
    /// Read; after the peer's FIN send `len` bytes of `pattern(seed)` and close.
    RespondAfterFin { len: usize, seed: u64 },
    /// Read, and abort after this many bytes.
    AbortAfter(usize),
    /// Accept and do nothing (for idle tests).
    Silent,
}

/// A smoltcp endpoint on the simulated network.
pub struct Host {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub port: usize,
    pub flows: Vec<Flow>,
    listeners: Vec<SocketHandle>,
    listen_port: u16,
    serve: Option<Serve>,
    buf: usize,
    next_port: u16,
    /// Keep received bytes (false for large benchmarks: only count them).
    pub keep: bool,
    /// Connections accepted by a listening host.
    pub accepted: usize,
}

impl Host {
    /// A host on `port` of `net` with address `ip` and optional gateway.
    pub fn new(
        net: &mut Net,
        port: usize,
        n: u8,
        ip: Ipv4Cidr,
        gw: Option<Ipv4Address>,
        buf: usize,
    ) -> Host {
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(mac(n)));
        cfg.random_seed = 0x1000 + n as u64;
        let now = net.now();
        let mut iface = Interface::new(cfg, &mut net.port(port), now);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::Ipv4(ip));
        });
        if let Some(g) = gw {
            let _ = iface.routes_mut().add_default_ipv4_route(g);
        }
        Host {
            iface,
            sockets: SocketSet::new(Vec::new()),
            port,
            flows: Vec::new(),
            listeners: Vec::new(),
            listen_port: 0,
            serve: None,
            buf,
            next_port: 40000,
            keep: true,
            accepted: 0,
        }
    }

    pub fn mac(&self) -> EthernetAddress {
        match self.iface.hardware_addr() {
            HardwareAddress::Ethernet(m) => m,
            #[allow(unreachable_patterns)]
            _ => EthernetAddress([0; 6]),
        }
    }

    fn new_socket(&mut self) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.buf]),
            tcp::SocketBuffer::new(vec![0; self.buf]),
        );
        self.sockets.add(s)
    }

    /// Serve `port` with `backlog` listening sockets, each accepted connection as `serve`.
    pub fn listen(&mut self, port: u16, backlog: usize, serve: Serve) {
        self.listen_port = port;
        self.serve = Some(serve);
        for _ in 0..backlog {
            let h = self.new_socket();
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            s.set_ack_delay(None);
            let _ = s.listen(port);
            self.listeners.push(h);
        }
    }

    /// Open a connection to `to`, sending `data` (or echoing), with a close script.
    /// Returns the flow index.
    pub fn connect(
        &mut self,
        to: (Ipv4Address, u16),
        data: Vec<u8>,
        close: Close,
        now: Instant,
    ) -> usize {
        let h = self.new_socket();
        let port = self.next_port;
        self.next_port = if self.next_port >= 65000 {
            40000
        } else {
            self.next_port + 1
        };
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        s.set_ack_delay(None);
        let r = s.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::Ipv4(to.0), to.1),
            port,
        );
        let mut f = Flow::new(h, data, false, close, now);
        f.keep = self.keep;
        if r.is_err() {
            f.reset = true;
            f.done = true;
        }
        self.flows.push(f);
        self.flows.len() - 1
    }

    /// Poll the interface and run every flow until nothing more happens now.
    pub fn poll(&mut self, net: &mut Net) -> bool {
        let now = net.now();
        let mut any = false;
        for _ in 0..64 {
            self.iface
                .poll(now, &mut net.port(self.port), &mut self.sockets);
            let worked = self.step(now);
            any |= worked;
            if !worked {
                break;
            }
        }
        any
    }

    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }

    fn accept(&mut self, now: Instant) -> bool {
        let mut any = false;
        let Some(serve) = self.serve.clone() else {
            return false;
        };
        for i in 0..self.listeners.len() {
            let h = self.listeners[i];
            if self.sockets.get::<tcp::Socket>(h).state() == State::Listen {
                continue;
            }
            any = true;
            self.accepted += 1;
            let (data, echo, close) = match serve {
                Serve::Echo => (Vec::new(), true, Close::AfterPeerFin),
                Serve::Sink => (Vec::new(), false, Close::AfterPeerFin),
                Serve::Source { len, seed } => (pattern(seed, len), false, Close::AfterSend),
                Serve::RespondAfterFin { .. } => (Vec::new(), false, Close::AfterPeerFin),
                Serve::AbortAfter(n) => (Vec::new(), false, Close::AbortAfterRecv(n)),
                Serve::Silent => (Vec::new(), false, Close::Never),
            };
            let mut f = Flow::new(h, data, echo, close, now);
            f.keep = self.keep;
            self.flows.push(f);
            // Replace the listener.
            let nh = self.new_socket();
            let s = self.sockets.get_mut::<tcp::Socket>(nh);
            s.set_ack_delay(None);
            let _ = s.listen(self.listen_port);
            self.listeners[i] = nh;
        }
        any
    }

    fn step(&mut self, now: Instant) -> bool {
        let mut worked = self.accept(now);
        let respond = match self.serve {
            Some(Serve::RespondAfterFin { len, seed }) => Some((len, seed)),
            _ => None,
        };
        for f in &mut self.flows {
            if f.done {
                continue;
            }
            let s = self.sockets.get_mut::<tcp::Socket>(f.handle);
            if s.state() == State::Listen {
                // Reset during the handshake sent an accepted socket back to LISTEN.
                s.abort();
                f.reset = true;
                f.done = true;
                f.t_done = Some(now);
                continue;
            }
            if !f.established && s.may_send() {
                f.established = true;
                f.t_established = Some(now);
            }
            // Receive.
            loop {
                let keep = f.keep;
                let r = s.recv(|d| {
                    if keep {
                        f.received.extend_from_slice(d);
                    }
                    (d.len(), d.len())
                });
                match r {
                    Ok(0) => break,
                    Ok(n) => {
                        if f.t_first_byte.is_none() {
                            f.t_first_byte = Some(now);
                        }
                        f.received_len += n;
                        worked = true;
                    }
                    Err(tcp::RecvError::Finished) => {
                        if !f.fin {
                            f.fin = true;
                            f.t_fin = Some(now);
                            f.sent_at_fin = f.sent;
                            worked = true;
                            if let Some((len, seed)) = respond {
                                f.data = pattern(seed, len);
                            }
                        }
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Send.
            if s.may_send() {
                let src: &[u8] = if f.echo { &f.received } else { &f.data };
                if f.sent < src.len() {
                    let n = s.send_slice(&src[f.sent..]).unwrap_or(0);
                    if n > 0 {
                        f.sent += n;
                        worked = true;
                    }
                }
            }
            let all_sent = if f.echo {
                f.sent == f.received.len()
            } else {
                f.sent == f.data.len()
            };
            match f.close {
                Close::AfterSend if all_sent && !f.closed_by_us && s.may_send() => {
                    s.close();
                    f.closed_by_us = true;
                    worked = true;
                }
                Close::AfterPeerFin if all_sent && f.fin && !f.closed_by_us => {
                    s.close();
                    f.closed_by_us = true;
                    worked = true;
                }
                Close::AbortAfterRecv(n) if f.received_len >= n && !f.aborted_by_us => {
                    s.abort();
                    f.aborted_by_us = true;
                    worked = true;
                }
                Close::AbortAfterSend(n) if f.sent >= n && !f.aborted_by_us => {
                    s.abort();
                    f.aborted_by_us = true;
                    worked = true;
                }
                _ => {}
            }
            // Finished?
            let st = s.state();
            if st == State::TimeWait || (st == State::Closed && s.remote_endpoint().is_none()) {
                if st == State::Closed && !(f.fin && f.closed_by_us) && !f.aborted_by_us {
                    f.reset = true;
                }
                f.done = true;
                f.t_done = Some(now);
                worked = true;
            }
        }
        worked
    }

    /// Drop finished flows' sockets (keeps the flow records).
    pub fn reclaim(&mut self) {
        for f in &mut self.flows {
            if f.done && !f.reclaimed {
                self.sockets.remove(f.handle);
                f.reclaimed = true;
            }
        }
    }
}

/// The proxy engine and hosts on one simulated network, driven by virtual time.
pub struct World {
    pub net: Net,
    pub proxy: Engine,
    pub proxy_port: usize,
    pub hosts: Vec<Host>,
    /// Polls of the proxy so far.
    pub proxy_polls: u64,
    /// A monotonic clock in nanoseconds (the benchmark's), to time the engine's
    /// polls apart from the simulated hosts'; `None` in tests.
    pub clock: Option<fn() -> u64>,
    /// Nanoseconds spent in the engine's polls, when `clock` is set.
    pub proxy_nanos: u64,
}

impl World {
    pub fn now(&self) -> Instant {
        self.net.now()
    }

    /// Poll everything once at the current time. Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let now = self.net.now();
        self.net.advance(now);
        let t0 = self.clock.map(|c| c());
        let mut any = self.proxy.poll(now, &mut self.net.port(self.proxy_port));
        if let (Some(c), Some(t0)) = (self.clock, t0) {
            self.proxy_nanos += c().saturating_sub(t0);
        }
        self.proxy_polls += 1;
        for h in &mut self.hosts {
            any |= h.poll(&mut self.net);
        }
        self.net.advance(now);
        any
    }

    /// Run until `cond` holds (true) or `limit` of virtual time passed (false).
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&World) -> bool) -> bool {
        let deadline = self.net.now() + limit;
        loop {
            let progressed = self.step();
            if cond(self) {
                return true;
            }
            let now = self.net.now();
            if self.net.any_rx() {
                continue;
            }
            let mut next: Option<Instant> = self.net.next_arrival();
            let mut consider = |d: Option<Duration>| {
                if let Some(d) = d {
                    let t = now + d;
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            };
            consider(self.proxy.poll_delay(now));
            for h in &mut self.hosts {
                consider(h.poll_delay(now));
            }
            let Some(mut t) = next else {
                return false; // nothing will ever happen again
            };
            if t <= now && !progressed {
                t = now + Duration::from_micros(1);
            }
            if t > deadline {
                self.net.advance(deadline);
                return cond(self);
            }
            self.net.advance(t);
        }
    }

    /// Run for exactly `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }
}
