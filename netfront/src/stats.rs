//! Per-vif counters.

use core::fmt;

/// Counters for one vif. All monotonic; they survive disconnect/reconnect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to smoltcp, and their bytes.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames put on the TX ring, and their bytes.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames whose first slot got `NETIF_RSP_OKAY`.
    pub tx_completed: u64,
    /// TX ring slots used (data slots and extra-info slots), and the frames
    /// sent for segmentation by the backend (a GSO extra: offload mode).
    pub tx_slots: u64,
    pub tx_gso_frames: u64,

    /// RX responses with a negative status (`NETIF_RSP_ERROR`/`DROPPED`).
    pub rx_drop_error: u64,
    /// RX responses whose id is not the one we posted in that slot.
    pub rx_drop_bad_id: u64,
    /// RX responses with zero length, or offset + length beyond the page.
    pub rx_drop_bad_len: u64,
    /// Frames spread over several slots (`NETRXF_more_data`) we dropped:
    /// without offload every one (we did not offer `feature-sg`); with it,
    /// those of more than 19 slots or more than 14 + 65535 bytes.
    pub rx_drop_multislot: u64,
    /// Frames with extra-info slots we dropped: without offload every one
    /// (we never negotiated GSO, hash...); with it, those whose extras are
    /// malformed (type 0 or unknown, GSO size 0 or unknown GSO type, more
    /// than 4).
    pub rx_drop_extra_info: u64,
    /// `NETRXF_csum_blank` frames we could not complete (not IPv4 TCP/UDP).
    pub rx_drop_csum: u64,
    /// `NETRXF_csum_blank` frames we completed ourselves.
    pub rx_csum_filled: u64,
    /// Offload mode: TCP frames the backend did not vouch for
    /// (no `csum_blank`/`data_validated`) whose checksum we verified...
    pub rx_csum_verified: u64,
    /// ...and those we dropped: wrong checksum, or not checkable (an IPv4
    /// fragment, a truncated header).
    pub rx_csum_bad: u64,
    /// Offload mode: frames delivered that came in several slots, and those
    /// that came with a GSO extra (a large TCP packet from dom0).
    pub rx_multi_slot: u64,
    pub rx_gso: u64,

    /// TX responses with a negative status: the backend dropped the frame.
    pub tx_error: u64,
    /// TX responses whose id is not a frame in flight.
    pub tx_bad_id: u64,
    /// TX responses with a status that is not a `NETIF_RSP_*` for a data slot.
    pub tx_bad_status: u64,
    /// Frames smoltcp gave us that do not fit a TX buffer (or are shorter than
    /// an Ethernet header).
    pub tx_drop_bad_len: u64,
    /// In-flight TX buffers taken back after the backend answered every ring
    /// slot without ever answering for them.
    pub tx_reclaimed: u64,

    /// Times smoltcp asked for a TX buffer and all were in flight.
    pub tx_ring_full: u64,
    /// Times the per-poll RX budget ran out with responses still waiting.
    pub rx_budget_exhausted: u64,
    /// Producer index jumps (`rsp_prod - rsp_cons` above what we requested).
    pub rsp_prod_overflow: u64,

    /// Event-channel events seen, and notifications sent.
    pub events: u64,
    pub notifies: u64,
    /// Pages we could not take back from the backend (it kept them mapped).
    pub pages_leaked: u64,
}

impl Stats {
    /// All RX drops.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_drop_error
            + self.rx_drop_bad_id
            + self.rx_drop_bad_len
            + self.rx_drop_multislot
            + self.rx_drop_extra_info
            + self.rx_drop_csum
            + self.rx_csum_bad
    }

    /// All TX drops (by us, or reported by the backend).
    pub fn tx_dropped(&self) -> u64 {
        self.tx_error + self.tx_drop_bad_len
    }
}

/// One line of `nf_KEY=VALUE` tokens (the `nf_` part of the guest's
/// `data/stats`, format in the top-level README, "The stats line"); every key
/// is the field's name, plus the totals `nf_rx_drops` and `nf_tx_drops`.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: [(&str, u64); 31] = [
            ("rx_frames", self.rx_frames),
            ("rx_bytes", self.rx_bytes),
            ("tx_frames", self.tx_frames),
            ("tx_bytes", self.tx_bytes),
            ("tx_completed", self.tx_completed),
            ("rx_drops", self.rx_dropped()),
            ("rx_drop_error", self.rx_drop_error),
            ("rx_drop_bad_id", self.rx_drop_bad_id),
            ("rx_drop_bad_len", self.rx_drop_bad_len),
            ("rx_drop_multislot", self.rx_drop_multislot),
            ("rx_drop_extra_info", self.rx_drop_extra_info),
            ("rx_drop_csum", self.rx_drop_csum),
            ("rx_csum_bad", self.rx_csum_bad),
            ("rx_csum_filled", self.rx_csum_filled),
            ("rx_csum_verified", self.rx_csum_verified),
            ("tx_slots", self.tx_slots),
            ("tx_gso_frames", self.tx_gso_frames),
            ("rx_multi_slot", self.rx_multi_slot),
            ("rx_gso", self.rx_gso),
            ("tx_drops", self.tx_dropped()),
            ("tx_error", self.tx_error),
            ("tx_drop_bad_len", self.tx_drop_bad_len),
            ("tx_bad_id", self.tx_bad_id),
            ("tx_bad_status", self.tx_bad_status),
            ("tx_reclaimed", self.tx_reclaimed),
            ("tx_ring_full", self.tx_ring_full),
            ("rx_budget_exhausted", self.rx_budget_exhausted),
            ("rsp_prod_overflow", self.rsp_prod_overflow),
            ("events", self.events),
            ("notifies", self.notifies),
            ("pages_leaked", self.pages_leaked),
        ];
        for (i, (key, value)) in fields.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}nf_{key}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_key_value_tokens_each_key_once() {
        let s = Stats {
            rx_frames: 3,
            rx_drop_bad_id: 2,
            rx_drop_error: 1,
            tx_gso_frames: 7,
            rx_csum_bad: 2,
            ..Default::default()
        };
        let line = alloc::format!("{s}");
        assert!(!line.contains('\n'));
        assert!(line.starts_with("nf_rx_frames=3 nf_rx_bytes=0 "), "{line}");
        // rx_drops is the total of the drop reasons and the bad checksums.
        assert!(
            line.contains(" nf_rx_drops=5 nf_rx_drop_error=1 nf_rx_drop_bad_id=2 "),
            "{line}"
        );
        assert!(line.contains(" nf_tx_gso_frames=7 "), "{line}");
        let mut keys = alloc::vec::Vec::new();
        for token in line.split(' ') {
            let (key, value) = token.split_once('=').expect("key=value");
            assert!(
                key.starts_with("nf_") && value.parse::<u64>().is_ok(),
                "{token}"
            );
            assert!(!keys.contains(&key), "{key} twice");
            keys.push(key);
        }
        assert_eq!(keys.len(), 31);
    }
}
