//! Domain control through xenstore: `xl shutdown`, `xl reboot` (the
//! toolstack writes `control/shutdown`, the guest acknowledges by clearing
//! it and stops), and the ready key a host script waits for.

use crate::boottime::{BootReport, Mark, TIMELINE};
use crate::xenstore::{Events, Req, TxId, Xenstore, XsError};
use crate::{time, Kernel, ShutdownReason};
use alloc::format;
use alloc::string::String;
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
/// The boot timeline, written once after `data/ready` (format in
/// `boottime.rs`).
const BOOT_PATH: &str = "data/boot";
/// What the toolstack waits for: µs from our first instruction to serving.
const READY_PATH: &str = "data/ready";

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
    /// Advertise what we support and watch `control/shutdown` and the
    /// stats key: one pipelined batch, a single round trip at boot.
    pub fn init<P: SharedPage, E: Events>(xs: &mut Xenstore<P, E>) -> Result<Control, XsError> {
        Ok(Control::init_reading(xs, &[])?.0)
    }

    /// [`init`](Self::init), and the nodes `reads` read in the same round
    /// trip: the boot's other questions to xenstore (whether there is a
    /// vif) ride along. Their results come back as they are, in order.
    pub fn init_reading<P: SharedPage, E: Events>(
        xs: &mut Xenstore<P, E>,
        reads: &[&str],
    ) -> Result<(Control, alloc::vec::Vec<Result<String, XsError>>), XsError> {
        let mut reqs = alloc::vec![
            Req::Write("control/feature-poweroff", "1"),
            Req::Write("control/feature-reboot", "1"),
            Req::Watch(SHUTDOWN_PATH, TOKEN),
            // We create the node, so it is ours and dom0 may write it
            // (before the watch: its first event finds it empty).
            Req::Write(STATS_PATH, ""),
            Req::Watch(STATS_PATH, STATS_TOKEN),
        ];
        let own = reqs.len();
        reqs.extend(reads.iter().map(|&p| Req::Read(p)));
        let mut results = xs.batch(TxId::NONE, &reqs)?;
        let read = results.split_off(own);
        results.into_iter().try_for_each(|r| r.map(drop))?;
        let control = Control {
            pending_check: true,
            stats_check: false,
            backend_changed: false,
        };
        Ok((control, read))
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

    /// [`watch_backend`](Self::watch_backend) for several paths, in one
    /// round trip.
    pub fn watch_backends<P: SharedPage, E: Events>(
        &mut self,
        xs: &mut Xenstore<P, E>,
        paths: &[&str],
    ) -> Result<(), XsError> {
        let reqs: alloc::vec::Vec<Req<'_>> = paths
            .iter()
            .map(|&p| Req::Watch(p, BACKEND_TOKEN))
            .collect();
        xs.batch(TxId::NONE, &reqs)?
            .into_iter()
            .try_for_each(|r| r.map(drop))
    }

    /// Whether the watched backend state may have changed since the last call.
    pub fn take_backend_changed(&mut self) -> bool {
        core::mem::take(&mut self.backend_changed)
    }

    /// Publish `data/ready` = microseconds from our first instruction, then
    /// the boot timeline: `data/boot` and a console line. The ready key goes
    /// first (it is what the host waits for); the timeline, taken at the
    /// same instant, follows one round trip later.
    pub fn ready(k: &mut Kernel) -> Result<u64, XsError> {
        Control::ready_with(k, &[])
    }

    /// [`ready`](Self::ready), with the writes `before` sent in the same
    /// round trip ahead of `data/ready`: xenstored applies one connection's
    /// requests in order, so whoever sees the ready key finds them there.
    pub fn ready_with(k: &mut Kernel, before: &[(&str, &str)]) -> Result<u64, XsError> {
        let now = time::now_ns();
        let cpu = time::cpu_since_start();
        TIMELINE.mark_at(Mark::Ready, now, cpu.map(|c| c.running));
        let us = now.saturating_sub(k.boot_ns) / 1000;
        let mut xs = k.xenstore.borrow_mut();
        let value = format!("{us}");
        write_before_ready(&mut xs, before, &value)?;
        let report = BootReport::new(&TIMELINE, k.boot_ns, cpu);
        publish_boot(&mut xs, &report, |line| crate::println!("{line}"))?;
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

/// Write the boot timeline to `data/boot` and, as `boot: …`, to `console`
/// (one line per call); marks out of boot order are reported there too.
/// `before`, then `data/ready` = `ready`, in one batch; the first write
/// that failed is the error.
pub fn write_before_ready<P: SharedPage, E: Events>(
    xs: &mut Xenstore<P, E>,
    before: &[(&str, &str)],
    ready: &str,
) -> Result<(), XsError> {
    let mut reqs: alloc::vec::Vec<Req<'_>> =
        before.iter().map(|&(p, v)| Req::Write(p, v)).collect();
    reqs.push(Req::Write(READY_PATH, ready));
    xs.batch(TxId::NONE, &reqs)?
        .into_iter()
        .try_for_each(|r| r.map(drop))
}

pub fn publish_boot<P: SharedPage, E: Events>(
    xs: &mut Xenstore<P, E>,
    report: &BootReport,
    console: fn(core::fmt::Arguments),
) -> Result<(), XsError> {
    if let Some((a, b)) = report.out_of_order() {
        console(format_args!(
            "boot: mark {} is before {}: the timeline is wrong",
            b.name(),
            a.name()
        ));
    }
    console(format_args!("boot: {report}"));
    xs.write(BOOT_PATH, &format!("{report}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boottime::Timeline;
    use crate::time::Cpu;
    use crate::xenstore::{fake, Errno};

    #[test]
    fn the_timeline_is_one_key() {
        let (mut xs, srv) = fake::setup();
        let t = Timeline::new();
        t.mark_at(Mark::Mem, 1_002_000, None);
        t.mark_at(Mark::Ready, 1_050_000, None);
        let cpu = Cpu {
            running: 30_000,
            runnable: 0,
            blocked: 18_000,
        };
        publish_boot(&mut xs, &BootReport::new(&t, 1_000_000, Some(cpu)), capture).unwrap();
        let line = "mem_us=2 ready_us=50 run_us=30 steal_us=0 blocked_us=18";
        assert_eq!(
            srv.borrow().tree.get("data/boot").map(String::as_str),
            Some(line)
        );
        assert_eq!(lines(), [format!("boot: {line}")]);
    }

    /// data/ip and a pool member's data/pool go in the ready key's round
    /// trip, ahead of it: a watcher of ready finds them already there.
    #[test]
    fn the_keys_before_ready_and_ready_are_one_round_trip_in_that_order() {
        let (mut xs, srv) = fake::setup();
        let before = [("data/ip", "10.0.0.2/24"), ("data/pool", "taken us=77")];
        write_before_ready(&mut xs, &before, "1234").unwrap();
        let s = srv.borrow();
        assert_eq!(s.waits, 1);
        let writes: Vec<&[u8]> = s
            .log
            .iter()
            .filter(|(ty, _, _)| *ty == crate::xenstore::wire::MsgType::Write as u32)
            .map(|(_, _, p)| p.as_slice())
            .collect();
        assert_eq!(
            writes,
            [
                &b"data/ip\x0010.0.0.2/24"[..],
                b"data/pool\x00taken us=77",
                b"data/ready\x001234"
            ]
        );
        assert_eq!(s.tree["data/ready"], "1234");
        drop(s);
        // Nothing before: only ready.
        write_before_ready(&mut xs, &[], "5").unwrap();
        assert_eq!(srv.borrow().waits, 2);
        assert_eq!(srv.borrow().tree["data/ready"], "5");
    }

    #[test]
    fn init_and_the_backend_watches_are_a_round_trip_each() {
        let (mut xs, srv) = fake::setup();
        srv.borrow_mut()
            .tree
            .insert("device/vif/0/backend".into(), "/b/vif/1/0".into());
        let (mut c, read) =
            Control::init_reading(&mut xs, &["device/vif/0/backend", "device/vif/1/backend"])
                .unwrap();
        assert_eq!(srv.borrow().waits, 1);
        assert_eq!(read[0], Ok(String::from("/b/vif/1/0")));
        assert_eq!(read[1].as_ref().unwrap_err().errno(), Some(&Errno::ENOENT));
        assert_eq!(read.len(), 2);
        {
            let s = srv.borrow();
            assert_eq!(s.tree["control/feature-poweroff"], "1");
            assert_eq!(s.tree["control/feature-reboot"], "1");
            assert_eq!(s.tree[STATS_PATH], "");
        }
        c.watch_backends(&mut xs, &["backend/vif/1/0/state", "device/vif"])
            .unwrap();
        assert_eq!(srv.borrow().waits, 2);
        // Each watch fires once when set: shutdown is checked, the stats key
        // read (empty: no request), the backend flagged as changed.
        assert_eq!(c.poll(&mut xs), Ok(None));
        assert!(c.take_backend_changed());
        // A request written later arrives through the watch.
        srv.borrow_mut()
            .tree
            .insert(SHUTDOWN_PATH.into(), "reboot".into());
        srv.borrow_mut()
            .send_raw(&fake::watch_event(SHUTDOWN_PATH, TOKEN));
        assert_eq!(
            c.poll(&mut xs),
            Ok(Some(Request::Stop(ShutdownReason::Reboot)))
        );
    }

    #[test]
    fn a_timeline_out_of_order_says_so() {
        let (mut xs, _srv) = fake::setup();
        let t = Timeline::new();
        t.mark_at(Mark::Heap, 1_002_000, None);
        t.mark_at(Mark::Cfg, 1_001_000, None);
        publish_boot(&mut xs, &BootReport::new(&t, 1_000_000, None), capture).unwrap();
        assert_eq!(
            lines(),
            [
                "boot: mark cfg is before heap: the timeline is wrong",
                "boot: heap_us=2 cfg_us=1"
            ]
        );
    }

    std::thread_local! {
        static LINES: core::cell::RefCell<alloc::vec::Vec<String>> = const { core::cell::RefCell::new(alloc::vec::Vec::new()) };
    }

    fn capture(line: core::fmt::Arguments) {
        LINES.with(|l| l.borrow_mut().push(format!("{line}")));
    }

    fn lines() -> alloc::vec::Vec<String> {
        LINES.with(|l| l.borrow().clone())
    }
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
