//! Driver configuration: sizing, timeouts, and whether to ask for offload.

use crate::layout::{Layout, MemoryUse, RX_BUFFERS_FOR_OFFLOAD};
use crate::platform::Error;
use crate::wire::{RX_RING_SIZE, TX_RING_SIZE};

/// The network driver's configuration (`netfront::Config`; not to be confused
/// with the proxy's rule configuration). `Default` is the sizing for a 4 MiB
/// guest.
#[derive(Clone, Debug)]
pub struct Config {
    /// Device id: the driver uses `device/vif/<vif>/`.
    pub vif: u32,
    /// RX buffers kept posted, one granted page each (1..=256).
    pub rx_buffers: u16,
    /// TX buffers (1..=256). Without offload each holds one frame, two per
    /// granted page; with offload each is a page (one ring slot) and a
    /// large frame takes several (see [`Layout::tso_max_frame`]).
    pub tx_buffers: u16,
    /// Ring slots `receive()` may consume between two `poll()` calls.
    pub rx_budget: u32,
    /// From the first `poll()` to backend Connected.
    pub handshake_timeout_ms: u64,
    /// From the start of a disconnect to giving up on the backend unmapping
    /// our pages (those still mapped are then leaked, never reused).
    pub close_timeout_ms: u64,
    /// Interval between xenstore reads while waiting on the backend.
    pub retry_ms: u64,
    /// Interval between backend-state checks while connected, at first.
    pub state_check_ms: u64,
    /// Each check that finds the backend still connected doubles the
    /// interval, up to this; a watch event
    /// ([`check_backend_soon`](crate::Netfront::check_backend_soon)) starts
    /// it again at `state_check_ms`. With a watch on the backend's state the
    /// checks are only a fallback, and an idle guest should cost xenstored
    /// (nearly) nothing. At or below `state_check_ms`: no backoff.
    pub state_check_max_ms: u64,
    /// Ask for offload: TCP segmentation offload on TX, scatter-gather and
    /// GSO on RX, TCP checksum offload both ways. Used when the backend
    /// offers `feature-sg` and `feature-gso-tcpv4` and `rx_buffers >= 18`;
    /// otherwise (and when false) the driver works as without it.
    pub offload: bool,
    /// Ring index both rings start at (0 in the protocol): the host tests,
    /// and a fuzzer through the `testing` feature, start near 2^32 to cross
    /// the `u32` index wrap.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub ring_start: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vif: 0,
            rx_buffers: 64,
            tx_buffers: 32,
            rx_budget: 256,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            retry_ms: 10,
            state_check_ms: 500,
            state_check_max_ms: 500,
            offload: true,
            #[cfg(any(test, feature = "testing"))]
            ring_start: 0,
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(1..=RX_RING_SIZE as u16).contains(&self.rx_buffers) {
            return Err(Error::BadConfig("rx_buffers must be 1..=256"));
        }
        if !(1..=TX_RING_SIZE as u16).contains(&self.tx_buffers) {
            return Err(Error::BadConfig("tx_buffers must be 1..=256"));
        }
        if self.rx_budget == 0 {
            return Err(Error::BadConfig("rx_budget must be > 0"));
        }
        Ok(())
    }

    /// Guest memory a connection with this sizing takes, in the mode asked
    /// for (with offload, what it takes if the backend agrees; the most it
    /// can take). [`Netfront::memory`] gives the mode in use.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse::for_layout(
            self.rx_buffers as usize,
            self.tx_buffers as usize,
            Layout {
                offload: self.offload && usize::from(self.rx_buffers) >= RX_BUFFERS_FOR_OFFLOAD,
            },
        )
    }
}
