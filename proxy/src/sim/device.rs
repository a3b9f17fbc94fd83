//! The smoltcp device of a switch port.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use core::num::NonZeroUsize;
use smoltcp::phy::{Checksum, PacketMeta};

use super::{Net, MTU_FRAME, TSO_MAX_FRAME};

/// The smoltcp device of one switch port.
pub struct PortDevice<'n> {
    pub(super) net: &'n mut Net,
    pub(super) port: usize,
}

pub struct SimRx(Vec<u8>);
pub struct SimTx<'n> {
    net: &'n mut Net,
    port: usize,
    meta: PacketMeta,
}

impl RxToken for SimRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for SimTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        if self.net.ports[self.port].offload {
            self.net.offload_tx(self.port, buf, self.meta);
        } else {
            let st = &mut self.net.ports[self.port].stats;
            st.tx_frames += 1;
            st.largest_tx = st.largest_tx.max(buf.len());
            self.net.send(self.port, buf);
        }
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.meta = meta;
    }
}

impl Device for PortDevice<'_> {
    type RxToken<'a>
        = SimRx
    where
        Self: 'a;
    type TxToken<'a>
        = SimTx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _t: Instant) -> Option<(SimRx, SimTx<'_>)> {
        let frame = self.net.ports[self.port].rx.pop_front()?;
        Some((
            SimRx(frame),
            SimTx {
                net: self.net,
                port: self.port,
                meta: PacketMeta::default(),
            },
        ))
    }

    fn transmit(&mut self, _t: Instant) -> Option<SimTx<'_>> {
        if self.net.ports[self.port].tx_blocked {
            return None;
        }
        Some(SimTx {
            net: self.net,
            port: self.port,
            meta: PacketMeta::default(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU_FRAME;
        if self.net.ports[self.port].offload {
            // TSO needs TX checksum offload; received checksums are still verified.
            caps.checksum.tcp = Checksum::Rx;
            caps.segmentation.tcpv4 = NonZeroUsize::new(TSO_MAX_FRAME);
        }
        caps
    }
}
