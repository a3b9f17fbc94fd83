//! Xenbus states (`io/xenbus.h`) and the parsing of xenstore values.

use core::fmt;

/// `enum xenbus_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum XenbusState {
    Unknown = 0,
    Initialising = 1,
    InitWait = 2,
    Initialised = 3,
    Connected = 4,
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

impl XenbusState {
    pub fn from_u32(v: u32) -> Option<Self> {
        use XenbusState::*;
        Some(match v {
            0 => Unknown,
            1 => Initialising,
            2 => InitWait,
            3 => Initialised,
            4 => Connected,
            5 => Closing,
            6 => Closed,
            7 => Reconfiguring,
            8 => Reconfigured,
            _ => return None,
        })
    }

    /// The decimal string written to a `state` node.
    pub fn as_str(self) -> &'static str {
        ["0", "1", "2", "3", "4", "5", "6", "7", "8"][self as usize]
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            XenbusState::Unknown => "Unknown",
            XenbusState::Initialising => "Initialising",
            XenbusState::InitWait => "InitWait",
            XenbusState::Initialised => "Initialised",
            XenbusState::Connected => "Connected",
            XenbusState::Closing => "Closing",
            XenbusState::Closed => "Closed",
            XenbusState::Reconfiguring => "Reconfiguring",
            XenbusState::Reconfigured => "Reconfigured",
        };
        write!(f, "{name}({})", *self as u32)
    }
}

/// Strip what a xenstore value may carry around the text (a trailing NUL
/// from some writers, whitespace).
pub fn clean(s: &str) -> &str {
    s.trim_matches(|c: char| c == '\0' || c.is_ascii_whitespace())
}

/// A decimal unsigned number, as `xenbus_scanf("%u")` would accept it
/// (without sign or garbage).
pub fn parse_u32(s: &str) -> Option<u32> {
    let s = clean(s);
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `xx:xx:xx:xx:xx:xx`, hexadecimal, one or two digits per byte.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let s = clean(s);
    let mut mac = [0u8; 6];
    let mut n = 0;
    for part in s.split(':') {
        if n == 6 || part.is_empty() || part.len() > 2 {
            return None;
        }
        mac[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(mac)
}

/// A backend `feature-*` flag: absent or unparsable is "off", any non-zero
/// number is "on" (`xenbus_read_unsigned(..., 0) != 0`).
pub fn parse_flag(v: Option<&str>) -> bool {
    v.and_then(parse_u32).is_some_and(|n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for v in 0..=8 {
            let s = XenbusState::from_u32(v).unwrap();
            assert_eq!(s as u32, v);
            assert_eq!(parse_u32(s.as_str()), Some(v));
        }
        assert_eq!(XenbusState::from_u32(9), None);
        assert_eq!(alloc::format!("{}", XenbusState::InitWait), "InitWait(2)");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("4\0"), Some(4));
        assert_eq!(parse_u32(" 1500\n"), Some(1500));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32("4294967296"), None);
        assert_eq!(parse_u32("-1"), None);
        assert_eq!(parse_u32("+1"), None);
        assert_eq!(parse_u32("1x"), None);
        assert_eq!(parse_u32(""), None);
        assert_eq!(parse_u32("99999999999999999999"), None);
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("00:16:3e:0a:Bc:ff"),
            Some([0, 0x16, 0x3e, 0x0a, 0xbc, 0xff])
        );
        assert_eq!(
            parse_mac("0:16:3e:a:b:c"),
            Some([0, 0x16, 0x3e, 0xa, 0xb, 0xc])
        );
        assert_eq!(parse_mac("00:16:3e:0a:bc"), None);
        assert_eq!(parse_mac("00:16:3e:0a:bc:ff:00"), None);
        assert_eq!(parse_mac("00:16:3e:0a:bc:fff"), None);
        assert_eq!(parse_mac("00:16:3e:0a::ff"), None);
        assert_eq!(parse_mac("zz:16:3e:0a:bc:ff"), None);
        assert_eq!(parse_mac(""), None);
    }

    #[test]
    fn flags() {
        assert!(parse_flag(Some("1")));
        assert!(parse_flag(Some("2")));
        assert!(!parse_flag(Some("0")));
        assert!(!parse_flag(Some("yes")));
        assert!(!parse_flag(None));
    }
}
