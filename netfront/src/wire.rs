//! Wire formats of `xen/include/public/io/netif.h` and `io/ring.h`.
//!
//! Each message is a `#[repr(C)]` struct whose size and field offsets are
//! checked (at compile time and in the tests) against the values of the C
//! header, and an explicit little-endian byte codec built from those same
//! offsets. The driver never reinterprets shared memory as a struct: it copies
//! a slot's bytes out of the page and decodes them (see `SharedPage`).
//!
//! Where the numbers come from (Xen 4.17 public headers, x86_64; the script
//! `netfront/tools/check-layout.sh` recompiles them with gcc and prints them):
//!
//! | item | value | source |
//! |---|---|---|
//! | `offsetof(struct netif_tx_sring, ring)` | 64 | ring.h `DEFINE_RING_TYPES`: 4 × `RING_IDX` + `pvt` (4) + `__pad[44]` |
//! | `req_prod, req_event, rsp_prod, rsp_event` | 0, 4, 8, 12 | ring.h, `RING_IDX` = `unsigned int` |
//! | `sizeof(struct netif_tx_request)` | 12 | netif.h: gref u32, offset u16, flags u16, id u16, size u16 |
//! | `sizeof(struct netif_tx_response)` | 4 | netif.h: id u16, status i16 |
//! | `sizeof(union netif_tx_sring_entry)` | 12 | max of request/response |
//! | `sizeof(struct netif_rx_request)` | 8 | netif.h: id u16, pad u16, gref u32 |
//! | `sizeof(struct netif_rx_response)` | 8 | netif.h: id u16, offset u16, flags u16, status i16 |
//! | `sizeof(struct netif_extra_info)` | 8 | netif.h: type u8, flags u8, union `u` of 6 bytes (`uint16_t pad[3]`) |
//! | `offsetof(netif_extra_info, u)`, `sizeof(u)` | 2, 6 | the union follows the two header bytes |
//! | `u.gso.size, u.gso.type, u.gso.pad, u.gso.features` | 2, 4, 5, 6 | netif.h: size u16, type u8, pad u8, features u16 |
//! | `XEN_NETIF_EXTRA_TYPE_GSO`, `XEN_NETIF_GSO_TYPE_TCPV4` | 1, 1 | netif.h |
//! | `XEN_NETIF_NR_SLOTS_MIN` | 18 | slots per packet every backend must accept |
//! | `XEN_NETIF_MAX_TX_SIZE` | 0xFFFF | the first TX request's `size` (whole packet) is a `uint16_t` |
//! | `__CONST_RING_SIZE(netif_tx, 4096)` | 256 | `__RD32((4096 - 64) / 12)` = `__RD32(336)` |
//! | `__CONST_RING_SIZE(netif_rx, 4096)` | 256 | `__RD32((4096 - 64) / 8)` = `__RD32(504)` |

use core::mem::{offset_of, size_of};

use crate::platform::PAGE_SIZE;

/// Offsets in the shared ring page (`struct *_sring`).
pub const RING_REQ_PROD: usize = 0;
pub const RING_REQ_EVENT: usize = 4;
pub const RING_RSP_PROD: usize = 8;
pub const RING_RSP_EVENT: usize = 12;
/// Offset of `ring[0]`.
pub const RING_HEADER: usize = 64;

/// The shared ring header, for the layout checks.
#[repr(C)]
pub struct SringHeader {
    pub req_prod: u32,
    pub req_event: u32,
    pub rsp_prod: u32,
    pub rsp_event: u32,
    pub pvt: [u8; 4],
    pub pad: [u8; 44],
}

/// `__RD32`: round down to a power of two.
pub const fn round_down_pow2(x: usize) -> usize {
    if x == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - x.leading_zeros())
    }
}

/// `__CONST_RING_SIZE` for entries of `entry` bytes in one page.
pub const fn ring_size(entry: usize) -> usize {
    round_down_pow2((PAGE_SIZE - RING_HEADER) / entry)
}

/// `NETTXF_*` (netif.h).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// `NETRXF_*` (netif.h).
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// `XEN_NETIF_EXTRA_FLAG_MORE` (flags byte of `netif_extra_info`).
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// `XEN_NETIF_EXTRA_TYPE_*` (netif.h). 0 is invalid. Xen 4.17's header ends
/// at HASH (`XEN_NETIF_EXTRA_TYPE_MAX` 5); Linux's copy adds XDP (5, max 6),
/// which only a frontend that writes `xdp-headroom` can receive.
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
pub const XEN_NETIF_EXTRA_TYPE_XDP: u8 = 5;

/// `XEN_NETIF_GSO_TYPE_*` (netif.h).
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// `XEN_NETIF_NR_SLOTS_MIN`: the slots per packet every backend accepts
/// (Linux netback drops TX packets of more, and treats 20+ as malicious).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// `XEN_NETIF_MAX_TX_SIZE`: the whole packet's length travels in the first
/// TX request's 16-bit `size`.
pub const XEN_NETIF_MAX_TX_SIZE: usize = 0xFFFF;

/// `NETIF_RSP_*` (netif.h).
pub const NETIF_RSP_DROPPED: i16 = -2;
pub const NETIF_RSP_ERROR: i16 = -1;
pub const NETIF_RSP_OKAY: i16 = 0;
pub const NETIF_RSP_NULL: i16 = 1;

/// `struct netif_tx_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxRequest {
    pub gref: u32,
    pub offset: u16,
    pub flags: u16,
    pub id: u16,
    pub size: u16,
}

/// `struct netif_tx_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxResponse {
    pub id: u16,
    pub status: i16,
}

/// `struct netif_rx_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxRequest {
    pub id: u16,
    pub pad: u16,
    pub gref: u32,
}

/// `struct netif_rx_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxResponse {
    pub id: u16,
    pub offset: u16,
    pub flags: u16,
    pub status: i16,
}

/// `struct netif_extra_info` (only its header is interpreted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraInfo {
    pub ty: u8,
    pub flags: u8,
    pub data: [u8; 6],
}

/// `struct netif_extra_info` with its union read as `u.gso` (the layout of
/// `XEN_NETIF_EXTRA_TYPE_GSO`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GsoExtra {
    pub ty: u8,
    pub flags: u8,
    /// `u.gso.size`: payload bytes per segment (the MSS).
    pub size: u16,
    /// `u.gso.type`: `XEN_NETIF_GSO_TYPE_*`.
    pub gso_type: u8,
    pub pad: u8,
    /// `u.gso.features`: `XEN_NETIF_GSO_FEAT_*` (none defined in use; 0).
    pub features: u16,
}

/// Bytes per slot of each ring (`sizeof(union *_sring_entry)`).
pub const TX_SLOT: usize = 12;
pub const RX_SLOT: usize = 8;
/// Entries per ring in one page.
pub const TX_RING_SIZE: usize = ring_size(TX_SLOT);
pub const RX_RING_SIZE: usize = ring_size(RX_SLOT);

// Compile-time layout checks against the C header's values (table above).
const _: () = {
    assert!(size_of::<SringHeader>() == RING_HEADER);
    assert!(offset_of!(SringHeader, req_prod) == RING_REQ_PROD);
    assert!(offset_of!(SringHeader, req_event) == RING_REQ_EVENT);
    assert!(offset_of!(SringHeader, rsp_prod) == RING_RSP_PROD);
    assert!(offset_of!(SringHeader, rsp_event) == RING_RSP_EVENT);
    assert!(size_of::<TxRequest>() == 12);
    assert!(size_of::<TxResponse>() == 4);
    assert!(size_of::<RxRequest>() == 8);
    assert!(size_of::<RxResponse>() == 8);
    assert!(size_of::<ExtraInfo>() == 8);
    assert!(offset_of!(ExtraInfo, data) == 2);
    assert!(size_of::<GsoExtra>() == 8);
    assert!(offset_of!(GsoExtra, size) == 2);
    assert!(offset_of!(GsoExtra, gso_type) == 4);
    assert!(offset_of!(GsoExtra, pad) == 5);
    assert!(offset_of!(GsoExtra, features) == 6);
    assert!(TX_SLOT == size_of::<TxRequest>()); // max(12, 4)
    assert!(RX_SLOT == size_of::<RxRequest>()); // max(8, 8)
    assert!(TX_RING_SIZE == 256);
    assert!(RX_RING_SIZE == 256);
};

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

impl TxRequest {
    pub fn encode(&self) -> [u8; TX_SLOT] {
        let mut b = [0u8; TX_SLOT];
        b[offset_of!(TxRequest, gref)..][..4].copy_from_slice(&self.gref.to_le_bytes());
        b[offset_of!(TxRequest, offset)..][..2].copy_from_slice(&self.offset.to_le_bytes());
        b[offset_of!(TxRequest, flags)..][..2].copy_from_slice(&self.flags.to_le_bytes());
        b[offset_of!(TxRequest, id)..][..2].copy_from_slice(&self.id.to_le_bytes());
        b[offset_of!(TxRequest, size)..][..2].copy_from_slice(&self.size.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8; TX_SLOT]) -> Self {
        TxRequest {
            gref: u32::from_le_bytes(b[0..4].try_into().unwrap_or([0; 4])),
            offset: u16_at(b, offset_of!(TxRequest, offset)),
            flags: u16_at(b, offset_of!(TxRequest, flags)),
            id: u16_at(b, offset_of!(TxRequest, id)),
            size: u16_at(b, offset_of!(TxRequest, size)),
        }
    }
}

impl TxResponse {
    pub fn encode(&self) -> [u8; 4] {
        let mut b = [0u8; 4];
        b[offset_of!(TxResponse, id)..][..2].copy_from_slice(&self.id.to_le_bytes());
        b[offset_of!(TxResponse, status)..][..2].copy_from_slice(&self.status.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8; 4]) -> Self {
        TxResponse {
            id: u16_at(b, offset_of!(TxResponse, id)),
            status: u16_at(b, offset_of!(TxResponse, status)) as i16,
        }
    }
}

impl RxRequest {
    pub fn encode(&self) -> [u8; RX_SLOT] {
        let mut b = [0u8; RX_SLOT];
        b[offset_of!(RxRequest, id)..][..2].copy_from_slice(&self.id.to_le_bytes());
        b[offset_of!(RxRequest, pad)..][..2].copy_from_slice(&self.pad.to_le_bytes());
        b[offset_of!(RxRequest, gref)..][..4].copy_from_slice(&self.gref.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8; RX_SLOT]) -> Self {
        RxRequest {
            id: u16_at(b, offset_of!(RxRequest, id)),
            pad: u16_at(b, offset_of!(RxRequest, pad)),
            gref: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

impl RxResponse {
    pub fn encode(&self) -> [u8; RX_SLOT] {
        let mut b = [0u8; RX_SLOT];
        b[offset_of!(RxResponse, id)..][..2].copy_from_slice(&self.id.to_le_bytes());
        b[offset_of!(RxResponse, offset)..][..2].copy_from_slice(&self.offset.to_le_bytes());
        b[offset_of!(RxResponse, flags)..][..2].copy_from_slice(&self.flags.to_le_bytes());
        b[offset_of!(RxResponse, status)..][..2].copy_from_slice(&self.status.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8; RX_SLOT]) -> Self {
        RxResponse {
            id: u16_at(b, offset_of!(RxResponse, id)),
            offset: u16_at(b, offset_of!(RxResponse, offset)),
            flags: u16_at(b, offset_of!(RxResponse, flags)),
            status: u16_at(b, offset_of!(RxResponse, status)) as i16,
        }
    }
}

impl ExtraInfo {
    pub fn encode(&self) -> [u8; RX_SLOT] {
        let mut b = [0u8; RX_SLOT];
        b[offset_of!(ExtraInfo, ty)] = self.ty;
        b[offset_of!(ExtraInfo, flags)] = self.flags;
        b[offset_of!(ExtraInfo, data)..][..6].copy_from_slice(&self.data);
        b
    }
    pub fn decode(b: &[u8; RX_SLOT]) -> Self {
        let mut data = [0u8; 6];
        data.copy_from_slice(&b[2..8]);
        ExtraInfo {
            ty: b[0],
            flags: b[1],
            data,
        }
    }
}

impl GsoExtra {
    /// A GSO extra for TCP segments of `mss` payload bytes.
    pub fn tcpv4(mss: u16) -> Self {
        GsoExtra {
            ty: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: 0,
            size: mss,
            gso_type: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        }
    }
    /// The 8 bytes of the extra (an RX slot, or the head of a TX slot).
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[offset_of!(GsoExtra, ty)] = self.ty;
        b[offset_of!(GsoExtra, flags)] = self.flags;
        b[offset_of!(GsoExtra, size)..][..2].copy_from_slice(&self.size.to_le_bytes());
        b[offset_of!(GsoExtra, gso_type)] = self.gso_type;
        b[offset_of!(GsoExtra, pad)] = self.pad;
        b[offset_of!(GsoExtra, features)..][..2].copy_from_slice(&self.features.to_le_bytes());
        b
    }
    /// As a TX ring slot: the extra, then the 4 bytes of "padding for tx".
    pub fn encode_tx(&self) -> [u8; TX_SLOT] {
        let mut b = [0u8; TX_SLOT];
        b[..8].copy_from_slice(&self.encode());
        b
    }
    /// Decode the first 8 bytes of a slot.
    pub fn decode(b: &[u8]) -> Self {
        GsoExtra {
            ty: b[0],
            flags: b[1],
            size: u16_at(b, offset_of!(GsoExtra, size)),
            gso_type: b[offset_of!(GsoExtra, gso_type)],
            pad: b[offset_of!(GsoExtra, pad)],
            features: u16_at(b, offset_of!(GsoExtra, features)),
        }
    }
}

/// Byte offset of TX ring slot `idx` (any free-running index).
pub fn tx_slot_offset(idx: u32) -> usize {
    RING_HEADER + (idx as usize & (TX_RING_SIZE - 1)) * TX_SLOT
}

/// Byte offset of RX ring slot `idx` (any free-running index).
pub fn rx_slot_offset(idx: u32) -> usize {
    RING_HEADER + (idx as usize & (RX_RING_SIZE - 1)) * RX_SLOT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        // Values printed by tools/check-layout.sh against Xen 4.17's netif.h.
        assert_eq!(size_of::<SringHeader>(), 64);
        assert_eq!(
            [RING_REQ_PROD, RING_REQ_EVENT, RING_RSP_PROD, RING_RSP_EVENT],
            [0, 4, 8, 12]
        );
        assert_eq!(size_of::<TxRequest>(), 12);
        assert_eq!(
            [
                offset_of!(TxRequest, gref),
                offset_of!(TxRequest, offset),
                offset_of!(TxRequest, flags),
                offset_of!(TxRequest, id),
                offset_of!(TxRequest, size)
            ],
            [0, 4, 6, 8, 10]
        );
        assert_eq!(size_of::<TxResponse>(), 4);
        assert_eq!(
            [offset_of!(TxResponse, id), offset_of!(TxResponse, status)],
            [0, 2]
        );
        assert_eq!(size_of::<RxRequest>(), 8);
        assert_eq!(
            [offset_of!(RxRequest, id), offset_of!(RxRequest, gref)],
            [0, 4]
        );
        assert_eq!(size_of::<RxResponse>(), 8);
        assert_eq!(
            [
                offset_of!(RxResponse, id),
                offset_of!(RxResponse, offset),
                offset_of!(RxResponse, flags),
                offset_of!(RxResponse, status)
            ],
            [0, 2, 4, 6]
        );
        assert_eq!(size_of::<ExtraInfo>(), 8);
        // netif_extra_info: the union `u` (6 bytes) at 2; u.gso fields.
        assert_eq!(offset_of!(ExtraInfo, data), 2);
        assert_eq!(core::mem::size_of_val(&ExtraInfo::default().data), 6);
        assert_eq!(size_of::<GsoExtra>(), 8);
        assert_eq!(
            [
                offset_of!(GsoExtra, size),
                offset_of!(GsoExtra, gso_type),
                offset_of!(GsoExtra, pad),
                offset_of!(GsoExtra, features)
            ],
            [2, 4, 5, 6]
        );
        assert_eq!(
            [
                XEN_NETIF_EXTRA_TYPE_GSO,
                XEN_NETIF_GSO_TYPE_TCPV4,
                XEN_NETIF_EXTRA_FLAG_MORE
            ],
            [1, 1, 1]
        );
        assert_eq!((XEN_NETIF_NR_SLOTS_MIN, XEN_NETIF_MAX_TX_SIZE), (18, 65535));
        // __CONST_RING_SIZE(netif_tx, 4096) = __RD32((4096-64)/12 = 336) = 256
        assert_eq!(TX_RING_SIZE, 256);
        // __CONST_RING_SIZE(netif_rx, 4096) = __RD32((4096-64)/8 = 504) = 256
        assert_eq!(RX_RING_SIZE, 256);
        // Last slots end inside the page.
        assert!(tx_slot_offset(255) + TX_SLOT <= PAGE_SIZE);
        assert!(rx_slot_offset(255) + RX_SLOT <= PAGE_SIZE);
    }

    #[test]
    fn rd32_matches_c_macro() {
        for (x, want) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 2),
            (255, 128),
            (256, 256),
            (336, 256),
            (504, 256),
            (1023, 512),
        ] {
            assert_eq!(round_down_pow2(x), want, "{x}");
        }
    }

    #[test]
    fn codecs_round_trip_and_are_little_endian() {
        let t = TxRequest {
            gref: 0x0403_0201,
            offset: 0x0605,
            flags: 0x0807,
            id: 0x0a09,
            size: 0x0c0b,
        };
        assert_eq!(t.encode(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(TxRequest::decode(&t.encode()), t);
        let r = TxResponse {
            id: 0x0201,
            status: -1,
        };
        assert_eq!(r.encode(), [1, 2, 0xff, 0xff]);
        assert_eq!(TxResponse::decode(&r.encode()), r);
        let q = RxRequest {
            id: 0x0201,
            pad: 0,
            gref: 0x0807_0605,
        };
        assert_eq!(q.encode(), [1, 2, 0, 0, 5, 6, 7, 8]);
        assert_eq!(RxRequest::decode(&q.encode()), q);
        let s = RxResponse {
            id: 0x0201,
            offset: 0x0403,
            flags: 0x0605,
            status: -2,
        };
        assert_eq!(s.encode(), [1, 2, 3, 4, 5, 6, 0xfe, 0xff]);
        assert_eq!(RxResponse::decode(&s.encode()), s);
        let e = ExtraInfo {
            ty: 1,
            flags: XEN_NETIF_EXTRA_FLAG_MORE,
            data: [1, 2, 3, 4, 5, 6],
        };
        assert_eq!(ExtraInfo::decode(&e.encode()), e);
        let g = GsoExtra::tcpv4(0x05b4);
        // type GSO, flags 0, size 1460 LE, gso type TCPV4, pad, features 0.
        assert_eq!(g.encode(), [1, 0, 0xb4, 0x05, 1, 0, 0, 0]);
        assert_eq!(g.encode_tx(), [1, 0, 0xb4, 0x05, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(GsoExtra::decode(&g.encode()), g);
        // The same bytes through the generic header view.
        let e = ExtraInfo::decode(&g.encode());
        assert_eq!((e.ty, e.flags), (XEN_NETIF_EXTRA_TYPE_GSO, 0));
    }

    #[test]
    fn slot_offsets_wrap_with_the_free_running_index() {
        assert_eq!(rx_slot_offset(0), 64);
        assert_eq!(rx_slot_offset(256), 64);
        assert_eq!(rx_slot_offset(u32::MAX), 64 + 255 * 8);
        assert_eq!(tx_slot_offset(257), 64 + 12);
        assert_eq!(tx_slot_offset(u32::MAX), 64 + 255 * 12);
    }
}
