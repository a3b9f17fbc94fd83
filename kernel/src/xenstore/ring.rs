//! The shared xenstore page (`struct xenstore_domain_interface` in
//! `xs_wire.h`, protocol in `docs/misc/xenstore-ring.txt`): two byte rings
//! with free-running `u32` indices.
//!
//! The page is shared with another domain that may write anything at any
//! time, so indices are read once per operation, checked, and never trusted
//! to stay in range.

use core::sync::atomic::{fence, Ordering};

// The page is accessed through netfront's `SharedPage`, the workspace's one
// shared-page trait: the kernel implements it with volatile accesses to the
// mapped page (the other domain changes it behind the compiler's back); tests
// implement it over plain cells.
pub use netfront::SharedPage;

/// `XENSTORE_RING_SIZE`, a power of two so an index maps to a slot by masking.
pub const RING_SIZE: u32 = 1024;

/// Field offsets in `struct xenstore_domain_interface`.
pub const REQ: usize = 0;
pub const RSP: usize = 1024;
pub const REQ_CONS: usize = 2048;
pub const REQ_PROD: usize = 2052;
pub const RSP_CONS: usize = 2056;
pub const RSP_PROD: usize = 2060;
pub const SERVER_FEATURES: usize = 2064;
pub const CONNECTION: usize = 2068;
pub const ERROR: usize = 2072;
/// `sizeof(struct xenstore_domain_interface)`.
pub const PAGE_USED: usize = 2076;

/// `XENSTORE_SERVER_FEATURE_ERROR`: the server fills in the `error` field.
pub const FEATURE_ERROR: u32 = 2;

/// `MASK_XENSTORE_IDX`.
pub fn mask(idx: u32) -> usize {
    (idx & (RING_SIZE - 1)) as usize
}

/// One direction of the page: where its bytes and its two indices live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    pub name: &'static str,
    pub data: usize,
    pub cons: usize,
    pub prod: usize,
}

/// Guest to xenstored.
pub const REQUESTS: Ring = Ring {
    name: "req",
    data: REQ,
    cons: REQ_CONS,
    prod: REQ_PROD,
};
/// xenstored to guest: replies and watch events.
pub const RESPONSES: Ring = Ring {
    name: "rsp",
    data: RSP,
    cons: RSP_CONS,
    prod: RSP_PROD,
};

/// Indices that claim more than a ring's worth of bytes in flight (which also
/// catches `prod` behind `cons`, as the wrapping difference is then huge).
/// Nothing read from such a ring can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt {
    pub ring: &'static str,
    pub prod: u32,
    pub cons: u32,
}

fn in_flight(ring: Ring, prod: u32, cons: u32) -> Result<u32, Corrupt> {
    let used = prod.wrapping_sub(cons);
    if used > RING_SIZE {
        return Err(Corrupt {
            ring: ring.name,
            prod,
            cons,
        });
    }
    Ok(used)
}

/// Copies as much of `data` as fits into `ring` as its producer and publishes
/// it. Returns how many bytes went in (0 when the ring is full).
pub fn produce<P: SharedPage + ?Sized>(
    page: &P,
    ring: Ring,
    data: &[u8],
) -> Result<usize, Corrupt> {
    let cons = page.read_u32(ring.cons);
    let prod = page.read_u32(ring.prod);
    // Read the indices before writing slots: a slot is only ours to
    // overwrite once the consumer's index says it has read it.
    fence(Ordering::SeqCst);
    let used = in_flight(ring, prod, cons)?;
    let n = data.len().min((RING_SIZE - used) as usize);
    copy_in(page, ring, prod, &data[..n]);
    // The bytes must be visible before the index that announces them.
    fence(Ordering::Release);
    page.write_u32(ring.prod, prod.wrapping_add(n as u32));
    Ok(n)
}

/// Copies up to `buf.len()` bytes out of `ring` as its consumer and frees
/// their slots. Returns how many bytes came out (0 when the ring is empty).
pub fn consume<P: SharedPage + ?Sized>(
    page: &P,
    ring: Ring,
    buf: &mut [u8],
) -> Result<usize, Corrupt> {
    let cons = page.read_u32(ring.cons);
    let prod = page.read_u32(ring.prod);
    // Read the producer index before the bytes it covers.
    fence(Ordering::Acquire);
    let used = in_flight(ring, prod, cons)?;
    let n = buf.len().min(used as usize);
    copy_out(page, ring, cons, &mut buf[..n]);
    // Finish reading the slots before handing them back to the producer.
    fence(Ordering::SeqCst);
    page.write_u32(ring.cons, cons.wrapping_add(n as u32));
    Ok(n)
}

/// Where a run of `len` bytes at stream index `idx` starts in the ring, and
/// how much of it fits before the ring's end (the rest wraps to slot 0).
fn split_at_wrap(idx: u32, len: usize) -> (usize, usize) {
    let start = mask(idx);
    (start, len.min(RING_SIZE as usize - start))
}

fn copy_in<P: SharedPage + ?Sized>(page: &P, ring: Ring, idx: u32, data: &[u8]) {
    let (start, first) = split_at_wrap(idx, data.len());
    page.write(ring.data + start, &data[..first]);
    if first < data.len() {
        page.write(ring.data, &data[first..]);
    }
}

fn copy_out<P: SharedPage + ?Sized>(page: &P, ring: Ring, idx: u32, buf: &mut [u8]) {
    let (start, first) = split_at_wrap(idx, buf.len());
    let (a, b) = buf.split_at_mut(first);
    page.read(ring.data + start, a);
    if !b.is_empty() {
        page.read(ring.data, b);
    }
}

/// A [`SharedPage`] over ordinary memory, for host tests (and `hosted`).
#[cfg(any(test, feature = "hosted"))]
pub mod testpage {
    use super::SharedPage;
    use alloc::rc::Rc;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::cell::Cell;

    /// Cheap to clone: clones share one page, as the guest and the fake
    /// xenstored share the real one.
    #[derive(Clone)]
    pub struct TestPage(Rc<Vec<Cell<u8>>>);

    impl TestPage {
        pub fn zeroed() -> TestPage {
            TestPage(Rc::new(vec![Cell::new(0); 4096]))
        }
    }

    impl SharedPage for TestPage {
        fn read_u32(&self, off: usize) -> u32 {
            let mut b = [0u8; 4];
            self.read(off, &mut b);
            u32::from_le_bytes(b)
        }
        fn write_u32(&self, off: usize, v: u32) {
            self.write(off, &v.to_le_bytes());
        }
        fn read(&self, off: usize, buf: &mut [u8]) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.0[off + i].get();
            }
        }
        fn write(&self, off: usize, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                self.0[off + i].set(*b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testpage::TestPage;
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn offsets_match_xs_wire_h() {
        // char req[1024]; char rsp[1024]; then seven uint32_t fields in order.
        let fields = [
            REQ_CONS,
            REQ_PROD,
            RSP_CONS,
            RSP_PROD,
            SERVER_FEATURES,
            CONNECTION,
            ERROR,
        ];
        for (i, off) in fields.iter().enumerate() {
            assert_eq!(*off, 2 * RING_SIZE as usize + 4 * i);
        }
        assert_eq!(PAGE_USED, ERROR + 4);
        assert_eq!((REQ, RSP), (0, 1024));
    }

    #[test]
    fn mask_wraps() {
        assert_eq!(mask(0), 0);
        assert_eq!(mask(1023), 1023);
        assert_eq!(mask(1024), 0);
        assert_eq!(mask(u32::MAX), 1023);
    }

    fn set(page: &TestPage, ring: Ring, cons: u32, prod: u32) {
        page.write_u32(ring.cons, cons);
        page.write_u32(ring.prod, prod);
    }

    #[test]
    fn produce_splits_at_ring_end_and_wraps_the_index() {
        let page = TestPage::zeroed();
        let start = u32::MAX - 1; // slot 1022, index wraps after two bytes
        set(&page, REQUESTS, start, start);
        assert_eq!(produce(&page, REQUESTS, b"abcd"), Ok(4));
        assert_eq!(page.read_u32(REQ_PROD), 2); // u32 wrapped
        let mut b = [0u8; 2];
        page.read(REQ + 1022, &mut b);
        assert_eq!(&b, b"ab");
        page.read(REQ, &mut b);
        assert_eq!(&b, b"cd");
        // The response ring is untouched.
        assert_eq!(page.read_u32(RSP_PROD), 0);
    }

    #[test]
    fn produce_stops_at_free_space() {
        let page = TestPage::zeroed();
        set(&page, REQUESTS, 100, 100 + 1000);
        assert_eq!(produce(&page, REQUESTS, &[7u8; 50]), Ok(24));
        assert_eq!(page.read_u32(REQ_PROD), 100 + 1024);
        assert_eq!(produce(&page, REQUESTS, &[7u8; 50]), Ok(0));
        assert_eq!(page.read_u32(REQ_PROD), 100 + 1024);
    }

    #[test]
    fn consume_splits_at_ring_end_and_frees_slots() {
        let page = TestPage::zeroed();
        let start = u32::MAX - 2;
        set(&page, RESPONSES, start, start);
        assert_eq!(produce(&page, RESPONSES, b"hello"), Ok(5));
        let mut buf = [0u8; 3];
        assert_eq!(consume(&page, RESPONSES, &mut buf), Ok(3));
        assert_eq!(&buf, b"hel");
        let mut buf = [0u8; 16];
        assert_eq!(consume(&page, RESPONSES, &mut buf), Ok(2));
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(consume(&page, RESPONSES, &mut buf), Ok(0));
        assert_eq!(page.read_u32(RSP_CONS), start.wrapping_add(5));
    }

    #[test]
    fn full_ring_is_sane_one_more_is_corrupt() {
        let page = TestPage::zeroed();
        set(&page, RESPONSES, 5, 5 + 1024);
        let mut buf = vec![0u8; 2048];
        assert_eq!(consume(&page, RESPONSES, &mut buf), Ok(1024));

        set(&page, RESPONSES, 5, 5 + 1025);
        let err = Corrupt {
            ring: "rsp",
            prod: 1030,
            cons: 5,
        };
        assert_eq!(consume(&page, RESPONSES, &mut buf), Err(err));
        // Nothing was consumed.
        assert_eq!(page.read_u32(RSP_CONS), 5);
    }

    #[test]
    fn prod_behind_cons_is_corrupt() {
        let page = TestPage::zeroed();
        set(&page, REQUESTS, 10, 9);
        assert!(produce(&page, REQUESTS, b"x").is_err());
        assert_eq!(page.read_u32(REQ_PROD), 9);
        set(&page, RESPONSES, 0, u32::MAX);
        assert!(consume(&page, RESPONSES, &mut [0u8; 4]).is_err());
    }

    #[test]
    fn stream_survives_many_laps() {
        // Producer and consumer alternate with awkward sizes across many
        // laps of the ring and a wrap of the u32 indices.
        let page = TestPage::zeroed();
        let start = u32::MAX - 5000;
        set(&page, RESPONSES, start, start);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        let mut buf = [0u8; 333];
        while got.len() < data.len() {
            sent += produce(&page, RESPONSES, &data[sent..(sent + 777).min(data.len())]).unwrap();
            let n = consume(&page, RESPONSES, &mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(page.read_u32(RSP_PROD), start.wrapping_add(20_000));
    }
}
