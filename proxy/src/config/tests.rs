use super::keys::{Key, Tokens};
use super::values::{parse_duration, parse_size};
use super::*;
use crate::sim::Rng;
use alloc::format;
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
    assert_eq!(c.buf, 4 << 20);
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
    assert_eq!((c.buf, c.buf_min), (4 << 20, 32768));
    assert_eq!(Config::parse(&c.summary()).unwrap(), c);
    assert_eq!(
        err("buf=16k buf_min=32k"),
        "config: key 'buf_min' with value '32k': larger than buf= (buf is the largest socket buffer, buf_min the guaranteed one)"
    );
    assert_eq!(
        err("buf_min=8m"),
        "config: key 'buf_min' with value '8m': larger than buf= (buf is the largest socket buffer, buf_min the guaranteed one)"
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
            err(&format!("offload={v}")),
            format!("config: bad value for key 'offload': '{v}' (expected on or off)")
        );
    }
}

#[test]
fn full_line() {
    let c = Config::parse(
        "  loglevel=debug ip=10.0.0.2/24 gw=10.0.0.1 dhcp_timeout=3s idle_exit=2m drain_timeout=0s stats_period=250ms rx_bufs=128 \
         tx_bufs=16 offload=off rule=reverse:80:10.0.0.1:8080 rule=transparent:443 max_conns=256 backlog=8 buf=64k \
         buf_min=8k idle_timeout=60s connect_timeout=500ms keepalive=off cc=none rto_min=50ms ack_delay=10ms mem=12m  ",
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
    assert_eq!(c.drain_timeout, Duration::ZERO);
    assert_eq!(c.stats_period, Duration::from_millis(250));
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
    assert_eq!(c.rto_min, Duration::from_millis(50));
    assert_eq!(c.ack_delay, Some(Duration::from_millis(10)));
    assert_eq!(c.mem, Some(12 << 20));
    assert_eq!(
        c.summary(),
        "loglevel=debug ip=10.0.0.2/24 gw=10.0.0.1 dhcp_timeout=3s idle_exit=2m drain_timeout=0s stats_period=250ms rx_bufs=128 tx_bufs=16 \
         offload=off rule=reverse:80:10.0.0.1:8080 rule=transparent:443 max_conns=256 backlog=8 buf=64k \
         buf_min=8k idle_timeout=1m connect_timeout=500ms syn_timeout=3s keepalive=off cc=none rto_min=50ms ack_delay=10ms mem=12m pool=off"
    );
    assert_eq!(Config::parse(&c.summary()).unwrap(), c);
}

#[test]
fn default_summary_round_trips() {
    let c = Config::default();
    assert_eq!(
        c.summary(),
        "loglevel=info ip=dhcp dhcp_timeout=10s idle_exit=off drain_timeout=10s stats_period=1s rx_bufs=64 tx_bufs=64 offload=on \
         max_conns=64 backlog=4 buf=4m buf_min=4k idle_timeout=5m connect_timeout=10s syn_timeout=3s keepalive=1m cc=cubic rto_min=200ms ack_delay=off pool=off"
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
    for bad in [
        "",
        "k",
        "16q",
        "-1",
        "+1",
        "1.5k",
        "16kb",
        " 1",
        "18446744073709551615k",
    ] {
        assert_eq!(parse_size(bad), None, "{bad:?}");
    }
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    for bad in [
        "",
        "60",
        "s",
        "1.5s",
        "-1s",
        "1d",
        "ms",
        "99999999999999999h",
    ] {
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
        ("stats_period=99ms", "config: bad value for key 'stats_period': '99ms' (expected a duration like 1s, from 100ms to 1h)"),
        ("stats_period=61m", "config: bad value for key 'stats_period': '61m' (expected a duration like 1s, from 100ms to 1h)"),
        ("stats_period=off", "config: bad value for key 'stats_period': 'off' (expected a duration like 1s, from 100ms to 1h)"),
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
        ("cc=bbr", "config: bad value for key 'cc': 'bbr' (expected one of cubic, reno, none)"),
        ("cc=Cubic", "config: bad value for key 'cc': 'Cubic' (expected one of cubic, reno, none)"),
        ("rto_min=0ms", "config: bad value for key 'rto_min': '0ms' (expected a duration like 200ms, from 1ms to 60s)"),
        ("rto_min=61s", "config: bad value for key 'rto_min': '61s' (expected a duration like 200ms, from 1ms to 60s)"),
        ("rto_min=off", "config: bad value for key 'rto_min': 'off' (expected a duration like 200ms, from 1ms to 60s)"),
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
        format!(
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
        assert_eq!(err(&format!("rule={v}")), expect(v));
    }
    assert_eq!(
        err("rule=transparent:80 rule=reverse:80:10.0.0.1:81"),
        "config: key 'rule' with value 'reverse:80:10.0.0.1:81': another rule already listens on this port"
    );
    let mut line = String::new();
    for p in 1..=17 {
        line += &format!("rule=transparent:{p} ");
    }
    assert_eq!(
        err(&line),
        "config: key 'rule' with value 'transparent:17': too many rules (at most 16)"
    );
    let mut line16 = String::new();
    for p in 1..=16 {
        line16 += &format!("rule=transparent:{p} ");
    }
    assert_eq!(Config::parse(&line16).unwrap().rules.len(), 16);
}

#[test]
fn structural_errors() {
    assert_eq!(
        err("ip=dhcp verbose"),
        "config: token 'verbose' is not of the form key=value"
    );
    assert_eq!(
        err("colour=blue"),
        "config: unknown key 'colour' (value 'blue')"
    );
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
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let n = rng.below(40);
        let s: String = (0..n)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char)
            .collect();
        let _ = Config::parse(&s);
        for key in KEYS {
            let _ = Config::parse(&format!("{}={s}", key.name));
        }
    }
}

fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.below(from.len() as u64) as usize]
}

/// A random valid spelling of a size in `min..=max` (bytes, or a multiple
/// of a suffix, in either case).
fn gen_size(rng: &mut Rng, min: usize, max: usize) -> String {
    let (unit, suffixes) = match rng.below(4) {
        0 => (1, ["", ""]),
        1 => (1 << 10, ["k", "K"]),
        2 => (1 << 20, ["m", "M"]),
        _ => (1 << 30, ["g", "G"]),
    };
    let (lo, hi) = (min.div_ceil(unit), max / unit);
    if lo > hi {
        return format!("{min}");
    }
    let n = lo + rng.below((hi - lo + 1) as u64) as usize;
    format!("{n}{}", suffixes[rng.below(2) as usize])
}

/// A random valid non-zero duration, in any unit (so `120s` prints as `2m`).
fn gen_duration(rng: &mut Rng) -> String {
    let most = if rng.chance(0.5) { 3 } else { 100_000 };
    let n = 1 + rng.below(most);
    format!("{n}{}", pick(rng, &["ms", "s", "m", "h"]))
}

fn gen_opt_duration(rng: &mut Rng) -> String {
    if rng.chance(0.3) {
        "off".into()
    } else {
        gen_duration(rng)
    }
}

fn gen_unicast(rng: &mut Rng) -> String {
    let a = 1 + rng.below(223);
    let [b, c, d] = [0, 0, 0].map(|_: u8| rng.below(256));
    format!("{a}.{b}.{c}.{d}")
}

/// A value for `key` that parses on its own (cross-key rules may still refuse
/// the line: `gw` without a static `ip`, `buf_min` above `buf`, a rule port
/// given twice).
fn gen_value(rng: &mut Rng, key: &str) -> String {
    match key {
        "loglevel" => pick(rng, &["off", "error", "warn", "info", "debug", "trace"]).into(),
        "ip" if rng.chance(0.3) => "dhcp".into(),
        "ip" => format!("{}/{}", gen_unicast(rng), 1 + rng.below(32)),
        "gw" => gen_unicast(rng),
        "dhcp_timeout" | "connect_timeout" | "syn_timeout" | "drain_timeout" => gen_duration(rng),
        "idle_exit" | "idle_timeout" | "keepalive" | "ack_delay" => gen_opt_duration(rng),
        "rx_bufs" | "tx_bufs" => format!("{}", 1 + rng.below(256)),
        "offload" | "pool" => pick(rng, &["on", "off"]).into(),
        "rule" if rng.chance(0.5) => format!("transparent:{}", 1 + rng.below(65535)),
        "rule" => format!(
            "reverse:{}:{}:{}",
            1 + rng.below(65535),
            gen_unicast(rng),
            1 + rng.below(65535)
        ),
        "max_conns" => format!("{}", 1 + rng.below(65535)),
        "backlog" => format!("{}", 1 + rng.below(64)),
        "buf" | "buf_min" => gen_size(rng, MIN_BUF, MAX_BUF),
        "cc" => pick(rng, &["cubic", "reno", "none"]).into(),
        "rto_min" => format!("{}ms", 1 + rng.below(60_000)),
        "stats_period" => format!("{}ms", 100 + rng.below(3_600_000 - 99)),
        "mem" => gen_size(rng, 4096, 1 << 40),
        _ => panic!("no generator for key {key}: add one"),
    }
}

#[test]
fn parse_display_parse_round_trips() {
    let mut rng = Rng::new(7);
    let (mut parsed, mut keys_seen) = (0, [0usize; KEYS.len()]);
    for _ in 0..5_000 {
        // A random subset of the keys in random order, `rule` up to three times.
        let mut tokens = Vec::new();
        for key in KEYS {
            let times = if key.repeatable {
                rng.below(4)
            } else {
                rng.below(2)
            };
            for _ in 0..times {
                tokens.push(format!("{}={}", key.name, gen_value(&mut rng, key.name)));
            }
        }
        for i in (1..tokens.len()).rev() {
            tokens.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let sep = |rng: &mut Rng| pick(rng, &[" ", "  ", "\t", " \t "]);
        let mut line = String::from(sep(&mut rng));
        for t in &tokens {
            line += t;
            line += sep(&mut rng);
        }
        let Ok(c) = Config::parse(&line) else {
            continue;
        };
        parsed += 1;
        let shown = c.to_string();
        let again = Config::parse(&shown)
            .unwrap_or_else(|e| panic!("{line:?} printed as {shown:?}, which fails: {e}"));
        assert_eq!(again, c, "{line:?} printed as {shown:?}");
        assert_eq!(again.to_string(), shown);
        for (i, key) in KEYS.iter().enumerate() {
            keys_seen[i] += usize::from(shown.contains(&format!("{}=", key.name)));
        }
    }
    // Most lines are valid, and every key was printed many times.
    assert!(parsed > 1_500, "only {parsed} of 5000 lines parsed");
    for (key, n) in KEYS.iter().zip(keys_seen) {
        assert!(n > 300, "key {} printed only {n} times", key.name);
    }
}

/// The key table of `proxy/README.md`, from [`KEYS`] and `Config::default()`.
fn key_table() -> String {
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
    let defaults = Config::default();
    let mut table = String::from("| key | value | default |\n|---|---|---|\n");
    for key in KEYS {
        let shown = Shown(key, &defaults).to_string();
        let prefix = format!("{}=", key.name);
        let values: Vec<String> = shown
            .split(' ')
            .filter_map(|t| t.strip_prefix(&prefix))
            .map(|v| format!("`{v}`"))
            .collect();
        let mut default = if values.is_empty() {
            "none".into()
        } else {
            values.join(" ")
        };
        if !key.default_note.is_empty() {
            default = format!("{default} {}", key.default_note);
        }
        table += &format!("| `{}` | {} | {default} |\n", key.name, key.doc);
    }
    table
}

const TABLE_BEGIN: &str =
    "<!-- key table: generated by the test config::tests::readme_key_table_is_current -->\n";
const TABLE_END: &str = "<!-- end of key table -->\n";

/// The documented key table is what the code does. With
/// `MINIPROXY_BLESS_DOCS=1` the test rewrites a stale table instead of failing.
#[test]
fn readme_key_table_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("reading proxy/README.md");
    let begin = readme
        .find(TABLE_BEGIN)
        .expect("README has the begin marker")
        + TABLE_BEGIN.len();
    let end = begin
        + readme[begin..]
            .find(TABLE_END)
            .expect("README has the end marker");
    let table = key_table();
    if readme[begin..end] == table {
        return;
    }
    if std::env::var_os("MINIPROXY_BLESS_DOCS").is_some() {
        let fresh = format!("{}{table}{}", &readme[..begin], &readme[end..]);
        std::fs::write(path, fresh).expect("writing proxy/README.md");
        return;
    }
    panic!(
        "the key table in {path} is stale; rerun with MINIPROXY_BLESS_DOCS=1 or paste:\n{table}"
    );
}

#[test]
fn key_table_lists_every_key_with_its_default() {
    let table = key_table();
    assert_eq!(table.lines().count(), 2 + KEYS.len());
    assert!(
        table.contains("| `loglevel` | `off` `error` `warn` `info` `debug` `trace` | `info` |\n"),
        "{table}"
    );
    assert!(table.contains("| `buf_min` | size: guaranteed socket buffer, `1k`..=`16m`, at most `buf` | `4k` (or `buf` if smaller) |\n"), "{table}");
    assert!(
        table.contains(
            "| `idle_timeout` | duration or `off`: reset a connection idle this long | `5m` |\n"
        ),
        "{table}"
    );
    assert!(table.contains("| `rule` |"), "{table}");
    assert!(table.contains(" | none |\n"), "{table}");
}

#[test]
fn cc_and_rto_min_parse() {
    let c = Config::parse("cc=cubic rto_min=1ms").unwrap();
    assert_eq!(c.cc, CongestionControl::Cubic);
    assert_eq!(c.rto_min, Duration::from_millis(1));
    let c = Config::parse("cc=reno rto_min=60s").unwrap();
    assert_eq!(c.cc, CongestionControl::Reno);
    assert_eq!(c.rto_min, Duration::from_secs(60));
    assert!(Config::parse("rto_min=1500ms")
        .unwrap()
        .summary()
        .contains(" rto_min=1500ms "));
}

#[test]
fn a_pool_line_takes_only_the_boot_time_keys() {
    let c = Config::parse("pool=on").unwrap();
    assert!(c.pool);
    assert_eq!(
        Config {
            pool: false,
            ..c.clone()
        },
        Config::default()
    );
    let c = Config::parse("pool=on rx_bufs=32 tx_bufs=16 offload=off loglevel=debug").unwrap();
    assert_eq!((c.rx_bufs, c.tx_bufs, c.offload), (32, 16, false));
    assert_eq!(c.loglevel, LevelFilter::Debug);
    // Its printed line (every key at its default) is a pool line again.
    assert_eq!(Config::parse(&c.summary()).unwrap(), c);
    assert!(c.summary().ends_with(" pool=on"), "{}", c.summary());
    // Anything else would be ignored by a waiting member: refused, named.
    assert_eq!(
        err("pool=on rule=reverse:80:10.0.0.1:8080"),
        "config: key 'rule' with value 'reverse:80:10.0.0.1:8080': a pool member (pool=on) takes only \
         loglevel, rx_bufs, tx_bufs and offload on its command line; the rest comes in its configuration key"
    );
    assert!(err("ip=10.0.0.2/24 pool=on")
        .starts_with("config: key 'ip' with value '10.0.0.2/24': a pool member"));
    assert!(err("pool=on mem=2m").starts_with("config: key 'mem' with value '2m': a pool member"));
    assert_eq!(
        err("pool=yes"),
        "config: bad value for key 'pool': 'yes' (expected on or off)"
    );
    assert!(!Config::parse("pool=off ip=10.0.0.2/24").unwrap().pool);
}

#[test]
fn boot_time_mismatch_names_the_key() {
    let boot = Config::parse("pool=on rx_bufs=32").unwrap();
    let same = Config::parse("rx_bufs=32 ip=10.0.0.2/24 mem=2m rule=transparent:80").unwrap();
    assert_eq!(same.boot_time_mismatch(&boot), None);
    let other = Config::parse("ip=10.0.0.2/24").unwrap();
    assert_eq!(
        other.boot_time_mismatch(&boot),
        Some(("rx_bufs", "64".into(), "32".into()))
    );
    let off = Config::parse("rx_bufs=32 offload=off").unwrap();
    assert_eq!(
        off.boot_time_mismatch(&boot),
        Some(("offload", "off".into(), "on".into()))
    );
}
