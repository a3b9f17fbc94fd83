//! The switch, its links, the router and the DHCP server.

use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;

use smoltcp::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Address, Ipv4Cidr, Ipv4Packet,
    Ipv4Repr, UdpPacket, UdpRepr,
};

use super::{Link, PortDevice, Rng, MTU_FRAME};

#[derive(Debug, Default)]
pub(super) struct Port {
    link: Link,
    pub(super) rx: VecDeque<Vec<u8>>,
    /// When the uplink/downlink finish serializing what they carry.
    up_busy: u64,
    down_busy: u64,
    /// Segmentation and checksum offload (see the module docs).
    pub(super) offload: bool,
    /// The device has no TX room (a stalled backend): `transmit` gives no token.
    pub(super) tx_blocked: bool,
    /// Nothing reads this port (a spoofing source): frames to it are dropped.
    pub(super) deaf: bool,
    pub(super) stats: PortStats,
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
    pub(super) ports: Vec<Port>,
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

    /// Stall a port's transmit side (its device offers no TX token), or
    /// release it. Frames the device receives are still delivered.
    pub fn set_tx_blocked(&mut self, port: usize, blocked: bool) {
        self.ports[port].tx_blocked = blocked;
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
            } else if self.ports[dst].deaf
                || (self.ports[dst].offload && self.gro_merge(dst, &frame))
            {
                // Delivered to nobody (a spoofing source), or merged.
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
    pub(super) fn send(&mut self, src: usize, frame: Vec<u8>) {
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
            // A frame shorter than a microsecond of the link (an ACK at 1
            // Gbit/s) still takes a place in the queue.
            if (start - t) > ser.max(1) * up.queue_limit as u64 {
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
                if (start - td) > ser.max(1) * down.queue_limit as u64 {
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
