//! Split-TCP acceleration over long simulated legs: with the default config a
//! lone connection's windows fit the path, a download through the engine
//! finishes in the round trips its legs need (not the ones its buffers
//! allow), and max_conns connections still fit the budget.
//!
//! The legs have a bandwidth (1 Gbit/s): with none, a whole flight arrives
//! at one instant, smoltcp acknowledges it with one ACK, and byte counting
//! (2 SMSS per ACK, RFC 3465) makes slow start grow by two segments per
//! round trip, which no real link does.

use alloc::format;
use alloc::vec::Vec;

use smoltcp::time::Duration;

use super::*;
use crate::sim::{mac, pattern, Close, Host, Link, Net, Rng, Serve};
use smoltcp::wire::{HardwareAddress, Ipv4Cidr};

/// The benchmark's memory for acceleration (`scripts/bench-accel`, README).
const MEM: usize = 16 << 20;

/// Leg round trip of the 25+25 ms tests.
const LEG_RTT_MS: u64 = 25;

/// A link that makes its leg's round trip `rtt_ms` (the proxy's own link has
/// no delay), at 1 Gbit/s without drops.
fn leg(rtt_ms: u64) -> Link {
    leg_at(rtt_ms, 125_000_000)
}

/// A leg of `rtt_ms` round trip at `bandwidth` bytes per second.
fn leg_at(rtt_ms: u64, bandwidth: u64) -> Link {
    Link {
        delay: Duration::from_micros(rtt_ms * 500),
        bandwidth,
        queue_limit: 100_000,
        ..Link::default()
    }
}

/// A download of `len` bytes over legs of `rtt_a_ms` (client - proxy) and
/// `rtt_b_ms` (proxy - server) with `extra` config and `mem` bytes: its time
/// (virtual clock) and the buffer sizes its connection had. Byte-exact, and
/// the memory accounting is checked at every step.
fn download_over_legs(
    extra: &str,
    mem: usize,
    (rtt_a_ms, rtt_b_ms): (u64, u64),
    len: usize,
) -> (Duration, Vec<(usize, usize)>) {
    let mut w = reverse_world(Setup {
        extra,
        serve: Serve::Source { len, seed: 77 },
        client_link: leg(rtt_a_ms),
        server_link: leg(rtt_b_ms),
        host_buf: 4 << 20,
        budget: mem,
        ..Setup::default()
    });
    let f = client_connect(&mut w, b"GET".to_vec(), Close::AfterSend);
    let mut sizes = Vec::new();
    assert!(w.run_until(secs(60), |w| {
        check_memory(&w.proxy);
        sizes.extend(w.proxy.connection_buffers());
        all_done(w) && w.proxy.stats().active == 0
    }));
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin, "{extra:?}");
    assert_bytes(&c.received, &pattern(77, len), "client received");
    sizes.sort();
    sizes.dedup();
    (c.t_done.unwrap() - c.t_start, sizes)
}

#[test]
fn lone_connection_gets_buf_when_memory_allows() {
    let cfg = Config::default();
    // With five times the benchmark's memory (80 MiB; four pairs at 4m need
    // about 64 MiB of pool surplus) the pool's share is a pair at `buf`.
    let (_, sizes) = download_over_legs("", 5 * MEM, (5, 5), 256 << 10);
    assert_eq!(sizes, [(cfg.buf, cfg.buf)]);
    // With 16 MiB, four listening sockets share about 15 MiB: 3.7 MiB per
    // pair, 512k on the ladder, an eighth of buf (growth does the rest).
    let (_, sizes) = download_over_legs("", MEM, (5, 5), 256 << 10);
    assert_eq!(sizes, [(cfg.buf / 8, cfg.buf / 8)]);
}

#[test]
fn download_over_25_25_ms_legs_takes_the_round_trips_of_slow_start() {
    let len = 2 << 20;
    let rtt = Duration::from_millis(LEG_RTT_MS);
    // Before the first byte: the client's handshake and request (1.5 leg
    // RTTs), the upstream handshake and request (1.5), the response back
    // (1): 4. Then slow start from RFC 6928's 10 segments (14600 bytes),
    // doubling each round trip of the leg: 2 MiB needs n rounds with
    // 14600 * (2^n - 1) >= 2 MiB, n = 8 (the legs pipeline: each leg's
    // rounds overlap the other's). Two more round trips of slack for the
    // delayed start of the second leg and serialization (17 ms at 1 Gbit/s).
    let mut rounds = 0;
    while 14_600 * ((1u64 << rounds) - 1) < len as u64 {
        rounds += 1;
    }
    assert_eq!(rounds, 8);
    let bound = rtt * (4 + rounds + 2);
    let (t, sizes) = download_over_legs("", MEM, (LEG_RTT_MS, LEG_RTT_MS), len);
    assert!(
        t <= bound,
        "2 MiB took {t}, bound {bound} (sizes {sizes:?})"
    );
    // The bound needs windows that fit the path: with the old default of
    // 64k the same download needs 32 round trips of window and misses it.
    let (t64, _) = download_over_legs("buf=64k", MEM, (LEG_RTT_MS, LEG_RTT_MS), len);
    assert!(t64 > bound, "64k windows took {t64}, bound {bound}");
    // And Cubic is no slower (both are in slow start throughout).
    let (tc, _) = download_over_legs("cc=cubic", MEM, (LEG_RTT_MS, LEG_RTT_MS), len);
    assert!(tc <= bound, "cubic took {tc}, bound {bound}");
}

#[test]
fn max_conns_downloads_at_once_keep_the_memory_guarantee() {
    // The default config (buf=1m) at the benchmark's memory, 64 downloads at
    // once over 5+5 ms legs: every step keeps the accounting and the
    // reservation (check_memory), all 64 are served byte for byte, and the
    // sizes taper from the listening sockets' share towards buf_min.
    let cfg = Config::default();
    let mut w = reverse_world(Setup {
        serve: Serve::Source {
            len: 300_000,
            seed: 9,
        },
        server_backlog: 64,
        client_link: leg(5),
        server_link: leg(5),
        host_buf: 256 << 10,
        budget: MEM,
        ..Setup::default()
    });
    for i in 0..cfg.max_conns {
        client_connect(&mut w, format!("GET {i}").into_bytes(), Close::AfterSend);
    }
    let (mut peak, mut sizes) = (0, Vec::new());
    assert!(w.run_until(secs(120), |w| {
        check_memory(&w.proxy);
        let active = w.proxy.stats().active;
        if active > peak {
            peak = active;
            sizes = w.proxy.connection_buffers().collect();
        }
        all_done(w) && active == 0
    }));
    assert_eq!(peak, cfg.max_conns);
    for (i, f) in w.hosts[0].flows.iter().enumerate() {
        assert!(!f.reset && f.fin, "flow {i}");
        assert_bytes(&f.received, &pattern(9, 300_000), &format!("flow {i}"));
    }
    let st = w.proxy.stats();
    assert_eq!((st.accepted, st.completed, st.refused), (64, 64, 0));
    let all: Vec<usize> = sizes.iter().flat_map(|&(a, b)| [a, b]).collect();
    assert!(
        all.iter().all(|s| *s >= cfg.buf_min && *s <= cfg.buf),
        "{all:?}"
    );
    assert!(all.iter().max() > all.iter().min(), "no taper: {all:?}");
    assert!(st.buf_peak <= w.proxy.buffer_budget());
}

/// Client -> engine A (10.0.0.2:80) -> engine B (10.0.0.3:80) -> server
/// (10.0.0.20:8080), every link lossy and reordering: two split-TCP proxies
/// in a row, each talking smoltcp to the other.
struct Chain {
    net: Net,
    engines: [(Engine, usize); 2],
    hosts: [Host; 2],
    /// Periods in which an engine is not polled (`None`: never).
    stalls: Option<Stalls>,
}

/// A guest whose vCPU is not scheduled for a while, as under Xen in TCG:
/// each engine in turn is not polled for 20..820 ms, every 50..1550 ms, while
/// frames for it queue up and its timers expire.
struct Stalls {
    rng: Rng,
    /// Per engine: not polled until, next stall at.
    until: [Instant; 2],
    next: [Instant; 2],
    /// Stalls started so far.
    count: usize,
}

impl Stalls {
    fn new(seed: u64, now: Instant) -> Stalls {
        Stalls {
            rng: Rng::new(seed),
            until: [now; 2],
            next: [now + Duration::from_millis(30); 2],
            count: 0,
        }
    }

    /// Which engines are stalled at `now` (starting new stalls when due).
    fn paused(&mut self, now: Instant) -> [bool; 2] {
        let mut paused = [false; 2];
        for (i, p) in paused.iter_mut().enumerate() {
            if now >= self.next[i] && now >= self.until[i] {
                self.until[i] = now + Duration::from_millis(20 + self.rng.below(800));
                self.next[i] = self.until[i] + Duration::from_millis(50 + self.rng.below(1500));
                self.count += 1;
            }
            *p = now < self.until[i];
        }
        paused
    }
}

impl Chain {
    fn new(seed: u64, link: Link) -> Chain {
        Chain::with(seed, link, "buf=64k", Serve::Echo, 64 << 10, false)
    }

    /// A chain whose engines take `opts` on their config line, whose server
    /// serves `serve`, whose hosts have `host_buf` socket buffers, and whose
    /// engines' ports have segmentation and checksum offload if `offload`.
    fn with(
        seed: u64,
        link: Link,
        opts: &str,
        serve: Serve,
        host_buf: usize,
        offload: bool,
    ) -> Chain {
        let mut net = Net::new(seed);
        let engine = |net: &mut Net, ip: u8, upstream: &str, mac_id: u8| {
            let port = net.add_port(link);
            net.set_offload(port, offload);
            let cfg = Config::parse(&format!(
                "ip=10.0.0.{ip}/24 gw=10.0.0.1 rule=reverse:80:{upstream} {opts}"
            ))
            .unwrap();
            let now = net.now();
            let e = Engine::new(
                &cfg,
                HardwareAddress::Ethernet(mac(mac_id)),
                seed + u64::from(ip),
                1 << 30,
                &mut net.port(port),
                now,
            )
            .unwrap();
            (e, port)
        };
        let a = engine(&mut net, 2, "10.0.0.3:80", 2);
        let b = engine(&mut net, 3, "10.0.0.20:8080", 3);
        let cp = net.add_port(link);
        let sp = net.add_port(link);
        let client = Host::new(&mut net, cp, 10, Ipv4Cidr::new(CLIENT, 24), None, host_buf);
        let mut server = Host::new(&mut net, sp, 20, Ipv4Cidr::new(SERVER, 24), None, host_buf);
        server.listen(8080, 4, serve);
        Chain {
            net,
            engines: [a, b],
            hosts: [client, server],
            stalls: None,
        }
    }

    /// World::run_until with two engines.
    fn run_until(&mut self, limit: Duration, cond: impl Fn(&Chain) -> bool) -> bool {
        let deadline = self.net.now() + limit;
        loop {
            let now = self.net.now();
            self.net.advance(now);
            let mut progressed = false;
            let paused = self.stalls.as_mut().map_or([false; 2], |s| s.paused(now));
            for (i, (e, port)) in self.engines.iter_mut().enumerate() {
                if !paused[i] {
                    progressed |= e.poll(now, &mut self.net.port(*port));
                }
            }
            for h in &mut self.hosts {
                progressed |= h.poll(&mut self.net);
            }
            self.net.advance(now);
            if cond(self) {
                return true;
            }
            if self.net.any_rx() && !paused.iter().any(|p| *p) {
                continue;
            }
            let mut next = self.net.next_arrival();
            if let Some(st) = &self.stalls {
                for (i, until) in st.until.iter().enumerate() {
                    if paused[i] {
                        next = Some(next.map_or(*until, |n| n.min(*until)));
                    }
                }
            }
            let delays = self
                .engines
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| !paused[*i])
                .map(|(_, (e, _))| e.poll_delay(now))
                .chain(self.hosts.iter_mut().map(|h| h.poll_delay(now)));
            for d in delays.flatten() {
                next = Some(next.map_or(now + d, |n| n.min(now + d)));
            }
            let Some(mut t) = next else { return false };
            if t <= now && !progressed {
                t = now + Duration::from_micros(1);
            }
            if t > deadline {
                self.net.advance(deadline);
                return cond(self);
            }
            self.net.advance(t);
        }
    }
}

/// One echo of 256 KiB through the chain: `Ok` if byte-exact on both ends,
/// else whether what did arrive is intact (a prefix of what was sent, at
/// both ends) and what went wrong.
fn chain_echo(seed: u64, link: Link) -> Result<(), (bool, alloc::string::String)> {
    let mut c = Chain::new(seed, link);
    let data = pattern(900 + seed, 256 << 10);
    let now = c.net.now();
    let f = c.hosts[0].connect((PROXY, 80), data.clone(), Close::AfterSend, now);
    let done = |c: &Chain| {
        c.hosts.iter().all(|h| h.flows.iter().all(|f| f.done))
            && c.engines.iter().all(|(e, _)| e.stats().active == 0)
    };
    let finished = c.run_until(secs(600), done);
    for (e, _) in &c.engines {
        check_memory(e);
    }
    let cf = &c.hosts[0].flows[f];
    let sf = c.hosts[1].flows.last();
    let ok = finished
        && !cf.reset
        && cf.fin
        && cf.received == data
        && sf.is_some_and(|s| s.received == data && s.fin && !s.reset);
    if !ok {
        let intact = data.starts_with(&cf.received)
            && c.hosts[1]
                .flows
                .iter()
                .all(|s| data.starts_with(&s.received));
        return Err((
            intact,
            format!(
                "finished {finished} intact {intact} client {:?} server {:?} engines [{}] [{}]",
                flow_summary(&c.hosts[0], f),
                c.hosts[1]
                    .flows
                    .iter()
                    .map(|f| (f.received_len, f.sent, f.fin, f.reset, f.done))
                    .collect::<Vec<_>>(),
                c.engines[0].0.stats(),
                c.engines[1].0.stats()
            ),
        ));
    }
    assert!(
        c.net.stats.lost > 5,
        "seed {seed}: lost only {}",
        c.net.stats.lost
    );
    Ok(())
}

/// The chain tests' links: 2 ms with 3 ms of jitter (so reordering) and 1 %
/// loss each way.
fn lossy_chain_link() -> Link {
    Link {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(3),
        loss: 0.01,
        ..Link::default()
    }
}

#[test]
fn two_engines_in_a_row_stay_byte_exact_under_loss_and_reordering() {
    let lossy = lossy_chain_link();
    let mut failed = Vec::new();
    for seed in 0..400 {
        if let Err((_, e)) = chain_echo(seed, lossy) {
            std::println!("seed {seed}: {e}");
            failed.push(seed);
        }
    }
    // Every seed completes. Before vendored smoltcp patch 11, 3 of the 400
    // (153, 168 and 180) stalled: the server (a
    // smoltcp socket in LAST-ACK, having closed after the client's FIN with
    // data still queued) saw engine B's upstream window go to zero, then
    // answered B's window updates and SACKs of its probes with challenge ACKs
    // and dropped them, probing a closed window until B timed out.
    assert!(failed.is_empty(), "seeds that failed: {failed:?}");
}

/// A witness of what the 400 seeds above do not reach. Over seeds 400..2000,
/// 8 chains still fail (585, 792, 957, 1028, 1355, 1530, 1541 and 1751 when
/// this was written): engine A's upstream connect to B fails, the client
/// never connects, or all data arrives and the close ends in a reset and a
/// timeout on B. Since vendored patches 23-25 only 585 fails: engine B's
/// SYN|ACKs to A (0.042 s, and 1.043 s in answer to A's resent SYN, patch
/// 24) never reach A's upstream socket, and B's 3 s connect timeout ends it;
/// lost or dropped on the way, not yet diagnosed. None of them may lose or corrupt a byte
/// on the way: whatever arrived is a prefix of what was sent (seed 957 once
/// delivered an extra octet, a keep-alive's, fixed by vendored patch 15).
/// When the failures are fixed this fails: assert that `failed` is empty.
#[test]
fn two_engines_over_more_seeds_fail_only_by_resets_never_by_corruption() {
    let lossy = lossy_chain_link();
    let mut failed = Vec::new();
    for seed in 400..2000 {
        if let Err((intact, e)) = chain_echo(seed, lossy) {
            std::println!("seed {seed}: {e}");
            assert!(intact, "seed {seed}: data lost or corrupted: {e}");
            failed.push(seed);
        }
    }
    assert!(
        !failed.is_empty() && failed.len() <= 16,
        "seeds that failed: {failed:?}"
    );
}

/// 10 MB downloaded through two engines with the default config (buffers that
/// grow), 2 ms links with jitter and 1 % loss, as 35-modes' Xen chain does
/// (where a download once arrived with the wrong SHA-256 and no reset).
fn chain_download(seed: u64) -> Result<(), alloc::string::String> {
    chain_download_with(seed, false, false)
}

/// [`chain_download`], the engines' ports with segmentation and checksum
/// offload (as netfront has them) if `offload`, and the engines stalled now
/// and then ([`Stalls`]) if `stalls`.
fn chain_download_with(
    seed: u64,
    offload: bool,
    stalls: bool,
) -> Result<(), alloc::string::String> {
    let len = 10 << 20;
    let mut c = Chain::with(
        seed,
        lossy_chain_link(),
        "",
        Serve::Source {
            len,
            seed: 77 + seed,
        },
        4 << 20,
        offload,
    );
    if stalls {
        c.stalls = Some(Stalls::new(seed, c.net.now()));
    }
    let data = pattern(77 + seed, len);
    let now = c.net.now();
    let f = c.hosts[0].connect((PROXY, 80), Vec::new(), Close::AfterSend, now);
    let done = |c: &Chain| {
        c.hosts.iter().all(|h| h.flows.iter().all(|f| f.done))
            && c.engines.iter().all(|(e, _)| e.stats().active == 0)
    };
    let t0 = c.net.now();
    let finished = c.run_until(secs(600), done);
    std::println!(
        "seed {seed}: {} ms lost {} overflowed {} tso {:?}",
        (c.net.now() - t0).total_millis(),
        c.net.stats.lost,
        c.net.stats.overflowed,
        c.net.port_stats(c.engines[1].1)
    );
    let cf = &c.hosts[0].flows[f];
    if finished && cf.fin && !cf.reset && cf.received == data {
        assert!(
            c.net.stats.lost > 5,
            "seed {seed}: lost only {}",
            c.net.stats.lost
        );
        if let Some(st) = &c.stalls {
            assert!(st.count > 20, "seed {seed}: only {} stalls", st.count);
        }
        if offload {
            let tso = c.net.port_stats(c.engines[1].1).tso_frames;
            assert!(
                tso > 100,
                "seed {seed}: only {tso} TSO frames from engine B"
            );
        }
        return Ok(());
    }
    let first_diff = cf.received.iter().zip(&data).position(|(a, b)| a != b);
    Err(format!(
        "finished {finished} fin {} reset {} received {} of {len}, first difference at {first_diff:?}; engines [{}] [{}]",
        cf.fin,
        cf.reset,
        cf.received.len(),
        c.engines[0].0.stats(),
        c.engines[1].0.stats()
    ))
}

#[test]
fn two_engines_download_10_mb_byte_exact_with_growing_buffers_under_loss() {
    let mut failed = Vec::new();
    for seed in 0..50 {
        if let Err(e) = chain_download(seed) {
            std::println!("seed {seed}: {e}");
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "seeds that failed: {failed:?}");
}

/// The Xen chain's conditions the test above leaves out: TSO and GRO on the
/// engines' ports, and guests not scheduled for up to 820 ms at a time.
#[test]
fn two_engines_download_10_mb_byte_exact_with_offload_and_stalled_engines() {
    let mut failed = Vec::new();
    for seed in 0..40 {
        if let Err(e) = chain_download_with(seed, true, true) {
            std::println!("seed {seed}: {e}");
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "seeds that failed: {failed:?}");
}

/// Which way a transfer's data flows through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Server to client (leg B, then leg A).
    Down,
    /// Client to server (leg A, then leg B).
    Up,
}

/// `len` bytes one way over legs of `legs` ms round trip (client - proxy,
/// proxy - server) with `extra` config and `mem` bytes: the time from the
/// client's connect to the receiver's seeing the FIN after the last byte, and
/// every buffer size the connection's sockets had (client side, upstream
/// side; the larger of each socket's two), in the order they came.
/// Byte-exact; the accounting checked at every step.
fn transfer(
    extra: &str,
    mem: usize,
    legs: (u64, u64),
    bandwidth: u64,
    len: usize,
    dir: Dir,
) -> (Duration, Vec<(usize, usize)>) {
    let (t, by_dir) = transfer_by_dir(extra, mem, legs, bandwidth, len, dir);
    let mut sizes: Vec<(usize, usize)> = Vec::new();
    for ((c_rx, c_tx), (u_rx, u_tx)) in by_dir {
        let s = (c_rx.max(c_tx), u_rx.max(u_tx));
        if sizes.last() != Some(&s) {
            sizes.push(s);
        }
    }
    (t, sizes)
}

/// The buffer sizes of a connection's sockets by direction: `((client rx,
/// client tx), (upstream rx, upstream tx))`.
type DirSizes = ((usize, usize), (usize, usize));

/// [`transfer`], with the sizes by direction.
fn transfer_by_dir(
    extra: &str,
    mem: usize,
    legs: (u64, u64),
    bandwidth: u64,
    len: usize,
    dir: Dir,
) -> (Duration, Vec<DirSizes>) {
    let (serve, data) = match dir {
        Dir::Down => (Serve::Source { len, seed: 78 }, b"GET".to_vec()),
        Dir::Up => (Serve::Sink, pattern(78, len)),
    };
    let mut w = reverse_world(Setup {
        extra,
        serve,
        client_link: leg_at(legs.0, bandwidth),
        server_link: leg_at(legs.1, bandwidth),
        host_buf: 4 << 20,
        budget: mem,
        ..Setup::default()
    });
    let f = client_connect(&mut w, data, Close::AfterSend);
    let mut sizes: Vec<DirSizes> = Vec::new();
    assert!(w.run_until(secs(60), |w| {
        check_memory(&w.proxy);
        for s in w.proxy.connection_buffers_by_dir() {
            if sizes.last() != Some(&s) {
                sizes.push(s);
            }
        }
        all_done(w) && w.proxy.stats().active == 0
    }));
    let c = &w.hosts[0].flows[f];
    let s = w.hosts[1]
        .flows
        .last()
        .expect("the server saw the connection");
    let receiver = match dir {
        Dir::Down => c,
        Dir::Up => s,
    };
    assert!(!c.reset && !s.reset && receiver.fin, "{extra:?} {dir:?}");
    assert_bytes(&receiver.received, &pattern(78, len), "received");
    (receiver.t_fin.unwrap() - c.t_start, sizes)
}

/// Asymmetric legs (5+45 and 45+5 ms), data both ways, 10 MB: a
/// connection that starts at half of `buf` (16 MiB: the listening sockets'
/// share) grows the socket on the long leg to `buf` and finishes within 10 %
/// of one that has `buf` from the start (32 MiB).
///
/// The bound, from physics: the long leg's window is what limits a lone
/// connection here (1 MiB per 45 ms round trip is 23 MB/s, at or below the
/// links' rate), and a window of 512k costs about half a round trip's worth
/// of data per round trip it lasts. Growth is asked for after the first
/// round trip that delivers more than half the buffer and granted in the
/// next poll, so at most about two round trips of the long leg (90 ms,
/// ~45 ms lost) run at the smaller window: ~6 % of the ~0.8 s transfer.
///
/// At 1 Gbit/s the short leg's bandwidth-delay product (625 KB at 5 ms)
/// fills half of a 512k transmit buffer, so the fill rule of `growth` grows
/// both sockets anyway. At 200 Mbit/s (125 KB) nothing fills: the receiving
/// socket on the long leg hands its data at once to the short one, and only
/// right-sizing (engine module `rightsize`) sees that its window is the
/// limit; it grows that socket alone. Without it (its requests ignored)
/// 5+45 down took 1.231 s and 45+5 up 1.201 s, against 0.831 s and 0.801 s
/// at `buf`: 48 % and 50 % longer.
#[test]
fn asymmetric_legs_grow_the_long_legs_window_to_buf() {
    let buf = Config::default().buf;
    let len = 10 << 20;
    for bandwidth in [125_000_000, 25_000_000] {
        for dir in [Dir::Down, Dir::Up] {
            for legs in [(5, 45), (45, 5)] {
                let case = format!("{legs:?} {dir:?} at {bandwidth} B/s");
                let (t, sizes) = transfer("", MEM, legs, bandwidth, len, dir);
                let (t_buf, sizes_buf) = transfer("", 5 * MEM, legs, bandwidth, len, dir);
                assert_eq!(sizes_buf, [(buf, buf)], "{case}");
                assert_eq!(sizes[0], (buf / 8, buf / 8), "{case}");
                // The socket on the long leg (client side if leg A is the
                // long one) ends at buf.
                let (client, upstream) = *sizes.last().unwrap();
                let (long, short) = if legs.0 > legs.1 {
                    (client, upstream)
                } else {
                    (upstream, client)
                };
                assert_eq!(long, buf, "{case}: {sizes:?}");
                // Where right-sizing alone grows it (the long leg receives:
                // 5+45 down, 45+5 up) at 200 Mbit/s, the short leg's socket,
                // never limited, keeps what it had.
                let receives_on_long_leg = (dir == Dir::Down) == (legs.1 > legs.0);
                if bandwidth == 25_000_000 && receives_on_long_leg {
                    assert_eq!(short, buf / 8, "{case}: {sizes:?}");
                }
                assert!(
                    t * 10 <= t_buf * 11,
                    "{case}: grown {t}, at buf from the start {t_buf} ({sizes:?})"
                );
            }
        }
    }
}

/// 100 KB over 25+25 ms legs takes five leg round trips from the client's
/// SYN once the proxy knows the server's address, as the split path allows:
/// the client's handshake (1), its request reaching the server through the
/// upstream connection opened in parallel with that handshake (+0.5: the
/// upstream SYN leaves when the client's SYN arrives, so its handshake is
/// done when the request arrives), and 100 000 bytes in three flights from
/// RFC 6928's ten segments, 14600 + 29200 + 58400 (each leg's slow start
/// overlaps the other's: a flight the proxy receives leaves at once in a
/// window the client leg has already opened), reaching the client 3.5 round
/// trips later. End to end over one 50 ms round trip the same takes 4 of
/// its round trips (8 of a leg's), so the split path's floor is 5/8 = 0.63
/// of end to end. An upstream opened only after the client's handshake, or
/// a smaller first flight on either leg, costs a round trip more.
///
/// The first connection pays one more round trip of the server's leg: the
/// proxy resolves the server's address (ARP) only when the first SYN
/// asks for it.
#[test]
fn a_100kb_download_over_25_25_ms_takes_five_leg_round_trips() {
    let len = 100_000;
    let mut w = reverse_world(Setup {
        serve: Serve::Source { len, seed: 5 },
        client_link: leg(LEG_RTT_MS),
        server_link: leg(LEG_RTT_MS),
        host_buf: 4 << 20,
        budget: MEM,
        ..Setup::default()
    });
    let rtt = Duration::from_millis(LEG_RTT_MS);
    // Serialization at 1 Gbit/s: 100 KB is 0.8 ms on each leg, and under
    // 0.5 ms of any one flight.
    let slack = Duration::from_millis(2);
    let mut times = Vec::new();
    for _ in 0..2 {
        let f = client_connect(&mut w, b"GET".to_vec(), Close::AfterSend);
        assert!(w.run_until(secs(10), |w| all_done(w) && w.proxy.stats().active == 0));
        let c = &w.hosts[0].flows[f];
        assert!(!c.reset && c.fin);
        assert_bytes(&c.received, &pattern(5, len), "client received");
        // The first SYN's own ARP (the client resolving the proxy) is
        // before the flow's start counts.
        times.push(c.t_fin.unwrap() - c.t_established.unwrap() + rtt);
    }
    let (cold, warm) = (times[0], times[1]);
    assert!(
        warm >= rtt * 5 && warm <= rtt * 5 + slack,
        "warm {warm}, five round trips {}",
        rtt * 5
    );
    assert!(
        cold >= rtt * 6 && cold <= rtt * 6 + slack,
        "cold {cold}: one round trip for ARP"
    );
}

/// Every socket the engine uses, listening or spliced, counts a stretch ACK
/// in full in slow start (smoltcp patch 26, its behaviour tested there):
/// Linux clients acknowledge six segments at once once their quick ACKs run
/// out, and with RFC 3465's two segments per ACK the proxy's window toward
/// them fell short of doubling per round trip (the host benchmark's 100 KB
/// over 25+25 ms: 36 segments instead of 40 in the third flight, the last
/// 2.5 segments a round trip late, 0.152 s instead of 0.127 s).
#[test]
fn every_socket_counts_stretch_acks_in_slow_start() {
    let len = 1 << 20;
    let mut w = reverse_world(Setup {
        serve: Serve::Source { len, seed: 6 },
        client_link: leg(LEG_RTT_MS),
        server_link: leg(LEG_RTT_MS),
        host_buf: 4 << 20,
        budget: MEM,
        ..Setup::default()
    });
    let f = client_connect(&mut w, b"GET".to_vec(), Close::AfterSend);
    let seen_while_spliced = core::cell::Cell::new(false);
    assert!(w.run_until(secs(10), |w| {
        for (_, s) in w.proxy.sockets().iter() {
            if let smoltcp::socket::Socket::Tcp(s) = s {
                assert!(s.slow_start_counts_stretch_acks(), "{:?}", s.state());
            }
        }
        if w.proxy.stats().active == 1 {
            seen_while_spliced.set(true);
        }
        all_done(w) && w.proxy.stats().active == 0
    }));
    assert!(seen_while_spliced.get());
    let c = &w.hosts[0].flows[f];
    assert!(!c.reset && c.fin);
    assert_bytes(&c.received, &pattern(6, len), "client received");
}

/// The buffer whose window is short gets the memory, and only that buffer:
/// at 16 MiB with `buf=4m`, 10 MB downloads start at the listening sockets'
/// share (512k each way) and, over 45+5 ms legs, the client side's transmit
/// buffer (the proxy's sender on the 45 ms leg: full with the upstream
/// side's data waiting) grows to 4m; over 5+45 the upstream side's receive
/// buffer (its window on the 45 ms leg, right-sizing) does. The two buffers
/// the download does not use (the client side's receive buffer, the
/// upstream side's transmit buffer) never grow. Each finishes within 10 %
/// of a connection with 4m everywhere from the start (128 MiB; the bound as
/// in the asymmetric test above). When a socket's two buffers grew
/// together, a window cost twice what it gave, and at 16 MiB the long leg's
/// sender on 45+5 stopped at 2m. Memory for the last step comes from the
/// request way's empty transmit buffer (module `growth`), and right-sizing
/// anticipates the sender's growth (module `rightsize`; asking for twice
/// the last round trip only, 5+45 took 0.662 s against 0.574 s).
#[test]
fn the_socket_whose_window_is_short_gets_the_memory() {
    let mib = 1 << 20;
    let len = 10 << 20;
    for legs in [(45, 5), (5, 45)] {
        let (t, sizes) = transfer_by_dir("buf=4m", MEM, legs, 125_000_000, len, Dir::Down);
        let (t_full, full) = transfer("buf=4m", 8 * MEM, legs, 125_000_000, len, Dir::Down);
        assert_eq!(full, [(4 * mib, 4 * mib)]);
        let start = mib / 2;
        assert_eq!(sizes[0], ((start, start), (start, start)), "{legs:?}");
        let ((_, c_tx), (u_rx, _)) = *sizes.last().unwrap();
        let long = if legs.0 > legs.1 { c_tx } else { u_rx };
        assert_eq!(long, 4 * mib, "{legs:?}: {sizes:?}");
        let unused = sizes.iter().map(|&((c_rx, _), (_, u_tx))| c_rx.max(u_tx));
        assert!(unused.max() == Some(start), "{legs:?}: {sizes:?}");
        assert!(
            t * 10 <= t_full * 11,
            "{legs:?}: grown {t}, 4m from the start {t_full} ({sizes:?})"
        );
    }
}
