//! Frames from nobody: spoofed TCP segments for flood and junk tests, sent
//! into the switch from a port of their own as if from any address.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Address,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::Net;

/// What kind of TCP segment a spoofed frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoof {
    /// A SYN (as in a SYN flood).
    Syn,
    /// A bare ACK for no connection (answered with an RST).
    Ack,
}

/// One Ethernet frame carrying a TCP segment from `src` to `dst`, with
/// correct checksums.
pub fn tcp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: (Ipv4Address, u16),
    dst: (Ipv4Address, u16),
    kind: Spoof,
    seq: u32,
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: src.1,
        dst_port: dst.1,
        control: match kind {
            Spoof::Syn => TcpControl::Syn,
            Spoof::Ack => TcpControl::None,
        },
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: match kind {
            Spoof::Syn => None,
            Spoof::Ack => Some(TcpSeqNumber(seq.wrapping_mul(7) as i32)),
        },
        window_len: 1024,
        window_scale: None,
        max_seg_size: (kind == Spoof::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let caps = ChecksumCapabilities::default();
    let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_src_addr(src_mac);
    eth.set_dst_addr(dst_mac);
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut ipp = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ipp, &caps);
    let mut tp = TcpPacket::new_unchecked(ipp.payload_mut());
    tcp.emit(
        &mut tp,
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        &caps,
    );
    buf
}

impl Net {
    /// Add a port for a spoofing source: frames are sent from it with
    /// [`Net::inject`], and what the switch delivers to it is dropped.
    pub fn add_spoof_port(&mut self) -> usize {
        let port = self.add_port(super::Link::default());
        self.ports[port].deaf = true;
        port
    }

    /// Send `frame` into the switch from `port` as its device would (a
    /// spoofing source: any addresses).
    pub fn inject(&mut self, port: usize, frame: Vec<u8>) {
        self.send(port, frame);
    }
}
