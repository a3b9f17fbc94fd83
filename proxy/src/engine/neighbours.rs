//! Upstream neighbours kept resolved: the ARP entries of the reverse rules'
//! upstreams (smoltcp resolves the next hop: the upstream itself when it is
//! on-link, else the gateway) are refreshed before they expire, so that a
//! connection after an idle minute neither waits for an ARP round trip nor
//! for a rate limit (transparent rules have no fixed upstream: nothing here).
//!
//! The rule: an upstream is *in use* while a connection to it is open and for
//! [`KEEP`] after the last one. While it is in use and smoltcp holds an entry
//! for it with less than [`REFRESH_BEFORE`] left, an ARP request is sent for
//! it, at most one per [`RETRY`], to the MAC the entry holds (a unicast poll,
//! smoltcp patch 28: a broadcast would reach every instance on the bridge,
//! and with N instances each would hear N of them a minute); the answer
//! extends the entry by smoltcp's 60 s. If no answer comes the entry
//! expires and the refreshing stops: a vanished upstream is given up (the
//! next connection resolves it as before), and an idle instance sends at
//! most one request per upstream about every 55 s for [`KEEP`] after its
//! last connection, then none.
//! Traffic from the upstream extends its entry by itself (smoltcp), so a busy
//! upstream is never asked.

use alloc::vec::Vec;

use smoltcp::iface::Interface;
use smoltcp::phy::Device;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;

use crate::config::{Rule, RuleKind};

use super::plan::try_vec;
use super::EngineError;

/// How long an upstream stays in use after its last connection.
pub const KEEP: Duration = Duration::from_secs(600);
/// Ask again when the entry has less than this left.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5);
/// At most one request per upstream this often (smoltcp's limit per
/// destination is the same).
pub const RETRY: Duration = Duration::from_secs(1);

/// One upstream address, shared by the rules that name it.
#[derive(Debug)]
struct Upstream {
    addr: IpAddress,
    /// The last poll with a connection to it open.
    used_at: Option<Instant>,
    /// The last request sent (or tried) for it.
    asked_at: Option<Instant>,
}

/// The reverse rules' upstreams and when each was last used and asked for.
#[derive(Debug)]
pub(super) struct Neighbours {
    upstreams: Vec<Upstream>,
    /// For each rule (by index), its upstream's index in `upstreams`.
    by_rule: Vec<Option<usize>>,
}

impl Neighbours {
    pub(super) fn new(rules: &[Rule]) -> Result<Neighbours, EngineError> {
        let mut upstreams: Vec<Upstream> = try_vec(rules.len(), "upstream neighbours")?;
        let mut by_rule = try_vec(rules.len(), "upstream neighbours")?;
        for r in rules {
            let RuleKind::Reverse { upstream, .. } = r.kind else {
                by_rule.push(None);
                continue;
            };
            let addr = IpAddress::Ipv4(upstream);
            let i = match upstreams.iter().position(|u| u.addr == addr) {
                Some(i) => i,
                None => {
                    upstreams.push(Upstream {
                        addr,
                        used_at: None,
                        asked_at: None,
                    });
                    upstreams.len() - 1
                }
            };
            by_rule.push(Some(i));
        }
        Ok(Neighbours { upstreams, by_rule })
    }

    /// Connections of these rules are open at `now`.
    pub(super) fn note_use(&mut self, rules: impl Iterator<Item = u8>, now: Instant) {
        for r in rules {
            if let Some(&Some(i)) = self.by_rule.get(usize::from(r)) {
                self.upstreams[i].used_at = Some(now);
            }
        }
    }

    /// Send the refresh requests that are due. Returns whether one was sent.
    pub(super) fn refresh<D: Device + ?Sized>(
        &mut self,
        iface: &mut Interface,
        device: &mut D,
        now: Instant,
    ) -> bool {
        let mut sent = false;
        for u in &mut self.upstreams {
            if u.due(iface, now).is_some_and(|t| t <= now) {
                u.asked_at = Some(now);
                sent |= iface.request_neighbor(now, device, &u.addr);
            }
        }
        sent
    }

    /// When [`Neighbours::refresh`] next has something to do, if ever.
    pub(super) fn refresh_at(&self, iface: &Interface, now: Instant) -> Option<Instant> {
        self.upstreams
            .iter()
            .filter_map(|u| u.due(iface, now))
            .min()
    }
}

impl Upstream {
    /// When a refresh request for this upstream is due (possibly already):
    /// `None` while it is not in use or smoltcp holds no entry for it.
    fn due(&self, iface: &Interface, now: Instant) -> Option<Instant> {
        if self.used_at.is_none_or(|t| now >= t + KEEP) {
            return None;
        }
        let expires = iface.neighbor_expires_at(now, &self.addr)?;
        let at = expires - REFRESH_BEFORE;
        Some(match self.asked_at {
            Some(a) if a + RETRY > at => a + RETRY,
            _ => at,
        })
    }
}
