//! The start_info page Xen hands us in `%rsi`, copied into a plain struct.

use xen_sys::start_info;

/// Xen's limit on a PV guest's command line, its NUL included
/// (`MAX_GUEST_CMDLINE`, the size of `start_info.cmd_line`).
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// Why the command line cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// It reaches Xen's limit: it may have been cut.
    TooLong,
    NotUtf8(core::str::Utf8Error),
}

impl core::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CmdlineError::TooLong => write!(
                f,
                "config: the command line is {} bytes or more, Xen's limit (MAX_GUEST_CMDLINE {} with its NUL): \
                 it may have been cut; shorten extra=",
                MAX_GUEST_CMDLINE - 1,
                MAX_GUEST_CMDLINE
            ),
            CmdlineError::NotUtf8(e) => write!(f, "config: the command line is not UTF-8 ({e})"),
        }
    }
}

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
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
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
        let mut cmd_line = [0u8; MAX_GUEST_CMDLINE];
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
    ///
    /// Xen copies at most [`MAX_GUEST_CMDLINE`] bytes including the NUL and
    /// cuts a longer line without a word: a line that reaches the limit
    /// (1023 bytes, or no NUL at all) may have been cut, and booting on
    /// part of a configuration is refused ([`CmdlineError::TooLong`]).
    pub fn cmdline(&self) -> Result<&str, CmdlineError> {
        let end = self
            .cmd_line
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.cmd_line.len());
        if end >= MAX_GUEST_CMDLINE - 1 {
            return Err(CmdlineError::TooLong);
        }
        core::str::from_utf8(&self.cmd_line[..end]).map_err(CmdlineError::NotUtf8)
    }

    pub fn magic_str(&self) -> &str {
        let end = self.magic.iter().position(|&b| b == 0).unwrap_or(32);
        core::str::from_utf8(&self.magic[..end]).unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start_info whose command line buffer holds `line` (cut to the
    /// buffer, as Xen does) and then NULs.
    fn with_line(line: &[u8]) -> StartInfo {
        let mut cmd_line = [0u8; MAX_GUEST_CMDLINE];
        let n = line.len().min(MAX_GUEST_CMDLINE);
        cmd_line[..n].copy_from_slice(&line[..n]);
        StartInfo {
            magic: [0; 32],
            nr_pages: 0,
            shared_info_maddr: 0,
            flags: 0,
            store_mfn: 0,
            store_evtchn: 0,
            console_mfn: 0,
            console_evtchn: 0,
            pt_base: 0,
            nr_pt_frames: 0,
            mfn_list: 0,
            cmd_line,
            va: 0,
        }
    }

    /// `ip=10.0.0.2/24 ` then `idle_exit=off ` repeated, cut to `len` bytes.
    fn line_of(len: usize) -> Vec<u8> {
        let mut v = b"ip=10.0.0.2/24".to_vec();
        while v.len() < len {
            v.extend_from_slice(b" idle_exit=off");
        }
        v.truncate(len);
        v
    }

    #[test]
    fn a_line_below_the_limit_is_read_whole() {
        assert_eq!(with_line(b"").cmdline(), Ok(""));
        assert_eq!(with_line(b"ip=dhcp").cmdline(), Ok("ip=dhcp"));
        let longest = line_of(MAX_GUEST_CMDLINE - 2);
        assert_eq!(
            with_line(&longest).cmdline().map(str::as_bytes),
            Ok(&longest[..])
        );
    }

    #[test]
    fn a_line_that_reaches_the_limit_is_refused() {
        // 1023 bytes and the NUL (what Xen leaves of any longer line), a full
        // buffer without NUL, and a 4 KiB line cut to the buffer.
        for len in [MAX_GUEST_CMDLINE - 1, MAX_GUEST_CMDLINE, 4096] {
            let si = with_line(&line_of(len));
            let got = si.cmdline();
            assert_eq!(got, Err(CmdlineError::TooLong), "{len} bytes");
            let msg = format!("{}", got.unwrap_err());
            assert!(
                msg.starts_with("config: the command line is 1023 bytes or more"),
                "{msg}"
            );
            assert!(msg.contains("shorten extra="), "{msg}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused() {
        match with_line(b"ip=\xff").cmdline() {
            Err(e @ CmdlineError::NotUtf8(_)) => {
                assert!(format!("{e}").starts_with("config: the command line is not UTF-8"))
            }
            other => panic!("{other:?}"),
        }
    }
}
