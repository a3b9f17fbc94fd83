use super::*;

fn argv(s: &[&str]) -> Vec<String> {
    s.iter().map(|a| a.to_string()).collect()
}

fn spawn(extra: &[&str]) -> Result<Option<Spawn>, Failure> {
    parse_spawn(&reverse_spawn_argv("c42", "10.0.0.42/24", extra))
}

fn refusal(r: Result<Option<Spawn>, Failure>) -> String {
    match r {
        Err(Failure::Bad(m)) => m,
        other => panic!("not refused as a bad invocation: {other:?}"),
    }
}

#[test]
fn macs_match_the_bash_tools() {
    // Values from the bash tool's mac_of: instances keep their MACs.
    assert_eq!(mac_of("c42"), "00:16:3e:39:39:1f");
    assert_eq!(mac_of("op7#1"), "00:16:3e:13:17:64");
    assert_eq!(mac_of("a"), "00:16:3e:fa:a0:9a");
}

#[test]
fn seconds() {
    assert_eq!(parse_secs("30"), Some(30_000));
    assert_eq!(parse_secs("0.5"), Some(500));
    assert_eq!(parse_secs("1.2345"), Some(1_234));
    for bad in ["0", "0.0", "", ".5", "5.", "-1", "1e3", "1234567", "x"] {
        assert_eq!(parse_secs(bad), None, "{bad}");
    }
}

#[test]
fn the_config_line_puts_extra_keys_over_the_profile() {
    let s = spawn(&[
        "--extra",
        "max_conns=8 idle_exit=10m",
        "--extra=rule=transparent:443",
        "--gw",
        "10.0.0.1",
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        s.cfgline,
        "ip=10.0.0.42/24 gw=10.0.0.1 rule=reverse:80:10.0.0.1:8080 rx_bufs=64 max_conns=8 idle_exit=10m rule=transparent:443"
    );
    assert_eq!((s.profile, s.memory, s.timeout_ms), ("default", 6, 60_000));
    let s = spawn(&[
        "--memory",
        "4",
        "--mac",
        "00:16:3E:AA:bb:01",
        "--timeout",
        "2.5",
    ])
    .unwrap()
    .unwrap();
    assert_eq!(s.profile, "small");
    assert!(
        s.cfgline.ends_with(" rx_bufs=32 max_conns=64"),
        "{}",
        s.cfgline
    );
    assert_eq!(s.mac.as_deref(), Some("00:16:3e:aa:bb:01"));
    assert_eq!(s.timeout_ms, 2_500);
    let s = parse_spawn(&argv(&[
        "--name",
        "t",
        "--mode",
        "transparent",
        "--listen",
        "80",
        "--ip",
        "dhcp",
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        s.cfgline,
        "ip=dhcp rule=transparent:80 rx_bufs=64 max_conns=64"
    );
    assert_eq!(parse_spawn(&argv(&["--help"])).unwrap(), None);
}

#[test]
fn via_is_xl_or_libvirt_and_unset_by_default() {
    assert_eq!(spawn(&[]).unwrap().unwrap().via, None);
    assert_eq!(
        spawn(&["--via", "libvirt"]).unwrap().unwrap().via,
        Some(Via::Libvirt)
    );
    assert_eq!(spawn(&["--via=xl"]).unwrap().unwrap().via, Some(Via::Xl));
    let m = refusal(spawn(&["--via", "virsh"]));
    assert_eq!(m, "bad --via 'virsh': expected xl or libvirt");
}

#[test]
fn the_guests_parser_refuses_what_the_guest_would() {
    for (extra, says) in [
        ("buf=16q", "bad value for key 'buf'"),
        ("bfu=16k", "unknown key 'bfu'"),
        ("max_conns", "not of the form key=value"),
        ("rule=reverse:80:10.0.0.1", "key 'rule'"),
        ("loglevel=loud", "key 'loglevel'"),
        ("buf=4k buf_min=8k", "buf_min"),
        ("idle_exit=1m idle_exit=2m", "duplicate key 'idle_exit'"),
        ("gw=10.0.0.1", "put gw= in --gw"),
        ("idle_exit=\"1m", "cannot go in the xl config"),
    ] {
        let m = refusal(spawn(&["--extra", extra]));
        assert!(m.contains(says), "{extra}: {m}");
    }
}

/// `n` more reverse rules, ports written with leading zeros (19 digits:
/// the most the parser reads), to make a long line it accepts.
fn long_rules(n: u16) -> String {
    let rules: Vec<String> = (0..n)
        .map(|i| format!("rule=reverse:{:019}:10.0.0.1:{:019}", 1000 + i, 8080))
        .collect();
    format!(
        "rx_bufs={:019} max_conns={:019} {}",
        64,
        64,
        rules.join(" ")
    )
}

#[test]
fn a_line_xen_would_cut_is_refused_with_its_length() {
    // 15 rules more: the guest's parser takes the line; Xen would cut it.
    let long = long_rules(15);
    let line = format!("ip=10.0.0.42/24 rule=reverse:80:10.0.0.1:8080 {long}");
    assert!(line.len() >= 1024, "{}", line.len());
    assert!(proxy::config::Config::parse(&line).is_ok());
    let m = refusal(spawn(&["--extra", &long]));
    assert_eq!(
        m,
        format!(
            "the configuration line is {} bytes; the guest takes at most 1022 \
             (Xen cuts a longer one to 1023)",
            line.len()
        )
    );
    // 14 rules fit.
    let s = spawn(&["--extra", &long_rules(14)]).unwrap().unwrap();
    assert!(s.cfgline.len() < 1024);
}

#[test]
fn the_longest_line_taken_is_the_longest_the_guest_takes() {
    // The guest refuses 1023 bytes (what Xen leaves of any longer line), so
    // the tool takes 1022 and refuses 1023. A line of an exact length: full
    // rules, then one rule and tx_bufs padded with leading zeros.
    let line_of = |len: usize| {
        for n in 0..=15 {
            for (w, zeros) in (4..=19).flat_map(|w| (0..=17).map(move |z| (w, z))) {
                let extra = format!(
                    "{} rule=reverse:{:0w$}:10.0.0.1:{:0w$} tx_bufs={}16",
                    long_rules(n),
                    2000,
                    9090,
                    "0".repeat(zeros)
                );
                let Ok(Some(s)) = spawn(&["--extra", &extra]) else {
                    continue;
                };
                if s.cfgline.len() + 1 == len {
                    // One byte short: spawn it again with one zero more.
                    let extra = extra.replacen("tx_bufs=", "tx_bufs=0", 1);
                    return spawn(&["--extra", &extra]);
                }
            }
        }
        panic!("no line of {len} bytes");
    };
    let s = line_of(1022).unwrap().unwrap();
    assert_eq!(s.cfgline.len(), 1022);
    let m = refusal(line_of(1023));
    assert!(
        m.starts_with("the configuration line is 1023 bytes;"),
        "{m}"
    );
}
