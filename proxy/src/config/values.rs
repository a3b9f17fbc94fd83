//! The value syntaxes of the command line (numbers, sizes, durations,
//! addresses, rules), each parsed strictly, and printed back in the shortest
//! form that parses to the same value.

use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;

use log::LevelFilter;

use super::{Rule, RuleKind};

/// Log levels by name, in the order the documentation lists them.
pub(super) const LEVELS: [(&str, LevelFilter); 6] = [
    ("off", LevelFilter::Off),
    ("error", LevelFilter::Error),
    ("warn", LevelFilter::Warn),
    ("info", LevelFilter::Info),
    ("debug", LevelFilter::Debug),
    ("trace", LevelFilter::Trace),
];

pub(super) fn parse_level(s: &str) -> Option<LevelFilter> {
    LEVELS.iter().find(|(n, _)| *n == s).map(|(_, l)| *l)
}

pub(super) fn level_name(l: LevelFilter) -> &'static str {
    LEVELS
        .iter()
        .find(|(_, v)| *v == l)
        .map_or("off", |(n, _)| n)
}

/// `on` or `off`.
pub(super) fn parse_switch(s: &str) -> Option<bool> {
    match s {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

pub(super) fn switch_name(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// A decimal integer in `min..=max`: digits only, no sign, no leading `+`.
pub(super) fn parse_uint(s: &str, min: u64, max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = s.parse().ok()?;
    (min..=max).contains(&v).then_some(v)
}

/// Dotted-quad IPv4, strict (no leading zeros, exactly four parts).
pub(super) fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// An address a host may have or talk to: not 0.0.0.0, broadcast or multicast.
pub(super) fn parse_unicast(s: &str) -> Option<Ipv4Addr> {
    parse_ipv4(s).filter(|a| !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast())
}

fn parse_port(s: &str) -> Option<u16> {
    parse_uint(s, 1, 65535).map(|p| p as u16)
}

/// `123`, `16k`, `1m`, `2g` (binary multiples, suffix case-insensitive).
pub fn parse_size(s: &str) -> Option<usize> {
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1u64 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1u64 << 30),
        _ => (s, 1),
    };
    let n = parse_uint(num, 0, u64::MAX)?;
    let v = n.checked_mul(mult)?;
    usize::try_from(v).ok()
}

/// `500ms`, `60s`, `5m`, `1h`. A unit is required.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, ms_per) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        return None;
    };
    let n = parse_uint(num, 0, u64::MAX)?;
    // Cap at about 31 years so every later arithmetic on it stays in range.
    let ms = n
        .checked_mul(ms_per)
        .filter(|ms| *ms <= 1_000_000_000_000)?;
    Some(Duration::from_millis(ms))
}

/// A non-zero duration.
pub(super) fn parse_nonzero_duration(s: &str) -> Option<Duration> {
    parse_duration(s).filter(|d| !d.is_zero())
}

/// A non-zero duration, or `off` for `None`.
pub(super) fn parse_opt_duration(s: &str) -> Option<Option<Duration>> {
    if s == "off" {
        return Some(None);
    }
    parse_nonzero_duration(s).map(Some)
}

pub(super) fn parse_rule(s: &str) -> Option<Rule> {
    let mut parts = s.split(':');
    let kind = parts.next()?;
    let rule = match kind {
        "reverse" => {
            let listen_port = parse_port(parts.next()?)?;
            let upstream = parse_unicast(parts.next()?)?;
            let upstream_port = parse_port(parts.next()?)?;
            Rule {
                listen_port,
                kind: RuleKind::Reverse {
                    upstream,
                    upstream_port,
                },
            }
        }
        "transparent" => Rule {
            listen_port: parse_port(parts.next()?)?,
            kind: RuleKind::Transparent,
        },
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(rule)
}

/// A size printed with the largest binary suffix that divides it.
pub(super) struct Size(pub usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n.is_multiple_of(1 << 30) {
            write!(f, "{}g", n >> 30)
        } else if n != 0 && n.is_multiple_of(1 << 20) {
            write!(f, "{}m", n >> 20)
        } else if n != 0 && n.is_multiple_of(1024) {
            write!(f, "{}k", n >> 10)
        } else {
            write!(f, "{n}")
        }
    }
}

/// A duration printed with the largest unit that divides it.
pub(super) struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms != 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A duration, or `off` for `None`.
pub(super) struct OptDur(pub Option<Duration>);

impl fmt::Display for OptDur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => Dur(d).fmt(f),
            None => f.write_str("off"),
        }
    }
}
