//! The smoltcp side: `phy::Device` for [`Netfront`], its RX and TX tokens,
//! and the capabilities smoltcp is told (which fix, at the first call,
//! whether smoltcp leaves TCP checksums and segmentation to us).

use alloc::vec::Vec;
use core::num::NonZeroUsize;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;

use super::{Netfront, Phase};
use crate::datapath::{Datapath, RxOutcome};
use crate::layout::ETH_HDR;
use crate::platform::Platform;
use crate::stats::Stats;
use crate::types::{Offload, Reason};

/// What smoltcp was told about offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StackView {
    /// `capabilities()` not called yet: no stack to speak of; treated as
    /// `Plain`.
    Unread,
    /// Checksums all `Both`, no segmentation.
    Plain,
    /// TCP checksum `None`, TCP segmentation up to this frame size.
    Offload { tso_max_frame: usize },
}

impl<P: Platform> Netfront<P> {
    /// smoltcp was told to leave TCP checksums (and segmentation) to us.
    pub(super) fn stack_offload(&self) -> bool {
        matches!(self.stack.get(), StackView::Offload { .. })
    }

    /// The largest frame a TX token from `transmit()` may carry: a TSO frame
    /// when offload is on and smoltcp was told so, else MTU + header.
    pub(super) fn tx_capacity(&self) -> usize {
        match (self.offload, self.stack.get()) {
            (Offload::On { .. }, StackView::Offload { tso_max_frame }) => tso_max_frame,
            _ => usize::from(self.mtu) + ETH_HDR,
        }
    }

    /// TX buffers and ring slots for a frame of `len` bytes (and its GSO
    /// extra, if `gso`) are free (reaping completions if needed). Counts a
    /// ring-full event otherwise; disconnects on a broken ring.
    pub(super) fn tx_ready(&mut self, len: usize, gso: bool) -> bool {
        let Some(datapath) = self.datapath.as_mut() else {
            return false;
        };
        let (bufs, slots) = datapath.tx_cost(len, gso);
        match datapath.tx_ready(&mut self.stats, bufs, slots) {
            Ok(true) => true,
            Ok(false) => {
                self.stats.tx_ring_full += 1;
                false
            }
            Err(m) => {
                self.begin_closing(Reason::BackendMisbehaved(m), false);
                false
            }
        }
    }
}

/// A received frame, already copied out of the granted page(s).
pub struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Permission to send one frame of up to its capacity (TX buffers and ring
/// slots for that much were free).
pub struct TxToken<'a, P: Platform> {
    platform: &'a mut P,
    datapath: &'a mut Datapath<P>,
    stats: &'a mut Stats,
    staging: &'a mut Vec<u8>,
    max_frame: usize,
    /// smoltcp fills TCP checksums (it was told `Checksum::Both`).
    stack_fills_tcp: bool,
    /// `PacketMeta::segmentation_offload_size`: the MSS of a TSO frame.
    gso_mss: Option<u16>,
    /// A ring slot for a GSO extra was reserved (tokens from `transmit()`
    /// in offload mode; replies never need one).
    gso_ok: bool,
}

impl<P: Platform> phy::TxToken for TxToken<'_, P> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.staging.clear();
        self.staging.resize(len, 0);
        let r = f(&mut self.staging[..]);
        if len < ETH_HDR || len > self.max_frame {
            self.stats.tx_drop_bad_len += 1;
        } else {
            self.datapath.tx_send(
                self.platform,
                self.stats,
                self.staging,
                self.gso_mss.filter(|_| self.gso_ok),
                self.stack_fills_tcp,
            );
        }
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.gso_mss = meta.segmentation_offload_size.map(|m| m.get());
    }
}

impl<P: Platform> phy::Device for Netfront<P> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, P>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.phase != Phase::Connected {
            return None;
        }
        // A reply may need a TX buffer: rather than drop it, leave the frame
        // on the ring until TX completions free one (they raise an event).
        // Replies (ACKs, RSTs, echo replies) are never larger than the MTU.
        let reply_max = usize::from(self.mtu) + ETH_HDR;
        if !self.tx_ready(reply_max, false) {
            return None;
        }
        let stack_offload = self.stack_offload();
        let datapath = self.datapath.as_mut()?;
        let outcome = datapath.rx_pull(
            &mut self.platform,
            &mut self.stats,
            &mut self.rx_budget,
            &mut self.rx_frame,
            !stack_offload,
        );
        match outcome {
            RxOutcome::Frame(len) => Some((
                RxToken {
                    frame: &self.rx_frame[..len],
                },
                TxToken {
                    platform: &mut self.platform,
                    datapath: self.datapath.as_mut()?,
                    stats: &mut self.stats,
                    staging: &mut self.tx_staging,
                    max_frame: reply_max,
                    stack_fills_tcp: !stack_offload,
                    gso_mss: None,
                    gso_ok: false,
                },
            )),
            RxOutcome::Empty | RxOutcome::Budget => None,
            RxOutcome::Broken(m) => {
                self.begin_closing(Reason::BackendMisbehaved(m), false);
                None
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.phase != Phase::Connected {
            return None;
        }
        // Room for the largest frame this token may carry: a frame is never
        // dropped or split for want of buffers, smoltcp just retries later.
        let max_frame = self.tx_capacity();
        // TSO frames only when smoltcp may send them (it was told).
        let gso_ok = self.offload.is_on() && self.stack_offload();
        if !self.tx_ready(max_frame, gso_ok) {
            return None;
        }
        let stack_fills_tcp = !self.stack_offload();
        Some(TxToken {
            platform: &mut self.platform,
            datapath: self.datapath.as_mut()?,
            stats: &mut self.stats,
            staging: &mut self.tx_staging,
            max_frame,
            stack_fills_tcp,
            gso_mss: None,
            gso_ok,
        })
    }

    /// Ethernet, MTU from xenstore (+14 for the Ethernet header, as smoltcp
    /// counts it).
    ///
    /// Without offload smoltcp computes every checksum on TX and verifies
    /// every checksum on RX (`Checksum::Both`): we never set
    /// `NETTXF_csum_blank`, and we ask the backend for complete checksums
    /// (`feature-no-csum-offload=1`, completing any `NETRXF_csum_blank`
    /// frame ourselves), so software verification is both possible and a
    /// cheap guard against a backend handing us corrupt frames.
    ///
    /// With offload, TCP is `Checksum::None` (the driver sends TCP with
    /// `csum_blank` and checks received TCP the backend did not vouch for)
    /// and `segmentation.tcpv4` is the largest TSO frame; IPv4, UDP and
    /// ICMP stay `Both`.
    ///
    /// The first call decides (offload iff the connection then uses it)
    /// and later calls repeat it: smoltcp keeps what it reads in
    /// `Interface::new`. See [`Netfront::offload`].
    fn capabilities(&self) -> DeviceCapabilities {
        let view = match (self.stack.get(), self.offload) {
            (StackView::Unread, Offload::On { tso_max_frame }) => {
                StackView::Offload { tso_max_frame }
            }
            (StackView::Unread, Offload::Off(_)) => StackView::Plain,
            (v, _) => v,
        };
        self.stack.set(view);
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(self.mtu) + ETH_HDR;
        caps.max_burst_size = None;
        caps.checksum = ChecksumCapabilities::default();
        if let StackView::Offload { tso_max_frame } = view {
            caps.checksum.tcp = Checksum::None;
            caps.segmentation.tcpv4 = NonZeroUsize::new(tso_max_frame);
        }
        caps
    }
}
