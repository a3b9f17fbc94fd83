//! The xenstore message format: `xen/include/public/io/xs_wire.h` for the
//! layout and `docs/misc/xenstore.txt` for what each payload holds.
//!
//! Everything here is pure: bytes in, typed values or a [`WireError`] out.
//! xenstored lives in another domain, so every byte it sends is checked, and a
//! bad one becomes an error value, never a panic.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// `sizeof(struct xsd_sockmsg)`.
pub const HEADER_LEN: usize = 16;

/// `XENSTORE_PAYLOAD_MAX`: the payload limit in both directions. xenstored
/// kills a connection that sends more, and we treat a reply that claims more
/// as the end of a usable stream.
pub const PAYLOAD_MAX: usize = 4096;

/// `enum xsd_sockmsg_type`. The numbers are the wire values; 20 was
/// `XS_RESTRICT` and is gone, so it has no variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// `struct xsd_sockmsg`. Fields are host-endian on the wire; both ends of a
/// Xen x86 ring are little-endian, so we encode little-endian explicitly.
/// `ty` stays a raw `u32` so that an unknown type can be reported, not lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Fails only on a length over [`PAYLOAD_MAX`]: that is the one header
    /// fault after which the byte stream has no trustworthy message boundary.
    /// Type and ids are judged later, once the whole message is in hand.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header {
            ty: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        };
        if h.len as usize > PAYLOAD_MAX {
            return Err(WireError::TooLong(h.len));
        }
        Ok(h)
    }
}

/// The errno names xenstored sends in an `XS_ERROR` reply (`xsd_errors[]`).
/// oxenstored also sends names outside that table (`EQUOTA`), and the header
/// says more may be appended, so an unknown name is kept, not rejected.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Errno {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
    Other(String),
}

const ERRNO_NAMES: [(&str, Errno); 16] = [
    ("EINVAL", Errno::EINVAL),
    ("EACCES", Errno::EACCES),
    ("EEXIST", Errno::EEXIST),
    ("EISDIR", Errno::EISDIR),
    ("ENOENT", Errno::ENOENT),
    ("ENOMEM", Errno::ENOMEM),
    ("ENOSPC", Errno::ENOSPC),
    ("EIO", Errno::EIO),
    ("ENOTEMPTY", Errno::ENOTEMPTY),
    ("ENOSYS", Errno::ENOSYS),
    ("EROFS", Errno::EROFS),
    ("EBUSY", Errno::EBUSY),
    ("EAGAIN", Errno::EAGAIN),
    ("EISCONN", Errno::EISCONN),
    ("E2BIG", Errno::E2BIG),
    ("EPERM", Errno::EPERM),
];

impl Errno {
    pub fn from_name(name: &str) -> Errno {
        ERRNO_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| Errno::Other(String::from(name)))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Errno::Other(s) => s,
            known => ERRNO_NAMES
                .iter()
                .find(|(_, e)| e == known)
                .map_or("?", |(n, _)| n),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that breaks the protocol. Plain data (`Copy`) so it can be
/// stored and reported without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Header `len` over [`PAYLOAD_MAX`] (or a request we refuse to send).
    TooLong(u32),
    /// A reply whose type is not in `xsd_sockmsg_type`.
    UnknownType(u32),
    /// A reply whose type is neither the request's nor `XS_ERROR`.
    WrongType {
        got: u32,
        want: u32,
    },
    /// A reply to a request we did not make (or no longer wait for).
    WrongReqId {
        got: u32,
        want: u32,
    },
    /// A reply arrived while no request was outstanding.
    Unsolicited {
        ty: u32,
        req_id: u32,
    },
    /// A payload that must end in NUL does not.
    MissingNul,
    NotUtf8,
    /// An `XS_ERROR` payload that is not one non-empty name.
    BadError,
    /// An acknowledgement other than `"OK\0"`.
    BadAck,
    /// A transaction id that is not a non-zero decimal `u32`.
    BadTxId,
    /// A directory listing with an empty name in it.
    EmptyDirEntry,
    /// A watch event that is not exactly `path\0token\0` with a path.
    BadWatchEvent,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WireError::TooLong(n) => write!(f, "payload length {n} over {PAYLOAD_MAX}"),
            WireError::UnknownType(t) => write!(f, "unknown message type {t}"),
            WireError::WrongType { got, want } => write!(f, "reply type {got}, expected {want}"),
            WireError::WrongReqId { got, want } => write!(f, "reply req_id {got}, expected {want}"),
            WireError::Unsolicited { ty, req_id } => {
                write!(f, "unsolicited message type {ty} req_id {req_id}")
            }
            WireError::MissingNul => f.write_str("payload not NUL-terminated"),
            WireError::NotUtf8 => f.write_str("payload not UTF-8"),
            WireError::BadError => f.write_str("bad error string"),
            WireError::BadAck => f.write_str("acknowledgement is not \"OK\""),
            WireError::BadTxId => f.write_str("bad transaction id"),
            WireError::EmptyDirEntry => f.write_str("empty name in directory listing"),
            WireError::BadWatchEvent => f.write_str("watch event is not path\\0token\\0"),
        }
    }
}

/// One `XS_WATCH_EVENT`: `path` changed (or is a child of a watched path that
/// changed); `token` is what was given to `watch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// Header plus the concatenated `parts` (callers include their own NULs, since
/// where NULs go differs per type: `XS_WRITE`'s value has none).
pub fn encode(ty: MsgType, req_id: u32, tx_id: u32, parts: &[&[u8]]) -> Result<Vec<u8>, WireError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > PAYLOAD_MAX {
        return Err(WireError::TooLong(u32::try_from(len).unwrap_or(u32::MAX)));
    }
    let hdr = Header {
        ty: ty as u32,
        req_id,
        tx_id,
        len: len as u32,
    };
    let mut msg = Vec::with_capacity(HEADER_LEN + len);
    msg.extend_from_slice(&hdr.to_bytes());
    for p in parts {
        msg.extend_from_slice(p);
    }
    Ok(msg)
}

/// Matches a reply to the request it answers. Outer `Err`: the reply breaks
/// the protocol. Inner `Err`: xenstored refused the request.
///
/// `tx_id` is deliberately not compared: xenstore.txt says replies echo it,
/// but oxenstored answers `XS_WATCH`/`XS_UNWATCH` with 0 whatever was sent.
pub fn check_reply<'a>(
    hdr: &Header,
    body: &'a [u8],
    want: MsgType,
    req_id: u32,
) -> Result<Result<&'a [u8], Errno>, WireError> {
    if hdr.req_id != req_id {
        return Err(WireError::WrongReqId {
            got: hdr.req_id,
            want: req_id,
        });
    }
    if hdr.ty == MsgType::Error as u32 {
        return decode_error(body).map(Err);
    }
    if hdr.ty != want as u32 {
        return Err(match MsgType::from_u32(hdr.ty) {
            None => WireError::UnknownType(hdr.ty),
            Some(_) => WireError::WrongType {
                got: hdr.ty,
                want: want as u32,
            },
        });
    }
    Ok(Ok(body))
}

fn utf8(b: &[u8]) -> Result<&str, WireError> {
    core::str::from_utf8(b).map_err(|_| WireError::NotUtf8)
}

/// Strips the one NUL that must end `body`.
fn nul_terminated(body: &[u8]) -> Result<&[u8], WireError> {
    match body.split_last() {
        Some((0, rest)) => Ok(rest),
        _ => Err(WireError::MissingNul),
    }
}

/// `XS_READ` reply: the value itself, with no terminator (a NUL in it is data).
pub fn decode_value(body: &[u8]) -> Result<String, WireError> {
    utf8(body).map(String::from)
}

/// `XS_WRITE`, `XS_RM`, `XS_WATCH`, `XS_UNWATCH`, `XS_TRANSACTION_END`: `"OK\0"`.
pub fn decode_ack(body: &[u8]) -> Result<(), WireError> {
    if body == b"OK\0" {
        Ok(())
    } else {
        Err(WireError::BadAck)
    }
}

/// `XS_DIRECTORY` reply: each child name followed by NUL; no children is an
/// empty payload.
pub fn decode_directory(body: &[u8]) -> Result<Vec<String>, WireError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let names = nul_terminated(body)?;
    names
        .split(|&b| b == 0)
        .map(|n| {
            if n.is_empty() {
                Err(WireError::EmptyDirEntry)
            } else {
                utf8(n).map(String::from)
            }
        })
        .collect()
}

/// `XS_TRANSACTION_START` reply: the id in decimal, NUL-terminated. 0 would
/// mean "no transaction", so it is refused too.
pub fn decode_tx_id(body: &[u8]) -> Result<u32, WireError> {
    let digits = nul_terminated(body)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(WireError::BadTxId);
    }
    match utf8(digits)?.parse::<u32>() {
        Ok(id) if id != 0 => Ok(id),
        _ => Err(WireError::BadTxId),
    }
}

/// `XS_ERROR` payload: one errno name, NUL-terminated.
pub fn decode_error(body: &[u8]) -> Result<Errno, WireError> {
    let name = nul_terminated(body)?;
    if name.is_empty() || name.contains(&0) {
        return Err(WireError::BadError);
    }
    Ok(Errno::from_name(utf8(name)?))
}

/// `XS_WATCH_EVENT` payload: `path\0token\0`.
pub fn decode_watch_event(body: &[u8]) -> Result<WatchEvent, WireError> {
    let fields = nul_terminated(body)?;
    let mut it = fields.split(|&b| b == 0);
    match (it.next(), it.next(), it.next()) {
        (Some(path), Some(token), None) if !path.is_empty() => Ok(WatchEvent {
            path: utf8(path)?.into(),
            token: utf8(token)?.into(),
        }),
        _ => Err(WireError::BadWatchEvent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn message_types_match_xs_wire_h() {
        use MsgType::*;
        let all = [
            (Control, 0),
            (Directory, 1),
            (Read, 2),
            (GetPerms, 3),
            (Watch, 4),
            (Unwatch, 5),
            (TransactionStart, 6),
            (TransactionEnd, 7),
            (Introduce, 8),
            (Release, 9),
            (GetDomainPath, 10),
            (Write, 11),
            (Mkdir, 12),
            (Rm, 13),
            (SetPerms, 14),
            (WatchEvent, 15),
            (Error, 16),
            (IsDomainIntroduced, 17),
            (Resume, 18),
            (SetTarget, 19),
            (ResetWatches, 21),
            (DirectoryPart, 22),
        ];
        for (t, v) in all {
            assert_eq!(t as u32, v);
            assert_eq!(MsgType::from_u32(v), Some(t));
        }
        for v in [20, 23, 0xffff, u32::MAX] {
            assert_eq!(MsgType::from_u32(v), None);
        }
    }

    #[test]
    fn header_layout_and_round_trip() {
        let h = Header {
            ty: 2,
            req_id: 0x0403_0201,
            tx_id: 7,
            len: 4096,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..4], &[2, 0, 0, 0]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[8..12], &[7, 0, 0, 0]);
        assert_eq!(&b[12..16], &[0, 0x10, 0, 0]);
        assert_eq!(Header::parse(&b), Ok(h));
    }

    #[test]
    fn header_length_over_limit_is_refused() {
        for len in [4097, 0x8000_0000, u32::MAX] {
            let b = Header {
                ty: 2,
                req_id: 1,
                tx_id: 0,
                len,
            }
            .to_bytes();
            assert_eq!(Header::parse(&b), Err(WireError::TooLong(len)));
        }
    }

    #[test]
    fn encode_request_layouts() {
        let m = encode(MsgType::Read, 5, 0, &[b"device/vif/0/mac", b"\0"]).unwrap();
        assert_eq!(
            Header::parse(m[..16].try_into().unwrap()).unwrap(),
            Header {
                ty: 2,
                req_id: 5,
                tx_id: 0,
                len: 17
            }
        );
        assert_eq!(&m[16..], b"device/vif/0/mac\0");

        let m = encode(MsgType::Write, 6, 9, &[b"data/ready", b"\0", b"1"]).unwrap();
        assert_eq!(&m[8..12], &[9, 0, 0, 0]);
        assert_eq!(&m[16..], b"data/ready\x001");

        let m = encode(
            MsgType::Watch,
            7,
            0,
            &[b"control/shutdown", b"\0", b"tok", b"\0"],
        )
        .unwrap();
        assert_eq!(&m[16..], b"control/shutdown\0tok\0");
    }

    #[test]
    fn encode_enforces_payload_max() {
        let big = vec![b'a'; PAYLOAD_MAX];
        assert_eq!(
            encode(MsgType::Write, 1, 0, &[&big]).unwrap().len(),
            HEADER_LEN + PAYLOAD_MAX
        );
        assert_eq!(
            encode(MsgType::Write, 1, 0, &[&big, b"\0"]),
            Err(WireError::TooLong(4097))
        );
    }

    fn hdr(ty: u32, req_id: u32) -> Header {
        Header {
            ty,
            req_id,
            tx_id: 0,
            len: 0,
        }
    }

    #[test]
    fn check_reply_rules() {
        let r = MsgType::Read;
        assert_eq!(check_reply(&hdr(2, 3), b"v", r, 3), Ok(Ok(&b"v"[..])));
        assert_eq!(
            check_reply(&hdr(16, 3), b"ENOENT\0", r, 3),
            Ok(Err(Errno::ENOENT))
        );
        assert_eq!(
            check_reply(&hdr(16, 3), b"ENOENT", r, 3),
            Err(WireError::MissingNul)
        );
        assert_eq!(
            check_reply(&hdr(11, 3), b"OK\0", r, 3),
            Err(WireError::WrongType { got: 11, want: 2 })
        );
        assert_eq!(
            check_reply(&hdr(99, 3), b"", r, 3),
            Err(WireError::UnknownType(99))
        );
        assert_eq!(
            check_reply(&hdr(2, 4), b"v", r, 3),
            Err(WireError::WrongReqId { got: 4, want: 3 })
        );
        // An error for someone else's request is still someone else's.
        assert_eq!(
            check_reply(&hdr(16, 4), b"EIO\0", r, 3),
            Err(WireError::WrongReqId { got: 4, want: 3 })
        );
    }

    #[test]
    fn errno_names_round_trip() {
        for (name, e) in ERRNO_NAMES.iter() {
            assert_eq!(Errno::from_name(name), *e);
            assert_eq!(e.as_str(), *name);
            let mut body = Vec::from(name.as_bytes());
            body.push(0);
            assert_eq!(decode_error(&body), Ok(e.clone()));
        }
        assert_eq!(decode_error(b"EQUOTA\0"), Ok(Errno::Other("EQUOTA".into())));
        assert_eq!(Errno::Other("EQUOTA".into()).as_str(), "EQUOTA");
    }

    #[test]
    fn error_payload_rules() {
        assert_eq!(decode_error(b""), Err(WireError::MissingNul));
        assert_eq!(decode_error(b"ENOENT"), Err(WireError::MissingNul));
        assert_eq!(decode_error(b"\0"), Err(WireError::BadError));
        assert_eq!(decode_error(b"EN\0OENT\0"), Err(WireError::BadError));
        assert_eq!(decode_error(b"E\xff\0"), Err(WireError::NotUtf8));
    }

    #[test]
    fn read_value_is_raw() {
        assert_eq!(
            decode_value(b"00:16:3e:00:00:01"),
            Ok("00:16:3e:00:00:01".into())
        );
        assert_eq!(decode_value(b""), Ok("".into()));
        // No terminator is expected, so a trailing NUL is part of the value.
        assert_eq!(decode_value(b"a\0"), Ok("a\0".into()));
        assert_eq!(decode_value(b"\xc3\x28"), Err(WireError::NotUtf8));
    }

    #[test]
    fn ack_rules() {
        assert_eq!(decode_ack(b"OK\0"), Ok(()));
        for bad in [&b""[..], b"OK", b"OK\0\0", b"ok\0", b"KO\0"] {
            assert_eq!(decode_ack(bad), Err(WireError::BadAck));
        }
    }

    #[test]
    fn directory_rules() {
        assert_eq!(decode_directory(b""), Ok(vec![]));
        assert_eq!(decode_directory(b"0\0"), Ok(vec!["0".into()]));
        assert_eq!(
            decode_directory(b"mac\0state\0"),
            Ok(vec!["mac".into(), "state".into()])
        );
        assert_eq!(decode_directory(b"mac\0state"), Err(WireError::MissingNul));
        assert_eq!(decode_directory(b"\0"), Err(WireError::EmptyDirEntry));
        assert_eq!(decode_directory(b"a\0\0b\0"), Err(WireError::EmptyDirEntry));
        assert_eq!(decode_directory(b"a\0\xff\0"), Err(WireError::NotUtf8));
    }

    #[test]
    fn tx_id_rules() {
        assert_eq!(decode_tx_id(b"17\0"), Ok(17));
        assert_eq!(decode_tx_id(b"4294967295\0"), Ok(u32::MAX));
        for bad in [
            &b"\0"[..],
            b"0\0",
            b"4294967296\0",
            b"-1\0",
            b"+1\0",
            b" 1\0",
            b"1x\0",
            b"1\x001\0",
        ] {
            assert_eq!(decode_tx_id(bad), Err(WireError::BadTxId), "{bad:?}");
        }
        assert_eq!(decode_tx_id(b"17"), Err(WireError::MissingNul));
        assert_eq!(decode_tx_id(b""), Err(WireError::MissingNul));
    }

    #[test]
    fn watch_event_rules() {
        let ev = decode_watch_event(b"control/shutdown\0ctl\0").unwrap();
        assert_eq!(
            ev,
            WatchEvent {
                path: "control/shutdown".into(),
                token: "ctl".into()
            }
        );
        assert_eq!(decode_watch_event(b"p\0\0").unwrap().token, "");
        assert_eq!(decode_watch_event(b"p\0t"), Err(WireError::MissingNul));
        assert_eq!(decode_watch_event(b"p\0"), Err(WireError::BadWatchEvent));
        assert_eq!(
            decode_watch_event(b"p\0t\0x\0"),
            Err(WireError::BadWatchEvent)
        );
        assert_eq!(decode_watch_event(b"\0t\0"), Err(WireError::BadWatchEvent));
        assert_eq!(decode_watch_event(b"p\xff\0t\0"), Err(WireError::NotUtf8));
        assert_eq!(decode_watch_event(b""), Err(WireError::MissingNul));
    }
}
