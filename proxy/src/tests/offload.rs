//! Segmentation and checksum offload on the proxy's device.

use super::connections::transparent_world_with;
use super::*;
use crate::engine::EngineError;
use alloc::string::ToString;

/// 10 MB one way through a proxy whose device has TSO (64 KiB) and checksum
/// offload; the wire segments its frames and merges what it receives (GRO).
fn tso_transfer(up: bool) -> World {
    let len = 10 << 20;
    let mut w = reverse_world(Setup {
        extra: "buf=256k",
        serve: if up {
            Serve::Sink
        } else {
            Serve::Source { len, seed: 900 }
        },
        host_buf: 256 * 1024,
        offload: true,
        // A little delay so that windows fill and segments queue up.
        client_link: Link::delay_ms(1),
        server_link: Link::delay_ms(1),
        ..Setup::default()
    });
    let data = if up {
        pattern(901, len)
    } else {
        b"GET".to_vec()
    };
    let f = client_connect(&mut w, data.clone(), Close::AfterSend);
    assert!(w.run_until(secs(120), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    let st = w.proxy.stats();
    if up {
        assert_bytes(&w.hosts[1].flows[0].received, &data, "server received");
        assert_eq!((st.bytes_up, st.bytes_down), (len as u64, 0));
    } else {
        assert_bytes(&c.received, &pattern(900, len), "client received");
        assert_eq!((st.bytes_up, st.bytes_down), (3, len as u64));
    }
    assert_eq!(st.completed, 1);
    // Nothing oversized left any port, and every segment the wire made verified.
    assert_eq!((w.net.stats.oversize, w.net.stats.bad_checksum), (0, 0));
    w
}

#[track_caller]
fn assert_large_frames(w: &World, what: &str) {
    let ps = w.net.port_stats(w.proxy_port);
    std::eprintln!("{what}: proxy port {ps:?}");
    // The engine handed over frames far beyond the MTU, and most of the
    // payload went in them.
    assert!(ps.tso_frames > 100, "{what}: {ps:?}");
    assert!(ps.largest_tx > 16 * 1024, "{what}: {ps:?}");
    assert!(ps.tso_bytes > 5 << 20, "{what}: {ps:?}");
    assert!(ps.tso_segments > 3 * ps.tso_frames, "{what}: {ps:?}");
    // And received merged frames.
    assert!(
        ps.gro_merged > 1000 && ps.largest_rx > 16 * 1024,
        "{what}: {ps:?}"
    );
}

#[test]
fn tso_ten_megabytes_up() {
    let w = tso_transfer(true);
    assert_large_frames(&w, "upload");
}

#[test]
fn tso_ten_megabytes_down() {
    let w = tso_transfer(false);
    assert_large_frames(&w, "download");
}

#[test]
fn tso_echo_with_loss_and_transparent_mode() {
    // Both directions at once, 1% loss: retransmissions of large segments.
    let lossy = Link {
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(1),
        loss: 0.01,
        ..Link::default()
    };
    let mut w = reverse_world(Setup {
        extra: "buf=128k",
        offload: true,
        client_link: lossy,
        server_link: lossy,
        host_buf: 128 * 1024,
        ..Setup::default()
    });
    echo_roundtrip(&mut w, &pattern(910, 2 << 20), secs(600));
    assert!(w.net.stats.lost > 20);
    assert_eq!((w.net.stats.oversize, w.net.stats.bad_checksum), (0, 0));
    // (Few merges here: with data both ways every segment carries a new ACK.)
    let ps = w.net.port_stats(w.proxy_port);
    assert!(ps.tso_frames > 100 && ps.largest_tx > 8 * 1024, "{ps:?}");

    // Transparent mode: the engine's device is wrapped (ArpGuard), which must
    // pass the capabilities and the segmentation metadata through.
    let mut w = transparent_world_with("buf=128k", true);
    let now = w.now();
    let req = pattern(920, 1 << 20);
    let f = w.hosts[0].connect(
        (Ipv4Address::new(203, 0, 113, 1), 80),
        req.clone(),
        Close::AfterSend,
        now,
    );
    assert!(w.run_until(secs(60), |w| all_done(w) && w.proxy.stats().active == 0));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    assert_bytes(&c.received, &pattern(91, 50_000), "content");
    assert!(w.hosts[1].flows.iter().any(|s| s.received == req));
    assert_eq!((w.net.stats.oversize, w.net.stats.bad_checksum), (0, 0));
    let ps = w.net.port_stats(w.proxy_port);
    assert!(ps.tso_frames > 5 && ps.largest_tx > 16 * 1024, "{ps:?}");
}

#[test]
fn tso_without_checksum_offload_is_refused() {
    use smoltcp::phy::{Checksum, Device, DeviceCapabilities};
    /// A port device whose capabilities can be bent.
    struct Bent<'a>(crate::sim::PortDevice<'a>, Checksum);
    impl Device for Bent<'_> {
        type RxToken<'b>
            = crate::sim::SimRx
        where
            Self: 'b;
        type TxToken<'b>
            = crate::sim::SimTx<'b>
        where
            Self: 'b;
        fn receive(&mut self, t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            self.0.receive(t)
        }
        fn transmit(&mut self, t: Instant) -> Option<Self::TxToken<'_>> {
            self.0.transmit(t)
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = self.0.capabilities();
            c.checksum.tcp = self.1;
            c
        }
    }
    let cfg = reverse_config("");
    let mut net = Net::new(1);
    let p = net.add_port(Link::default());
    net.set_offload(p, true);
    let now = net.now();
    let new = |net: &mut Net, ck| {
        Engine::new(
            &cfg,
            HardwareAddress::Ethernet(mac(2)),
            1,
            1 << 30,
            &mut Bent(net.port(p), ck),
            now,
        )
    };
    let err = new(&mut net, Checksum::Both).unwrap_err();
    assert_eq!(err, EngineError::InconsistentOffload);
    assert_eq!(
        err.to_string(),
        "engine: the device advertises TCP segmentation offload but not TCP checksum offload on transmit"
    );
    assert!(new(&mut net, Checksum::Tx).is_err());
    assert!(new(&mut net, Checksum::None).is_ok());
    assert!(new(&mut net, Checksum::Rx).is_ok());
}
