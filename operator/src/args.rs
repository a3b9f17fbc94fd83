//! The spawn command line: options, their checks, and the proxy's
//! configuration line they make, validated by the guest's own parser
//! (`proxy::config::Config::parse`) before anything is created.

use crate::libvirt::Via;
use crate::{bad, Failure};
use std::net::Ipv4Addr;

pub mod flags;

/// Xen hands the guest at most 1023 bytes of command line (1024 with the NUL),
/// so the guest refuses a line of 1023 bytes or more (it may have been cut,
/// `kernel/src/start_info.rs`): the longest line an instance takes is 1022.
pub const MAX_CMDLINE: usize = 1022;

/// Profiles: extra= tokens put before --extra (whose keys win).
const PROFILE_DEFAULT: &str = "rx_bufs=64 max_conns=64"; // fits memory=6 (xl-configs/reverse.cfg)
const PROFILE_SMALL: &str = "rx_bufs=32 max_conns=64"; // fits memory=4 (xl-configs/small.cfg)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Reverse,
    Transparent,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Reverse => "reverse",
            Mode::Transparent => "transparent",
        }
    }
}

/// A checked `miniproxy spawn` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    pub name: String,
    pub mode: Mode,
    pub listen: u16,
    pub upstream: Option<String>,
    /// `A.B.C.D/LEN` or `dhcp`.
    pub ip: String,
    pub gw: Option<String>,
    pub memory: u32,
    pub profile: &'static str,
    /// Lower case; `None`: derived from the name.
    pub mac: Option<String>,
    pub kernel: Option<String>,
    pub timeout_ms: u64,
    pub timeout_text: String,
    pub json: bool,
    /// --via; `None`: MINIPROXY_VIA or xl (crate::libvirt::via_from_env).
    pub via: Option<Via>,
    /// The guest's whole configuration line (the template's @EXTRA@).
    pub cfgline: String,
}

/// Seconds as a decimal (`30`, `0.5`) in ms; `None` unless positive.
pub fn parse_secs(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 6 || !digits(int) || !digits(frac) || s.ends_with('.') {
        return None;
    }
    let frac3: String = format!("{frac:0<3}").chars().take(3).collect();
    let ms = int.parse::<u64>().ok()? * 1000 + frac3.parse::<u64>().ok()?;
    (ms > 0).then_some(ms)
}

pub fn check_name(name: &str) -> Result<(), Failure> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        bad(format!("bad name '{name}': letters, digits, '_', '.', '-'; at most 64; starts with a letter or digit"))
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p > 0)
}

/// A dotted quad, each part 0..255 without leading zeros.
fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse::<Ipv4Addr>().ok()
}

/// Not 0.0.0.0/8, loopback, multicast, class E or broadcast.
fn unicast(a: Ipv4Addr) -> bool {
    let first = a.octets()[0];
    first != 0 && first != 127 && first < 224
}

fn check_cidr(v: &str) -> Result<(Ipv4Addr, u8), Failure> {
    let Some((a, len)) = v.split_once('/') else {
        return bad(format!(
            "bad address '{v}': expected A.B.C.D/LEN (e.g. 10.0.0.5/24) or dhcp"
        ));
    };
    let Some(addr) = parse_ipv4(a) else {
        return bad(format!("bad address '{v}': '{a}' is not an IPv4 address"));
    };
    let len = match len.parse::<u8>() {
        Ok(l) if (1..=32).contains(&l) && len.len() <= 2 => l,
        _ => return bad(format!("bad address '{v}': prefix length must be 1..32")),
    };
    if !unicast(addr) {
        return bad(format!("bad address '{v}': not a unicast host address"));
    }
    if len <= 30 {
        let host_mask = (1u32 << (32 - len)) - 1;
        let host = u32::from(addr) & host_mask;
        if host == 0 || host == host_mask {
            return bad(format!(
                "bad address '{v}': that is the network or broadcast address of /{len}"
            ));
        }
    }
    Ok((addr, len))
}

/// 00:16:3e (Xen's OUI) + 24 bits of a hash of `key` (FNV-1a, mixed), as
/// the bash tool made it: an instance keeps its MAC across versions.
pub fn mac_of(key: &str) -> String {
    let mut h: u64 = 2166136261;
    for c in key.chars() {
        h = ((h ^ c as u64) * 16777619) & 0xffff_ffff;
    }
    h = ((h ^ (h >> 16)) * 0x45d9f3b) & 0xffff_ffff;
    h ^= h >> 16;
    format!(
        "00:16:3e:{:02x}:{:02x}:{:02x}",
        (h >> 16) & 255,
        (h >> 8) & 255,
        h & 255
    )
}

fn check_mac(v: &str) -> Result<String, Failure> {
    let parts: Vec<&str> = v.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return bad(format!("bad MAC '{v}': expected xx:xx:xx:xx:xx:xx"));
    }
    if u8::from_str_radix(parts[0], 16).unwrap_or(1) & 1 == 1 {
        return bad(format!(
            "bad MAC '{v}': a multicast address (first octet is odd)"
        ));
    }
    Ok(v.to_ascii_lowercase())
}

/// `--memory`: MB, at least 4.
pub fn parse_memory(memory_s: &str) -> Result<u32, Failure> {
    let memory = match memory_s.parse::<u32>() {
        Ok(m) if !memory_s.starts_with(['0', '+']) && memory_s.len() <= 5 => m,
        _ => return bad(format!("bad memory '{memory_s}': expected MB (e.g. 6)")),
    };
    if memory < 4 {
        return bad(format!(
            "memory {memory} MB is below 4 MB, the smallest PV guest xl builds"
        ));
    }
    Ok(memory)
}

/// The profile a spawn of `memory` MB gets without --profile.
pub fn profile_name(memory: u32) -> &'static str {
    if memory < 6 {
        "small"
    } else {
        "default"
    }
}

/// That profile's extra= tokens.
pub fn profile_tokens(memory: u32) -> &'static str {
    if memory < 6 {
        PROFILE_SMALL
    } else {
        PROFILE_DEFAULT
    }
}

/// Parse and check `spawn`'s arguments; `Ok(None)` for --help.
pub fn parse_spawn(argv: &[String]) -> Result<Option<Spawn>, Failure> {
    let mut opt = std::collections::HashMap::<&str, String>::new();
    let mut extra: Vec<String> = Vec::new();
    let mut json = false;
    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].as_str();
        i += 1;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg, None),
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--json" if inline.is_none() => json = true,
            "--name" | "--mode" | "--listen" | "--upstream" | "--ip" | "--gw" | "--memory"
            | "--profile" | "--mac" | "--extra" | "--kernel" | "--timeout" | "--via" => {
                let value = match inline {
                    Some(v) => v,
                    None if i < argv.len() => {
                        i += 1;
                        argv[i - 1].clone()
                    }
                    None => return bad(format!("{flag} needs a value")),
                };
                if flag == "--extra" {
                    extra.push(value);
                } else {
                    opt.insert(&flag[2..], value);
                }
            }
            _ => return bad(format!("unknown argument '{arg}'")),
        }
    }
    let get = |k: &str| opt.get(k).cloned().unwrap_or_default();

    let name = get("name");
    if name.is_empty() {
        return bad("--name is required");
    }
    check_name(&name)?;
    let mode = match get("mode").as_str() {
        "reverse" => Mode::Reverse,
        "transparent" => Mode::Transparent,
        "" => return bad("--mode is required (reverse or transparent)"),
        m => return bad(format!("bad mode '{m}': expected reverse or transparent")),
    };
    let listen_s = get("listen");
    if listen_s.is_empty() {
        return bad("--listen is required");
    }
    let Some(listen) = parse_port(&listen_s) else {
        return bad(format!(
            "bad port '{listen_s}' for --listen: expected 1..65535"
        ));
    };
    let upstream = opt.get("upstream").cloned();
    match (mode, &upstream) {
        (Mode::Reverse, None) => return bad("reverse mode needs --upstream IP:PORT"),
        (Mode::Reverse, Some(u)) => {
            let ok = u.rsplit_once(':').is_some_and(|(a, p)| {
                parse_ipv4(a).is_some_and(unicast) && parse_port(p).is_some()
            });
            if !ok {
                return bad(format!("bad upstream '{u}': expected A.B.C.D:PORT"));
            }
        }
        (Mode::Transparent, Some(_)) => return bad(
            "--upstream is for reverse mode; transparent mode splices to each connection's own destination",
        ),
        (Mode::Transparent, None) => {}
    }
    let ip = get("ip");
    if ip.is_empty() {
        return bad("--ip is required (A.B.C.D/LEN or dhcp)");
    }
    let static_ip = if ip == "dhcp" {
        None
    } else {
        Some(check_cidr(&ip)?)
    };
    let gw = opt.get("gw").cloned();
    if let Some(g) = &gw {
        let Some((addr, len)) = static_ip else {
            return bad("--gw goes with a static --ip (DHCP supplies the router)");
        };
        let Some(ga) = parse_ipv4(g).filter(|a| unicast(*a)) else {
            return bad(format!("bad gateway '{g}': expected a unicast A.B.C.D"));
        };
        let mask = u32::MAX << (32 - len as u32);
        if u32::from(ga) & mask != u32::from(addr) & mask {
            return bad(format!("gateway {g} is not in {ip}'s subnet"));
        }
        if ga == addr {
            return bad(format!("gateway {g} is the instance's own address"));
        }
    }
    let memory = parse_memory(&opt.get("memory").cloned().unwrap_or_else(|| "6".into()))?;
    let (profile, profile_tokens) = match opt.get("profile").map(String::as_str) {
        None => (profile_name(memory), profile_tokens(memory)),
        Some("default") => ("default", PROFILE_DEFAULT),
        Some("small") => ("small", PROFILE_SMALL),
        Some(p) => return bad(format!("bad profile '{p}': expected default or small")),
    };
    let mac = match opt.get("mac") {
        Some(m) => Some(check_mac(m)?),
        None => None,
    };
    let timeout_text = opt.get("timeout").cloned().unwrap_or_else(|| "60".into());
    let Some(timeout_ms) = parse_secs(&timeout_text) else {
        return bad(format!(
            "bad timeout '{timeout_text}': expected seconds (e.g. 30)"
        ));
    };

    let via = match opt.get("via") {
        None => None,
        Some(v) => match Via::parse(v) {
            Some(via) => Some(via),
            None => return bad(format!("bad --via '{v}': expected xl or libvirt")),
        },
    };

    let cfgline = config_line(
        &ip,
        gw.as_deref(),
        mode,
        listen,
        upstream.as_deref(),
        profile_tokens,
        &extra,
    )?;
    Ok(Some(Spawn {
        name,
        mode,
        listen,
        upstream,
        ip,
        gw,
        memory,
        profile,
        mac,
        kernel: opt.get("kernel").cloned(),
        timeout_ms,
        timeout_text,
        json,
        via,
        cfgline,
    }))
}

/// The guest's configuration line: ip=, gw=, the rule, the profile's tokens
/// whose keys --extra does not set, then --extra's tokens. Refused unless
/// the guest's parser accepts it and it fits Xen's command line.
pub fn config_line(
    ip: &str,
    gw: Option<&str>,
    mode: Mode,
    listen: u16,
    upstream: Option<&str>,
    profile_tokens: &str,
    extra: &[String],
) -> Result<String, Failure> {
    let extra_tokens: Vec<&str> = extra.iter().flat_map(|e| e.split_whitespace()).collect();
    let mut user_keys: Vec<&str> = Vec::new();
    for tok in &extra_tokens {
        if let Some(c) = tok
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\'))
        {
            return bad(format!(
                "bad --extra token '{tok}': {c:?} cannot go in the xl config's extra= string"
            ));
        }
        let key = tok.split_once('=').map_or(*tok, |(k, _)| k);
        if key == "ip" || key == "gw" {
            return bad(format!("put {key}= in --{key}, not --extra"));
        }
        user_keys.push(key);
    }
    let mut line = format!("ip={ip}");
    if let Some(g) = gw {
        line += &format!(" gw={g}");
    }
    match (mode, upstream) {
        (Mode::Reverse, Some(u)) => line += &format!(" rule=reverse:{listen}:{u}"),
        _ => line += &format!(" rule=transparent:{listen}"),
    }
    for tok in profile_tokens.split(' ') {
        let key = tok.split_once('=').map_or(tok, |(k, _)| k);
        if !user_keys.contains(&key) {
            line += &format!(" {tok}");
        }
    }
    for tok in extra_tokens {
        line += &format!(" {tok}");
    }
    if line.len() > MAX_CMDLINE {
        return bad(format!(
            "the configuration line is {} bytes; the guest takes at most {} \
             (Xen cuts a longer one to 1023)",
            line.len(),
            MAX_CMDLINE
        ));
    }
    if let Err(e) = proxy::config::Config::parse(&line) {
        return bad(format!(
            "the instance would refuse its configuration: {e} (in '{line}')"
        ));
    }
    Ok(line)
}

#[cfg(test)]
mod tests;

/// Tests' `spawn` command line: a reverse instance NAME at IP (to
/// 10.0.0.1:8080), with `extra` arguments after.
#[cfg(test)]
pub(crate) fn reverse_spawn_argv(name: &str, ip: &str, extra: &[&str]) -> Vec<String> {
    let head = [
        "--name",
        name,
        "--mode",
        "reverse",
        "--listen",
        "80",
        "--upstream",
        "10.0.0.1:8080",
        "--ip",
        ip,
    ];
    head.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// [`reverse_spawn_argv`], parsed: tests' valid spawn.
#[cfg(test)]
pub(crate) fn reverse_spawn(name: &str, ip: &str, extra: &[&str]) -> Spawn {
    parse_spawn(&reverse_spawn_argv(name, ip, extra))
        .unwrap()
        .unwrap()
}
