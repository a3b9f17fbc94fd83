//! SYN floods: spoofed SYNs from unused on-link addresses (their SYN-ACKs
//! can never be delivered) must neither lock real clients out nor make the
//! backend open connections (engine `halfopen`).

use super::*;

/// Spoofed SYNs to the proxy's port 80, `per_sec` a second, each from the
/// next of 150 on-link addresses nobody holds, injected from a port of
/// their own.
struct SynFlood {
    port: usize,
    every: Duration,
    next: Instant,
    sent: u32,
}

impl SynFlood {
    fn new(w: &mut World, per_sec: u64) -> SynFlood {
        SynFlood {
            port: w.net.add_spoof_port(),
            every: Duration::from_micros(1_000_000 / per_sec),
            next: w.now(),
            sent: 0,
        }
    }

    /// Run `w` for `limit` or until `cond`, sending the SYNs on schedule.
    fn run_until(
        &mut self,
        w: &mut World,
        limit: Duration,
        mut cond: impl FnMut(&World) -> bool,
    ) -> bool {
        let end = w.now() + limit;
        while w.now() < end {
            if cond(w) {
                return true;
            }
            while self.next <= w.now() {
                let n = self.sent;
                let host = 100 + (n % 150) as u8;
                let frame = crate::sim::tcp_frame(
                    smoltcp::wire::EthernetAddress([0x02, 0xee, 0, 0, 0, host]),
                    mac(2),
                    (Ipv4Address::new(10, 0, 0, host), 1024 + (n % 60000) as u16),
                    (PROXY, 80),
                    crate::sim::Spoof::Syn,
                    n.wrapping_mul(2_654_435_761),
                );
                w.net.inject(self.port, frame);
                self.sent += 1;
                self.next += self.every;
            }
            let until = self.next.min(end);
            w.run_until(until - w.now(), &mut cond);
            if w.now() < until {
                w.net.advance(until);
            }
        }
        cond(w)
    }
}

/// What fills the 64 default slots: each spoofed SYN holds one for
/// `syn_timeout` (3 s), so 64 / 3 s = 21.3 SYN/s. The flood runs at ten
/// times that. Ten real clients connect one after another, a second
/// apart: at least nine
/// (in practice all) are served byte for byte, and the backend sees no
/// connection for a spoofed SYN once the flood has made 8 clients
/// half-open (`max_conns / 8`, where pressure starts): at most 8 in all.
/// Before the upstream was deferred, every spoofed SYN opened one.
#[test]
fn syn_flood_at_ten_times_the_fill_rate_reaches_neither_slots_nor_backend() {
    let cfg = Config::default();
    let fill_rate = cfg.max_conns as u64 / cfg.syn_timeout.as_secs();
    assert_eq!(fill_rate, 21);
    let mut w = reverse_world(Setup {
        server_backlog: 64,
        ..Setup::default()
    });
    let mut flood = SynFlood::new(&mut w, 10 * fill_rate + 4);
    // The flood fills the slots first (two syn_timeouts).
    flood.run_until(&mut w, secs(6), |_| false);
    let st = w.proxy.stats();
    assert_eq!(st.active, cfg.max_conns, "the flood fills every slot: {st}");
    let spoofed_at_backend = w.hosts[1].accepted;
    assert!(
        spoofed_at_backend <= cfg.max_conns / 8,
        "{spoofed_at_backend} spoofed SYNs reached the backend"
    );
    let mut served = 0;
    for i in 0..20u64 {
        let data = pattern(200 + i, 30_000);
        let start = w.now();
        let before = w.hosts[1].accepted;
        let f = client_connect(&mut w, data.clone(), Close::AfterSend);
        let done = flood.run_until(&mut w, secs(10), |w| w.hosts[0].flows[f].done);
        let c = &w.hosts[0].flows[f];
        if done && !c.reset && c.fin && c.received == data {
            served += 1;
        } else {
            std::println!(
                "real client {i} not served: {:?}, stats {}",
                flow_summary(&w.hosts[0], f),
                w.proxy.stats()
            );
        }
        assert_eq!(
            w.hosts[1].accepted - before,
            usize::from(done),
            "backend connections while real client {i} was served"
        );
        // The first ten a second apart, the next ten at once after each
        // other (sockets reused within a fraction of a second).
        let gap = if i < 10 { secs(1) } else { Duration::ZERO };
        let left = (start + gap).max(w.now()) - w.now();
        flood.run_until(&mut w, left, |_| false);
    }
    std::println!(
        "flood: {} spoofed SYNs at {} SYN/s, {served} of 20 real clients served, \
         backend saw {} connections ({spoofed_at_backend} before the first real client); {}",
        flood.sent,
        10 * fill_rate + 4,
        w.hosts[1].accepted,
        w.proxy.stats()
    );
    assert!(served >= 18, "only {served} of 20 real clients served");
    assert!(flood.sent > 3000, "only {} spoofed SYNs", flood.sent);
    assert_eq!(w.hosts[1].accepted, spoofed_at_backend + served);
}

/// Time until the client has its 1000-byte echo back through one
/// connection, with legs of `rtt_ms` (client, server) and `extra` config.
fn echo_time(extra: &str, (client_rtt_ms, server_rtt_ms): (u64, u64)) -> Duration {
    let mut w = reverse_world(Setup {
        extra,
        client_link: Link::delay_ms(client_rtt_ms / 2),
        server_link: Link::delay_ms(server_rtt_ms / 2),
        ..Setup::default()
    });
    let data = pattern(5, 1000);
    let f = client_connect(&mut w, data.clone(), Close::AfterSend);
    assert!(w.run_until(secs(10), |w| w.hosts[0].flows[f].received_len == 1000));
    let c = &w.hosts[0].flows[f];
    assert_bytes(&c.received, &data, "echo");
    w.now() - c.t_start
}

/// The price of deferring the upstream side (which pressure makes every
/// new connection pay, and instances of fewer than 8 slots always): the
/// handshakes no longer overlap, so a connection's first exchange takes
/// longer by at least the shorter leg's round trip and at most
/// `min(client RTT, 2 x upstream RTT)` (what this simulator measures:
/// 2 ms for legs of 2 + 20 ms, 4 ms for 20 + 2, 20 ms for 20 + 20, nothing
/// when one leg has no delay); nothing else.
#[test]
fn deferring_the_upstream_costs_at_most_the_shorter_round_trip_or_two() {
    for legs in [(2, 20), (20, 2), (20, 20), (0, 50), (50, 0), (10, 2)] {
        let overlap = echo_time("max_conns=64", legs);
        let deferred = echo_time("max_conns=4", legs);
        let ms = Duration::from_millis;
        let (least, most) = (ms(legs.0.min(legs.1)), ms(legs.0.min(2 * legs.1)));
        std::println!("legs {legs:?} ms: overlapping {overlap}, deferred {deferred}");
        assert!(
            deferred >= overlap + least && deferred <= overlap + most + ms(1),
            "legs {legs:?}: overlapping {overlap}, deferred {deferred}"
        );
    }
}
