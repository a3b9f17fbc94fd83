//! The instance's own IPv4 address: how it is set (static, by hand, or by
//! smoltcp's DHCP client run inside the engine's polls), how it is announced
//! (gratuitous ARP) and how it is kept to itself (the [`ArpGuard`]).
//!
//! **Announcements.** When an address is set the engine broadcasts
//! gratuitous ARP three times, a second apart, from its own polls: an
//! instance restarted on an address another MAC held a moment ago is
//! reachable at once, not when the peers' ARP entries expire.

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, PacketMeta, RxToken, TxToken};
use smoltcp::socket::dhcpv4;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress,
    IpCidr, IpListenEndpoint, Ipv4Address, Ipv4Cidr,
};

use super::plan::EngineError;
use crate::config::{Rule, RuleKind};

/// Gratuitous ARP announcements sent when an address is set, `GARP_INTERVAL`
/// apart. More than one because an announcement is a broadcast nobody
/// acknowledges: a single lost frame (an instance's first frames race the
/// hotplug script attaching its vif to the bridge; a busy dom0 or bridge
/// drops) would leave peers sending to the MAC that held the address before,
/// until their ARP entries expire (minutes on Linux). Three over two seconds
/// ride out such start-up loss, as RFC 5227's announcements (two, 2 s apart)
/// and `arping -U -c 3` do; then they stop: a notification, not a keep-alive.
const GARP_COUNT: u8 = 3;
const GARP_INTERVAL: Duration = Duration::from_secs(1);
/// When the device had no room for an announcement: retried at the next
/// poll, and `poll_delay` asks for one this soon so it does not wait long.
const GARP_RETRY: Duration = Duration::from_millis(10);

/// What the DHCP client learnt.
pub(super) enum Lease {
    /// An address and maybe a router to apply.
    Got(Ipv4Cidr, Option<Ipv4Address>),
    /// The lease is lost: remove the address.
    Lost,
}

/// The address state of an engine. See the module documentation.
#[derive(Debug)]
pub(super) struct Address {
    /// Some rule is transparent: the interface takes every destination.
    any_ip: bool,
    /// The interface's MAC address.
    mac: EthernetAddress,
    own: Option<Ipv4Address>,
    /// Gratuitous ARP announcements of `own` still to send, when the
    /// next is due, and whether the device had no room for the last try (then
    /// the next poll retries, whenever it comes).
    garp_left: u8,
    garp_at: Instant,
    garp_retry: bool,
    /// The DHCP client, with `ip=dhcp`.
    dhcp: Option<SocketHandle>,
}

fn assignable(a: Ipv4Address) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

impl Address {
    /// No address yet.
    pub(super) fn new(any_ip: bool, mac: EthernetAddress, now: Instant) -> Address {
        Address {
            any_ip,
            mac,
            own: None,
            garp_left: 0,
            garp_at: now,
            garp_retry: false,
            dhcp: None,
        }
    }

    /// The instance's own address, if it has one.
    pub(super) fn own(&self) -> Option<Ipv4Address> {
        self.own
    }

    /// Whether the interface takes every destination (a transparent rule).
    pub(super) fn any_ip(&self) -> bool {
        self.any_ip
    }

    /// Assign `cidr` and the default gateway `gw` on `iface` (replacing any
    /// previous ones); a new address is scheduled for announcement from
    /// `now`. Returns whether the address changed (listening sockets bound to
    /// the old one must then be re-created).
    pub(super) fn set(
        &mut self,
        iface: &mut Interface,
        cidr: Ipv4Cidr,
        gw: Option<Ipv4Address>,
        now: Instant,
    ) -> Result<bool, EngineError> {
        let a = cidr.address();
        if !assignable(a) {
            return Err(EngineError::BadAddress(a));
        }
        if let Some(g) = gw {
            if !assignable(g) {
                return Err(EngineError::BadAddress(g));
            }
        }
        iface.update_ip_addrs(|addrs| {
            addrs.clear();
            // Capacity is at least 1, so this cannot fail after clear().
            let _ = addrs.push(IpCidr::Ipv4(cidr));
        });
        let routes = iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some(g) = gw {
            // The table was just emptied of its default route, so this fits.
            let _ = routes.add_default_ipv4_route(g);
        }
        let changed = self.own != Some(a);
        self.own = Some(a);
        if changed {
            self.garp_left = GARP_COUNT;
            self.garp_at = now;
            self.garp_retry = false;
        }
        Ok(changed)
    }

    /// The link came back with `mac` (which may be new): announce the
    /// address again from `now`, as when it was set.
    pub(super) fn relink(&mut self, mac: EthernetAddress, now: Instant) {
        self.mac = mac;
        if self.own.is_some() {
            self.garp_left = GARP_COUNT;
            self.garp_at = now;
            self.garp_retry = false;
        }
    }

    /// Remove the address and default route from `iface`.
    pub(super) fn clear(&mut self, iface: &mut Interface) {
        iface.update_ip_addrs(|addrs| addrs.clear());
        iface.routes_mut().remove_default_ipv4_route();
        self.own = None;
        self.garp_left = 0;
    }

    /// Add the DHCP client to `set` unless it runs already. Returns whether
    /// it was added.
    pub(super) fn start_dhcp(&mut self, set: &mut SocketSet<'static>) -> bool {
        if self.dhcp.is_some() {
            return false;
        }
        self.dhcp = Some(set.add(dhcpv4::Socket::new()));
        true
    }

    /// Whether the DHCP client runs.
    pub(super) fn uses_dhcp(&self) -> bool {
        self.dhcp.is_some()
    }

    /// What the DHCP client learnt since the last call, if anything.
    pub(super) fn dhcp_event(&mut self, set: &mut SocketSet<'static>) -> Option<Lease> {
        let h = self.dhcp?;
        match set.get_mut::<dhcpv4::Socket>(h).poll()? {
            dhcpv4::Event::Configured(c) => Some(Lease::Got(c.address, c.router)),
            dhcpv4::Event::Deconfigured => Some(Lease::Lost),
        }
    }

    /// Where `rule`'s listening sockets listen. `None` while a rule cannot
    /// listen yet (a reverse rule with any-ip on and no address).
    pub(super) fn listen_endpoint(&self, rule: &Rule) -> Option<IpListenEndpoint> {
        match rule.kind {
            RuleKind::Transparent => Some(IpListenEndpoint {
                addr: None,
                port: rule.listen_port,
            }),
            // With any-ip on, a reverse rule must only take connections to our
            // own address, not transit traffic to the same port.
            RuleKind::Reverse { .. } if self.any_ip => Some(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(self.own?)),
                port: rule.listen_port,
            }),
            RuleKind::Reverse { .. } => Some(IpListenEndpoint {
                addr: None,
                port: rule.listen_port,
            }),
        }
    }

    /// Send the gratuitous ARP announcement that is due, if any. Returns
    /// whether one was sent.
    pub(super) fn announce<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> bool {
        if self.garp_left == 0 || !(self.garp_retry || now >= self.garp_at) {
            return false;
        }
        let Some(ip) = self.own else {
            self.garp_left = 0;
            return false;
        };
        let Some(tx) = device.transmit(now) else {
            self.garp_retry = true;
            self.garp_at = now + GARP_RETRY;
            return false;
        };
        let arp = gratuitous_arp(self.mac, ip);
        tx.consume(14 + arp.buffer_len(), |buf| {
            let mut frame = EthernetFrame::new_unchecked(buf);
            frame.set_dst_addr(EthernetAddress::BROADCAST);
            frame.set_src_addr(self.mac);
            frame.set_ethertype(EthernetProtocol::Arp);
            arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        });
        self.garp_left -= 1;
        self.garp_at = now + GARP_INTERVAL;
        self.garp_retry = false;
        log::debug!("proxy: gratuitous ARP for {ip}");
        true
    }

    /// When the next announcement is due, if one is.
    pub(super) fn announce_at(&self) -> Option<Instant> {
        (self.garp_left > 0).then_some(self.garp_at)
    }
}

/// The gratuitous ARP announcement of `ip` by `mac`: a request with sender
/// and target IP both `ip` and a zero target MAC (sent to the broadcast
/// address), as Linux sends for `arp_notify` and `arping -U`. Linux peers
/// update an existing entry for `ip` from it (they do not create one).
pub(super) fn gratuitous_arp(mac: EthernetAddress, ip: Ipv4Address) -> ArpRepr {
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ip,
    }
}

/// With any-ip on, smoltcp answers ARP for every address; on a shared segment
/// that would steal other hosts' addresses. This wrapper hides ARP packets whose
/// target is not the instance's own address.
pub(super) struct ArpGuard<'d, D: Device + ?Sized> {
    pub(super) inner: &'d mut D,
    pub(super) own: Option<Ipv4Address>,
}

pub(super) struct GuardRx<R> {
    inner: R,
    own: Option<Ipv4Address>,
}

fn foreign_arp(frame: &[u8], own: Option<Ipv4Address>) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Arp {
        return false;
    }
    let Ok(pkt) = ArpPacket::new_checked(eth.payload()) else {
        return false;
    };
    match ArpRepr::parse(&pkt) {
        Ok(ArpRepr::EthernetIpv4 {
            target_protocol_addr,
            ..
        }) => Some(target_protocol_addr) != own,
        _ => false,
    }
}

impl<R: RxToken> RxToken for GuardRx<R> {
    fn consume<T, F>(self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        let own = self.own;
        self.inner.consume(|frame| {
            if foreign_arp(frame, own) {
                f(&[])
            } else {
                f(frame)
            }
        })
    }

    fn meta(&self) -> PacketMeta {
        self.inner.meta()
    }
}

impl<'d, D: Device + ?Sized> Device for ArpGuard<'d, D> {
    type RxToken<'a>
        = GuardRx<D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = D::TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let own = self.own;
        self.inner
            .receive(timestamp)
            .map(|(rx, tx)| (GuardRx { inner: rx, own }, tx))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.inner.transmit(timestamp)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}
