//! The engine's connection lifecycle: taking accepted sockets out of the
//! listen pools, opening their upstream side, and ending connections (counted
//! in [`Stats`](super::Stats), their sockets retired to the pool).
//!
//! * **Accept.** When a pool socket receives a SYN it leaves the pool, the
//!   pool is refilled at once (after every ingress packet that changed a
//!   socket), and the upstream connection is opened in the same poll, in
//!   parallel with the client handshake, or under a SYN flood once that
//!   handshake completes (`halfopen`). At `max_conns` the oldest
//!   half-open connection makes room (`halfopen`); if there is none the SYN is
//!   refused with an RST (counted in `refused`) and the existing connections
//!   are not disturbed; so is a SYN no upstream socket or port can be found
//!   for, and a transparent one addressed to the instance itself (or IPv6).
//! * **Service.** Once per round of [`Engine::poll`] every connection is
//!   advanced one step (`splice`), the ended ones are removed, dying sockets
//!   reaped and the pools refilled (and upgraded when memory came back).

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::sizing::Role;
use super::sockets::ALLOC_RETRY;
use super::splice::{self, Conn, End};
use super::{Engine, EXTRA_SOCKETS};
use crate::config::RuleKind;

impl Engine {
    /// Abort every listening socket (the address changed); `refill` re-creates them.
    pub(super) fn drop_listeners(&mut self) {
        self.stats.refused += self.listeners.drop_all(&mut self.sockets, self.now);
    }

    /// Top every rule's pool up to `backlog` listening sockets.
    pub(super) fn refill(&mut self, now: Instant) {
        self.listeners
            .refill(&mut self.sockets, &self.tune, &self.addr, now);
    }

    /// Take pool sockets that received a SYN and start their connections.
    pub(super) fn accept(&mut self, now: Instant) -> bool {
        let mut cursor = (0, 0);
        let mut any = false;
        while let Some((i, h)) = self.listeners.next_accepted(&mut self.sockets, &mut cursor) {
            any = true;
            self.start_conn(i, h, now);
        }
        if any {
            self.refill(now);
        }
        any
    }

    fn refuse(&mut self, client: SocketHandle, now: Instant) {
        self.stats.refused += 1;
        self.sockets.abort(client, now);
    }

    fn start_conn(&mut self, rule_idx: usize, client: SocketHandle, now: Instant) {
        if self.conns.len() >= self.tune.max_conns && !self.evict_half_open() {
            log::debug!("proxy: max_conns reached, refusing");
            return self.refuse(client, now);
        }
        let rule = self.listeners.rule(rule_idx);
        let Some(local) = self.sockets.tcp(client).local_endpoint() else {
            // Reset before we looked: nothing to do.
            return self.sockets.make_spare(client);
        };
        if let RuleKind::Transparent = rule.kind {
            if Some(local.addr) == self.addr.own().map(IpAddress::Ipv4) {
                log::debug!("proxy: transparent connection to the instance itself, refusing");
                return self.refuse(client, now);
            }
            // smoltcp is built with IPv6 (for segmentation offload) and any-ip
            // takes every destination; upstream connections are IPv4 only.
            if !matches!(local.addr, IpAddress::Ipv4(_)) {
                log::debug!("proxy: transparent connection over IPv6, refusing");
                return self.refuse(client, now);
            }
        }
        let dest = upstream_dest(&rule.kind, local);
        let Some(port) = self.ports.alloc() else {
            log::warn!("proxy: no ephemeral port left, refusing");
            return self.refuse(client, now);
        };
        let role = Role::Upstream {
            client: self.sockets.size_of(client),
        };
        let Some(up) = self.sockets.take(now, role) else {
            self.ports.set(port, false);
            return self.refuse(client, now);
        };
        self.stats.accepted += 1;
        let defer = self.defer_upstream();
        self.conns
            .push(Conn::new(rule_idx, client, up, port, false, now));
        log::debug!(
            "proxy: rule {} accepted {:?} -> {dest}{}",
            rule_idx,
            self.sockets.tcp(client).remote_endpoint(),
            if defer {
                " (once the client's handshake is done)"
            } else {
                ""
            }
        );
        if !defer {
            self.open_upstream(self.conns.len() - 1, dest, now);
        }
    }

    /// Connect the upstream side of connection `idx` to `dest`; if that
    /// fails at once, the connection ends (the client is reset).
    fn open_upstream(&mut self, idx: usize, dest: IpEndpoint, now: Instant) -> bool {
        let c = &mut self.conns[idx];
        c.upstream_open = true;
        let (up, port) = (c.upstream, c.local_port);
        let s = self.sockets.set.get_mut::<tcp::Socket>(up);
        self.tune.apply(s);
        if let Err(e) = s.connect(self.iface.context(), dest, port) {
            log::debug!("proxy: connect to {dest} failed: {e}");
            self.end_conn(idx, End::UpstreamFailed, now);
            return false;
        }
        true
    }

    /// Connect the upstream side of the connections that waited for their
    /// client's handshake (`halfopen`) and whose client has now completed
    /// it. Returns whether any was.
    pub(super) fn open_deferred(&mut self, now: Instant) -> bool {
        let mut any = false;
        let mut i = self.conns.len();
        while i > 0 {
            i -= 1;
            let c = self.conns[i];
            if c.upstream_open || !splice::handshake_done(self.sockets.tcp(c.client).state()) {
                continue;
            }
            any = true;
            let rule = self.listeners.rule(usize::from(c.rule));
            match self.sockets.tcp(c.client).local_endpoint() {
                Some(local) => {
                    let dest = upstream_dest(&rule.kind, local);
                    self.open_upstream(i, dest, now);
                }
                None => self.end_conn(i, End::ClientReset, now),
            }
        }
        any
    }

    /// End connection `idx` (counted as `end`): free its port and retire
    /// its sockets. The last connection of `conns` takes its index.
    pub(super) fn end_conn(&mut self, idx: usize, end: End, now: Instant) {
        let c = self.end_conn_keep_sockets(idx, end);
        self.sockets.retire(c.client, now);
        self.sockets.retire(c.upstream, now);
    }

    /// End connection `idx` like [`Engine::end_conn`] but return it with
    /// its sockets still to be dealt with.
    pub(super) fn end_conn_keep_sockets(&mut self, idx: usize, end: End) -> Conn {
        let c = self.conns.swap_remove(idx);
        match end {
            End::Completed => self.stats.completed += 1,
            End::ClientReset => self.stats.client_resets += 1,
            End::UpstreamReset => self.stats.upstream_resets += 1,
            End::UpstreamFailed => self.stats.upstream_failures += 1,
            End::Timeout => self.stats.timeouts += 1,
        }
        log::debug!("proxy: connection on rule {} ended: {end:?}", c.rule);
        self.ports.set(c.local_port, false);
        if self.conns.is_empty() {
            self.idle_since = self.now;
        }
        c
    }

    /// One pass over every connection: splice, forward FINs and resets, apply
    /// timeouts, end finished connections, reap and refill. Returns whether
    /// anything changed.
    pub(super) fn service(&mut self, now: Instant) -> bool {
        let mut worked = self.dhcp_event();
        worked |= self.expire_half_open(now);
        worked |= self.accept(now);
        worked |= self.open_deferred(now);
        worked |= self.sockets.reap(now);
        if self.sockets.retry_at.is_some_and(|t| now >= t) {
            self.sockets.retry_at = None;
        }

        let Some(ended) = splice::step_all(
            &mut self.conns,
            &mut self.sockets.set,
            self.sockets.ledger.sockets() + EXTRA_SOCKETS,
            &self.tune,
            now,
            &mut self.stats,
            &mut worked,
        ) else {
            self.sockets.retry_at = Some(now + ALLOC_RETRY);
            return worked;
        };

        // End connections, highest index first so swap_remove keeps indices valid.
        for &(idx, end) in ended.iter().rev() {
            self.end_conn(idx, end, now);
            worked = true;
        }
        if !ended.is_empty() {
            self.sockets.reap(now);
        }
        self.refill(now);
        if self.sockets.stale {
            self.listeners
                .upgrade(&mut self.sockets, &self.tune, &self.addr, now);
        }
        worked
    }
}

/// Where a connection of a rule of `kind` whose client reached us at `local` goes.
fn upstream_dest(kind: &RuleKind, local: IpEndpoint) -> IpEndpoint {
    match *kind {
        RuleKind::Reverse {
            upstream,
            upstream_port,
        } => IpEndpoint::new(IpAddress::Ipv4(upstream), upstream_port),
        RuleKind::Transparent => local,
    }
}
