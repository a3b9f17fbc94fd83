//! Gratuitous ARP when an address is set: the frame, how many and when, the
//! retry when the device is full, and peers with a stale entry (the
//! simulator's router updates its entries from ARP like Linux).

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    HardwareAddress, Ipv4Address, Ipv4Cidr,
};

use super::*;
use crate::sim::{Close, Host, Link, Net, Serve, World};

/// A device that records what is transmitted and never receives.
#[derive(Default)]
struct Recorder {
    sent: Vec<Vec<u8>>,
    /// TX tokens it still gives (`None`: any number).
    room: Option<usize>,
}

struct NoRx;
impl RxToken for NoRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&[])
    }
}

struct RecTx<'a>(&'a mut Vec<Vec<u8>>);
impl TxToken for RecTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for Recorder {
    type RxToken<'a> = NoRx;
    type TxToken<'a> = RecTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(NoRx, RecTx<'_>)> {
        None
    }

    fn transmit(&mut self, _: Instant) -> Option<RecTx<'_>> {
        match &mut self.room {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        Some(RecTx(&mut self.sent))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

fn ms(n: i64) -> Instant {
    Instant::from_millis(n)
}

fn engine(line: &str, dev: &mut Recorder) -> Engine {
    let cfg = Config::parse(line).unwrap();
    Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        1,
        64 << 20,
        dev,
        ms(0),
    )
    .unwrap()
}

/// The exact bytes of the announcement of `ip` by `mac(2)`.
fn garp_bytes(ip: Ipv4Address) -> Vec<u8> {
    let mut f = vec![0xff; 6]; // to everyone
    f.extend_from_slice(&mac(2).0); // from us
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]); // Ethernet, IPv4, 6, 4
    f.extend_from_slice(&[0, 1]); // request
    f.extend_from_slice(&mac(2).0); // sender MAC: ours
    f.extend_from_slice(&ip.octets()); // sender IP: ours
    f.extend_from_slice(&[0; 6]); // target MAC: zero
    f.extend_from_slice(&ip.octets()); // target IP: ours too
    f
}

/// Frames sent since `from`, all of which must be announcements of `ip`.
#[track_caller]
fn announcements(dev: &Recorder, from: usize, ip: Ipv4Address) -> usize {
    for f in &dev.sent[from..] {
        assert_eq!(*f, garp_bytes(ip));
    }
    dev.sent.len() - from
}

#[test]
fn frame_is_a_gratuitous_arp_request() {
    let mut dev = Recorder::default();
    let mut e = engine("ip=10.0.0.2/24 rule=reverse:80:10.0.0.20:8080", &mut dev);
    e.poll(ms(0), &mut dev);
    assert_eq!(dev.sent.len(), 1);
    let f = &dev.sent[0];
    assert_eq!(*f, garp_bytes(PROXY));
    // And as smoltcp's wire types read it.
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
    assert_eq!(eth.src_addr(), mac(2));
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    assert_eq!(
        arp,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: mac(2),
            source_protocol_addr: PROXY,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: PROXY,
        }
    );
}

#[test]
fn three_announcements_a_second_apart_then_none() {
    // Reverse and transparent (any-ip: the engine's ARP filter wraps the device).
    for rule in ["rule=reverse:80:10.0.0.20:8080", "rule=transparent:80"] {
        let mut dev = Recorder::default();
        let mut e = engine(&format!("ip=10.0.0.2/24 gw=10.0.0.1 {rule}"), &mut dev);
        let mut at = Vec::new();
        let mut t = 0;
        // Follow poll_delay as a main loop would, for 10 s.
        while t <= 10_000 {
            let before = dev.sent.len();
            e.poll(ms(t), &mut dev);
            if announcements(&dev, before, PROXY) > 0 {
                at.push(t);
            }
            match e.poll_delay(ms(t)) {
                Some(d) => t += (d.total_millis() as i64).max(1),
                None => break,
            }
        }
        assert_eq!(at, vec![0, 1000, 2000], "{rule}");
        assert_eq!(e.poll_delay(ms(t)), None, "{rule}: nothing left to do");
        // Polls in between and later send nothing.
        for t in [2500, 3000, 60_000] {
            e.poll(ms(t), &mut dev);
        }
        assert_eq!(dev.sent.len(), 3, "{rule}");
        assert_eq!(e.stats().garp, 3);
        assert!(
            e.stats().to_string().contains(" px_garp=3 "),
            "{}",
            e.stats()
        );
    }
}

#[test]
fn no_announcement_without_an_address() {
    let mut dev = Recorder::default();
    let mut e = engine("ip=dhcp rule=reverse:80:10.0.0.20:8080", &mut dev);
    for t in (0..5000).step_by(100) {
        e.poll(ms(t), &mut dev);
    }
    assert!(dev.sent.is_empty());
    assert_eq!(e.poll_delay(ms(5000)), None);
    assert_eq!(e.stats().garp, 0);
    // Set by hand: announced at the next poll...
    e.set_ipv4(Ipv4Cidr::new(PROXY, 24), None).unwrap();
    e.poll(ms(5000), &mut dev);
    assert_eq!(announcements(&dev, 0, PROXY), 1);
    assert_eq!(e.poll_delay(ms(5000)), Some(secs(1)));
    // ...but not once the address is gone again.
    e.clear_ipv4();
    assert_eq!(e.poll_delay(ms(5000)), None);
    for t in (5000..10_000).step_by(100) {
        e.poll(ms(t), &mut dev);
    }
    assert_eq!(dev.sent.len(), 1);
    // A new address starts over; setting the same one again (a new gateway)
    // does not.
    let other = Ipv4Address::new(10, 0, 0, 3);
    e.set_ipv4(Ipv4Cidr::new(other, 24), None).unwrap();
    e.set_ipv4(Ipv4Cidr::new(other, 24), Some(ROUTER)).unwrap();
    for t in (10_000..15_000).step_by(100) {
        e.poll(ms(t), &mut dev);
    }
    assert_eq!(announcements(&dev, 1, other), 3);
    e.set_ipv4(Ipv4Cidr::new(other, 24), None).unwrap();
    e.poll(ms(20_000), &mut dev);
    assert_eq!(dev.sent.len(), 4);
    assert_eq!(e.stats().garp, 4);
}

#[test]
fn retried_when_the_device_has_no_room() {
    let mut dev = Recorder {
        room: Some(0),
        ..Recorder::default()
    };
    let mut e = engine("ip=10.0.0.2/24 rule=reverse:80:10.0.0.20:8080", &mut dev);
    e.poll(ms(0), &mut dev);
    assert!(dev.sent.is_empty());
    // Soon again, not at once (no busy loop while the device is full).
    assert_eq!(e.poll_delay(ms(0)), Some(Duration::from_millis(10)));
    e.poll(ms(3), &mut dev);
    assert!(dev.sent.is_empty());
    // The next poll with room sends it, even before that deadline...
    dev.room = None;
    e.poll(ms(4), &mut dev);
    assert_eq!(announcements(&dev, 0, PROXY), 1);
    // ...and the next ones follow a second apart from there.
    assert_eq!(e.poll_delay(ms(4)), Some(secs(1)));
    for t in (5..5000).step_by(1) {
        e.poll(ms(t), &mut dev);
    }
    assert_eq!(announcements(&dev, 0, PROXY), 3);
}

/// Reverse proxy 10.0.0.2:80 -> server 10.0.1.20:8080, the server and the
/// client 10.0.1.10 behind the router (10.0.0.1 / 10.0.1.1), whose entry for
/// 10.0.0.2 still has the MAC of the instance that held the address before
/// (mac 99, gone). The proxy is created but not polled yet. (Both peers behind
/// the router: the proxy needs one ARP resolution, the router's, and smoltcp
/// sends at most one ARP request a second.)
const FAR_SERVER: Ipv4Address = Ipv4Address::new(10, 0, 1, 20);

fn stale_world(proxy_line: &str, dhcp: bool) -> World {
    let cfg = Config::parse(proxy_line).unwrap();
    let mut net = Net::new(7);
    net.capture = true;
    let pp = net.add_port(Link::delay_ms(1));
    let now = net.now();
    let mut proxy = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        7,
        64 << 20,
        &mut net.port(pp),
        now,
    )
    .unwrap();
    if dhcp {
        proxy.start_dhcp();
        net.add_dhcp_server(
            mac(50),
            Ipv4Address::new(10, 0, 0, 50),
            PROXY,
            24,
            Some(ROUTER),
            600,
            Link::delay_ms(1),
        );
    }
    let far = Ipv4Address::new(10, 0, 1, 10);
    let far_gw = Ipv4Address::new(10, 0, 1, 1);
    net.add_router(mac(1), &[ROUTER, far_gw], Link::delay_ms(1));
    net.route_host(PROXY, mac(99));
    net.route_host(far, mac(10));
    net.route_host(FAR_SERVER, mac(20));
    let cp = net.add_port(Link::delay_ms(1));
    let client = Host::new(&mut net, cp, 10, Ipv4Cidr::new(far, 24), Some(far_gw), 8192);
    let sp = net.add_port(Link::delay_ms(1));
    let mut server = Host::new(
        &mut net,
        sp,
        20,
        Ipv4Cidr::new(FAR_SERVER, 24),
        Some(far_gw),
        8192,
    );
    server.listen(8080, 4, Serve::Echo);
    World {
        net,
        proxy,
        proxy_port: pp,
        hosts: vec![client, server],
        proxy_polls: 0,
        clock: None,
        proxy_nanos: 0,
    }
}

/// Times of the announcements of `ip` the proxy put on the wire.
fn wire_announcements(w: &World, ip: Ipv4Address) -> Vec<Instant> {
    let want = garp_bytes(ip);
    w.net
        .captured
        .iter()
        .filter(|(_, port, f)| *port == w.proxy_port && *f == want)
        .map(|(t, ..)| *t)
        .collect()
}

/// ARP frames from the proxy that are not announcements of `ip`.
fn other_proxy_arp(w: &World, ip: Ipv4Address) -> usize {
    let want = garp_bytes(ip);
    w.net
        .captured
        .iter()
        .filter(|(_, port, f)| {
            *port == w.proxy_port
                && *f != want
                && EthernetFrame::new_checked(&f[..])
                    .is_ok_and(|e| e.ethertype() == EthernetProtocol::Arp)
        })
        .count()
}

#[test]
fn peer_with_a_stale_entry_reaches_the_new_instance_at_once() {
    let mut w = stale_world(
        "ip=10.0.0.2/24 gw=10.0.0.1 rule=reverse:80:10.0.1.20:8080 buf=8k",
        false,
    );
    assert_eq!(w.net.router_neighbor(PROXY), Some(mac(99)));
    let t0 = w.now();
    let f = w.hosts[0].connect((PROXY, 80), b"hello again".to_vec(), Close::AfterSend, t0);
    // 1 ms links: a few round trips, nothing waits for an ARP entry to expire.
    assert!(
        w.run_until(Duration::from_millis(50), |w| w.hosts[0].flows[f].done),
        "{:?} router has {:?}",
        flow_summary(&w.hosts[0], f),
        w.net.router_neighbor(PROXY)
    );
    let c = &w.hosts[0].flows[f];
    assert!(c.established && !c.reset && c.fin);
    assert_bytes(&c.received, b"hello again", "echo");
    assert_eq!(w.net.router_neighbor(PROXY), Some(mac(2)));
    // The first announcement left at once; three in all, a second apart.
    w.run_for(secs(10));
    let at = wire_announcements(&w, PROXY);
    assert_eq!(
        at.iter()
            .map(|t| (*t - t0).total_millis())
            .collect::<Vec<_>>(),
        vec![0, 1000, 2000]
    );
    assert_eq!(w.proxy.stats().garp, 3);
}

#[test]
fn announced_when_dhcp_binds() {
    let mut w = stale_world("ip=dhcp rule=reverse:80:10.0.1.20:8080 buf=8k", true);
    assert_eq!(w.net.router_neighbor(PROXY), Some(mac(99)));
    assert!(w.run_until(secs(30), |w| w.proxy.ipv4().is_some()));
    assert_eq!(w.proxy.ipv4(), Some(Ipv4Cidr::new(PROXY, 24)));
    let bound = w.now();
    // Nothing announced before the lease, the first in the poll that bound it.
    let at = wire_announcements(&w, PROXY);
    assert_eq!(at, vec![bound]);
    assert_eq!(other_proxy_arp(&w, PROXY), 0);
    // (Still on its way to the router.)
    assert_eq!(w.net.router_neighbor(PROXY), Some(mac(99)));
    w.run_for(Duration::from_millis(5));
    assert_eq!(w.net.router_neighbor(PROXY), Some(mac(2)));
    let t = w.now();
    let f = w.hosts[0].connect((PROXY, 80), b"leased".to_vec(), Close::AfterSend, t);
    assert!(w.run_until(Duration::from_millis(50), |w| w.hosts[0].flows[f].done));
    assert_bytes(&w.hosts[0].flows[f].received, b"leased", "echo");
    w.run_for(secs(10));
    let at = wire_announcements(&w, PROXY);
    assert_eq!(
        at.iter()
            .map(|t| (*t - bound).total_millis())
            .collect::<Vec<_>>(),
        vec![0, 1000, 2000]
    );
}

#[test]
fn announced_again_when_the_link_comes_back() {
    let mut w = stale_world(
        "ip=10.0.0.2/24 gw=10.0.0.1 rule=reverse:80:10.0.1.20:8080 buf=8k",
        false,
    );
    w.run_for(secs(5));
    assert_eq!(wire_announcements(&w, PROXY).len(), 3);
    assert_eq!(w.net.router_neighbor(PROXY), Some(mac(2)));
    // While the vif was detached, another MAC took the address over in the
    // router's table; the vif comes back with the same MAC.
    w.net.route_host(PROXY, mac(99));
    let t0 = w.now();
    w.proxy.link_up(mac(2), t0).unwrap();
    let f = w.hosts[0].connect((PROXY, 80), b"back again".to_vec(), Close::AfterSend, t0);
    assert!(w.run_until(Duration::from_millis(50), |w| w.hosts[0].flows[f].done));
    assert_bytes(&w.hosts[0].flows[f].received, b"back again", "echo");
    assert_eq!(w.net.router_neighbor(PROXY), Some(mac(2)));
    w.run_for(secs(10));
    let again: Vec<_> = wire_announcements(&w, PROXY)[3..]
        .iter()
        .map(|t| (*t - t0).total_millis())
        .collect();
    assert_eq!(again, vec![0, 1000, 2000]);
    assert_eq!(w.proxy.stats().garp, 6);
}

#[test]
fn a_new_mac_after_the_link_comes_back_is_used_and_announced() {
    let mut dev = Recorder::default();
    let mut e = engine("ip=10.0.0.2/24 rule=reverse:80:10.0.0.20:8080", &mut dev);
    for t in (0..5000).step_by(100) {
        e.poll(ms(t), &mut dev);
    }
    assert_eq!(dev.sent.len(), 3);
    assert!(e.link_up(EthernetAddress::BROADCAST, ms(5000)).is_err());
    let new = mac(7);
    e.link_up(new, ms(5000)).unwrap();
    assert_eq!(
        e.interface().hardware_addr(),
        HardwareAddress::Ethernet(new)
    );
    for t in (5000..10_000).step_by(100) {
        e.poll(ms(t), &mut dev);
    }
    assert_eq!(dev.sent.len(), 6);
    // The same announcement, from the new MAC (Ethernet source and ARP sender).
    let mut want = garp_bytes(PROXY);
    want[6..12].copy_from_slice(&new.0);
    want[22..28].copy_from_slice(&new.0);
    for f in &dev.sent[3..] {
        assert_eq!(*f, want);
    }
    // Without an address there is nothing to announce.
    let mut dev = Recorder::default();
    let mut e = engine("ip=dhcp rule=reverse:80:10.0.0.20:8080", &mut dev);
    e.link_up(new, ms(0)).unwrap();
    for t in (0..5000).step_by(100) {
        e.poll(ms(t), &mut dev);
    }
    assert!(dev.sent.is_empty());
}
