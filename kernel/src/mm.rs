//! Memory: pseudo-physical <-> machine frame translation, the initial page
//! tables Xen built for us, the free region the heap takes, and pages shared
//! with other domains.
//!
//! With VIRT_BASE = 0 a virtual address in the initial mapping equals its
//! pseudo-physical address, so `va >> 12` is the pfn.

use crate::hypercall::{hypercall3, UPDATE_VA_MAPPING};
use core::ptr::NonNull;

pub const PAGE_SIZE: usize = 4096;
/// Xen's read-only machine-to-phys table for PV guests (RO_MPT_VIRT_START).
const M2P_VA: u64 = 0xFFFF_8000_0000_0000;
const PTE_PRESENT: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_USER: u64 = 4;
const PTE_PSE: u64 = 1 << 7;
const PTE_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// UVMF_INVLPG: flush the TLB entry for the updated address.
const UVMF_INVLPG: u64 = 2;

/// The pfn -> mfn list Xen placed in our initial mapping.
static mut P2M: (*const u64, u64) = (core::ptr::null(), 0);
static mut PT_BASE: u64 = 0;

/// # Safety
/// Called once at boot with the values from start_info.
pub unsafe fn init(mfn_list: u64, nr_pages: u64, pt_base: u64) {
    P2M = (mfn_list as *const u64, nr_pages);
    PT_BASE = pt_base;
}

pub fn pfn_to_mfn(pfn: u64) -> Option<u64> {
    // SAFETY: P2M is set once at boot, before anything else runs; the list
    // has nr_pages entries and stays mapped read-only for our lifetime.
    unsafe {
        let (list, n) = P2M;
        if list.is_null() || pfn >= n {
            return None;
        }
        Some(core::ptr::read_volatile(list.add(pfn as usize)))
    }
}

pub fn mfn_to_pfn(mfn: u64) -> u64 {
    // SAFETY: Xen maps the M2P table read-only into every 64-bit PV guest;
    // it covers every machine frame of the host.
    unsafe { core::ptr::read_volatile((M2P_VA as *const u64).add(mfn as usize)) }
}

pub fn virt_to_mfn(va: usize) -> Option<u64> {
    pfn_to_mfn((va / PAGE_SIZE) as u64)
}

/// Walk our page tables (readable to a PV guest) and tell whether `va` is
/// mapped. Used once at boot to find how far Xen's initial mapping reaches.
pub fn is_mapped(va: u64) -> bool {
    // SAFETY: PT_BASE is the L4 table Xen gave us; each lower table is found
    // through its machine frame and the M2P table, and lies in the initial
    // mapping (VIRT_BASE = 0: va == pfn << 12).
    unsafe {
        let mut table = PT_BASE;
        if table == 0 {
            return false;
        }
        for level in (1..=4).rev() {
            let idx = (va >> (12 + 9 * (level - 1))) & 511;
            let e = core::ptr::read_volatile((table as *const u64).add(idx as usize));
            if e & PTE_PRESENT == 0 {
                return false;
            }
            if level == 1 || (level == 2 && e & PTE_PSE != 0) {
                return true;
            }
            table = mfn_to_pfn((e & PTE_ADDR_MASK) >> 12) << 12;
        }
        true
    }
}

/// Remove the mapping of one page (used for the guard page at 0).
pub fn unmap(va: usize) -> Result<(), i64> {
    // SAFETY: clearing a PTE of our own address space; nothing refers to the
    // guard page.
    let rc = unsafe { hypercall3(UPDATE_VA_MAPPING, va as u64, 0, UVMF_INVLPG) };
    if rc == 0 { Ok(()) } else { Err(rc) }
}

/// Map a machine frame (e.g. shared_info) at the page `va` we own.
///
/// # Safety
/// `va` must be a page of ours that nothing else uses; its old frame is
/// abandoned.
pub unsafe fn map_foreign_frame(va: usize, maddr: u64) -> Result<(), i64> {
    let pte = (maddr & PTE_ADDR_MASK) | PTE_PRESENT | PTE_RW | PTE_USER;
    let rc = hypercall3(UPDATE_VA_MAPPING, va as u64, pte, UVMF_INVLPG);
    if rc == 0 { Ok(()) } else { Err(rc) }
}

/// A 4 KiB page shared with another domain or Xen (console ring, xenstore
/// ring, granted buffers). All accesses are volatile: the other side may
/// change it at any time, so nothing read from it is trusted or cached.
#[derive(Debug)]
pub struct SharedPage {
    base: NonNull<u8>,
}

// SAFETY: a SharedPage is a raw window on memory the kernel owns for its
// lifetime; there is one CPU and no preemption.
unsafe impl Send for SharedPage {}

impl SharedPage {
    /// # Safety
    /// `va` must be page-aligned, mapped read-write for the page's lifetime,
    /// and not used as ordinary Rust memory by anything else.
    pub unsafe fn from_va(va: usize) -> SharedPage {
        debug_assert!(va % PAGE_SIZE == 0);
        SharedPage { base: NonNull::new_unchecked(va as *mut u8) }
    }

    /// A fresh zeroed page from the heap (for grants and rings). Never freed
    /// while granted: the owner decides when (see grant table).
    pub fn alloc() -> Option<SharedPage> {
        let layout = core::alloc::Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).ok()?;
        // SAFETY: layout is non-zero sized.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        NonNull::new(p).map(|base| SharedPage { base })
    }

    /// Return a page obtained from [`SharedPage::alloc`] to the heap.
    ///
    /// # Safety
    /// The page must come from `alloc` and no other domain may still map it.
    pub unsafe fn free(self) {
        let layout = core::alloc::Layout::from_size_align_unchecked(PAGE_SIZE, PAGE_SIZE);
        alloc::alloc::dealloc(self.base.as_ptr(), layout);
    }

    pub fn va(&self) -> usize {
        self.base.as_ptr() as usize
    }

    pub fn mfn(&self) -> Option<u64> {
        virt_to_mfn(self.va())
    }

    fn check(off: usize, len: usize) {
        assert!(off.checked_add(len).is_some_and(|e| e <= PAGE_SIZE), "shared page access out of bounds");
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        Self::check(off, 4);
        assert!(off % 4 == 0);
        // SAFETY: in bounds and aligned (checked above); the page is mapped.
        unsafe { core::ptr::read_volatile(self.base.as_ptr().add(off) as *const u32) }
    }

    pub fn write_u32(&self, off: usize, v: u32) {
        Self::check(off, 4);
        assert!(off % 4 == 0);
        // SAFETY: in bounds and aligned (checked above); the page is mapped.
        unsafe { core::ptr::write_volatile(self.base.as_ptr().add(off) as *mut u32, v) }
    }

    pub fn read_u16(&self, off: usize) -> u16 {
        Self::check(off, 2);
        assert!(off % 2 == 0);
        // SAFETY: in bounds and aligned (checked above); the page is mapped.
        unsafe { core::ptr::read_volatile(self.base.as_ptr().add(off) as *const u16) }
    }

    pub fn write_u16(&self, off: usize, v: u16) {
        Self::check(off, 2);
        assert!(off % 2 == 0);
        // SAFETY: in bounds and aligned (checked above); the page is mapped.
        unsafe { core::ptr::write_volatile(self.base.as_ptr().add(off) as *mut u16, v) }
    }

    /// Bulk copy out. Ring protocols publish a buffer with a barrier before
    /// we look at it, so a plain copy suffices; the copy is what makes the
    /// data ours before anything parses it (the other side may keep writing).
    pub fn read(&self, off: usize, buf: &mut [u8]) {
        Self::check(off, buf.len());
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        // SAFETY: in bounds (checked above); the page is mapped; `buf` is
        // ordinary memory that cannot overlap a shared page.
        unsafe { core::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) };
    }

    pub fn write(&self, off: usize, data: &[u8]) {
        Self::check(off, data.len());
        // SAFETY: in bounds (checked above); the page is mapped; `data`
        // cannot overlap a shared page.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(off), data.len()) };
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    }
}
