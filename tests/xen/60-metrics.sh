#!/bin/bash
# `miniproxy metrics` under Xen (issue 14): two instances, bytes through one;
# the Prometheus exposition shows that instance's bytes (and the same figure
# as its data/stats), none for the other; --textfile writes miniproxy.prom
# and nothing else; Prometheus's own `promtool check metrics` (in the dom0
# image, scripts/testbed-setup) passes on both.
. /root/lib.sh
. /root/payload/tests/xen/common.sh
MP=$P/scripts/miniproxy
MT=/tmp/mt
rm -rf "$MT"; mkdir -p "$MT/textfile"
MT_PIDS=()
MT_N=300000

socat -t 30 TCP-LISTEN:7010,bind=10.0.0.1,reuseaddr,fork EXEC:cat & MT_PIDS+=($!)
sleep 0.5

mt_spawn() {
    "$MP" spawn --json --name "$1" --mode reverse --listen 80 --upstream 10.0.0.1:7010 --ip "$2/24" --memory 4
}
# mt_json_num KEY: KEY's number in the JSON object on stdin.
mt_json_num() { sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p"; }
# mt_sample NAME DOMID FAMILY [LABELS]: the value of that sample in $MT/out.prom.
mt_sample() {
    local want="$3{instance=\"$1\",domid=\"$2\"${4:+,$4}} "
    awk -v w="$want" 'index($0, w) == 1 { print substr($0, length(w) + 1) }' "$MT/out.prom"
}

A_ID=""; B_ID=""
if out=$(mt_spawn mt-a 10.0.0.140 2>&1) && A_ID=$(echo "$out" | mt_json_num domid) && [ -n "$A_ID" ] \
   && out2=$(mt_spawn mt-b 10.0.0.141 2>&1) && B_ID=$(echo "$out2" | mt_json_num domid) && [ -n "$B_ID" ]; then
    pass "metrics: spawned mt-a (domid $A_ID) and mt-b (domid $B_ID), spawn --json"
else
    fail "metrics: spawn" "$(echo "$out $out2" | tail -n 5 | tr '\n' ' ')"
fi

# Bytes through mt-a: the echo server sends them back, so MT_N each way.
head -c $MT_N /dev/urandom > "$MT/in"
timeout 60 socat -t 30 - "TCP:10.0.0.140:80,connect-timeout=10" < "$MT/in" > "$MT/back" 2> "$MT/err"
if cmp -s "$MT/in" "$MT/back"; then
    pass "metrics: $MT_N B through mt-a and back byte-exact"
else
    fail "metrics: echo via mt-a" "got $(stat -c %s "$MT/back") B: $(tail -n1 "$MT/err")"
fi

# The guest rewrites data/stats at most once a second: wait for the closed connection to show.
up=""; down=""
for _ in $(seq 1 20); do
    "$MP" metrics > "$MT/out.prom" 2> "$MT/metrics.err"; rc=$?
    up=$(mt_sample mt-a "$A_ID" miniproxy_bytes_total 'direction="up"')
    down=$(mt_sample mt-a "$A_ID" miniproxy_bytes_total 'direction="down"')
    [ "$(mt_sample mt-a "$A_ID" miniproxy_connections_completed_total)" = 1 ] && break
    sleep 0.5
done
echo "---- miniproxy metrics (rc $rc; first 40 lines, then mt-a's byte and connection lines):"
head -n 40 "$MT/out.prom"
grep -E '^miniproxy_(bytes|connections_(accepted|completed))_total\{instance="mt-a"' "$MT/out.prom"
echo "---- $(wc -l < "$MT/out.prom") lines, $(grep -c '^# TYPE' "$MT/out.prom") families; stderr: $(head -c 300 "$MT/metrics.err")"
stats=$(mp_stats "$A_ID")
if [ "$rc" = 0 ] && [ "$up" = $MT_N ] && [ "$down" = $MT_N ] \
   && [ "$(stat_of px_bytes_up "$stats")" = $MT_N ]; then
    pass "metrics: mt-a's miniproxy_bytes_total is $MT_N up and $MT_N down, as its data/stats says"
else
    fail "metrics: mt-a's bytes" "rc $rc, up '$up' down '$down', data/stats px_bytes_up=$(stat_of px_bytes_up "$stats")"
fi
b_up=$(mt_sample mt-b "$B_ID" miniproxy_bytes_total 'direction="up"')
b_acc=$(mt_sample mt-b "$B_ID" miniproxy_connections_accepted_total)
if [ "$b_up" = 0 ] && [ "$b_acc" = 0 ] && grep -qx 'miniproxy_instances 2' "$MT/out.prom" \
   && [ -n "$(mt_sample mt-b "$B_ID" miniproxy_cpu_seconds_total 'part="engine"')" ]; then
    pass "metrics: mt-b has its own series (0 bytes, 0 accepted, cpu seconds), miniproxy_instances 2"
else
    fail "metrics: mt-b" "bytes up '$b_up', accepted '$b_acc', $(grep '^miniproxy_instances' "$MT/out.prom")"
fi
if grep -q '^miniproxy_unmapped_stat' "$MT/out.prom"; then
    fail "metrics: every key mapped" "$(grep '^miniproxy_unmapped_stat' "$MT/out.prom" | head -n 3 | tr '\n' ' ')"
else
    pass "metrics: every key the guest writes has its family (no miniproxy_unmapped_stat)"
fi

if pt=$(promtool check metrics < "$MT/out.prom" 2>&1); then
    pass "metrics: promtool check metrics passes ($(promtool --version 2>&1 | head -n1))${pt:+: $pt}"
else
    fail "metrics: promtool check metrics" "$(echo "$pt" | head -n 5 | tr '\n' ' ')"
fi

"$MP" metrics --textfile "$MT/textfile" > "$MT/tf.out" 2>&1; rc=$?
files=$(ls -A "$MT/textfile")
if [ $rc = 0 ] && [ "$files" = miniproxy.prom ] && [ ! -s "$MT/tf.out" ] \
   && grep -q "^miniproxy_bytes_total{instance=\"mt-a\",domid=\"$A_ID\",direction=\"up\"} $MT_N\$" "$MT/textfile/miniproxy.prom" \
   && pt=$(promtool check metrics < "$MT/textfile/miniproxy.prom" 2>&1); then
    pass "metrics: --textfile wrote miniproxy.prom alone ($(stat -c %s "$MT/textfile/miniproxy.prom") B), promtool passes it"
else
    fail "metrics: --textfile" "rc $rc, files '$files', $(head -c 200 "$MT/tf.out") $pt"
fi

out=$("$MP" stop --json mt-a mt-b 2>&1)
echo "$out"
n=$(echo "$out" | grep -cE '^\{"result":"stopped","name":"mt-[ab]","domid":[0-9]+,"ms":[0-9]+,"how":"(shutdown|destroy|gone)"\}$')
"$MP" metrics > "$MT/after.prom"
if [ "$n" = 2 ] && grep -qx 'miniproxy_instances 0' "$MT/after.prom" && [ "$(grep -vc '^#' "$MT/after.prom")" = 1 ]; then
    pass "metrics: stop --json gave two JSON lines; afterwards only miniproxy_instances 0"
else
    fail "metrics: after stop" "$n JSON lines; $(grep -v '^#' "$MT/after.prom" | head -n 3 | tr '\n' ' ')"
fi

# ---- clean up ----------------------------------------------------------------------
for d in mt-a mt-b; do domid "$d" >/dev/null 2>&1 && xl_destroy "$d" >/dev/null; done
kill "${MT_PIDS[@]}" 2>/dev/null; wait "${MT_PIDS[@]}" 2>/dev/null
rm -rf "$MT"
rm -f /tmp/.promtool   # the unpacked promtool: 48 MB of dom0's RAM-backed /tmp (unpacked again on next use)
summary
