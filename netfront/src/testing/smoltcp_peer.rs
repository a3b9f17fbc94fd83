//! End to end through smoltcp: the guest's `Interface` runs on the driver, a
//! peer `Interface` (dom0's stack) runs on the fake netback (its TX is our
//! RX ring and vice versa), and real ICMP, UDP and TCP go between them.
//!
//! One harness, [`Net`], for every such test; what differs is dom0's side,
//! a [`PeerLink`]: [`PlainPeer`] sends one-slot frames as netback does
//! without offload, [`OffloadPeer`] sends like Linux through netback with
//! GSO and checksum offload (64 KiB GSO packets, `csum_blank` or
//! `data_validated` or unflagged frames).

use std::collections::VecDeque;
use std::vec;
use std::vec::Vec;

use core::num::NonZeroUsize;

use smoltcp::iface::{Config as IfConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

use super::harness::{H, PEER_MAC};
use super::netback::FakeNetback;
use crate::csum;
use crate::wire::{NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED};

/// The guest's address (`harness::GUEST_IP`).
pub const GUEST_ADDR: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
/// dom0's address (`harness::PEER_IP`).
pub const PEER_ADDR: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);

/// dom0's side: how the frames its stack sends reach the guest, and what its
/// stack is told it may do.
pub trait PeerLink {
    fn capabilities(&self) -> DeviceCapabilities;
    /// May the peer stack send now? (netback queues rather than drops while
    /// the guest posts too few RX buffers.)
    fn can_send(&self, _be: &mut FakeNetback) -> bool {
        true
    }
    /// Deliver one frame the peer stack built; `gso`: the segment size
    /// smoltcp gave it (a TSO frame).
    fn send(&mut self, be: &mut FakeNetback, frame: Vec<u8>, gso: Option<u16>);
}

/// dom0 without offload: one slot per frame, smoltcp checksums everything;
/// a frame for which no RX buffer is posted is dropped (and counted), as
/// netback would.
#[derive(Clone, Debug, Default)]
pub struct PlainPeer {
    pub dropped: u64,
}

impl PeerLink for PlainPeer {
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }

    fn send(&mut self, be: &mut FakeNetback, frame: Vec<u8>, _gso: Option<u16>) {
        if be.send_frame(&frame) {
            be.push_rx();
        } else {
            self.dropped += 1; // no RX buffer posted: netback would drop too
        }
    }
}

/// How dom0's TCP frames reach the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerCsum {
    /// Made in dom0: `csum_blank | data_validated`, pseudo-header sum.
    Partial,
    /// Checked by dom0 or its NIC: `data_validated`, full checksum.
    Validated,
    /// Nothing said: full checksum, the guest checks.
    Plain,
}

/// dom0 with offload, as Linux's stack sends through netback.
#[derive(Clone, Copy, Debug)]
pub struct OffloadPeer {
    /// dom0 sends TCP as GSO packets (up to 64 KiB).
    pub tso: bool,
    pub csum: PeerCsum,
}

/// Slots netback wants posted before it sends the largest packet.
const RX_NEEDED: u32 = 18;

impl PeerLink for OffloadPeer {
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        if self.tso {
            c.checksum.tcp = Checksum::None;
            c.segmentation.tcpv4 = NonZeroUsize::new(14 + 65535);
        } else if self.csum != PeerCsum::Partial {
            c.checksum.tcp = Checksum::None; // filled by send()
        }
        c
    }

    fn can_send(&self, be: &mut FakeNetback) -> bool {
        be.rx_requests_available() >= RX_NEEDED
    }

    fn send(&mut self, be: &mut FakeNetback, mut frame: Vec<u8>, gso: Option<u16>) {
        let mut flags = 0;
        if csum::ipv4_protocol(&frame) == Some(csum::PROTO_TCP) {
            match self.csum {
                // send_packet puts the pseudo-header sum in.
                PeerCsum::Partial => flags = NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
                PeerCsum::Validated => {
                    csum::fill_ipv4_l4_checksum(&mut frame).unwrap();
                    flags = NETRXF_DATA_VALIDATED;
                }
                PeerCsum::Plain => csum::fill_ipv4_l4_checksum(&mut frame).unwrap(),
            }
        }
        assert!(
            be.send_packet(&frame, gso, flags),
            "no rx slots although transmit() checked"
        );
        be.push_rx();
    }
}

/// dom0's side as a smoltcp device, for one poll.
struct PeerDev<'a, L> {
    be: &'a mut FakeNetback,
    /// Frames the guest sent, as dom0 sees them, not yet taken by its stack.
    inbox: &'a mut VecDeque<Vec<u8>>,
    link: &'a mut L,
}

struct PeerRx(Vec<u8>);
impl phy::RxToken for PeerRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct PeerTx<'a, L> {
    be: &'a mut FakeNetback,
    link: &'a mut L,
    gso: Option<u16>,
}

impl<L: PeerLink> phy::TxToken for PeerTx<'_, L> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.link.send(self.be, buf, self.gso);
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.gso = meta.segmentation_offload_size.map(|m| m.get());
    }
}

impl<L: PeerLink> phy::Device for PeerDev<'_, L> {
    type RxToken<'a>
        = PeerRx
    where
        Self: 'a;
    type TxToken<'a>
        = PeerTx<'a, L>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(PeerRx, PeerTx<'_, L>)> {
        if self.inbox.is_empty() {
            self.inbox.extend(self.be.service_tx());
        }
        if !self.link.can_send(self.be) {
            return None;
        }
        let f = self.inbox.pop_front()?;
        Some((
            PeerRx(f),
            PeerTx {
                be: self.be,
                link: self.link,
                gso: None,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<PeerTx<'_, L>> {
        if !self.link.can_send(self.be) {
            return None;
        }
        Some(PeerTx {
            be: self.be,
            link: self.link,
            gso: None,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.link.capabilities()
    }
}

/// The guest's stack on the driver and dom0's stack on the fake netback.
pub struct Net<L: PeerLink> {
    pub h: H,
    pub guest: Interface,
    pub guest_sockets: SocketSet<'static>,
    pub peer: Interface,
    pub peer_sockets: SocketSet<'static>,
    inbox: VecDeque<Vec<u8>>,
    pub link: L,
}

impl<L: PeerLink> Net<L> {
    /// Both stacks over `h`; the guest's Interface is created now (after
    /// the handshake if `h` is connected, so it gets the final capabilities).
    pub fn new(mut h: H, link: L) -> Self {
        let ts = h.ts();
        let guest = Interface::new(
            IfConfig::new(EthernetAddress(h.nf.mac()).into()),
            &mut h.nf,
            ts,
        );
        Net::with_guest(h, guest, link)
    }

    /// Both stacks, the guest's Interface already created on `h.nf`.
    pub fn with_guest(mut h: H, mut guest: Interface, mut link: L) -> Self {
        guest.update_ip_addrs(|a| a.push(IpCidr::new(GUEST_ADDR.into(), 24)).unwrap());
        let ts = h.ts();
        let mut inbox = VecDeque::new();
        let mut dev = PeerDev {
            be: &mut h.be,
            inbox: &mut inbox,
            link: &mut link,
        };
        let mut peer = Interface::new(
            IfConfig::new(EthernetAddress(PEER_MAC).into()),
            &mut dev,
            ts,
        );
        peer.update_ip_addrs(|a| a.push(IpCidr::new(PEER_ADDR.into(), 24)).unwrap());
        Net {
            h,
            guest,
            guest_sockets: SocketSet::new(vec![]),
            peer,
            peer_sockets: SocketSet::new(vec![]),
            inbox,
            link,
        }
    }

    /// One tick of the main loops on both sides.
    pub fn tick(&mut self) {
        self.h.step();
        let ts = self.h.ts();
        self.guest.poll(ts, &mut self.h.nf, &mut self.guest_sockets);
        let mut dev = PeerDev {
            be: &mut self.h.be,
            inbox: &mut self.inbox,
            link: &mut self.link,
        };
        self.peer.poll(ts, &mut dev, &mut self.peer_sockets);
    }

    /// A TCP connection peer -> guest:80 with `buf`-byte socket buffers;
    /// returns (guest socket, peer socket) once established.
    pub fn connect(&mut self, buf: usize) -> (SocketHandle, SocketHandle) {
        // No congestion control, whatever smoltcp's default: the default
        // follows its features, and cargo unifies those across the
        // workspace (the proxy enables `socket-tcp-reno`, whose 2 KiB
        // initial window would take several round trips for what these
        // tests expect in one).
        let mk = || {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; buf]),
                tcp::SocketBuffer::new(vec![0; buf]),
            );
            s.set_congestion_control(tcp::CongestionControl::None);
            s
        };
        let g = self.guest_sockets.add(mk());
        let p = self.peer_sockets.add(mk());
        self.guest_sockets
            .get_mut::<tcp::Socket>(g)
            .listen(80)
            .unwrap();
        let cx = self.peer.context();
        self.peer_sockets
            .get_mut::<tcp::Socket>(p)
            .connect(cx, (IpAddress::Ipv4(GUEST_ADDR), 80), 49152)
            .unwrap();
        for _ in 0..1000 {
            if self.guest_sockets.get::<tcp::Socket>(g).state() == tcp::State::Established
                && self.peer_sockets.get::<tcp::Socket>(p).state() == tcp::State::Established
            {
                return (g, p);
            }
            self.tick();
        }
        panic!(
            "no connection: {} / {:?} / {:?}",
            self.h.nf.stats(),
            self.h.be.seen,
            self.guest_sockets.get::<tcp::Socket>(g).state()
        );
    }
}
