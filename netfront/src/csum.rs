//! Completing frames the backend marks `NETRXF_csum_blank`.
//!
//! We write `feature-no-csum-offload=1`, so Linux netback clears
//! `NETIF_F_IP_CSUM` on the vif and dom0's stack checksums every frame before
//! handing it over: blank checksums should never arrive. A backend that
//! ignores the key (or a future one) may still send them, so rather than hand
//! smoltcp a frame it would reject, we compute the TCP/UDP checksum here. Only
//! unfragmented IPv4 TCP/UDP can be completed (the only kind an IPv4
//! checksum offload produces); anything else is dropped and counted.

/// Why a blank checksum could not be completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsumError {
    NotIpv4,
    BadIpHeader,
    Fragment,
    NotTcpUdp,
    Truncated,
}

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Compute and store the TCP or UDP checksum of an Ethernet/IPv4 frame.
pub fn fill_ipv4_l4_checksum(frame: &mut [u8]) -> Result<(), CsumError> {
    if frame.len() < ETH_HDR + 20 {
        return Err(CsumError::Truncated);
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return Err(CsumError::NotIpv4);
    }
    let ip = &frame[ETH_HDR..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return Err(CsumError::BadIpHeader);
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < ihl || total > ip.len() {
        return Err(CsumError::Truncated);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        // More-fragments set or a non-zero offset.
        return Err(CsumError::Fragment);
    }
    let proto = ip[9];
    let csum_off = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return Err(CsumError::NotTcpUdp),
    };
    let l4_len = total - ihl;
    if l4_len < csum_off + 2 {
        return Err(CsumError::Truncated);
    }
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip[12..20]);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());

    let l4_start = ETH_HDR + ihl;
    let l4 = &mut frame[l4_start..l4_start + l4_len];
    l4[csum_off] = 0;
    l4[csum_off + 1] = 0;
    let mut c = fold(sum16(l4, sum16(&pseudo, 0)));
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Address,
        Ipv4Packet, TcpPacket, UdpPacket,
    };

    const SRC: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const DST: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    fn frame(proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + l4.len()];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_src_addr(EthernetAddress([2, 0, 0, 0, 0, 1]));
        eth.set_dst_addr(EthernetAddress([2, 0, 0, 0, 0, 2]));
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((20 + l4.len()) as u16);
        ip.set_hop_limit(64);
        ip.set_next_header(proto);
        ip.set_src_addr(SRC);
        ip.set_dst_addr(DST);
        ip.fill_checksum();
        f[34..].copy_from_slice(l4);
        f
    }

    #[test]
    fn fills_tcp_checksum_that_smoltcp_verifies() {
        for payload_len in [0usize, 1, 7, 100, 1400] {
            let mut l4 = vec![0u8; 20 + payload_len];
            {
                let mut tcp = TcpPacket::new_unchecked(&mut l4[..]);
                tcp.set_src_port(1234);
                tcp.set_dst_port(80);
                tcp.set_header_len(20);
                tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(77));
                for (i, b) in tcp.payload_mut().iter_mut().enumerate() {
                    *b = (i * 7) as u8;
                }
            }
            // A partial (pseudo-header) checksum, as CHECKSUM_PARTIAL leaves it.
            l4[16] = 0x12;
            l4[17] = 0x34;
            let mut f = frame(IpProtocol::Tcp, &l4);
            fill_ipv4_l4_checksum(&mut f).unwrap();
            let tcp = TcpPacket::new_checked(&f[34..]).unwrap();
            assert!(
                tcp.verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST)),
                "len {payload_len}"
            );
        }
    }

    #[test]
    fn fills_udp_checksum_that_smoltcp_verifies() {
        let mut l4 = vec![0u8; 8 + 33];
        {
            let mut udp = UdpPacket::new_unchecked(&mut l4[..]);
            udp.set_src_port(53);
            udp.set_dst_port(4000);
            udp.set_len(41);
            udp.payload_mut().fill(0xa5);
        }
        let mut f = frame(IpProtocol::Udp, &l4);
        fill_ipv4_l4_checksum(&mut f).unwrap();
        let udp = UdpPacket::new_checked(&f[34..]).unwrap();
        assert!(udp.verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST)));
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        let _ = smoltcp::wire::Ipv4Repr::parse(&ip, &ChecksumCapabilities::default()).unwrap();
    }

    #[test]
    fn refuses_what_it_cannot_complete() {
        let mut f = frame(IpProtocol::Icmp, &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(fill_ipv4_l4_checksum(&mut f), Err(CsumError::NotTcpUdp));
        let mut f = frame(IpProtocol::Udp, &[0; 8]);
        f[14 + 6] = 0x20; // more fragments
        assert_eq!(fill_ipv4_l4_checksum(&mut f), Err(CsumError::Fragment));
        let mut f = frame(IpProtocol::Udp, &[0; 8]);
        f[12] = 0x86;
        f[13] = 0xdd;
        assert_eq!(fill_ipv4_l4_checksum(&mut f), Err(CsumError::NotIpv4));
        let mut f = frame(IpProtocol::Udp, &[0; 8]);
        f[14 + 2] = 0x40; // total length beyond the frame
        assert_eq!(fill_ipv4_l4_checksum(&mut f), Err(CsumError::Truncated));
        let mut f = frame(IpProtocol::Tcp, &[0; 10]); // TCP header cut short
        assert_eq!(fill_ipv4_l4_checksum(&mut f), Err(CsumError::Truncated));
        let mut f = frame(IpProtocol::Udp, &[0; 8]);
        f[14] = 0x43; // IHL 3
        assert_eq!(fill_ipv4_l4_checksum(&mut f), Err(CsumError::BadIpHeader));
        assert_eq!(
            fill_ipv4_l4_checksum(&mut [0u8; 20]),
            Err(CsumError::Truncated)
        );
    }
}
