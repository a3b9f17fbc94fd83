//! The runtime's phases on the host: a fake clock that the sleeper moves to
//! each deadline, the real `Control` over the fake xenstored, and scripted
//! NIC and engine fakes.

use super::phases::Serve;
use super::timers::{self, Idle, StatsPublisher, Timers, STATS_PERIOD_NS};
use super::xen::XsToolstack;
use super::*;
use crate::xenstore::fake::{self, watch_event, Server};
use crate::xenstore::wire::MsgType;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use netfront::{BackendFeatures, Reason};
use proxy::config::Config;

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// Xen system time is the host's uptime: never near zero when we run.
const T0: u64 = 100 * SEC;

std::thread_local! {
    /// The report lines of this test's runtime.
    static CONSOLE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn capture(line: core::fmt::Arguments) {
    CONSOLE.with(|c| c.borrow_mut().push(line.to_string()));
}

fn console() -> Vec<String> {
    CONSOLE.with(|c| c.borrow().clone())
}

/// Every wait the runtime made: the ports and the deadline.
type Waits = Rc<RefCell<Vec<(WakeOn, Option<u64>)>>>;

#[derive(Clone)]
struct FakeClock(Rc<Cell<u64>>);

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.get()
    }
    fn cpu_ns(&self) -> u64 {
        self.0.get()
    }
    fn runstate(&self) -> Option<Cpu> {
        None
    }
}

/// Sleeps by moving the clock to the deadline (nothing else wakes it),
/// after running the test's hook; records every wait.
struct FakeSleeper {
    now: Rc<Cell<u64>>,
    waits: Waits,
    hook: Box<dyn FnMut(usize)>,
    xs_clears: Rc<Cell<u32>>,
}

impl Sleeper for FakeSleeper {
    fn wait(&mut self, on: WakeOn, deadline_ns: Option<u64>) {
        let n = {
            let mut w = self.waits.borrow_mut();
            w.push((on, deadline_ns));
            w.len()
        };
        (self.hook)(n);
        if let Some(d) = deadline_ns {
            self.now.set(self.now.get().max(d));
        }
    }
    fn take_xenstore_event(&mut self) {
        self.xs_clears.set(self.xs_clears.get() + 1);
    }
}

#[derive(Default)]
struct FakeNic {
    events: VecDeque<Event>,
    delay_ms: Option<u64>,
    stats: String,
    closed: bool,
    disconnected: bool,
    /// Polls after `close` before it reports `Released`.
    release_after: u32,
    polls_after_close: u32,
    backend_checks: u32,
    /// Where the backend is, once the handshake "read" it.
    backend: Option<String>,
    /// Connected with this MAC on this poll (counting from 1).
    connect_on_poll: Option<(u32, [u8; 6])>,
    polls: u32,
    /// A vif is attached (again) with this MAC: `reconnect_if_attached`
    /// starts a handshake that connects on the next poll.
    attached: Option<[u8; 6]>,
    reconnects: u32,
    /// The new handshake fails at once (Disconnected again).
    reconnect_fails: bool,
    /// TX frames the backend has not taken; one is taken per poll.
    tx_in_flight: usize,
}

const NIC_PORT: u32 = 9;

impl Nic for FakeNic {
    fn poll(&mut self, _now_ms: u64) -> Option<Event> {
        if self.closed {
            self.polls_after_close += 1;
            if self.polls_after_close > self.release_after {
                return Some(Event::Released { leaked_pages: 0 });
            }
            return None;
        }
        self.polls += 1;
        self.tx_in_flight = self.tx_in_flight.saturating_sub(1);
        if matches!(self.events.front(), Some(Event::Released { .. })) {
            self.disconnected = true;
        }
        if let Some((n, mac)) = self.connect_on_poll {
            if n == self.polls {
                return Some(Event::Connected {
                    mac,
                    mtu: 1500,
                    backend: BackendFeatures::default(),
                });
            }
        }
        self.events.pop_front()
    }
    fn poll_delay(&self, _now_ms: u64) -> Option<u64> {
        self.delay_ms
    }
    fn port(&self) -> Option<u32> {
        Some(NIC_PORT)
    }
    fn check_backend_soon(&mut self) {
        self.backend_checks += 1;
    }
    fn backend_state_path(&self) -> Option<String> {
        self.backend.as_ref().map(|b| format!("{b}/state"))
    }
    fn offload(&self) -> String {
        "off".into()
    }
    fn stats(&self) -> String {
        self.stats.clone()
    }
    fn notifies(&self) -> u64 {
        7
    }
    fn close(&mut self) {
        self.closed = true;
    }
    fn is_disconnected(&self) -> bool {
        self.disconnected
    }
    fn tx_in_flight(&self) -> usize {
        self.tx_in_flight
    }
    fn reconnect_if_attached(&mut self) -> bool {
        let Some(mac) = self.attached.filter(|_| self.disconnected) else {
            return false;
        };
        self.reconnects += 1;
        if self.reconnect_fails {
            self.events.push_back(Event::Disconnected(Reason::Failed(
                netfront::Error::NoDevice,
            )));
            return true;
        }
        self.disconnected = false;
        self.events.push_back(Event::Connected {
            mac,
            mtu: 1500,
            backend: BackendFeatures::default(),
        });
        true
    }
}

#[derive(Default)]
struct FakeProxy {
    delay: Option<Duration>,
    idle_since: Option<Instant>,
    stats: String,
    polls: u32,
    dhcp: bool,
    ip: Option<Ipv4Cidr>,
    /// The DHCP lease arrives on this poll.
    lease_on_poll: Option<u32>,
    /// Connections held.
    active: usize,
    /// The drain: its deadline, once started.
    drain_deadline: Option<Instant>,
    drain_starts: u32,
    /// The open connections end by themselves at this time.
    finish_at: Option<Instant>,
    /// Connections reset at the drain deadline.
    resets: usize,
    /// Polls after the reset before the RSTs are out.
    rst_polls: u32,
    /// The RSTs never leave (a peer's link is gone).
    rst_stuck: bool,
    /// Frames the reset hands to the NIC (its RSTs).
    rst_frames: usize,
    /// `link_up` calls: the MAC and when.
    link_ups: Vec<([u8; 6], Instant)>,
}

impl Proxy<FakeNic> for FakeProxy {
    fn poll(&mut self, now: Instant, nic: &mut FakeNic) {
        self.polls += 1;
        if self.dhcp && self.lease_on_poll == Some(self.polls) {
            self.ip = Some("10.0.0.9/24".parse().unwrap());
        }
        if self.active > 0 && self.finish_at.is_some_and(|t| now >= t) {
            self.active = 0;
        }
        match self.drain_deadline {
            Some(d) if self.active > 0 && now >= d => {
                self.resets = self.active;
                self.active = 0;
                nic.tx_in_flight += self.rst_frames;
            }
            Some(_) if self.active == 0 && self.rst_polls > 0 && !self.rst_stuck => {
                self.rst_polls -= 1
            }
            _ => {}
        }
    }
    fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        match self.drain_deadline {
            Some(d) if self.active > 0 => Some(self.delay.map_or(d - now, |x| x.min(d - now))),
            Some(_) if self.rst_polls > 0 => Some(Duration::from_millis(1)),
            _ => self.delay,
        }
    }
    fn idle_since(&self) -> Option<Instant> {
        self.idle_since
    }
    fn stats(&self) -> String {
        self.stats.clone()
    }
    fn active(&self) -> usize {
        self.active
    }
    fn start_drain(&mut self, now: Instant, timeout: Duration) {
        self.drain_starts += 1;
        self.drain_deadline.get_or_insert(now + timeout);
    }
    fn drained(&self) -> bool {
        self.drain_deadline.is_some() && self.active == 0 && self.rst_polls == 0
    }
    fn link_up(&mut self, mac: [u8; 6], now: Instant) {
        self.link_ups.push((mac, now));
    }
    fn start_dhcp(&mut self) {
        self.dhcp = true;
    }
    fn ipv4(&self) -> Option<Ipv4Cidr> {
        self.ip
    }
}

type Xs = XsToolstack<crate::xenstore::ring::testpage::TestPage, fake::FakeEvents>;

struct Rig {
    rt: Runtime<FakeClock, FakeSleeper, Xs>,
    now: Rc<Cell<u64>>,
    waits: Waits,
    srv: Rc<RefCell<Server>>,
}

fn rig() -> Rig {
    let now = Rc::new(Cell::new(T0));
    let waits = Rc::new(RefCell::new(Vec::new()));
    let (client, srv) = fake::setup();
    let toolstack = XsToolstack::init(Rc::new(RefCell::new(client))).unwrap();
    let sleeper = FakeSleeper {
        now: now.clone(),
        waits: waits.clone(),
        hook: Box::new(|_| {}),
        xs_clears: Rc::new(Cell::new(0)),
    };
    CONSOLE.with(|c| c.borrow_mut().clear());
    let rt = Runtime::new(
        FakeClock(now.clone()),
        sleeper,
        toolstack,
        || (10 << 10, 100 << 10),
        capture,
    );
    Rig {
        rt,
        now,
        waits,
        srv,
    }
}

impl Rig {
    fn at(&self) -> Instant {
        Instant::from_micros((self.now.get() / 1000) as i64)
    }
    fn last_deadline(&self) -> Option<u64> {
        self.waits.borrow().last().unwrap().1
    }
    /// Writes of `path` the fake xenstored has taken so far, with values.
    fn writes(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}\0");
        let srv = self.srv.borrow();
        srv.log
            .iter()
            .filter(|(ty, _, _)| *ty == MsgType::Write as u32)
            .filter_map(|(_, _, p)| p.strip_prefix(prefix.as_bytes()))
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect()
    }
    /// Requests of type `ty` whose payload starts with `prefix` that the fake
    /// xenstored has taken so far.
    fn requests(&self, ty: MsgType, prefix: &str) -> usize {
        let srv = self.srv.borrow();
        srv.log
            .iter()
            .filter(|(t, _, p)| *t == ty as u32 && p.starts_with(prefix.as_bytes()))
            .count()
    }
    /// The toolstack writes `control/shutdown` and the watch fires.
    fn request(&self, what: &str) {
        let mut srv = self.srv.borrow_mut();
        srv.tree.insert("control/shutdown".into(), what.into());
        srv.send_raw(&watch_event("control/shutdown", "shutdown"));
    }
    fn tree(&self, path: &str) -> Option<String> {
        self.srv.borrow().tree.get(path).cloned()
    }
}

#[test]
fn serve_deadline_is_the_earliest_of_the_four_timers() {
    let now = 5 * SEC;
    let all = Timers {
        engine: Some(Duration::from_millis(30)),
        nic_ms: Some(40),
        idle_left_ns: Some(50 * MS),
    };
    assert_eq!(timers::serve_deadline(now, all), now + 30 * MS);
    assert_eq!(
        timers::serve_deadline(
            now,
            Timers {
                nic_ms: Some(20),
                ..all
            }
        ),
        now + 20 * MS
    );
    assert_eq!(
        timers::serve_deadline(
            now,
            Timers {
                idle_left_ns: Some(10 * MS),
                ..all
            }
        ),
        now + 10 * MS
    );
    // Nothing sooner: the stats refresh, one period away.
    assert_eq!(
        timers::serve_deadline(now, Timers::default()),
        now + STATS_PERIOD_NS
    );
    let late = Timers {
        engine: Some(Duration::from_secs(5)),
        nic_ms: Some(9000),
        idle_left_ns: Some(3 * SEC),
    };
    assert_eq!(timers::serve_deadline(now, late), now + STATS_PERIOD_NS);
    // A zero delay (the engine has work left) is "now": no sleep.
    assert_eq!(
        timers::serve_deadline(
            now,
            Timers {
                engine: Some(Duration::ZERO),
                ..all
            }
        ),
        now
    );
}

#[test]
fn serve_sleeps_until_the_earliest_timer_on_both_ports() {
    let mut r = rig();
    let mut nic = FakeNic::default();
    let mut proxy = FakeProxy {
        idle_since: Some(r.at()),
        ..Default::default()
    };
    let mut s = Serve::new(0, Some(core::time::Duration::from_secs(60)));
    let cases: [(Option<u64>, Option<u64>, u64); 4] = [
        // (engine ms, netfront ms, expected sleep ms)
        (Some(7), Some(12), 7),
        (None, Some(12), 12),
        (Some(300), None, 300),
        (None, None, 1000),
    ];
    for (engine, nic_ms, want) in cases {
        proxy.delay = engine.map(Duration::from_millis);
        nic.delay_ms = nic_ms;
        let start = r.now.get();
        assert_eq!(r.rt.serve_pass(&mut s, &mut nic, &mut proxy), None);
        assert_eq!(
            r.last_deadline(),
            Some(start + want * MS),
            "engine {engine:?} nic {nic_ms:?}"
        );
        let on = r.waits.borrow().last().unwrap().0;
        assert_eq!(
            on,
            WakeOn {
                xenstore: true,
                nic: Some(NIC_PORT)
            }
        );
    }
    // idle_exit's remaining time is a timer too: idle since T0, 1.319 s
    // gone, a 1.5 s limit: wake at T0 + 1.5 s.
    assert_eq!(r.now.get(), T0 + 1319 * MS);
    let mut s = Serve::new(0, Some(core::time::Duration::from_millis(1500)));
    proxy.delay = None;
    nic.delay_ms = None;
    assert_eq!(r.rt.serve_pass(&mut s, &mut nic, &mut proxy), None);
    assert_eq!(r.last_deadline(), Some(T0 + 1500 * MS));
}

#[test]
fn idle_exit_fires_after_exactly_the_configured_idle_time() {
    let mut r = rig();
    let mut nic = FakeNic {
        release_after: 2,
        ..Default::default()
    };
    let mut proxy = FakeProxy {
        idle_since: Some(r.at()),
        delay: Some(Duration::from_millis(700)),
        ..Default::default()
    };
    let mut s = Serve::new(0, Some(core::time::Duration::from_secs(3)));
    let mut passes = Vec::new();
    let exit = loop {
        passes.push(r.now.get() - T0);
        if let Some(exit) = r.rt.serve_pass(&mut s, &mut nic, &mut proxy) {
            break exit;
        }
        assert!(passes.len() < 50, "idle_exit never fired");
    };
    assert_eq!(exit, Exit::Shutdown(ShutdownReason::Poweroff));
    // Woken every 700 ms by the engine, then exactly at the limit.
    assert_eq!(
        passes,
        [0, 700 * MS, 1400 * MS, 2100 * MS, 2800 * MS, 3 * SEC]
    );
    // The exit drains netfront: closed, and waited on (NIC port only) until Released.
    assert!(nic.closed);
    assert_eq!(nic.polls_after_close, 3);
    // Netfront was told to read the backend's state on each of those
    // polls: its own retry interval is longer than this wait.
    assert_eq!(nic.backend_checks, 3);
    assert_eq!(
        r.waits.borrow().last().unwrap().0,
        WakeOn {
            xenstore: false,
            nic: Some(NIC_PORT)
        }
    );
}

#[test]
fn idle_exit_waits_while_connections_are_open() {
    let mut r = rig();
    let mut nic = FakeNic {
        disconnected: true,
        ..Default::default()
    };
    let mut proxy = FakeProxy::default();
    let mut s = Serve::new(0, Some(core::time::Duration::from_secs(3)));
    // A connection stays open for 20 s: no exit, and no idle timer.
    while r.now.get() < T0 + 20 * SEC {
        assert_eq!(r.rt.serve_pass(&mut s, &mut nic, &mut proxy), None);
        assert_eq!(
            r.last_deadline(),
            Some(r.now.get()),
            "only the 1 s stats refresh"
        );
    }
    // It closes at 20.5 s (between passes): exit 3 s after that.
    let closed_at = r.now.get() - 500 * MS;
    proxy.idle_since = Some(Instant::from_micros((closed_at / 1000) as i64));
    let exit = loop {
        if let Some(exit) = r.rt.serve_pass(&mut s, &mut nic, &mut proxy) {
            break exit;
        }
        assert!(r.now.get() <= closed_at + 3 * SEC);
    };
    assert_eq!(exit, Exit::Shutdown(ShutdownReason::Poweroff));
    assert_eq!(r.now.get(), closed_at + 3 * SEC);
    // Already disconnected: nothing to wait for.
    assert!(nic.closed);
    assert_eq!(nic.polls_after_close, 0);
}

#[test]
fn idle_exit_rules() {
    let limit = Some(core::time::Duration::from_secs(3));
    let since = Instant::from_secs(10);
    assert_eq!(
        timers::idle_exit(None, Some(since), Instant::from_secs(100)),
        Idle::Off
    );
    assert_eq!(
        timers::idle_exit(limit, None, Instant::from_secs(100)),
        Idle::Off
    );
    assert_eq!(
        timers::idle_exit(limit, Some(since), Instant::from_secs(10)),
        Idle::Left(3 * SEC)
    );
    assert_eq!(
        timers::idle_exit(limit, Some(since), Instant::from_micros(12_999_999)),
        Idle::Left(1000)
    );
    assert_eq!(
        timers::idle_exit(limit, Some(since), Instant::from_secs(13)),
        Idle::Exit(Duration::from_secs(3))
    );
    assert_eq!(
        timers::idle_exit(limit, Some(since), Instant::from_secs(14)),
        Idle::Exit(Duration::from_secs(4))
    );
}

#[test]
fn shutdown_request_drains_netfront_and_is_acknowledged() {
    for (value, reason) in [
        ("poweroff", ShutdownReason::Poweroff),
        ("reboot", ShutdownReason::Reboot),
    ] {
        let mut r = rig();
        let mut nic = FakeNic {
            release_after: 4,
            delay_ms: Some(50),
            ..Default::default()
        };
        let mut proxy = FakeProxy::default();
        let mut s = Serve::new(0, None);
        for _ in 0..3 {
            assert_eq!(r.rt.serve_pass(&mut s, &mut nic, &mut proxy), None);
        }
        assert!(!nic.closed);
        r.request(value);
        let exit = r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
        assert_eq!(exit, Some(Exit::Shutdown(reason)));
        // Acknowledged as Linux does: the key cleared.
        assert_eq!(r.tree("control/shutdown").as_deref(), Some(""));
        // dom0 was told the drain had begun (drain_timeout in ms), once.
        assert_eq!(r.writes("data/draining"), ["10000"]);
        assert!(nic.closed);
        assert_eq!(nic.polls_after_close, 5, "drained until Released");
        // Drain sleeps on the NIC alone, at most 10 ms at a time.
        let waits = r.waits.borrow();
        let drain = &waits[waits.len() - 4..];
        for w in drain {
            assert_eq!(
                w.0,
                WakeOn {
                    xenstore: false,
                    nic: Some(NIC_PORT)
                }
            );
        }
        assert_eq!(drain[1].1.unwrap() - drain[0].1.unwrap(), 10 * MS);
        // The report operators (and tests/xen) read, in this order.
        let lines = console();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[0], format!("miniproxy: stopping ({reason:?})"));
        assert_eq!(lines[1], "miniproxy: proxy ");
        assert_eq!(lines[2], "miniproxy: vif0  notifies=7");
        assert!(
            lines[3].starts_with("miniproxy: cpu_nic_ms="),
            "{}",
            lines[3]
        );
        assert!(
            lines[3].ends_with(" cpu_loops=4 cpu_wakeups=0"),
            "{}",
            lines[3]
        );
        assert_eq!(lines[4], "miniproxy: heap 10 of 100 KiB used");
    }
}

#[test]
fn netfront_release_is_given_up_after_two_seconds() {
    let mut r = rig();
    let mut nic = FakeNic {
        release_after: u32::MAX,
        ..Default::default()
    };
    let start = r.now.get();
    let exit = r.rt.drain(
        &mut nic,
        &mut FakeProxy::default(),
        ShutdownReason::Poweroff,
    );
    assert_eq!(exit, Exit::Shutdown(ShutdownReason::Poweroff));
    assert_eq!(r.now.get(), start + drain::NIC_RELEASE_TIMEOUT_NS);
    assert_eq!(nic.polls_after_close, 200);
}

#[test]
fn unsupported_request_is_cleared_and_ignored() {
    let mut r = rig();
    let (mut nic, mut proxy) = (FakeNic::default(), FakeProxy::default());
    let mut s = Serve::new(0, None);
    r.request("suspend");
    assert_eq!(r.rt.serve_pass(&mut s, &mut nic, &mut proxy), None);
    assert_eq!(r.tree("control/shutdown").as_deref(), Some(""));
    assert!(!nic.closed);
}

#[test]
fn stats_are_written_at_most_once_a_second_and_only_when_changed() {
    let mut r = rig();
    let mut nic = FakeNic {
        stats: "rx 1 frames".into(),
        ..Default::default()
    };
    let mut proxy = FakeProxy {
        delay: Some(Duration::from_millis(150)),
        ..Default::default()
    };
    let mut s = Serve::new(0, None);
    let mut written_at = Vec::new();
    // Counters change on every pass (every 150 ms) for 5 s.
    for pass in 0..34 {
        proxy.stats = format!("accepted={pass}");
        let before = r.writes("data/stats").len();
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
        if r.writes("data/stats").len() > before {
            written_at.push(r.now.get());
        }
    }
    assert!(written_at.len() >= 4, "{written_at:?}");
    for w in written_at.windows(2) {
        assert!(
            w[1] - w[0] >= STATS_PERIOD_NS,
            "two writes {} ns apart",
            w[1] - w[0]
        );
    }
    let last = r.writes("data/stats").pop().unwrap();
    assert!(
        last.starts_with("accepted=") && last.contains(" rx 1 frames cpu_nic_ms="),
        "{last}"
    );
    assert!(last.ends_with(" xen_notifies=7"), "{last}");

    // The last change is published at the next look (within a second).
    for _ in 0..8 {
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    }
    assert!(r
        .writes("data/stats")
        .pop()
        .unwrap()
        .starts_with("accepted=33 "));
    // Unchanged counters for 5 s: nothing more is written, although the
    // profile (loops=) changes on every pass.
    let n = r.writes("data/stats").len();
    for _ in 0..34 {
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    }
    assert_eq!(r.writes("data/stats").len(), n);
    // One change: written once at the next look.
    nic.stats = "rx 2 frames".into();
    for _ in 0..10 {
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    }
    assert_eq!(r.writes("data/stats").len(), n + 1);
}

#[test]
fn stats_publisher_rate_and_change_rules() {
    let mut p = StatsPublisher::new();
    let t = 50 * SEC;
    assert_eq!(p.check(t, || "a".into()), Some("a"));
    assert_eq!(p.check(t + SEC - 1, || panic!("looked too soon")), None);
    assert_eq!(p.check(t + SEC, || "a".into()), None, "unchanged");
    // The unchanged look still counts: the next is a period after it.
    assert_eq!(p.check(t + 2 * SEC - 1, || panic!("looked too soon")), None);
    assert_eq!(p.check(t + 2 * SEC, || "b".into()), Some("b"));
}

#[test]
fn stats_publisher_takes_the_operators_period() {
    // stats_period=250ms: a look every 250 ms, the first at once.
    let mut p = StatsPublisher::every(core::time::Duration::from_millis(250));
    let t = 50 * SEC;
    assert_eq!(p.check(t, || "a".into()), Some("a"));
    assert_eq!(
        p.check(t + 250 * MS - 1, || panic!("looked too soon")),
        None
    );
    assert_eq!(p.check(t + 250 * MS, || "b".into()), Some("b"));
    // stats_period=1h: the first look at once (the operator's `list` has
    // a line from the start), the next an hour later.
    let mut p = StatsPublisher::every(core::time::Duration::from_secs(3600));
    assert_eq!(p.check(t, || "a".into()), Some("a"));
    assert_eq!(
        p.check(t + 3600 * SEC - 1, || panic!("looked too soon")),
        None
    );
    assert_eq!(p.check(t + 3600 * SEC, || "b".into()), Some("b"));
}

#[test]
fn busy_counters_are_written_at_the_operators_rate_and_idle_ones_never() {
    let mut r = rig();
    let mut nic = FakeNic {
        stats: "rx 1 frames".into(),
        ..Default::default()
    };
    let mut proxy = FakeProxy {
        delay: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let mut s = Serve::new(0, None).stats_period(core::time::Duration::from_secs(3));
    // Counters change on every pass (every 100 ms) for 20 s: a write at
    // the start and then one every 3 s, never more often.
    let mut written_at = Vec::new();
    let start = r.now.get();
    let mut pass = 0;
    while r.now.get() < start + 20 * SEC {
        pass += 1;
        proxy.stats = format!("accepted={pass}");
        let before = r.writes("data/stats").len();
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
        if r.writes("data/stats").len() > before {
            written_at.push(r.now.get());
        }
    }
    assert!(pass >= 190, "{pass} passes");
    assert!((6..=8).contains(&written_at.len()), "{written_at:?}");
    for w in written_at.windows(2) {
        assert!(
            w[1] - w[0] >= 3 * SEC,
            "two writes {} ns apart",
            w[1] - w[0]
        );
    }
    // Then idle for 10 minutes (the engine wakes the loop every 100 ms,
    // the profile changes on every pass): after the last change is out,
    // no xenstore request at all, read or write.
    for _ in 0..40 {
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    }
    let requests = r.srv.borrow().log.len();
    let idle_from = r.now.get();
    while r.now.get() < idle_from + 600 * SEC {
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    }
    let srv = r.srv.borrow();
    assert_eq!(
        srv.log.len(),
        requests,
        "requests while idle: {:?}",
        srv.log[requests..]
            .iter()
            .take(3)
            .map(|(ty, _, p)| (ty, String::from_utf8_lossy(p).into_owned()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn backend_watch_makes_netfront_check_the_backend() {
    let mut r = rig();
    let (mut nic, mut proxy) = (FakeNic::default(), FakeProxy::default());
    let mut s = Serve::new(0, None);
    r.rt.toolstack
        .watch_backend("/local/domain/0/backend/vif/1/0/state")
        .unwrap();
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.backend_checks, 1, "the watch's first event");
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.backend_checks, 1);
    r.srv.borrow_mut().send_raw(&watch_event(
        "/local/domain/0/backend/vif/1/0/state",
        "vif-backend",
    ));
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.backend_checks, 2);
}

#[test]
fn handshake_returns_the_mac_once_connected() {
    let mut r = rig();
    let mac = [0, 0x16, 0x3e, 1, 2, 3];
    let mut nic = FakeNic {
        delay_ms: Some(30),
        connect_on_poll: Some((4, mac)),
        ..Default::default()
    };
    nic.events.push_back(Event::Released { leaked_pages: 0 });
    assert_eq!(r.rt.handshake(&mut nic), Ok(mac));
    // Poll 1 is an event (logged, polled again), 2 nothing (sleep 30 ms),
    // 3 nothing (sleep 30 ms), 4 Connected.
    assert_eq!(r.now.get(), T0 + 60 * MS);
    assert_eq!(r.waits.borrow().len(), 2);
}

#[test]
fn handshake_watches_the_backend_and_polls_netfront_when_it_changes() {
    let mut r = rig();
    let mac = [0, 0x16, 0x3e, 1, 2, 3];
    let backend = "/local/domain/0/backend/vif/1/0";
    let state = format!("{backend}/state");
    let mut nic = FakeNic {
        delay_ms: Some(50),
        connect_on_poll: Some((4, mac)),
        backend: Some(backend.into()),
        ..Default::default()
    };
    let srv = r.srv.clone();
    let ev_path = state.clone();
    r.rt.sleeper.hook = Box::new(move |n| {
        if n == 1 {
            // The backend moves on while the guest sleeps.
            srv.borrow_mut()
                .send_raw(&watch_event(&ev_path, "vif-backend"));
        }
    });
    assert_eq!(r.rt.handshake(&mut nic), Ok(mac));
    // Poll 1, the watch set (its first event: check now, no sleep), poll 2,
    // sleep; the watch fires: poll 3 at once, poll 4 Connected.
    assert_eq!(nic.backend_checks, 2);
    assert_eq!(r.waits.borrow().len(), 1);
    assert_eq!(r.now.get(), T0 + 50 * MS);
    assert_eq!(r.requests(MsgType::Watch, &state), 1);
    // After ready the backend is not watched twice (xenstored would refuse
    // it), the vifs are.
    r.rt.toolstack.watch_backend_and_vifs(&state).unwrap();
    r.rt.toolstack.watch_backend(&state).unwrap();
    let s = r.srv.borrow();
    let watched: Vec<_> = s
        .log
        .iter()
        .filter(|(t, _, _)| *t == MsgType::Watch as u32)
        .map(|(_, _, p)| {
            String::from_utf8_lossy(p)
                .split('\0')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        watched,
        [
            "control/shutdown",
            "data/stats-dump",
            state.as_str(),
            "device/vif"
        ]
    );
}

#[test]
fn handshake_sleeps_in_steps_of_at_most_100ms_and_stops_on_request() {
    let mut r = rig();
    let mut nic = FakeNic {
        delay_ms: Some(250),
        ..Default::default()
    };
    let srv = r.srv.clone();
    r.rt.sleeper.hook = Box::new(move |n| {
        if n == 3 {
            let mut srv = srv.borrow_mut();
            srv.tree
                .insert("control/shutdown".into(), "poweroff".into());
            srv.send_raw(&watch_event("control/shutdown", "shutdown"));
        }
    });
    let start = r.now.get();
    let got = r.rt.handshake(&mut nic);
    assert_eq!(got, Err(Exit::Shutdown(ShutdownReason::Poweroff)));
    let deadlines: Vec<_> = r
        .waits
        .borrow()
        .iter()
        .map(|w| w.1.unwrap() - start)
        .collect();
    assert_eq!(deadlines, [100 * MS, 200 * MS, 300 * MS]);
    // No drain in the handshake: netfront is not closed, no report.
    assert!(!nic.closed);
    assert_eq!(console(), ["miniproxy: stopping (Poweroff)"]);
    assert_eq!(r.tree("control/shutdown").as_deref(), Some(""));
}

#[test]
fn handshake_failure_is_fatal_with_the_reason() {
    let mut r = rig();
    let mut nic = FakeNic::default();
    nic.events
        .push_back(Event::Disconnected(Reason::BackendGone));
    match r.rt.handshake(&mut nic) {
        Err(Exit::Fatal(why)) => assert!(why.starts_with("netfront: "), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dhcp_lease_publishes_the_address() {
    let mut r = rig();
    let mut nic = FakeNic::default();
    let mut proxy = FakeProxy {
        lease_on_poll: Some(3),
        ..Default::default()
    };
    let cfg = Config::parse("ip=dhcp dhcp_timeout=3s").unwrap();
    assert_eq!(
        r.rt.address(&mut nic, &mut proxy, &cfg),
        Ok(Some("10.0.0.9/24".into()))
    );
    assert!(proxy.dhcp);
    // Published by the caller, with the ready key.
    assert!(r.writes("data/ip").is_empty());
    // No engine timer: 100 ms sleeps.
    assert_eq!(r.now.get(), T0 + 300 * MS);
}

#[test]
fn dhcp_without_a_lease_is_fatal_at_the_timeout() {
    let mut r = rig();
    let mut nic = FakeNic::default();
    let mut proxy = FakeProxy {
        delay: Some(Duration::from_millis(700)),
        ..Default::default()
    };
    let cfg = Config::parse("ip=dhcp dhcp_timeout=3s").unwrap();
    let got = r.rt.address(&mut nic, &mut proxy, &cfg);
    assert_eq!(
        got,
        Err(Exit::Fatal(
            "net: no DHCP lease within 3s (set ip=a.b.c.d/len for a static address)".into()
        ))
    );
    assert_eq!(r.now.get(), T0 + 3 * SEC);
    // The last sleep was cut to the timeout, not past it.
    assert!(r
        .waits
        .borrow()
        .iter()
        .all(|w| w.1.unwrap() <= T0 + 3 * SEC));
    assert!(r.writes("data/ip").is_empty());
}

#[test]
fn without_network_only_a_stop_ends_the_wait() {
    let mut r = rig();
    let srv = r.srv.clone();
    r.rt.sleeper.hook = Box::new(move |n| {
        let mut srv = srv.borrow_mut();
        match n {
            1 => {
                srv.tree.insert("data/stats-dump".into(), "1".into());
                srv.send_raw(&watch_event("data/stats-dump", "stats"));
            }
            2 => {
                srv.tree.insert("control/shutdown".into(), "halt".into());
                srv.send_raw(&watch_event("control/shutdown", "shutdown"));
            }
            _ => {}
        }
    });
    assert_eq!(
        r.rt.idle_without_network(),
        Exit::Shutdown(ShutdownReason::Poweroff)
    );
    let waits = r.waits.borrow();
    assert_eq!(waits.len(), 2);
    assert!(waits.iter().all(|w| *w
        == (
            WakeOn {
                xenstore: true,
                nic: None
            },
            None
        )));
    // The stats request was answered (key cleared, profile and heap on the
    // console: there is no NIC or engine) before the stop.
    assert_eq!(r.tree("data/stats-dump").as_deref(), Some(""));
    let lines = console();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("miniproxy: cpu_nic_ms="));
    assert_eq!(lines[1], "miniproxy: heap 10 of 100 KiB used");
    assert_eq!(lines[2], "miniproxy: stopping (Poweroff)");
    assert_eq!(r.tree("control/shutdown").as_deref(), Some(""));
}

#[test]
fn a_xenstore_failure_in_control_is_fatal() {
    let mut r = rig();
    r.srv
        .borrow_mut()
        .send_raw(b"garbage that is no xenstore header!!");
    let (mut nic, mut proxy) = (FakeNic::default(), FakeProxy::default());
    let mut s = Serve::new(0, None);
    match r.rt.serve_pass(&mut s, &mut nic, &mut proxy) {
        Some(Exit::Fatal(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn stats_dump_request_prints_the_report_and_serving_goes_on() {
    let mut r = rig();
    let mut nic = FakeNic {
        stats: "rx 1234 frames".into(),
        ..Default::default()
    };
    let mut proxy = FakeProxy {
        stats: "accepted=2".into(),
        ..Default::default()
    };
    let mut s = Serve::new(0, None);
    {
        let mut srv = r.srv.borrow_mut();
        srv.tree.insert("data/stats-dump".into(), "1".into());
        srv.send_raw(&watch_event("data/stats-dump", "stats"));
    }
    assert_eq!(r.rt.serve_pass(&mut s, &mut nic, &mut proxy), None);
    let lines = console();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0], "miniproxy: proxy accepted=2");
    assert_eq!(lines[1], "miniproxy: vif0 rx 1234 frames notifies=7");
    assert!(lines[2].starts_with("miniproxy: cpu_nic_ms="));
    assert_eq!(lines[3], "miniproxy: heap 10 of 100 KiB used");
    assert_eq!(r.tree("data/stats-dump").as_deref(), Some(""));
    assert!(!nic.closed);
}

/// A stop with `active` connections open, `drain_timeout` set: serve three
/// passes, ask for a stop, and return the exit with the time it was asked.
fn stop_while_serving(r: &mut Rig, nic: &mut FakeNic, proxy: &mut FakeProxy) -> (Exit, u64) {
    let mut s = Serve::new(0, None);
    for _ in 0..3 {
        assert_eq!(r.rt.serve_pass(&mut s, nic, proxy), None);
    }
    let asked = r.now.get();
    r.request("poweroff");
    let exit = r.rt.serve_pass(&mut s, nic, proxy).expect("no exit");
    (exit, asked)
}

#[test]
fn shutdown_waits_for_open_connections_that_finish_in_time() {
    let mut r = rig();
    r.rt.drain_timeout = core::time::Duration::from_secs(10);
    let mut nic = FakeNic {
        release_after: 1,
        ..Default::default()
    };
    // Two connections that end by themselves 3 s after the stop.
    let finish = T0 + 3 * SEC + 3 * STATS_PERIOD_NS;
    let mut proxy = FakeProxy {
        active: 2,
        finish_at: Some(Instant::from_micros((finish / 1000) as i64)),
        ..Default::default()
    };
    let (exit, asked) = stop_while_serving(&mut r, &mut nic, &mut proxy);
    assert_eq!(asked, T0 + 3 * STATS_PERIOD_NS);
    assert_eq!(exit, Exit::Shutdown(ShutdownReason::Poweroff));
    assert_eq!(proxy.drain_starts, 1);
    assert_eq!(
        proxy.drain_deadline,
        Some(Instant::from_micros(((asked + 10 * SEC) / 1000) as i64))
    );
    assert_eq!(proxy.resets, 0, "nothing was reset");
    // Served (NIC port only, no xenstore) until they ended, then released.
    assert!(nic.closed);
    assert!(r.now.get() >= finish && r.now.get() < finish + 100 * MS);
    let lines = console();
    assert_eq!(lines[0], "miniproxy: stopping (Poweroff)");
    assert_eq!(
        lines[1],
        "miniproxy: draining 2 connections (drain_timeout 10s)"
    );
    assert_eq!(lines[2], "miniproxy: drained in 3000 ms");
    // Then the report, counting what the drain did.
    assert!(lines[3].starts_with("miniproxy: proxy "), "{lines:?}");
    let waits = r.waits.borrow();
    assert!(waits[3..].iter().all(|w| !w.0.xenstore));
}

#[test]
fn shutdown_resets_what_is_left_at_drain_timeout_and_returns_within_the_bound() {
    for timeout_s in [0u64, 1, 5] {
        let mut r = rig();
        r.rt.drain_timeout = core::time::Duration::from_secs(timeout_s);
        let mut nic = FakeNic {
            release_after: u32::MAX, // the slowest backend: release times out
            ..Default::default()
        };
        // A connection that never ends; its RSTs take 3 polls to leave.
        let mut proxy = FakeProxy {
            active: 1,
            rst_polls: 3,
            delay: Some(Duration::from_millis(400)),
            ..Default::default()
        };
        let (exit, asked) = stop_while_serving(&mut r, &mut nic, &mut proxy);
        assert_eq!(exit, Exit::Shutdown(ShutdownReason::Poweroff));
        assert_eq!(proxy.resets, 1, "timeout {timeout_s}s");
        assert_eq!(proxy.rst_polls, 0, "the RSTs were polled out");
        // xl shutdown returns within drain_timeout plus a bound.
        let took = r.now.get() - asked;
        assert!(
            took <= timeout_s * SEC + drain::RST_FLUSH_NS + drain::NIC_RELEASE_TIMEOUT_NS,
            "{took} ns"
        );
        let lines = console();
        let drained = lines
            .iter()
            .find(|l| l.starts_with("miniproxy: drained in "));
        // The engine woke exactly at the deadline (no 1 s stats step
        // overshoot), then 3 ms of RST polls.
        assert_eq!(
            drained.map(String::as_str),
            Some(format!("miniproxy: drained in {} ms", timeout_s * 1000 + 3).as_str()),
            "{lines:?}"
        );
    }
}

#[test]
fn a_drain_whose_rsts_never_leave_gives_up_at_its_bound() {
    let mut r = rig();
    r.rt.drain_timeout = core::time::Duration::from_secs(2);
    let mut nic = FakeNic {
        release_after: 1,
        ..Default::default()
    };
    let mut proxy = FakeProxy {
        active: 3,
        rst_polls: 1,
        rst_stuck: true,
        ..Default::default()
    };
    let start = r.now.get();
    let exit = r.rt.drain(&mut nic, &mut proxy, ShutdownReason::Reboot);
    assert_eq!(exit, Exit::Shutdown(ShutdownReason::Reboot));
    let lines = console();
    let gave_up = format!(
        "miniproxy: drain gave up after {} ms (0 connections left, or RSTs not sent)",
        (2 * SEC + drain::RST_FLUSH_NS) / MS
    );
    assert!(lines.contains(&gave_up), "{lines:?}");
    // The release wait came after: the NIC is closed, the exit is bounded.
    assert!(nic.closed);
    assert!(r.now.get() - start <= 2 * SEC + drain::RST_FLUSH_NS + 20 * MS);
}

#[test]
fn a_link_going_down_cuts_the_drain_short() {
    let mut r = rig();
    r.rt.drain_timeout = core::time::Duration::from_secs(10);
    let mut nic = FakeNic::default();
    nic.events
        .push_back(Event::Disconnected(Reason::BackendGone));
    let mut proxy = FakeProxy {
        active: 1,
        ..Default::default()
    };
    let start = r.now.get();
    r.rt.drain(&mut nic, &mut proxy, ShutdownReason::Poweroff);
    assert_eq!(proxy.drain_starts, 1);
    assert_eq!(r.now.get(), start, "no wait for a link that is gone");
    assert!(console()
        .iter()
        .any(|l| l.starts_with("miniproxy: drain cut short: the link is down")));
}

#[test]
fn idle_exit_drains_too() {
    let mut r = rig();
    let mut nic = FakeNic {
        disconnected: true,
        ..Default::default()
    };
    let mut proxy = FakeProxy {
        idle_since: Some(r.at()),
        ..Default::default()
    };
    let mut s = Serve::new(0, Some(core::time::Duration::from_secs(1)));
    while r.rt.serve_pass(&mut s, &mut nic, &mut proxy).is_none() {}
    // Nothing open: no listeners left, no wait, no drain lines.
    assert_eq!(proxy.drain_starts, 1);
    assert!(!console().iter().any(|l| l.contains("drain")));
}

#[test]
fn a_vif_attached_again_after_a_detach_is_reconnected_and_announced() {
    let mut r = rig();
    r.rt.toolstack.watch_vifs().unwrap();
    // The watch is on our vif directories.
    let watched = r
        .srv
        .borrow()
        .log
        .iter()
        .any(|(ty, _, p)| *ty == MsgType::Watch as u32 && p.starts_with(b"device/vif\0"));
    assert!(watched);
    let mut nic = FakeNic::default();
    let mut proxy = FakeProxy::default();
    let mut s = Serve::new(0, None);
    let vif_event = |r: &Rig| {
        r.srv
            .borrow_mut()
            .send_raw(&watch_event("device/vif/0", "vif-backend"))
    };
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy); // the watches' first events
                                                   // `xl network-detach`: netfront reports the link down and is released.
    nic.events
        .push_back(Event::Disconnected(Reason::BackendClosing));
    nic.events.push_back(Event::Released { leaked_pages: 0 });
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert!(nic.disconnected);
    assert_eq!(nic.reconnects, 0, "released, and no vif yet");
    // The directories go away (a watch event): no vif, nothing to do.
    vif_event(&r);
    for _ in 0..3 {
        assert_eq!(r.rt.serve_pass(&mut s, &mut nic, &mut proxy), None);
    }
    assert_eq!(nic.reconnects, 0);
    assert!(proxy.link_ups.is_empty());
    // Without a watch event nothing looks, even with a vif there.
    let mac = [0, 0x16, 0x3e, 9, 8, 7];
    nic.attached = Some(mac);
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.reconnects, 0);
    // `xl network-attach`: the watch fires, netfront reconnects, and on
    // Connected the engine gets the MAC to announce the address again.
    vif_event(&r);
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.reconnects, 1);
    let at = r.at();
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(proxy.link_ups, [(mac, at)]);
    // Connected again: further vif events do not reconnect.
    vif_event(&r);
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.reconnects, 1);
    assert_eq!(proxy.link_ups.len(), 1);
    // And the instance serves and stops as before.
    r.request("poweroff");
    assert_eq!(
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy),
        Some(Exit::Shutdown(ShutdownReason::Poweroff))
    );
}

#[test]
fn a_vif_attached_while_netfront_is_still_closing_is_not_missed() {
    let mut r = rig();
    r.rt.toolstack.watch_vifs().unwrap();
    let mac = [0, 0x16, 0x3e, 1, 1, 1];
    let mut nic = FakeNic::default();
    let mut proxy = FakeProxy::default();
    let mut s = Serve::new(0, None);
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    nic.events
        .push_back(Event::Disconnected(Reason::BackendClosing));
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    // The new vif appears (its watch event comes) while netfront is still
    // closing: nothing can start yet.
    nic.attached = Some(mac);
    r.srv
        .borrow_mut()
        .send_raw(&watch_event("device/vif/0", "vif-backend"));
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.reconnects, 0);
    // Released, with no further watch event: the vif is found all the same.
    nic.events.push_back(Event::Released { leaked_pages: 0 });
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.reconnects, 1);
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(proxy.link_ups.len(), 1);
    assert_eq!(proxy.link_ups[0].0, mac);
}

#[test]
fn a_reconnect_that_fails_is_retried_only_on_the_next_vif_change() {
    let mut r = rig();
    r.rt.toolstack.watch_vifs().unwrap();
    let mut nic = FakeNic {
        disconnected: true,
        attached: Some([0, 0x16, 0x3e, 2, 2, 2]),
        reconnect_fails: true,
        delay_ms: Some(0),
        ..Default::default()
    };
    let mut proxy = FakeProxy::default();
    let mut s = Serve::new(0, None);
    // The watch's first event: one attempt, which fails.
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.reconnects, 1);
    for _ in 0..50 {
        r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    }
    assert_eq!(nic.reconnects, 1, "retried in a loop");
    r.srv
        .borrow_mut()
        .send_raw(&watch_event("device/vif/0", "vif-backend"));
    r.rt.serve_pass(&mut s, &mut nic, &mut proxy);
    assert_eq!(nic.reconnects, 2);
    assert!(proxy.link_ups.is_empty());
}

#[test]
fn the_drain_waits_for_the_backend_to_take_the_last_frames() {
    let mut r = rig();
    r.rt.drain_timeout = core::time::Duration::from_secs(1);
    let mut nic = FakeNic {
        release_after: 0,
        delay_ms: Some(1),
        ..Default::default()
    };
    // At the deadline the engine resets the connection and hands its RSTs
    // (four frames) to the NIC; the backend takes one per poll.
    let mut proxy = FakeProxy {
        active: 1,
        rst_frames: 4,
        ..Default::default()
    };
    let start = r.now.get();
    let exit = r.rt.drain(&mut nic, &mut proxy, ShutdownReason::Poweroff);
    assert_eq!(exit, Exit::Shutdown(ShutdownReason::Poweroff));
    assert_eq!(proxy.resets, 1);
    assert_eq!(nic.tx_in_flight, 0, "closed with frames still in the ring");
    assert!(nic.closed);
    let lines = console();
    assert!(
        lines.contains(&"miniproxy: drained in 1004 ms".to_string()),
        "{lines:?}"
    );
    assert!(r.now.get() - start <= SEC + drain::RST_FLUSH_NS);
}

// The warm pool: a member waits for its configuration key (runtime/pool.rs).

const POOL_CFG: &str = super::pool::CONFIG_PATH;

/// dom0 writes the pool member's configuration key; its watch fires.
fn hand_config(srv: &RefCell<Server>, line: &str) {
    let mut srv = srv.borrow_mut();
    srv.tree.insert(POOL_CFG.into(), line.into());
    srv.send_raw(&watch_event(POOL_CFG, "vif-backend"));
}

#[test]
fn a_pool_member_waits_without_a_deadline_and_without_xenstore_requests() {
    let mut r = rig();
    let srv = r.srv.clone();
    // The xenstore requests taken by the time of each wait.
    let seen = Rc::new(RefCell::new(Vec::new()));
    let seen2 = seen.clone();
    r.rt.sleeper.hook = Box::new(move |n| {
        seen2.borrow_mut().push(srv.borrow().log.len());
        if n == 20 {
            hand_config(&srv, "ip=10.0.0.2/24 rule=reverse:80:10.0.0.1:8080");
        }
    });
    let mut nic = FakeNic {
        delay_ms: Some(5),
        ..Default::default()
    };
    let line = r.rt.wait_for_config(&mut nic).unwrap();
    assert_eq!(line, "ip=10.0.0.2/24 rule=reverse:80:10.0.0.1:8080");
    assert_eq!(
        r.tree(super::pool::POOL_STATE_PATH).as_deref(),
        Some("waiting")
    );
    // Every wait: the xenstore port only (not the NIC's), no deadline (not
    // netfront's 5 ms), and the clock never moved.
    let waits = r.waits.borrow();
    assert_eq!(waits.len(), 20);
    let bare = (
        WakeOn {
            xenstore: true,
            nic: None,
        },
        None,
    );
    assert!(waits.iter().all(|w| *w == bare), "{waits:?}");
    assert_eq!(r.now.get(), T0);
    assert_eq!(nic.polls, 0, "netfront is not polled while waiting");
    // Not one request while waiting: each wake only looked at the ring.
    let seen = seen.borrow();
    assert!(seen.iter().all(|&n| n == seen[0]), "{seen:?}");
    // The one after the config's watch event: its read.
    let srv = r.srv.borrow();
    let after: Vec<u32> = srv.log[seen[0]..].iter().map(|(ty, _, _)| *ty).collect();
    assert_eq!(after, [MsgType::Read as u32]);
    // The watch was set before `waiting` was written.
    let watch = srv
        .log
        .iter()
        .position(|(ty, _, p)| *ty == MsgType::Watch as u32 && p.starts_with(POOL_CFG.as_bytes()))
        .expect("the config key is watched");
    let waiting = srv
        .log
        .iter()
        .position(|(ty, _, p)| *ty == MsgType::Write as u32 && p.starts_with(b"data/pool\0"))
        .unwrap();
    assert!(watch < waiting);
}

#[test]
fn a_pool_member_reads_the_key_only_when_a_watch_fires_and_waits_on_if_absent() {
    let mut r = rig();
    let srv = r.srv.clone();
    r.rt.sleeper.hook = Box::new(move |n| match n {
        // The backend's state changed: the same flag, the key is not there.
        2 => srv
            .borrow_mut()
            .send_raw(&watch_event("backend/vif/1/0/state", "vif-backend")),
        4 => hand_config(&srv, "ip=dhcp"),
        _ => {}
    });
    let mut nic = FakeNic::default();
    assert_eq!(r.rt.wait_for_config(&mut nic).unwrap(), "ip=dhcp");
    assert_eq!(r.waits.borrow().len(), 4);
    // The watch's first event, the backend's change, the config's.
    assert_eq!(r.requests(MsgType::Read, POOL_CFG), 3);
    assert_eq!(nic.backend_checks, 3);
}

#[test]
fn shutdown_while_in_the_pool_stops_at_once() {
    let mut r = rig();
    let srv = r.srv.clone();
    r.rt.sleeper.hook = Box::new(move |n| {
        if n == 3 {
            let mut srv = srv.borrow_mut();
            srv.tree
                .insert("control/shutdown".into(), "poweroff".into());
            srv.send_raw(&watch_event("control/shutdown", "shutdown"));
        }
    });
    let mut nic = FakeNic::default();
    assert_eq!(
        r.rt.wait_for_config(&mut nic),
        Err(Exit::Shutdown(ShutdownReason::Poweroff))
    );
    assert_eq!(r.waits.borrow().len(), 3);
    assert_eq!(r.tree("control/shutdown").as_deref(), Some(""));
    assert_eq!(console(), ["miniproxy: stopping (Poweroff)"]);
}

#[test]
fn a_xenstore_failure_while_in_the_pool_is_fatal() {
    let mut r = rig();
    let srv = r.srv.clone();
    r.rt.sleeper.hook = Box::new(move |n| {
        if n == 2 {
            srv.borrow_mut()
                .send_raw(b"garbage that is no xenstore header!!");
        }
    });
    match r.rt.wait_for_config(&mut FakeNic::default()) {
        Err(Exit::Fatal(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_handed_config_is_parsed_as_extra_is_and_checked_against_the_boot() {
    use super::pool::take_config;
    let boot = Config::parse("pool=on rx_bufs=32").unwrap();
    let c = take_config(
        "ip=10.0.0.2/24 rx_bufs=32 mem=2m rule=transparent:80",
        &boot,
    )
    .unwrap();
    assert_eq!(c.rules.len(), 1);
    assert_eq!(c.mem, Some(2 << 20));
    let fatal = |line: &str| match take_config(line, &boot) {
        Err(Exit::Fatal(why)) => why,
        other => panic!("{line}: {other:?}"),
    };
    assert_eq!(
        fatal("ip=10.0.0.2/24 rx_bufs=32 buf=16q"),
        "pool: miniproxy/config: config: bad value for key 'buf': '16q' (expected a size like 16k, from 1k to 16m)"
    );
    assert_eq!(
        fatal("ip=10.0.0.2/24"),
        "pool: miniproxy/config: rx_bufs=64, but this pool member booted with rx_bufs=32 \
         (the boot-time keys [\"rx_bufs\", \"tx_bufs\", \"offload\"] are fixed when a member boots)"
    );
    assert!(fatal("pool=on rx_bufs=32").contains("cannot make it wait again"));
    assert!(fatal("nosuch=1").contains("unknown key 'nosuch'"));
    // Longer than Xen's command line takes: fine here.
    let mut long = String::from("ip=10.0.0.2/24 rx_bufs=32");
    for p in 1..=16 {
        long += &format!(" rule=reverse:{p}:10.0.0.1:{}", 60000 + p);
    }
    long += &" ".repeat(1200);
    assert!(long.len() > 1022);
    assert_eq!(take_config(&long, &boot).unwrap().rules.len(), 16);
}
