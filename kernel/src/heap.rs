//! The kernel heap: a linked-list allocator over the guest's free pages.

use core::alloc::{GlobalAlloc, Layout};
use linked_list_allocator::Heap;

pub struct KernelHeap(spin::Mutex<Heap>);

impl KernelHeap {
    pub const fn empty() -> KernelHeap {
        KernelHeap(spin::Mutex::new(Heap::empty()))
    }

    /// # Safety
    /// `[start, start + size)` must be mapped, writable, unused memory that is
    /// given to the heap for good. Called once.
    pub unsafe fn init(&self, start: usize, size: usize) {
        // SAFETY: the caller gives the region for good (our contract).
        unsafe { self.0.lock().init(start as *mut u8, size) };
    }

    pub fn stats(&self) -> (usize, usize) {
        let h = self.0.lock();
        (h.used(), h.size())
    }
}

// SAFETY: delegates to linked_list_allocator's Heap under a lock; failure is
// reported as a null pointer, as GlobalAlloc requires.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map(|p| p.as_ptr())
            .unwrap_or(core::ptr::null_mut())
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = core::ptr::NonNull::new(ptr) {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with
            // this layout, and the heap allocated it.
            unsafe { self.0.lock().deallocate(p, layout) }
        }
    }
}
