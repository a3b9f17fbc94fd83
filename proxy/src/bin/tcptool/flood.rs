//! `miniproxy-tcptool flood`: a spoofed SYN flood and junk frames, sent raw
//! on a Linux interface (a bridge, in the Xen tests) at a given rate.
//!
//! ```text
//! miniproxy-tcptool flood IFACE DST_MAC DST_IP:PORT [--syn-rate N] [--junk-rate N]
//!                   [--secs S] [--src A.B.C.FIRST-LAST]
//! ```
//!
//! Every SYN comes from the next address of the source range (on-link
//! addresses nobody holds, so the SYN-ACKs go nowhere) with a MAC of its
//! own (`02:ee:00:00:00:HOST`) and the next source port. Junk alternates
//! bare ACKs for no connection (answered with RST, after an ARP request
//! that is never answered), frames of random bytes to the destination MAC,
//! and ARP requests from the source range for random on-link addresses.
//! Prints one line `flood: syn=N junk=N secs=S` at the end.

use std::time::{Duration, Instant};

use proxy::sim::{tcp_frame, Rng, Spoof};
use smoltcp::phy::{Device, Medium, RawSocket, TxToken};
use smoltcp::wire::{EthernetAddress, Ipv4Address};

struct Args {
    iface: String,
    dst_mac: EthernetAddress,
    dst: (Ipv4Address, u16),
    syn_rate: u64,
    junk_rate: u64,
    secs: u64,
    src_net: [u8; 3],
    src_hosts: (u8, u8),
}

fn parse(args: &[String]) -> Result<Args, String> {
    let [iface, mac, dst, rest @ ..] = args else {
        return Err("flood IFACE DST_MAC DST_IP:PORT [--syn-rate N] [--junk-rate N] [--secs S] [--src A.B.C.FIRST-LAST]".into());
    };
    let dst_mac = EthernetAddress::from_bytes(
        &mac.split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<Vec<u8>, _>>()
            .ok()
            .filter(|b| b.len() == 6)
            .ok_or(format!("bad MAC '{mac}'"))?,
    );
    let (ip, port) = dst.rsplit_once(':').ok_or(format!("bad '{dst}'"))?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| format!("bad address '{ip}'"))?;
    let port = port.parse().map_err(|_| format!("bad port '{port}'"))?;
    let mut a = Args {
        iface: iface.clone(),
        dst_mac,
        dst: (Ipv4Address::from(ip.octets()), port),
        syn_rate: 200,
        junk_rate: 200,
        secs: 30,
        src_net: [10, 0, 0],
        src_hosts: (100, 249),
    };
    let mut i = 0;
    while i < rest.len() {
        let v = rest
            .get(i + 1)
            .ok_or(format!("{} needs a value", rest[i]))?;
        let num = || {
            v.parse::<u64>()
                .map_err(|_| format!("bad {} '{v}'", rest[i]))
        };
        match rest[i].as_str() {
            "--syn-rate" => a.syn_rate = num()?,
            "--junk-rate" => a.junk_rate = num()?,
            "--secs" => a.secs = num()?,
            "--src" => {
                let bad = || format!("bad --src '{v}' (A.B.C.FIRST-LAST)");
                let (net, hosts) = v.rsplit_once('.').ok_or_else(bad)?;
                let (first, last) = hosts.split_once('-').ok_or_else(bad)?;
                let net: Vec<u8> = net.split('.').filter_map(|o| o.parse().ok()).collect();
                a.src_net = net.try_into().map_err(|_| bad())?;
                a.src_hosts = (
                    first.parse().map_err(|_| bad())?,
                    last.parse().map_err(|_| bad())?,
                );
                if a.src_hosts.0 > a.src_hosts.1 {
                    return Err(bad());
                }
            }
            o => return Err(format!("unknown option '{o}'")),
        }
        i += 2;
    }
    Ok(a)
}

/// The `n`th frame's source: address, MAC.
fn source(a: &Args, n: u64) -> (Ipv4Address, EthernetAddress) {
    let span = u64::from(a.src_hosts.1 - a.src_hosts.0) + 1;
    let host = a.src_hosts.0 + (n % span) as u8;
    let [x, y, z] = a.src_net;
    (
        Ipv4Address::new(x, y, z, host),
        EthernetAddress([0x02, 0xee, 0, 0, 0, host]),
    )
}

/// The `n`th junk frame.
fn junk(a: &Args, n: u64, rng: &mut Rng) -> Vec<u8> {
    let (ip, mac) = source(a, n);
    let port = 1024 + (n % 60000) as u16;
    match n % 3 {
        0 => tcp_frame(
            mac,
            a.dst_mac,
            (ip, port),
            a.dst,
            Spoof::Ack,
            rng.next_u64() as u32,
        ),
        1 => {
            let mut f = vec![0u8; 60 + rng.below(1400) as usize];
            rng.fill(&mut f);
            f[..6].copy_from_slice(&a.dst_mac.0);
            f[6..12].copy_from_slice(&mac.0);
            f
        }
        _ => {
            // ARP request, broadcast, for a random on-link address.
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&mac.0);
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&mac.0);
            f.extend_from_slice(&ip.octets());
            f.extend_from_slice(&[0; 6]);
            let [x, y, z] = a.src_net;
            f.extend_from_slice(&[x, y, z, rng.below(256) as u8]);
            f.resize(60, 0);
            f
        }
    }
}

pub fn flood(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    let mut dev =
        RawSocket::new(&a.iface, Medium::Ethernet).map_err(|e| format!("{}: {e}", a.iface))?;
    let mut rng = Rng::new(0xf100d);
    let start = Instant::now();
    let end = start + Duration::from_secs(a.secs);
    let (mut syns, mut junks) = (0u64, 0u64);
    let due = |rate: u64, sent: u64| {
        (rate > 0).then(|| start + Duration::from_micros(sent * 1_000_000 / rate))
    };
    loop {
        let next = [due(a.syn_rate, syns), due(a.junk_rate, junks)];
        let Some(t) = next.iter().flatten().min().copied() else {
            break;
        };
        if t >= end {
            break;
        }
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
        let frame = if next[0] == Some(t) {
            let (ip, mac) = source(&a, syns);
            let port = 1024 + (syns % 60000) as u16;
            syns += 1;
            tcp_frame(
                mac,
                a.dst_mac,
                (ip, port),
                a.dst,
                Spoof::Syn,
                rng.next_u64() as u32,
            )
        } else {
            junks += 1;
            junk(&a, junks - 1, &mut rng)
        };
        let ts = smoltcp::time::Instant::from_micros(start.elapsed().as_micros() as i64);
        let tx = dev.transmit(ts).ok_or("raw socket: no TX token")?;
        tx.consume(frame.len(), |b| b.copy_from_slice(&frame));
    }
    println!(
        "flood: syn={syns} junk={junks} secs={:.1}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
