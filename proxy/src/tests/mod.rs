//! Engine tests over the deterministic in-memory network (`crate::sim`).

use alloc::format;
use alloc::vec::Vec;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, Ipv4Address, Ipv4Cidr};

use crate::config::Config;
use crate::engine::Engine;
use crate::sim::{mac, pattern, Close, Host, Link, Net, Serve, World};

mod accel;
mod buffers;
mod connections;
mod drain;
mod flood;
mod garp;
mod growth;
mod hostile;
mod hostile_peer;
mod lifecycle;
mod neighbours;
mod offload;

pub const PROXY: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
pub const CLIENT: Ipv4Address = Ipv4Address::new(10, 0, 0, 10);
pub const SERVER: Ipv4Address = Ipv4Address::new(10, 0, 0, 20);
pub const ROUTER: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Compare two byte strings, reporting the first difference rather than dumping megabytes.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: got {} bytes, want {}; first difference at offset {first}",
        got.len(),
        want.len()
    );
}

pub struct Setup<'a> {
    pub extra: &'a str,
    pub client_link: Link,
    pub proxy_link: Link,
    pub server_link: Link,
    pub seed: u64,
    pub host_buf: usize,
    pub serve: Serve,
    pub server_backlog: usize,
    /// The engine's memory budget.
    pub budget: usize,
    /// The proxy's port has segmentation and checksum offload (`Net::set_offload`).
    pub offload: bool,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            extra: "",
            client_link: Link::default(),
            proxy_link: Link::default(),
            server_link: Link::default(),
            seed: 1,
            host_buf: 64 * 1024,
            serve: Serve::Echo,
            server_backlog: 8,
            budget: 1 << 30,
            offload: false,
        }
    }
}

/// Client 10.0.0.10 -> proxy 10.0.0.2:80 (reverse) -> server 10.0.0.20:8080, one switch.
/// hosts[0] is the client, hosts[1] the server.
pub fn reverse_world(s: Setup<'_>) -> World {
    let cfg = reverse_config(s.extra);
    let mut net = Net::new(s.seed);
    let pp = net.add_port(s.proxy_link);
    net.set_offload(pp, s.offload);
    let cp = net.add_port(s.client_link);
    let sp = net.add_port(s.server_link);
    let now = net.now();
    let proxy = Engine::new(
        &cfg,
        HardwareAddress::Ethernet(mac(2)),
        s.seed,
        s.budget,
        &mut net.port(pp),
        now,
    )
    .unwrap();
    let client = Host::new(
        &mut net,
        cp,
        10,
        Ipv4Cidr::new(CLIENT, 24),
        None,
        s.host_buf,
    );
    let mut server = Host::new(
        &mut net,
        sp,
        20,
        Ipv4Cidr::new(SERVER, 24),
        None,
        s.host_buf,
    );
    server.listen(8080, s.server_backlog, s.serve);
    World {
        net,
        proxy,
        proxy_port: pp,
        hosts: alloc::vec![client, server],
        proxy_polls: 0,
        clock: None,
        proxy_nanos: 0,
    }
}

/// The reverse world's config line for `extra`.
pub fn reverse_config(extra: &str) -> Config {
    Config::parse(&format!(
        "ip=10.0.0.2/24 gw=10.0.0.1 rule=reverse:80:10.0.0.20:8080 {extra}"
    ))
    .unwrap()
}

/// The engine's memory accounting holds: the running count of buffer bytes
/// equals the sockets' buffers, the reservation of `buf_min` for every socket
/// that may still come fits the buffer budget, and the whole fits the budget.
#[track_caller]
pub fn check_memory(e: &Engine) {
    let st = e.stats();
    let plan = e.plan();
    assert_eq!(
        st.buf_bytes,
        e.recount_buffers(),
        "running count vs sockets"
    );
    assert!(st.buf_peak >= st.buf_bytes);
    assert!(e.socket_count() <= plan.max_sockets);
    let reserve = (plan.max_sockets - e.socket_count()) * (plan.per_socket - plan.socket_overhead);
    assert!(
        st.buf_bytes + reserve <= e.buffer_budget(),
        "{} held + {reserve} reserved > buffer budget {}",
        st.buf_bytes,
        e.buffer_budget()
    );
    assert!(plan.without_buffers() + st.buf_peak <= e.budget());
}

pub fn client_connect(w: &mut World, data: Vec<u8>, close: Close) -> usize {
    let now: Instant = w.now();
    w.hosts[0].connect((PROXY, 80), data, close, now)
}

pub fn all_done(w: &World) -> bool {
    w.hosts.iter().all(|h| h.flows.iter().all(|f| f.done))
}

/// Echo `data` through the proxy and check it byte for byte on every hop.
pub fn echo_roundtrip(w: &mut World, data: &[u8], limit: Duration) {
    let f = client_connect(w, data.to_vec(), Close::AfterSend);
    assert!(
        w.run_until(limit, |w| all_done(w) && w.proxy.stats().active == 0),
        "did not finish: client {:?} server {:?} stats {}",
        flow_summary(&w.hosts[0], f),
        w.hosts[1]
            .flows
            .iter()
            .map(|f| (f.received_len, f.sent, f.fin, f.reset, f.done))
            .collect::<Vec<_>>(),
        w.proxy.stats()
    );
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset, "client was reset");
    assert!(c.fin, "client saw no FIN");
    assert_bytes(&c.received, data, "client received");
    let s = w.hosts[1].flows.last().unwrap();
    assert_bytes(&s.received, data, "server received");
    assert!(s.fin && !s.reset);
}

pub fn flow_summary(h: &Host, f: usize) -> (usize, usize, bool, bool, bool, bool) {
    let f = &h.flows[f];
    (
        f.sent,
        f.received_len,
        f.established,
        f.fin,
        f.reset,
        f.done,
    )
}

#[allow(unused)]
pub fn _use(_: &World) -> Vec<u8> {
    pattern(0, 0)
}
