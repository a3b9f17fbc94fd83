//! IPv4 TCP/UDP checksums done by the driver rather than by smoltcp.
//!
//! Without offload we write `feature-no-csum-offload=1`, so Linux netback
//! clears `NETIF_F_IP_CSUM` on the vif and dom0's stack checksums every frame
//! before handing it over: blank checksums should never arrive. A backend that
//! ignores the key may still send them, so rather than hand smoltcp a frame it
//! would reject, [`fill_ipv4_l4_checksum`] computes the TCP/UDP checksum. Only
//! unfragmented IPv4 TCP/UDP can be completed (the only kind an IPv4 checksum
//! offload produces); anything else is dropped and counted.
//!
//! With offload (see the crate docs) smoltcp neither computes nor verifies
//! TCP checksums; the driver then puts the pseudo-header sum into every TCP
//! frame it sends ([`set_tcp_pseudo_checksum`], what Linux's
//! `CHECKSUM_PARTIAL` expects next to `NETTXF_csum_blank`) and verifies the
//! received TCP frames the backend did not vouch for ([`verify_ipv4_tcp`]).

/// Why a checksum could not be computed.
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
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// One's complement sum of `data` as big-endian 16-bit words (odd length:
/// padded with a zero byte), added to `acc`. Reads 32-bit words: a
/// big-endian u32 is congruent to the sum of its two u16 halves modulo
/// 0xffff, which is all the folded sum keeps.
fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Fold a sum to 16 bits (not complemented).
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The protocol number of an IPv4 frame (Ethernet header, then at least the
/// fixed IPv4 header), whatever else is wrong with it.
pub fn ipv4_protocol(frame: &[u8]) -> Option<u8> {
    if frame.len() < ETH_HDR + 20 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    Some(frame[ETH_HDR + 9])
}

/// Where the TCP/UDP segment of an unfragmented Ethernet/IPv4 frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: u8,
    /// Offset of the TCP/UDP header in the frame.
    pub start: usize,
    /// Bytes of TCP/UDP header and payload (IPv4 total length - IHL).
    pub len: usize,
    /// Offset of the checksum field in the frame.
    pub csum_at: usize,
    /// The pseudo-header sum, folded, not complemented.
    pub pseudo: u16,
}

/// Locate the TCP/UDP segment of an unfragmented Ethernet/IPv4 frame.
pub fn ipv4_l4(frame: &[u8]) -> Result<L4, CsumError> {
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
    // The whole fixed header must be there (a TCP header is 20 bytes).
    let min = if proto == PROTO_TCP { 20 } else { 8 };
    if l4_len < min {
        return Err(CsumError::Truncated);
    }
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip[12..20]);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(l4_len as u16).to_be_bytes());
    Ok(L4 {
        proto,
        start: ETH_HDR + ihl,
        len: l4_len,
        csum_at: ETH_HDR + ihl + csum_off,
        pseudo: fold(sum16(&pseudo, 0)),
    })
}

/// Compute and store the TCP or UDP checksum of an Ethernet/IPv4 frame.
pub fn fill_ipv4_l4_checksum(frame: &mut [u8]) -> Result<(), CsumError> {
    let l4 = ipv4_l4(frame)?;
    frame[l4.csum_at] = 0;
    frame[l4.csum_at + 1] = 0;
    let seg = &frame[l4.start..l4.start + l4.len];
    let mut c = !fold(sum16(seg, u64::from(l4.pseudo)));
    if l4.proto == PROTO_UDP && c == 0 {
        c = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    frame[l4.csum_at..l4.csum_at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// For a TCP frame sent with `NETTXF_csum_blank`: store the pseudo-header
/// sum (folded, not complemented) in the checksum field, as Linux's
/// `CHECKSUM_PARTIAL` has it (`th->check = ~tcp_v4_check(len, saddr, daddr,
/// 0)`); whoever completes the checksum sums the segment over it. For a
/// segmentation-offload frame the length is the whole segment's, as
/// `tcp_gso_segment` expects. Returns the frame's `L4`; errors (not an
/// unfragmented IPv4 TCP frame) leave the frame untouched.
pub fn set_tcp_pseudo_checksum(frame: &mut [u8]) -> Result<L4, CsumError> {
    let l4 = ipv4_l4(frame)?;
    if l4.proto != PROTO_TCP {
        return Err(CsumError::NotTcpUdp);
    }
    frame[l4.csum_at..l4.csum_at + 2].copy_from_slice(&l4.pseudo.to_be_bytes());
    Ok(l4)
}

/// Is the TCP checksum of this Ethernet/IPv4/TCP frame right?
pub fn verify_ipv4_tcp(frame: &[u8]) -> Result<bool, CsumError> {
    let l4 = ipv4_l4(frame)?;
    if l4.proto != PROTO_TCP {
        return Err(CsumError::NotTcpUdp);
    }
    let seg = &frame[l4.start..l4.start + l4.len];
    // The sum over the segment including its checksum field, plus the
    // pseudo-header, is all ones (0xffff, or its twin 0) when it is right.
    let s = fold(sum16(seg, u64::from(l4.pseudo)));
    Ok(s == 0xffff || s == 0)
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
            let mut f = tcp_frame(payload_len);
            // A partial (pseudo-header) checksum, as CHECKSUM_PARTIAL leaves it.
            f[34 + 16] = 0x12;
            f[34 + 17] = 0x34;
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

    fn tcp_frame(payload_len: usize) -> Vec<u8> {
        let mut l4 = vec![0u8; 20 + payload_len];
        {
            let mut tcp = TcpPacket::new_unchecked(&mut l4[..]);
            tcp.set_src_port(1234);
            tcp.set_dst_port(80);
            tcp.set_header_len(20);
            tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(77));
            for (i, b) in tcp.payload_mut().iter_mut().enumerate() {
                *b = (i * 13 + (i >> 8)) as u8;
            }
        }
        frame(IpProtocol::Tcp, &l4)
    }

    #[test]
    fn pseudo_header_sum_is_what_smoltcp_calls_partial() {
        for payload_len in [0usize, 1, 2, 3, 5, 1460, 30_000, 65_000] {
            let mut f = tcp_frame(payload_len);
            let l4 = set_tcp_pseudo_checksum(&mut f).unwrap();
            assert_eq!((l4.proto, l4.start, l4.len), (6, 34, 20 + payload_len));
            let tcp = TcpPacket::new_checked(&f[34..]).unwrap();
            assert!(
                tcp.verify_partial_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST)),
                "len {payload_len}"
            );
            // Completing it gives the full checksum, which both verifiers accept.
            fill_ipv4_l4_checksum(&mut f).unwrap();
            let tcp = TcpPacket::new_checked(&f[34..]).unwrap();
            assert!(tcp.verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST)));
            assert_eq!(verify_ipv4_tcp(&f), Ok(true), "len {payload_len}");
            // Any flipped bit is caught.
            let at = 34 + 20 + payload_len / 2;
            if at < f.len() {
                f[at] ^= 0x10;
                assert_eq!(verify_ipv4_tcp(&f), Ok(false), "len {payload_len}");
            }
        }
    }

    #[test]
    fn odd_lengths_sum_like_the_rfc_1071_reference() {
        // A byte-at-a-time reference against the word-wise sum.
        fn reference(d: &[u8]) -> u16 {
            let mut acc: u32 = 0;
            for (i, b) in d.iter().enumerate() {
                acc += if i % 2 == 0 {
                    u32::from(*b) << 8
                } else {
                    u32::from(*b)
                };
            }
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            acc as u16
        }
        let data: Vec<u8> = (0..1031u32).map(|i| (i * 151 + 7) as u8).collect();
        for start in 0..4 {
            for len in [0usize, 1, 2, 3, 4, 5, 6, 7, 100, 1001, 1027] {
                let d = &data[start..start + len];
                assert_eq!(fold(sum16(d, 0)), reference(d), "start {start} len {len}");
            }
        }
        assert_eq!(fold(sum16(&[0xff; 4096], 0)), 0xffff);
    }

    #[test]
    fn tcp_only_helpers_refuse_other_frames() {
        let mut f = frame(IpProtocol::Udp, &[0; 8]);
        assert_eq!(set_tcp_pseudo_checksum(&mut f), Err(CsumError::NotTcpUdp));
        assert_eq!(verify_ipv4_tcp(&f), Err(CsumError::NotTcpUdp));
        let mut f = tcp_frame(10);
        f[14 + 6] = 0x20; // more fragments
        let before = f.clone();
        assert_eq!(set_tcp_pseudo_checksum(&mut f), Err(CsumError::Fragment));
        assert_eq!(f, before, "untouched");
        assert_eq!(verify_ipv4_tcp(&f), Err(CsumError::Fragment));
        assert_eq!(ipv4_protocol(&f), Some(6));
        assert_eq!(ipv4_protocol(&f[..30]), None);
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
