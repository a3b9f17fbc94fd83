#!/bin/bash
# The proxy end to end under Xen (issue 5): reverse mode with real servers
# in dom0, byte-exact both ways, concurrency, half-close, upstream down/up.
. /root/lib.sh
. /root/payload/tests/xen/common.sh

# Real servers on dom0's bridge address 10.0.0.1 (socat from Debian):
#   8081: sends /tmp/f1m      8082: sends /tmp/f50m
#   8083: reads to EOF, answers the SHA-256 of what it got (needs half-close)
#   8084: echo
head -c 1048576 /dev/urandom > /tmp/f1m
head -c 52428800 /dev/urandom > /tmp/f50m
SRV=()
# -t 60: after one direction ends, wait for the other (socat's default 0.5 s
# would cut replies short under emulation).
serve() { socat -t 60 TCP-LISTEN:$1,bind=10.0.0.1,reuseaddr,fork,backlog=256 "$2" & SRV+=($!); }
serve 8081 OPEN:/tmp/f1m,rdonly
serve 8082 OPEN:/tmp/f50m,rdonly
serve 8083 SYSTEM:sha256sum
serve 8084 EXEC:cat
sleep 0.5

# connect_timeout: 100 simultaneous connects make dom0's forking socat accept
# slowly under emulation; SYN retransmits must fit in the timeout (a refused
# upstream is still reported at once: it answers with RST).
RULES="rule=reverse:81:10.0.0.1:8081 rule=reverse:82:10.0.0.1:8082 rule=reverse:83:10.0.0.1:8083 rule=reverse:84:10.0.0.1:8084"
# Socket buffers at their defaults (buf=64k largest, buf_min=4k guaranteed),
# offload at its default (on: TSO/GSO and checksum offload with netback).
if mp_create rev 6 "ip=10.0.0.2/24 rx_bufs=64 max_conns=128 connect_timeout=15s $RULES" 00:16:3e:00:00:31; then
    pass "rev: ready in $MP_READY_MS ms"
else
    fail "rev: not ready"
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
# download PORT FILE LABEL
download() {
    local t0 ms got n
    t0=$(now_ms)
    got=$(socat -u TCP:10.0.0.2:$1 - 2>/dev/null | tee >(wc -c > /tmp/got.n) | sha256sum | cut -d' ' -f1)
    ms=$(( $(now_ms) - t0 ))
    sleep 0.1; n=$(cat /tmp/got.n 2>/dev/null)
    if [ "$got" = "$(sha "$2")" ]; then
        pass "$3 download byte-exact ($n B in $ms ms)"
        echo "MEASURE $3_down_ms=$ms bytes=$(stat -c %s "$2")"
    else
        fail "$3 download" "got $n B, sha mismatch"
    fi
}
# upload FILE LABEL: the server answers the SHA-256 after our FIN.
upload() {
    local t0 ms got
    t0=$(now_ms)
    got=$(socat -t 60 - TCP:10.0.0.2:83 < "$1" 2>/dev/null | cut -c1-64)
    ms=$(( $(now_ms) - t0 ))
    if [ "$got" = "$(sha "$1")" ]; then
        pass "$2 upload byte-exact ($(stat -c %s "$1") B in $ms ms, reply after half-close)"
        echo "MEASURE $2_up_ms=$ms bytes=$(stat -c %s "$1")"
    else
        fail "$2 upload" "server saw sha '$got'"
    fi
}
download 81 /tmp/f1m 1MB
upload /tmp/f1m 1MB
download 82 /tmp/f50m 50MB
upload /tmp/f50m 50MB

# Those transfers went through real netback with offload negotiated: TSO
# frames out (several MSS per frame, one GSO extra slot each), GSO packets in
# (several RX slots each), checksums offloaded both ways. The stats line
# carries netfront's counters (nf_tx_gso_frames, nf_rx_gso, nf_rx_multi_slot).
sleep 1.2   # stats refresh once a second
st=$(mp_stats $MP_ID)
num() { stat_of "$1" "$st"; }
tx_gso=$(num nf_tx_gso_frames); rx_gso=$(num nf_rx_gso); rx_multi=$(num nf_rx_multi_slot)
txf="$(num nf_tx_frames) $(num nf_tx_bytes)"
if grep -q 'netfront: offload tso+sg+csum' "$(console_log rev)" && [ "${tx_gso:-0}" -gt 100 ] && [ "${rx_gso:-0}" -gt 100 ] && [ "${rx_multi:-0}" -gt 100 ]; then
    set -- $txf
    pass "offload with netback: $tx_gso TSO frames sent, $rx_gso GSO packets received ($rx_multi multi-slot), tx frames average $(( ${2:-0} / (${1:-1} > 0 ? ${1:-1} : 1) )) B"
else
    fail "offload with netback" "console: $(grep -a 'netfront: offload' "$(console_log rev)" | tail -n1); tx-gso=$tx_gso rx-gso=$rx_gso rx-multi=$rx_multi"
fi

# 100 concurrent echo connections, each with its own content.
mkdir -p /tmp/cc && rm -f /tmp/cc/*
for i in $(seq 1 100); do head -c $((20000 + i * 97)) /dev/urandom > /tmp/cc/in.$i; done
t0=$(now_ms)
for i in $(seq 1 100); do
    socat -t 60 - TCP:10.0.0.2:84 < /tmp/cc/in.$i > /tmp/cc/out.$i 2>/tmp/cc/err.$i &
done
wait_ok=0
for j in $(jobs -p); do case " ${SRV[*]} " in *" $j "*) ;; *) wait "$j" ;; esac; done
ok=0
for i in $(seq 1 100); do
    if cmp -s /tmp/cc/in.$i /tmp/cc/out.$i; then ok=$((ok + 1))
    else echo "conn $i: sent $(stat -c %s /tmp/cc/in.$i) B, got $(stat -c %s /tmp/cc/out.$i) B: $(tail -n1 /tmp/cc/err.$i)"; fi
done
[ $ok = 100 ] && pass "100 concurrent echo connections byte-exact ($(( $(now_ms) - t0 )) ms)" \
              || fail "100 concurrent" "$ok of 100 byte-exact"

# Upstream down: new clients get a reset quickly; back up: served again.
kill "${SRV[3]}" 2>/dev/null; wait "${SRV[3]}" 2>/dev/null
sleep 0.3
fails0=$(mp_stats $MP_ID | stat_of px_upstream_fail)
t0=$(now_ms)
out=$(echo hello | socat -t 5 - TCP:10.0.0.2:84 2>/tmp/down.err); rc=$?
ms=$(( $(now_ms) - t0 ))
sleep 1.2   # stats refresh once a second
fails1=$(mp_stats $MP_ID | stat_of px_upstream_fail)
# The proxy accepts first (split TCP), then resets the client when the
# upstream refuses: no echo comes back and the connection ends at once.
if [ -z "$out" ] && [ $ms -lt 3000 ] && [ "${fails1:-0}" -gt "${fails0:-0}" ]; then
    pass "upstream down: client cut off in $ms ms, upstream_fail $fails0 -> $fails1 ($(tail -n1 /tmp/down.err | sed 's/.*E //'))"
else
    fail "upstream down" "rc=$rc after $ms ms, output '$out', upstream_fail $fails0 -> $fails1"
fi
serve 8084 EXEC:cat
sleep 0.5
got=$(echo back-again | socat -t 5 - TCP:10.0.0.2:84 2>/dev/null)
[ "$got" = back-again ] && pass "upstream back: served again" || fail "upstream back" "got '$got'"

echo "stats: $(mp_stats $MP_ID)"
t0=$(now_ms)
mp_stop rev && pass "rev: xl shutdown in $(( $(now_ms) - t0 )) ms"
tail -n 6 "$(console_log rev)"
# After 50 MB each way, TSO, 100 concurrent connections and an upstream lost
# and back: the boot stack (128 KiB over a guard page) kept a quarter free.
# (xenconsoled may write the guest's last lines a moment after it is gone.)
for _ in 1 2 3 4 5 6; do
    read -r deep size < <(grep -a 'miniproxy: stack: deepest' "$(console_log rev)" | tail -n1 | awk '{ print $4, $6 }')
    [ -n "${deep:-}" ] && break
    sleep 0.5
done
if [ -n "${deep:-}" ] && [ "$deep" -lt $(( ${size:-0} * 3 / 4 )) ]; then
    pass "rev: the stack went $deep bytes deep of $size"
else
    fail "rev: stack" "deepest '${deep:-}' of '${size:-}' bytes ($(grep -a 'stack' "$(console_log rev)" | tail -n1))"
fi

# offload=off: the driver keeps every frame within the MTU and checksums in
# software, with the same backend (which offers sg and gso): still byte-exact.
ip neigh flush to 10.0.0.2   # the address had another MAC a moment ago
if mp_create revoff 6 "ip=10.0.0.2/24 offload=off $RULES" 00:16:3e:00:00:32; then
    download 81 /tmp/f1m 1MB-offload-off
    upload /tmp/f1m 1MB-offload-off
    sleep 1.2
    st=$(mp_stats $MP_ID)
    tx_gso=$(num nf_tx_gso_frames); rx_multi=$(num nf_rx_multi_slot)
    if grep -q 'netfront: offload off (not requested)' "$(console_log revoff)" && [ "$tx_gso" = 0 ] && [ "$rx_multi" = 0 ]; then
        pass "offload=off: not negotiated, no TSO frame, no multi-slot packet"
    else
        fail "offload=off" "console: $(grep -a 'netfront: offload' "$(console_log revoff)" | tail -n1); tx-gso=$tx_gso rx-multi=$rx_multi"
    fi
    mp_stop revoff
else
    fail "revoff: not ready"
fi
kill "${SRV[@]}" 2>/dev/null; wait 2>/dev/null
rm -f /tmp/f1m /tmp/f50m /tmp/got.n /tmp/down.err; rm -rf /tmp/cc
