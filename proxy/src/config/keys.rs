//! The one table of command-line keys. Each entry says how its value parses
//! into a [`Config`], how the config prints it back, what it is expected to
//! look like (for errors) and what the documentation says of it. The parser,
//! `Display for Config` and the key table in `proxy/README.md` (checked by a
//! test) all come from [`KEYS`]; the defaults come from `Config::default()`.

use core::fmt;

use super::values::{
    level_name, parse_duration, parse_level, parse_nonzero_duration, parse_opt_duration,
    parse_rule, parse_size, parse_switch, parse_uint, parse_unicast, switch_name, Dur, OptDur,
    Size,
};
use super::{Config, CongestionControl, IpSetting, MAX_BUF, MAX_RULES, MIN_BUF};

/// Why a key refused its value.
pub(super) enum Refusal {
    /// It does not parse or is out of range: "expected" [`Key::expected`].
    Bad,
    /// It parses but contradicts what came before.
    Conflict(&'static str),
}

/// One key of the command line.
pub(super) struct Key {
    pub name: &'static str,
    /// The value column of the documented table (Markdown, one line).
    // Read by the test that checks the table in proxy/README.md.
    #[cfg_attr(not(test), allow(dead_code))]
    pub doc: &'static str,
    /// What a bad value is told it should look like ("expected …").
    pub expected: &'static str,
    /// Said after the default in the documented table (empty: nothing).
    #[cfg_attr(not(test), allow(dead_code))]
    pub default_note: &'static str,
    /// May be given more than once (each occurrence adds one).
    pub repeatable: bool,
    /// Apply one value to the config.
    pub parse: fn(&mut Config, &str) -> Result<(), Refusal>,
    /// Print the config's value(s) of this key: none, one, or one per occurrence.
    pub show: fn(&Config, &mut Tokens<'_, '_>) -> fmt::Result,
}

/// Writes `key=value` tokens separated by single spaces.
pub(super) struct Tokens<'a, 'b> {
    pub f: &'a mut fmt::Formatter<'b>,
    pub key: &'static str,
    pub first: bool,
}

impl Tokens<'_, '_> {
    fn put(&mut self, value: impl fmt::Display) -> fmt::Result {
        if !self.first {
            self.f.write_str(" ")?;
        }
        self.first = false;
        write!(self.f, "{}={value}", self.key)
    }
}

/// Store a parsed value, or refuse it.
fn set<T>(slot: &mut T, value: Option<T>) -> Result<(), Refusal> {
    *slot = value.ok_or(Refusal::Bad)?;
    Ok(())
}

fn buf_size(s: &str) -> Option<usize> {
    parse_size(s).filter(|s| (MIN_BUF..=MAX_BUF).contains(s))
}

fn bufs(s: &str) -> Option<u16> {
    parse_uint(s, 1, 256).map(|n| n as u16)
}

fn parse_ip(s: &str) -> Option<IpSetting> {
    if s == "dhcp" {
        return Some(IpSetting::Dhcp);
    }
    let (a, l) = s.split_once('/')?;
    let addr = parse_unicast(a)?;
    let prefix_len = parse_uint(l, 1, 32)? as u8;
    Some(IpSetting::Static { addr, prefix_len })
}

fn parse_cc(s: &str) -> Option<CongestionControl> {
    match s {
        "reno" => Some(CongestionControl::Reno),
        "cubic" => Some(CongestionControl::Cubic),
        "none" => Some(CongestionControl::None),
        _ => None,
    }
}

/// `data/stats` every 100 ms at the most (xenstored serves every instance
/// of the host), every hour at the least (the operator's `list` reads it).
fn parse_stats_period(s: &str) -> Option<core::time::Duration> {
    parse_duration(s).filter(|d| d.as_millis() >= 100 && d.as_secs() <= 3600)
}

/// smoltcp clamps the floor to 1 ms..=60 s; outside that is refused, not clamped.
fn parse_rto_min(s: &str) -> Option<core::time::Duration> {
    parse_nonzero_duration(s).filter(|d| d.as_millis() >= 1 && d.as_secs() <= 60)
}

fn show_opt<T: fmt::Display>(t: &mut Tokens<'_, '_>, v: Option<T>) -> fmt::Result {
    v.map_or(Ok(()), |v| t.put(v))
}

/// Every key, in the order `Display` prints them.
pub(super) static KEYS: &[Key] = &[
    Key {
        name: "loglevel",
        doc: "`off` `error` `warn` `info` `debug` `trace`",
        expected: "one of off, error, warn, info, debug, trace",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.loglevel, parse_level(v)),
        show: |c, t| t.put(level_name(c.loglevel)),
    },
    Key {
        name: "ip",
        doc: "`a.b.c.d/len` or `dhcp`",
        expected: "an address with prefix like 10.0.0.2/24, or dhcp",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.ip, parse_ip(v)),
        show: |c, t| match c.ip {
            IpSetting::Dhcp => t.put("dhcp"),
            IpSetting::Static { addr, prefix_len } => t.put(format_args!("{addr}/{prefix_len}")),
        },
    },
    Key {
        name: "gw",
        doc: "`a.b.c.d` (only with a static `ip`)",
        expected: "an IPv4 address like 10.0.0.1",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.gw, parse_unicast(v).map(Some)),
        show: |c, t| show_opt(t, c.gw),
    },
    Key {
        name: "dhcp_timeout",
        doc: "duration: give up on DHCP after this long",
        expected: "a non-zero duration like 10s",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.dhcp_timeout, parse_nonzero_duration(v)),
        show: |c, t| t.put(Dur(c.dhcp_timeout)),
    },
    Key {
        name: "idle_exit",
        doc: "duration or `off`: exit after this long with no connection",
        expected: "a non-zero duration like 60s, or off",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.idle_exit, parse_opt_duration(v)),
        show: |c, t| t.put(OptDur(c.idle_exit)),
    },
    Key {
        name: "drain_timeout",
        doc: "duration: on `xl shutdown` or `idle_exit`, how long open connections may finish before both sides are reset (`0s`: at once)",
        expected: "a duration like 10s",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.drain_timeout, parse_duration(v)),
        show: |c, t| t.put(Dur(c.drain_timeout)),
    },
    Key {
        name: "stats_period",
        doc: "duration, `100ms`..=`1h`: `data/stats` is rewritten at most this often, and only when a counter changed (an idle instance writes nothing)",
        expected: "a duration like 1s, from 100ms to 1h",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.stats_period, parse_stats_period(v)),
        show: |c, t| t.put(Dur(c.stats_period)),
    },
    Key {
        name: "rx_bufs",
        doc: "netfront RX buffers posted, `1`..=`256`",
        expected: "a number from 1 to 256",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.rx_bufs, bufs(v)),
        show: |c, t| t.put(c.rx_bufs),
    },
    Key {
        name: "tx_bufs",
        doc: "netfront TX frames in flight, `1`..=`256`",
        expected: "a number from 1 to 256",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.tx_bufs, bufs(v)),
        show: |c, t| t.put(c.tx_bufs),
    },
    Key {
        name: "offload",
        doc: "`on` `off`: TCP segmentation and checksum offload with the netback",
        expected: "on or off",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.offload, parse_switch(v)),
        show: |c, t| t.put(switch_name(c.offload)),
    },
    Key {
        name: "rule",
        doc: "`reverse:LPORT:A.B.C.D:UPORT` or `transparent:LPORT` (repeatable, see below)",
        expected: "reverse:LPORT:A.B.C.D:UPORT or transparent:LPORT, ports 1-65535",
        default_note: "",
        repeatable: true,
        parse: |c, v| {
            let r = parse_rule(v).ok_or(Refusal::Bad)?;
            if c.rules.iter().any(|o| o.listen_port == r.listen_port) {
                return Err(Refusal::Conflict(
                    "another rule already listens on this port",
                ));
            }
            if c.rules.len() >= MAX_RULES {
                return Err(Refusal::Conflict("too many rules (at most 16)"));
            }
            c.rules.push(r);
            Ok(())
        },
        show: |c, t| c.rules.iter().try_for_each(|r| t.put(r)),
    },
    Key {
        name: "max_conns",
        doc: "concurrent spliced connections, `1`..=`65535`",
        expected: "a number from 1 to 65535",
        default_note: "",
        repeatable: false,
        parse: |c, v| {
            set(
                &mut c.max_conns,
                parse_uint(v, 1, 65535).map(|n| n as usize),
            )
        },
        show: |c, t| t.put(c.max_conns),
    },
    Key {
        name: "backlog",
        doc: "listening sockets kept ready per rule, `1`..=`64`",
        expected: "a number from 1 to 64",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.backlog, parse_uint(v, 1, 64).map(|n| n as usize)),
        show: |c, t| t.put(c.backlog),
    },
    Key {
        name: "buf",
        doc: "size: largest socket buffer (each socket has an RX and a TX one), `1k`..=`16m`",
        expected: "a size like 16k, from 1k to 16m",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.buf, buf_size(v)),
        show: |c, t| t.put(Size(c.buf)),
    },
    Key {
        name: "buf_min",
        doc: "size: guaranteed socket buffer, `1k`..=`16m`, at most `buf`",
        expected: "a size like 4k, from 1k to 16m",
        default_note: "(or `buf` if smaller)",
        repeatable: false,
        parse: |c, v| set(&mut c.buf_min, buf_size(v)),
        show: |c, t| t.put(Size(c.buf_min)),
    },
    Key {
        name: "idle_timeout",
        doc: "duration or `off`: reset a connection idle this long",
        expected: "a non-zero duration like 60s, or off",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.idle_timeout, parse_opt_duration(v)),
        show: |c, t| t.put(OptDur(c.idle_timeout)),
    },
    Key {
        name: "connect_timeout",
        doc: "duration: upstream handshake",
        expected: "a non-zero duration like 10s",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.connect_timeout, parse_nonzero_duration(v)),
        show: |c, t| t.put(Dur(c.connect_timeout)),
    },
    Key {
        name: "syn_timeout",
        doc: "duration: client handshake (half-open clients are dropped after it, the oldest first when slots run out)",
        expected: "a non-zero duration like 3s",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.syn_timeout, parse_nonzero_duration(v)),
        show: |c, t| t.put(Dur(c.syn_timeout)),
    },
    Key {
        name: "keepalive",
        doc: "duration or `off`: TCP keep-alive interval",
        expected: "a non-zero duration like 60s, or off",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.keepalive, parse_opt_duration(v)),
        show: |c, t| t.put(OptDur(c.keepalive)),
    },
    Key {
        name: "cc",
        doc: "`cubic` `reno` `none`: congestion control",
        expected: "one of cubic, reno, none",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.cc, parse_cc(v)),
        show: |c, t| t.put(c.cc.name()),
    },
    Key {
        name: "rto_min",
        doc: "duration, `1ms`..=`60s`: floor of the TCP retransmission timeout",
        expected: "a duration like 200ms, from 1ms to 60s",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.rto_min, parse_rto_min(v)),
        show: |c, t| t.put(Dur(c.rto_min)),
    },
    Key {
        name: "ack_delay",
        doc: "duration or `off`: delayed ACK",
        expected: "a non-zero duration like 10ms, or off",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.ack_delay, parse_opt_duration(v)),
        show: |c, t| t.put(OptDur(c.ack_delay)),
    },
    Key {
        name: "mem",
        doc: "size, at least `4k`: memory budget for the engine",
        expected: "a size like 8m, at least 4k",
        default_note: "(the kernel passes its heap)",
        repeatable: false,
        parse: |c, v| set(&mut c.mem, parse_size(v).filter(|s| *s >= 4096).map(Some)),
        show: |c, t| show_opt(t, c.mem.map(Size)),
    },
    Key {
        name: "pool",
        doc: "`on` `off`: `on` boots a warm-pool member that waits, vif connected, for its configuration in the xenstore key `miniproxy/config` (README, \"The warm pool\"); with `on` only `loglevel` and the boot-time keys `rx_bufs` `tx_bufs` `offload` may be set",
        expected: "on or off",
        default_note: "",
        repeatable: false,
        parse: |c, v| set(&mut c.pool, parse_switch(v)),
        show: |c, t| t.put(switch_name(c.pool)),
    },
];

/// The keys a warm-pool member's command line (`pool=on`) may set: the
/// boot-time ones ([`super::BOOT_TIME_KEYS`]), `loglevel` and `pool`.
pub(super) fn allowed_with_pool(name: &str) -> bool {
    name == "loglevel" || name == "pool" || super::BOOT_TIME_KEYS.contains(&name)
}

/// What `key` shows for `cfg` (its `key=value` tokens), to compare a key's
/// value between two configs without a second copy of its printer.
pub(super) fn shown(key: &Key, cfg: &Config) -> alloc::string::String {
    struct Shown<'a>(&'a Key, &'a Config);
    impl fmt::Display for Shown<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut t = Tokens {
                f,
                key: self.0.name,
                first: true,
            };
            (self.0.show)(self.1, &mut t)
        }
    }
    alloc::format!("{}", Shown(key, cfg))
}

/// The key named `name`, with its index in [`KEYS`].
pub(super) fn find(name: &str) -> Option<(usize, &'static Key)> {
    KEYS.iter().enumerate().find(|(_, k)| k.name == name)
}
