//! A hand-driven upstream peer: its segments are built here and injected
//! from a port of their own, so that a test can send what no well-behaved
//! stack in the simulator would (finding 3 of issue 13, the busy loop).

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::*;

/// The hand-driven peer's MAC (it takes SERVER's address).
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0x99, 0, 0, 0, 20]);

/// An Ethernet frame from the hand-driven peer (SERVER:8080) to the proxy.
fn peer_segment(tcp: &TcpRepr) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: SERVER,
        dst_addr: PROXY,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let caps = ChecksumCapabilities::default();
    let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_src_addr(PEER_MAC);
    eth.set_dst_addr(mac(2));
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut ipp = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ipp, &caps);
    let mut tp = TcpPacket::new_unchecked(ipp.payload_mut());
    tcp.emit(
        &mut tp,
        &IpAddress::Ipv4(SERVER),
        &IpAddress::Ipv4(PROXY),
        &caps,
    );
    buf
}

/// The peer's ARP reply telling the proxy where SERVER is.
fn peer_arp_reply() -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: PEER_MAC,
        source_protocol_addr: SERVER,
        target_hardware_addr: mac(2),
        target_protocol_addr: PROXY,
    };
    let mut buf = vec![0u8; 14 + arp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_src_addr(PEER_MAC);
    eth.set_dst_addr(mac(2));
    eth.set_ethertype(EthernetProtocol::Arp);
    arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    buf
}

/// The TCP segments the proxy sent to SERVER so far (from the capture),
/// without their payload, and the sequence number after each.
fn to_peer(w: &World) -> Vec<(TcpRepr<'static>, TcpSeqNumber)> {
    let caps = ChecksumCapabilities::default();
    let mut out = Vec::new();
    for (_, port, frame) in &w.net.captured {
        if *port != w.proxy_port {
            continue;
        }
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            continue;
        };
        let Ok(ipp) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        let Ok(ip) = Ipv4Repr::parse(&ipp, &caps) else {
            continue;
        };
        if ip.dst_addr != SERVER || ip.next_header != IpProtocol::Tcp {
            continue;
        }
        let Ok(tp) = TcpPacket::new_checked(ipp.payload()) else {
            continue;
        };
        let Ok(t) = TcpRepr::parse(
            &tp,
            &IpAddress::Ipv4(ip.src_addr),
            &IpAddress::Ipv4(ip.dst_addr),
            &caps,
        ) else {
            continue;
        };
        let end = t.seq_number + t.segment_len();
        out.push((
            TcpRepr {
                payload: &[],
                sack_ranges: [None; 3],
                ..t
            },
            end,
        ));
    }
    out
}

/// A reverse world whose upstream (SERVER:8080) is played by hand: the real
/// server never hears or says anything, a port of its own answers for
/// SERVER. A client connects, sends "hello" and closes. Returns the world,
/// the peer's port, the client's flow and the proxy's SYN to the peer.
fn hand_driven_upstream() -> (World, usize, usize, TcpRepr<'static>) {
    let mut w = reverse_world(Setup {
        server_link: Link {
            loss: 1.0,
            ..Link::default()
        },
        serve: Serve::Silent,
        ..Setup::default()
    });
    let peer = w.net.add_spoof_port();
    w.net.inject(peer, peer_arp_reply());
    w.net.capture = true;
    let f = client_connect(&mut w, b"hello".to_vec(), Close::AfterSend);
    assert!(w.run_until(secs(2), |w| to_peer(w)
        .iter()
        .any(|(t, _)| t.control == TcpControl::Syn)));
    let syn = to_peer(&w)[0].0;
    (w, peer, f, syn)
}

/// Finding 3 of issue 13 at its cause. The upstream peer takes part of the
/// data with a zero window (the proxy's upstream socket starts its
/// zero-window probe timer), then acknowledges the rest and the FIN, its
/// window still zero: FIN-WAIT-2, while the client side is in CLOSE-WAIT;
/// then both peers fall silent. Before vendored smoltcp patch 18 the probe
/// timer stayed armed in FIN-WAIT-2: every dispatch sent an empty ACK for it
/// without rewinding it, so `Interface::poll_at` stayed at the expired
/// deadline and every poll sent some 4 000 ACKs and asked to be polled again
/// at once (the engine's backoff does not apply: each poll did send
/// something), for as long as the peer's ARP entry lived (60 s); the finding
/// saw `poll_at` 18.5 s in the past. Now the timer stops with nothing left
/// to probe with, and the connection ends by keep-alive and user timeout.
#[test]
fn fin_wait_2_with_a_zero_window_does_not_busy_loop() {
    let (mut w, peer, f, syn) = hand_driven_upstream();
    let isn = syn.seq_number;
    let peer_seq = TcpSeqNumber(77_000);
    let from_peer = |control, seq: TcpSeqNumber, ack: TcpSeqNumber, window_len| TcpRepr {
        src_port: 8080,
        dst_port: syn.src_port,
        control,
        seq_number: seq,
        ack_number: Some(ack),
        window_len,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    w.net.inject(
        peer,
        peer_segment(&from_peer(TcpControl::Syn, peer_seq, isn + 1, 1024)),
    );
    // The proxy sends "hello" and, the client having closed, its FIN.
    assert!(
        w.run_until(secs(2), |w| to_peer(w)
            .iter()
            .any(|(t, _)| t.control == TcpControl::Fin)),
        "no FIN to the peer"
    );
    // SYN, "hello", FIN.
    let sent = to_peer(&w).iter().map(|(_, end)| *end - isn).max();
    assert_eq!(sent, Some(1 + 5 + 1));
    // "hel" taken, window closed: the probe timer starts ("lo" and the FIN
    // are unacknowledged).
    w.net.inject(
        peer,
        peer_segment(&from_peer(TcpControl::None, peer_seq + 1, isn + 4, 0)),
    );
    w.run_for(Duration::from_millis(5));
    // Everything taken, FIN included, the window still zero: FIN-WAIT-2.
    w.net.inject(
        peer,
        peer_segment(&from_peer(TcpControl::None, peer_seq + 1, isn + 7, 0)),
    );
    w.run_for(Duration::from_millis(5));
    assert!(!w.hosts[0].flows[f].reset);
    assert_eq!(w.proxy.stats().active, 1);
    w.net.capture = false;
    w.net.captured.clear();
    // The client falls silent too (its side of the proxy is in CLOSE-WAIT).
    w.net.set_link(
        1,
        Link {
            loss: 1.0,
            ..Link::default()
        },
    );
    let before = w.net.port_stats(w.proxy_port).tx_frames;
    let (longest, stale) = hostile::longest_runs(&mut w, secs(400), 5_000);
    let frames = w.net.port_stats(w.proxy_port).tx_frames - before;
    assert!(
        longest < 100,
        "{longest} polls in a row with nothing to receive were told to poll again at once"
    );
    assert!(
        stale <= 2,
        "smoltcp's poll_at stayed in the past for {stale} polls"
    );
    // Keep-alives, ARP requests once a second once the entries expired, the
    // RSTs of the user timeout: a few hundred frames at most in 400 s.
    assert!(frames < 1_000, "{frames} frames sent to silent peers");
    assert_eq!(w.proxy.stats().active, 0, "not ended");
}

/// A Linux peer answers a segment that reaches it after its socket closed
/// with an RST: after a passive close (LAST-ACK, then CLOSED on the proxy's
/// ACK of its FIN), a second ACK from the proxy (a duplicate, or a window
/// update) is answered so. Seen under Xen (tests/xen/40-operator.sh, 1 of
/// 20 echoes): the upstream sent its last data and FIN, the proxy
/// acknowledged them twice, and the RST came back before the engine's next
/// step. The upstream socket went TIME-WAIT and then CLOSED in one poll; the
/// engine, never having seen the FIN, counted an upstream reset and reset
/// the client, whose last 16 KB were lost, though the upstream had sent all
/// of it and closed cleanly. Here the peer's data, FIN and RST arrive
/// together.
#[test]
fn an_rst_after_the_peers_fin_loses_nothing() {
    let (mut w, peer, f, syn) = hand_driven_upstream();
    let isn = syn.seq_number;
    let peer_seq = TcpSeqNumber(91_000);
    let from_peer =
        |control, seq: TcpSeqNumber, ack: TcpSeqNumber, payload: &'static [u8]| TcpRepr {
            src_port: 8080,
            dst_port: syn.src_port,
            control,
            seq_number: seq,
            ack_number: Some(ack),
            window_len: 8192,
            window_scale: None,
            max_seg_size: (control == TcpControl::Syn).then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
    w.net.inject(
        peer,
        peer_segment(&from_peer(TcpControl::Syn, peer_seq, isn + 1, b"")),
    );
    // "hello" and, the client having closed, the proxy's FIN.
    assert!(
        w.run_until(secs(2), |w| to_peer(w)
            .iter()
            .any(|(t, _)| t.control == TcpControl::Fin)),
        "no FIN to the peer"
    );
    // All of it taken (FIN-WAIT-2), then the peer's answer with its FIN
    // and, before the proxy polls again, the RST its socket sends once
    // closed (its sequence number is the proxy's RCV.NXT after the FIN).
    let reply: &'static [u8] = b"the whole answer";
    w.net.inject(
        peer,
        peer_segment(&from_peer(TcpControl::None, peer_seq + 1, isn + 7, b"")),
    );
    w.run_for(Duration::from_millis(5));
    w.net.inject(
        peer,
        peer_segment(&from_peer(TcpControl::Fin, peer_seq + 1, isn + 7, reply)),
    );
    let rst_seq = peer_seq + 1 + reply.len() + 1;
    w.net.inject(
        peer,
        peer_segment(&TcpRepr {
            ack_number: None,
            window_len: 0,
            ..from_peer(TcpControl::Rst, rst_seq, isn + 7, b"")
        }),
    );
    assert!(w.run_until(secs(5), |w| w.hosts[0].flows[f].done
        && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset, "the client was reset");
    assert!(c.fin, "the client saw no FIN");
    assert_bytes(&c.received, reply, "the client received");
    let st = w.proxy.stats();
    assert_eq!((st.upstream_resets, st.completed), (0, 1));
}
