//! Admission: what an engine built from a config costs at worst, and the
//! refusal (with what would fit) when that exceeds the memory budget.
//!
//! The engine never holds more than `2 * max_conns + 2 * rules * backlog` sockets
//! (two per connection, the listen pools, and as many again for refused SYNs
//! whose RST has not been sent yet), each with one receive and one transmit
//! buffer of the same size, between `buf_min` and `buf` bytes. [`MemoryPlan`]
//! computes, from the config alone, what everything but the buffers costs (the
//! socket table, the connection table and the lists are reserved up front at
//! their largest) and the worst case with every socket at `buf_min`;
//! [`Engine::new`] refuses a config whose worst case at `buf_min` exceeds the
//! budget, saying which `max_conns` or `buf_min` would fit. What is left of the
//! budget after the fixed part is the *buffer budget* (see `sizing` for how it
//! is shared).

use alloc::vec::Vec;
use core::fmt;
use core::mem::size_of;

use smoltcp::iface::{Interface, SocketHandle, SocketStorage};
use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

use super::listeners::RulePool;
use super::splice::Conn;
use super::{Engine, EXTRA_SOCKETS};
use crate::config::{Config, MIN_BUF};

/// Bytes assumed for the interface, the engine and allocator slack.
const FIXED_OVERHEAD: usize = 16 * 1024;
/// Per-allocation bookkeeping assumed for the heap allocator.
const ALLOC_OVERHEAD: usize = 32;

/// The memory of an engine built from a config: the fixed part, and the worst
/// case with every socket's buffers at `buf_min` (what [`Engine::new`] requires)
/// and at `buf`. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Most sockets ever held: `2 * max_conns + 2 * rules * backlog`.
    pub max_sockets: usize,
    /// Bytes per socket besides its two buffers: the socket itself, list
    /// entries, allocator overhead. Reserved up front for `max_sockets`.
    pub socket_overhead: usize,
    /// Bytes per socket with its buffers at `buf_min` (`socket_overhead + 2 * buf_min`).
    pub per_socket: usize,
    /// Bytes per socket with its buffers at `buf`.
    pub per_socket_max: usize,
    /// Bytes per connection besides its sockets (tables).
    pub per_conn: usize,
    /// Bytes independent of `max_conns` and the buffers.
    pub fixed: usize,
    /// Worst case in bytes with every socket at `buf_min`: the budget must hold this.
    pub total: usize,
    /// Worst case in bytes with every socket at `buf`: with this budget every
    /// connection gets `buf`, however many are open.
    pub total_max: usize,
}

impl MemoryPlan {
    /// The plan of `cfg` if its worst case at `buf_min` fits `budget`, else
    /// the refusal, saying which `max_conns` or `buf_min` would fit.
    pub(super) fn admit(cfg: &Config, budget: usize) -> Result<MemoryPlan, EngineError> {
        let plan = MemoryPlan::for_config(cfg);
        if plan.total > budget {
            return Err(EngineError::TooBig {
                needed: plan.total,
                budget,
                max_conns: cfg.max_conns,
                buf_min: buf_range(cfg).0,
                fit_max_conns: MemoryPlan::max_conns_fitting(cfg, budget),
                fit_buf_min: MemoryPlan::buf_min_fitting(cfg, budget),
            });
        }
        Ok(plan)
    }

    /// Compute the plan for `cfg`.
    pub fn for_config(cfg: &Config) -> MemoryPlan {
        let (buf_min, buf) = buf_range(cfg);
        Self::compute(cfg.max_conns, buf_min, buf, cfg.rules.len(), cfg.backlog)
    }

    fn compute(
        max_conns: usize,
        buf_min: usize,
        buf: usize,
        rules: usize,
        backlog: usize,
    ) -> MemoryPlan {
        // The pools, plus as many again for refused SYNs whose RST is pending.
        let pool = rules.saturating_mul(backlog).saturating_mul(2);
        let max_sockets = max_conns.saturating_mul(2).saturating_add(pool);
        let socket_overhead = size_of::<SocketStorage<'static>>()
            // spare/dying/pool handle lists and the per-pass socket table
            + 3 * size_of::<(SocketHandle, Instant)>()
            + size_of::<(SocketHandle, usize)>()
            + 3 * ALLOC_OVERHEAD;
        let per_socket = buf_min.saturating_mul(2).saturating_add(socket_overhead);
        let per_socket_max = buf.saturating_mul(2).saturating_add(socket_overhead);
        let per_conn = size_of::<Conn>();
        let fixed = FIXED_OVERHEAD
            + size_of::<Interface>()
            + size_of::<Engine>()
            + EXTRA_SOCKETS * size_of::<SocketStorage<'static>>()
            + rules * size_of::<RulePool>();
        let base = max_conns.saturating_mul(per_conn).saturating_add(fixed);
        MemoryPlan {
            max_sockets,
            socket_overhead,
            per_socket,
            per_socket_max,
            per_conn,
            fixed,
            total: max_sockets.saturating_mul(per_socket).saturating_add(base),
            total_max: max_sockets
                .saturating_mul(per_socket_max)
                .saturating_add(base),
        }
    }

    /// Bytes for everything but the socket buffers (reserved up front).
    pub fn without_buffers(&self) -> usize {
        self.total - self.max_sockets * (self.per_socket - self.socket_overhead)
    }

    /// The largest `max_conns` that fits `budget` with this config's `buf_min`.
    pub fn max_conns_fitting(cfg: &Config, budget: usize) -> usize {
        let (mut lo, mut hi) = (0usize, 1 << 20);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let (buf_min, buf) = buf_range(cfg);
            if Self::compute(mid, buf_min, buf, cfg.rules.len(), cfg.backlog).total <= budget {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// The largest `buf_min` (a multiple of 1 KiB, at least the smallest
    /// allowed) that fits `budget` with this config's `max_conns`; 0 if none does.
    pub fn buf_min_fitting(cfg: &Config, budget: usize) -> usize {
        let (mut lo, mut hi) = (0usize, 1 << 20); // in KiB
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let buf = buf_range(cfg).1;
            if Self::compute(cfg.max_conns, mid * 1024, buf, cfg.rules.len(), cfg.backlog).total
                <= budget
            {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo * 1024 < MIN_BUF {
            0
        } else {
            lo * 1024
        }
    }
}

/// `(buf_min, buf)` of a config, made consistent (`Config::parse` already
/// ensures `1k <= buf_min <= buf`; a hand-made `Config` may not).
pub(super) fn buf_range(cfg: &Config) -> (usize, usize) {
    let buf_min = cfg.buf_min.max(1);
    (buf_min, cfg.buf.max(buf_min))
}

/// Why an engine could not be built or reconfigured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The worst case of the config at `buf_min` exceeds the memory budget.
    TooBig {
        needed: usize,
        budget: usize,
        max_conns: usize,
        buf_min: usize,
        /// The largest `max_conns` that fits with this `buf_min` (0: none).
        fit_max_conns: usize,
        /// The largest `buf_min` that fits with this `max_conns` (0: none).
        fit_buf_min: usize,
    },
    /// The hardware address does not suit the device (wrong medium, not unicast).
    BadHardwareAddress,
    /// The device's medium is not supported (only Ethernet is).
    UnsupportedMedium,
    /// The device advertises TCP segmentation offload but has smoltcp compute
    /// TCP checksums on transmit (smoltcp would panic): with TSO, `checksum.tcp`
    /// must be `Rx` or `None` (the device fills them).
    InconsistentOffload,
    /// An address that cannot be assigned (not unicast).
    BadAddress(Ipv4Address),
    /// An allocation failed while building the engine.
    OutOfMemory(&'static str),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::TooBig {
                needed,
                budget,
                max_conns,
                buf_min,
                fit_max_conns,
                fit_buf_min,
            } => {
                write!(
                    f,
                    "engine: max_conns={max_conns} with buf_min={} needs {} but the memory budget is {}; ",
                    Kib(*buf_min),
                    Kib(*needed),
                    Kib(*budget)
                )?;
                match (*fit_max_conns, *fit_buf_min) {
                    (0, 0) => write!(f, "nothing fits: raise mem= or use fewer rules/backlog"),
                    (0, b) => {
                        write!(f, "would fit: buf_min={} with max_conns={max_conns}", Kib(b))
                    }
                    (m, 0) => write!(f, "would fit: max_conns={m} with buf_min={}", Kib(*buf_min)),
                    (m, b) => write!(
                        f,
                        "would fit: max_conns={m} with buf_min={}, or buf_min={} with max_conns={max_conns}",
                        Kib(*buf_min),
                        Kib(b)
                    ),
                }
            }
            EngineError::BadHardwareAddress => {
                write!(f, "engine: hardware address is not a unicast Ethernet address")
            }
            EngineError::UnsupportedMedium => {
                write!(f, "engine: device medium is not Ethernet")
            }
            EngineError::InconsistentOffload => write!(
                f,
                "engine: the device advertises TCP segmentation offload but not TCP checksum offload on transmit"
            ),
            EngineError::BadAddress(a) => write!(f, "engine: address {a} is not unicast"),
            EngineError::OutOfMemory(what) => write!(f, "engine: out of memory allocating {what}"),
        }
    }
}

/// An empty vector with room for `cap` elements, reserved up front (the
/// plan counts it), or the allocation failure naming `what`.
pub(super) fn try_vec<T>(cap: usize, what: &'static str) -> Result<Vec<T>, EngineError> {
    let mut v = Vec::new();
    v.try_reserve_exact(cap)
        .map_err(|_| EngineError::OutOfMemory(what))?;
    Ok(v)
}

/// Formats a byte count as `16k`/`1m` when exact, else bytes.
struct Kib(usize);
impl fmt::Display for Kib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}m", n >> 20)
        } else if n >= 1024 && n.is_multiple_of(1024) {
            write!(f, "{}k", n >> 10)
        } else if n >= 1 << 20 {
            write!(f, "{}.{}m", n >> 20, ((n & ((1 << 20) - 1)) * 10) >> 20)
        } else {
            write!(f, "{n}")
        }
    }
}

/// The size formatting used in error messages, for tests.
#[cfg(test)]
pub(crate) fn tests_fmt_size(n: usize) -> alloc::string::String {
    alloc::format!("{}", Kib(n))
}
