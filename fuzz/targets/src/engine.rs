//! Target `engine`: the split-TCP engine (reverse mode) in the simulator,
//! relaying real echo connections (client 10.0.0.10 -> proxy 10.0.0.2:80 ->
//! server 10.0.0.20:8080) while a machine on the client's segment sends it
//! junk frames: raw
//! bytes, TCP segments with any ports, numbers and flags, other IPv4, ARP.
//!
//! The junk never speaks for the real flows: its source MAC is the
//! attacker's own, and any source IPv4 address (IPv4 header or ARP sender)
//! that belongs to the client, server or proxy is rewritten to the
//! attacker's (10.0.0.66), so no junk frame carries a real flow's 4-tuple
//! or poisons a neighbour entry; junk aimed at a real flow is a different
//! experiment. Property: no panic, and every real connection completes with
//! its data echoed back byte for byte, FIN and no reset.

use proxy::sim::{mac, pattern, Close, Host, Link, Net, Serve, World};
use proxy::{Config, Engine};
use smoltcp::phy::{Device, TxToken};
use smoltcp::time::Duration;
use smoltcp::wire::{HardwareAddress, Ipv4Address, Ipv4Cidr};

use netfront::testing::csum::fill_ipv4_l4_checksum;

use crate::input::Input;

const PROXY: [u8; 4] = [10, 0, 0, 2];
const CLIENT: [u8; 4] = [10, 0, 0, 10];
const SERVER: [u8; 4] = [10, 0, 0, 20];
const ATTACKER: [u8; 4] = [10, 0, 0, 66];
const ATTACKER_MAC: u8 = 66;

fn world(offload: bool, extra: &str, seed: u64) -> (World, usize) {
    let cfg = Config::parse(&format!(
        "ip=10.0.0.2/24 gw=10.0.0.1 rule=reverse:80:10.0.0.20:8080 {extra}"
    ))
    .expect("the target's config line");
    let mut net = Net::new(seed);
    let pp = net.add_port(Link::default());
    net.set_offload(pp, offload);
    let cp = net.add_port(Link::default());
    let sp = net.add_port(Link::default());
    let now = net.now();
    let proxy = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        seed,
        1 << 30,
        &mut net.port(pp),
        now,
    )
    .expect("engine");
    let client = Host::new(
        &mut net,
        cp,
        10,
        Ipv4Cidr::new(Ipv4Address::from(CLIENT), 24),
        None,
        64 * 1024,
    );
    let mut server = Host::new(
        &mut net,
        sp,
        20,
        Ipv4Cidr::new(Ipv4Address::from(SERVER), 24),
        None,
        64 * 1024,
    );
    server.listen(8080, 8, Serve::Echo);
    let w = World {
        net,
        proxy,
        proxy_port: pp,
        hosts: vec![client, server],
        proxy_polls: 0,
        clock: None,
        proxy_nanos: 0,
    };
    // The junk enters through the client's switch port (as from another
    // machine on its segment): a port of its own would collect the
    // proxy's answers with no one to read them.
    (w, cp)
}

fn sanitize_ip(addr: &mut [u8]) {
    if [PROXY, CLIENT, SERVER].iter().any(|a| a[..] == addr[..]) {
        addr.copy_from_slice(&ATTACKER);
    }
}

/// Ethernet header from the attacker to the proxy (or broadcast).
fn eth(broadcast: bool, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1514);
    f.extend_from_slice(&if broadcast { [0xff; 6] } else { mac(2).0 });
    f.extend_from_slice(&mac(ATTACKER_MAC).0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(f: &mut Vec<u8>, proto: u8, inp: &mut Input, l4: &[u8]) {
    let total = (20 + l4.len()) as u16;
    let frag = if inp.u8() < 16 { inp.u16() } else { 0x4000 };
    f.extend_from_slice(&[0x45, inp.u8() & 0xfc]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&inp.u16().to_be_bytes());
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0]);
    f.extend_from_slice(&ATTACKER);
    f.extend_from_slice(&PROXY);
    let h = &f[14..34];
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(l4);
}

fn junk(inp: &mut Input) -> Vec<u8> {
    let kind = inp.u8();
    let mut f = match kind % 4 {
        0 => {
            let mut f = eth(kind & 0x10 != 0, inp.u16());
            f.extend_from_slice(inp.chunk());
            f
        }
        1 => {
            // A TCP segment to the proxy, mostly to its listening port.
            let mut tcp = Vec::new();
            tcp.extend_from_slice(&inp.u16().to_be_bytes());
            let dport = if kind & 0x10 != 0 { inp.u16() } else { 80 };
            tcp.extend_from_slice(&dport.to_be_bytes());
            tcp.extend_from_slice(&inp.u32().to_be_bytes());
            tcp.extend_from_slice(&inp.u32().to_be_bytes());
            let n_opts = usize::from(inp.u8() % 11) * 4;
            let opts = inp.bytes(n_opts);
            tcp.push(((5 + opts.len() / 4) as u8) << 4);
            tcp.push(inp.u8());
            tcp.extend_from_slice(&inp.u16().to_be_bytes());
            tcp.extend_from_slice(&[0, 0]);
            tcp.extend_from_slice(&inp.u16().to_be_bytes());
            tcp.extend_from_slice(opts);
            tcp.extend_from_slice(inp.chunk());
            let mut f = eth(false, 0x0800);
            ipv4(&mut f, 6, inp, &tcp);
            if kind & 0x20 == 0 {
                let _ = fill_ipv4_l4_checksum(&mut f);
            }
            f
        }
        2 => {
            // Other IPv4: ICMP, UDP, anything.
            let proto = [1, 17, 2, 47][usize::from(inp.u8() % 4)];
            let l4 = inp.chunk().to_vec();
            let mut f = eth(kind & 0x10 != 0, 0x0800);
            ipv4(&mut f, proto, inp, &l4);
            let _ = fill_ipv4_l4_checksum(&mut f);
            f
        }
        _ => {
            // ARP from the attacker's address, any operation and target.
            let mut f = eth(kind & 0x10 != 0, 0x0806);
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, inp.u8() % 4]);
            f.extend_from_slice(&mac(ATTACKER_MAC).0);
            f.extend_from_slice(&ATTACKER);
            f.extend_from_slice(&[0; 6]);
            let target: [u8; 4] = if kind & 0x20 != 0 {
                core::array::from_fn(|_| inp.u8())
            } else {
                PROXY
            };
            f.extend_from_slice(&target);
            f
        }
    };
    f.truncate(1514);
    // Whatever the bytes say, the sender is the attacker.
    if f.len() >= 12 {
        f[6..12].copy_from_slice(&mac(ATTACKER_MAC).0);
    }
    if f.len() >= 34 && f[12..14] == [0x08, 0x00] {
        sanitize_ip(&mut f[26..30]);
    }
    if f.len() >= 32 && f[12..14] == [0x08, 0x06] {
        sanitize_ip(&mut f[28..32]);
    }
    f
}

fn inject(w: &mut World, port: usize, frame: &[u8]) {
    let now = w.now();
    if let Some(t) = w.net.port(port).transmit(now) {
        t.consume(frame.len(), |b| b.copy_from_slice(frame));
    }
}

pub fn run(data: &[u8]) {
    scenario(data);
}

/// The target; returns how many bytes came back echoed (for the tests that
/// check the target is not vacuous).
pub fn scenario(data: &[u8]) -> usize {
    let mut inp = Input::new(data);
    let setup = inp.u8();
    let offload = setup & 1 != 0;
    let flows = 1 + usize::from((setup >> 1) & 3) % 3;
    let extra = [
        "",
        "buf=8192",
        "buf=65536 buf_min=4096",
        "max_conns=4 backlog=2",
    ][usize::from(setup >> 3) % 4];
    let len = usize::from(inp.u16()) % 30_000;
    let (mut w, attacker) = world(offload, extra, 1);
    let mut started = Vec::new();
    for i in 0..flows {
        let d = pattern(i as u64 + 1, len + i * 777);
        let now = w.now();
        let f = w.hosts[0].connect(
            (Ipv4Address::from(PROXY), 80),
            d.clone(),
            Close::AfterSend,
            now,
        );
        started.push((f, d));
    }
    let mut sent = 0;
    while !inp.is_empty() && sent < 64 {
        let gap = u64::from(inp.u8()) * 50;
        w.run_for(Duration::from_micros(gap));
        let f = junk(&mut inp);
        inject(&mut w, attacker, &f);
        sent += 1;
    }
    let done = w.run_until(Duration::from_secs(120), |w| {
        started.iter().all(|(f, _)| w.hosts[0].flows[*f].done)
    });
    let stats = w.proxy.stats();
    for (f, d) in &started {
        let c = &w.hosts[0].flows[*f];
        assert!(
            done,
            "flows did not finish in 120 s: flow {f} sent {} received {} est {} fin {} reset {}; proxy {stats}",
            c.sent, c.received_len, c.established, c.fin, c.reset
        );
        assert!(!c.reset, "flow {f} was reset; proxy {stats}");
        assert!(c.fin, "flow {f} saw no FIN");
        assert!(
            c.received == *d,
            "flow {f}: echoed {} bytes, sent {}: not byte-exact",
            c.received.len(),
            d.len()
        );
    }
    started
        .iter()
        .map(|(f, _)| w.hosts[0].flows[*f].received.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds run real connections: the property is about something.
    #[test]
    fn seeds_echo_their_data() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus/engine");
        for e in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            assert!(scenario(&data) >= 3000, "a seed echoed too little");
        }
    }

    /// Junk claiming to come from the real hosts is re-addressed.
    #[test]
    fn junk_never_speaks_for_the_real_hosts() {
        let mut raw = vec![0u8, 0x00, 0x08, 40];
        raw.extend(std::iter::repeat_n(0u8, 12));
        raw.extend(CLIENT);
        raw.extend(std::iter::repeat_n(0u8, 24));
        let f = junk(&mut Input::new(&raw));
        assert_eq!(&f[26..30], &ATTACKER);
        assert_eq!(&f[6..12], &mac(ATTACKER_MAC).0);
    }
}
