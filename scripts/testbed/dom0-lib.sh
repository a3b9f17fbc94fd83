# dom0-lib.sh: helpers for test scripts that run inside the test bed's dom0.
# testbed-run installs it as /root/lib.sh; a test starts with `. /root/lib.sh` (bash).
#
# Write tests WITHOUT `set -e`: a failed check should be counted, not end the script
# before `summary`. Every function returns 0 on success and non-zero on failure, and
# the timed ones (xl_create, xl_destroy, wait_*) leave their duration in $LAST_MS.
# Messages go to stdout (the serial console); the host prefixes them with timestamps.
#
#   now_ms                       milliseconds since the epoch
#   log MSG...                   print "== MSG"
#   domid NAME                   print NAME's domain id; fails if there is no such domain
#   xl_create CFG [ARGS...]      xl create CFG ARGS (ARGS: xl overrides like name=x);
#                                rc 134 (xl's rare abort at exit) with the domain present
#                                counts as created; any other failure is retried once
#   xl_destroy NAME              xl destroy NAME, tolerant the same way; ok when it is gone
#   wait_xs KEY TIMEOUT_S        wait until xenstore KEY exists (polls every 20 ms)
#   wait_gone NAME TIMEOUT_S     wait until domain NAME no longer exists
#   wait_console NAME PATTERN TIMEOUT_S
#                                wait until the console log of guest NAME matches the
#                                extended regex PATTERN
#   console_log NAME             path of guest NAME's console log
#   check NAME CMD [ARGS...]     run CMD; print "TEST PASS NAME" or "TEST FAIL NAME: ..."
#                                (do not redirect check's output: wrap CMD in quiet)
#   quiet CMD [ARGS...]          run CMD with its stdout and stderr thrown away
#   pass NAME / fail NAME REASON record a result by hand ("fail" returns 1)
#   summary                      print "N passed, M failed"; non-zero if any failed or
#                                if nothing was checked at all
#   diag                         print xl list, the tails of xl dmesg and dmesg
#   start_serve MP OUT ERR       start the resident spawner `MP serve` in the background
#                                (stdout to OUT, stderr to ERR) and wait up to 30 s for its
#                                `serving socket=PATH` line; sets SERVE_PID and SERVE_SOCK
#                                (empty if it did not start: then it fails)
# TIMEOUT_S may have decimals (0.5).

# Sourcing it again (a batch script that sources several tests, each of which sources
# this file) changes nothing: the counts and any redefined function stay.
[ -n "${TB_LIB_LOADED:-}" ] && return 0
TB_LIB_LOADED=1
export PATH=/usr/lib/xen-4.17/bin:$PATH
TB_PASSED=0
TB_FAILED=0
LAST_MS=0
XEN_CONSOLE_DIR=/var/log/xen/console

# Milliseconds since the epoch from bash's own clock: a `date` process per
# call cost dom0 ~0.1 s under TCG, and some loops call it per instance.
now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo "$((t / 1000))"; }
# Every log/pass/fail line marks progress for tests/xen/all.sh's stall watcher.
alive() { : > /tmp/xen-tests.alive 2>/dev/null; }
log() { alive; echo "== $*"; }
quiet() { "$@" >/dev/null 2>&1; }
_ms() { awk -v s="$1" 'BEGIN { printf "%d", s * 1000 }'; }

# Domain name that `xl create CFG ARGS...` will use: a name=... override wins.
_cfg_name() {
    local cfg=$1 a name=
    shift
    for a in "$@"; do case $a in name=*) name=${a#name=}; name=${name//[\"\']/} ;; esac; done
    [ -n "$name" ] || name=$(sed -n "s/^[[:space:]]*name[[:space:]]*=[[:space:]]*[\"']\([^\"']*\)[\"'].*/\1/p" "$cfg" | tail -n1)
    [ -n "$name" ] || { echo "xl_create: no name= in $cfg or the arguments" >&2; return 1; }
    echo "$name"
}

domid() {
    local out rc
    for _ in 1 2 3; do
        rc=0
        out=$(xl domid "$1" 2>/dev/null) || rc=$?
        [ $rc = 134 ] || break      # xl's rare abort at exit: ask again
    done
    [ $rc = 0 ] && [ -n "$out" ] || return 1
    echo "$out"
}

xl_create() {
    local cfg=$1 name try rc t0
    shift
    name=$(_cfg_name "$cfg" "$@") || return 1
    for try in 1 2; do
        t0=$(now_ms)
        rc=0
        xl create "$cfg" "$@" || rc=$?
        LAST_MS=$(( $(now_ms) - t0 ))
        if [ $rc = 0 ]; then
            echo "xl_create $name: created in $LAST_MS ms"
            return 0
        fi
        if domid "$name" >/dev/null; then
            if [ $rc = 134 ]; then
                echo "xl_create $name: xl aborted at exit (rc 134) but the domain exists: created in $LAST_MS ms"
                return 0
            fi
            xl destroy "$name" >/dev/null 2>&1   # half-made domain: clear it before retrying
        fi
        echo "xl_create $name: attempt $try failed (rc $rc) after $LAST_MS ms"
    done
    return 1
}

xl_destroy() {
    local name=$1 try rc t0
    t0=$(now_ms)
    for try in 1 2; do
        rc=0
        xl destroy "$name" || rc=$?
        if ! domid "$name" >/dev/null; then
            LAST_MS=$(( $(now_ms) - t0 ))
            echo "xl_destroy $name: gone in $LAST_MS ms$([ $rc = 0 ] || echo " (xl rc $rc)")"
            return 0
        fi
        echo "xl_destroy $name: attempt $try: xl rc $rc and the domain is still there"
    done
    LAST_MS=$(( $(now_ms) - t0 ))
    return 1
}

# _wait WHAT TIMEOUT_S CMD...: run CMD every 20 ms until it succeeds or time is up.
_wait() {
    local what=$1 limit t0 now
    limit=$(_ms "$2")
    shift 2
    t0=$(now_ms)
    while :; do
        if "$@"; then
            LAST_MS=$(( $(now_ms) - t0 ))
            echo "$what: after $LAST_MS ms"
            return 0
        fi
        now=$(now_ms)
        if [ $((now - t0)) -ge "$limit" ]; then
            LAST_MS=$((now - t0))
            echo "$what: timed out after $LAST_MS ms"
            return 1
        fi
        sleep 0.02
    done
}

_xs_exists() { xenstore-read "$1" >/dev/null 2>&1; }
_dom_absent() { ! domid "$1" >/dev/null; }
_console_has() { grep -qE -- "$2" "$(console_log "$1")" 2>/dev/null; }
console_log() { echo "$XEN_CONSOLE_DIR/guest-$1.log"; }

wait_xs() { _wait "wait_xs $1" "$2" _xs_exists "$1"; }
wait_gone() { _wait "wait_gone $1" "$2" _dom_absent "$1"; }
wait_console() {
    _wait "wait_console $1 /$2/" "$3" _console_has "$1" "$2" && return 0
    echo "--- last lines of $(console_log "$1"):"
    tail -n 5 "$(console_log "$1")" 2>/dev/null
    return 1
}

pass() { alive; TB_PASSED=$((TB_PASSED + 1)); echo "TEST PASS $1"; }
fail() { alive; TB_FAILED=$((TB_FAILED + 1)); echo "TEST FAIL $1: ${2:-failed}"; return 1; }
check() {
    local name=$1 rc=0
    shift
    "$@" || rc=$?
    if [ $rc = 0 ]; then pass "$name"; else fail "$name" "'$*' exited $rc"; fi
    return $rc
}

summary() {
    [ $((TB_PASSED + TB_FAILED)) = 0 ] && echo "summary: no checks ran"
    echo "$TB_PASSED passed, $TB_FAILED failed"
    [ $TB_FAILED = 0 ] && [ $TB_PASSED -gt 0 ]
}

diag() {
    echo "--- xl list"; xl list 2>&1
    echo "--- xl dmesg (tail)"; xl dmesg 2>&1 | tail -n 30
    echo "--- dmesg (tail)"; dmesg 2>&1 | tail -n 30
}

start_serve() {
    local mp=$1 out=$2 err=$3
    SERVE_SOCK=''
    "$mp" serve > "$out" 2> "$err" & SERVE_PID=$!
    for _ in $(seq 1 300); do
        grep -q '^serving socket=' "$out" 2>/dev/null && break
        kill -0 "$SERVE_PID" 2>/dev/null || break   # it exited: no need to wait
        sleep 0.1
    done
    SERVE_SOCK=$(sed -n 's/^serving socket=//p' "$out")
    [ -n "$SERVE_SOCK" ] && [ -S "$SERVE_SOCK" ]
}
