//! The one parser for Miniproxy's command line (`extra=` in the xl config).
//!
//! The unikernel and the host runner (`miniproxy-tap`) both call [`Config::parse`]
//! on the same `key=value` line, so a line that works on the host works unchanged
//! in the guest.
//!
//! Tokens are separated by one or more spaces or tabs; leading and trailing
//! whitespace is ignored. Every token is `key=value`. Every key may appear at most
//! once, except `rule`, which may be repeated (one rule per occurrence, up to
//! [`MAX_RULES`]). An empty line is valid: it yields the defaults and no rules
//! (the kernel boots and does not proxy). There are no silent defaults for
//! malformed input: an unknown key, a repeated key, a token without `=`, or a
//! value that does not parse is an error naming the key and the value.
//!
//! The keys live in one table, `keys::KEYS` (name, parser, printer, what a bad
//! value is told, documentation): the parser and `Display for Config` walk it,
//! and the key table in `proxy/README.md` (section "Configuration") is generated
//! from it and `Config::default()`; the test `readme_key_table_is_current` fails
//! when that table is stale. The value syntaxes are in `values`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;
use core::time::Duration;

pub use log::LevelFilter;

mod keys;
#[cfg(test)]
mod tests;
mod values;

use keys::{Refusal, Tokens, KEYS};
pub use values::{parse_duration, parse_size};

/// The keys that set up netfront, which a warm-pool member does before it
/// has its configuration: its command line fixes them, and the
/// configuration it is handed later must agree (see
/// [`Config::boot_time_mismatch`]).
pub const BOOT_TIME_KEYS: [&str; 3] = ["rx_bufs", "tx_bufs", "offload"];

/// Most rules one instance accepts.
pub const MAX_RULES: usize = 16;
/// Default of `buf=`.
pub const DEFAULT_BUF: usize = 4 << 20;
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
    Cubic,
}

impl CongestionControl {
    fn name(self) -> &'static str {
        match self {
            CongestionControl::None => "none",
            CongestionControl::Reno => "reno",
            CongestionControl::Cubic => "cubic",
        }
    }
}

/// What happens to a connection accepted by a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Splice to this fixed upstream.
    Reverse {
        upstream: Ipv4Addr,
        upstream_port: u16,
    },
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
            } => write!(
                f,
                "reverse:{}:{}:{}",
                self.listen_port, upstream, upstream_port
            ),
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
    /// On a stop (`xl shutdown`, idle_exit): how long open connections may
    /// finish after the listeners close, before both sides are reset.
    pub drain_timeout: Duration,
    /// The guest's `data/stats` is rewritten at most this often (and only
    /// when a counter changed): the operator bounds the xenstore writes of
    /// a busy instance with it.
    pub stats_period: Duration,
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
    /// A client that has not completed its handshake this long after its SYN
    /// is dropped (with its upstream side), freeing its slot for others.
    pub syn_timeout: Duration,
    /// TCP keep-alive interval on both sockets of a connection; `None` = off.
    pub keepalive: Option<Duration>,
    pub cc: CongestionControl,
    /// Floor of the retransmission timeout (RFC 6298 (2.4) says 1 s; Linux
    /// and this default use 200 ms).
    pub rto_min: Duration,
    /// Delayed-ACK timeout; `None` = ACK immediately.
    pub ack_delay: Option<Duration>,
    /// Memory budget for the engine in bytes; `None` = decided by the caller.
    pub mem: Option<usize>,
    /// A warm-pool member (`pool=on`): boot, connect the vif, then wait for
    /// the real configuration in the xenstore key `miniproxy/config`.
    pub pool: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            loglevel: LevelFilter::Info,
            ip: IpSetting::Dhcp,
            gw: None,
            dhcp_timeout: Duration::from_secs(10),
            idle_exit: None,
            drain_timeout: Duration::from_secs(10),
            stats_period: Duration::from_secs(1),
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
            syn_timeout: Duration::from_secs(3),
            keepalive: Some(Duration::from_secs(60)),
            cc: CongestionControl::Cubic,
            rto_min: Duration::from_millis(200),
            ack_delay: None,
            mem: None,
            pool: false,
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

impl Config {
    /// Parse one command line. See the module documentation for the grammar
    /// and `proxy/README.md` for the keys.
    pub fn parse(line: &str) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        // The value each key was given (the last one, for a repeatable key).
        let mut given: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
        for token in line
            .split([' ', '\t', '\n', '\r'])
            .filter(|t| !t.is_empty())
        {
            let Some((name, value)) = token.split_once('=') else {
                return Err(ConfigError::MissingEquals {
                    token: token.into(),
                });
            };
            let Some((idx, key)) = keys::find(name) else {
                return Err(ConfigError::UnknownKey {
                    key: name.into(),
                    value: value.into(),
                });
            };
            if given[idx].is_some() && !key.repeatable {
                return Err(ConfigError::DuplicateKey {
                    key: name.into(),
                    value: value.into(),
                });
            }
            given[idx] = Some(value);
            (key.parse)(&mut cfg, value).map_err(|refusal| match refusal {
                Refusal::Bad => ConfigError::BadValue {
                    key: name.into(),
                    value: value.into(),
                    expected: key.expected,
                },
                Refusal::Conflict(reason) => ConfigError::Conflict {
                    key: name.into(),
                    value: value.into(),
                    reason,
                },
            })?;
        }
        let given = |name: &str| keys::find(name).and_then(|(i, _)| given[i]);
        if let (Some(v), IpSetting::Dhcp) = (given("gw"), cfg.ip) {
            return Err(ConfigError::Conflict {
                key: "gw".into(),
                value: v.into(),
                reason: "a gateway needs a static ip= (DHCP supplies its own)",
            });
        }
        match given("buf_min") {
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
        if cfg.pool {
            // Only what a waiting member uses; the rest would be silently
            // ignored (it comes with the configuration key), so it is refused.
            // Compared by value, not by presence: the printed line of a pool
            // config (every key, at its default) parses again.
            let defaults = Config::default();
            for key in KEYS.iter().filter(|k| !keys::allowed_with_pool(k.name)) {
                let v = keys::shown(key, &cfg);
                if v != keys::shown(key, &defaults) {
                    let value = v.split_once('=').map_or("", |(_, v)| v);
                    return Err(ConfigError::Conflict {
                        key: key.name.into(),
                        value: value.into(),
                        reason: "a pool member (pool=on) takes only loglevel, rx_bufs, tx_bufs and offload on its command line; the rest comes in its configuration key",
                    });
                }
            }
        }
        Ok(cfg)
    }

    /// The first boot-time key ([`BOOT_TIME_KEYS`]) whose value here differs
    /// from `boot`'s (the pool member's command line), as
    /// (key, this value, boot's value): a configuration a pool member
    /// cannot take, since its netfront is already set up.
    pub fn boot_time_mismatch(&self, boot: &Config) -> Option<(&'static str, String, String)> {
        KEYS.iter()
            .filter(|k| BOOT_TIME_KEYS.contains(&k.name))
            .find_map(|k| {
                let (mine, theirs) = (keys::shown(k, self), keys::shown(k, boot));
                let value = |s: &str| s.split_once('=').map_or("", |(_, v)| v).into();
                (mine != theirs).then(|| (k.name, value(&mine), value(&theirs)))
            })
    }

    /// One line describing the parsed configuration. It is itself a valid
    /// command line: parsing it gives back an equal `Config`.
    pub fn summary(&self) -> String {
        alloc::format!("{self}")
    }
}

/// Every key's `key=value` tokens, in [`KEYS`] order, separated by spaces.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tokens = Tokens {
            f,
            key: "",
            first: true,
        };
        for key in KEYS {
            tokens.key = key.name;
            (key.show)(self, &mut tokens)?;
        }
        Ok(())
    }
}
