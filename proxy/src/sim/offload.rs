//! Offload mode of a port: the wire segments oversized TCP frames a device sends
//! and fills their checksums (like netback/Linux GSO), and merges in-order
//! segments of one TCP flow on the way to the device (like GRO).

use alloc::vec::Vec;

use smoltcp::phy::{ChecksumCapabilities, PacketMeta};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket,
    TcpRepr,
};

use super::{Net, MTU_FRAME, TSO_MAX_FRAME};

impl Net {
    /// A frame leaves an offload port's device: cut it into segments if smoltcp
    /// asked for it, fill TCP checksums, then send.
    pub(super) fn offload_tx(&mut self, src: usize, mut frame: Vec<u8>, meta: PacketMeta) {
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
    pub(super) fn gro_merge(&mut self, dst: usize, frame: &[u8]) -> bool {
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
