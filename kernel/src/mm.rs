//! Memory: pseudo-physical <-> machine frame translation, the initial page
//! tables Xen built for us, the free region the heap takes, and pages shared
//! with other domains.
//!
//! With VIRT_BASE = 0 a virtual address in the initial mapping equals its
//! pseudo-physical address, so `va >> 12` is the pfn.

use crate::hypercall::{hypercall3, hypercall4, MMU_UPDATE, UPDATE_VA_MAPPING};
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

/// What start_info says about our memory, set once at boot by [`init`].
struct Layout {
    /// The pfn -> mfn list Xen placed in our initial mapping (its address).
    p2m_list: usize,
    nr_pages: u64,
    /// Virtual address of the L4 page table Xen built for us.
    pt_base: u64,
}

static LAYOUT: spin::Once<Layout> = spin::Once::new();

/// Record start_info's memory layout. Later calls are ignored.
///
/// # Safety
/// `mfn_list` must be the address of the p2m list with `nr_pages` entries
/// and `pt_base` the L4 table, both mapped for the domain's lifetime (as
/// start_info gives them): [`pfn_to_mfn`] and [`is_mapped`] read them.
pub unsafe fn init(mfn_list: u64, nr_pages: u64, pt_base: u64) {
    LAYOUT.call_once(|| Layout {
        p2m_list: mfn_list as usize,
        nr_pages,
        pt_base,
    });
}

fn pt_base() -> u64 {
    LAYOUT.get().map_or(0, |l| l.pt_base)
}

pub fn pfn_to_mfn(pfn: u64) -> Option<u64> {
    let l = LAYOUT.get()?;
    if l.p2m_list == 0 || pfn >= l.nr_pages {
        return None;
    }
    // SAFETY: init's caller vouched that the list has nr_pages entries and
    // stays mapped read-only for our lifetime; pfn < nr_pages.
    Some(unsafe { core::ptr::read_volatile((l.p2m_list as *const u64).add(pfn as usize)) })
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
    // SAFETY: pt_base() is the L4 table Xen gave us; each lower table is found
    // through its machine frame and the M2P table, and lies in the initial
    // mapping (VIRT_BASE = 0: va == pfn << 12).
    unsafe {
        let mut table = pt_base();
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

/// `DOMID_SELF` for mmu_update's foreign-domain argument.
const DOMID_SELF: u64 = 0x7FF0;
/// Protections for page-table entries we write: tables and data pages.
const PT_PROT: u64 = PTE_PRESENT | PTE_RW | PTE_USER | (1 << 5);

fn mmu_update(reqs: &[xen_sys::mmu_update]) -> Result<(), i64> {
    let mut done = 0u32;
    // SAFETY: `reqs` is a valid array of mmu_update requests for the call;
    // Xen validates every entry (a bad one is an error, not corruption).
    let rc = unsafe {
        hypercall4(
            MMU_UPDATE,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            &mut done as *mut u32 as u64,
            DOMID_SELF,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

/// Map every page the domain owns beyond Xen's initial mapping at
/// va = pfn << 12, building missing page tables from pages taken at
/// `*next_free` (which must be mapped, unused pages; it moves past them).
/// Returns the pfn up to which memory is mapped (nr_pages on success).
///
/// Xen only maps the first few MiB (up to a 4 MiB boundary) for us; a PV
/// guest's page tables are read-only to it, so entries are written with
/// mmu_update and new tables are made read-only before they are hooked in.
///
/// # Safety
/// Once at boot, before the heap takes `[*next_free, ..)`.
pub unsafe fn map_rest(mapped_end: u64, nr_pages: u64, next_free: &mut u64) -> Result<u64, i64> {
    let mut batch = [xen_sys::mmu_update { ptr: 0, val: 0 }; 64];
    let mut n = 0;
    let mut pfn = mapped_end;
    while pfn < nr_pages {
        let va = pfn << 12;
        // Walk down to the L1 table, creating missing tables on the way.
        let mut table_pfn = pt_base() >> 12;
        for level in (2..=4).rev() {
            let idx = (va >> (12 + 9 * (level - 1))) & 511;
            let entry_va = (table_pfn << 12) + idx * 8;
            // SAFETY: the table is one of ours, in the initial mapping (or a
            // page we mapped above); page tables are readable to a PV guest.
            let e = unsafe { core::ptr::read_volatile(entry_va as *const u64) };
            if e & PTE_PRESENT != 0 {
                table_pfn = mfn_to_pfn((e & PTE_ADDR_MASK) >> 12);
                continue;
            }
            // Flush pending L1 writes first: they may be to a table we are
            // about to read again.
            if n > 0 {
                mmu_update(&batch[..n])?;
                n = 0;
            }
            let new = *next_free;
            if new >= mapped_end {
                return Err(-12); // ENOMEM: no mapped page left for a table
            }
            *next_free += 1;
            let new_va = (new << 12) as usize;
            let new_mfn = pfn_to_mfn(new).ok_or(-22i64)?;
            // SAFETY: `new` is a mapped page below mapped_end that nothing
            // uses (the caller's contract for next_free).
            unsafe { core::ptr::write_bytes(new_va as *mut u8, 0, PAGE_SIZE) };
            // A page becomes a page table only while no writable mapping of it exists.
            let pte = (new_mfn << 12) | PTE_PRESENT | PTE_USER;
            // SAFETY: remaps our own unused page read-only; Xen validates it.
            let rc = unsafe { hypercall3(UPDATE_VA_MAPPING, new_va as u64, pte, UVMF_INVLPG) };
            if rc != 0 {
                return Err(rc);
            }
            let parent_mfn = pfn_to_mfn(table_pfn).ok_or(-22i64)?;
            mmu_update(&[xen_sys::mmu_update {
                ptr: (parent_mfn << 12) + idx * 8,
                val: (new_mfn << 12) | PT_PROT,
            }])?;
            table_pfn = new;
        }
        let l1_mfn = pfn_to_mfn(table_pfn).ok_or(-22i64)?;
        let mfn = pfn_to_mfn(pfn).ok_or(-22i64)?;
        batch[n] = xen_sys::mmu_update {
            ptr: (l1_mfn << 12) + ((va >> 12) & 511) * 8,
            val: (mfn << 12) | PT_PROT,
        };
        n += 1;
        if n == batch.len() {
            mmu_update(&batch)?;
            n = 0;
        }
        pfn += 1;
    }
    if n > 0 {
        mmu_update(&batch[..n])?;
    }
    Ok(pfn)
}

/// Remove the mapping of one page (used for the guard page at 0).
pub fn unmap(va: usize) -> Result<(), i64> {
    // SAFETY: clearing a PTE of our own address space; nothing refers to the
    // guard page.
    let rc = unsafe { hypercall3(UPDATE_VA_MAPPING, va as u64, 0, UVMF_INVLPG) };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

/// Map a machine frame (e.g. shared_info) at the page `va` we own.
///
/// # Safety
/// `va` must be a page of ours that nothing else uses; its old frame is
/// abandoned.
pub unsafe fn map_foreign_frame(va: usize, maddr: u64) -> Result<(), i64> {
    let pte = (maddr & PTE_ADDR_MASK) | PTE_PRESENT | PTE_RW | PTE_USER;
    // SAFETY: the caller owns the page at `va`; Xen checks that we may map
    // the frame.
    let rc = unsafe { hypercall3(UPDATE_VA_MAPPING, va as u64, pte, UVMF_INVLPG) };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
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
        debug_assert!(va.is_multiple_of(PAGE_SIZE));
        // SAFETY: `va` is mapped (our contract), and page 0 never is (the
        // guard page), so it is not null.
        let base = unsafe { NonNull::new_unchecked(va as *mut u8) };
        SharedPage { base }
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
        // SAFETY: PAGE_SIZE is a non-zero power of two.
        let layout =
            unsafe { core::alloc::Layout::from_size_align_unchecked(PAGE_SIZE, PAGE_SIZE) };
        // SAFETY: the caller guarantees the page came from `alloc` (same
        // layout) and that no other domain maps it any more.
        unsafe { alloc::alloc::dealloc(self.base.as_ptr(), layout) };
    }

    pub fn va(&self) -> usize {
        self.base.as_ptr() as usize
    }

    pub fn mfn(&self) -> Option<u64> {
        virt_to_mfn(self.va())
    }

    fn check(off: usize, len: usize) {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= PAGE_SIZE),
            "shared page access out of bounds"
        );
    }

    pub fn read_u32(&self, off: usize) -> u32 {
        Self::check(off, 4);
        assert!(off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked above); the page is mapped.
        unsafe { core::ptr::read_volatile(self.base.as_ptr().add(off) as *const u32) }
    }

    pub fn write_u32(&self, off: usize, v: u32) {
        Self::check(off, 4);
        assert!(off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked above); the page is mapped.
        unsafe { core::ptr::write_volatile(self.base.as_ptr().add(off) as *mut u32, v) }
    }

    pub fn read_u16(&self, off: usize) -> u16 {
        Self::check(off, 2);
        assert!(off.is_multiple_of(2));
        // SAFETY: in bounds and aligned (checked above); the page is mapped.
        unsafe { core::ptr::read_volatile(self.base.as_ptr().add(off) as *const u16) }
    }

    pub fn write_u16(&self, off: usize, v: u16) {
        Self::check(off, 2);
        assert!(off.is_multiple_of(2));
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
        unsafe {
            core::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
    }

    pub fn write(&self, off: usize, data: &[u8]) {
        Self::check(off, data.len());
        // SAFETY: in bounds (checked above); the page is mapped; `data`
        // cannot overlap a shared page.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(off), data.len())
        };
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    }
}
