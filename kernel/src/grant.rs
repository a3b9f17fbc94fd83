//! Grant table v1: how we let the backend (netback in dom0) read or write
//! pages of ours. Each entry says "domain D may access frame F"; the
//! reference's index is what the backend asks Xen for.

use crate::cells::ForeignPages;
use crate::hypercall::{hypercall3, GRANT_TABLE_OP};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{fence, AtomicBool, AtomicU16, Ordering};

const GNTTABOP_SETUP_TABLE: u64 = 2;
const GNTTABOP_QUERY_SIZE: u64 = 6;
const DOMID_SELF: u16 = 0x7FF0;
const GTF_PERMIT_ACCESS: u16 = 1;
const GTF_READONLY: u16 = 1 << 2;
const GTF_READING: u16 = 1 << 3;
const GTF_WRITING: u16 = 1 << 4;
/// Entries the toolstack reserves (console and xenstore rings use 0 and 1).
const NR_RESERVED: u32 = 8;
const ENTRIES_PER_FRAME: u32 = 4096 / 8;
/// Frames we ask for: 2048 entries, enough for 2 x 256 ring slots plus the
/// rings; fewer if Xen allows fewer.
pub const WANT_FRAMES: u32 = 4;

pub type GrantRef = u32;

/// `grant_entry_v1_t` from xen/include/public/grant_table.h.
#[repr(C)]
struct GrantEntryV1 {
    flags: u16,
    domid: u16,
    frame: u32,
}
const _: () = assert!(core::mem::size_of::<GrantEntryV1>() == 8);

#[repr(C)]
struct SetupTable {
    dom: u16,
    nr_frames: u32,
    status: i16,
    frame_list: *mut u64,
}
const _: () = assert!(core::mem::size_of::<SetupTable>() == 24);

#[repr(C)]
struct QuerySize {
    dom: u16,
    nr_frames: u32,
    max_nr_frames: u32,
    status: i16,
}
const _: () = assert!(core::mem::size_of::<QuerySize>() == 16);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The hypercall failed (Xen's error code or GNTST status).
    Hypercall(i64),
    /// Every reference is in use.
    Exhausted,
    /// The backend still maps the page; try again later.
    InUse(GrantRef),
    /// The reference is not one we handed out.
    BadRef(GrantRef),
    /// The table is already set up (there is one per domain).
    AlreadyInitialised,
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            GrantError::Hypercall(rc) => write!(f, "grant table hypercall failed: {rc}"),
            GrantError::Exhausted => write!(f, "grant table exhausted"),
            GrantError::InUse(r) => write!(f, "grant {r} still mapped by the backend"),
            GrantError::BadRef(r) => write!(f, "grant {r} was not handed out"),
            GrantError::AlreadyInitialised => write!(f, "grant table already set up"),
        }
    }
}

/// Pages whose mappings we replace with the grant table frames.
static FRAMES: ForeignPages<{ WANT_FRAMES as usize }> = ForeignPages::new();
static FRAMES_CLAIMED: AtomicBool = AtomicBool::new(false);

pub struct GrantTable {
    entries: *mut GrantEntryV1,
    nr_entries: u32,
    free: Vec<GrantRef>,
    in_use: Vec<bool>,
}

// SAFETY: single CPU; the table is owned by one GrantTable.
unsafe impl Send for GrantTable {}

impl GrantTable {
    /// Set up and map the grant table. Only the first call succeeds.
    pub fn init() -> Result<GrantTable, GrantError> {
        let mut q = QuerySize {
            dom: DOMID_SELF,
            nr_frames: 0,
            max_nr_frames: 0,
            status: 0,
        };
        // SAFETY: `q` is a valid gnttab_query_size for the call.
        let rc = unsafe {
            hypercall3(
                GRANT_TABLE_OP,
                GNTTABOP_QUERY_SIZE,
                &mut q as *mut _ as u64,
                1,
            )
        };
        if rc != 0 || q.status != 0 {
            return Err(GrantError::Hypercall(if rc != 0 {
                rc
            } else {
                q.status as i64
            }));
        }
        let nr = WANT_FRAMES.min(q.max_nr_frames).max(1);
        let mut mfns = [0u64; WANT_FRAMES as usize];
        let mut s = SetupTable {
            dom: DOMID_SELF,
            nr_frames: nr,
            status: 0,
            frame_list: mfns.as_mut_ptr(),
        };
        // SAFETY: `s` and `mfns` (room for nr <= WANT_FRAMES frames) live across the call.
        let rc = unsafe {
            hypercall3(
                GRANT_TABLE_OP,
                GNTTABOP_SETUP_TABLE,
                &mut s as *mut _ as u64,
                1,
            )
        };
        if rc != 0 || s.status != 0 {
            return Err(GrantError::Hypercall(if rc != 0 {
                rc
            } else {
                s.status as i64
            }));
        }
        let base = FRAMES
            .claim(&FRAMES_CLAIMED)
            .ok_or(GrantError::AlreadyInitialised)?;
        for (i, &mfn) in mfns[..nr as usize].iter().enumerate() {
            // SAFETY: FRAMES is ours alone (claimed once above) and never
            // used as Rust memory; each page is replaced by a grant frame Xen
            // just gave us.
            unsafe { crate::mm::map_foreign_frame(base + i * 4096, mfn << 12) }
                .map_err(GrantError::Hypercall)?;
        }
        let nr_entries = nr * ENTRIES_PER_FRAME;
        Ok(GrantTable {
            entries: base as *mut GrantEntryV1,
            nr_entries,
            free: (NR_RESERVED..nr_entries).rev().collect(),
            in_use: alloc::vec![false; nr_entries as usize],
        })
    }

    pub fn capacity(&self) -> u32 {
        self.nr_entries - NR_RESERVED
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    fn entry(&self, r: GrantRef) -> *mut GrantEntryV1 {
        debug_assert!(r < self.nr_entries);
        // SAFETY: r < nr_entries, inside the mapped frames.
        unsafe { self.entries.add(r as usize) }
    }

    /// Let `domid` access machine frame `mfn` (read-only if `readonly`).
    pub fn grant(&mut self, domid: u16, mfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        let r = self.free.pop().ok_or(GrantError::Exhausted)?;
        self.in_use[r as usize] = true;
        let e = self.entry(r);
        // SAFETY: the entry is ours (free list) and mapped; the flags word is
        // written last, after a barrier, as the grant protocol requires.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).frame), mfn as u32);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).domid), domid);
            fence(Ordering::Release);
            let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).flags), flags);
        }
        Ok(r)
    }

    /// Revoke a grant. Fails with `InUse` while the backend maps the page
    /// (the caller must keep the page and retry later).
    pub fn end_access(&mut self, r: GrantRef) -> Result<(), GrantError> {
        if r < NR_RESERVED || r >= self.nr_entries || !self.in_use[r as usize] {
            return Err(GrantError::BadRef(r));
        }
        // SAFETY: the entry is mapped; Xen updates the flags word atomically
        // too, so we use a 16-bit atomic compare-exchange on it.
        let flags =
            unsafe { &*(core::ptr::addr_of_mut!((*self.entry(r)).flags) as *const AtomicU16) };
        let mut cur = flags.load(Ordering::Acquire);
        loop {
            if cur & (GTF_READING | GTF_WRITING) != 0 {
                return Err(GrantError::InUse(r));
            }
            match flags.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.in_use[r as usize] = false;
        self.free.push(r);
        Ok(())
    }
}
