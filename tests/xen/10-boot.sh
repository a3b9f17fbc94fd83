#!/bin/bash
# Boot tests (issue 2), run inside dom0 by tests/xen/all.sh.
# Uses the shipped xl config with overrides, as an operator would.
. /root/lib.sh
P=/root/payload
CFG=$P/xl-configs/miniproxy.cfg
KERNEL="kernel=\"$P/miniproxy\""
NOVIF='vif=[]'

# 1. memory=4 boots; the console shows the parsed config; the ready key appears.
VIF4="vif=['bridge=xenbr0,mac=00:16:3e:00:00:04,script=/etc/xen/scripts/vif-fast']"
xl_create "$CFG" "$KERNEL" 'name="boot4"' 'memory=4' "$VIF4" \
    'extra="loglevel=debug ip=10.0.0.2/24 gw=10.0.0.1 rule=reverse:80:10.0.0.1:8080 max_conns=32 buf=8k"' \
    && pass "boot4: xl create accepted memory=4" || fail "boot4: xl create failed"
id=$(domid boot4)
if wait_xs "/local/domain/$id/data/ready" 20; then
    pass "boot4: ready key after $LAST_MS ms (guest: $(xenstore-read /local/domain/$id/data/ready) us from first instruction)"
else
    fail "boot4: no ready key within 20 s"
fi
wait_console boot4 'config: .*rule=reverse:80:10.0.0.1:8080' 5 \
    && pass "boot4: console shows the parsed config" || fail "boot4: parsed config not on the console"
wait_console boot4 'loglevel=debug' 1 \
    && pass "boot4: console shows loglevel" || fail "boot4: loglevel not on the console"

# Xen starts a PV vCPU with a 100 Hz periodic timer; the guest stops it at
# boot (it never binds VIRQ_TIMER). Xen's 'q' dump says so per domain.
id=$(xl domid boot4 2>/dev/null)
xl debug-keys q >/dev/null 2>&1; sleep 1
per=$(xl dmesg 2>/dev/null | awk -v d="General information for domain $id:" \
    'index($0, "General information for domain") { on = index($0, d) > 0 } on && /periodic timer/ { l = $0 } END { print l }')
case $per in
*"No periodic timer"*) pass "boot4: periodic timer stopped (xl debug-keys q: '${per##*) }')" ;;
*) fail "boot4: periodic timer" "xl debug-keys q says '${per:-nothing for domain $id}'" ;;
esac

# An idle guest sleeps in SCHEDOP_poll: its CPU time hardly moves in 3 s.
cpu0=$(xl list boot4 | awk 'NR==2 {print $6}')
sleep 3
cpu1=$(xl list boot4 | awk 'NR==2 {print $6}')
if awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { exit !(b - a < 0.3) }'; then
    pass "boot4: idle guest used $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {print b - a}') s CPU in 3 s"
else
    fail "boot4: idle guest used CPU ($cpu0 s -> $cpu1 s in 3 s)"
fi

# 2. xl shutdown: the guest acknowledges control/shutdown and is gone within a bound.
t0=$(now_ms)
xl shutdown boot4 >/dev/null 2>&1 || fail "boot4: xl shutdown returned an error"
if wait_gone boot4 15; then
    pass "boot4: xl shutdown -> gone in $(( $(now_ms) - t0 )) ms"
else
    fail "boot4: still there 15 s after xl shutdown"; xl_destroy boot4
fi
echo "--- console of boot4:"; cat "$(console_log boot4)"
grep -q 'shutdown requested: poweroff' "$(console_log boot4)" \
    && pass "boot4: console logged the poweroff request" || fail "boot4: no shutdown line on the console"

# Rules without a vif cannot work: refused with a clear line, crashed.
xl_create "$CFG" "$KERNEL" 'name="novif"' 'memory=4' "$NOVIF" 'extra="ip=10.0.0.2/24 rule=reverse:80:10.0.0.1:8080"' || fail "novif: xl create failed"
wait_console novif 'fatal: net: rules are configured but the domain has no vif' 20 && pass "novif: refused with a clear line" || fail "novif: no error line"
xl_destroy novif >/dev/null

# 3. A malformed extra= line: one clear console line naming the key, and the
#    domain stops crashed (on_crash=preserve keeps it for inspection).
xl_create "$CFG" "$KERNEL" 'name="badcfg"' 'memory=4' "$NOVIF" 'extra="ip=10.0.0.2/24 buf=16q"' \
    || fail "badcfg: xl create failed"
if wait_console badcfg "config.*'buf'.*'16q'" 20; then
    pass "badcfg: console names the bad key and value"
else
    fail "badcfg: no error line naming buf=16q"
fi
state=""
for _ in $(seq 1 100); do
    state=$(xl list badcfg 2>/dev/null | awk 'NR==2 {print $5}')
    case "$state" in *c*) break ;; esac
    sleep 0.1
done
case "$state" in
    *c*) pass "badcfg: domain is crashed (state $state)" ;;
    *) fail "badcfg: domain state '$state', expected crashed" ;;
esac
echo "--- console of badcfg:"; cat "$(console_log badcfg)"
xl_destroy badcfg

# 4. An unknown key is refused the same way.
xl_create "$CFG" "$KERNEL" 'name="badkey"' 'memory=4' "$NOVIF" 'extra="lisen=80"' || fail "badkey: xl create failed"
wait_console badkey "unknown key 'lisen'" 20 && pass "badkey: unknown key named" || fail "badkey: unknown key not named"
xl_destroy badkey

# Memory beyond Xen's initial 4 MiB mapping is mapped and goes to the heap.
xl_create "$CFG" "$KERNEL" 'name="mem16"' 'memory=16' "$NOVIF" 'extra=""' || fail "mem16: xl create failed"
if wait_console mem16 'miniproxy: memory 16384 KiB, heap 1[2-6][0-9]{3} KiB' 20; then
    pass "mem16: 16 MiB guest has a heap over 12 MiB"
else
    fail "mem16: heap does not cover memory beyond the initial mapping"
fi
id=$(domid mem16) && wait_xs "/local/domain/$id/data/ready" 20 >/dev/null && pass "mem16: ready" || fail "mem16: not ready"
xl_destroy mem16

# 5. xl reboot restarts it (on_reboot=restart), and it gets ready again;
#    xl destroy removes it.
xl_create "$CFG" "$KERNEL" 'name="rb"' 'memory=4' "$NOVIF" 'extra=""' || fail "rb: xl create failed"
id1=$(domid rb)
wait_xs "/local/domain/$id1/data/ready" 20 >/dev/null || fail "rb: first boot not ready"
xl reboot rb >/dev/null 2>&1 || fail "rb: xl reboot returned an error"
id2=""
for _ in $(seq 1 150); do
    id2=$(domid rb 2>/dev/null || true)
    [ -n "$id2" ] && [ "$id2" != "$id1" ] && break
    sleep 0.1
done
if [ -n "$id2" ] && [ "$id2" != "$id1" ] && wait_xs "/local/domain/$id2/data/ready" 20 >/dev/null; then
    pass "rb: xl reboot -> new domain $id2 ready"
else
    fail "rb: no new ready domain after xl reboot (ids $id1 -> '$id2')"
fi
t0=$(now_ms)
xl_destroy rb && wait_gone rb 10 && pass "rb: xl destroy -> gone in $(( $(now_ms) - t0 )) ms" || fail "rb: xl destroy"

# 6. Faults and panics: the trap table prints a register dump, the panic
#    handler the message; both crash the domain with the reason.
for what in fault ud panic; do
    xl_create "$CFG" "kernel=\"$P/selftest\"" "name=\"st-$what\"" 'memory=4' "$NOVIF" "extra=\"$what\"" \
        || fail "selftest $what: xl create failed"
    case $what in
        fault) pat='exception 14 \(page fault\).*cr2=0x0000000000000000' ;;
        ud) pat='exception 6 \(invalid opcode\)' ;;
        panic) pat='index out of bounds: the len is 3 but the index is 3' ;;
    esac
    if wait_console "st-$what" "$pat" 20; then pass "selftest $what: reason on the console"; else fail "selftest $what: no reason line"; fi
    [ $what = panic ] && { grep -q 'fatal: panic: panicked at kernel/src/bin/selftest.rs' "$(console_log st-$what)" && pass "selftest panic: location" || fail "selftest panic: no location"; }
    [ $what = panic ] || { grep -q 'rax=0x' "$(console_log st-$what)" && pass "selftest $what: register dump" || fail "selftest $what: no register dump"; }
    st=""
    for _ in $(seq 1 50); do st=$(xl list "st-$what" 2>/dev/null | awk 'NR==2 {print $5}'); case "$st" in *c*) break ;; esac; sleep 0.1; done
    case "$st" in *c*) pass "selftest $what: domain crashed ($st)" ;; *) fail "selftest $what: state '$st'" ;; esac
    xl_destroy "st-$what" >/dev/null
done
cat "$(console_log st-fault)"
