//! The delay element's link model on synthetic time: exact delay, FIFO order,
//! rate limit and drop-tail queue, seeded loss rate, and the command line.

use std::time::Duration;

use netdelay::cli::{direction_seeds, parse_command, Args, Command};
use netdelay::link::{Link, LinkConfig, Rng, Verdict};

const MS: Duration = Duration::from_millis(1);

/// An Ethernet frame of `len` bytes with EtherType `ethertype`, tagged with `id`.
fn frame(len: usize, ethertype: u16, id: u32) -> Vec<u8> {
    let mut f = vec![0u8; len.max(18)];
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f[14..18].copy_from_slice(&id.to_be_bytes());
    f
}

fn id_of(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[14], f[15], f[16], f[17]])
}

/// Step a synthetic clock in 10 µs ticks, offering frames at their arrival
/// times; returns (id, arrival, departure) for each forwarded frame.
fn run(
    link: &mut Link,
    arrivals: &[(Duration, Vec<u8>)],
    until: Duration,
) -> Vec<(u32, Duration, Duration)> {
    let tick = Duration::from_micros(10);
    let mut out = Vec::new();
    let mut sent_at = std::collections::HashMap::new();
    let mut next = 0;
    let mut now = Duration::ZERO;
    while now <= until {
        while next < arrivals.len() && arrivals[next].0 <= now {
            let f = arrivals[next].1.clone();
            sent_at.insert(id_of(&f), arrivals[next].0);
            link.offer(now, f);
            next += 1;
        }
        while let Some(f) = link.pop_due(now) {
            let id = id_of(&f);
            out.push((id, sent_at[&id], now));
        }
        now += tick;
    }
    out
}

#[test]
fn every_frame_leaves_exactly_one_delay_later_in_order() {
    let delay = Duration::from_micros(12_500);
    let mut link = Link::new(
        LinkConfig {
            delay,
            ..LinkConfig::default()
        },
        7,
    );
    // Irregular arrivals, several per tick and gaps, on the 10 µs grid.
    let mut rng = Rng::new(3);
    let mut t = Duration::ZERO;
    let arrivals: Vec<_> = (0..2000u32)
        .map(|i| {
            t += Duration::from_micros(10 * (rng.next_u64() % 50));
            (t, frame(1514, 0x0800, i))
        })
        .collect();
    let out = run(&mut link, &arrivals, t + 20 * MS);
    assert_eq!(out.len(), 2000, "every frame forwarded");
    for (k, (id, arrived, left)) in out.iter().enumerate() {
        assert_eq!(*id as usize, k, "FIFO order");
        assert_eq!(*left - *arrived, delay, "frame {id}: exact one-way delay");
    }
    let c = link.counters();
    assert_eq!(
        (c.received, c.forwarded, c.lost, c.queue_dropped),
        (2000, 2000, 0, 0)
    );
    assert_eq!(c.bytes_forwarded, 2000 * 1514);
    assert_eq!(link.in_flight(), 0);
}

#[test]
fn nothing_leaves_before_its_due_time() {
    let mut link = Link::new(
        LinkConfig {
            delay: 5 * MS,
            ..LinkConfig::default()
        },
        1,
    );
    assert_eq!(
        link.offer(MS, frame(100, 0x0800, 1)),
        Verdict::Queued(6 * MS)
    );
    assert_eq!(link.next_due(), Some(6 * MS));
    assert!(link.pop_due(6 * MS - Duration::from_nanos(1)).is_none());
    assert_eq!(link.pop_due(6 * MS).map(|f| id_of(&f)), Some(1));
    assert!(link.pop_due(100 * MS).is_none());
}

#[test]
fn rate_limit_serialises_frames_and_drops_past_the_queue_limit() {
    // 10 Mbit/s: a 1250-byte frame takes exactly 1 ms on the wire.
    let cfg = LinkConfig {
        delay: 10 * MS,
        rate_bps: 10_000_000,
        queue_limit: 20 * MS,
        ..LinkConfig::default()
    };
    let mut link = Link::new(cfg, 1);
    let mut verdicts = Vec::new();
    for i in 0..30 {
        verdicts.push(link.offer(Duration::ZERO, frame(1250, 0x0800, i)));
    }
    // Frame k finishes at (k+1) ms and is due 10 ms later; frame k waits k ms
    // for the wire, so frames 0..=20 fit within the 20 ms queue and 21.. drop.
    for (k, v) in verdicts.iter().enumerate() {
        if k <= 20 {
            assert_eq!(
                *v,
                Verdict::Queued((k as u32 + 1) * MS + 10 * MS),
                "frame {k}"
            );
        } else {
            assert_eq!(*v, Verdict::QueueFull, "frame {k}");
        }
    }
    let c = link.counters();
    assert_eq!((c.received, c.queue_dropped, c.lost), (30, 9, 0));
    // Once the wire has drained, a new frame goes straight on it.
    assert_eq!(
        link.offer(100 * MS, frame(1250, 0x0800, 99)),
        Verdict::Queued(111 * MS)
    );
}

#[test]
fn loss_rate_matches_the_probability_and_is_seeded() {
    let drops = |seed: u64, p: f64| -> Vec<bool> {
        let mut link = Link::new(
            LinkConfig {
                loss: p,
                ..LinkConfig::default()
            },
            seed,
        );
        (0..100_000)
            .map(|i| link.offer(Duration::ZERO, frame(60, 0x0800, i)) == Verdict::Lost)
            .collect()
    };
    for p in [0.002, 0.01, 0.2] {
        let d = drops(42, p);
        let lost = d.iter().filter(|x| **x).count() as f64;
        let n = d.len() as f64;
        let sigma = (n * p * (1.0 - p)).sqrt();
        assert!(
            (lost - n * p).abs() < 5.0 * sigma,
            "p={p}: {lost} lost of {n}, expected {} ± {}",
            n * p,
            5.0 * sigma
        );
        assert_eq!(d, drops(42, p), "same seed, same losses");
        assert_ne!(d, drops(43, p), "another seed, other losses");
    }
    assert!(drops(42, 0.0).iter().all(|x| !x), "no loss at p = 0");
    assert!(drops(42, 1.0).iter().all(|x| *x), "all lost at p = 1");
}

/// Which of `n` IP frames offered to `link` (interleaved with ARP frames when
/// `with_arp`) it loses, in order.
fn losses(link: &mut Link, n: u32, with_arp: bool) -> Vec<bool> {
    (0..n)
        .map(|i| {
            if with_arp {
                link.offer(Duration::ZERO, frame(60, 0x0806, i));
            }
            link.offer(Duration::ZERO, frame(60, 0x0800, i)) == Verdict::Lost
        })
        .collect()
}

#[test]
fn reseed_gives_the_same_losses_as_a_new_link_with_that_seed() {
    // What scripts/bench-accel relies on: before each transfer it reseeds
    // the running link, so that every target's k-th IP frame meets the same
    // decision whatever the link carried before.
    let cfg = LinkConfig {
        loss: 0.05,
        ..LinkConfig::default()
    };
    let fresh = |seed| losses(&mut Link::new(cfg.clone(), seed), 5000, false);
    let mut link = Link::new(cfg.clone(), 1);
    let before = losses(&mut link, 777, false);
    assert!(before.iter().any(|x| *x), "the link lost frames before");
    link.reseed(42);
    let after = losses(&mut link, 5000, false);
    assert_eq!(after, fresh(42), "reseed 42 = a new link seeded 42");
    assert!(
        after.iter().filter(|x| **x).count() > 150,
        "5 % of 5000 lost"
    );
    // Same seed again, after other traffic and with ARP frames in between
    // (which draw nothing): the same sequence.
    link.reseed(42);
    assert_eq!(
        losses(&mut link, 5000, true),
        after,
        "same seed, same losses"
    );
    link.reseed(43);
    assert_ne!(
        losses(&mut link, 5000, false),
        after,
        "another seed, other losses"
    );
    let c = link.counters();
    assert_eq!(c.received, 777 + 5000 * 4, "counters kept across reseeds");
    assert_eq!(
        link.in_flight() as u64,
        c.received - c.lost,
        "frames in flight kept"
    );
}

#[test]
fn stdin_commands_and_direction_seeds() {
    assert_eq!(parse_command("seed 12345"), Ok(Some(Command::Seed(12345))));
    assert_eq!(parse_command("  seed   7 "), Ok(Some(Command::Seed(7))));
    assert_eq!(parse_command(""), Ok(None));
    assert_eq!(
        parse_command("go"),
        Err("unknown command 'go' (expected 'seed N')".into())
    );
    for bad in ["seed", "seed -1", "seed x", "seed 1 2"] {
        assert!(parse_command(bad).is_err(), "'{bad}'");
    }
    // A reseed and --seed derive the directions alike, and the two differ.
    let a = Args::parse(&argv("ta tb --seed 99")).unwrap();
    assert_eq!(a.seeds(), direction_seeds(99));
    let (ab, ba) = direction_seeds(99);
    assert_ne!(ab, ba);
    assert_ne!(direction_seeds(98), direction_seeds(99));
}

#[test]
fn lost_frames_are_counted_and_the_rest_keep_their_delay() {
    let cfg = LinkConfig {
        delay: 3 * MS,
        loss: 0.1,
        ..LinkConfig::default()
    };
    let mut link = Link::new(cfg, 9);
    let arrivals: Vec<_> = (0..1000u32)
        .map(|i| (i * Duration::from_micros(50), frame(100, 0x86dd, i)))
        .collect();
    let out = run(&mut link, &arrivals, 60 * MS);
    let c = link.counters();
    assert_eq!(c.forwarded as usize, out.len());
    assert_eq!(c.forwarded + c.lost, 1000);
    assert!(c.lost > 50 && c.lost < 150, "about 10% lost: {}", c.lost);
    assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "order kept");
    assert!(out.iter().all(|(_, a, l)| *l - *a == 3 * MS));
}

#[test]
fn arp_is_never_lost() {
    let mut link = Link::new(
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        },
        1,
    );
    for i in 0..100 {
        assert_eq!(
            link.offer(Duration::ZERO, frame(60, 0x0806, i)),
            Verdict::Queued(Duration::ZERO)
        );
    }
    assert_eq!(
        link.offer(Duration::ZERO, frame(60, 0x0800, 100)),
        Verdict::Lost
    );
    assert_eq!(
        link.offer(Duration::ZERO, vec![0u8; 10]),
        Verdict::Queued(Duration::ZERO),
        "runt: not IP"
    );
}

#[test]
fn in_flight_bound_drops_and_counts() {
    let mut link = Link::new(
        LinkConfig {
            delay: MS,
            max_frames: 3,
            ..LinkConfig::default()
        },
        1,
    );
    for i in 0..5 {
        link.offer(Duration::ZERO, frame(60, 0x0800, i));
    }
    assert_eq!(link.in_flight(), 3);
    assert_eq!(link.counters().queue_dropped, 2);
}

fn argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[test]
fn command_line_sets_each_direction() {
    let a = Args::parse(&argv("ta tb --delay-ms 12.5 --loss-ba 0.01 --rate-mbit 100 --queue-ms 50 --seed 9 --stats /tmp/x")).unwrap();
    assert_eq!((a.tap_a.as_str(), a.tap_b.as_str()), ("ta", "tb"));
    assert_eq!(a.ab.delay, Duration::from_micros(12_500));
    assert_eq!(a.ba.delay, Duration::from_micros(12_500));
    assert_eq!((a.ab.loss, a.ba.loss), (0.0, 0.01));
    assert_eq!((a.ab.rate_bps, a.ba.rate_bps), (100_000_000, 100_000_000));
    assert_eq!(a.ab.queue_limit, 50 * MS);
    assert_eq!(a.seed, 9);
    assert_eq!(a.stats.as_deref(), Some("/tmp/x"));
    let (s1, s2) = a.seeds();
    assert_ne!(s1, s2);
    let b = Args::parse(&argv("ta tb --delay-ab-ms 1 --delay-ba-ms 2")).unwrap();
    assert_eq!((b.ab.delay, b.ba.delay), (MS, 2 * MS));
}

#[test]
fn bad_command_lines_are_clear_errors() {
    for (line, want) in [
        ("", "two TAP device names"),
        ("ta", "two TAP device names"),
        ("ta ta", "both 'ta'"),
        ("ta tb --delay-ms", "needs a value"),
        ("ta tb --delay-ms -1", "bad value for --delay-ms"),
        ("ta tb --delay-ms ten", "bad value for --delay-ms"),
        ("ta tb --loss 1.5", "bad value for --loss"),
        ("ta tb --loss NaN", "bad value for --loss"),
        ("ta tb --rate-mbit -3", "bad value for --rate-mbit"),
        ("ta tb --seed x", "bad value for --seed"),
        ("ta tb --frobnicate 1", "unknown option"),
        ("a_name_much_too_long tb", "bad TAP device name"),
    ] {
        let e = Args::parse(&argv(line)).unwrap_err();
        assert!(e.contains(want), "'{line}': {e}");
    }
}

#[test]
fn stats_line_names_each_count_once() {
    // scripts/bench-accel sums the `_lost=` and `_qdrop=` fields of this line.
    let ab = netdelay::link::Counters {
        received: 5,
        forwarded: 3,
        bytes_forwarded: 300,
        lost: 1,
        queue_dropped: 1,
    };
    let ba = netdelay::link::Counters {
        received: 2,
        forwarded: 2,
        bytes_forwarded: 120,
        lost: 0,
        queue_dropped: 0,
    };
    assert_eq!(
        netdelay::cli::stats_line(&ab, &ba),
        "ab_rx=5 ab_fwd=3 ab_bytes=300 ab_lost=1 ab_qdrop=1 ba_rx=2 ba_fwd=2 ba_bytes=120 ba_lost=0 ba_qdrop=0"
    );
}
