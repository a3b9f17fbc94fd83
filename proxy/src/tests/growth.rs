//! Connection buffers that grow while they limit the connection and shrink
//! back when memory is short (engine module `growth`, vendored smoltcp
//! patches 13 and 14).

use alloc::vec::Vec;

use smoltcp::time::Duration;

use super::*;
use crate::sim::{pattern, Close, Link, Serve};

/// The benchmark's memory for acceleration (`scripts/bench-accel`).
const MEM: usize = 16 << 20;

/// A leg of `rtt_ms` round trip at 1 Gbit/s without drops (as in `accel`).
fn leg(rtt_ms: u64) -> Link {
    Link {
        delay: Duration::from_micros(rtt_ms * 500),
        bandwidth: 125_000_000,
        queue_limit: 100_000,
        ..Link::default()
    }
}

/// A download of `len` bytes over legs of `legs` ms round trip with `extra`
/// config and `mem` bytes: its time and every buffer size its connection had,
/// in the order they came. Byte-exact; the accounting checked at every step.
fn download(extra: &str, mem: usize, legs: (u64, u64), len: usize) -> (Duration, Vec<usize>) {
    let mut w = reverse_world(Setup {
        extra,
        serve: Serve::Source { len, seed: 31 },
        client_link: leg(legs.0),
        server_link: leg(legs.1),
        host_buf: 4 << 20,
        budget: mem,
        ..Setup::default()
    });
    let f = client_connect(&mut w, b"GET".to_vec(), Close::AfterSend);
    let mut sizes: Vec<usize> = Vec::new();
    assert!(w.run_until(secs(60), |w| {
        check_memory(&w.proxy);
        for (a, b) in w.proxy.connection_buffers() {
            if sizes.last() != Some(&a.max(b)) {
                sizes.push(a.max(b));
            }
        }
        all_done(w) && w.proxy.stats().active == 0
    }));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin, "{extra:?}");
    assert_bytes(&c.received, &pattern(31, len), "client received");
    (c.t_done.unwrap() - c.t_start, sizes)
}

#[test]
fn lone_connection_grows_to_buf_and_moves_10mb_in_close_to_the_ideal_time() {
    let buf = Config::default().buf;
    let len = 10 << 20;
    // At the benchmark's 16 MiB a lone connection starts at the listening
    // sockets' share (an eighth of buf) and grows to buf while its buffers
    // limit it.
    let (t, sizes) = download("", MEM, (25, 25), len);
    assert_eq!(
        (sizes.first(), sizes.last()),
        (Some(&(buf / 8)), Some(&buf)),
        "sizes in order: {sizes:?}"
    );
    // With 80 MiB it starts at buf: growing costs little (three doublings
    // from an eighth of buf, each a round trip or less at the window; with
    // buf=1m, one doubling from half, it was within 5 %).
    let (t_buf, sizes) = download("", 5 * MEM, (25, 25), len);
    assert_eq!(sizes, [buf]);
    // Without growth (buf=512k: what it started with) it takes much longer.
    let (t_start, sizes) = download("buf=512k", MEM, (25, 25), len);
    assert_eq!(sizes, [buf / 8]);
    assert!(
        t * 10 <= t_buf * 11 && t * 10 < t_start * 6,
        "grown {t}, at buf from the start {t_buf}, fixed at the start's {t_start}"
    );
}

/// Echo `len` bytes on a new connection over `w`'s links and keep it open.
fn open_echo(w: &mut World, len: usize, seed: u64) -> usize {
    client_connect(w, pattern(seed, len), Close::Never)
}

#[test]
fn a_grown_connection_and_63_idle_ones_fit_memory_4() {
    let cfg = Config::default();
    let mem = 4 << 20;
    let mut w = reverse_world(Setup {
        serve: Serve::Echo,
        server_backlog: 64,
        client_link: leg(10),
        server_link: leg(10),
        host_buf: 1 << 20,
        budget: mem,
        ..Setup::default()
    });
    // One busy connection: 3 MB echoed, then it stays open, idle.
    let busy = open_echo(&mut w, 3 << 20, 1);
    let mut first = None;
    let mut grown = 0;
    let mut peaks = ((0, 0), (0, 0));
    assert!(w.run_until(secs(60), |w| {
        check_memory(&w.proxy);
        if let Some((c, u)) = w.proxy.connection_buffers_by_dir().next() {
            let max = |a: (usize, usize), b: (usize, usize)| (a.0.max(b.0), a.1.max(b.1));
            peaks = (max(peaks.0, c), max(peaks.1, u));
            let size = c.0.max(c.1).max(u.0).max(u.1);
            first.get_or_insert(size);
            grown = grown.max(size);
        }
        w.hosts[0].flows[busy].received_len == 3 << 20
    }));
    let first = first.unwrap();
    assert!(grown > first, "grew from {first} to {grown}");
    // Growth stops where the budget does: not at buf in 4 MiB.
    assert!(grown < cfg.buf, "{grown}");
    // 63 more, idle after an echo of 100 bytes: every one is admitted (the
    // grown one never took the reservation of buf_min for the others).
    let idle: Vec<usize> = (0..63).map(|i| open_echo(&mut w, 100, 100 + i)).collect();
    assert!(w.run_until(secs(30), |w| {
        check_memory(&w.proxy);
        idle.iter()
            .all(|&f| w.hosts[0].flows[f].received_len == 100)
    }));
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.active, st.refused), (64, 64, 0));
    // Memory is short now, but the idle grown connection keeps its receive
    // buffers: they hold the window they advertised, which a receiver must
    // not retract (vendored patch 16 refuses). Its transmit buffers, empty,
    // shrink.
    let ((c_rx, c_tx), (u_rx, u_tx)) = w.proxy.connection_buffers_by_dir().next().unwrap();
    let ((c_rx_peak, c_tx_peak), (u_rx_peak, u_tx_peak)) = peaks;
    assert_eq!((c_rx, u_rx), (c_rx_peak, u_rx_peak), "first {first}");
    assert!(c_tx < c_tx_peak && u_tx < u_tx_peak, "{peaks:?}");
    let flows = &w.hosts[0].flows;
    assert_bytes(&flows[busy].received, &pattern(1, 3 << 20), "busy echo");
    for (i, &f) in idle.iter().enumerate() {
        assert!(!flows[f].reset, "idle {i} reset");
        assert_bytes(
            &flows[f].received,
            &pattern(100 + i as u64, 100),
            "idle echo",
        );
    }
}
