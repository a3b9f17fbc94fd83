//! Target `csum`: netfront's IPv4 TCP/UDP checksum code against a plain
//! reference written from RFC 791/793/768/1071 (16-bit words, end-around
//! carry, one word at a time). The input is an Ethernet frame; the first
//! byte picks how much of the header the target forces to be plausible, so
//! most inputs reach the checksum arithmetic rather than the header checks.

use netfront::testing::csum::{
    fill_ipv4_l4_checksum, ipv4_l4, set_tcp_pseudo_checksum, verify_ipv4_tcp, CsumError, L4,
};

/// One's complement sum of big-endian 16-bit words (odd tail padded with 0).
fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i < data.len() {
        let hi = u32::from(data[i]) << 8;
        let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
        acc += hi | lo;
        acc = (acc & 0xffff) + (acc >> 16);
        i += 2;
    }
    acc
}

/// Where the reference finds the TCP/UDP segment, or why it does not.
fn ref_l4(f: &[u8]) -> Result<(u8, usize, usize, usize), CsumError> {
    if f.len() < 34 {
        return Err(CsumError::Truncated);
    }
    if f[12] != 0x08 || f[13] != 0x00 {
        return Err(CsumError::NotIpv4);
    }
    let version = f[14] >> 4;
    let ihl = usize::from(f[14] & 15) * 4;
    if version != 4 || ihl < 20 {
        return Err(CsumError::BadIpHeader);
    }
    let total = usize::from(f[16]) << 8 | usize::from(f[17]);
    if total < ihl || 14 + total > f.len() {
        return Err(CsumError::Truncated);
    }
    let more_fragments = f[20] & 0x20 != 0;
    let offset = (usize::from(f[20] & 0x1f) << 8) | usize::from(f[21]);
    if more_fragments || offset != 0 {
        return Err(CsumError::Fragment);
    }
    let proto = f[23];
    let (field, min) = match proto {
        6 => (16, 20),
        17 => (6, 8),
        _ => return Err(CsumError::NotTcpUdp),
    };
    if total - ihl < min {
        return Err(CsumError::Truncated);
    }
    Ok((proto, 14 + ihl, total - ihl, 14 + ihl + field))
}

fn ref_pseudo(f: &[u8], proto: u8, len: usize) -> u32 {
    let mut acc = ones_sum(&f[26..34], 0);
    acc = ones_sum(&[0, proto], acc);
    ones_sum(&(len as u16).to_be_bytes(), acc)
}

/// The one's complement sum over pseudo-header and segment (checksum field
/// included): 0xffff when the checksum is right.
fn ref_total(f: &[u8], proto: u8, start: usize, len: usize) -> u32 {
    ones_sum(&f[start..start + len], ref_pseudo(f, proto, len))
}

/// Force the header fields that the first input byte asks for.
fn shape(frame: &mut [u8], how: u8) {
    if frame.len() < 34 || how & 1 == 0 {
        return;
    }
    frame[12] = 0x08;
    frame[13] = 0x00;
    if how & 2 != 0 {
        frame[14] = 0x45;
    }
    if how & 4 != 0 {
        let total = (frame.len() - 14 - usize::from(how >> 5)).min(0xffff) as u16;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        frame[20] = 0x40;
        frame[21] = 0;
    }
    if how & 8 != 0 {
        frame[23] = if how & 16 != 0 { 6 } else { 17 };
    }
}

pub fn run(data: &[u8]) {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let mut frame = rest.to_vec();
    shape(&mut frame, how);

    let want = ref_l4(&frame);
    let got = ipv4_l4(&frame);
    match (want, got) {
        (Err(w), Err(g)) => assert_eq!(w, g, "ipv4_l4 refuses for another reason"),
        (
            Ok((proto, start, len, csum_at)),
            Ok(L4 {
                proto: p,
                start: s,
                len: l,
                csum_at: c,
                pseudo,
            }),
        ) => {
            assert_eq!((proto, start, len, csum_at), (p, s, l, c), "ipv4_l4 fields");
            assert_eq!(
                fold_nonzero(u32::from(pseudo)),
                fold_nonzero(ref_pseudo(&frame, proto, len)),
                "pseudo sum"
            );
        }
        (w, g) => panic!("ipv4_l4: reference {w:?}, netfront {g:?}"),
    }

    // verify_ipv4_tcp agrees with the reference sum.
    let verdict = verify_ipv4_tcp(&frame);
    match want {
        Ok((6, start, len, _)) => {
            let ok = ref_total(&frame, 6, start, len) == 0xffff;
            assert_eq!(verdict, Ok(ok), "verify_ipv4_tcp");
        }
        Ok(_) => assert_eq!(verdict, Err(CsumError::NotTcpUdp)),
        Err(e) => assert_eq!(verdict, Err(e)),
    }

    // fill_ipv4_l4_checksum leaves a frame the reference accepts, touching
    // only the checksum field.
    let mut filled = frame.clone();
    let r = fill_ipv4_l4_checksum(&mut filled);
    match want {
        Ok((proto, start, len, csum_at)) => {
            assert_eq!(r, Ok(()));
            assert_eq!(
                ref_total(&filled, proto, start, len),
                0xffff,
                "filled checksum is wrong"
            );
            if proto == 17 {
                assert_ne!(
                    &filled[csum_at..csum_at + 2],
                    &[0, 0],
                    "UDP checksum 0 means none"
                );
            }
            assert_same_except(&frame, &filled, csum_at);
        }
        Err(e) => {
            assert_eq!(r, Err(e));
            assert_eq!(filled, frame, "a refused frame was changed");
        }
    }

    // set_tcp_pseudo_checksum stores the pseudo-header sum.
    let mut partial = frame.clone();
    let r = set_tcp_pseudo_checksum(&mut partial);
    match want {
        Ok((6, _, len, csum_at)) => {
            assert!(r.is_ok());
            let stored = u32::from(u16::from_be_bytes([partial[csum_at], partial[csum_at + 1]]));
            assert_eq!(
                fold_nonzero(stored),
                fold_nonzero(ref_pseudo(&frame, 6, len))
            );
            assert_same_except(&frame, &partial, csum_at);
        }
        _ => assert_eq!(partial, frame, "a refused frame was changed"),
    }
}

/// One's complement has two zeros (0x0000 and 0xffff), and two correct
/// folds of the same sum may pick either: compare modulo 0xffff.
fn fold_nonzero(v: u32) -> u32 {
    if v == 0xffff {
        0
    } else {
        v
    }
}

fn assert_same_except(a: &[u8], b: &[u8], at: usize) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if i != at && i != at + 1 {
            assert_eq!(x, y, "byte {i} changed outside the checksum field at {at}");
        }
    }
}
