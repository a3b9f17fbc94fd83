//! A deterministic in-memory network for testing and benchmarking the engine
//! on the host (compiled for the crate's tests and with the `testing` feature
//! only). Its [`Rng`] is the one PRNG of the proxy's tests and tools.
//!
//! [`Net`] is an Ethernet switch with one [`Link`] per port (one-way delay,
//! random extra delay that reorders frames, loss, bandwidth, queue limit), all
//! driven by a seeded PRNG ([`Rng`]) and a virtual clock, so a run is exactly
//! repeatable and a 60 s idle timeout costs nothing. An optional [`Router`]
//! port forwards IPv4 between subnets by host routes, so transparent-mode
//! destinations can live "behind" a gateway; like a Linux neighbour table, a
//! route's MAC is updated by any ARP packet from its address (gratuitous ARP
//! included), and never created by one. [`Host`] is a plain smoltcp
//! endpoint (client or server) running scripted [`Flow`]s whose content is
//! checked byte for byte by the tests.
//!
//! **Offload mode** ([`Net::set_offload`]) makes one port behave like a Xen
//! netfront whose backend does TCP segmentation and checksum offload: its device
//! advertises TSO for frames up to [`TSO_MAX_FRAME`] and leaves TCP checksums
//! to the wire (`Checksum::Rx`); the wire cuts every oversized TCP frame it sends
//! into MSS-sized segments (the size smoltcp puts in `PacketMeta`), with the IP
//! length, ident and checksum, the TCP sequence number, flags and checksum of
//! each, as netback/Linux GSO would, and fills the checksum of the others. In
//! the other direction, consecutive in-order segments of one TCP flow queued
//! for that port are merged into one large frame (like Linux GRO: same ACK,
//! window and options; no SYN/RST/URG; a PSH or FIN ends the merge).
//!
//! Layout: `net` (switch, links, router, DHCP server), `offload` (the wire's
//! segmentation, checksums and merging for offload ports), `device` (the
//! smoltcp device of a port), `host` (scripted endpoints), `junk` (spoofed frames), `world` (engine and
//! hosts driven together); the PRNG and stream patterns are here.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::time::Duration;

use smoltcp::wire::EthernetAddress;

mod device;
mod host;
mod junk;
mod net;
mod offload;
mod world;

pub use device::{PortDevice, SimRx, SimTx};
pub use host::{Close, Flow, Host, Serve};
pub use junk::{tcp_frame, Spoof};
pub use net::{DhcpServer, Net, NetStats, PortStats, Router};
pub use world::World;

/// Largest frame (Ethernet header included) an offload port's device may send
/// or receive: Xen's `XEN_NETIF_MAX_TX_SIZE`.
pub const TSO_MAX_FRAME: usize = 0xFFFF;
/// Ethernet MTU of every port (frame without FCS).
pub const MTU_FRAME: usize = 1514;

/// The project's one seeded PRNG (SplitMix64, crate `rng/`).
pub use miniproxy_rng::Rng;

/// `len` pseudo-random bytes from `seed`: the content of a test stream.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    pattern_rng(seed).fill(&mut v);
    v
}

/// The generator of `pattern(seed, _)`: filling consecutive buffers whose
/// lengths are multiples of 8 from it gives the same bytes, piece by piece.
pub fn pattern_rng(seed: u64) -> Rng {
    Rng::new(seed ^ 0xA5A5_5A5A_1234_5678)
}

/// The link between one switch port and its device, used in both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra random delay, uniform in `0..=jitter`; frames may overtake each other.
    pub jitter: Duration,
    /// Probability that a frame is lost on this link.
    pub loss: f64,
    /// Bytes per second; 0 = unlimited.
    pub bandwidth: u64,
    /// Frames queued for serialization beyond which new ones are dropped.
    pub queue_limit: usize,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            bandwidth: 0,
            queue_limit: 1000,
        }
    }
}

impl Link {
    pub fn delay_ms(ms: u64) -> Link {
        Link {
            delay: Duration::from_millis(ms),
            ..Link::default()
        }
    }
}

/// A MAC address for test node `n`.
pub fn mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0, 0, 0, 0, n])
}
