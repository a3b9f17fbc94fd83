//! The engine's memory budget: what the heap leaves it, or `mem=`.
//!
//! The heap is fixed at boot (the domain's `memory=` less the image and
//! page tables); [`HEAP_RESERVE`] of what is free when the engine is built
//! stays for everything else. `mem=` asks for a budget: up to what the heap
//! leaves, it is the budget (so an instance can be held to less than its
//! domain has); above that the heap decides, and the log says so; beyond
//! the whole heap it cannot be meant for this domain and is a config error.
//! (On the host, `miniproxy-tap` takes `mem=` as the budget, default 64m.)

use alloc::format;
use alloc::string::String;

/// Heap kept back from the engine's budget for everything else (xenstore
/// strings, smoltcp's interface, netfront's bookkeeping, the log).
pub const HEAP_RESERVE: usize = 192 * 1024;

/// How the budget was chosen, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// No `mem=`: all the heap leaves.
    Heap(usize),
    /// `mem=`, within what the heap leaves.
    Mem(usize),
    /// `mem=` (the first) above what the heap leaves (the second, used).
    CutToHeap { asked: usize, budget: usize },
}

impl Budget {
    pub fn bytes(self) -> usize {
        match self {
            Budget::Heap(b) | Budget::Mem(b) | Budget::CutToHeap { budget: b, .. } => b,
        }
    }
}

/// The engine's budget for `mem` (the `mem=` key) on a heap of `heap_size`
/// bytes of which `heap_used` are in use. An error (a `config:` line) if
/// `mem` is more than the whole heap.
pub fn engine_budget(
    mem: Option<usize>,
    heap_used: usize,
    heap_size: usize,
) -> Result<Budget, String> {
    let left = heap_size
        .saturating_sub(heap_used)
        .saturating_sub(HEAP_RESERVE);
    match mem {
        None => Ok(Budget::Heap(left)),
        Some(m) if m > heap_size => Err(format!(
            "config: mem={} KiB is more than this domain's whole heap ({} KiB): \
             raise memory= in the xl config or lower mem=",
            m / 1024,
            heap_size / 1024
        )),
        Some(m) if m > left => Ok(Budget::CutToHeap {
            asked: m,
            budget: left,
        }),
        Some(m) => Ok(Budget::Mem(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: usize = 1024;

    #[test]
    fn without_mem_the_budget_is_what_the_heap_leaves() {
        assert_eq!(
            engine_budget(None, 1000 * K, 5000 * K),
            Ok(Budget::Heap(4000 * K - HEAP_RESERVE))
        );
        // A heap already full: nothing, not an underflow.
        assert_eq!(engine_budget(None, 5000 * K, 5000 * K), Ok(Budget::Heap(0)));
    }

    #[test]
    fn mem_within_the_heap_is_the_budget() {
        let got = engine_budget(Some(1024 * K), 1000 * K, 5000 * K).unwrap();
        assert_eq!(got, Budget::Mem(1024 * K));
        assert_eq!(got.bytes(), 1024 * K);
        // Exactly what is left is still mem=.
        let left = 4000 * K - HEAP_RESERVE;
        assert_eq!(
            engine_budget(Some(left), 1000 * K, 5000 * K),
            Ok(Budget::Mem(left))
        );
    }

    #[test]
    fn mem_above_what_is_left_is_cut_to_it_and_said() {
        let left = 4000 * K - HEAP_RESERVE;
        let got = engine_budget(Some(left + 1), 1000 * K, 5000 * K).unwrap();
        assert_eq!(
            got,
            Budget::CutToHeap {
                asked: left + 1,
                budget: left
            }
        );
        assert_eq!(got.bytes(), left);
        // Up to the whole heap.
        assert_eq!(
            engine_budget(Some(5000 * K), 1000 * K, 5000 * K).map(Budget::bytes),
            Ok(left)
        );
    }

    #[test]
    fn mem_beyond_the_whole_heap_is_a_config_error() {
        assert_eq!(
            engine_budget(Some(64 << 20), 1000 * K, 5000 * K),
            Err(
                "config: mem=65536 KiB is more than this domain's whole heap (5000 KiB): \
                 raise memory= in the xl config or lower mem="
                    .into()
            )
        );
        assert!(engine_budget(Some(5000 * K + 1), 0, 5000 * K).is_err());
    }
}
