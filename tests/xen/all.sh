#!/bin/bash
# Runs inside dom0 (scripts/testbed-run installs it as /root/test.sh): every
# tests/xen/NN-*.sh in order, in this one shell so the pass/fail counts add
# up, then one summary line. The testbed boots once for the whole batch.
self=$(readlink -f "$0")
. /root/lib.sh
cd /root/payload
# Each file may end with its own `summary` (so it also runs alone); here only
# the batch's final count is printed.
eval "$(declare -f summary | sed '1s/^summary/batch_summary/')"
summary() { return 0; }
# Under TCG, dom0 has been seen idle for minutes while every test process
# waited (an xl create that never returned): when no test has logged, passed
# or failed anything for XEN_STALL_S seconds (default 150; lib.sh's `alive`
# marks each), print what each process waits on, so the log shows where. (The
# host's scripts/testbed-run asks Xen itself later.) The watcher belongs to an
# outer shell; the tests run in an inner one, in the foreground with the
# console as their output, where a bare `wait` (00-smoke has one) waits for
# the test's own jobs only.
if [ -z "${XEN_ALL_INNER:-}" ]; then
    alive
    (
        # Bash builtins only (no sleep, date or stat process every 15 s: each
        # costs dom0 ~0.1 s of CPU under TCG, taken from whatever test runs
        # then): read -t on a FIFO no one writes waits; the alive file newer
        # than the seen file means a test logged since the last look.
        n=0 seen=$EPOCHSECONDS tick=/tmp/xen-tests.tick
        rm -f "$tick"; mkfifo "$tick"; exec 9<> "$tick"; : > /tmp/xen-tests.seen
        while ! read -r -t 15 -u 9 _; do
            if [ /tmp/xen-tests.alive -nt /tmp/xen-tests.seen ]; then
                : > /tmp/xen-tests.seen; seen=$EPOCHSECONDS
            fi
            idle=$(( EPOCHSECONDS - seen ))
            if [ "$idle" -ge "${XEN_STALL_S:-150}" ] && [ "$n" -lt 4 ]; then
                echo "== stall: nothing logged for ${idle}s; processes (pid ppid state age wchan args):"
                ps -eo pid=,ppid=,stat=,etimes=,wchan:28=,args= | awk '$2 != 2 && $1 != 2' | cut -c1-200 | tail -n 60
                echo "== stall: xenstored $(ps -o stat=,time= -C xenstored 2>/dev/null), domains: $(timeout 10 xl list 2>/dev/null | awk 'NR > 1 {printf "%s:%s ", $1, $5}')"
                # A process running (R) for over a minute: where it spins, in
                # the kernel (its stack, its syscall) or in user space (its
                # instruction pointer from a backtrace of the running CPU).
                for pid in $(ps -eo pid=,stat=,etimes= | awk '$2 ~ /^R/ && $3 > 60 { print $1 }'); do
                    [ "$pid" = "$$" ] && continue
                    echo "== stall: pid $pid running for $(ps -o etimes= -p "$pid")s: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
                    echo "   syscall: $(cat "/proc/$pid/syscall" 2>/dev/null); minflt/majflt: $(awk '{ print $10 "/" $12 }' "/proc/$pid/stat" 2>/dev/null)"
                    sed 's/^/   stack: /' "/proc/$pid/stack" 2>/dev/null | head -n 12
                done
                echo l > /proc/sysrq-trigger 2>/dev/null && dmesg | tail -n 40 | sed 's/^/   sysrq-l: /'
                n=$((n + 1)); : > /tmp/xen-tests.alive
            fi
        done
    ) &
    watcher=$!
    XEN_ALL_INNER=1 bash "$self" "$@"
    rc=$?
    kill "$watcher" 2>/dev/null
    exit "$rc"
fi
# all_tmp_left FILE BEFORE: what FILE left in /tmp (entries not in BEFORE,
# a listing). dom0's root, its /tmp with it, is a tmpfs in dom0's RAM, a
# few hundred MB for every file's data. A CI run found it full in
# 62-scale (files it wrote came out empty: an `xl create` with no output,
# a trace with no writes) after earlier files had left ~170 MB there. Each
# file removes what it wrote; one that did not fails here, and what it left
# is removed so the next file has its room.
all_tmp_left() {
    local new kb
    new=$(comm -13 <(printf '%s\n' "$2" | sort) <(ls -A /tmp | sort) | tr '\n' ' ')
    if [ -z "${new// /}" ]; then
        pass "$1 left nothing in /tmp ($(df -k /tmp | awk 'NR == 2 { print $4 }') KiB free)"
        return
    fi
    # shellcheck disable=SC2086 # a list of names
    kb=$(cd /tmp && du -sck $new 2>/dev/null | tail -n 1 | cut -f1)
    fail "$1 cleans up /tmp" "left $kb KiB: $(cd /tmp && du -sk $new 2>/dev/null | sort -rn | head -n 5 | tr '\t\n' ': ')"
    # shellcheck disable=SC2086
    (cd /tmp && rm -rf $new)
}
for t in tests/xen/[0-9][0-9]-*.sh; do
    case " ${XEN_TESTS:-} " in "  ") ;; *" $(basename "$t" .sh) "*) ;; *) continue ;; esac
    log "running $t"
    all_tmp0=$(ls -A /tmp)
    all_file_t0=$(now_ms)   # not t0: the sourced files set their own
    . "$t"
    log "$t took $(( $(now_ms) - all_file_t0 )) ms"
    # Leave nothing behind for the next file.
    for d in $(xl list 2>/dev/null | awk 'NR>2 {print $1}'); do xl_destroy "$d" >/dev/null; done
    all_tmp_left "$(basename "$t" .sh)" "$all_tmp0"
done
batch_summary
