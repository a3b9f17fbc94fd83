//! The stop (`xl shutdown`, idle_exit): drain the connections, report,
//! close netfront.
//!
//! 1. The engine stops accepting (its listeners close: a new SYN gets an
//!    RST), `data/draining` says so to dom0, and the open connections go on being served for up to
//!    `drain_timeout=`; at that deadline the engine resets both sides of
//!    whatever is left. The loop runs until the engine says it is drained
//!    (no connection, every RST sent) and netback has taken every frame
//!    handed to it, and never longer than the timeout
//!    plus [`RST_FLUSH_NS`]: a client never hangs on a stopped instance,
//!    and `xl shutdown` never waits on a stuck peer for more than that.
//! 2. The report (the same lines as the stats dump), after the drain so
//!    that it counts what the drain did.
//! 3. Netfront closed, and the backend given [`NIC_RELEASE_TIMEOUT_NS`] to
//!    unmap our pages before the domain goes.

use super::phases::NIC_EVENTS_PER_PASS;
use super::timers::{self, Timers};
use super::{Clock, Exit, Nic, Proxy, Runtime, Sleeper, Toolstack, WakeOn};
use crate::ShutdownReason;
use netfront::Event;
use smoltcp::time::Duration;

/// How long the drain waits for the backend to give our pages back.
pub const NIC_RELEASE_TIMEOUT_NS: u64 = 2_000_000_000;
/// How long after `drain_timeout` the RSTs may take to leave: the engine's
/// own bound for a dying socket, plus a margin for the loop's last pass.
pub const RST_FLUSH_NS: u64 = proxy::engine::RST_FLUSH_BOUND.total_micros() * 1000 + 100_000_000;

impl<C: Clock, S: Sleeper, T: Toolstack> Runtime<C, S, T> {
    /// The drain/stop phase (see the module documentation).
    pub fn drain<N: Nic, P: Proxy<N>>(
        &mut self,
        nic: &mut N,
        proxy: &mut P,
        reason: ShutdownReason,
    ) -> Exit {
        (self.console)(format_args!("miniproxy: stopping ({reason:?})"));
        self.drain_connections(nic, proxy);
        self.print_net(nic, proxy);
        self.print_profile_and_heap();
        self.release_nic(nic);
        Exit::Shutdown(reason)
    }

    /// Step 1: serve the open connections until the engine is drained, at
    /// most `drain_timeout` + [`RST_FLUSH_NS`].
    pub fn drain_connections<N: Nic, P: Proxy<N>>(&mut self, nic: &mut N, proxy: &mut P) {
        let start = self.clock.now_ns();
        let timeout_ns = self.drain_timeout.as_nanos().min(u64::MAX as u128 / 2) as u64;
        let bound = start
            .saturating_add(timeout_ns)
            .saturating_add(RST_FLUSH_NS);
        let open = proxy.active();
        proxy.start_drain(self.now(), Duration::from_micros(timeout_ns / 1000));
        // Tell dom0 that the listeners are closed and the drain runs (the
        // value: drain_timeout in ms). `xl shutdown` returns before the
        // guest has even seen the request, seconds before under load, so
        // this is the only way dom0 knows: `miniproxy list` shows it, and a
        // test can act while the drain lasts. Best effort: the drain goes
        // on without it.
        let key = alloc::format!("{}", timeout_ns / 1_000_000);
        if let Err(e) = self.toolstack.write("data/draining", &key) {
            log::warn!("xenstore: data/draining not written: {e}");
        }
        if open > 0 {
            (self.console)(format_args!(
                "miniproxy: draining {open} connections (drain_timeout {:?})",
                self.drain_timeout
            ));
        }
        loop {
            let t = self.now();
            let t_ms = self.now_ms();
            let mut link_down = nic.is_disconnected();
            for _ in 0..NIC_EVENTS_PER_PASS {
                match nic.poll(t_ms) {
                    Some(Event::Disconnected(r)) => {
                        log::warn!("netfront: link down while draining: {r}");
                        link_down = true;
                    }
                    Some(ev) => log::info!("netfront: {ev:?}"),
                    None => break,
                }
            }
            proxy.poll(t, nic);
            // Drained, and the backend has taken every frame (the RSTs
            // among them) before netfront is closed under it.
            if proxy.drained() && nic.tx_in_flight() == 0 {
                break;
            }
            let now_ns = self.clock.now_ns();
            if link_down {
                // Nothing can be sent any more: the peers learn of it by
                // their own timeouts.
                (self.console)(format_args!(
                    "miniproxy: drain cut short: the link is down with {} connections open",
                    proxy.active()
                ));
                break;
            }
            if now_ns >= bound {
                (self.console)(format_args!(
                    "miniproxy: drain gave up after {} ms ({} connections left, or RSTs not sent)",
                    (now_ns - start) / 1_000_000,
                    proxy.active()
                ));
                break;
            }
            let deadline = timers::serve_deadline(
                now_ns,
                Timers {
                    engine: proxy.poll_delay(t),
                    nic_ms: nic.poll_delay(t_ms),
                    idle_left_ns: None,
                },
            )
            .min(bound);
            if deadline > now_ns {
                self.sleep(
                    WakeOn {
                        xenstore: false,
                        nic: nic.port(),
                    },
                    Some(deadline),
                );
            }
        }
        if open > 0 {
            (self.console)(format_args!(
                "miniproxy: drained in {} ms",
                (self.clock.now_ns() - start) / 1_000_000
            ));
        }
    }

    /// Step 3: close netfront and wait (at most [`NIC_RELEASE_TIMEOUT_NS`])
    /// for the backend to release our pages.
    fn release_nic<N: Nic>(&mut self, nic: &mut N) {
        let already_down = nic.is_disconnected();
        nic.close();
        let deadline = self.clock.now_ns() + NIC_RELEASE_TIMEOUT_NS;
        while !already_down && self.clock.now_ns() < deadline {
            // Read the backend's state on every pass (at most every 10 ms,
            // below), not only at netfront's retry interval: nothing else
            // wakes this wait when the backend moves.
            nic.check_backend_soon();
            if let Some(Event::Released { leaked_pages }) = nic.poll(self.now_ms()) {
                if leaked_pages > 0 {
                    log::warn!(
                        "netfront: {leaked_pages} pages still mapped by the backend at shutdown"
                    );
                }
                break;
            }
            let wait = nic.poll_delay(self.now_ms()).unwrap_or(10).min(10);
            let until = self.clock.now_ns() + wait * 1_000_000;
            self.sleep(
                WakeOn {
                    xenstore: false,
                    nic: nic.port(),
                },
                Some(until),
            );
        }
    }
}
