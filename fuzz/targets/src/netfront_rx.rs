//! Target `netfront_rx`: the driver's RX path against a netback that writes
//! whatever the input says into the response ring: data slots with any id,
//! offset, flags and status, raw 8-byte slots, GSO extras, well-formed
//! (possibly multi-slot, possibly GSO) TCP frames, and producer jumps;
//! offload on or off (the first input byte).
//!
//! Property: no panic, and no frame handed up contains a byte the backend
//! did not put in a slot's granted range for it. Before answering a
//! request the backend fills the whole page with [`POISON`] and writes its
//! data (which never contains `POISON`) only at `offset..offset+len`; so a
//! `POISON` byte in a delivered frame is memory the backend did not grant,
//! stale or out of range. The one exception is the TCP/UDP checksum field,
//! which the driver itself computes for `NETRXF_csum_blank` frames.

use netfront::testing::csum::{fill_ipv4_l4_checksum, ipv4_l4};
use netfront::testing::{legacy, tcp_frame, H};
use netfront::wire::*;
use netfront::{Config, PAGE_SIZE};

use crate::input::Input;

pub const POISON: u8 = 0xA5;

fn clean(b: u8) -> u8 {
    if b == POISON {
        POISON ^ 1
    } else {
        b
    }
}

/// Answer the next RX request: poison its page, write `data` at `offset`.
/// Returns the request's id, or None when the frontend posted none.
fn take_and_fill(h: &mut H, offset: usize, data: &[u8]) -> Option<u16> {
    let req = h.be.take_rx_request()?;
    h.be.copy_to_grant(req.gref, 0, &[POISON; PAGE_SIZE]);
    let end = (offset + data.len()).min(PAGE_SIZE);
    if offset < end {
        let data: Vec<u8> = data[..end - offset].iter().map(|b| clean(*b)).collect();
        h.be.copy_to_grant(req.gref, offset, &data);
    }
    Some(req.id)
}

/// `n` data bytes: the input's, then a pattern.
fn data(inp: &mut Input, n: usize) -> Vec<u8> {
    let mut d = inp.bytes(n.min(64)).to_vec();
    let start = d.len();
    d.extend((start..n).map(|i| clean((i * 131 + 7) as u8)));
    d
}

/// A page of backend data (for slots whose claimed range is not ours to
/// choose: an extra-info slot read as data is still data the backend wrote).
fn whole_page() -> Vec<u8> {
    (0..PAGE_SIZE).map(|i| clean((i * 131 + 7) as u8)).collect()
}

/// A well-formed TCP frame for the guest, in as many slots as it needs.
fn good_frame(h: &mut H, inp: &mut Input) {
    let len = usize::from(inp.u16()) % 9000;
    let seed = u32::from(inp.u8());
    let gso = if inp.bool() {
        Some(536 + inp.u16() % 1000)
    } else {
        None
    };
    let flags = u16::from(inp.u8() & 3); // DATA_VALIDATED, CSUM_BLANK
    let mut f: Vec<u8> = tcp_frame(seed, len, true).into_iter().map(clean).collect();
    let _ = fill_ipv4_l4_checksum(&mut f);
    if flags & NETRXF_CSUM_BLANK != 0 {
        if let Ok(l4) = ipv4_l4(&f) {
            f[l4.csum_at..l4.csum_at + 2].copy_from_slice(&l4.pseudo.to_be_bytes());
        }
    }
    let chunks: Vec<&[u8]> = f.chunks(PAGE_SIZE).collect();
    let needed = chunks.len() + usize::from(gso.is_some());
    if (h.be.rx_requests_available() as usize) < needed {
        return;
    }
    for (i, chunk) in chunks.iter().enumerate() {
        let id = take_and_fill(h, 0, chunk).unwrap();
        let mut fl = if i == 0 { flags } else { 0 };
        if i == 0 && gso.is_some() {
            fl |= NETRXF_EXTRA_INFO;
        }
        if i + 1 < chunks.len() {
            fl |= NETRXF_MORE_DATA;
        }
        h.be.put_rx_raw(
            RxResponse {
                id,
                offset: 0,
                flags: fl,
                status: chunk.len() as i16,
            }
            .encode(),
        );
        if let (0, Some(mss)) = (i, gso) {
            let _ = take_and_fill(h, 0, &whole_page());
            h.be.put_rx_raw(GsoExtra::tcpv4(mss).encode());
        }
    }
}

/// Every delivered frame holds only granted bytes (see the module docs).
pub fn check_frames(frames: &[Vec<u8>]) {
    for f in frames {
        let csum = ipv4_l4(f).ok().map(|l4| l4.csum_at..l4.csum_at + 2);
        if let Some(i) = f
            .iter()
            .enumerate()
            .position(|(i, b)| *b == POISON && !csum.as_ref().is_some_and(|r| r.contains(&i)))
        {
            panic!(
                "frame of {} bytes handed up holds an ungranted byte at {i} (checksum field {csum:?})",
                f.len()
            );
        }
    }
}

pub fn run(data: &[u8]) {
    scenario(data);
}

/// The target; returns the frames handed up (for the tests that check the
/// target is not vacuous).
pub fn scenario(data_in: &[u8]) -> usize {
    let mut inp = Input::new(data_in);
    let mut delivered = 0;
    let mut check = |frames: Vec<Vec<u8>>| {
        check_frames(&frames);
        delivered += frames.len();
    };
    let offload = inp.bool();
    let mut h = if offload {
        H::offload_with(Config::default())
    } else {
        H::connected(Default::default(), legacy())
    };
    let mut ops = 0;
    while !inp.is_empty() && ops < 200 {
        ops += 1;
        let op = inp.u8() % 8;
        if !h.be.is_connected() {
            // The driver gave up on this backend (a lie it caught): let the
            // two reconnect, and check what was handed up meanwhile.
            h.step();
            check(h.rx_all());
            continue;
        }
        match op {
            0 | 1 => {
                // A data slot, any fields.
                let offset = usize::from(inp.u16() % 4400);
                let status = if inp.bool() {
                    inp.u16() as i16
                } else {
                    (inp.u16() % 4400) as i16
                };
                let flags = u16::from(inp.u8() & 0x1f);
                let wrong_id = inp.bool().then(|| inp.u16());
                let d = data(&mut inp, status.max(0) as usize);
                if let Some(id) = take_and_fill(&mut h, offset, &d) {
                    h.be.put_rx_raw(
                        RxResponse {
                            id: wrong_id.unwrap_or(id),
                            offset: offset as u16,
                            flags,
                            status,
                        }
                        .encode(),
                    );
                }
            }
            2 => {
                // Raw slots may claim any range of the page: the backend
                // writes all of it, so whatever they claim it granted.
                let raw: [u8; 8] = core::array::from_fn(|_| inp.u8());
                if take_and_fill(&mut h, 0, &whole_page()).is_some() {
                    h.be.put_rx_raw(raw);
                }
            }
            3 => {
                // An extra-info slot with the input's type, flags and size.
                let mut x = GsoExtra::tcpv4(inp.u16());
                x.ty = inp.u8() % 7;
                x.flags = inp.u8() & 1;
                x.gso_type = inp.u8() % 4;
                if take_and_fill(&mut h, 0, &whole_page()).is_some() {
                    h.be.put_rx_raw(x.encode());
                }
            }
            4 => good_frame(&mut h, &mut inp),
            5 => {
                h.be.push_rx();
                check(h.rx_all());
            }
            6 => h.step(),
            _ => {
                if inp.u8() == 0xff {
                    // A producer that jumps (a rare, drastic lie).
                    let v = h.be.rx_rsp_prod_pvt().wrapping_add(u32::from(inp.u16()));
                    h.be.set_rx_rsp_prod(v);
                }
            }
        }
    }
    if h.be.is_connected() {
        h.be.push_rx();
    }
    check(h.rx_all());
    h.step();
    check(h.rx_all());
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{}", h.nf.stats());
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_deliver_frames() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus/netfront_rx");
        let path = std::path::Path::new(dir).join("frames-offload");
        let n = scenario(&std::fs::read(path).unwrap());
        assert!(n >= 3, "{n} frames");
    }

    #[test]
    #[should_panic(expected = "ungranted byte at 20")]
    fn a_poisoned_byte_is_caught() {
        let mut f = tcp_frame(1, 100, true);
        for b in &mut f {
            *b = clean(*b);
        }
        f[20] = POISON;
        check_frames(&[f]);
    }

    #[test]
    fn the_checksum_field_may_hold_the_poison_byte() {
        let mut f: Vec<u8> = tcp_frame(1, 100, true).into_iter().map(clean).collect();
        let l4 = ipv4_l4(&f).unwrap();
        f[l4.csum_at] = POISON;
        check_frames(&[f]);
    }
}
