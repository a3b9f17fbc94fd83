//! The command line of `netdelay`.

use std::time::Duration;

use crate::link::{Counters, LinkConfig};

pub const USAGE: &str =
    "usage: netdelay TAP_A TAP_B [--delay-ms MS] [--delay-ab-ms MS] [--delay-ba-ms MS]
                [--loss P] [--loss-ab P] [--loss-ba P] [--rate-mbit R] [--queue-ms MS]
                [--seed N] [--stats FILE]
Forwards frames between TAP_A and TAP_B (created if missing). Direction ab is
A->B, ba is B->A. MS may be fractional (12.5); P is a probability (0.002 =
0.2%); R in Mbit/s (0 = no limit, the default); --queue-ms bounds the wait for
a rate-limited wire (default 100). Prints 'netdelay: ready on A B', waits for
one line on stdin, forwards until stdin ends, then prints the final counts.
While it runs, a line 'seed N' on stdin restarts both directions' loss
decisions from N (as --seed N would), and it answers 'netdelay: seed N'.
--stats FILE is rewritten with the counts while it runs (at most every 20 ms).";

/// Parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    pub tap_a: String,
    pub tap_b: String,
    pub ab: LinkConfig,
    pub ba: LinkConfig,
    pub seed: u64,
    pub stats: Option<String>,
}

fn millis(opt: &str, v: &str) -> Result<Duration, String> {
    let ms: f64 = v
        .parse()
        .map_err(|_| format!("bad value for {opt}: '{v}' (milliseconds)"))?;
    if !(0.0..=600_000.0).contains(&ms) {
        return Err(format!("bad value for {opt}: '{v}' (0 to 600000 ms)"));
    }
    Ok(Duration::from_nanos((ms * 1e6).round() as u64))
}

fn probability(opt: &str, v: &str) -> Result<f64, String> {
    let p: f64 = v
        .parse()
        .map_err(|_| format!("bad value for {opt}: '{v}' (a probability)"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("bad value for {opt}: '{v}' (0 to 1)"));
    }
    Ok(p)
}

fn tap_name(v: Option<&String>) -> Result<String, String> {
    let v = v.ok_or_else(|| format!("two TAP device names needed\n{USAGE}"))?;
    if v.is_empty() || v.len() > 15 || v.starts_with('-') || v.contains('/') {
        return Err(format!("bad TAP device name '{v}' (1 to 15 characters)"));
    }
    Ok(v.clone())
}

impl Args {
    /// Parse the arguments after the program name.
    pub fn parse(args: &[String]) -> Result<Args, String> {
        if args.iter().any(|a| a == "-h" || a == "--help") {
            return Err(USAGE.into());
        }
        let mut a = Args {
            tap_a: tap_name(args.first())?,
            tap_b: tap_name(args.get(1))?,
            ab: LinkConfig::default(),
            ba: LinkConfig::default(),
            seed: 1,
            stats: None,
        };
        if a.tap_a == a.tap_b {
            return Err(format!("TAP_A and TAP_B are both '{}'", a.tap_a));
        }
        let mut it = args[2..].iter();
        while let Some(k) = it.next() {
            let v = it
                .next()
                .ok_or_else(|| format!("{k} needs a value\n{USAGE}"))?;
            match k.as_str() {
                "--delay-ms" => {
                    a.ab.delay = millis(k, v)?;
                    a.ba.delay = a.ab.delay;
                }
                "--delay-ab-ms" => a.ab.delay = millis(k, v)?,
                "--delay-ba-ms" => a.ba.delay = millis(k, v)?,
                "--loss" => {
                    a.ab.loss = probability(k, v)?;
                    a.ba.loss = a.ab.loss;
                }
                "--loss-ab" => a.ab.loss = probability(k, v)?,
                "--loss-ba" => a.ba.loss = probability(k, v)?,
                "--rate-mbit" => {
                    let r: f64 = v
                        .parse()
                        .ok()
                        .filter(|r: &f64| (0.0..=1e6).contains(r))
                        .ok_or_else(|| format!("bad value for {k}: '{v}' (Mbit/s, 0 = none)"))?;
                    a.ab.rate_bps = (r * 1e6).round() as u64;
                    a.ba.rate_bps = a.ab.rate_bps;
                }
                "--queue-ms" => {
                    a.ab.queue_limit = millis(k, v)?;
                    a.ba.queue_limit = a.ab.queue_limit;
                }
                "--seed" => {
                    a.seed = v
                        .parse()
                        .map_err(|_| format!("bad value for {k}: '{v}' (a whole number)"))?
                }
                "--stats" => a.stats = Some(v.clone()),
                _ => return Err(format!("unknown option '{k}'\n{USAGE}")),
            }
        }
        Ok(a)
    }

    /// The two directions' seeds: different, both derived from `--seed`.
    pub fn seeds(&self) -> (u64, u64) {
        direction_seeds(self.seed)
    }

    /// One line describing the configuration.
    pub fn describe(&self) -> String {
        let d = |c: &LinkConfig| {
            format!(
                "delay={:.3}ms loss={} rate={}",
                c.delay.as_secs_f64() * 1e3,
                c.loss,
                if c.rate_bps == 0 {
                    "none".to_string()
                } else {
                    format!("{}bit/s queue={}ms", c.rate_bps, c.queue_limit.as_millis())
                }
            )
        };
        format!(
            "ab: {} | ba: {} | seed={}",
            d(&self.ab),
            d(&self.ba),
            self.seed
        )
    }
}

/// The seeds of directions ab and ba for one link seed (at start and on
/// reseed alike, so 'seed N' on stdin and `--seed N` decide the same losses).
pub fn direction_seeds(seed: u64) -> (u64, u64) {
    (seed, seed ^ 0x5EED_0000_BA5E_0000)
}

/// A command read from stdin after the go line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Restart the loss decisions of both directions from this link seed.
    Seed(u64),
}

/// Parse one stdin line: `seed N`; a blank line is no command.
pub fn parse_command(line: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Ok(None),
        ["seed", n] => n
            .parse()
            .map(|n| Some(Command::Seed(n)))
            .map_err(|_| format!("bad seed '{n}' (a whole number)")),
        _ => Err(format!(
            "unknown command '{}' (expected 'seed N')",
            line.trim()
        )),
    }
}

/// The stats line: `ab_fwd=.. ab_bytes=.. ab_lost=.. ab_qdrop=.. ba_...`.
pub fn stats_line(ab: &Counters, ba: &Counters) -> String {
    let one = |n: &str, c: &Counters| {
        format!(
            "{n}_rx={} {n}_fwd={} {n}_bytes={} {n}_lost={} {n}_qdrop={}",
            c.received, c.forwarded, c.bytes_forwarded, c.lost, c.queue_dropped
        )
    };
    format!("{} {}", one("ab", ab), one("ba", ba))
}
