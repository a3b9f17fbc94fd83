//! The start_info page Xen hands us in `%rsi`, copied into a plain struct.

use xen_sys::start_info;

/// What we keep of start_info. Copied out once at boot so that nothing else
/// reads the raw page.
#[derive(Clone, Debug)]
pub struct StartInfo {
    pub magic: [u8; 32],
    pub nr_pages: u64,
    pub shared_info_maddr: u64,
    pub flags: u32,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    pub mfn_list: u64,
    pub cmd_line: [u8; 1024],
    /// Virtual address of the start_info page itself.
    pub va: u64,
}

// Layout of xen/include/public/xen.h `struct start_info` (x86_64).
const _: () = {
    assert!(core::mem::size_of::<start_info>() == 1168);
    assert!(core::mem::offset_of!(start_info, nr_pages) == 32);
    assert!(core::mem::offset_of!(start_info, store_mfn) == 56);
    assert!(core::mem::offset_of!(start_info, console) == 72);
    assert!(core::mem::offset_of!(start_info, pt_base) == 88);
    assert!(core::mem::offset_of!(start_info, mfn_list) == 104);
    assert!(core::mem::offset_of!(start_info, cmd_line) == 128);
};

impl StartInfo {
    /// # Safety
    /// `si` must point at the start_info page Xen passed at entry.
    pub unsafe fn read(si: *const start_info) -> StartInfo {
        // SAFETY: the caller passes the start_info page; Xen does not change
        // it while we copy it (nothing else runs yet).
        let s = unsafe { &*si };
        let mut magic = [0u8; 32];
        let mut cmd_line = [0u8; 1024];
        for (d, c) in magic.iter_mut().zip(s.magic.iter()) {
            *d = *c as u8;
        }
        for (d, c) in cmd_line.iter_mut().zip(s.cmd_line.iter()) {
            *d = *c as u8;
        }
        StartInfo {
            magic,
            nr_pages: s.nr_pages,
            shared_info_maddr: s.shared_info,
            flags: s.flags,
            store_mfn: s.store_mfn,
            store_evtchn: s.store_evtchn,
            // SAFETY: a domU's start_info holds the `domU` member of the
            // union (dom0's would be `dom0`; we never run as dom0).
            console_mfn: unsafe { s.console.domU.mfn },
            // SAFETY: as above.
            console_evtchn: unsafe { s.console.domU.evtchn },
            pt_base: s.pt_base,
            nr_pt_frames: s.nr_pt_frames,
            mfn_list: s.mfn_list,
            cmd_line,
            va: si as u64,
        }
    }

    /// The guest command line (`extra=` in the xl config), up to its NUL.
    /// Bytes that are not UTF-8 are reported as an error by the caller.
    pub fn cmdline(&self) -> Result<&str, core::str::Utf8Error> {
        let end = self
            .cmd_line
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.cmd_line.len());
        core::str::from_utf8(&self.cmd_line[..end])
    }

    pub fn magic_str(&self) -> &str {
        let end = self.magic.iter().position(|&b| b == 0).unwrap_or(32);
        core::str::from_utf8(&self.magic[..end]).unwrap_or("?")
    }
}
