#!/bin/bash
# Runs inside the testbed's dom0 (scripts/bench puts it there): Miniproxy against
# the Linux baseline guest (Debian's kernel + HAProxy `mode tcp`, scripts/linux-guest)
# with the same rules, the same client and the same servers, one after the other and
# interleaved across repetitions. A benchmark: it prints, it never passes or fails on time.
#
# Output lines (scripts/bench parses them):
#   BENCHINFO key=value ...            run facts (accel, versions, configs)
#   BENCH test=T target=X key=value... one measurement (X: mp, lx, floor, direct)
#   BENCHSTAT target=X label=L ...     counters (Miniproxy's data/stats, the guest's)
#   BENCHERR text                      a measurement that failed; the run goes on
#
# Arguments: KEY=VALUE overrides of the knobs below, e.g. PHASES="inst perf".
#
# Network (bridge xenbr0, 10.0.0.0/24): namespaces "cli" (10.0.0.101) and "srv"
# (10.0.0.102), each on a veth into the bridge; Miniproxy 10.0.0.2, Linux guest
# 10.0.0.3. In srv: HAProxy as a tiny HTTP server (:80, keep-alive), iperf3 -s
# (:5201), bench-tcp.pl (:84 echo, :8000 N bytes on request). Both proxies forward
# 80, 5201, 84 and 8000 to srv; "direct" is cli talking to srv over the bridge.
. /root/lib.sh
P=/root/payload
cd "$P" || exit 1

PHASES="mem inst perf accel scale"
INST_REPS=3          # instantiation: create/ready/destroy of each kind
PERF_REPS=2          # connections/s, latency, throughput
ACCEL_REPS=3         # transfers over the netem paths
DUR=4                # seconds per wrk / iperf3 measurement
MP_PERF_MEM=8        # Miniproxy's memory= in perf and accel, if above its smallest: socket
                     # buffers adapt to free memory, and at the smallest (4, with max_conns=128
                     # and 4 rules) connections get little more than buf_min=4k each way
MP_MEM=16            # memory= of Miniproxy and of the Linux guest in the later phases,
LX_MEM=160           # unless the mem phase found their smallest memory= (then that is used)
CONC_N=100           # the memory check: concurrent connections, bytes each (+97*i)
CONC_SIZE=20000
LX_MEM_LO=96         # the memory search: too small (xl: the kernel and initrd do not fit)
LX_MEM_HI=144
MP_MEM_LO=3          # xl's domain builder makes nothing below 4
MP_MEM_HI=16
LX_READY_S=90        # wait this long for the Linux guest's ready key
COMMON="max_conns=128 connect_timeout=10s idle_timeout=300s"
# buf= is not common: for HAProxy it is tune.bufsize (its default, 16k; the kernel
# autotunes the TCP windows), for Miniproxy the largest per-direction window a
# connection gets (its own default, adapted to free memory).
LX_BUF=16k
MP_OPTS=''           # extra keys for the main Miniproxy instance (e.g. "offload=off")
SPLITS="25+25 5+45"  # client-leg RTT + server-leg RTT in ms
MPBUF=256k           # accel also runs a second Miniproxy with this buf= ("mpbuf"; empty: not)
MPBUF_MEM=40
MPALT=''             # e.g. "tx_bufs=256 rx_bufs=256": perf also runs Miniproxy with these keys added ("mpalt")
MPALT_MEM=16
PERF_TARGETS="direct mp lx"   # (+ mpalt when MPALT is set)
SIZES="10240 102400 1048576"
SCALE_N=100          # scale: this many Miniproxy instances at memory=4 (tests/xen/62-scale.sh)
SCALE_PAR=4          # ...spawned this many at a time,
SCALE_BUDGET_S=480   # none started after this many seconds (the CI test: 50 in 180 s)
for a in "$@"; do
    case $a in
    *=*) eval "${a%%=*}=\"\${a#*=}\"" ;;
    *) echo "BENCHERR unknown argument $a" ;;
    esac
done

CLI_IP=10.0.0.101 SRV_IP=10.0.0.102
MP_IP=10.0.0.2 MP_MAC=00:16:3e:00:00:02
LX_IP=10.0.0.3 LX_MAC=00:16:3e:00:00:03
FL_MAC=00:16:3e:00:00:04
MB_IP=10.0.0.5 MB_MAC=00:16:3e:00:00:05
MA_IP=10.0.0.6 MA_MAC=00:16:3e:00:00:06
MW_IP=10.0.0.7       # the warm spawn (a pool member: its MAC is the member's)
MPTOOL=$P/scripts/miniproxy
RULES="rule=reverse:80:$SRV_IP:80 rule=reverse:5201:$SRV_IP:5201 rule=reverse:84:$SRV_IP:84 rule=reverse:8000:$SRV_IP:8000"
MP_EXTRA="ip=$MP_IP/24 $RULES $COMMON${MP_OPTS:+ $MP_OPTS}"
# MPALT's keys replace COMMON's (a key may appear only once on the line).
MA_EXTRA="ip=$MA_IP/24 $RULES"
for tok in $COMMON; do case " $MPALT" in *" ${tok%%=*}="*) ;; *) MA_EXTRA="$MA_EXTRA $tok" ;; esac; done
MA_EXTRA="$MA_EXTRA $MPALT"
MB_EXTRA="ip=$MB_IP/24 rule=reverse:8000:$SRV_IP:8000 max_conns=16 buf=$MPBUF connect_timeout=10s idle_timeout=300s"
LX_EXTRA="console=hvc0 quiet ip=$LX_IP/24 $RULES $COMMON buf=$LX_BUF"
MP_CFG=$P/xl-configs/miniproxy.cfg
LX_CFG=/tmp/bench-lx.cfg
TCP="perl $P/dom0/bench-tcp.pl"
CLI="ip netns exec cli"
SRV="ip netns exec srv"
T_START=$(now_ms)

err() { echo "BENCHERR $*"; }
ip_of() { case $1 in mp) echo $MP_IP ;; warm) echo $MW_IP ;; lx) echo $LX_IP ;; mpbuf) echo $MB_IP ;; mpalt) echo $MA_IP ;; direct) echo $SRV_IP ;; esac; }
name_of() { echo "bench-$1"; }

# ---- setup -------------------------------------------------------------------
setup_net() {
    modprobe veth && modprobe sch_netem || { err "modprobe veth/sch_netem failed"; return 1; }
    local ns ip
    for ns in cli srv; do
        ip=$([ $ns = cli ] && echo $CLI_IP || echo $SRV_IP)
        ip netns add $ns || return 1
        ip link add v$ns type veth peer name eth0 netns $ns || return 1
        ip link set v$ns master xenbr0 up
        ip -n $ns addr add $ip/24 dev eth0
        ip -n $ns link set eth0 up
        ip -n $ns link set lo up
        # Every connection starts from scratch (no cached ssthresh/RTT per peer).
        ip netns exec $ns sysctl -qw net.ipv4.tcp_no_metrics_save=1
        # Before a guest answers ARP a connect would wait ~3 s for the neighbour:
        # the guests' MACs are fixed, so tell the namespaces.
        ip -n $ns neigh replace $MP_IP lladdr $MP_MAC dev eth0 nud permanent
        ip -n $ns neigh replace $LX_IP lladdr $LX_MAC dev eth0 nud permanent
        ip -n $ns neigh replace $MB_IP lladdr $MB_MAC dev eth0 nud permanent
        ip -n $ns neigh replace $MA_IP lladdr $MA_MAC dev eth0 nud permanent
    done
    ip -n cli neigh replace $SRV_IP lladdr "$(ip -n srv -br link show eth0 | awk '{ print $3 }')" dev eth0 nud permanent
    ip -n srv neigh replace $CLI_IP lladdr "$(ip -n cli -br link show eth0 | awk '{ print $3 }')" dev eth0 nud permanent
}

start_servers() {
    cat > /tmp/bench-web.cfg <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend web
    bind :80
    http-request return status 200 content-type text/plain string "hello from the bench server"
EOF
    $SRV haproxy -D -f /tmp/bench-web.cfg -p /tmp/bench-web.pid || err "web server (haproxy) did not start"
    $SRV iperf3 -s -D -p 5201 --pidfile /tmp/bench-iperf.pid >/dev/null 2>&1 || err "iperf3 -s did not start"
    $SRV $TCP server 84 8000 >/tmp/bench-tcpsrv.log 2>&1 &
    TCPSRV=$!
    sleep 0.5
    local got
    got=$($CLI curl -s -m 5 http://$SRV_IP/) || err "web server does not answer"
    echo "BENCHINFO web_server_answer=\"$got\""
}

write_lx_cfg() {
    cat > $LX_CFG <<EOF
name = "bench-lx"
type = "pv"
kernel = "$P/linux-guest/vmlinux"
ramdisk = "$P/linux-guest/initrd.gz"
memory = $LX_MEM
vcpus = 1
vif = [ 'bridge=xenbr0,mac=$LX_MAC,script=/etc/xen/scripts/vif-fast' ]
extra = "$LX_EXTRA"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "preserve"
EOF
}

# xenconsoled appends every instance of a name to the same log: remember where
# this instance's part starts.
declare -A CON_OFF
con_mark() { CON_OFF[$1]=$(stat -c %s "$(console_log "$(name_of "$1")")" 2>/dev/null || echo 0); }
con_new() { tail -c +$(( ${CON_OFF[$1]:-0} + 1 )) "$(console_log "$(name_of "$1")")" 2>/dev/null; }

# create KIND MEMORY: xl create (no waiting); sets CREATE_MS.
create() {
    local kind=$1 mem=$2 t0 rc
    con_mark "$kind"
    t0=$(now_ms)
    case $kind in
    mp) xl_create "$MP_CFG" "kernel=\"$P/miniproxy\"" 'name="bench-mp"' "memory=$mem" \
            "vif=['bridge=xenbr0,mac=$MP_MAC,script=/etc/xen/scripts/vif-fast']" "extra=\"$MP_EXTRA\"" >/dev/null ;;
    lx) xl_create "$LX_CFG" "memory=$mem" >/dev/null ;;
    mpalt) xl_create "$MP_CFG" "kernel=\"$P/miniproxy\"" 'name="bench-mpalt"' "memory=$mem" \
            "vif=['bridge=xenbr0,mac=$MA_MAC,script=/etc/xen/scripts/vif-fast']" "extra=\"$MA_EXTRA\"" >/dev/null ;;
    mpbuf) xl_create "$MP_CFG" "kernel=\"$P/miniproxy\"" 'name="bench-mpbuf"' "memory=$mem" \
            "vif=['bridge=xenbr0,mac=$MB_MAC,script=/etc/xen/scripts/vif-fast']" "extra=\"$MB_EXTRA\"" >/dev/null ;;
    floor) xl_create "$MP_CFG" "kernel=\"$P/floor\"" 'name="bench-floor"' "memory=$mem" \
            "vif=['bridge=xenbr0,mac=$FL_MAC,script=/etc/xen/scripts/vif-fast']" \
            'extra="loglevel=warn ip=10.0.0.4/24"' 'on_poweroff="preserve"' >/dev/null ;;
    esac
    rc=$?
    CREATE_MS=$(( $(now_ms) - t0 ))
    return $rc
}

# The domain id of NAME from xenstore: `xl domid` starts libxl, which costs
# hundreds of ms under emulation and would land in the instantiation figures.
fast_domid() {
    local d
    for d in $(xenstore-list /local/domain 2>/dev/null); do
        [ "$(xenstore-read "/local/domain/$d/name" 2>/dev/null)" = "$1" ] && { echo "$d"; return 0; }
    done
    return 1
}

# wait_ready KIND T0 TIMEOUT_S: poll the ready key every 10 ms; sets READY_MS and
# GUEST_US. Gives up early if the domain crashed or shut down.
wait_ready() {
    local kind=$1 t0=$2 limit=$(( $3 * 1000 )) name id n=0 st
    name=$(name_of "$kind")
    id=$(fast_domid "$name") || { READY_MS=-1; GUEST_STATE=no-domain; return 1; }
    while ! GUEST_US=$(xenstore-read "/local/domain/$id/data/ready" 2>/dev/null); do
        n=$((n + 1))
        # A guest that died says so on its console (cheap to check); xl list now and then.
        if [ $((n % 10)) = 0 ] && con_new "$kind" | grep -qE 'miniproxy: fatal|Kernel panic|linux-guest: ERROR'; then
            READY_MS=-1; GUEST_STATE=died; return 1
        fi
        if [ $((n % 100)) = 0 ]; then
            st=$(xl list "$name" 2>/dev/null | awk 'NR == 2 { print $5 }')
            case $st in *c*|*s*|'') READY_MS=-1; GUEST_STATE=${st:-gone}; return 1 ;; esac
        fi
        [ $(( $(now_ms) - t0 )) -gt $limit ] && { READY_MS=-1; GUEST_STATE=timeout; return 1; }
        sleep 0.01
    done
    READY_MS=$(( $(now_ms) - t0 ))
}

destroy() {
    local t0
    t0=$(now_ms)
    xl_destroy "$(name_of "$1")" >/dev/null || err "xl destroy $(name_of "$1") failed"
    DESTROY_MS=$(( $(now_ms) - t0 ))
}

console_tail() {   # this instance's console: the lines that say why, and the last few
    { con_new "$1" | grep -m4 -iE 'panic|not syncing|error|fail|killed|memory'; con_new "$1" | tail -n "${2:-4}"; } | cut -c1-200 | sed "s/^/    $1 console: /"
}

# ---- 1. instantiation ------------------------------------------------------------
# The first-byte client (perl) is started ahead: its own start takes up to ~2 s
# in a busy dom0 under TCG, and a warm spawn is ready sooner than that. It
# waits for T0, the invocation; FB_LEAD_MS is how far ahead it starts.
FB_LEAD_MS=2500
# fb_start KIND: T0 (now + FB_LEAD_MS) and the client, in FB_PID; then sleeps until T0.
fb_start() {
    T0=$(( $(now_ms) + FB_LEAD_MS ))
    $CLI $TCP firstbyte "$(ip_of "$1")" 80 "$T0" $((LX_READY_S + 30)) > /tmp/bench-fb.out 2>&1 &
    FB_PID=$!
    sleep "$(awk -v ms=$(( T0 - $(now_ms) )) 'BEGIN { print (ms > 0) ? ms / 1000 : 0 }')"
}
# fb_result KIND REP: waits (up to 30 s) for the client; sets BYTE_MS and FB_LATE.
fb_result() {
    local i=0
    while kill -0 "$FB_PID" 2>/dev/null && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
    kill "$FB_PID" 2>/dev/null; wait "$FB_PID" 2>/dev/null
    BYTE_MS=$(sed -n 's/^firstbyte ms=\([0-9-]*\).*/\1/p' /tmp/bench-fb.out)
    FB_LATE=$(sed -n 's/^firstbyte .* late_ms=\([0-9]*\).*/\1/p' /tmp/bench-fb.out)
    [ -n "$BYTE_MS" ] && [ "$BYTE_MS" != -1 ] || { err "inst $1 rep $2: no proxied byte ($(head -c 200 /tmp/bench-fb.out))"; BYTE_MS=-; }
    [ "${FB_LATE:-0}" = 0 ] || err "inst $1 rep $2: the first-byte client started ${FB_LATE} ms after the invocation"
}
# warm_one REP [serve]: a spawn from a filled pool of one (prepared ahead:
# booted, vif connected, waiting) -> ready and -> first proxied byte, the
# client trying from the invocation on, as for the cold kinds. Target `warm`
# runs the command (`miniproxy spawn`: a process started and ended under
# TCG); target `warmd` (with "serve") asks the resident spawner (`miniproxy
# serve`, started once, SERVE_SOCK) with `miniproxy ask`, as an operator who
# wants the fastest spawn runs it. READY_MS is bash's clock from the
# invocation to the reply either way (`ask` adds its own process). The
# client's neighbour entry for the address is set to the member's MAC
# beforehand, as the cold kinds' fixed MACs are. The pool is refilled (and
# waited for) before the next measurement, so no xl create runs beside one.
warm_one() {
    local rep=$1 mem=$MP_MEM t0 out d mac='' rc=0 target=warm tool=("$MPTOOL")
    # The daemon's requests are the command's words after `ask`.
    [ "${2:-}" = serve ] && { target=warmd; tool=("$MPTOOL" ask --timing --socket "$SERVE_SOCK"); }
    if ! out=$("$MPTOOL" pool fill 1 --memory "$mem" 2>&1); then
        err "inst $target rep $rep: pool fill failed: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
        return 1
    fi
    for d in $(xenstore-list /local/domain 2>/dev/null); do
        case $(xenstore-read "/local/domain/$d/name" 2>/dev/null) in
        mp-pool-*) mac=$(xenstore-read "/local/domain/$d/device/vif/0/mac" 2>/dev/null) ;;
        esac
    done
    [ -n "$mac" ] || { err "inst $target rep $rep: no waiting pool member"; return 1; }
    $CLI ip neigh replace $MW_IP lladdr "$mac" dev eth0 nud permanent
    fb_start warm
    t0=$T0
    out=$("${tool[@]}" spawn --name bench-warm --mode reverse --listen 80 --upstream $SRV_IP:80 \
        --ip $MW_IP/24 --memory "$mem" --extra "$COMMON" 2>&1) || rc=$?
    READY_MS=$(( $(now_ms) - t0 ))
    if [ $rc != 0 ] || ! [[ $out =~ ^spawned\ .*how=warm ]]; then
        err "inst $target rep $rep: spawn rc $rc: $(echo "$out" | tail -n 3 | tr '\n' ' ')"
        kill "$FB_PID" 2>/dev/null; "$MPTOOL" stop bench-warm >/dev/null 2>&1
        return 1
    fi
    fb_result "$target" "$rep"
    GUEST_US=$(echo "$out" | sed -n 's/.* guest_us=\([0-9]*\).*/\1/p')
    t0=$(now_ms)
    # (`ask` exits with the reply's rc, as the command does.)
    "${tool[@]}" stop bench-warm >/dev/null 2>&1 || err "inst $target rep $rep: stop failed"
    DESTROY_MS=$(( $(now_ms) - t0 ))
    $CLI ip neigh del $MW_IP dev eth0 2>/dev/null
    echo "BENCH test=inst target=$target rep=$rep mem=$mem create_ms=- ready_ms=$READY_MS byte_ms=$BYTE_MS guest_us=${GUEST_US:--} destroy_ms=$DESTROY_MS ask_us=$(echo "$out" | sed -n 's/.* ask_us=\([0-9]*\).*/\1/p' | grep . || echo -)"
    # The spawn started a refill in the background: let it finish now (the
    # daemon's refill and this fill lock against each other).
    "$MPTOOL" pool fill 1 --memory "$mem" >/dev/null 2>&1 || err "inst $target rep $rep: refill failed"
}

inst_one() {   # inst_one KIND REP
    local kind=$1 rep=$2 mem t0
    [ "$kind" = warm ] && { warm_one "$rep"; return; }
    [ "$kind" = warmd ] && { if [ -n "${SERVE_SOCK:-}" ]; then warm_one "$rep" serve; fi; return; }
    case $kind in mp) mem=$MP_MEM ;; lx) mem=$LX_MEM ;; floor) mem=4 ;; esac
    FB_PID='' BYTE_MS=-
    if [ "$kind" != floor ]; then
        # Invocation -> first proxied byte: a client keeps trying through the proxy.
        fb_start "$kind"
        t0=$T0
    else
        t0=$(now_ms)
    fi
    if ! create "$kind" "$mem"; then
        err "inst $kind rep $rep: xl create failed"
        [ -n "$FB_PID" ] && kill "$FB_PID" 2>/dev/null
        return 1
    fi
    GUEST_STATE=''
    if ! wait_ready "$kind" "$t0" "$([ "$kind" = lx ] && echo "$LX_READY_S" || echo 30)"; then
        err "inst $kind rep $rep: no ready key ($GUEST_STATE)"
        console_tail "$kind"
        [ -n "$FB_PID" ] && kill "$FB_PID" 2>/dev/null
        destroy "$kind"
        return 1
    fi
    [ -n "$FB_PID" ] && fb_result "$kind" "$rep"
    destroy "$kind"
    echo "BENCH test=inst target=$kind rep=$rep mem=$mem create_ms=$CREATE_MS ready_ms=$READY_MS byte_ms=$BYTE_MS guest_us=$GUEST_US destroy_ms=$DESTROY_MS"
}

phase_inst() {
    local rep
    echo "BENCHINFO inst_mem mp_mem=$MP_MEM lx_mem=$LX_MEM floor_mem=4"
    # The resident spawner for target warmd (its stderr: the refills' messages).
    SERVE_SOCK=''
    start_serve "$MPTOOL" /tmp/bench-serve.out /tmp/bench-serve.err \
        || err "inst: miniproxy serve did not start: $(tail -n 3 /tmp/bench-serve.err | tr '\n' ' ')"
    # (No warm-up: the mem phase has already started each kernel several times.)
    for rep in $(seq 1 "$INST_REPS"); do
        # Rotate the order so neither always runs right after the other.
        case $((rep % 5)) in
        1) inst_one mp "$rep"; inst_one lx "$rep"; inst_one floor "$rep"; inst_one warm "$rep"; inst_one warmd "$rep" ;;
        2) inst_one lx "$rep"; inst_one floor "$rep"; inst_one warmd "$rep"; inst_one warm "$rep"; inst_one mp "$rep" ;;
        3) inst_one floor "$rep"; inst_one warm "$rep"; inst_one warmd "$rep"; inst_one mp "$rep"; inst_one lx "$rep" ;;
        4) inst_one warmd "$rep"; inst_one mp "$rep"; inst_one lx "$rep"; inst_one floor "$rep"; inst_one warm "$rep" ;;
        0) inst_one warm "$rep"; inst_one mp "$rep"; inst_one warmd "$rep"; inst_one lx "$rep"; inst_one floor "$rep" ;;
        esac
    done
    [ -n "${SERVE_PID:-}" ] && { kill "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null; }
    "$MPTOOL" pool drain >/dev/null 2>&1 || err "inst: pool drain failed"
}

# ---- 2. smallest memory for 100 concurrent connections -----------------------------
mem_try() {   # mem_try KIND MB -> 0 if it boots and passes the check
    local kind=$1 mb=$2 t0 out rc detail
    t0=$(now_ms)
    if ! create "$kind" "$mb"; then
        echo "BENCH test=mem target=$kind mb=$mb result=fail why=create"
        xl_destroy "$(name_of "$kind")" >/dev/null 2>&1
        return 1
    fi
    GUEST_STATE=''
    if ! wait_ready "$kind" "$t0" "$([ "$kind" = lx ] && echo "$LX_READY_S" || echo 30)"; then
        echo "BENCH test=mem target=$kind mb=$mb result=fail why=not-ready-$GUEST_STATE create_ms=$CREATE_MS t_ms=$(( $(now_ms) - t0 ))"
        detail=$(con_new "$kind" | grep -m1 -iE 'panic|out of memory|error|memory budget|needs up to' | tr -s ' ' | cut -c1-160)
        [ -n "$detail" ] && echo "BENCHINFO mem_fail target=$kind mb=$mb console=\"$detail\""
        destroy "$kind"
        return 1
    fi
    out=$($CLI $TCP conc "$(ip_of "$kind")" 84 "$CONC_N" "$CONC_SIZE" 90 2>&1); rc=$?
    destroy "$kind"
    local summary; summary=$(echo "$out" | head -n1)
    echo "BENCH test=mem target=$kind mb=$mb result=$([ $rc = 0 ] && echo pass || echo fail) ${summary#conc } ready_ms=$READY_MS"
    [ $rc = 0 ] || echo "$out" | sed -n '2,4p' | sed 's/^/    /'
    return $rc
}

mem_search() {   # mem_search KIND LO_FAIL HI STEP
    local kind=$1 lo=$2 hi=$3 step=$4 mid
    if ! mem_try "$kind" "$hi"; then
        err "mem $kind: fails even at memory=$hi"
        echo "BENCH test=memmin target=$kind mb=-1"
        return
    fi
    while [ $((hi - lo)) -gt "$step" ]; do
        mid=$(( (lo + hi) / 2 ))
        mid=$(( (mid + step - 1) / step * step ))
        [ "$mid" -ge "$hi" ] && mid=$((hi - step))
        [ "$mid" -le "$lo" ] && break
        if mem_try "$kind" "$mid"; then hi=$mid; else lo=$mid; fi
    done
    echo "BENCH test=memmin target=$kind mb=$hi"
    eval "MEMMIN_$kind=$hi"
}

phase_mem() {
    mem_search mp "$MP_MEM_LO" "$MP_MEM_HI" 1
    mem_search lx "$LX_MEM_LO" "$LX_MEM_HI" 4
    # The later phases run each at the least memory it passed with.
    [ "${MEMMIN_mp:--1}" -gt 0 ] && MP_MEM=$MEMMIN_mp
    [ "${MEMMIN_lx:--1}" -gt 0 ] && LX_MEM=$MEMMIN_lx
}

# ---- 3. connections/s, latency, throughput -----------------------------------------
# Counters around a measurement: drops on the guest's vif (netback could not hand
# a frame to the guest: its RX ring had no free buffer) and TCP retransmissions
# seen by the client and the server namespaces.
VIF_MP='' VIF_LX='' VIF_MA=''
# snap TARGET -> "txdrop rxdrop retx_cli retx_srv rx_pkts rx_bytes tx_pkts tx_bytes cpu_dom0 cpu_guest"
# (vif rx = frames the guest sent, vif tx = frames netback gave the guest; cpu in ms
# from xl list's Time(s), 0.1 s resolution)
snap() {
    local vif='' st=/sys/class/net name c
    case $1 in mp) vif=$VIF_MP ;; lx) vif=$VIF_LX ;; mpalt) vif=$VIF_MA ;; esac
    if [ -n "$vif" ] && [ -d $st/$vif ]; then
        for c in tx_dropped rx_dropped; do printf '%s ' "$(cat $st/$vif/statistics/$c)"; done
    else
        printf '0 0 '
    fi
    printf '%s %s ' "$($CLI awk '/^Tcp:/ { n++ } n == 2 && /^Tcp:/ { print $13; exit }' /proc/net/snmp)" \
        "$($SRV awk '/^Tcp:/ { n++ } n == 2 && /^Tcp:/ { print $13; exit }' /proc/net/snmp)"
    if [ -n "$vif" ] && [ -d $st/$vif ]; then
        for c in rx_packets rx_bytes tx_packets tx_bytes; do printf '%s ' "$(cat $st/$vif/statistics/$c)"; done
    else
        printf '0 0 0 0 '
    fi
    name=$(name_of "$1")
    # (xl list rarely aborts under emulation: then "-" and no CPU figure)
    xl list 2>/dev/null | awk -v n="$name" '$1 == "Domain-0" { d = $6 } $1 == n { g = $6 }
        END { if (d == "") print "- -"; else printf "%d %d\n", d * 1000, g * 1000 }'
}
delta() {  # delta "BEFORE" "AFTER" -> key=value list
    local -a bef aft
    read -r -a bef <<<"$1"; read -r -a aft <<<"$2"
    local rxp=$((aft[4] - bef[4])) txp=$((aft[6] - bef[6]))
    echo "vif_txdrop=$((aft[0] - bef[0])) vif_rxdrop=$((aft[1] - bef[1])) retx_cli=$((aft[2] - bef[2])) retx_srv=$((aft[3] - bef[3]))" \
        "guest_tx_frames=$rxp guest_tx_avg=$(( rxp > 0 ? (aft[5] - bef[5]) / rxp : 0 )) guest_rx_frames=$txp guest_rx_avg=$(( txp > 0 ? (aft[7] - bef[7]) / txp : 0 ))" \
        "$(if [ "${aft[8]}" = - ] || [ "${bef[8]}" = - ]; then echo "cpu_dom0_ms=- cpu_guest_ms=-"
           else echo "cpu_dom0_ms=$((aft[8] - bef[8])) cpu_guest_ms=$((aft[9] - bef[9]))"; fi)"
}

# wrk's "1.23ms" etc. in µs.
to_us() { awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    f = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : (u == "m") ? 60000000 : -1
    if (f < 0) print "-"; else printf "%d", n * f }'; }

conn_one() {   # conn_one TARGET REP CONCURRENCY
    local t=$1 rep=$2 c=$3 out rate errs s0 s1
    s0=$(snap "$t")
    out=$($CLI timeout $((DUR + 30)) wrk -t1 -c"$c" -d"${DUR}s" -H 'Connection: close' "http://$(ip_of "$t"):80/" 2>&1)
    s1=$(snap "$t")
    rate=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
    errs=$(echo "$out" | awk '/Socket errors:/ { gsub(",", ""); print "connect=" $4 " read=" $6 " write=" $8 " timeout=" $10 }')
    if [ -z "$rate" ]; then err "conn $t c=$c rep $rep: no wrk result: $(echo "$out" | tail -n 2 | tr '\n' ' ')"; return 1; fi
    echo "BENCH test=conn target=$t rep=$rep c=$c rate=$rate ${errs:-connect=0 read=0 write=0 timeout=0} $(delta "$s0" "$s1")"
}

lat_one() {   # lat_one TARGET REP: one keep-alive connection, request/response
    local t=$1 rep=$2 out p50 p99 rate s0 s1
    s0=$(snap "$t")
    out=$($CLI timeout $((DUR + 30)) wrk -t1 -c1 -d"${DUR}s" --latency "http://$(ip_of "$t"):80/" 2>&1)
    s1=$(snap "$t")
    p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
    p99=$(echo "$out" | awk '$1 == "99%" { print $2 }')
    rate=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
    if [ -z "$p50" ] || [ -z "$p99" ]; then err "lat $t rep $rep: no wrk result: $(echo "$out" | tail -n 2 | tr '\n' ' ')"; return 1; fi
    echo "BENCH test=lat target=$t rep=$rep p50_us=$(to_us "$p50") p99_us=$(to_us "$p99") rr_rate=$rate $(delta "$s0" "$s1")"
}

tput_one() {   # tput_one TARGET REP FLOWS up|down
    local t=$1 rep=$2 n=$3 dir=$4 out line mbps retr s0 s1
    s0=$(snap "$t")
    local rc=0 rflag=''
    [ "$dir" = down ] && rflag=-R
    out=$($CLI timeout $((DUR + 40)) iperf3 -c "$(ip_of "$t")" -p 5201 -t "$DUR" -P "$n" -f m --connect-timeout 5000 \
        $rflag 2>&1) || rc=$?
    s1=$(snap "$t")
    if [ $rc != 0 ]; then err "tput $t $n flows $dir rep $rep: iperf3 rc $rc: $(echo "$out" | grep -iE 'error|refused' | head -n1)"; return 1; fi
    if [ "$n" = 1 ]; then
        line=$(echo "$out" | grep -E '^\[ *[0-9]+\].* receiver$' | tail -n1)
        retr=$(echo "$out" | grep -E '^\[ *[0-9]+\].* sender$' | tail -n1 | awk '{ print $(NF-1) }')
    else
        line=$(echo "$out" | grep -E '^\[SUM\].* receiver$' | tail -n1)
        retr=$(echo "$out" | grep -E '^\[SUM\].* sender$' | tail -n1 | awk '{ print $(NF-1) }')
    fi
    mbps=$(echo "$line" | awk '{ for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i-1) }')
    if [ -z "$mbps" ]; then err "tput $t $n flows $dir rep $rep: no iperf3 result: $(echo "$out" | grep -iE 'error|refused' | head -n1)"; return 1; fi
    echo "BENCH test=tput target=$t rep=$rep flows=$n dir=$dir mbps=$mbps sender_retr=${retr:--} $(delta "$s0" "$s1")"
}

stats_of() {   # BENCHSTAT line with the guest's own counters
    local t=$1 label=$2 id
    id=$(domid "$(name_of "$t")") || return
    echo "BENCHSTAT target=$t label=$label $(xenstore-read "/local/domain/$id/data/stats" 2>/dev/null)"
}

# shellcheck disable=SC2034  # read through is_up
UP_direct=1 UP_mp=1 UP_lx=1 UP_mpalt=0
is_up() { eval "[ \"\$UP_$1\" = 1 ]"; }
start_perf_guests() {
    local t0
    t0=$(now_ms)
    [ "$MP_PERF_MEM" -gt "$MP_MEM" ] && MP_MEM=$MP_PERF_MEM
    if create mp "$MP_MEM" && wait_ready mp "$t0" 30; then
        VIF_MP=vif$(domid bench-mp).0
    else
        err "perf: Miniproxy did not start"; console_tail mp; UP_mp=0
    fi
    t0=$(now_ms)
    case " $PERF_TARGETS $PHASES " in
    *" lx "*|*" accel "*) ;;
    *) UP_lx=0; t0='' ;;
    esac
    if [ -z "$t0" ]; then
        :
    elif create lx "$LX_MEM" && wait_ready lx "$t0" "$LX_READY_S"; then
        VIF_LX=vif$(domid bench-lx).0
    else
        err "perf: the Linux guest did not start with memory=$LX_MEM"; console_tail lx; UP_lx=0
        destroy lx
        if [ "$LX_MEM" -lt "$LX_MEM_HI" ]; then
            LX_MEM=$((LX_MEM + 16)); t0=$(now_ms)
            echo "BENCHINFO perf_lx_mem_retry=$LX_MEM"
            create lx "$LX_MEM" && wait_ready lx "$t0" "$LX_READY_S" && { VIF_LX=vif$(domid bench-lx).0; UP_lx=1; }
        fi
    fi
    if [ -n "$MPALT" ]; then
        t0=$(now_ms)
        if create mpalt "$MPALT_MEM" && wait_ready mpalt "$t0" 30; then
            VIF_MA=vif$(domid bench-mpalt).0; UP_mpalt=1
            PERF_TARGETS="$PERF_TARGETS mpalt"
            echo "BENCHINFO mpalt_extra=\"$MA_EXTRA\" mpalt_mem=$MPALT_MEM"
            echo "BENCHINFO mpalt_opts=\"$MPALT\""
        else
            err "perf: Miniproxy with $MPALT did not start"; console_tail mpalt
        fi
    fi
    echo "BENCHINFO perf_mem mp_perf_mem=$MP_MEM lx_perf_mem=$LX_MEM"
    # Let the Linux guest's link settle (its carrier comes ~1 s after eth0 is up),
    # then one request through each so that every neighbour cache is warm.
    sleep 2
    local t
    for t in $PERF_TARGETS; do
        is_up "$t" || continue
        $CLI curl -s -m 10 -o /dev/null "http://$(ip_of "$t"):80/" || { err "perf: no answer through $t"; eval "UP_$t=0"; }
    done
}

perf_rep() {
    local rep=$1 order t c
    # Rotate the order from one repetition to the next.
    order=$(echo $PERF_TARGETS | awk -v r="$rep" '{ for (i = 0; i < NF; i++) printf "%s ", $((i + r - 1) % NF + 1) }')
    for t in $order; do
        is_up "$t" || { err "perf $t rep $rep: skipped (not running)"; continue; }
        for c in 1 16 64; do conn_one "$t" "$rep" "$c"; done
        lat_one "$t" "$rep"
        for n in 1 8; do for d in up down; do tput_one "$t" "$rep" "$n" "$d"; done; done
        [ "$t" = direct ] || stats_of "$t" "perf-rep$rep"
    done
}

phase_perf() {
    local rep s0 s1
    # Idle cost: CPU each domain burns in 5 s with no traffic.
    s0=$(xl list | awk 'NR > 1 { printf "%s=%s ", $1, $6 }'); sleep 5
    s1=$(xl list | awk 'NR > 1 { printf "%s=%s ", $1, $6 }')
    echo "BENCHINFO idle_cpu_5s before=\"$s0\" after=\"$s1\""
    echo "BENCHINFO ping_rtt direct=$(ping_avg $SRV_IP)ms mp=$(ping_avg $MP_IP)ms lx=$(ping_avg $LX_IP)ms$([ "$UP_mpalt" = 1 ] && echo " mpalt=$(ping_avg $MA_IP)ms")"
    for rep in $(seq 1 "$PERF_REPS"); do perf_rep "$rep"; done
}

# ---- 4. TCP acceleration: netem delays, proxy part-way ---------------------------------
# One-way delay a on both ends of the client's veth and b on the server's:
# client<->proxy RTT 2a, proxy<->server RTT 2b, client<->server (direct) 2a+2b.
ping_avg() { $CLI ping -c 5 -i 0.2 -q "$1" 2>/dev/null | awk -F/ '/^rtt/ { print $5 }'; }

set_delay() {   # set_delay A_MS B_MS (one-way, may have decimals; 0 removes)
    local a=$1 b=$2
    for x in "cli $a" "srv $b"; do
        set -- $x
        if [ "$2" = 0 ]; then
            tc qdisc del dev v$1 root 2>/dev/null; ip netns exec $1 tc qdisc del dev eth0 root 2>/dev/null
        else
            tc qdisc replace dev v$1 root netem delay "${2}ms" limit 10000 || return 1
            ip netns exec $1 tc qdisc replace dev eth0 root netem delay "${2}ms" limit 10000 || return 1
        fi
    done
}

phase_accel() {
    local split c s a b rep t size out ms targets="direct mp lx" t0
    UP_mpbuf=0
    if [ -n "$MPBUF" ]; then
        # The same Miniproxy with bigger socket buffers: shows what the window costs.
        t0=$(now_ms)
        if create mpbuf "$MPBUF_MEM" && wait_ready mpbuf "$t0" 30; then
            UP_mpbuf=1; targets="direct mp mpbuf lx"
            echo "BENCHINFO mpbuf_extra=\"$MB_EXTRA\" mpbuf_mem=$MPBUF_MEM"
        else
            err "accel: Miniproxy with buf=$MPBUF did not start"; console_tail mpbuf
        fi
    fi
    for split in $SPLITS; do
        c=${split%+*} s=${split#*+}
        a=$(awk -v r="$c" 'BEGIN { print r / 2 }'); b=$(awk -v r="$s" 'BEGIN { print r / 2 }')
        set_delay "$a" "$b" || { err "accel: tc netem failed"; continue; }
        echo "BENCHINFO accel_split=$split one_way_client_ms=$a one_way_server_ms=$b rtt_ms=$(( c + s ))"
        # Ping RTTs: what the paths really have (emulation adds to netem's delays).
        echo "BENCHINFO accel_ping split=$split direct=$(ping_avg $SRV_IP)ms mp=$(ping_avg $MP_IP)ms lx=$(ping_avg $LX_IP)ms"
        for t in $targets; do is_up "$t" && $CLI $TCP get "$(ip_of "$t")" 8000 1000 10 >/dev/null; done   # warm
        for rep in $(seq 1 "$ACCEL_REPS"); do
            for size in $SIZES; do
                for t in $(echo $targets | awk -v r="$rep" '{ for (i = 0; i < NF; i++) printf "%s ", $((i + r) % NF + 1) }'); do
                    is_up "$t" || continue
                    out=$($CLI $TCP get "$(ip_of "$t")" 8000 "$size" 60)
                    ms=$(echo "$out" | sed -n 's/.*ms=\([0-9.-]*\).*/\1/p')
                    if echo "$out" | grep -q "bytes=$size "; then
                        echo "BENCH test=accel target=$t split=$split size=$size rep=$rep ms=$ms"
                    else
                        err "accel $t $split $size rep $rep: $out"
                    fi
                done
            done
        done
    done
    set_delay 0 0
    [ "$UP_mpbuf" = 1 ] && { stats_of mpbuf accel; destroy mpbuf; }
    return 0
}

# ---- scale: SCALE_N instances at memory=4 -------------------------------------------------
# tests/xen/62-scale.sh (the CI test runs 50) with its MEASURE lines also as
# BENCH lines: cold spawns/s through the operator tool, dom0's memory, xl
# processes and xenstored per instance, xenstore traffic while they idle.
# Addresses from 10.0.0.120 (the namespaces are .101 and .102).
phase_scale() {
    ( SCALE_N=$SCALE_N SCALE_PAR=$SCALE_PAR SCALE_SPAWN_BUDGET_S=$SCALE_BUDGET_S SCALE_IP_BASE=120 SCALE_LIBVIRT_N=0 SCALE_BENCH=1 TB_PASSED=0 TB_FAILED=0
      . "$P/tests/xen/62-scale.sh" ) 2>&1 | sed 's/^TEST FAIL /BENCHERR scale: /'
}

# ---- run ---------------------------------------------------------------------------
echo "BENCHINFO accel=${TESTBED_ACCEL:-unknown} phases=\"$PHASES\" inst_reps=$INST_REPS perf_reps=$PERF_REPS accel_reps=$ACCEL_REPS dur_s=$DUR"
echo "BENCHINFO xen=$(xl info 2>/dev/null | awk '$1 == "xen_version" { print $3 }') dom0_kernel=$(uname -r)" \
    "guest_kernel=$(cat $P/linux-guest/kernel-version 2>/dev/null || uname -r)" \
    "haproxy=$(haproxy -v | awk 'NR == 1 { print $3 }') wrk=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')" \
    "iperf3=$(iperf3 -v | awk 'NR == 1 { print $2 }')"
echo "BENCHINFO mp_extra=\"$MP_EXTRA\""
echo "BENCHINFO lx_extra=\"$LX_EXTRA\""
setup_net || { err "network setup failed"; exit 1; }
start_servers
write_lx_cfg
for ph in $PHASES; do
    t0=$(now_ms)
    case $ph in
    inst) phase_inst ;;
    mem) phase_mem ;;
    scale) phase_scale ;;
    perf|accel)
        [ -n "${PERF_STARTED:-}" ] || { start_perf_guests; PERF_STARTED=1; }
        phase_$ph ;;
    *) err "unknown phase $ph" ;;
    esac
    echo "BENCHINFO phase=$ph seconds=$(( ($(now_ms) - t0) / 1000 ))"
done
if [ -n "${PERF_STARTED:-}" ]; then
    stats_of mp final; stats_of lx final
    [ "$UP_mpalt" = 1 ] && { stats_of mpalt final; destroy mpalt; }
    id=$(domid bench-mp) && echo "BENCHINFO mp_console=\"$(con_new mp | grep -E 'engine:|netfront:.*pages' | tr '\n' ' ' | tr -s ' ' | cut -c1-400)\""
    # A clean stop makes Miniproxy print its final counters on the console.
    xl shutdown bench-mp >/dev/null 2>&1; wait_gone bench-mp 15 >/dev/null || destroy mp
    destroy lx
    echo "BENCHINFO mp_final_console:"; con_new mp | tail -n 5 | sed 's/^/    /'
fi
kill "$TCPSRV" 2>/dev/null
kill "$(cat /tmp/bench-web.pid 2>/dev/null)" "$(cat /tmp/bench-iperf.pid 2>/dev/null)" 2>/dev/null
echo "BENCHINFO total_seconds=$(( ($(now_ms) - T_START) / 1000 ))"
