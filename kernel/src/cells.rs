//! Statics that Xen, not Rust, fills in: the two cell types that replace
//! `static mut` for memory handed to the hypervisor at boot.
//!
//! Plain boot-time values (the p2m list, the boot time, the shared_info
//! pointer) live in atomics or `spin::Once` in their modules; these two are
//! for memory whose contents Xen owns:
//!
//! - [`ForeignPages`]: page-aligned pages in our image whose mapping is
//!   replaced by a frame Xen gives us (shared_info, the grant table). Only
//!   their address is ever used, by one owner that claims it once (with its
//!   own flag: a flag inside would pad the cell by a whole page).
//! - [`XenWritten`]: a value Xen keeps writing after we register its address
//!   (the vCPU runstate area). Read with volatile reads through its pointer.
//!
//! Why this is sound: Rust never creates a reference to the contents of
//! either cell, so Xen writing behind the compiler's back cannot invalidate
//! one; every access goes through a raw pointer with a volatile or atomic
//! access; and the guest has one vCPU and never takes an upcall, so there
//! are no concurrent Rust accesses (the `Sync` impls only let them be
//! statics).

use crate::mm::PAGE_SIZE;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// `N` page-aligned pages whose mapping will be given to foreign frames.
#[repr(C, align(4096))]
pub struct ForeignPages<const N: usize>(UnsafeCell<[[u8; PAGE_SIZE]; N]>);

// SAFETY: the pages are never accessed as Rust memory (see the module doc):
// `claim` hands out their address once, and the claimant remaps them and
// accesses the foreign frames through raw pointers only.
unsafe impl<const N: usize> Sync for ForeignPages<N> {}

impl<const N: usize> ForeignPages<N> {
    pub const fn new() -> Self {
        ForeignPages(UnsafeCell::new([[0; PAGE_SIZE]; N]))
    }

    /// The pages' (page-aligned) virtual address, the first time `claimed`
    /// (the owner's flag) is taken: a second claimant would map over frames
    /// the first one still uses.
    pub fn claim(&self, claimed: &AtomicBool) -> Option<usize> {
        if claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(self.0.get() as usize)
    }
}

impl<const N: usize> Default for ForeignPages<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A value whose address we register with Xen, which then updates it.
#[repr(transparent)]
pub struct XenWritten<T>(UnsafeCell<T>);

// SAFETY: no reference to the value is ever created (see the module doc);
// Xen writes it, we read it with volatile reads through `as_ptr`, on one CPU.
unsafe impl<T> Sync for XenWritten<T> {}

impl<T> XenWritten<T> {
    pub const fn new(v: T) -> Self {
        XenWritten(UnsafeCell::new(v))
    }

    /// The address to register and read through (volatile reads only).
    pub fn as_ptr(&self) -> *mut T {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_pages_are_page_aligned_and_claimed_once() {
        static PAGES: ForeignPages<2> = ForeignPages::new();
        static CLAIMED: AtomicBool = AtomicBool::new(false);
        assert_eq!(core::mem::size_of::<ForeignPages<2>>(), 2 * PAGE_SIZE);
        let va = PAGES.claim(&CLAIMED).unwrap();
        assert_eq!(va % PAGE_SIZE, 0);
        assert_eq!(PAGES.claim(&CLAIMED), None);
    }

    #[test]
    fn xen_written_reads_what_was_written_behind_it() {
        static AREA: XenWritten<[u64; 2]> = XenWritten::new([1, 2]);
        // SAFETY: the test stands in for Xen, writing through the pointer.
        unsafe { core::ptr::write_volatile(AREA.as_ptr(), [3, 4]) };
        // SAFETY: as the kernel reads it: volatile through the pointer.
        assert_eq!(unsafe { core::ptr::read_volatile(AREA.as_ptr()) }, [3, 4]);
    }
}
