//! Scripted smoltcp endpoints: clients and servers running checked flows.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};

use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address, Ipv4Cidr,
};

use super::{mac, pattern, Net};

/// What a stream end does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Never close.
    Never,
    /// Close (FIN) once everything was sent.
    AfterSend,
    /// Close once everything was sent and the peer's FIN was received.
    AfterPeerFin,
    /// Abort (RST) once this many bytes were received.
    AbortAfterRecv(usize),
    /// Abort (RST) once this many bytes were sent.
    AbortAfterSend(usize),
}

/// One TCP connection of a [`Host`], with a script and what it saw.
#[derive(Debug)]
pub struct Flow {
    pub handle: SocketHandle,
    /// What to send.
    pub data: Vec<u8>,
    pub sent: usize,
    /// Echo what is received instead of sending `data`.
    pub echo: bool,
    pub close: Close,
    /// Everything received, or only its length when `keep` is false.
    pub received: Vec<u8>,
    pub received_len: usize,
    pub keep: bool,
    /// Saw the peer's FIN.
    pub fin: bool,
    /// The connection was reset (or never established).
    pub reset: bool,
    pub established: bool,
    pub closed_by_us: bool,
    pub aborted_by_us: bool,
    /// The socket is finished with (closed, TIME-WAIT or reset).
    pub done: bool,
    /// When the flow started, was established, and finished.
    pub t_start: Instant,
    pub t_established: Option<Instant>,
    pub t_done: Option<Instant>,
    pub t_first_byte: Option<Instant>,
    /// When the peer's FIN was seen, and how much had been sent by then.
    pub t_fin: Option<Instant>,
    pub sent_at_fin: usize,
    reclaimed: bool,
}

impl Flow {
    fn new(handle: SocketHandle, data: Vec<u8>, echo: bool, close: Close, now: Instant) -> Flow {
        Flow {
            handle,
            data,
            sent: 0,
            echo,
            close,
            received: Vec::new(),
            received_len: 0,
            keep: true,
            fin: false,
            reset: false,
            established: false,
            closed_by_us: false,
            aborted_by_us: false,
            done: false,
            t_start: now,
            t_established: None,
            t_done: None,
            t_first_byte: None,
            t_fin: None,
            sent_at_fin: 0,
            reclaimed: false,
        }
    }
}

/// What a listening [`Host`] does with each accepted connection.
#[derive(Debug, Clone)]
pub enum Serve {
    /// Echo everything; close after the peer's FIN.
    Echo,
    /// Read and keep everything; close after the peer's FIN.
    Sink,
    /// Send this many bytes of `pattern(seed)` and close; keep what is received.
    Source { len: usize, seed: u64 },
    /// Read; after the peer's FIN send `len` bytes of `pattern(seed)` and close.
    RespondAfterFin { len: usize, seed: u64 },
    /// Read, and abort after this many bytes.
    AbortAfter(usize),
    /// Accept and do nothing (for idle tests).
    Silent,
}

/// A smoltcp endpoint on the simulated network.
pub struct Host {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub port: usize,
    pub flows: Vec<Flow>,
    listeners: Vec<SocketHandle>,
    listen_port: u16,
    serve: Option<Serve>,
    buf: usize,
    next_port: u16,
    /// Keep received bytes (false for large benchmarks: only count them).
    pub keep: bool,
    /// Connections accepted by a listening host.
    pub accepted: usize,
}

impl Host {
    /// A host on `port` of `net` with address `ip` and optional gateway.
    pub fn new(
        net: &mut Net,
        port: usize,
        n: u8,
        ip: Ipv4Cidr,
        gw: Option<Ipv4Address>,
        buf: usize,
    ) -> Host {
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(mac(n)));
        cfg.random_seed = 0x1000 + n as u64;
        let now = net.now();
        let mut iface = Interface::new(cfg, &mut net.port(port), now);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::Ipv4(ip));
        });
        if let Some(g) = gw {
            let _ = iface.routes_mut().add_default_ipv4_route(g);
        }
        Host {
            iface,
            sockets: SocketSet::new(Vec::new()),
            port,
            flows: Vec::new(),
            listeners: Vec::new(),
            listen_port: 0,
            serve: None,
            buf,
            next_port: 40000,
            keep: true,
            accepted: 0,
        }
    }

    pub fn mac(&self) -> EthernetAddress {
        match self.iface.hardware_addr() {
            HardwareAddress::Ethernet(m) => m,
            #[allow(unreachable_patterns)]
            _ => EthernetAddress([0; 6]),
        }
    }

    fn new_socket(&mut self) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.buf]),
            tcp::SocketBuffer::new(vec![0; self.buf]),
        );
        self.sockets.add(s)
    }

    /// Serve `port` with `backlog` listening sockets, each accepted connection as `serve`.
    pub fn listen(&mut self, port: u16, backlog: usize, serve: Serve) {
        self.listen_port = port;
        self.serve = Some(serve);
        for _ in 0..backlog {
            let h = self.new_socket();
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            s.set_ack_delay(None);
            let _ = s.listen(port);
            self.listeners.push(h);
        }
    }

    /// Open a connection to `to`, sending `data` (or echoing), with a close script.
    /// Returns the flow index.
    pub fn connect(
        &mut self,
        to: (Ipv4Address, u16),
        data: Vec<u8>,
        close: Close,
        now: Instant,
    ) -> usize {
        let h = self.new_socket();
        let port = self.next_port;
        self.next_port = if self.next_port >= 65000 {
            40000
        } else {
            self.next_port + 1
        };
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        s.set_ack_delay(None);
        let r = s.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::Ipv4(to.0), to.1),
            port,
        );
        let mut f = Flow::new(h, data, false, close, now);
        f.keep = self.keep;
        if r.is_err() {
            f.reset = true;
            f.done = true;
        }
        self.flows.push(f);
        self.flows.len() - 1
    }

    /// Poll the interface and run every flow until nothing more happens now.
    pub fn poll(&mut self, net: &mut Net) -> bool {
        let now = net.now();
        let mut any = false;
        for _ in 0..64 {
            self.iface
                .poll(now, &mut net.port(self.port), &mut self.sockets);
            let worked = self.step(now);
            any |= worked;
            if !worked {
                break;
            }
        }
        any
    }

    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }

    fn accept(&mut self, now: Instant) -> bool {
        let mut any = false;
        let Some(serve) = self.serve.clone() else {
            return false;
        };
        for i in 0..self.listeners.len() {
            let h = self.listeners[i];
            if self.sockets.get::<tcp::Socket>(h).state() == State::Listen {
                continue;
            }
            any = true;
            self.accepted += 1;
            let (data, echo, close) = match serve {
                Serve::Echo => (Vec::new(), true, Close::AfterPeerFin),
                Serve::Sink => (Vec::new(), false, Close::AfterPeerFin),
                Serve::Source { len, seed } => (pattern(seed, len), false, Close::AfterSend),
                Serve::RespondAfterFin { .. } => (Vec::new(), false, Close::AfterPeerFin),
                Serve::AbortAfter(n) => (Vec::new(), false, Close::AbortAfterRecv(n)),
                Serve::Silent => (Vec::new(), false, Close::Never),
            };
            let mut f = Flow::new(h, data, echo, close, now);
            f.keep = self.keep;
            self.flows.push(f);
            // Replace the listener.
            let nh = self.new_socket();
            let s = self.sockets.get_mut::<tcp::Socket>(nh);
            s.set_ack_delay(None);
            let _ = s.listen(self.listen_port);
            self.listeners[i] = nh;
        }
        any
    }

    fn step(&mut self, now: Instant) -> bool {
        let mut worked = self.accept(now);
        let respond = match self.serve {
            Some(Serve::RespondAfterFin { len, seed }) => Some((len, seed)),
            _ => None,
        };
        for f in &mut self.flows {
            if f.done {
                continue;
            }
            let s = self.sockets.get_mut::<tcp::Socket>(f.handle);
            if s.state() == State::Listen {
                // Reset during the handshake sent an accepted socket back to LISTEN.
                s.abort();
                f.reset = true;
                f.done = true;
                f.t_done = Some(now);
                continue;
            }
            if !f.established && s.may_send() {
                f.established = true;
                f.t_established = Some(now);
            }
            // Receive.
            loop {
                let keep = f.keep;
                let r = s.recv(|d| {
                    if keep {
                        f.received.extend_from_slice(d);
                    }
                    (d.len(), d.len())
                });
                match r {
                    Ok(0) => break,
                    Ok(n) => {
                        if f.t_first_byte.is_none() {
                            f.t_first_byte = Some(now);
                        }
                        f.received_len += n;
                        worked = true;
                    }
                    Err(tcp::RecvError::Finished) => {
                        if !f.fin {
                            f.fin = true;
                            f.t_fin = Some(now);
                            f.sent_at_fin = f.sent;
                            worked = true;
                            if let Some((len, seed)) = respond {
                                f.data = pattern(seed, len);
                            }
                        }
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Send.
            if s.may_send() {
                let src: &[u8] = if f.echo { &f.received } else { &f.data };
                if f.sent < src.len() {
                    let n = s.send_slice(&src[f.sent..]).unwrap_or(0);
                    if n > 0 {
                        f.sent += n;
                        worked = true;
                    }
                }
            }
            let all_sent = if f.echo {
                f.sent == f.received.len()
            } else {
                f.sent == f.data.len()
            };
            match f.close {
                Close::AfterSend if all_sent && !f.closed_by_us && s.may_send() => {
                    s.close();
                    f.closed_by_us = true;
                    worked = true;
                }
                Close::AfterPeerFin if all_sent && f.fin && !f.closed_by_us => {
                    s.close();
                    f.closed_by_us = true;
                    worked = true;
                }
                Close::AbortAfterRecv(n) if f.received_len >= n && !f.aborted_by_us => {
                    s.abort();
                    f.aborted_by_us = true;
                    worked = true;
                }
                Close::AbortAfterSend(n) if f.sent >= n && !f.aborted_by_us => {
                    s.abort();
                    f.aborted_by_us = true;
                    worked = true;
                }
                _ => {}
            }
            // Finished?
            let st = s.state();
            if st == State::TimeWait || (st == State::Closed && s.remote_endpoint().is_none()) {
                if st == State::Closed && !(f.fin && f.closed_by_us) && !f.aborted_by_us {
                    f.reset = true;
                }
                f.done = true;
                f.t_done = Some(now);
                worked = true;
            }
        }
        worked
    }

    /// Drop finished flows' sockets (keeps the flow records).
    pub fn reclaim(&mut self) {
        for f in &mut self.flows {
            if f.done && !f.reclaimed {
                self.sockets.remove(f.handle);
                f.reclaimed = true;
            }
        }
    }
}
