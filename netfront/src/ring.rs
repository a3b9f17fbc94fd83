//! The front half of a Xen shared ring (`io/ring.h`), with free-running `u32`
//! indexes (`RING_IDX`) that wrap modulo 2^32; every comparison is done on
//! wrapping differences, exactly as the C macros do.
//!
//! Memory ordering follows ring.h: `xen_wmb()` before publishing a producer
//! index (here `fence(Release)`), `xen_rmb()` after reading one and before
//! reading the slots it covers (`fence(Acquire)`), and `xen_mb()` between
//! publishing an index and reading the peer's event index (`fence(SeqCst)`,
//! an `mfence` on x86_64). On x86_64, Xen's `wmb`/`rmb` are compiler barriers,
//! which is what the Release/Acquire fences compile to.

use core::sync::atomic::{fence, Ordering};

use crate::platform::SharedPage;
use crate::wire::{RING_HEADER, RING_REQ_EVENT, RING_REQ_PROD, RING_RSP_EVENT, RING_RSP_PROD};

/// The backend published a response producer index that covers more
/// responses than we have requests outstanding (`RING_RESPONSE_PROD_OVERFLOW`,
/// made strict: a correct backend can never answer a request we did not make).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerOverflow {
    pub rsp_prod: u32,
    pub rsp_cons: u32,
    pub outstanding: u32,
}

/// Front-end private ring state (`struct *_front_ring`).
#[derive(Clone, Debug)]
pub struct FrontRing {
    /// Next request index to fill (`req_prod_pvt`).
    pub req_prod_pvt: u32,
    /// The `req_prod` value we last published (we keep our own copy rather
    /// than read it back from the shared page, which the backend could alter).
    pub req_prod_pushed: u32,
    /// Next response index to consume (`rsp_cons`).
    pub rsp_cons: u32,
    /// Entries in the ring (a power of two).
    pub size: u32,
}

/// `SHARED_RING_INIT`: both producers 0, both event indexes 1, padding
/// zeroed. (`start` generalises the 0 so tests can begin near 2^32.)
pub fn init_shared<S: SharedPage>(page: &S, start: u32) {
    page.write(0, &[0u8; RING_HEADER]);
    page.write_u32(RING_REQ_PROD, start);
    page.write_u32(RING_RSP_PROD, start);
    page.write_u32(RING_REQ_EVENT, start.wrapping_add(1));
    page.write_u32(RING_RSP_EVENT, start.wrapping_add(1));
}

impl FrontRing {
    /// `FRONT_RING_INIT`.
    pub fn new(size: usize) -> Self {
        debug_assert!(size.is_power_of_two());
        FrontRing {
            req_prod_pvt: 0,
            req_prod_pushed: 0,
            rsp_cons: 0,
            size: size as u32,
        }
    }

    /// Same, starting at an arbitrary index (tests use this to start near 2^32).
    pub fn starting_at(size: usize, idx: u32) -> Self {
        FrontRing {
            req_prod_pvt: idx,
            req_prod_pushed: idx,
            rsp_cons: idx,
            ..Self::new(size)
        }
    }

    /// Requests issued and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// `RING_FREE_REQUESTS`.
    pub fn free_requests(&self) -> u32 {
        self.size.saturating_sub(self.outstanding())
    }

    /// How many responses `rsp_prod` makes available, or the overflow it is.
    pub fn available(&self, rsp_prod: u32) -> Result<u32, ProducerOverflow> {
        let avail = rsp_prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.outstanding();
        if avail > outstanding || outstanding > self.size {
            Err(ProducerOverflow {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                outstanding,
            })
        } else {
            Ok(avail)
        }
    }

    /// Read the backend's `rsp_prod` once, then order the slot reads after it.
    pub fn read_rsp_prod<S: SharedPage>(&self, page: &S) -> u32 {
        let p = page.read_u32(RING_RSP_PROD);
        fence(Ordering::Acquire); // xen_rmb()
        p
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publish `req_prod_pvt` and say
    /// whether the backend asked to be notified of it (its `req_event` lies in
    /// the newly published range).
    pub fn push_requests<S: SharedPage>(&mut self, page: &S) -> bool {
        let old = self.req_prod_pushed;
        let new = self.req_prod_pvt;
        if old == new {
            return false;
        }
        fence(Ordering::Release); // xen_wmb(): requests before the index
        page.write_u32(RING_REQ_PROD, new);
        self.req_prod_pushed = new;
        fence(Ordering::SeqCst); // xen_mb(): index before reading req_event
        let req_event = page.read_u32(RING_REQ_EVENT);
        needs_notify(old, new, req_event)
    }

    /// The arming half of `RING_FINAL_CHECK_FOR_RESPONSES`: ask for an event
    /// on the next response, then re-read the producer (a response that
    /// arrived meanwhile would otherwise be missed until the next event).
    pub fn arm_rsp_event<S: SharedPage>(&self, page: &S) -> u32 {
        page.write_u32(RING_RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst); // xen_mb()
        self.read_rsp_prod(page)
    }
}

/// The notification test of `RING_PUSH_*_AND_CHECK_NOTIFY`:
/// `(RING_IDX)(new - event) < (RING_IDX)(new - old)`, i.e. `event` lies in
/// `(old, new]` modulo 2^32.
pub fn needs_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_window_is_half_open_old_exclusive_new_inclusive() {
        assert!(needs_notify(0, 1, 1));
        assert!(!needs_notify(1, 2, 1));
        assert!(needs_notify(0, 10, 5));
        assert!(needs_notify(0, 10, 10));
        assert!(!needs_notify(0, 10, 11));
        assert!(!needs_notify(0, 10, 0));
        assert!(!needs_notify(5, 5, 5)); // nothing pushed
    }

    #[test]
    fn notify_window_across_u32_wrap() {
        let old = u32::MAX - 2;
        let new = old.wrapping_add(6); // = 3
        assert_eq!(new, 3);
        for ev in [u32::MAX - 1, u32::MAX, 0, 1, 2, 3] {
            assert!(needs_notify(old, new, ev), "event {ev}");
        }
        for ev in [u32::MAX - 2, 4, 100, u32::MAX - 100] {
            assert!(!needs_notify(old, new, ev), "event {ev}");
        }
    }

    #[test]
    fn available_and_overflow_across_u32_wrap() {
        let mut r = FrontRing::starting_at(256, u32::MAX - 9);
        r.req_prod_pvt = r.req_prod_pvt.wrapping_add(20); // wraps to 10
        assert_eq!(r.req_prod_pvt, 10);
        assert_eq!(r.outstanding(), 20);
        assert_eq!(r.free_requests(), 236);
        assert_eq!(r.available(r.rsp_cons), Ok(0));
        assert_eq!(r.available(u32::MAX), Ok(9));
        assert_eq!(r.available(0), Ok(10));
        assert_eq!(r.available(10), Ok(20));
        assert!(r.available(11).is_err()); // one more than requested
        assert!(r.available(r.rsp_cons.wrapping_sub(1)).is_err()); // went backwards
        assert!(r.available(0x8000_0000).is_err()); // wild jump
    }

    /// A page for the ring tests.
    struct Page(core::cell::RefCell<[u8; 4096]>);
    impl SharedPage for Page {
        fn read(&self, off: usize, buf: &mut [u8]) {
            buf.copy_from_slice(&self.0.borrow()[off..off + buf.len()]);
        }
        fn write(&self, off: usize, data: &[u8]) {
            self.0.borrow_mut()[off..off + data.len()].copy_from_slice(data);
        }
        fn read_u32(&self, off: usize) -> u32 {
            u32::from_le_bytes(self.0.borrow()[off..off + 4].try_into().unwrap())
        }
        fn write_u32(&self, off: usize, v: u32) {
            self.write(off, &v.to_le_bytes());
        }
    }

    #[test]
    fn shared_ring_init_matches_the_macro() {
        let p = Page(core::cell::RefCell::new([0xaa; 4096]));
        init_shared(&p, 0);
        assert_eq!(
            [
                p.read_u32(RING_REQ_PROD),
                p.read_u32(RING_REQ_EVENT),
                p.read_u32(RING_RSP_PROD),
                p.read_u32(RING_RSP_EVENT)
            ],
            [0, 1, 0, 1]
        );
        assert!(
            p.0.borrow()[16..64].iter().all(|&b| b == 0),
            "pvt and __pad zeroed"
        );
        assert_eq!(p.0.borrow()[64], 0xaa, "slots untouched");
    }

    #[test]
    fn push_publishes_and_honours_req_event_across_the_wrap() {
        let p = Page(core::cell::RefCell::new([0; 4096]));
        let start = u32::MAX - 1;
        init_shared(&p, start);
        let mut r = FrontRing::starting_at(256, start);
        // Backend waits for the very next request (req_event = start + 1).
        r.req_prod_pvt = r.req_prod_pvt.wrapping_add(3); // start+3 = 1
        assert!(r.push_requests(&p));
        assert_eq!(p.read_u32(RING_REQ_PROD), 1);
        // Nothing new: no write, no notification.
        assert!(!r.push_requests(&p));
        // Backend did not move req_event: more requests need no notification.
        r.req_prod_pvt = 5;
        assert!(!r.push_requests(&p));
        assert_eq!(p.read_u32(RING_REQ_PROD), 5);
        // Backend asks for an event at 7: pushing up to 6 is silent, 7 notifies.
        p.write_u32(RING_REQ_EVENT, 7);
        r.req_prod_pvt = 6;
        assert!(!r.push_requests(&p));
        r.req_prod_pvt = 9;
        assert!(r.push_requests(&p));
    }

    #[test]
    fn arming_asks_for_the_next_response_and_rereads() {
        let p = Page(core::cell::RefCell::new([0; 4096]));
        init_shared(&p, u32::MAX);
        let mut r = FrontRing::starting_at(256, u32::MAX);
        r.req_prod_pvt = 2;
        r.rsp_cons = 1;
        p.write_u32(RING_RSP_PROD, 1);
        assert_eq!(r.arm_rsp_event(&p), 1);
        assert_eq!(p.read_u32(RING_RSP_EVENT), 2);
        p.write_u32(RING_RSP_PROD, 2);
        assert_eq!(r.read_rsp_prod(&p), 2);
        assert_eq!(r.available(2), Ok(1));
    }

    #[test]
    fn outstanding_beyond_ring_size_is_an_overflow() {
        let mut r = FrontRing::new(256);
        r.req_prod_pvt = 257;
        assert!(r.available(0).is_err());
        assert_eq!(r.free_requests(), 0);
    }
}
