#!/bin/bash
# The warm pool (issue 12, item 2): `miniproxy pool fill` boots members that
# wait, vif connected, for their configuration; a waiting member uses no CPU
# and writes nothing to xenstore; `spawn` takes one (how=warm) through the
# dom0-owned, guest-read-only key miniproxy/config, serves byte-exact, and
# the pool refills in the background; a bad configuration in the key crashes
# the member with a clear console line; xl shutdown of a waiting member is
# prompt; `pool drain` empties it; with an empty pool spawn is cold. The
# resident spawner (`miniproxy serve`) takes a warm spawn over its socket.
. /root/lib.sh
. /root/payload/tests/xen/common.sh
MP=$P/scripts/miniproxy
PL=/tmp/pool
rm -rf "$PL"; mkdir -p "$PL"
PL_PIDS=()
socat -t 60 TCP-LISTEN:7050,bind=10.0.0.1,reuseaddr,fork,backlog=64 EXEC:cat & PL_PIDS+=($!)
sleep 0.5

pl_field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
# pl_spawn NAME IP [ARGS...]: a reverse instance (:80 -> the echo server) at memory=4.
pl_spawn() {
    local name=$1 ip=$2; shift 2
    MINIPROXY_TRACE=1 "$MP" spawn --name "$name" --mode reverse --listen 80 --upstream 10.0.0.1:7050 \
        --ip "$ip/24" --memory 4 "$@"
}
# pl_echo IP N: N random bytes to IP:80 and back, byte-exact.
pl_echo() {
    head -c "$2" /dev/urandom > "$PL/in.$1"
    timeout 120 socat -t 60 - "TCP:$1:80,connect-timeout=10" < "$PL/in.$1" > "$PL/out.$1" 2>/dev/null
    cmp -s "$PL/in.$1" "$PL/out.$1" || { echo "echo via $1: sent $2 B, got $(stat -c %s "$PL/out.$1") B"; return 1; }
}
# pl_waiting N TIMEOUT_S: until `pool status` says waiting=N.
pl_waiting() {
    local t0; t0=$(now_ms)
    until "$MP" pool status 2>/dev/null | grep -q " waiting=$1 starting=0 "; do
        [ $(( $(now_ms) - t0 )) -gt $(( $2 * 1000 )) ] && return 1
        sleep 0.2
    done
}
pool_members() { xl list 2>/dev/null | awk 'NR > 1 && $1 ~ /^mp-pool-/ { print $1 }'; }

"$MP" pool drain >/dev/null 2>&1

out=$("$MP" pool --help 2>&1)
printf '%s\n' "$out" | grep -q '^Usage: miniproxy pool fill N' && printf '%s\n' "$out" | grep -q 'miniproxy/config' \
    && pass "pool: --help names the commands and the config key" || fail "pool: --help" "$(printf '%s\n' "$out" | head -n2)"

# ---- fill -------------------------------------------------------------------------
t0=$(now_ms)
out=$("$MP" pool fill 3 --memory 4 2>&1); rc=$?
ms=$(( $(now_ms) - t0 ))
echo "$out"
echo "MEASURE pool_fill3_ms=$ms"
[ $rc = 0 ] && [[ $out =~ ^pool\ target=3\ memory=4\ waiting=3\ starting=0\ crashed=0 ]] \
    && pass "pool: fill 3 -> 3 waiting in $ms ms" || fail "pool: fill 3" "rc $rc: $out"
out=$("$MP" pool status 2>&1)
[ "$out" = "pool target=3 memory=4 waiting=3 starting=0 crashed=0" ] \
    && pass "pool: status: $out" || fail "pool: status" "$out"
[ "$(pool_members | wc -l)" = 3 ] && pass "pool: 3 mp-pool-* domains" || fail "pool: members" "$(pool_members | tr '\n' ' ')"
[ -z "$("$MP" list 2>&1)" ] && pass "pool: list does not show pool members" || fail "pool: list" "$("$MP" list 2>&1 | head -n2)"
m1=$(pool_members | head -n1); id1=$(domid "$m1")
grep -q 'pool: waiting for miniproxy/config' "$(console_log "$m1")" \
    && pass "pool: $m1 says it waits on its console" || fail "pool: console" "$(tail -n 3 "$(console_log "$m1")" | tr '\n' ' ')"

# ---- a waiting member costs no CPU and writes nothing ------------------------------
cpu() { xl list "$1" 2>/dev/null | awk 'NR == 2 { print $6 }'; }
c0=$(cpu "$id1"); xenstore-ls -f "/local/domain/$id1" > "$PL/xs0" 2>&1
sleep 5
c1=$(cpu "$id1"); xenstore-ls -f "/local/domain/$id1" > "$PL/xs1" 2>&1
d=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.1f", b - a }')
echo "MEASURE pool_waiting_cpu_s_per_5s=$d"
awk -v d="$d" 'BEGIN { exit !(d <= 0.1) }' && pass "pool: a waiting member used ${d} s of CPU in 5 s (Time(s) $c0 -> $c1)" \
    || fail "pool: waiting CPU" "${d} s in 5 s ($c0 -> $c1)"
cmp -s "$PL/xs0" "$PL/xs1" && pass "pool: its xenstore tree did not change in 5 s ($(wc -l < "$PL/xs0") nodes)" \
    || fail "pool: xenstore while waiting" "$(diff "$PL/xs0" "$PL/xs1" | head -n 4 | tr '\n' ' ')"
grep -q "data/pool = \"waiting\"" "$PL/xs0" && pass "pool: data/pool=waiting" || fail "pool: data/pool" "$(grep pool "$PL/xs0")"

# ---- warm spawns ---------------------------------------------------------------------
# What any command of the tool costs here before it does anything (exec,
# loading, this harness's own date processes): `miniproxy --help`
# timed as the spawns below are, for the warm spawn's breakdown.
noop_ms=()
for i in 1 2 3; do
    t0=$(now_ms); "$MP" --help > /dev/null 2>&1; noop_ms+=("$(( $(now_ms) - t0 ))")
done
echo "MEASURE pool_tool_noop_ms=${noop_ms[*]}"
warm_ms=()
for i in 1 2 3; do
    pl_waiting 3 90 || fail "pool: refill before warm spawn $i" "$("$MP" pool status 2>&1)"
    before=$(pool_members | sort | tr '\n' ' ')
    t0=$(now_ms)
    out=$(pl_spawn "pw$i" "10.0.0.6$i" 2> "$PL/trace.$i"); rc=$?
    ms=$(( $(now_ms) - t0 ))
    echo "$out"; sed 's/^/  /' "$PL/trace.$i"
    if [ $rc = 0 ] && [[ $out =~ ^spawned\ name=pw$i\ domid=[0-9]+\ ready_ms=[0-9]+\ ip=10.0.0.6$i/24\ .*\ how=warm$ ]]; then
        warm_ms+=("$ms")
        pass "pool: warm spawn $i: how=warm, ready, $ms ms wall (took one of: $before)"
    else
        fail "pool: warm spawn $i" "rc $rc: $out $(tail -n 5 "$PL/trace.$i" | tr '\n' ' ')"
        continue
    fi
    id=$(echo "$out" | pl_field domid)
    check "pool: pw$i serves byte-exact" pl_echo "10.0.0.6$i" 100000
    [ "$(xenstore-read "/local/domain/$id/name" 2>/dev/null)" = "pw$i" ] && pass "pool: renamed to pw$i" \
        || fail "pool: rename" "name is '$(xenstore-read "/local/domain/$id/name" 2>&1)'"
    if [ $i = 1 ]; then
        perms=$(xenstore-ls -p "/local/domain/$id/miniproxy" 2>&1)
        echo "$perms"
        echo "$perms" | grep -qE "config = .*\(n0,r$id\)" && pass "pool: the config key is dom0's, read-only for domain $id" \
            || fail "pool: config key permissions" "$perms"
        # Where the time goes (MINIPROXY_TRACE): operator start to each step.
        echo "MEASURE pool_warm_trace=$(grep -o 'trace +[0-9]* ms [a-z].*' "$PL/trace.$i" | sed 's/trace +//; s/ ms /ms:/' | tr ' \n' '_ ' )"
        echo "MEASURE pool_warm_guest_us=$(echo "$out" | pl_field guest_us) handoff_ms=$(echo "$out" | pl_field create_ms)"
    fi
done
echo "MEASURE pool_warm_spawn_ms=${warm_ms[*]} median=$(printf '%s\n' "${warm_ms[@]}" | median)"
t0=$(now_ms)
pl_waiting 3 90 && pass "pool: refilled to 3 in the background ($(( $(now_ms) - t0 )) ms after the last spawn returned)" \
    || fail "pool: refill" "$("$MP" pool status 2>&1); $(tail -n 5 /run/miniproxy/pool/refill.log 2>/dev/null | tr '\n' ' ')"

out=$("$MP" stop --all 2>&1)
[ "$(echo "$out" | grep -c '^stopped name=pw')" = 3 ] && "$MP" pool status | grep -q ' waiting=3 ' \
    && pass "pool: stop --all stopped the 3 instances and left the pool alone" \
    || fail "pool: stop --all" "$out / $("$MP" pool status 2>&1)"

# ---- the resident spawner: miniproxy serve -------------------------------------------------
# The same warm spawn asked over its Unix socket (one connection, held by a
# coprocess): no process starts for it. A bad request is an error line and
# the connection goes on serving; stop over the socket; SIGTERM removes the
# socket and the daemon exits 0 once its refill is done.
start_serve "$MP" "$PL/serve.out" "$PL/serve.err"
serve_pid=${SERVE_PID:-} sock=${SERVE_SOCK:-}
PLS_PID=''
[ -n "$sock" ] && [ -S "$sock" ] && coproc PLS { socat - "UNIX-CONNECT:$sock"; }
if [ -n "$PLS_PID" ]; then
    pass "serve: listening on $sock"
    t0=$EPOCHREALTIME
    printf 'spawn\t--name\tps1\t--mode\treverse\t--listen\t80\t--upstream\t10.0.0.1:7050\t--ip\t10.0.0.74/24\t--memory\t4\n' >&"${PLS[1]}"
    out=''; IFS= read -r -t 120 out <&"${PLS[0]}"
    t1=$EPOCHREALTIME
    ms=$(( (${t1/./} - ${t0/./}) / 1000 ))
    if [[ $out =~ ^spawned\ name=ps1\ domid=[0-9]+\ ready_ms=[0-9]+\ ip=10.0.0.74/24\ .*\ how=warm$ ]]; then
        pass "serve: a warm spawn over the socket, $ms ms from the request to the reply ($out)"
    else
        fail "serve: warm spawn" "'$out' after $ms ms: $(tail -n 3 "$PL/serve.err" | tr '\n' ' ')"
    fi
    echo "MEASURE serve_warm_spawn_ms=$ms"
    check "serve: ps1 serves byte-exact" pl_echo 10.0.0.74 100000
    printf 'spawn\t--name\tps2\t--mode\tsideways\n' >&"${PLS[1]}"
    out=''; IFS= read -r -t 60 out <&"${PLS[0]}"
    [[ $out =~ ^error\ rc=2\ .*sideways ]] && pass "serve: a bad request: '$out'" || fail "serve: bad request" "'$out'"
    printf 'stop\tps1\n' >&"${PLS[1]}"
    out=''; IFS= read -r -t 120 out <&"${PLS[0]}"
    [[ $out =~ ^stopped\ name=ps1\  ]] && ! domid ps1 >/dev/null 2>&1 && pass "serve: stop over the same connection: $out" \
        || fail "serve: stop" "'$out'"
    kill "$PLS_PID" 2>/dev/null
    # `miniproxy ask`: one request, no relay; the reply's status is its exit status.
    out=$("$MP" ask --timing --socket "$sock" spawn --name pa1 --mode reverse --listen 80 \
          --upstream 10.0.0.1:7050 --ip 10.0.0.75/24 --memory 4 2>&1); rc=$?
    if [ $rc = 0 ] && [[ $out =~ ^spawned\ name=pa1\ domid=[0-9]+\ .*\ how=warm\ ask_us=[0-9]+$ ]]; then
        pass "serve: ask: a warm spawn ($out)"
        echo "MEASURE serve_ask_warm_us=$(echo "$out" | pl_field ask_us)"
    else
        fail "serve: ask warm spawn" "rc $rc: '$out': $(tail -n 3 "$PL/serve.err" | tr '\n' ' ')"
    fi
    out=$("$MP" ask --socket "$sock" spawn --name pa2 --mode sideways 2>&1); rc=$?
    if [ $rc = 2 ] && [[ $out =~ ^error\ rc=2\ .*sideways ]]; then
        pass "serve: ask: a bad request exits 2: '$out'"
    else
        fail "serve: ask bad request" "rc $rc: '$out'"
    fi
    out=$("$MP" ask --socket "$sock" stop pa1 2>&1); rc=$?
    if [ $rc = 0 ] && [[ $out =~ ^stopped\ name=pa1\  ]]; then
        pass "serve: ask: stop: $out"
    else
        fail "serve: ask stop" "rc $rc: '$out'"
    fi
else
    fail "serve: did not start or took no connection" "$(cat "$PL/serve.out" "$PL/serve.err" | tail -n 3 | tr '\n' ' ')"
fi
kill -TERM "$serve_pid" 2>/dev/null; wait "$serve_pid"; rc=$?
[ $rc = 0 ] && [ -n "$sock" ] && [ ! -e "$sock" ] && pass "serve: SIGTERM: exit 0, socket removed" \
    || fail "serve: SIGTERM" "rc $rc, socket '$sock' $([ -e "$sock" ] && echo still there)"
pl_waiting 3 90 || fail "serve: the pool did not refill to 3" "$("$MP" pool status 2>&1); $(tail -n 5 "$PL/serve.err" | tr '\n' ' ')"

# ---- bad configurations ------------------------------------------------------------------
out=$(pl_spawn pbad 10.0.0.69 --extra buf=16q 2>&1); rc=$?
[ $rc = 2 ] && echo "$out" | grep -q "bad value for key 'buf': '16q'" && "$MP" pool status | grep -q ' waiting=3 ' \
    && pass "pool: a spawn with a bad line fails before taking a member (rc 2)" \
    || fail "pool: bad spawn" "rc $rc: $out / $("$MP" pool status 2>&1)"
# A bad line written into a member's key by hand: the guest's parser
# refuses it, clearly, and the member crashes.
mb=$(pool_members | head -n1); idb=$(domid "$mb")
xenstore-write "/local/domain/$idb/miniproxy/config" "ip=10.0.0.68/24 buf=16q"
if wait_console "$mb" "miniproxy: fatal: pool: miniproxy/config: config: bad value for key 'buf'" 15 >/dev/null; then
    pass "pool: a bad config key: '$(grep -o 'miniproxy: fatal:.*' "$(console_log "$mb")" | head -n1)'"
else
    fail "pool: bad config key" "$(tail -n 3 "$(console_log "$mb")" | tr '\n' ' ')"
fi
sleep 1
xl list "$idb" 2>/dev/null | awk 'NR == 2 { exit !($5 ~ /c/) }' && pass "pool: the member crashed (on_crash=preserve)" \
    || fail "pool: bad config state" "$(xl list "$idb" 2>&1 | tail -n1)"
"$MP" pool status | grep -q ' waiting=2 starting=0 crashed=1' && pass "pool: status counts it as crashed" \
    || fail "pool: crashed status" "$("$MP" pool status 2>&1)"
# A boot-time key that differs: refused the same way.
mb2=$(pool_members | grep -v "^$mb$" | head -n1); idb2=$(domid "$mb2")
xenstore-write "/local/domain/$idb2/miniproxy/config" "ip=10.0.0.67/24 rx_bufs=16"
wait_console "$mb2" "miniproxy: fatal: pool: miniproxy/config: rx_bufs=16, but this pool member booted with rx_bufs=32" 15 >/dev/null \
    && pass "pool: a boot-time key that differs is refused clearly" \
    || fail "pool: boot-time key" "$(tail -n 3 "$(console_log "$mb2")" | tr '\n' ' ')"

# ---- xl shutdown of a waiting member -----------------------------------------------------
out=$("$MP" pool fill 3 --memory 4 2>&1)
echo "$out"
[[ $out =~ waiting=3\ starting=0\ crashed=0 ]] && pass "pool: fill replaced the crashed members" || fail "pool: refill after crashes" "$out"
ms_=$(pool_members | head -n1)
con0=$(stat -c %s "$(console_log "$ms_")" 2>/dev/null || echo 0)
t0=$(now_ms)
xl shutdown "$ms_" >/dev/null 2>&1
# Under TCG xl takes 1-5 s to deliver the request and 3 s or more to tear a
# domain down (bench-boot's destroy_ms): 10 s was too little on a slow host.
if wait_gone "$ms_" 30 >/dev/null; then
    ms=$(( $(now_ms) - t0 ))
    pass "pool: xl shutdown of a waiting member: gone in $ms ms"
    echo "MEASURE pool_waiting_shutdown_ms=$ms"
    tail -c +$((con0 + 1)) "$(console_log "$ms_")" | grep -q 'miniproxy: stopping (Poweroff)' && pass "pool: it stopped itself (Poweroff)" \
        || fail "pool: shutdown console" "$(tail -n 3 "$(console_log "$ms_")" | tr '\n' ' ')"
else
    fail "pool: xl shutdown of a waiting member" "still there after 30 s: $(tail -c +$((con0 + 1)) "$(console_log "$ms_")" | tail -n 3 | tr '\n' ' ')"
fi

# ---- drain, then cold ------------------------------------------------------------------
out=$("$MP" pool drain 2>&1); rc=$?
echo "$out"
[ $rc = 0 ] && [[ $out =~ ^drained\ stopped=2\ left=0 ]] && [ -z "$(pool_members)" ] \
    && pass "pool: drain stopped the members, none left" || fail "pool: drain" "rc $rc: $out; left: $(pool_members | tr '\n' ' ')"
"$MP" pool status | grep -q '^pool target=0 memory=4 waiting=0 starting=0 crashed=0$' && pass "pool: status after drain" \
    || fail "pool: status after drain" "$("$MP" pool status 2>&1)"
t0=$(now_ms)
out=$(pl_spawn pcold 10.0.0.70 2>/dev/null); rc=$?
ms=$(( $(now_ms) - t0 ))
echo "$out"
[ $rc = 0 ] && [[ $out =~ how=cold$ ]] && pass "pool: empty pool: spawn is cold ($ms ms)" || fail "pool: cold spawn" "rc $rc: $out"
echo "MEASURE pool_cold_spawn_ms=$ms"
check "pool: the cold instance serves byte-exact" pl_echo 10.0.0.70 100000
"$MP" stop --all >/dev/null 2>&1
[ -z "$(pool_members)" ] || fail "pool: a member appeared after the drain" "$(pool_members | tr '\n' ' ')"

# ---- clean up ----------------------------------------------------------------------------
"$MP" pool drain >/dev/null 2>&1
for d in $(pool_members) pw1 pw2 pw3 ps1 pa1 pcold; do domid "$d" >/dev/null 2>&1 && xl_destroy "$d" >/dev/null; done
kill "${PL_PIDS[@]}" 2>/dev/null; wait "${PL_PIDS[@]}" 2>/dev/null
rm -rf "$PL"
summary
