//! The link back after it went away (the vif detached and attached again,
//! e.g. `xl network-detach` then `xl network-attach`).
//!
//! The engine itself keeps everything across the gap (address, listeners,
//! connections: TCP retransmits what was lost). What changes is outside:
//! the vif may come back with another MAC, and while it was gone peers may
//! have learnt another MAC for our address (another instance took it over).
//! So the interface takes the MAC it is given and the address is announced
//! again with gratuitous ARP, three times a second apart, as when it was set.

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};

use super::{Engine, EngineError};

impl Engine {
    /// The link is up again with `mac`: use it and announce the address
    /// again (if there is one) from the next poll.
    pub fn link_up(&mut self, mac: EthernetAddress, now: Instant) -> Result<(), EngineError> {
        if !mac.is_unicast() {
            return Err(EngineError::BadHardwareAddress);
        }
        self.iface.set_hardware_addr(HardwareAddress::Ethernet(mac));
        self.addr.relink(mac, now);
        self.more_work = true;
        Ok(())
    }
}
