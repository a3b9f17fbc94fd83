#!/bin/bash
# Runs inside dom0 (scripts/testbed-run installs it as /root/test.sh): every
# tests/xen/NN-*.sh in order, in this one shell so the pass/fail counts add
# up, then one summary line. The testbed boots once for the whole batch.
. /root/lib.sh
cd /root/payload
# Each file may end with its own `summary` (so it also runs alone); here only
# the batch's final count is printed.
eval "$(declare -f summary | sed '1s/^summary/batch_summary/')"
summary() { return 0; }
for t in tests/xen/[0-9][0-9]-*.sh; do
    case " ${XEN_TESTS:-} " in "  ") ;; *" $(basename "$t" .sh) "*) ;; *) continue ;; esac
    log "running $t"
    t0=$(now_ms)
    . "$t"
    log "$t took $(( $(now_ms) - t0 )) ms"
    # Leave nothing behind for the next file.
    for d in $(xl list 2>/dev/null | awk 'NR>2 {print $1}'); do xl_destroy "$d" >/dev/null; done
done
batch_summary
