//! xenstored's message format as the operator speaks it: a 16-byte header
//! (`struct xsd_sockmsg` of xen/include/public/io/xs_wire.h: type, req_id,
//! tx_id, len, little-endian u32s on x86) and `len` bytes of payload,
//! mostly nul-terminated strings (docs/misc/xenstore.txt). Pure: bytes in,
//! values or a [`WireError`] out; nothing here panics on what xenstored sends.

use std::fmt;

/// `sizeof(struct xsd_sockmsg)`.
pub const HEADER_LEN: usize = 16;

/// `XENSTORE_PAYLOAD_MAX`: the limit in both directions. A reply that
/// claims more is a broken stream, not something to allocate for.
pub const PAYLOAD_MAX: usize = 4096;

/// The `enum xsd_sockmsg_type` values the operator sends or expects
/// (checked against xs_wire.h: the enum counts from XS_CONTROL = 0).
pub const XS_DIRECTORY: u32 = 1;
pub const XS_READ: u32 = 2;
pub const XS_WATCH: u32 = 4;
pub const XS_UNWATCH: u32 = 5;
pub const XS_TRANSACTION_START: u32 = 6;
pub const XS_TRANSACTION_END: u32 = 7;
pub const XS_WRITE: u32 = 11;
pub const XS_RM: u32 = 13;
pub const XS_SET_PERMS: u32 = 14;
pub const XS_WATCH_EVENT: u32 = 15;
pub const XS_ERROR: u32 = 16;

/// A message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

/// What is wrong with bytes xenstored sent (or that we were asked to send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A header claiming a payload over [`PAYLOAD_MAX`].
    TooLong(u32),
    /// A payload that is not what its message type holds.
    Malformed(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLong(n) => write!(
                f,
                "a message of {n} bytes (xenstore's limit is {PAYLOAD_MAX})"
            ),
            WireError::Malformed(why) => f.write_str(why),
        }
    }
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Header {
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let h = Header {
            ty: u32_at(b, 0),
            req_id: u32_at(b, 4),
            tx_id: u32_at(b, 8),
            len: u32_at(b, 12),
        };
        if h.len as usize > PAYLOAD_MAX {
            return Err(WireError::TooLong(h.len));
        }
        Ok(h)
    }
}

/// One whole message: header then payload.
pub fn encode(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.len() > PAYLOAD_MAX {
        return Err(WireError::TooLong(payload.len() as u32));
    }
    let mut m = Vec::with_capacity(HEADER_LEN + payload.len());
    for v in [ty, req_id, tx_id, payload.len() as u32] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(payload);
    Ok(m)
}

/// Strings, each nul-terminated (a path, a watch, a permission list).
pub fn strings(parts: &[&str]) -> Vec<u8> {
    let mut p = Vec::new();
    for s in parts {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

/// XS_WRITE's payload: the path, nul, the value (not terminated).
pub fn write_payload(path: &str, value: &str) -> Vec<u8> {
    let mut p = strings(&[path]);
    p.extend_from_slice(value.as_bytes());
    p
}

/// A payload of nul-terminated strings (a directory listing, a watch
/// event): the strings, without the empty one a trailing nul leaves.
pub fn split_strings(payload: &[u8]) -> Result<Vec<String>, WireError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = payload.strip_suffix(&[0]) else {
        return Err(WireError::Malformed(
            "a list of strings without its final nul".into(),
        ));
    };
    body.split(|b| *b == 0)
        .map(|s| {
            String::from_utf8(s.to_vec())
                .map_err(|_| WireError::Malformed("a string that is not UTF-8".into()))
        })
        .collect()
}

/// XS_ERROR's payload: the errno's name ("ENOENT"), nul-terminated.
pub fn error_name(payload: &[u8]) -> Result<String, WireError> {
    let name = payload.strip_suffix(&[0]).unwrap_or(payload);
    if name.is_empty()
        || name.len() > 16
        || !name
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(WireError::Malformed(format!(
            "an error reply that names no error: {:?}",
            String::from_utf8_lossy(payload)
        )));
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// The "OK" (nul-terminated) that acknowledges a write, a watch...
pub fn expect_ok(payload: &[u8]) -> Result<(), WireError> {
    if payload == b"OK\0" || payload == b"OK" {
        Ok(())
    } else {
        Err(WireError::Malformed(format!(
            "an acknowledgement that is not OK: {:?}",
            String::from_utf8_lossy(payload)
        )))
    }
}

/// XS_TRANSACTION_START's reply: the transaction's id in decimal,
/// nul-terminated; 0 is not an id.
pub fn transaction_id(payload: &[u8]) -> Result<u32, WireError> {
    let text = payload.strip_suffix(&[0]).unwrap_or(payload);
    std::str::from_utf8(text)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u32>().ok())
        .filter(|id| *id != 0)
        .ok_or_else(|| {
            WireError::Malformed(format!(
                "a transaction id that is not a number: {:?}",
                String::from_utf8_lossy(payload)
            ))
        })
}

/// XS_WATCH_EVENT's payload: (path, token).
pub fn watch_event(payload: &[u8]) -> Result<(String, String), WireError> {
    // xenstored terminates both; some send a further empty string.
    let mut parts = split_strings(payload)?.into_iter();
    match (parts.next(), parts.next()) {
        (Some(path), Some(token)) if !path.is_empty() => Ok((path, token)),
        _ => Err(WireError::Malformed(format!(
            "a watch event without a path and a token: {:?}",
            String::from_utf8_lossy(payload)
        ))),
    }
}
