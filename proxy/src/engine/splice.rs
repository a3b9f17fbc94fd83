//! One connection's life once accepted: the splice.
//!
//! * **Splice.** Bytes are moved straight from one socket's receive buffer
//!   into the other socket's transmit buffer, never more than the transmit
//!   buffer can take, so a slow reader shrinks the window advertised to the
//!   fast writer (backpressure) and no byte is ever queued anywhere else.
//! * **Half-close.** A FIN from one side is forwarded (as `close()` on the
//!   other socket) once every byte before it has been moved; the other
//!   direction keeps flowing.
//! * **Resets.** A reset (or smoltcp's own timeout) on either socket aborts
//!   the other one, which sends an RST. Upstream refused, unreachable or not
//!   connected within `connect_timeout` resets the client; a client that
//!   does not complete its handshake within `connect_timeout` is dropped
//!   with its upstream.
//! * **Idle timeout** aborts both sides after `idle_timeout` without a byte
//!   moved.
//!
//! What happens to the sockets afterwards (spare, dying) is the socket
//! pool's business; this module only says how a connection ended.

use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::socket::AnySocket;
use smoltcp::time::Instant;

use super::rightsize::RcvSpace;
use super::stats::Stats;
use super::tuning::Tuning;

/// One connection: its two sockets and how far it has come.
#[derive(Debug, Clone, Copy)]
pub(super) struct Conn {
    pub(super) rule: u8,
    pub(super) client: SocketHandle,
    pub(super) upstream: SocketHandle,
    pub(super) local_port: u16,
    pub(super) started: Instant,
    pub(super) last_active: Instant,
    /// The client handshake completed.
    pub(super) client_ready: bool,
    /// The upstream handshake completed.
    pub(super) upstream_ready: bool,
    /// The upstream socket was told to connect (see `halfopen`: under a SYN
    /// flood it waits until the client's handshake completes).
    pub(super) upstream_open: bool,
    /// A FIN was received from the client / from upstream.
    pub(super) client_fin: bool,
    pub(super) upstream_fin: bool,
    /// We forwarded a FIN to upstream / to the client.
    pub(super) fin_to_upstream: bool,
    pub(super) fin_to_client: bool,
    /// In its last step a buffer of that socket (client side, upstream
    /// side) limited the connection: its transmit buffer was full with the
    /// other socket's data left waiting after the splice (unacknowledged
    /// data fills it when the window is what limits the sender), or its
    /// receive buffer had filled to half or more since the step before and
    /// the splice emptied it (a burst the engine took late; a receive buffer
    /// that stays full waits on the other socket, whose turn it is). The
    /// `growth` module grows that buffer then.
    pub(super) pressed: [Pressed; 2],
    /// What each socket's receive buffer delivered per round trip (client
    /// side, upstream side): module `rightsize`.
    pub(super) rcv: [RcvSpace; 2],
}

/// Which buffers of a socket limited its connection in the last step
/// ([`Conn::pressed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Pressed {
    pub(super) rx: bool,
    pub(super) tx: bool,
}

impl Pressed {
    pub(super) fn any(self) -> bool {
        self.rx || self.tx
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Completed,
    ClientReset,
    UpstreamReset,
    UpstreamFailed,
    Timeout,
}

impl Conn {
    /// A connection of rule `rule` just accepted on `client`, connecting
    /// `upstream` from `local_port` (already, if `upstream_open`).
    pub(super) fn new(
        rule: usize,
        client: SocketHandle,
        upstream: SocketHandle,
        local_port: u16,
        upstream_open: bool,
        now: Instant,
    ) -> Conn {
        Conn {
            rule: rule as u8,
            client,
            upstream,
            local_port,
            started: now,
            last_active: now,
            client_ready: false,
            upstream_ready: false,
            upstream_open,
            client_fin: false,
            upstream_fin: false,
            fin_to_upstream: false,
            fin_to_client: false,
            pressed: [Pressed::default(); 2],
            rcv: [RcvSpace::default(); 2],
        }
    }

    /// When this connection's timeouts (handshake, idle) fall due.
    pub(super) fn deadlines(&self, tune: &Tuning) -> impl Iterator<Item = Instant> {
        let handshake = (!(self.client_ready && self.upstream_ready))
            .then(|| self.started + tune.connect_timeout);
        let idle = tune.idle_timeout.map(|idle| self.last_active + idle);
        handshake.into_iter().chain(idle)
    }
}

/// Advance every connection of `conns` one step. `sockets` is a bound on the
/// TCP sockets in `set`. Returns the connections that ended (index, how), in
/// index order, or `None` if the socket table could not be allocated (the
/// caller retries later). `worked` is set if anything moved.
pub(super) fn step_all(
    conns: &mut [Conn],
    set: &mut SocketSet<'static>,
    sockets: usize,
    tune: &Tuning,
    now: Instant,
    stats: &mut Stats,
    worked: &mut bool,
) -> Option<Vec<(usize, End)>> {
    // A table of every TCP socket, in handle order, so that two sockets can
    // be borrowed mutably at once and bytes moved without a copy in between.
    let mut table: Vec<(SocketHandle, &mut tcp::Socket<'static>)> = Vec::new();
    if table.try_reserve_exact(sockets).is_err() {
        return None;
    }
    for (h, s) in set.iter_mut() {
        if let Some(t) = tcp::Socket::downcast_mut(s) {
            if table.len() < table.capacity() {
                table.push((h, t));
            }
        }
    }
    let mut ended: Vec<(usize, End)> = Vec::new();
    for (idx, c) in conns.iter_mut().enumerate() {
        let (Ok(ci), Ok(ui)) = (
            table.binary_search_by_key(&c.client, |e| e.0),
            table.binary_search_by_key(&c.upstream, |e| e.0),
        ) else {
            continue;
        };
        let Ok([(_, cs), (_, us)]) = table.get_disjoint_mut([ci, ui]) else {
            continue;
        };
        let end = step_conn(c, cs, us, tune, now, stats, worked);
        if let Some(e) = end {
            if ended.try_reserve(1).is_ok() {
                ended.push((idx, e));
            }
        }
    }
    Some(ended)
}

/// Advance one connection. Returns how it ended, if it did.
fn step_conn(
    c: &mut Conn,
    cs: &mut tcp::Socket<'static>,
    us: &mut tcp::Socket<'static>,
    tune: &Tuning,
    now: Instant,
    stats: &mut Stats,
    worked: &mut bool,
) -> Option<End> {
    let (cst, ust) = (cs.state(), us.state());
    c.client_ready |= handshake_done(cst);
    c.client_fin |= fin_received(cst);
    // Until it is opened the upstream socket is whatever spare it was
    // (TIME-WAIT, say): its state says nothing about this connection.
    if c.upstream_open {
        c.upstream_ready |= handshake_done(ust);
        c.upstream_fin |= fin_received(ust);
    }

    let opened = c.upstream_open;
    let abort_both = |cs: &mut tcp::Socket<'static>, us: &mut tcp::Socket<'static>| {
        if cs.is_active() {
            cs.abort();
        }
        // An upstream socket never opened has no peer of this connection's.
        if opened && us.is_active() {
            us.abort();
        }
    };

    // A reset in SYN-RECEIVED sends a listen()ed socket back to LISTEN.
    if cst == State::Listen {
        abort_both(cs, us);
        return Some(End::ClientReset);
    }
    // Closed without both FINs exchanged on that socket: reset or smoltcp timeout.
    if cst == State::Closed && !(c.client_fin && c.fin_to_client) {
        abort_both(cs, us);
        return Some(End::ClientReset);
    }
    if !c.upstream_open {
        // The upstream side waits for the client's handshake (`halfopen`),
        // which `syn_timeout` bounds; the engine connects it once done.
        return None;
    }
    if ust == State::Closed && !(c.upstream_fin && c.fin_to_upstream) {
        abort_both(cs, us);
        return Some(if c.upstream_ready {
            End::UpstreamReset
        } else {
            End::UpstreamFailed
        });
    }
    if !(c.client_ready && c.upstream_ready) && now >= c.started + tune.connect_timeout {
        abort_both(cs, us);
        return Some(if c.upstream_ready {
            End::Timeout
        } else {
            End::UpstreamFailed
        });
    }
    if let Some(idle) = tune.idle_timeout {
        if now >= c.last_active + idle {
            abort_both(cs, us);
            return Some(End::Timeout);
        }
    }

    let rx_filled = |s: &tcp::Socket<'static>| 2 * s.recv_queue() >= s.recv_capacity();
    let rx_pressed = [rx_filled(cs), rx_filled(us)];
    let up = pump(cs, us);
    let down = pump(us, cs);
    // A receive buffer that filled to half between steps and was emptied
    // (a burst the engine was slow to take), or a transmit buffer that left
    // the other socket's data waiting (it is full: the window is short).
    let (c_left, u_left) = (cs.recv_queue() > 0, us.recv_queue() > 0);
    c.pressed = [
        Pressed {
            rx: rx_pressed[0] && !c_left,
            tx: u_left,
        },
        Pressed {
            rx: rx_pressed[1] && !u_left,
            tx: c_left,
        },
    ];
    c.rcv[0].account(now, up, cs.rtt(), cs.recv_capacity());
    c.rcv[1].account(now, down, us.rtt(), us.recv_capacity());
    if up + down > 0 {
        stats.bytes_up += up as u64;
        stats.bytes_down += down as u64;
        c.last_active = now;
        *worked = true;
    }

    // Forward a FIN once everything before it has been moved.
    if c.client_fin
        && !c.fin_to_upstream
        && cs.recv_queue() == 0
        && matches!(us.state(), State::Established | State::CloseWait)
    {
        us.close();
        c.fin_to_upstream = true;
        c.last_active = now;
        *worked = true;
    }
    if c.upstream_fin
        && !c.fin_to_client
        && us.recv_queue() == 0
        && matches!(cs.state(), State::Established | State::CloseWait)
    {
        cs.close();
        c.fin_to_client = true;
        c.last_active = now;
        *worked = true;
    }

    let done = |s: State| matches!(s, State::Closed | State::TimeWait);
    if c.fin_to_client && c.fin_to_upstream && done(cs.state()) && done(us.state()) {
        return Some(End::Completed);
    }
    None
}

fn fin_received(s: State) -> bool {
    matches!(
        s,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    )
}

pub(super) fn handshake_done(s: State) -> bool {
    !matches!(
        s,
        State::Closed | State::Listen | State::SynSent | State::SynReceived
    )
}

/// Move bytes from `src`'s receive buffer into `dst`'s transmit buffer, as many
/// as `dst` has room for. Returns the count.
fn pump(src: &mut tcp::Socket<'_>, dst: &mut tcp::Socket<'_>) -> usize {
    let mut total = 0;
    // At most two rounds per buffer (ring wrap-around on either side), so the
    // loop ends; bounded anyway.
    for _ in 0..4 {
        if !src.can_recv() || !dst.may_send() {
            break;
        }
        let room = dst.send_capacity() - dst.send_queue();
        if room == 0 {
            break;
        }
        let moved = src.recv(|data| {
            let n = data.len().min(room);
            let sent = dst.send_slice(&data[..n]).unwrap_or(0);
            (sent, sent)
        });
        match moved {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    total
}
