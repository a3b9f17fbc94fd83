//! Host tests of the whole driver against the fake netback
//! (`crate::testing`).

mod datapath;
mod handshake;
mod hostile;
mod offload;
mod offload_smol;
mod smol;

use std::format;

use smoltcp::phy::{Device, RxToken as _, TxToken as _};

use crate::testing::*;
use crate::{Config, Event, Netfront, State};

#[test]
fn memory_at_default_sizing() {
    let m = legacy().memory();
    assert_eq!((m.ring_pages, m.rx_pages, m.tx_pages), (2, 64, 16));
    assert_eq!(m.pages(), 82);
    assert!(m.total_bytes() < 350 * 1024, "{m}");
    let s = format!("{m}");
    assert!(s.starts_with("3"), "{s}");
    // And that is what a connection really allocates.
    let h = H::legacy_connected();
    assert_eq!(h.world.live_pages(), 82);
    assert_eq!(h.world.live_grants(), 82);
    assert_eq!(h.nf.pages_held(), 82);
    assert_eq!(h.nf.memory(), m);
}

#[test]
fn memory_with_offload() {
    // One page per TX buffer, and the 64 KiB copy buffers.
    let m = Config::default().memory();
    assert_eq!((m.ring_pages, m.rx_pages, m.tx_pages), (2, 64, 32));
    assert_eq!(m.pages(), 98);
    assert_eq!(
        m.heap_bytes,
        256 * 4 + 64 * 2 + 32 * 3 + (14 + 65535) + 8 * 4096,
        "{m}"
    );
    assert!(m.total_bytes() < 500 * 1024, "{m}");
    let h = H::offload_connected();
    assert_eq!(h.world.live_pages(), 98);
    assert_eq!(h.world.live_grants(), 98);
    assert_eq!(h.nf.pages_held(), 98);
    assert_eq!(h.nf.memory(), m);
    // A backend without offload: the driver's memory is the legacy figure.
    let setup = BackendSetup {
        features: std::vec![("feature-rx-copy", "1")],
        ..Default::default()
    };
    let h = H::connected(setup, Config::default());
    assert_eq!(h.world.live_pages(), 82);
    assert_eq!(h.nf.memory(), legacy().memory());
    // Too few RX buffers for a 64 KiB packet: offload is not asked for.
    let small = Config {
        rx_buffers: 17,
        ..Default::default()
    };
    assert_eq!(small.memory().tx_pages, 16);
}
