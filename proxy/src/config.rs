//! The one parser for Miniproxy's command line (`extra=` in the xl config).
//!
//! The unikernel and the host runner (`miniproxy-tap`) both call [`Config::parse`]
//! on the same `key=value` line, so a line that works on the host works unchanged
//! in the guest.
//!
//! # Grammar
//!
//! Tokens are separated by one or more spaces or tabs; leading and trailing
//! whitespace is ignored. Every token is `key=value`. Every key may appear at most
//! once, except `rule`, which may be repeated (one rule per occurrence, up to
//! [`MAX_RULES`]). An empty line is valid: it yields the defaults below and no
//! rules (the kernel boots and does not proxy). There are no silent defaults for
//! malformed input: an unknown key, a repeated key, a token without `=`, or a
//! value that does not parse is an error naming the key and the value.
//!
//! | key               | value                                             | default    |
//! |-------------------|---------------------------------------------------|------------|
//! | `loglevel`        | `off` `error` `warn` `info` `debug` `trace`       | `info`     |
//! | `ip`              | `a.b.c.d/len` or `dhcp`                           | `dhcp`     |
//! | `gw`              | `a.b.c.d` (only with a static `ip`)               | none       |
//! | `dhcp_timeout`    | duration                                          | `10s`      |
//! | `idle_exit`       | duration or `off`: exit after this long with no connection | `off` |
//! | `rx_bufs`         | netfront RX buffers posted, `1`..=`256`           | `64`       |
//! | `tx_bufs`         | netfront TX frames in flight, `1`..=`256`         | `64`       |
//! | `offload`         | `on` `off`: TCP segmentation and checksum offload with the netback (see below) | `on` |
//! | `rule`            | see below (repeatable)                            | none       |
//! | `max_conns`       | concurrent spliced connections, `1`..=`65535`     | `64`       |
//! | `backlog`         | listening sockets kept ready per rule, `1`..=`64` | `4`        |
//! | `buf`             | largest size of a socket buffer (each socket has an RX and a TX one), `1k`..=`16m` | `64k` |
//! | `buf_min`         | guaranteed size of a socket buffer, `1k`..=`16m`, at most `buf` | `4k` (or `buf` if smaller) |
//! | `idle_timeout`    | duration or `off`                                 | `300s`     |
//! | `connect_timeout` | duration (upstream handshake)                     | `10s`      |
//! | `keepalive`       | duration or `off` (TCP keep-alive interval)       | `60s`      |
//! | `cc`              | `reno` `none` (congestion control; smoltcp's Cubic needs `std` floats) | `reno` |
//! | `ack_delay`       | duration or `off` (delayed ACK)                   | `off`      |
//! | `mem`             | size: memory budget for the engine                | none (the kernel passes its heap) |
//!
//! ## Socket buffers and memory
//!
//! Every connection has two sockets (client side, upstream side), each with an RX
//! and a TX buffer. A socket's buffers are sized once, when the socket is created,
//! between `buf_min` and `buf`: as large as the memory budget still affords while
//! keeping `buf_min` for every socket that may still be needed. So one connection
//! alone gets `buf`-sized buffers (a `buf`-sized TCP window), and `max_conns`
//! connections at once always fit, with buffers down to `buf_min`. The engine
//! refuses to start when `max_conns` connections at `buf_min` do not fit the
//! budget (`mem=`, or what the kernel passes), and says which `max_conns` or
//! `buf_min` would (see `proxy::engine`). A `buf_min` below `buf` only costs
//! window size under load; `buf_min=buf` gives fixed-size buffers (the worst case
//! at `buf` must then fit).
//!
//! `buf_min=4k` by default: about three full-size segments per window, which
//! keeps a loaded connection moving on the short paths a proxy instance sits on,
//! and reserves 8 KiB per socket (with the default `max_conns=64`, about 1.2 MiB
//! in all), so the default profile fits a 4 MB guest and the rest of the budget
//! goes to larger windows for the connections that are open.
//!
//! ## Offload
//!
//! `offload=on` lets the netfront driver negotiate TCP segmentation offload and
//! checksum offload with the backend: the engine then hands the driver TCP
//! segments of up to 64 KiB with blank checksums, and may receive merged ones.
//! `offload=off` keeps every frame within the MTU with checksums computed in
//! software. (The key is for the kernel's driver; the host runner ignores it.)
//!
//! Durations are a decimal number followed by a unit: `ms`, `s`, `m` or `h`
//! (`500ms`, `60s`, `5m`, `1h`). A bare number is an error (`60` is ambiguous).
//! Sizes are a decimal number optionally followed by `k`, `m` or `g` (binary
//! multiples, case-insensitive): `16384`, `16k`, `1m`.
//!
//! ## Rules
//!
//! * `rule=reverse:LPORT:A.B.C.D:UPORT` — listen on TCP port `LPORT` of the
//!   instance's own address and splice every accepted connection to
//!   `A.B.C.D:UPORT`.
//! * `rule=transparent:LPORT` — accept connections to port `LPORT` of *any*
//!   destination address routed through the instance (smoltcp any-ip) and splice
//!   each one to its original destination address and port.
//!
//! Two rules may not listen on the same port. Ports are `1`..=`65535`.
//!
//! Example:
//!
//! ```text
//! ip=10.0.0.2/24 gw=10.0.0.1 rule=reverse:80:10.0.0.1:8080 rule=transparent:443 max_conns=256 buf=16k idle_timeout=60s
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;

pub use log::LevelFilter;

/// Most rules one instance accepts.
pub const MAX_RULES: usize = 16;
/// Default of `buf=`.
pub const DEFAULT_BUF: usize = 64 * 1024;
/// Default of `buf_min=` (or `buf=` when that is smaller).
pub const DEFAULT_BUF_MIN: usize = 4 * 1024;
/// Smallest `buf=` and `buf_min=`.
pub const MIN_BUF: usize = 1024;
/// Largest `buf=` and `buf_min=`.
pub const MAX_BUF: usize = 16 << 20;

/// How the instance gets its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSetting {
    /// Ask a DHCP server (`ip=dhcp`).
    Dhcp,
    /// A fixed address and prefix length (`ip=10.0.0.2/24`).
    Static { addr: Ipv4Addr, prefix_len: u8 },
}

/// Which congestion controller the engine asks smoltcp for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CongestionControl {
    None,
    Reno,
}

impl CongestionControl {
    fn name(self) -> &'static str {
        match self {
            CongestionControl::None => "none",
            CongestionControl::Reno => "reno",
        }
    }
}

/// What happens to a connection accepted by a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Splice to this fixed upstream.
    Reverse { upstream: Ipv4Addr, upstream_port: u16 },
    /// Splice to the connection's original destination (any-ip).
    Transparent,
}

/// One proxy rule: a listening port and what to do with what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub listen_port: u16,
    pub kind: RuleKind,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RuleKind::Reverse {
                upstream,
                upstream_port,
            } => write!(f, "reverse:{}:{}:{}", self.listen_port, upstream, upstream_port),
            RuleKind::Transparent => write!(f, "transparent:{}", self.listen_port),
        }
    }
}

/// The typed command line. Build it with [`Config::parse`] (or start from
/// [`Config::default`], which is what an empty line gives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    // Kernel and network keys.
    pub loglevel: LevelFilter,
    pub ip: IpSetting,
    pub gw: Option<Ipv4Addr>,
    pub dhcp_timeout: Duration,
    /// Exit when no connection has been active for this long; `None` = never.
    pub idle_exit: Option<Duration>,
    /// Netfront RX buffers to post.
    pub rx_bufs: u16,
    /// Netfront TX buffers (frames in flight to the backend).
    pub tx_bufs: u16,
    /// Netfront: negotiate TCP segmentation offload and checksum offload.
    pub offload: bool,
    // Proxy keys.
    pub rules: Vec<Rule>,
    pub max_conns: usize,
    /// Listening sockets kept ready per rule.
    pub backlog: usize,
    /// Largest size in bytes of a socket buffer (every socket has one RX and one TX
    /// buffer; both get the same size, chosen when the socket is created).
    pub buf: usize,
    /// Guaranteed size in bytes of a socket buffer: `max_conns` connections at this
    /// size must fit the memory budget. `1024 <= buf_min <= buf`.
    pub buf_min: usize,
    /// Close a spliced connection after this long without a byte either way; `None` = never.
    pub idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    /// TCP keep-alive interval on both sockets of a connection; `None` = off.
    pub keepalive: Option<Duration>,
    pub cc: CongestionControl,
    /// Delayed-ACK timeout; `None` = ACK immediately.
    pub ack_delay: Option<Duration>,
    /// Memory budget for the engine in bytes; `None` = decided by the caller.
    pub mem: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            loglevel: LevelFilter::Info,
            ip: IpSetting::Dhcp,
            gw: None,
            dhcp_timeout: Duration::from_secs(10),
            idle_exit: None,
            rx_bufs: 64,
            tx_bufs: 64,
            offload: true,
            rules: Vec::new(),
            max_conns: 64,
            backlog: 4,
            buf: DEFAULT_BUF,
            buf_min: DEFAULT_BUF_MIN,
            idle_timeout: Some(Duration::from_secs(300)),
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Duration::from_secs(60)),
            cc: CongestionControl::Reno,
            ack_delay: None,
            mem: None,
        }
    }
}

/// Why a command line was refused. Its `Display` names the key and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A token without `=`.
    MissingEquals { token: String },
    /// A key this parser does not know.
    UnknownKey { key: String, value: String },
    /// A non-repeatable key given twice.
    DuplicateKey { key: String, value: String },
    /// A value that does not parse or is out of range.
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    /// A value that parses but contradicts another key.
    Conflict {
        key: String,
        value: String,
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::MissingEquals { token } => {
                write!(f, "config: token '{token}' is not of the form key=value")
            }
            ConfigError::UnknownKey { key, value } => {
                write!(f, "config: unknown key '{key}' (value '{value}')")
            }
            ConfigError::DuplicateKey { key, value } => {
                write!(f, "config: duplicate key '{key}' (second value '{value}')")
            }
            ConfigError::BadValue {
                key,
                value,
                expected,
            } => write!(
                f,
                "config: bad value for key '{key}': '{value}' (expected {expected})"
            ),
            ConfigError::Conflict { key, value, reason } => {
                write!(f, "config: key '{key}' with value '{value}': {reason}")
            }
        }
    }
}

const KEYS: &[&str] = &[
    "loglevel",
    "ip",
    "gw",
    "dhcp_timeout",
    "idle_exit",
    "rx_bufs",
    "tx_bufs",
    "offload",
    "rule",
    "max_conns",
    "backlog",
    "buf",
    "buf_min",
    "idle_timeout",
    "connect_timeout",
    "keepalive",
    "cc",
    "ack_delay",
    "mem",
];

impl Config {
    /// Parse one command line. See the module documentation for the grammar.
    pub fn parse(line: &str) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let mut seen = [false; KEYS.len()];
        let mut gw_value: Option<&str> = None;
        let mut buf_min_value: Option<&str> = None;
        for token in line.split([' ', '\t', '\n', '\r']).filter(|t| !t.is_empty()) {
            let Some((key, value)) = token.split_once('=') else {
                return Err(ConfigError::MissingEquals {
                    token: token.into(),
                });
            };
            let Some(idx) = KEYS.iter().position(|k| *k == key) else {
                return Err(ConfigError::UnknownKey {
                    key: key.into(),
                    value: value.into(),
                });
            };
            if key != "rule" {
                if seen[idx] {
                    return Err(ConfigError::DuplicateKey {
                        key: key.into(),
                        value: value.into(),
                    });
                }
                seen[idx] = true;
            }
            let bad = |expected: &'static str| ConfigError::BadValue {
                key: key.into(),
                value: value.into(),
                expected,
            };
            match key {
                "loglevel" => {
                    cfg.loglevel = match value {
                        "off" => LevelFilter::Off,
                        "error" => LevelFilter::Error,
                        "warn" => LevelFilter::Warn,
                        "info" => LevelFilter::Info,
                        "debug" => LevelFilter::Debug,
                        "trace" => LevelFilter::Trace,
                        _ => return Err(bad("one of off, error, warn, info, debug, trace")),
                    }
                }
                "ip" => {
                    cfg.ip = if value == "dhcp" {
                        IpSetting::Dhcp
                    } else {
                        let e = "an address with prefix like 10.0.0.2/24, or dhcp";
                        let (a, l) = value.split_once('/').ok_or_else(|| bad(e))?;
                        let addr = parse_ipv4(a).ok_or_else(|| bad(e))?;
                        let prefix_len = parse_uint(l, 0, 32).ok_or_else(|| bad(e))? as u8;
                        if prefix_len == 0
                            || addr.is_unspecified()
                            || addr.is_broadcast()
                            || addr.is_multicast()
                        {
                            return Err(bad(e));
                        }
                        IpSetting::Static { addr, prefix_len }
                    }
                }
                "gw" => {
                    let a = parse_ipv4(value)
                        .filter(|a| !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast())
                        .ok_or_else(|| bad("an IPv4 address like 10.0.0.1"))?;
                    cfg.gw = Some(a);
                    gw_value = Some(value);
                }
                "dhcp_timeout" => {
                    cfg.dhcp_timeout = parse_duration(value)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| bad("a non-zero duration like 10s"))?
                }
                "idle_exit" => {
                    cfg.idle_exit = parse_opt_duration(value)
                        .ok_or_else(|| bad("a non-zero duration like 60s, or off"))?
                }
                "rx_bufs" => {
                    cfg.rx_bufs = parse_uint(value, 1, 256)
                        .ok_or_else(|| bad("a number from 1 to 256"))?
                        as u16
                }
                "tx_bufs" => {
                    cfg.tx_bufs = parse_uint(value, 1, 256)
                        .ok_or_else(|| bad("a number from 1 to 256"))?
                        as u16
                }
                "offload" => {
                    cfg.offload = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(bad("on or off")),
                    }
                }
                "rule" => {
                    let r = parse_rule(value).ok_or_else(|| {
                        bad("reverse:LPORT:A.B.C.D:UPORT or transparent:LPORT, ports 1-65535")
                    })?;
                    if cfg.rules.iter().any(|o| o.listen_port == r.listen_port) {
                        return Err(ConfigError::Conflict {
                            key: key.into(),
                            value: value.into(),
                            reason: "another rule already listens on this port",
                        });
                    }
                    if cfg.rules.len() >= MAX_RULES {
                        return Err(ConfigError::Conflict {
                            key: key.into(),
                            value: value.into(),
                            reason: "too many rules (at most 16)",
                        });
                    }
                    cfg.rules.push(r);
                }
                "max_conns" => {
                    cfg.max_conns = parse_uint(value, 1, 65535)
                        .ok_or_else(|| bad("a number from 1 to 65535"))?
                        as usize
                }
                "backlog" => {
                    cfg.backlog = parse_uint(value, 1, 64)
                        .ok_or_else(|| bad("a number from 1 to 64"))?
                        as usize
                }
                "buf" => {
                    cfg.buf = parse_size(value)
                        .filter(|s| (MIN_BUF..=MAX_BUF).contains(s))
                        .ok_or_else(|| bad("a size like 16k, from 1k to 16m"))?
                }
                "buf_min" => {
                    cfg.buf_min = parse_size(value)
                        .filter(|s| (MIN_BUF..=MAX_BUF).contains(s))
                        .ok_or_else(|| bad("a size like 4k, from 1k to 16m"))?;
                    buf_min_value = Some(value);
                }
                "idle_timeout" => {
                    cfg.idle_timeout = parse_opt_duration(value)
                        .ok_or_else(|| bad("a non-zero duration like 60s, or off"))?
                }
                "connect_timeout" => {
                    cfg.connect_timeout = parse_duration(value)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| bad("a non-zero duration like 10s"))?
                }
                "keepalive" => {
                    cfg.keepalive = parse_opt_duration(value)
                        .ok_or_else(|| bad("a non-zero duration like 60s, or off"))?
                }
                "cc" => {
                    cfg.cc = match value {
                        "reno" => CongestionControl::Reno,
                        "none" => CongestionControl::None,
                        _ => return Err(bad("one of reno, none")),
                    }
                }
                "ack_delay" => {
                    cfg.ack_delay = parse_opt_duration(value)
                        .ok_or_else(|| bad("a non-zero duration like 10ms, or off"))?
                }
                "mem" => {
                    cfg.mem = Some(
                        parse_size(value)
                            .filter(|s| *s >= 4096)
                            .ok_or_else(|| bad("a size like 8m, at least 4k"))?,
                    )
                }
                _ => unreachable!("every key in KEYS has an arm"),
            }
        }
        if let (Some(v), IpSetting::Dhcp) = (gw_value, cfg.ip) {
            return Err(ConfigError::Conflict {
                key: "gw".into(),
                value: v.into(),
                reason: "a gateway needs a static ip= (DHCP supplies its own)",
            });
        }
        match buf_min_value {
            Some(v) if cfg.buf_min > cfg.buf => {
                return Err(ConfigError::Conflict {
                    key: "buf_min".into(),
                    value: v.into(),
                    reason: "larger than buf= (buf is the largest socket buffer, buf_min the guaranteed one)",
                });
            }
            Some(_) => {}
            // Not given: the default, but never above buf.
            None => cfg.buf_min = DEFAULT_BUF_MIN.min(cfg.buf),
        }
        Ok(cfg)
    }

    /// One line describing the parsed configuration. It is itself a valid
    /// command line: parsing it gives back an equal `Config`.
    pub fn summary(&self) -> String {
        alloc::format!("{self}")
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lvl = match self.loglevel {
            LevelFilter::Off => "off",
            LevelFilter::Error => "error",
            LevelFilter::Warn => "warn",
            LevelFilter::Info => "info",
            LevelFilter::Debug => "debug",
            LevelFilter::Trace => "trace",
        };
        write!(f, "loglevel={lvl}")?;
        match self.ip {
            IpSetting::Dhcp => write!(f, " ip=dhcp")?,
            IpSetting::Static { addr, prefix_len } => write!(f, " ip={addr}/{prefix_len}")?,
        }
        if let Some(gw) = self.gw {
            write!(f, " gw={gw}")?;
        }
        write!(f, " dhcp_timeout=")?;
        fmt_duration(f, self.dhcp_timeout)?;
        write!(f, " idle_exit=")?;
        fmt_opt_duration(f, self.idle_exit)?;
        write!(
            f,
            " rx_bufs={} tx_bufs={} offload={}",
            self.rx_bufs,
            self.tx_bufs,
            if self.offload { "on" } else { "off" }
        )?;
        for r in &self.rules {
            write!(f, " rule={r}")?;
        }
        write!(f, " max_conns={} backlog={} buf=", self.max_conns, self.backlog)?;
        fmt_size(f, self.buf)?;
        write!(f, " buf_min=")?;
        fmt_size(f, self.buf_min)?;
        write!(f, " idle_timeout=")?;
        fmt_opt_duration(f, self.idle_timeout)?;
        write!(f, " connect_timeout=")?;
        fmt_duration(f, self.connect_timeout)?;
        write!(f, " keepalive=")?;
        fmt_opt_duration(f, self.keepalive)?;
        write!(f, " cc={} ack_delay=", self.cc.name())?;
        fmt_opt_duration(f, self.ack_delay)?;
        if let Some(m) = self.mem {
            write!(f, " mem=")?;
            fmt_size(f, m)?;
        }
        Ok(())
    }
}

fn fmt_size(f: &mut fmt::Formatter<'_>, n: usize) -> fmt::Result {
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

fn fmt_duration(f: &mut fmt::Formatter<'_>, d: Duration) -> fmt::Result {
    let ms = d.as_millis();
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

fn fmt_opt_duration(f: &mut fmt::Formatter<'_>, d: Option<Duration>) -> fmt::Result {
    match d {
        Some(d) => fmt_duration(f, d),
        None => write!(f, "off"),
    }
}

/// A decimal integer in `min..=max`: digits only, no sign, no leading `+`.
fn parse_uint(s: &str, min: u64, max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = s.parse().ok()?;
    (min..=max).contains(&v).then_some(v)
}

/// Dotted-quad IPv4, strict (no leading zeros, exactly four parts).
fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
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
    let ms = n.checked_mul(ms_per).filter(|ms| *ms <= 1_000_000_000_000)?;
    Some(Duration::from_millis(ms))
}

/// A non-zero duration, or `off` for `None`.
fn parse_opt_duration(s: &str) -> Option<Option<Duration>> {
    if s == "off" {
        return Some(None);
    }
    parse_duration(s).filter(|d| !d.is_zero()).map(Some)
}

fn parse_rule(s: &str) -> Option<Rule> {
    let mut parts = s.split(':');
    let kind = parts.next()?;
    let rule = match kind {
        "reverse" => {
            let listen_port = parse_port(parts.next()?)?;
            let upstream = parse_ipv4(parts.next()?)?;
            let upstream_port = parse_port(parts.next()?)?;
            if upstream.is_unspecified() || upstream.is_broadcast() || upstream.is_multicast() {
                return None;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn err(line: &str) -> String {
        Config::parse(line).unwrap_err().to_string()
    }

    #[test]
    fn empty_line_is_defaults_without_rules() {
        for line in ["", "   ", "\t \n"] {
            let c = Config::parse(line).unwrap();
            assert_eq!(c, Config::default());
            assert!(c.rules.is_empty());
        }
        let c = Config::default();
        assert_eq!(c.loglevel, LevelFilter::Info);
        assert_eq!(c.ip, IpSetting::Dhcp);
        assert_eq!(c.buf, 65536);
        assert_eq!(c.buf_min, 4096);
        assert!(c.offload);
        assert_eq!(c.max_conns, 64);
    }

    #[test]
    fn buf_min_and_buf() {
        let c = Config::parse("buf=256k buf_min=16k").unwrap();
        assert_eq!((c.buf, c.buf_min), (256 << 10, 16 << 10));
        // Order does not matter; equal is allowed (fixed-size buffers).
        let c = Config::parse("buf_min=8k buf=8k").unwrap();
        assert_eq!((c.buf, c.buf_min), (8192, 8192));
        // Without buf_min, the default minimum never exceeds buf.
        let c = Config::parse("buf=2k").unwrap();
        assert_eq!((c.buf, c.buf_min), (2048, 2048));
        let c = Config::parse("buf=16k").unwrap();
        assert_eq!((c.buf, c.buf_min), (16384, 4096));
        let c = Config::parse("buf_min=32k").unwrap();
        assert_eq!((c.buf, c.buf_min), (65536, 32768));
        assert_eq!(Config::parse(&c.summary()).unwrap(), c);
        assert_eq!(
            err("buf=16k buf_min=32k"),
            "config: key 'buf_min' with value '32k': larger than buf= (buf is the largest socket buffer, buf_min the guaranteed one)"
        );
        assert_eq!(
            err("buf_min=128k"),
            "config: key 'buf_min' with value '128k': larger than buf= (buf is the largest socket buffer, buf_min the guaranteed one)"
        );
        assert_eq!(
            err("buf_min=512"),
            "config: bad value for key 'buf_min': '512' (expected a size like 4k, from 1k to 16m)"
        );
        assert_eq!(
            err("buf_min=0"),
            "config: bad value for key 'buf_min': '0' (expected a size like 4k, from 1k to 16m)"
        );
        assert_eq!(
            err("buf=32m"),
            "config: bad value for key 'buf': '32m' (expected a size like 16k, from 1k to 16m)"
        );
        assert_eq!(
            err("buf_min=4k buf_min=8k"),
            "config: duplicate key 'buf_min' (second value '8k')"
        );
    }

    #[test]
    fn offload_on_off() {
        assert!(Config::parse("offload=on").unwrap().offload);
        let c = Config::parse("offload=off").unwrap();
        assert!(!c.offload);
        assert!(c.summary().contains(" offload=off "), "{}", c.summary());
        assert_eq!(Config::parse(&c.summary()).unwrap(), c);
        for v in ["yes", "1", "ON", ""] {
            assert_eq!(
                err(&alloc::format!("offload={v}")),
                alloc::format!("config: bad value for key 'offload': '{v}' (expected on or off)")
            );
        }
    }

    #[test]
    fn full_line() {
        let c = Config::parse(
            "  loglevel=debug ip=10.0.0.2/24 gw=10.0.0.1 dhcp_timeout=3s idle_exit=2m rx_bufs=128 \
             tx_bufs=16 offload=off rule=reverse:80:10.0.0.1:8080 rule=transparent:443 max_conns=256 backlog=8 buf=64k \
             buf_min=8k idle_timeout=60s connect_timeout=500ms keepalive=off cc=none ack_delay=10ms mem=12m  ",
        )
        .unwrap();
        assert_eq!(c.loglevel, LevelFilter::Debug);
        assert_eq!(
            c.ip,
            IpSetting::Static {
                addr: Ipv4Addr::new(10, 0, 0, 2),
                prefix_len: 24
            }
        );
        assert_eq!(c.gw, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(c.dhcp_timeout, Duration::from_secs(3));
        assert_eq!(c.idle_exit, Some(Duration::from_secs(120)));
        assert_eq!(c.rx_bufs, 128);
        assert_eq!(c.tx_bufs, 16);
        assert_eq!(
            c.rules,
            [
                Rule {
                    listen_port: 80,
                    kind: RuleKind::Reverse {
                        upstream: Ipv4Addr::new(10, 0, 0, 1),
                        upstream_port: 8080
                    }
                },
                Rule {
                    listen_port: 443,
                    kind: RuleKind::Transparent
                }
            ]
        );
        assert_eq!(c.max_conns, 256);
        assert_eq!(c.backlog, 8);
        assert_eq!(c.buf, 65536);
        assert_eq!(c.buf_min, 8192);
        assert!(!c.offload);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.keepalive, None);
        assert_eq!(c.cc, CongestionControl::None);
        assert_eq!(c.ack_delay, Some(Duration::from_millis(10)));
        assert_eq!(c.mem, Some(12 << 20));
        assert_eq!(
            c.summary(),
            "loglevel=debug ip=10.0.0.2/24 gw=10.0.0.1 dhcp_timeout=3s idle_exit=2m rx_bufs=128 tx_bufs=16 \
             offload=off rule=reverse:80:10.0.0.1:8080 rule=transparent:443 max_conns=256 backlog=8 buf=64k \
             buf_min=8k idle_timeout=1m connect_timeout=500ms keepalive=off cc=none ack_delay=10ms mem=12m"
        );
        assert_eq!(Config::parse(&c.summary()).unwrap(), c);
    }

    #[test]
    fn default_summary_round_trips() {
        let c = Config::default();
        assert_eq!(
            c.summary(),
            "loglevel=info ip=dhcp dhcp_timeout=10s idle_exit=off rx_bufs=64 tx_bufs=64 offload=on \
             max_conns=64 backlog=4 buf=64k buf_min=4k idle_timeout=5m connect_timeout=10s keepalive=1m cc=reno ack_delay=off"
        );
        assert_eq!(Config::parse(&c.summary()).unwrap(), c);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("16k"), Some(16384));
        assert_eq!(parse_size("16K"), Some(16384));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        for bad in ["", "k", "16q", "-1", "+1", "1.5k", "16kb", " 1", "18446744073709551615k"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "60", "s", "1.5s", "-1s", "1d", "ms", "99999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_bad_value_names_key_and_value() {
        let cases: &[(&str, &str)] = &[
            ("buf=16q", "config: bad value for key 'buf': '16q' (expected a size like 16k, from 1k to 16m)"),
            ("buf=100", "config: bad value for key 'buf': '100' (expected a size like 16k, from 1k to 16m)"),
            ("buf=32m", "config: bad value for key 'buf': '32m' (expected a size like 16k, from 1k to 16m)"),
            ("loglevel=loud", "config: bad value for key 'loglevel': 'loud' (expected one of off, error, warn, info, debug, trace)"),
            ("ip=10.0.0.2", "config: bad value for key 'ip': '10.0.0.2' (expected an address with prefix like 10.0.0.2/24, or dhcp)"),
            ("ip=10.0.0.256/24", "config: bad value for key 'ip': '10.0.0.256/24' (expected an address with prefix like 10.0.0.2/24, or dhcp)"),
            ("ip=10.0.0.2/33", "config: bad value for key 'ip': '10.0.0.2/33' (expected an address with prefix like 10.0.0.2/24, or dhcp)"),
            ("ip=10.0.0.2/0", "config: bad value for key 'ip': '10.0.0.2/0' (expected an address with prefix like 10.0.0.2/24, or dhcp)"),
            ("ip=224.0.0.1/24", "config: bad value for key 'ip': '224.0.0.1/24' (expected an address with prefix like 10.0.0.2/24, or dhcp)"),
            ("ip=010.0.0.2/24", "config: bad value for key 'ip': '010.0.0.2/24' (expected an address with prefix like 10.0.0.2/24, or dhcp)"),
            ("ip=10.0.0.2/24 gw=10.0.0", "config: bad value for key 'gw': '10.0.0' (expected an IPv4 address like 10.0.0.1)"),
            ("dhcp_timeout=10", "config: bad value for key 'dhcp_timeout': '10' (expected a non-zero duration like 10s)"),
            ("dhcp_timeout=0s", "config: bad value for key 'dhcp_timeout': '0s' (expected a non-zero duration like 10s)"),
            ("idle_exit=never", "config: bad value for key 'idle_exit': 'never' (expected a non-zero duration like 60s, or off)"),
            ("rx_bufs=0", "config: bad value for key 'rx_bufs': '0' (expected a number from 1 to 256)"),
            ("rx_bufs=257", "config: bad value for key 'rx_bufs': '257' (expected a number from 1 to 256)"),
            ("tx_bufs=0", "config: bad value for key 'tx_bufs': '0' (expected a number from 1 to 256)"),
            ("max_conns=0", "config: bad value for key 'max_conns': '0' (expected a number from 1 to 65535)"),
            ("max_conns=-5", "config: bad value for key 'max_conns': '-5' (expected a number from 1 to 65535)"),
            ("max_conns=", "config: bad value for key 'max_conns': '' (expected a number from 1 to 65535)"),
            ("backlog=65", "config: bad value for key 'backlog': '65' (expected a number from 1 to 64)"),
            ("idle_timeout=0s", "config: bad value for key 'idle_timeout': '0s' (expected a non-zero duration like 60s, or off)"),
            ("connect_timeout=off", "config: bad value for key 'connect_timeout': 'off' (expected a non-zero duration like 10s)"),
            ("keepalive=1x", "config: bad value for key 'keepalive': '1x' (expected a non-zero duration like 60s, or off)"),
            ("cc=bbr", "config: bad value for key 'cc': 'bbr' (expected one of reno, none)"),
            ("cc=cubic", "config: bad value for key 'cc': 'cubic' (expected one of reno, none)"),
            ("ack_delay=5", "config: bad value for key 'ack_delay': '5' (expected a non-zero duration like 10ms, or off)"),
            ("mem=lots", "config: bad value for key 'mem': 'lots' (expected a size like 8m, at least 4k)"),
        ];
        for (line, msg) in cases {
            assert_eq!(err(line), *msg, "line {line:?}");
        }
    }

    #[test]
    fn bad_rules() {
        let expect = |v: &str| {
            alloc::format!(
                "config: bad value for key 'rule': '{v}' (expected reverse:LPORT:A.B.C.D:UPORT or transparent:LPORT, ports 1-65535)"
            )
        };
        for v in [
            "reverse:80:10.0.0.1",
            "reverse:80:10.0.0.1:8080:1",
            "reverse:0:10.0.0.1:8080",
            "reverse:80:10.0.0.1:65536",
            "reverse:80:example.com:80",
            "reverse:80:0.0.0.0:80",
            "reverse:80:224.0.0.1:80",
            "transparent",
            "transparent:",
            "transparent:80:1",
            "forward:80",
            "",
        ] {
            assert_eq!(err(&alloc::format!("rule={v}")), expect(v));
        }
        assert_eq!(
            err("rule=transparent:80 rule=reverse:80:10.0.0.1:81"),
            "config: key 'rule' with value 'reverse:80:10.0.0.1:81': another rule already listens on this port"
        );
        let mut line = String::new();
        for p in 1..=17 {
            line += &alloc::format!("rule=transparent:{p} ");
        }
        assert_eq!(
            err(&line),
            "config: key 'rule' with value 'transparent:17': too many rules (at most 16)"
        );
        let mut line16 = String::new();
        for p in 1..=16 {
            line16 += &alloc::format!("rule=transparent:{p} ");
        }
        assert_eq!(Config::parse(&line16).unwrap().rules.len(), 16);
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            err("ip=dhcp verbose"),
            "config: token 'verbose' is not of the form key=value"
        );
        assert_eq!(err("colour=blue"), "config: unknown key 'colour' (value 'blue')");
        assert_eq!(err("=5"), "config: unknown key '' (value '5')");
        assert_eq!(err("BUF=16k"), "config: unknown key 'BUF' (value '16k')");
        assert_eq!(
            err("buf=16k max_conns=5 buf=32k"),
            "config: duplicate key 'buf' (second value '32k')"
        );
        assert_eq!(
            err("ip=dhcp ip=dhcp"),
            "config: duplicate key 'ip' (second value 'dhcp')"
        );
        assert_eq!(
            err("gw=10.0.0.1"),
            "config: key 'gw' with value '10.0.0.1': a gateway needs a static ip= (DHCP supplies its own)"
        );
        // The value may itself contain '=': only the first one splits.
        assert_eq!(
            err("loglevel=a=b"),
            "config: bad value for key 'loglevel': 'a=b' (expected one of off, error, warn, info, debug, trace)"
        );
    }

    #[test]
    fn never_panics_on_junk() {
        // A tiny deterministic fuzz: random tokens from a small alphabet.
        let alphabet = b"=:/.kmsg0123456789 aiprulebfx\t";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut s = String::new();
            let n = (x % 40) as usize;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
            }
            let _ = Config::parse(&s);
            for key in KEYS {
                let _ = Config::parse(&alloc::format!("{key}={s}"));
            }
        }
    }
}
