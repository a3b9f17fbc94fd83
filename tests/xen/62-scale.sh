#!/bin/bash
# Many instances at memory=4 (issue 12, items 3 and 5): SCALE_N (default 50)
# spawned by the operator tool, SCALE_PAR (default 4) at a time; all ready;
# then, with all of them idle for SCALE_IDLE_S (default 30) seconds, what
# dom0 pays: xenstored's CPU time and requests, the xenstore writes the
# guests make (none allowed), the per-domain `xl` processes and dom0's
# memory; each serves one request byte-exact; `stop --all` leaves nothing
# behind (no domain, no xl process, no xenstore directory, no vif).
# SCALE_LIBVIRT_N (default 3) more go through libvirt (spawn --via libvirt),
# to compare what each way leaves running in dom0 per instance.
# scripts/bench runs it with SCALE_N=100 (SCALE_BENCH=1: BENCH lines too).
. /root/lib.sh
. /root/payload/tests/xen/common.sh
# Part of every run (issue 12: the scale test passes in ./scripts/test;
# XEN_TESTS naming other files leaves it out). Its idle rule: an instance may write
# data/stats no more often than its frames moved its counters (netback's vif
# counters), after one of 50 idle guests wrote 3 times in a 30 s window
# (allowed 2 then) when TCP frames arrived past its connection's end. With
# 29 guests on a slow host three wrote once with no frame in the window or
# the second before it (why is not known: each failing guest's line says
# which counters moved); with 10 every write had its frames. At 50 it took
# 23 minutes with single-threaded TCG, 14 with a thread per vCPU (the
# testbed's default since). Until the test bed booted Xen with eager FPU
# switching (scripts/testbed-run) xenstored stalled after 10-13 instances.
MP=$P/scripts/miniproxy
SC=/tmp/scale
rm -rf "$SC"; mkdir -p "$SC"
SC_N=${SCALE_N:-50}
SC_PAR=${SCALE_PAR:-4}
SC_IDLE_S=${SCALE_IDLE_S:-30}
SC_LV_N=${SCALE_LIBVIRT_N:-3}
SC_BUDGET_S=${SCALE_SPAWN_BUDGET_S:-480}   # no spawn is started after this (50 took 152 s)
SC_PIDS=()
export MINIPROXY_PARALLEL=$SC_PAR
CLK_TCK=$(getconf CLK_TCK)

# Echo server on dom0's bridge address (a port of its own: 40-operator's 7000
# may still be closing).
socat -t 60 TCP-LISTEN:7010,bind=10.0.0.1,reuseaddr,fork,backlog=128 EXEC:cat & SC_PIDS+=($!)
sleep 0.5

# Instance i is 10.0.0.(SCALE_IP_BASE + i) on dom0's /24 (.229 is the
# `xl create -e` one, the libvirt ones .230 up; scripts/bench has its own guests and namespaces below .120).
SC_BASE=${SCALE_IP_BASE:-20}
[ $((SC_BASE + SC_N)) -le 227 ] || { fail "scale: SCALE_N=$SC_N" "addresses from .$SC_BASE past .226"; SC_N=$((227 - SC_BASE)); }
# .227 and .228: the two traced probe spawns (sc_probe).
sc_ip() { echo "10.0.0.$((SC_BASE + $1))"; }
sc_field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
# What dom0 holds now, one line of key=value: xl processes and their RSS and
# PSS (KiB), all processes, xenstore's domain directories, memory in use (MemTotal - MemAvailable, KiB),
# xenstored's RSS, libvirtd's RSS, Xen's free memory (MB).
sc_dom0() {
    local xl_pids p rss=0 pss=0 v
    xl_pids=$(pgrep -x xl)
    for p in $xl_pids; do
        v=$(awk '/^Rss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null); rss=$((rss + ${v:-0}))
        v=$(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null); pss=$((pss + ${v:-0}))
    done
    echo "xl_procs=$(echo $xl_pids | wc -w) xl_rss_kb=$rss xl_pss_kb=$pss procs=$(ls -d /proc/[0-9]* | wc -l)" \
         "xs_domains=$(xenstore-list /local/domain 2>/dev/null | wc -l)" \
         "used_kb=$(awk '/^MemTotal:/ { t = $2 } /^MemAvailable:/ { a = $2 } END { print t - a }' /proc/meminfo)" \
         "xenstored_rss_kb=$(ps -o rss= -p "$(cat /run/xenstore.pid)" | tr -d ' ')" \
         "libvirtd_rss_kb=$(ps -o rss= -C libvirtd | head -n1 | tr -d ' ')" \
         "xen_free_mb=$(xl info 2>/dev/null | awk '/^free_memory/ { print $3 }')" \
         "vifs=$(ls /sys/class/net 2>/dev/null | grep -c '^vif')"
}
sc_of() { stat_of "$1" "$2"; }
# sc_room: the room dom0 has for this test's files, one line: $SC's
# filesystem (dom0's root is a tmpfs in its RAM) and dom0's memory. A step
# whose output file came out empty says it, as a failed write leaves no trace.
sc_room() {
    echo "$SC: $(df -k "$SC" 2>/dev/null | awk 'NR == 2 { print $4 " KiB free of " $2 }'), $(du -sk "$SC" 2>/dev/null | cut -f1) KiB used by the test;" \
         "dom0: $(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) KiB available"
}
# Its largest files are xenstored's traces, up to ~10 MB each on a slow
# host (a write-rate-limit line per domain at each pass of xenstored's loop).
[ "$(df -k "$SC" | awk 'NR == 2 { print $4 }')" -ge 65536 ] \
    || fail "scale: room for its files" "less than 64 MiB: $(sc_room)"
log "room: $(sc_room)"
# measure WHAT KEY=VALUE...: a MEASURE line (and, for scripts/bench, the
# same as a BENCH line).
measure() {
    local what=$1; shift
    echo "MEASURE $what $*"
    [ -z "${SCALE_BENCH:-}" ] || echo "BENCH test=$what target=mp $*"
}
# xenstored's CPU time so far (utime + stime), in ms.
sc_xs_cpu_ms() { awk -v t="$CLK_TCK" '{ print int(($14 + $15) * 1000 / t) }' "/proc/$(cat /run/xenstore.pid)/stat"; }
# sc_run_bounded K CMD...: runs "CMD i" for i in 0..N-1 (N=$SC_RUN_N), K at a
# time, launching none after SC_RUN_UNTIL (now_ms; empty: no limit). Its own
# children only: the shell also runs the echo server.
sc_run_bounded() {
    local k=$1 i p pids=() live; shift
    for i in $(seq 0 $((SC_RUN_N - 1))); do
        while :; do
            live=()
            for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && live+=("$p"); done
            pids=("${live[@]}")
            [ ${#pids[@]} -lt "$k" ] && break
            # Until one of them ends (a `sleep 0.1` poll here started ten
            # processes a second, each ~0.1 s of dom0's CPU under TCG,
            # taken from the spawns it waits for).
            wait -n "${pids[@]}" 2>/dev/null
        done
        if [ -n "${SC_RUN_UNTIL:-}" ] && [ "$(now_ms)" -gt "$SC_RUN_UNTIL" ]; then
            echo "time is up: $i of $SC_RUN_N launched"; break
        fi
        "$@" "$i" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
}
# sc_spawn i: instance i through the operator tool; one line when done
# (a run cut short still shows how far it got).
sc_spawn() {
    local rc=0
    "$MP" spawn --name "sc$1" --mode reverse --listen 80 --upstream 10.0.0.1:7010 \
        --ip "$(sc_ip "$1")/24" --memory 4 --timeout 120 > "$SC/spawn.$1" 2>&1 || rc=$?
    alive   # progress: all.sh's stall watch looks for it
    echo "sc$1: rc $rc at +$(( $(now_ms) - SC_T0 )) ms: $(tail -n 1 "$SC/spawn.$1" | cut -c1-300)"
}
# sc_probe LABEL IP: one more spawn, alone, with xenstored's request trace on
# (xenstore-control logfile): what xenstored does for one cold spawn, and
# its CPU, when LABEL's number of domains are up. Run before the N spawns
# and after, it shows what grows with the domains: the requests (by type),
# the watch events xenstored sends (each write fires every matching watch
# of every connection), its CPU per spawn. The trace costs xenstored CPU
# of its own, more with more domains: it holds a write-rate-limit line per
# domain at every pass of xenstored's main loop (the xenstored here refuses
# `xenstore-control log -wrl`). The instance is stopped at once.
sc_probe() {
    local label=$1 ip=$2 tr="$SC/probe.$1.trace" c0 c1 d0 d1 f0 f1 t0 t1 rc=0 out doms reqs evs
    doms=$(xenstore-list /local/domain 2>/dev/null | wc -l)
    xenstore-control logfile "$tr" >/dev/null 2>&1 && xenstore-control log +io >/dev/null 2>&1
    c0=$(sc_xs_cpu_ms); d0=$(sc_dom0_cpu_ms); f0=$(awk '$1 == "processes" { print $2 }' /proc/stat); t0=$(now_ms)
    out=$("$MP" spawn --name "sc-probe-$label" --mode reverse --listen 80 --upstream 10.0.0.1:7010 \
        --ip "$ip/24" --memory 4 --timeout 180 2>&1) || rc=$?
    c1=$(sc_xs_cpu_ms); d1=$(sc_dom0_cpu_ms); f1=$(awk '$1 == "processes" { print $2 }' /proc/stat); t1=$(now_ms)
    xenstore-control log off >/dev/null 2>&1 || xenstore-control logfile /dev/null >/dev/null 2>&1
    "$MP" stop "sc-probe-$label" >/dev/null 2>&1
    if [ $rc != 0 ] || ! [ -s "$tr" ]; then
        fail "scale: probe spawn at $label" "rc $rc, trace $(wc -l < "$tr" 2>/dev/null) lines: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
        return
    fi
    reqs=$(grep -cE '(^|[ :])IN 0x' "$tr"); evs=$(grep -cE 'OUT 0x.* WATCH_EVENT' "$tr")
    echo "probe $label ($doms domains before it): requests by type: $(grep -E '(^|[ :])IN 0x' "$tr" \
        | sed -nE 's/.*IN 0x[0-9a-f]+ [0-9]{8} [0-9:]{8} ([A-Z_]+) .*/\1/p' | sort | uniq -c | sort -rn | head -n 8 | awk '{ printf "%s=%s ", $2, $1 }')"
    echo "probe $label: watch events by path (top 5): $(grep -E 'OUT 0x.* WATCH_EVENT' "$tr" \
        | sed -nE 's/.*WATCH_EVENT \(([^ )]*).*/\1/p' | sed 's|/[0-9][0-9]*/|/ID/|g; s|/[0-9][0-9]*$|/ID|' | sort | uniq -c | sort -rn | head -n 5 | awk '{ printf "%s=%s ", $2, $1 }')"
    # dom0's CPU and the processes dom0 started (forks: the tool, xl, the
    # hotplug script and what it runs) for this one spawn.
    measure scale_probe "label=$label domains=$doms wall_ms=$((t1 - t0)) xenstored_cpu_ms=$((c1 - c0))" \
        "dom0_cpu_ms=$((d1 - d0)) forks=$((f1 - f0))" \
        "requests=$reqs watch_events=$evs $(echo "$out" | grep -o 'create_ms=[0-9]*') $(echo "$out" | grep -o 'guest_us=[0-9]*')"
    pass "scale: probe spawn with $doms domains up: ready, traced ($reqs requests, $evs watch events)"
    rm -f "$tr"
}
# sc_echo i: i's instance sends 2000 + 7 i random bytes back byte-exact?
sc_echo() {
    local ip; ip=$(sc_ip "$1")
    grep -q '^spawned' "$SC/spawn.$1" 2>/dev/null || return 0   # not up: counted as not served
    head -c $((2000 + 7 * $1)) /dev/urandom > "$SC/in.$1"
    timeout 120 socat -t 60 - "TCP:$ip:80,connect-timeout=20" < "$SC/in.$1" > "$SC/out.$1" 2> "$SC/err.$1"
    alive
    cmp -s "$SC/in.$1" "$SC/out.$1" && { touch "$SC/ok.$1"; return 0; }
    # Why not (an ARP that got no answer was seen once at 50): dom0's
    # neighbour entry, the vif (on the bridge? its frames each way), the
    # guest's state and the end of its console.
    local id v; id=$(sc_field domid < "$SC/spawn.$1"); v=/sys/class/net/vif$id.0
    echo "sc$1 ($ip): sent $(stat -c %s "$SC/in.$1") B, got $(stat -c %s "$SC/out.$1") B: $(tail -n1 "$SC/err.$1");" \
         "neighbour: $(ip neigh show "$ip" 2>&1 | tr '\n' ' ');" \
         "vif$id.0: $(cat "$v/operstate" 2>&1), bridge $(basename "$(readlink "$v/master" 2>/dev/null)" 2>/dev/null)," \
         "to the guest $(cat "$v/statistics/tx_packets" 2>&1) frames ($(cat "$v/statistics/tx_dropped" 2>&1) dropped)," \
         "from it $(cat "$v/statistics/rx_packets" 2>&1); domain: $(xl list "$id" 2>&1 | awk 'NR == 2 { print $5 }');" \
         "console: $(tail -n 4 "/var/log/xen/console/guest-sc$1.log" 2>&1 | tr '\r\n' '  ')" > "$SC/bad.$1"
}

before=$(sc_dom0)
log "dom0 before: $before"
# dom0's CPU time (all of it, from /proc/stat) and xenstored's, in ms.
sc_dom0_cpu_ms() { awk -v t="$CLK_TCK" '$1 == "cpu" { print int(($2 + $3 + $4 + $6 + $7 + $8) * 1000 / t) }' /proc/stat; }
# The same 10 s with no instance: what xenstored and dom0 use anyway.
b_cpu0=$(sc_xs_cpu_ms); b_dom0=$(sc_dom0_cpu_ms); b_t0=$(now_ms)
sleep 10
b_ms=$(( $(now_ms) - b_t0 ))
measure scale_baseline "secs=$(awk -v ms=$b_ms 'BEGIN { printf "%.1f", ms / 1000 }')" \
    "xenstored_cpu_ms=$(( $(sc_xs_cpu_ms) - b_cpu0 )) dom0_cpu_ms=$(( $(sc_dom0_cpu_ms) - b_dom0 ))"

sc_probe first 10.0.0.227

# ---- N spawns, SC_PAR at a time ----------------------------------------------------
log "spawning sc0..sc$((SC_N - 1)) (memory=4), $SC_PAR at a time, none started after $SC_BUDGET_S s"
lockups0=$(dmesg | grep -c 'soft lockup')
s_xs0=$(sc_xs_cpu_ms); s_d0=$(sc_dom0_cpu_ms)
sc_t0=$(now_ms); SC_T0=$sc_t0
SC_RUN_N=$SC_N SC_RUN_UNTIL=$((sc_t0 + SC_BUDGET_S * 1000)) sc_run_bounded "$SC_PAR" sc_spawn
wall=$(( $(now_ms) - sc_t0 ))
s_xs=$(( $(sc_xs_cpu_ms) - s_xs0 )); s_d=$(( $(sc_dom0_cpu_ms) - s_d0 ))
ok=0; IDS=()
for i in $(seq 0 $((SC_N - 1))); do
    if grep -q "^spawned name=sc$i " "$SC/spawn.$i" 2>/dev/null; then
        ok=$((ok + 1)); IDS+=("$(sc_field domid < "$SC/spawn.$i")")
    elif [ -f "$SC/spawn.$i" ]; then
        echo "sc$i: $(tail -n 4 "$SC/spawn.$i" | tr '\n' ' ')"
    fi
done
rate=$(awk -v n="$ok" -v ms="$wall" 'BEGIN { printf "%.2f", ms ? n * 1000 / ms : 0 }')
med=$(cat "$SC"/spawn.* | sc_field ready_ms | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }')
measure scale_spawn "spawns_per_s=$rate n=$ok wall_ms=$wall parallel=$SC_PAR ready_ms_median=${med:-?}"
# What dom0 spent on the spawns (all of its CPU, and xenstored's share),
# per spawn that came up: where a cold spawn's time goes as domains grow.
measure scale_spawn_cpu "n=$ok dom0_cpu_ms=$s_d xenstored_cpu_ms=$s_xs" \
    "dom0_cpu_ms_per_spawn=$(( ok ? s_d / ok : 0 )) xenstored_cpu_ms_per_spawn=$(( ok ? s_xs / ok : 0 ))"
[ "$ok" = "$SC_N" ] && pass "scale: $SC_N spawns at memory=4 all ready in $wall ms ($rate spawns/s, $SC_PAR at a time)" \
                   || fail "scale: $SC_N spawns" "$ok of $SC_N ready in $wall ms"

after=$(sc_dom0)
log "dom0 with $ok instances: $after"
log "room: $(sc_room)"
if [ "$ok" -gt 0 ]; then
    per() { awk -v a="$(sc_of "$1" "$after")" -v b="$(sc_of "$1" "$before")" -v n="$ok" -v d="$2" \
        'BEGIN { printf "%.*f", d, (a - b) / n }'; }
    measure scale_dom0_per_instance "n=$ok dom0_used_kb=$(per used_kb 0) xl_procs=$(per xl_procs 2)" \
         "xl_rss_kb=$(per xl_rss_kb 0) xl_pss_kb=$(per xl_pss_kb 0) procs=$(per procs 2)" \
         "xenstored_rss_kb=$(per xenstored_rss_kb 1) xen_mb=$(awk -v a="$(sc_of xen_free_mb "$before")" \
         -v b="$(sc_of xen_free_mb "$after")" -v n="$ok" 'BEGIN { printf "%.2f", (a - b) / n }')"
    # One xl per domain stays behind to watch it (on_poweroff/on_crash):
    # witnessed, not wanted; the libvirt way below has none.
    echo "per-domain xl processes: $(pgrep -x xl | head -n 3 | while read -r p; do tr '\0' ' ' < "/proc/$p/cmdline"; echo -n '; '; done)"
fi

sc_probe last 10.0.0.228

# ---- each serves one request byte-exact, SC_PAR at a time ----------------------------
sc_t0=$(now_ms)
SC_RUN_N=$SC_N sc_run_bounded "$SC_PAR" sc_echo
n_ok=$(ls "$SC"/ok.* 2>/dev/null | wc -l)
[ "$n_ok" = "$SC_N" ] && pass "scale: each of the $SC_N serves a request byte-exact ($(( $(now_ms) - sc_t0 )) ms, $SC_PAR at a time)" \
                      || fail "scale: requests" "$n_ok of $SC_N byte-exact: $(cat "$SC"/bad.* 2>/dev/null | head -n 3 | tr '\n' ' ')"

# ---- idle: what dom0 pays for N instances doing nothing --------------------------------
# The stats of the requests above are published within a second; dom0's
# neighbour entries settle. Then, for SC_IDLE_S seconds:
# - every write under the guests' /local/domain/ID (a dom0 watch fires on
#   each write, whatever its value): the guests' own writes;
# - every request xenstored receives, from its trace log (xenstore-control
#   logfile: one "IN" line per request, any client), by type;
# - xenstored's CPU time.
# Idle means no connection left, closing ones included (their end changes
# px_active and px_completed, which are then published): wait for
# px_active=0 in every instance's stats, then 2 s for the last publish.
# Every instance's data/stats, "ID STATS" a line, read by one xenstore-read
# (one process per instance cost dom0 ~0.1-0.3 s each under TCG: with 50,
# each pass of the loops below took 10-15 s, and the idle part ~9 minutes);
# one by one only if that read fails (a key missing).
sc_all_stats() {
    local id paths=() vals
    for id in "${IDS[@]}"; do paths+=("/local/domain/$id/data/stats"); done
    if vals=$(xenstore-read "${paths[@]}" 2>/dev/null) && [ "$(wc -l <<< "$vals")" = "${#IDS[@]}" ]; then
        paste -d' ' <(printf '%s\n' "${IDS[@]}") <(printf '%s\n' "$vals")
    else
        for id in "${IDS[@]}"; do echo "$id $(mp_stats "$id")"; done
    fi
}
sc_active() {   # how many instances still hold a connection
    local id st n=0
    while read -r id st; do [ "$(stat_of px_active "$st")" = 0 ] || n=$((n + 1)); done < <(sc_all_stats)
    echo $n
}
for _ in $(seq 60); do [ "$(sc_active)" = 0 ] && break; sleep 1; done
echo "instances still holding a connection: $(sc_active)"
# And until no instance has rewritten its stats for 3 s: a counter can move
# late (a TX completion that a slow dom0's netback returns seconds after
# the frame is taken at the guest's next pass), which is a change, not
# idleness.
# "ID IN OUT" per instance: the frames its vif carried so far to it and
# from it (netback's counters in dom0: its tx is to the guest).
# Read with bash's own `read`, not a `cat` per file: under TCG each process
# costs dom0 ~0.1 s, and 2N of them spread the snapshot over seconds.
sc_vif_frames() {
    local id d tx rx
    for id in "${IDS[@]}"; do
        d=/sys/class/net/vif$id.0/statistics
        read -r tx 2>/dev/null < "$d/tx_packets" || tx=0
        read -r rx 2>/dev/null < "$d/rx_packets" || rx=0
        echo "$id $tx $rx"
    done
}
prev=$(sc_all_stats)
for settle in $(seq 20); do
    sleep 3
    cur=$(sc_all_stats)
    [ "$cur" = "$prev" ] && break
    prev=$cur
done
log "idle: stats unchanged for 3 s after $((settle * 3)) s (xenstored: $(sc_xs_cpu_ms) ms of CPU so far)"
# First SC_IDLE_S seconds with no trace: what xenstored itself costs with N
# idle instances (its CPU, and its wakeups: the times it blocked in poll).
# Its trace costs it CPU of its own (10 idle instances, one testbed boot:
# 10 and 90 ms of CPU in 30 s untraced, 740 ms traced; 50 in a CI
# rehearsal: 280 ms untraced, 3700 traced), so the window after this one
# counts requests and writes, not CPU.
sc_xs_wakeups() { awk '/^voluntary_ctxt_switches/ { print $2 }' "/proc/$(cat /run/xenstore.pid)/status"; }
u_c0=$(sc_xs_cpu_ms); u_d0=$(sc_dom0_cpu_ms); u_w0=$(sc_xs_wakeups); u_t0=$(now_ms)
sleep "$SC_IDLE_S"
u_c1=$(sc_xs_cpu_ms); u_d1=$(sc_dom0_cpu_ms); u_w1=$(sc_xs_wakeups); u_t1=$(now_ms)
measure scale_idle_untraced "n=$ok secs=$(awk -v ms=$((u_t1 - u_t0)) 'BEGIN { printf "%.1f", ms / 1000 }')" \
    "xenstored_cpu_ms=$((u_c1 - u_c0)) xenstored_wakeups=$((u_w1 - u_w0)) dom0_cpu_ms=$((u_d1 - u_d0))"
while read -r id st; do echo "$st" > "$SC/stats0.$id"; done < <(sc_all_stats)
xenstore-control logfile "$SC/xs.trace" > "$SC/xsctl" 2>&1 && XS_TRACE=1 || XS_TRACE=""
# The trace must show requests (io tracing on): a read by dom0 shows up.
if [ -n "$XS_TRACE" ]; then
    xenstore-read /local/domain/0/name >/dev/null; sleep 0.2
    grep -qE 'IN 0x.* READ \(/local/domain/0/name' "$SC/xs.trace" || {
        xenstore-control log +io >> "$SC/xsctl" 2>&1; xenstore-read /local/domain/0/name >/dev/null; sleep 0.2
        grep -qE 'IN 0x.* READ \(/local/domain/0/name' "$SC/xs.trace" || { XS_TRACE=""; head -n 3 "$SC/xs.trace" >> "$SC/xsctl"; }
    }
fi
# The frames a stats period (1 s) and more before the window opens: a
# counter a frame moved just before it may be published in it.
sc_vif_frames > "$SC/inout0"
stdbuf -oL xenstore-watch /local/domain > "$SC/watch" 2>&1 & W=$!
sleep 1
w0=$(wc -l < "$SC/watch"); tr0=$(wc -l < "$SC/xs.trace" 2>/dev/null || echo 0)
cpu0=$(sc_xs_cpu_ms); d0=$(sc_dom0_cpu_ms); sc_t0=$(now_ms)
log "idle: the window opens (xenstored's trace ${XS_TRACE:+on}; xenstored: $cpu0 ms of CPU so far)"
sleep "$SC_IDLE_S"
cpu1=$(sc_xs_cpu_ms); d1=$(sc_dom0_cpu_ms); sc_t1=$(now_ms)
log "idle: the window closes (xenstored: $cpu1 ms of CPU so far)"
sc_vif_frames > "$SC/inout1"
# The window's lines, without the write-rate-limit ones (most of them; kept
# only in xs.trace, counted below).
tail -n +"$((tr0 + 1))" "$SC/xs.trace" 2>/dev/null | grep -v '^wrl: ' > "$SC/xs.window"
tail -n +"$((w0 + 1))" "$SC/watch" > "$SC/watch.window"
kill "$W" 2>/dev/null; wait "$W" 2>/dev/null
# Every instance's data/stats now (one xenstore-read), while the trace still
# runs: each value read is one its instance wrote, in the trace (or before it).
sc_all_stats > "$SC/stats.after"
[ -n "$XS_TRACE" ] && { xenstore-control log off >/dev/null 2>&1 || xenstore-control logfile /dev/null >/dev/null 2>&1; }
tail -n +"$((tr0 + 1))" "$SC/xs.trace" 2>/dev/null | grep -v '^wrl: ' > "$SC/xs.after"
log "idle: trace off, $(wc -l < "$SC/xs.trace" 2>/dev/null) lines (xenstored: $(sc_xs_cpu_ms) ms of CPU so far); room: $(sc_room)"
# What the trace's lines are (its requests are only some of them): kinds,
# with addresses, times, numbers and arguments taken out.
echo "xenstored trace lines by kind (top 6): $(sed -E 's/0x[0-9a-f]+//g; s/[0-9]{8} [0-9:]{8}//; s/[(].*//; s/[0-9]+/N/g' "$SC/xs.trace" 2>/dev/null \
    | awk '{ $1 = $1; c[$0]++ } END { for (k in c) print c[k], k }' | sort -rn | head -n 6 | tr '\n' ';')"
rm -f "$SC/xs.trace"
secs=$(awk -v ms=$((sc_t1 - sc_t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
guest_writes=0
# Each domain's count and paths in one pass (a grep and a stats read per
# instance, ~10 processes each, took ~2 s per writer under TCG).
declare -A sc_watched=() sc_paths=() sc_now=()
while read -r id n paths; do sc_watched[$id]=$n; sc_paths[$id]=$paths; done < <(awk -F/ '
    /^\/local\/domain\/[0-9]+\// { c[$4]++; if (!((($4) SUBSEP $0) in seen)) { seen[$4, $0] = 1; p[$4] = p[$4] " " $0 } }
    END { for (i in c) print i, c[i], p[i] }' "$SC/watch.window")
while read -r id st; do sc_now[$id]=$st; done < "$SC/stats.after"
# sc_changed ID LINE: sets sc_moved to the fields of stats LINE that differ
# from ID's stats before the window (none known for ID: all of them), the
# cpu_ and xen_ keys (which ride along) aside. Bash only: no process.
sc_changed() {
    local f before=() now=()
    local -A was=()
    [ -f "$SC/stats0.$1" ] && read -r -a before < "$SC/stats0.$1"
    for f in "${before[@]}"; do was[$f]=1; done
    read -r -a now <<< "$2"
    sc_moved=""
    for f in "${now[@]}"; do
        case $f in cpu_* | xen_*) continue ;; esac
        [ -n "${was[$f]:-}" ] || sc_moved+="$f "
    done
}
for id in "${IDS[@]}"; do
    n=${sc_watched[$id]:-0}
    [ "$n" = 0 ] && continue
    guest_writes=$((guest_writes + n))
    sc_changed "$id" "${sc_now[$id]:-}"
    echo "domain $id: $n writes (${sc_paths[$id]}); changed: ${sc_moved:-nothing}"
done
all_writes=$(grep -c '^/local/domain/' "$SC/watch.window")
if [ -n "$XS_TRACE" ]; then
    reqs=$(grep -cE '(^|[ :])IN 0x' "$SC/xs.window")
    echo "xenstored requests in the idle window, by type and path (top 10):"
    grep -E '(^|[ :])IN 0x' "$SC/xs.window" | sed -nE 's/.*IN 0x[0-9a-f]+ [0-9]{8} [0-9:]{8} ([A-Z_]+) \(([^ )]*).*/\1 \2/p' \
        | sed 's|/[0-9][0-9]*/|/ID/|g' | sort | uniq -c | sort -rn | head -n 10
else
    reqs="?"; echo "xenstored trace not available: $(head -n 2 "$SC/xsctl" | tr '\n' ' ')"
fi
measure scale_idle "n=$ok secs=$secs xenstored_cpu_ms=$((cpu1 - cpu0)) dom0_cpu_ms=$((d1 - d0))" \
     "xenstored_requests=$reqs xenstored_req_per_s=$(awk -v r="$reqs" -v s="$secs" 'BEGIN { if (r == "?") print "?"; else printf "%.2f", r / s }')" \
     "guest_writes=$guest_writes all_writes=$all_writes"
# An idle instance publishes data/stats only when a counter moved (looked
# at every stats_period, 1 s), and its counters move only with frames: each
# frame dom0 delivers to it (its upstream's ARP reply every ~55 s while it
# was used in the last 10 min, proxy/src/engine/neighbours.rs; a peer's
# late retransmission) moves them once, each frame it sends twice (queued,
# then completed by netback, possibly in the next period). So an instance
# may write data/stats at most IN + 2 * OUT times, IN and OUT its vif's
# frames in the window (from a second before it), and nothing else: an
# instance with no frames writes nothing. (Broadcast refreshes made every
# instance count every other one's: with 50, 710 data/stats writes in 30 s.)
# Counted from xenstored's trace where there is one (per connection: a
# guest writes relative paths, so a connection's writes are matched to its
# domain by the value of its last one, which is that domain's data/stats
# now); a dom0 watch sees only some of the writes (with 100 instances it
# saw 2 of the trace's 461).
sc_bad="" sc_other=0 sc_writers=0 sc_max=0
: > "$SC/writes.per_domain"
if [ -n "$XS_TRACE" ]; then
    # "CONN VALUE" for each data/stats write, value trimmed.
    sc_stats_writes() {
        sed -nE 's/.*IN (0x[0-9a-f]+) [0-9]{8} [0-9:]{8} WRITE \(data\/stats (.*)\)$/\1\t\2/p' "$1" \
            | awk -F'\t' '{ v = $2; sub(/^ +/, "", v); sub(/ +$/, "", v); print $1 "\t" v }'
    }
    sc_stats_writes "$SC/xs.after" > "$SC/writes.after"
    # A connection is the domain whose value now it wrote, in the window or after.
    sed 's/ /\t/' "$SC/stats.after" > "$SC/stats.now"
    sc_stats_writes "$SC/xs.window" > "$SC/writes.window"
    awk -F'\t' -v now="$SC/stats.now" -v after="$SC/writes.after" '
        BEGIN { while ((getline l < now) > 0) { split(l, f, "\t"); v = f[2]; sub(/^ +/, "", v); sub(/ +$/, "", v); id[v] = f[1] }
                while ((getline l < after) > 0) { split(l, f, "\t"); if (f[2] in id) dom[f[1]] = id[f[2]] } }
        { n[$1]++ }
        END { for (c in n) print ((c in dom) ? dom[c] : "?"), n[c], c }' "$SC/writes.window" > "$SC/writes.per_domain"
    sc_other=$(grep -cE 'IN 0x[0-9a-f]+ [0-9]{8} [0-9:]{8} (WRITE|MKDIR|RM|SET_PERMS) \([^/]' "$SC/xs.window" | awk '{ print $1 }')
    sc_other=$((sc_other - $(grep -cE 'IN 0x[0-9a-f]+ [0-9]{8} [0-9:]{8} WRITE \(data/stats[ )]' "$SC/xs.window")))
else
    for id in "${IDS[@]}"; do
        n=$(grep -c "^/local/domain/$id/data/stats\$" "$SC/watch.window")
        [ "$n" = 0 ] || echo "$id $n watch" >> "$SC/writes.per_domain"
    done
    sc_other=$(grep '^/local/domain/' "$SC/watch.window" | grep -vc '/data/stats$')
fi
# "IN OUT" per domain, before and after the window (no awk per writer).
declare -A sc_io0=() sc_io1=()
while read -r id a b; do sc_io0[$id]="$a $b"; done < "$SC/inout0"
while read -r id a b; do sc_io1[$id]="$a $b"; done < "$SC/inout1"
while read -r id n conn; do
    sc_writers=$((sc_writers + 1)); [ "$n" -gt "$sc_max" ] && sc_max=$n
    # The frames of the window and its second before, per direction.
    read -r in0 out0 <<< "${sc_io0[$id]:-0 0}"
    read -r in1 out1 <<< "${sc_io1[$id]:-0 0}"
    fin=$(( ${in1:-0} - ${in0:-0} )) fout=$(( ${out1:-0} - ${out0:-0} ))
    echo "domain $id: $n data/stats writes, its vif carried $fin frames to it and $fout from it (allowed $((fin + 2 * fout)))"
    if [ "$id" = "?" ] || [ "$n" -gt $((fin + 2 * fout)) ]; then
        # What its first write in the window changed, against its stats before it.
        first=$(awk -F'\t' -v c="$conn" '$1 == c { print $2; exit }' "$SC/writes.window")
        sc_changed "$id" "$first"
        sc_bad+="domain $id: $n writes with $fin frames in, $fout out (its first: ${sc_moved:-nothing moved}); "
    fi
done < "$SC/writes.per_domain"
# The trace holds every request, so every guest write the watch saw (a
# write just before the window whose event came after it opened is the
# watch's alone: a few). Fewer means it lost some, and so the counts above
# prove nothing (a CI run: 44 requests and no data/stats write in the
# trace, 42 data/stats writes seen by the watch).
sc_trace_bad=""
if [ -n "$XS_TRACE" ]; then
    tw=$(wc -l < "$SC/writes.window")
    ww=$(grep -c '^/local/domain/[0-9]*/data/stats$' "$SC/watch.window")
    [ "$ww" -le $((tw + 3)) ] || sc_trace_bad="xenstored's trace holds $tw data/stats writes of the window, a dom0 watch saw $ww: the trace is incomplete ($(wc -l < "$SC/xs.window") lines in the window; $(sc_room)); "
fi
if [ "$ok" -gt 0 ] && [ -z "$sc_bad$sc_trace_bad" ] && [ "$sc_other" = 0 ]; then
    pass "scale: $ok idle instances wrote only data/stats, each no more than its frames moved its counters ($sc_writers wrote, at most $sc_max times, in $secs s; a dom0 watch saw $guest_writes; xenstored: $((cpu1 - cpu0)) ms CPU, $reqs requests)"
else
    fail "scale: idle instances and xenstore" "$ok idle guests in $secs s: $sc_trace_bad${sc_bad:-}$sc_other writes elsewhere"
fi

# ---- xl create -e: no monitor, and then no one reaps the domain -------------------------
# The xl left per domain is what carries out on_poweroff=destroy: it waits
# for the domain's death and destroys it (devices, hotplug, xenstore).
# Without it (-e) an instance that powers off (xl shutdown, idle_exit)
# stays a shutdown domain holding its memory until something destroys it:
# one reaper for all of them (libvirtd, below, or the operator tool) would
# replace the N monitors.
xl_n=$(pgrep -x xl | wc -l)
xl create -e "$MP_CFG" "kernel=\"$P/miniproxy\"" 'name="sc-e"' memory=4 \
        "vif=['bridge=xenbr0,mac=00:16:3e:00:0e:01,script=/etc/xen/scripts/vif-fast']" \
        'extra="ip=10.0.0.229/24 rule=reverse:80:10.0.0.1:7010 rx_bufs=32 max_conns=64"' > "$SC/xe" 2>&1
e_rc=$?
# (Its exit status is looked at only when the domain is not there.)
if e_id=$(domid sc-e) && wait_xs "/local/domain/$e_id/data/ready" 60 >/dev/null; then
    sleep 1
    e_n=$(pgrep -x xl | wc -l)
    xl shutdown sc-e >/dev/null 2>&1
    for _ in $(seq 30); do   # until it has shut down (state s), up to 30 s
        sleep 1
        e_state=$(xl list sc-e 2>/dev/null | awk 'NR == 2 { print $5 }')
        [[ $e_state == *s* ]] && break
    done
    sleep 3                  # and still there 3 s later
    e_state=$(xl list sc-e 2>/dev/null | awk 'NR == 2 { print $5 }')
    echo "xl create -e: xl processes $xl_n -> $e_n; after xl shutdown: state '${e_state:-gone}'"
    [ "$e_n" = "$xl_n" ] && [[ $e_state == *s* ]] \
        && pass "scale: xl create -e leaves no xl process, and the powered-off domain stays (state $e_state) until destroyed" \
        || fail "scale: xl create -e" "xl processes $xl_n -> $e_n, state after shutdown '${e_state:-gone}'"
else
    fail "scale: xl create -e" "rc $e_rc, domain ${e_id:-absent}: $( [ -s "$SC/xe" ] && tail -n 5 "$SC/xe" | tr '\n' ' ' || echo "no output;") $(sc_room)"
    xl list 2>&1 | tail -n 3
fi
domid sc-e >/dev/null 2>&1 && xl_destroy sc-e >/dev/null

# ---- the libvirt way: one libvirtd instead of one xl per domain ----------------------
if [ "$SC_LV_N" -gt 0 ] && virsh -c xen:///system uri >/dev/null 2>&1; then
    lv_before=$(sc_dom0)
    lv_spawn() {
        "$MP" spawn --via libvirt --name "sl$1" --mode reverse --listen 80 --upstream 10.0.0.1:7010 \
            --ip "10.0.0.$((230 + $1))/24" --memory 4 --timeout 120 > "$SC/lspawn.$1" 2>&1
    }
    sc_t0=$(now_ms)
    SC_RUN_N=$SC_LV_N sc_run_bounded "$SC_PAR" lv_spawn
    lv_wall=$(( $(now_ms) - sc_t0 ))
    lv_ok=$(grep -l '^spawned name=sl' "$SC"/lspawn.* 2>/dev/null | wc -l)
    lv_after=$(sc_dom0)
    log "dom0 with $lv_ok more through libvirt: $lv_after"
    if [ "$lv_ok" -gt 0 ]; then
        lper() { awk -v a="$(sc_of "$1" "$lv_after")" -v b="$(sc_of "$1" "$lv_before")" -v n="$lv_ok" \
            'BEGIN { printf "%.2f", (a - b) / n }'; }
        measure scale_libvirt_per_instance "n=$lv_ok wall_ms=$lv_wall dom0_used_kb=$(lper used_kb)" \
             "xl_procs=$(lper xl_procs) procs=$(lper procs) libvirtd_rss_kb=$(lper libvirtd_rss_kb)"
    fi
    [ "$lv_ok" = "$SC_LV_N" ] && [ "$(sc_of xl_procs "$lv_after")" = "$(sc_of xl_procs "$lv_before")" ] \
        && pass "scale: $SC_LV_N more through libvirt all ready, no xl process added" \
        || fail "scale: libvirt" "$lv_ok of $SC_LV_N ready; xl processes $(sc_of xl_procs "$lv_before") -> $(sc_of xl_procs "$lv_after");\
 sl0: $(tail -n 2 "$SC/lspawn.0" 2>/dev/null | tr '\n' ' ' | cut -c1-300) ($(stat -c %s "$SC/lspawn.0" 2>/dev/null) B); $(sc_room)"
fi

# ---- stop --all leaves nothing behind ---------------------------------------------------
sc_t0=$(now_ms)
# A line per instance stopped is progress for all.sh's stall watch (53
# stops take minutes under TCG).
"$MP" stop --all 2>&1 | while IFS= read -r l; do alive; printf '%s\n' "$l"; done > "$SC/stop"; rc=${PIPESTATUS[0]}
ms=$(( $(now_ms) - sc_t0 ))
n=$(grep -c '^stopped name=s[cl][0-9]' "$SC/stop")
sleep 2   # the xl monitors exit once their domain is reaped
end=$(sc_dom0)
left=$(xl list 2>/dev/null | awk 'NR > 1 && $1 ~ /^s[cl][0-9]+$/' | wc -l)
xs_left=$(( $(sc_of xs_domains "$end") - $(sc_of xs_domains "$before") ))
measure scale_stop_all "ms=$ms n=$n"
log "dom0 after stop --all: $end"
if [ $rc = 0 ] && [ "$n" = $((ok + ${lv_ok:-0})) ] && [ "$left" = 0 ] && [ -z "$("$MP" list)" ] \
   && [ "$xs_left" = 0 ] && [ "$(sc_of vifs "$end")" = "$(sc_of vifs "$before")" ] \
   && [ "$(sc_of xl_procs "$end")" = "$(sc_of xl_procs "$before")" ]; then
    pass "scale: stop --all removed the $n in $ms ms; no domain, xl process, xenstore directory or vif left"
else
    fail "scale: stop --all" "rc $rc, $n stopped, $left domains and $xs_left xenstore dirs left;\
 vifs $(sc_of vifs "$before") before, $(sc_of vifs "$end") now; xl processes $(sc_of xl_procs "$before") before,\
 $(sc_of xl_procs "$end") now; $(grep -v '^stopped' "$SC/stop" | head -n 3 | tr '\n' ' ')"
fi
echo "dom0 soft lockups (kernel watchdog) during the test: $(( $(dmesg | grep -c 'soft lockup') - lockups0 ))"
measure scale_dom0_after_stop_delta "used_kb=$(( $(sc_of used_kb "$end") - $(sc_of used_kb "$before") ))" \
     "procs=$(( $(sc_of procs "$end") - $(sc_of procs "$before") ))"

# ---- clean up ----------------------------------------------------------------------
for d in $(xl list 2>/dev/null | awk 'NR > 1 && $1 ~ /^s[cl][0-9]+$/ { print $1 }'); do xl_destroy "$d" >/dev/null; done
kill "${SC_PIDS[@]}" 2>/dev/null; wait "${SC_PIDS[@]}" 2>/dev/null
rm -rf "$SC"
summary
