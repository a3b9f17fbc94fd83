//! The driver under test: [`H`] holds a [`Netfront`] on the fake platform,
//! the fake netback, and a clock, and steps them in turn (the kernel's main
//! loop, with dom0 reacting in between); plus the frames the tests send and
//! the one pseudo-random generator they use.

use std::vec::Vec;

use smoltcp::phy::{Device, RxToken as _, TxToken as _};
use smoltcp::time::Instant;

use super::netback::{BackendSetup, FakeNetback};
use super::xen::{FakePlatform, World, MAC};
use crate::csum;
use crate::{Config, Event, Netfront, State};

/// The project's one seeded PRNG (crate `rng/`): garbage for the
/// hostile-backend tests, frame contents.
pub use miniproxy_rng::Rng;

pub struct H {
    pub world: World,
    pub be: FakeNetback,
    pub nf: Netfront<FakePlatform>,
    pub now: u64,
    pub events: Vec<Event>,
    /// Call `be.step()` in `step()` (false: a frozen backend).
    pub backend_alive: bool,
}

impl H {
    pub fn new(setup: BackendSetup, cfg: Config) -> H {
        let world = World::new();
        let be = FakeNetback::new(&world, setup);
        let nf = Netfront::new(
            FakePlatform {
                world: world.clone(),
            },
            cfg,
        )
        .unwrap();
        H {
            world,
            be,
            nf,
            now: 1000,
            events: Vec::new(),
            backend_alive: true,
        }
    }

    /// One round: frontend poll (draining events), backend reaction, 1 ms.
    pub fn step(&mut self) {
        while let Some(e) = self.nf.poll(self.now) {
            self.events.push(e);
        }
        if self.backend_alive {
            self.be.step();
        }
        self.now += 1;
    }

    pub fn step_until(&mut self, max: usize, mut cond: impl FnMut(&mut H) -> bool) -> bool {
        for _ in 0..max {
            if cond(self) {
                return true;
            }
            self.step();
        }
        cond(self)
    }

    pub fn connected(setup: BackendSetup, cfg: Config) -> H {
        let mut h = H::new(setup, cfg);
        assert!(
            h.step_until(100, |h| h.nf.is_connected() && h.be.is_connected()),
            "no connection: {:?}",
            h.events
        );
        h
    }

    /// Connected to a Debian-like netback with offload off: the driver's
    /// behaviour before offload mode existed, which the older tests pin.
    pub fn legacy_connected() -> H {
        H::connected(BackendSetup::default(), legacy())
    }

    /// Connected to a Debian-like netback with the default config (offload),
    /// and the capabilities read as smoltcp's `Interface::new` would.
    pub fn offload_connected() -> H {
        H::offload_with(Config::default())
    }

    pub fn offload_with(cfg: Config) -> H {
        let h = H::connected(BackendSetup::default(), cfg);
        assert!(h.nf.offload().is_on(), "{:?}", h.nf.offload());
        let _ = h.nf.capabilities();
        h
    }

    pub fn ts(&self) -> Instant {
        Instant::from_millis(self.now as i64)
    }

    /// Pull every frame smoltcp would get now.
    pub fn rx_all(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let ts = self.ts();
        while let Some((rx, _tx)) = self.nf.receive(ts) {
            rx.consume(|f| out.push(f.to_vec()));
        }
        out
    }

    /// Send one frame through a TxToken; false if no token.
    pub fn tx(&mut self, frame: &[u8]) -> bool {
        let ts = self.ts();
        match self.nf.transmit(ts) {
            Some(t) => {
                t.consume(frame.len(), |b| b.copy_from_slice(frame));
                true
            }
            None => false,
        }
    }

    /// Send one frame through a TxToken with smoltcp's segmentation
    /// metadata (`mss`: a TSO frame); false if no token.
    pub fn tx_meta(&mut self, frame: &[u8], mss: Option<u16>) -> bool {
        let ts = self.ts();
        match self.nf.transmit(ts) {
            Some(mut t) => {
                let mut meta = smoltcp::phy::PacketMeta::default();
                meta.segmentation_offload_size = mss.and_then(core::num::NonZeroU16::new);
                t.set_meta(meta);
                t.consume(frame.len(), |b| b.copy_from_slice(frame));
                true
            }
            None => false,
        }
    }

    pub fn has_event(&self, e: &Event) -> bool {
        self.events.contains(e)
    }

    /// Everything given back: no page, grant or port left.
    pub fn assert_all_released(&self) {
        assert_eq!(self.world.live_pages(), 0, "pages still allocated");
        assert_eq!(self.world.live_grants(), 0, "grants still active");
        assert_eq!(self.world.open_ports(), 0, "ports still open");
        assert_eq!(self.nf.state(), State::Disconnected);
    }
}

/// The default config with offload off.
pub fn legacy() -> Config {
    Config {
        offload: false,
        ..Default::default()
    }
}

/// A deterministic frame: Ethernet header to our MAC, then a pattern.
pub fn test_frame(seed: u32, len: usize) -> Vec<u8> {
    assert!(len >= 14);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    let mut rng = Rng::new(u64::from(seed));
    while f.len() < len {
        let take = (len - f.len()).min(8);
        f.extend_from_slice(&rng.next_u64().to_le_bytes()[..take]);
    }
    f
}

pub const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
pub const PEER_IP: [u8; 4] = [10, 0, 0, 1];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// An Ethernet/IPv4 frame around `l4` (protocol `proto`), with a valid IPv4
/// header checksum and DF set.
pub fn ipv4_frame(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    let (dst_mac, src_mac) = if dst == GUEST_IP {
        (MAC, PEER_MAC)
    } else {
        (PEER_MAC, MAC)
    };
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let mut acc: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    ip[10..12].copy_from_slice(&(!(acc as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

/// A TCP segment (ACK|PSH, ports 49152 -> 80 or back) with `payload_len`
/// pattern bytes and a complete checksum; `to_guest` picks the direction.
pub fn tcp_frame(seed: u32, payload_len: usize, to_guest: bool) -> Vec<u8> {
    let (src, dst) = if to_guest {
        (PEER_IP, GUEST_IP)
    } else {
        (GUEST_IP, PEER_IP)
    };
    let mut l4 = std::vec![0u8; 20];
    l4[0..2].copy_from_slice(&(if to_guest { 49152u16 } else { 80 }).to_be_bytes());
    l4[2..4].copy_from_slice(&(if to_guest { 80u16 } else { 49152 }).to_be_bytes());
    l4[4..8].copy_from_slice(&seed.wrapping_mul(7919).to_be_bytes());
    l4[8..12].copy_from_slice(&1u32.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = 0x18; // PSH|ACK
    l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let pat = test_frame(seed, 14 + payload_len);
    l4.extend_from_slice(&pat[14..]);
    let mut f = ipv4_frame(src, dst, 6, &l4);
    csum::fill_ipv4_l4_checksum(&mut f).unwrap();
    f
}

/// A UDP datagram with a complete checksum.
pub fn udp_frame(seed: u32, payload_len: usize, to_guest: bool) -> Vec<u8> {
    let (src, dst) = if to_guest {
        (PEER_IP, GUEST_IP)
    } else {
        (GUEST_IP, PEER_IP)
    };
    let mut l4 = std::vec![0u8; 8];
    l4[0..2].copy_from_slice(&5353u16.to_be_bytes());
    l4[2..4].copy_from_slice(&7u16.to_be_bytes());
    l4[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    let pat = test_frame(seed, 14 + payload_len);
    l4.extend_from_slice(&pat[14..]);
    let mut f = ipv4_frame(src, dst, 17, &l4);
    csum::fill_ipv4_l4_checksum(&mut f).unwrap();
    f
}

/// Sizes cycling through the interesting range 14..=1514.
pub fn size_for(i: u32) -> usize {
    match i % 7 {
        0 => 14,
        1 => 60,
        2 => 1514,
        3 => 1513,
        _ => 14 + (i as usize * 37) % 1500,
    }
}
