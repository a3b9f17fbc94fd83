//! Per-socket TCP settings derived from the config, applied on every (re)use
//! of a socket.
//!
//! Keep-alive is set on both sockets of a connection, with a smoltcp user
//! timeout of three keep-alive intervals (two minutes without keep-alive),
//! so a dead peer never leaves a connection half-open forever.

use smoltcp::socket::tcp;
use smoltcp::time::Duration;

use crate::config::{Config, CongestionControl};

/// User timeout when keep-alive is off.
const DEFAULT_USER_TIMEOUT: Duration = Duration::from_secs(120);

/// Per-socket TCP settings derived from the config.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    pub(super) max_conns: usize,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) connect_timeout: Duration,
    pub(super) keepalive: Option<Duration>,
    pub(super) user_timeout: Duration,
    pub(super) ack_delay: Option<Duration>,
    pub(super) cc: tcp::CongestionControl,
    pub(super) rto_min: Duration,
    /// `buf=`: the size a connection's buffers may grow to (the window scale
    /// is chosen for it at the handshake).
    pub(super) buf: usize,
}

pub(super) fn dur(d: core::time::Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
}

impl Tuning {
    pub(super) fn from_config(cfg: &Config) -> Tuning {
        let keepalive = cfg.keepalive.map(dur);
        Tuning {
            max_conns: cfg.max_conns,
            idle_timeout: cfg.idle_timeout.map(dur),
            connect_timeout: dur(cfg.connect_timeout),
            keepalive,
            user_timeout: keepalive.map(|k| k * 3).unwrap_or(DEFAULT_USER_TIMEOUT),
            ack_delay: cfg.ack_delay.map(dur),
            rto_min: dur(cfg.rto_min),
            buf: cfg.buf,
            cc: match cfg.cc {
                CongestionControl::None => tcp::CongestionControl::None,
                CongestionControl::Reno => tcp::CongestionControl::Reno,
                CongestionControl::Cubic => tcp::CongestionControl::Cubic,
            },
        }
    }

    /// Applied on every (re)use of a socket: `listen`/`connect` reset the TCP
    /// state but not these options, and not the congestion controller's state,
    /// which `set_congestion_control` renews.
    pub(super) fn apply(&self, s: &mut tcp::Socket<'_>) {
        s.set_nagle_enabled(false);
        s.set_ack_delay(self.ack_delay);
        s.set_keep_alive(self.keepalive);
        s.set_timeout(Some(self.user_timeout));
        s.set_congestion_control(self.cc);
        // Linux clients acknowledge in stretch ACKs (six segments at once once
        // their quick ACKs run out): slow start counts them in full, as Linux
        // senders do (smoltcp patch 26), or a short download's last segments
        // wait a round trip of the client's leg.
        s.set_slow_start_counts_stretch_acks(true);
        s.set_rto_min(self.rto_min);
        s.set_rx_capacity_hint(self.buf);
    }
}
