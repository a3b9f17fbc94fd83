//! The warm pool's wait (README, "The warm pool"): a member boots with
//! `pool=on` as its command line, connects its vif, says it is waiting and
//! then sleeps until dom0 hands it its configuration.
//!
//! The configuration comes in the xenstore key [`CONFIG_PATH`] (relative to
//! the domain's home, so `/local/domain/<domid>/miniproxy/config`), which
//! dom0 creates and owns and the guest can only read: under the domain's
//! home, which the toolstack creates as dom0's with read access for the
//! guest, a node dom0 creates inherits exactly that (and the operator sets
//! it again with `xenstore-chmod PATH n0 r<domid>`). It has the grammar of
//! `extra=` and goes through the same [`Config::parse`], but not through
//! Xen's command line: it is not cut at 1022 bytes (xenstore's own limit is
//! a 4096-byte message, path included).
//!
//! The wait is `SCHEDOP_poll` on the xenstore port alone and without a
//! deadline: no timer, no NIC (its frames wait in the ring), no xenstore
//! request until a watch fires (the config key, the backend's state) or
//! the toolstack asks for something (`xl shutdown` stops at once).
//!
//! Boot-time keys ([`BOOT_TIME_KEYS`]: netfront's buffers and offload) are
//! fixed when the member boots: a configuration that differs in one is
//! refused (fatal, like a bad command line); the operator only hands a
//! member a configuration whose boot-time keys match (else it starts a
//! cold instance). Everything else, `mem=` and `loglevel=` included, is
//! applied at takeover, as a cold boot applies it after netfront is up.
//!
//! Timing keys: `data/ready` and the `data/boot` timeline count from the
//! member's first instruction, so they include its time in the pool (its
//! `cfg` mark is the `pool=on` line's); `data/pool` becomes `taken us=N`
//! just before `data/ready`, N being the member's own time from reading its
//! configuration to ready.

use super::{Clock, Exit, Nic, Runtime, Sleeper, Toolstack, WakeOn};
use crate::xenstore::Errno;
use alloc::format;
use alloc::string::String;
use proxy::config::{Config, BOOT_TIME_KEYS};

/// Where dom0 writes a pool member's configuration.
pub const CONFIG_PATH: &str = "miniproxy/config";
/// What the member says of itself: `waiting` once its vif is connected and
/// the config key watched, `taken` once it served its configuration.
pub const POOL_STATE_PATH: &str = "data/pool";

impl<C: Clock, S: Sleeper, T: Toolstack> Runtime<C, S, T> {
    /// Watch [`CONFIG_PATH`], publish `data/pool=waiting`, then sleep
    /// without a deadline until the key exists: its value. A stop request
    /// while waiting ends it (`Err(Exit::Shutdown)`), a xenstore failure is
    /// fatal.
    pub fn wait_for_config<N: Nic>(&mut self, nic: &mut N) -> Result<String, Exit> {
        let xs_fatal = |what: &str, e: crate::xenstore::XsError| {
            Exit::Fatal(format!("pool: cannot {what} {CONFIG_PATH}: {e}"))
        };
        // Watch first: dom0 writes the key only once it sees `waiting`,
        // and the watch's first event reads it anyway.
        self.toolstack
            .watch_config(CONFIG_PATH)
            .map_err(|e| xs_fatal("watch", e))?;
        self.toolstack
            .write(POOL_STATE_PATH, "waiting")
            .map_err(|e| Exit::Fatal(format!("pool: cannot write {POOL_STATE_PATH}: {e}")))?;
        log::info!("pool: waiting for {CONFIG_PATH}");
        let wake = WakeOn {
            xenstore: true,
            nic: None,
        };
        loop {
            if let Some(exit) = self.check_control_bare() {
                return Err(exit);
            }
            // One flag for every watched node (the config key, the backend's
            // state): netfront re-reads its backend too once it runs again.
            if self.toolstack.take_backend_changed() {
                nic.check_backend_soon();
                match self.toolstack.read(CONFIG_PATH) {
                    Ok(line) => return Ok(line),
                    Err(e) if e.errno() == Some(&Errno::ENOENT) => {}
                    Err(e) => return Err(xs_fatal("read", e)),
                }
            }
            self.sleep(wake, None);
        }
    }
}

/// The configuration handed to a pool member booted with `boot`: parsed as
/// `extra=` is; refused (fatal, naming why) if it does not parse, asks to
/// wait again (`pool=on`) or differs from `boot` in a boot-time key.
pub fn take_config(line: &str, boot: &Config) -> Result<Config, Exit> {
    let fatal = |why: String| Exit::Fatal(format!("pool: {CONFIG_PATH}: {why}"));
    let cfg = Config::parse(line).map_err(|e| fatal(format!("{e}")))?;
    if cfg.pool {
        return Err(fatal(
            "pool=on: a pool member's configuration cannot make it wait again".into(),
        ));
    }
    if let Some((key, mine, booted)) = cfg.boot_time_mismatch(boot) {
        return Err(fatal(format!(
            "{key}={mine}, but this pool member booted with {key}={booted} \
             (the boot-time keys {BOOT_TIME_KEYS:?} are fixed when a member boots)"
        )));
    }
    Ok(cfg)
}
