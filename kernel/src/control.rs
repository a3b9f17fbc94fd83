//! Domain control through xenstore: `xl shutdown`, `xl reboot` (the
//! toolstack writes `control/shutdown`, the guest acknowledges by clearing
//! it and stops), and the ready key a host script waits for.

use crate::xenstore::{Events, Xenstore, XsError};
use crate::{Kernel, ShutdownReason};
use alloc::format;
use netfront::SharedPage;

const SHUTDOWN_PATH: &str = "control/shutdown";
const TOKEN: &str = "shutdown";
/// Writing anything here (from dom0: `xenstore-write
/// /local/domain/<id>/data/stats-dump 1`) prints the stats on the console.
/// Under data/ because the guest may not create nodes under control/.
const STATS_PATH: &str = "data/stats-dump";
const STATS_TOKEN: &str = "stats";
/// Watch on the vif backend's `state`: the driver re-reads it when this fires
/// (a synchronous read every few hundred ms would stall the guest for as
/// long as a busy dom0's xenstored takes to answer).
const BACKEND_TOKEN: &str = "vif-backend";

/// What the toolstack asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Stop(ShutdownReason),
    /// Print the statistics on the console.
    DumpStats,
}

/// Map a `control/shutdown` value to what we do; `Err` carries values we
/// refuse (and clear, so the toolstack does not wait on us forever).
pub fn parse_request(v: &str) -> Result<Option<Request>, &str> {
    match v {
        "" => Ok(None),
        "poweroff" | "halt" => Ok(Some(Request::Stop(ShutdownReason::Poweroff))),
        "reboot" => Ok(Some(Request::Stop(ShutdownReason::Reboot))),
        other => Err(other),
    }
}

pub struct Control {
    pending_check: bool,
    stats_check: bool,
    backend_changed: bool,
}

impl Control {
    /// Advertise what we support and watch `control/shutdown`.
    pub fn init<P: SharedPage, E: Events>(xs: &mut Xenstore<P, E>) -> Result<Control, XsError> {
        xs.write("control/feature-poweroff", "1")?;
        xs.write("control/feature-reboot", "1")?;
        xs.watch(SHUTDOWN_PATH, TOKEN)?;
        // We create the node, so it is ours and dom0 may write it.
        xs.write(STATS_PATH, "")?;
        xs.watch(STATS_PATH, STATS_TOKEN)?;
        Ok(Control {
            pending_check: true,
            stats_check: false,
            backend_changed: false,
        })
    }

    /// Watch a backend's state node (e.g. `<backend>/state`); a change shows
    /// in [`take_backend_changed`](Self::take_backend_changed).
    pub fn watch_backend<P: SharedPage, E: Events>(
        &mut self,
        xs: &mut Xenstore<P, E>,
        state_path: &str,
    ) -> Result<(), XsError> {
        xs.watch(state_path, BACKEND_TOKEN)
    }

    /// Whether the watched backend state may have changed since the last call.
    pub fn take_backend_changed(&mut self) -> bool {
        core::mem::take(&mut self.backend_changed)
    }

    /// Publish `data/ready` = microseconds from our first instruction.
    pub fn ready(k: &mut Kernel) -> Result<u64, XsError> {
        let us = k.uptime_ns() / 1000;
        k.xenstore
            .borrow_mut()
            .write("data/ready", &format!("{us}"))?;
        Ok(us)
    }

    /// Non-blocking: handle watch events that arrived; returns a request once
    /// the toolstack has asked us to stop.
    ///
    /// The caller clears the xenstore port's pending bit first (the
    /// runtime's `Sleeper::take_xenstore_event`): xenstored also signals when
    /// it consumes our requests, and a bit left set would make every later
    /// SCHEDOP_poll return at once (a busy loop). Anything that arrives
    /// after the clear sets it again and wakes the next sleep.
    pub fn poll<P: SharedPage, E: Events>(
        &mut self,
        xs: &mut Xenstore<P, E>,
    ) -> Result<Option<Request>, XsError> {
        while let Some(ev) = xs.poll_watch()? {
            if ev.token == TOKEN {
                self.pending_check = true;
            } else if ev.token == STATS_TOKEN {
                self.stats_check = true;
            } else if ev.token == BACKEND_TOKEN {
                self.backend_changed = true;
            }
        }
        if xs.take_events_lost() {
            self.pending_check = true;
            self.stats_check = true;
            self.backend_changed = true;
        }
        if core::mem::take(&mut self.stats_check) {
            if let Ok(v) = xs.read(STATS_PATH) {
                if !v.is_empty() {
                    xs.write(STATS_PATH, "")?;
                    // Check shutdown on the next poll; report this first.
                    return Ok(Some(Request::DumpStats));
                }
            }
        }
        if !core::mem::take(&mut self.pending_check) {
            return Ok(None);
        }
        let v = match xs.read(SHUTDOWN_PATH) {
            Ok(v) => v,
            Err(e) if e.errno() == Some(&crate::xenstore::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        match parse_request(&v) {
            Ok(None) => Ok(None),
            Ok(Some(r)) => {
                log::info!("shutdown requested: {v}");
                // Acknowledge, as Linux does, so `xl shutdown -w` sees us act.
                xs.write(SHUTDOWN_PATH, "")?;
                Ok(Some(r))
            }
            Err(other) => {
                log::warn!("unsupported control/shutdown request '{other}' ignored");
                xs.write(SHUTDOWN_PATH, "")?;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn requests() {
        assert_eq!(parse_request(""), Ok(None));
        assert_eq!(
            parse_request("poweroff"),
            Ok(Some(Request::Stop(ShutdownReason::Poweroff)))
        );
        assert_eq!(
            parse_request("halt"),
            Ok(Some(Request::Stop(ShutdownReason::Poweroff)))
        );
        assert_eq!(
            parse_request("reboot"),
            Ok(Some(Request::Stop(ShutdownReason::Reboot)))
        );
        assert_eq!(parse_request("suspend"), Err("suspend"));
    }
}
