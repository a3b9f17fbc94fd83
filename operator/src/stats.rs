//! The guest's `data/stats` line: `key=value` tokens separated by single
//! spaces, every value a decimal u64, every key once (top-level README,
//! "The stats line"). Keys are prefixed by their source: `px_` the proxy
//! engine, `nf_` netfront, `cpu_` the serve loop's profile, `xen_` the
//! kernel's Xen platform.

use crate::json::Object;

/// The line's counters, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters(pub Vec<(String, u64)>);

impl Counters {
    pub fn parse(line: &str) -> Result<Counters, String> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for token in line.split_whitespace() {
            let Some((key, value)) = token.split_once('=') else {
                return Err(format!("'{token}' is not key=value"));
            };
            let key_ok = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !key_ok {
                return Err(format!("bad key '{key}'"));
            }
            let Some(v) = value
                .parse::<u64>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            else {
                return Err(format!("{key}: '{value}' is not a count"));
            };
            if out.iter().any(|(k, _)| k == key) {
                return Err(format!("{key} twice"));
            }
            out.push((key.to_string(), v));
        }
        Ok(Counters(out))
    }

    /// One counter. (Used by the tests; `miniproxy metrics` is to read it.)
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn get(&self, key: &str) -> Option<u64> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub fn to_json(&self) -> Object {
        self.0
            .iter()
            .fold(Object::default(), |o, (k, v)| o.num(k, *v))
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_guest_line_in_order() {
        let c = Counters::parse(
            "px_accepted=3 px_bytes_up=1048576 nf_rx_frames=12 cpu_busy_ms=7 xen_notifies=2",
        )
        .unwrap();
        assert_eq!(c.get("px_accepted"), Some(3));
        assert_eq!(c.get("px_bytes_up"), Some(1048576));
        assert_eq!(c.get("cpu_busy_ms"), Some(7));
        assert_eq!(c.get("accepted"), None);
        assert_eq!(
            c.to_string(),
            "px_accepted=3 px_bytes_up=1048576 nf_rx_frames=12 cpu_busy_ms=7 xen_notifies=2"
        );
        assert_eq!(
            c.to_json().finish(),
            r#"{"px_accepted":3,"px_bytes_up":1048576,"nf_rx_frames":12,"cpu_busy_ms":7,"xen_notifies":2}"#
        );
    }

    #[test]
    fn parses_what_the_engine_writes() {
        let s = proxy::engine::Stats {
            accepted: 5,
            bytes_down: 1 << 40,
            ..Default::default()
        };
        let c = Counters::parse(&s.to_string()).unwrap();
        assert_eq!(c.get("px_accepted"), Some(5));
        assert_eq!(c.get("px_bytes_down"), Some(1 << 40));
        assert_eq!(c.0.len(), 15);
        assert!(c.0.iter().all(|(k, _)| k.starts_with("px_")));
    }

    #[test]
    fn parses_what_netfront_writes() {
        let s = netfront::Stats {
            rx_frames: 9,
            tx_gso_frames: 4,
            rx_csum_bad: 1,
            ..Default::default()
        };
        let c = Counters::parse(&s.to_string()).unwrap();
        assert_eq!(c.get("nf_rx_frames"), Some(9));
        assert_eq!(c.get("nf_tx_gso_frames"), Some(4));
        assert_eq!(c.get("nf_rx_drops"), Some(1));
        assert!(c.0.iter().all(|(k, _)| k.starts_with("nf_")));
    }

    #[test]
    fn refuses_the_old_mixed_formats_and_bad_tokens() {
        for bad in [
            "accepted=1 resets=0 (client=0 upstream=0)",
            "rx 3 frames 0 B",
            "cpu_ms nic=2",
            "px_a=1 px_a=2",
            "px_a=-1",
            "px_a=+1",
            "px_a=18446744073709551616",
            "Px_a=1",
            "=1",
        ] {
            assert!(Counters::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Counters::parse("").unwrap().0, vec![]);
    }
}
