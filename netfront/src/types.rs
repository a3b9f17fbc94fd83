//! The driver's public vocabulary: what it tells the kernel ([`Event`],
//! [`State`], [`Reason`], [`Misbehavior`]), what the backend offered
//! ([`BackendFeatures`]) and which mode was chosen ([`Offload`]).
//!
//! Plain data with their `Display`s, apart from the code that produces them
//! so that reading them does not mean reading the state machine.

use core::fmt;

use crate::platform::Error;

/// What the backend advertised (read from its xenstore directory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendFeatures {
    pub rx_copy: bool,
    pub rx_flip: bool,
    pub sg: bool,
    pub gso_tcpv4: bool,
    pub gso_tcpv6: bool,
    pub ipv6_csum_offload: bool,
    pub split_event_channels: bool,
    pub multi_queue_max_queues: u32,
    pub ctrl_ring: bool,
    pub multicast_control: bool,
    pub dynamic_multicast_control: bool,
}

impl fmt::Display for BackendFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = [
            ("rx-copy", self.rx_copy),
            ("rx-flip", self.rx_flip),
            ("sg", self.sg),
            ("gso-tcpv4", self.gso_tcpv4),
            ("gso-tcpv6", self.gso_tcpv6),
            ("ipv6-csum-offload", self.ipv6_csum_offload),
            ("split-event-channels", self.split_event_channels),
            ("ctrl-ring", self.ctrl_ring),
            ("multicast-control", self.multicast_control),
            ("dynamic-multicast-control", self.dynamic_multicast_control),
        ];
        let mut first = true;
        for (name, on) in flags {
            if on {
                write!(f, "{}{name}", if first { "" } else { " " })?;
                first = false;
            }
        }
        write!(
            f,
            "{}max-queues={}",
            if first { "" } else { " " },
            self.multi_queue_max_queues
        )
    }
}

/// Whether a connection uses offload ([`Config::offload`]), and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// TCP segmentation offload on TX (frames up to `tso_max_frame` bytes
    /// with a GSO extra), scatter-gather + GSO on RX (packets up to 64 KiB
    /// over several slots), TCP checksum offload both ways.
    On {
        tso_max_frame: usize,
    },
    Off(OffloadOff),
}

/// Why offload is not in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadOff {
    /// No connection has been negotiated yet.
    NotNegotiated,
    /// [`Config::offload`] is false.
    NotRequested,
    /// The backend does not offer `feature-sg`.
    BackendLacksSg,
    /// The backend does not offer `feature-gso-tcpv4`.
    BackendLacksGsoTcpv4,
    /// `rx_buffers` is below 18, the slots netback needs posted before it
    /// delivers a 64 KiB packet.
    TooFewRxBuffers,
    /// The 64 KiB copy buffers could not be allocated.
    NoMemory,
}

impl Offload {
    pub fn is_on(&self) -> bool {
        matches!(self, Offload::On { .. })
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offload::On { tso_max_frame } => {
                write!(f, "tso+sg+csum (tx frames up to {tso_max_frame} B)")
            }
            Offload::Off(why) => {
                let why = match why {
                    OffloadOff::NotNegotiated => "not negotiated yet",
                    OffloadOff::NotRequested => "not requested",
                    OffloadOff::BackendLacksSg => "backend lacks feature-sg",
                    OffloadOff::BackendLacksGsoTcpv4 => "backend lacks feature-gso-tcpv4",
                    OffloadOff::TooFewRxBuffers => "rx_buffers below 18",
                    OffloadOff::NoMemory => "no memory for the 64 KiB copy buffers",
                };
                write!(f, "off ({why})")
            }
        }
    }
}

/// Why the link went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The backend moved to Closing/Closed (e.g. `xl network-detach`).
    BackendClosing,
    /// The backend's xenstore directory disappeared.
    BackendGone,
    /// The backend broke the ring protocol; we stopped using the rings.
    BackendMisbehaved(Misbehavior),
    /// [`Netfront::close`] was called.
    Shutdown,
    /// The handshake failed.
    Failed(Error),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::BackendClosing => f.write_str("backend closing"),
            Reason::BackendGone => f.write_str("backend gone from xenstore"),
            Reason::BackendMisbehaved(m) => write!(f, "backend misbehaved: {m}"),
            Reason::Shutdown => f.write_str("shut down"),
            Reason::Failed(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// Something the kernel should know (and log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The backend is Connected: frames flow.
    Connected {
        mac: [u8; 6],
        mtu: u16,
        backend: BackendFeatures,
    },
    /// The link is down (or never came up). The driver stays usable: the
    /// device just yields no tokens. Resources are released in the background.
    Disconnected(Reason),
    /// Disconnect finished: every page was given back except `leaked_pages`
    /// the backend kept mapped past the close timeout.
    Released { leaked_pages: usize },
}

/// Coarse driver state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Handshake in progress.
    Initialising,
    Connected,
    /// Link down, giving resources back.
    Closing,
    /// Idle; see [`Netfront::reconnect`].
    Disconnected,
}

/// A ring protocol violation after which the rings cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehavior {
    /// The RX response producer covers more responses than requests posted.
    RxProducerOverflow,
    /// The TX response producer covers more responses than requests made.
    TxProducerOverflow,
}

impl core::fmt::Display for Misbehavior {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Misbehavior::RxProducerOverflow => {
                "RX response producer index jumped past our requests"
            }
            Misbehavior::TxProducerOverflow => {
                "TX response producer index jumped past our requests"
            }
        })
    }
}
