//! Target `netfront_tx`: the driver's TX path against a netback that answers
//! as the input says: right or wrong ids, any status, NULL slots,
//! unsolicited responses and producer jumps, at any time relative to the
//! guest's sends; offload on or off (the first input byte).
//!
//! Properties: no panic (the fake netback also fails on any request netback
//! itself would reject, a frontend bug); and while the backend has not lied
//! about ids (no wrong id, unsolicited response or producer jump), every
//! frame the guest sent reaches the backend, in order and byte for byte
//! outside the checksum field (which the driver may fill), and once the
//! backend answers honestly no buffer stays in flight.

use netfront::testing::csum::ipv4_l4;
use netfront::testing::{legacy, tcp_frame, udp_frame, TxPacket, H};
use netfront::wire::*;
use netfront::Config;

use crate::input::Input;

/// The frame with its TCP/UDP checksum field zeroed.
fn masked(f: &[u8]) -> Vec<u8> {
    let mut f = f.to_vec();
    if let Ok(l4) = ipv4_l4(&f) {
        f[l4.csum_at] = 0;
        f[l4.csum_at + 1] = 0;
    }
    f
}

struct Run {
    h: H,
    offload: bool,
    /// Frames the guest handed the driver, and what the backend took.
    sent: Vec<Vec<u8>>,
    taken: Vec<Vec<u8>>,
    /// Packets the backend took and has not answered yet.
    pending: Vec<TxPacket>,
    /// The backend answered with an id it was not asked for, left a slot
    /// unanswered, or jumped. From then on it consumes no more requests:
    /// a response written over a request it has not read yet destroys that
    /// request (the ring's slots are shared), so its own view of the ring
    /// is garbage, which is its problem, not the driver's.
    lied: bool,
}

impl Run {
    fn send(&mut self, inp: &mut Input) {
        let seed = u32::from(inp.u16());
        let udp = inp.bool();
        let big = self.offload && inp.bool();
        let len = usize::from(inp.u16()) % if big { 20_000 } else { 1400 };
        let f = if udp {
            udp_frame(seed, len.min(1400), false)
        } else {
            tcp_frame(seed, len, false)
        };
        let mss = (big && !udp).then_some(1460);
        if self.h.tx_meta(&f, mss) {
            self.sent.push(f);
        }
    }

    fn take(&mut self) {
        if !self.lied {
            for p in self.h.be.take_tx_packets() {
                self.taken.push(p.data.clone());
                self.pending.push(p);
            }
        }
    }

    fn answer(&mut self, inp: &mut Input) {
        for _ in 0..inp.u8() % 4 {
            if self.pending.is_empty() {
                return;
            }
            let p = self.pending.remove(0);
            match inp.u8() % 8 {
                0..=3 => self.h.be.answer_tx(&p, NETIF_RSP_OKAY),
                4 => self.h.be.answer_tx(&p, inp.u16() as i16),
                5 => {
                    // Slot by slot, each possibly wrong.
                    let n = 1 + p.extras.len() + p.frags.len();
                    for i in 0..n {
                        let w = inp.u8();
                        match w % 4 {
                            0 => self.h.be.put_tx_null(),
                            1 => {
                                self.lied = true;
                                self.h.be.put_tx_response(inp.u16(), NETIF_RSP_OKAY);
                            }
                            _ => {
                                let id = if i == 0 {
                                    p.first.id
                                } else if i <= p.extras.len() {
                                    self.h.be.put_tx_null();
                                    continue;
                                } else {
                                    p.frags[i - 1 - p.extras.len()].id
                                };
                                self.h.be.put_tx_response(id, i16::from(w as i8));
                            }
                        }
                    }
                    // A NULL where a real response belongs leaves that
                    // request unanswered: also a lie about the ring.
                    self.lied = true;
                }
                _ => {
                    // Never answered: the backend keeps the buffer.
                    self.lied = true;
                }
            }
        }
    }
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let offload = inp.bool();
    let h = if offload {
        H::offload_with(Config {
            tx_buffers: 64,
            ..Default::default()
        })
    } else {
        H::connected(Default::default(), legacy())
    };
    let mut r = Run {
        h,
        offload,
        sent: Vec::new(),
        taken: Vec::new(),
        pending: Vec::new(),
        lied: false,
    };
    let mut ops = 0;
    while !inp.is_empty() && ops < 200 {
        ops += 1;
        let op = inp.u8() % 8;
        if !r.h.be.is_connected() {
            r.lied = true; // only a lie makes the driver give up
            r.h.step();
            continue;
        }
        match op {
            0 | 1 => r.send(&mut inp),
            2 => r.take(),
            3 => {
                r.answer(&mut inp);
                r.h.be.push_tx();
            }
            4 => r.h.step(),
            5 => {
                r.lied = true;
                r.h.be.put_tx_response(inp.u16(), inp.u16() as i16);
            }
            6 => {
                if inp.u8() == 0xff {
                    r.lied = true;
                    r.h.be.set_tx_rsp_prod(inp.u32());
                }
            }
            _ => {
                // Honest service of everything outstanding.
                r.take();
                for p in std::mem::take(&mut r.pending) {
                    r.h.be.answer_tx(&p, NETIF_RSP_OKAY);
                }
                r.h.be.push_tx();
            }
        }
    }
    if r.lied || !r.h.be.is_connected() || !r.h.nf.is_connected() {
        return;
    }
    // An honest finish: everything is taken, answered and given back.
    for _ in 0..3 {
        r.take();
        for p in std::mem::take(&mut r.pending) {
            r.h.be.answer_tx(&p, NETIF_RSP_OKAY);
        }
        r.h.be.push_tx();
        r.h.step();
    }
    r.h.step();
    assert_eq!(
        r.h.nf.tx_in_flight(),
        0,
        "tx buffers in flight after honest answers"
    );
    let sent: Vec<Vec<u8>> = r.sent.iter().map(|f| masked(f)).collect();
    let taken: Vec<Vec<u8>> = r.taken.iter().map(|f| masked(f)).collect();
    assert_eq!(
        sent.len(),
        taken.len(),
        "frames sent vs taken by the backend ({})",
        r.h.nf.stats()
    );
    for (i, (s, t)) in sent.iter().zip(&taken).enumerate() {
        assert!(
            s == t,
            "frame {i} differs at the backend ({} vs {} bytes)",
            s.len(),
            t.len()
        );
    }
}
