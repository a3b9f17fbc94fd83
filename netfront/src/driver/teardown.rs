//! Teardown: answering the backend's Closing/Closed (or starting a close
//! ourselves), waiting until the backend no longer maps our pages, then
//! ending every grant and freeing the pages. A page the backend still maps
//! after `close_timeout_ms` is leaked, never reused: giving it back would
//! let the backend write into memory the guest uses for something else.

use alloc::vec::Vec;

use super::{Netfront, Phase};
use crate::datapath::Shared;
use crate::platform::{Platform, Port};
use crate::types::{Event, Reason};
use crate::xenbus::XenbusState;

impl<P: Platform> Netfront<P> {
    /// Link down. `peer_closing`: the backend started it, so we answer with
    /// Closed at once (as Linux netfront does); otherwise we go Closing and
    /// wait for the backend to follow.
    pub(super) fn begin_closing(&mut self, reason: Reason, peer_closing: bool) {
        log::info!("netfront: vif{} down: {reason}", self.cfg.vif);
        self.events.push_back(Event::Disconnected(reason));
        if let Some(mut datapath) = self.datapath.take() {
            if let Some(p) = datapath.port.take() {
                self.platform.close_port(p);
            }
            self.releasing.append(&mut datapath.pages);
        }
        let target = if peer_closing {
            XenbusState::Closed
        } else {
            XenbusState::Closing
        };
        let _ = self.set_state(target);
        self.phase = Phase::Closing {
            since: self.now,
            wrote_closed: peer_closing,
        };
        self.step_closing();
    }

    pub(super) fn step_closing(&mut self) {
        let Phase::Closing {
            since,
            mut wrote_closed,
        } = self.phase
        else {
            return;
        };
        // (gone, closed, closing-or-beyond); an unreadable node tells nothing.
        let (gone, closed, closing) = match self.backend_state() {
            Ok(None | Some(XenbusState::Unknown)) => (true, false, true),
            Ok(Some(s)) => (false, s == XenbusState::Closed, s >= XenbusState::Closing),
            Err(()) => (false, false, false),
        };
        let timed_out = self.now.saturating_sub(since) >= self.cfg.close_timeout_ms;
        if !wrote_closed && (closing || timed_out) {
            let _ = self.set_state(XenbusState::Closed);
            wrote_closed = true;
        }
        self.phase = Phase::Closing {
            since,
            wrote_closed,
        };
        if !(wrote_closed && (gone || closed)) && !timed_out {
            return; // the backend may still map our rings
        }
        let pending = core::mem::take(&mut self.releasing);
        for s in pending {
            match self.platform.end_grant(s.gref) {
                Ok(()) => self.platform.free_page(s.page),
                Err(_) => self.releasing.push(s),
            }
        }
        if !self.releasing.is_empty() && !timed_out {
            return; // retry on the next poll
        }
        let leaked = self.releasing.len();
        if leaked > 0 {
            log::warn!(
                "netfront: vif{}: backend still maps {leaked} pages; leaking them",
                self.cfg.vif
            );
        }
        self.stats.pages_leaked += leaked as u64;
        for s in core::mem::take(&mut self.releasing) {
            self.leaked.push(s.page);
        }
        self.phase = Phase::Disconnected;
        self.events.push_back(Event::Released {
            leaked_pages: leaked,
        });
    }

    /// Give back pages nobody else has seen yet (setup failure).
    pub(super) fn release_now(&mut self, pages: Vec<Shared<P::Page>>, port: Option<Port>) {
        if let Some(p) = port {
            self.platform.close_port(p);
        }
        for s in pages {
            match self.platform.end_grant(s.gref) {
                Ok(()) => self.platform.free_page(s.page),
                Err(_) => {
                    self.stats.pages_leaked += 1;
                    self.leaked.push(s.page);
                }
            }
        }
    }
}
