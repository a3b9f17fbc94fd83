#!/bin/bash
# A SYN flood and junk frames under Xen (issue 13): while a 50 MB download
# runs through an instance, dom0 sends it spoofed SYNs from on-link
# addresses nobody holds (214 a second: ten times the 21.3 a second that
# fill the 64 default slots with syn_timeout=3s) and 200 junk frames a second
# (bare ACKs for no connection, random bytes, ARP requests) for 30 s. The
# download must complete byte-exact, new real connections (20 kB echoes, one
# after another) must be served during the flood (9 in 10 at least), the backend must see no connection for a spoofed SYN
# beyond the 8 the engine opens before pressure starts, and the instance's
# memory stays bounded (px_buf_peak, cpu_ before and after printed).
. /root/lib.sh
. /root/payload/tests/xen/common.sh
FL=/tmp/fl
rm -rf "$FL"; mkdir -p "$FL"
FL_PIDS=()
TOOL=$P/tools/miniproxy-tcptool

# Servers on dom0's bridge address:
#   7151: a 50 MB file
#   7152: echo; every connection it accepts adds a line to $FL/conns
head -c 52428800 /dev/urandom > "$FL/f50m"
cat > "$FL/echo.sh" <<'SH'
#!/bin/bash
echo x >> /tmp/fl/conns
exec cat
SH
chmod +x "$FL/echo.sh"
: > "$FL/conns"
socat -t 60 TCP-LISTEN:7151,bind=10.0.0.1,reuseaddr,fork OPEN:"$FL/f50m",rdonly & FL_PIDS+=($!)
socat -t 30 TCP-LISTEN:7152,bind=10.0.0.1,reuseaddr,fork,backlog=64 EXEC:"$FL/echo.sh" & FL_PIDS+=($!)
sleep 0.5

MAC=00:16:3e:00:55:01
IP=10.0.0.57
if mp_create flood 6 "ip=$IP/24 rule=reverse:85:10.0.0.1:7151 rule=reverse:86:10.0.0.1:7152" $MAC; then
    pass "flood: ready in $MP_READY_MS ms"
    # One real echo first: the backend's count then has a known start.
    head -c 20000 /dev/urandom > "$FL/e0"
    timeout 30 socat -t 20 - "TCP:$IP:86,connect-timeout=5" < "$FL/e0" > "$FL/o0" 2>/dev/null
    cmp -s "$FL/e0" "$FL/o0" && pass "flood: an echo before the flood" || fail "flood: echo before the flood" "got $(stat -c %s "$FL/o0") B"
    sleep 1.2   # stats refresh once a second
    st0=$(mp_stats $MP_ID)
    conns0=$(wc -l < "$FL/conns")
    echo "before: $st0"

    t0=$(now_ms)
    timeout 300 socat -u "TCP:$IP:85,connect-timeout=5" "OPEN:$FL/got,creat,trunc" 2> "$FL/got.err" & DL=$!
    sleep 1
    "$TOOL" flood xenbr0 $MAC $IP:86 --syn-rate 214 --junk-rate 200 --secs 30 --src 10.0.0.100-249 > "$FL/flood.out" 2>&1 & FLOOD=$!
    # Real clients during the flood, one after another from 5 s into it
    # until it ends (under TCG emulation one takes several seconds).
    sleep 5
    served=0; tried=0
    while kill -0 "$FLOOD" 2>/dev/null; do
        i=$((tried + 1))
        head -c 20000 /dev/urandom > "$FL/e$i"
        timeout 20 socat -t 10 - "TCP:$IP:86,connect-timeout=10" < "$FL/e$i" > "$FL/o$i" 2> "$FL/err$i"
        tried=$i
        if cmp -s "$FL/e$i" "$FL/o$i"; then
            served=$((served + 1))
        else
            log "real client $i: got $(stat -c %s "$FL/o$i") B: $(tail -n1 "$FL/err$i")"
        fi
    done
    sleep 1.2
    st_mid=$(mp_stats $MP_ID)
    wait "$FLOOD"
    echo "$(cat "$FL/flood.out")"
    echo "during: $st_mid"
    if [ $tried -ge 3 ] && [ $served -ge $(( (tried * 9 + 9) / 10 )) ]; then
        pass "flood: $served of $tried real echoes (20 kB) byte-exact during the flood"
    else
        fail "flood: real clients" "$served of $tried served during the flood"
    fi
    # The backend: the real echoes only, plus at most 8 spoofed (max_conns/8).
    conns=$(( $(wc -l < "$FL/conns") - conns0 ))
    if [ $conns -le $((tried + 8)) ]; then
        pass "flood: the backend saw $conns connections for $tried real clients and $(sed 's/.*syn=\([0-9]*\).*/\1/' "$FL/flood.out") spoofed SYNs"
    else
        fail "flood: backend" "$conns connections for $tried real clients"
    fi
    wait "$DL"; rc=$?
    ms=$(( $(now_ms) - t0 ))
    if [ $rc = 0 ] && cmp -s "$FL/f50m" "$FL/got"; then
        pass "flood: 50 MB download through the flood byte-exact ($ms ms, sha256 $(sha256sum < "$FL/got" | cut -c1-16))"
    else
        fail "flood: 50 MB download" "rc $rc, got $(stat -c %s "$FL/got") B in $ms ms: $(tail -n1 "$FL/got.err")"
    fi
    # After the flood: the half-open slots expire (syn_timeout 3 s), a new
    # connection is served, and the memory came back down.
    sleep 4
    head -c 20000 /dev/urandom > "$FL/e99"
    timeout 30 socat -t 20 - "TCP:$IP:86,connect-timeout=5" < "$FL/e99" > "$FL/o99" 2>/dev/null
    cmp -s "$FL/e99" "$FL/o99" && pass "flood: an echo after the flood" || fail "flood: echo after the flood" "got $(stat -c %s "$FL/o99") B"
    sleep 1.2
    st1=$(mp_stats $MP_ID)
    echo "after: $st1"
    peak=$(stat_of px_buf_peak "$st1"); bytes=$(stat_of px_buf_bytes "$st1"); bytes0=$(stat_of px_buf_bytes "$st0")
    active=$(stat_of px_active "$st1")
    # 6 MB of guest memory: the engine's budget is below it and the ledger
    # never lets the buffers exceed it; the flood's connections are gone.
    if [ -n "$peak" ] && [ "$peak" -lt 6291456 ] && [ "$active" = 0 ]; then
        pass "flood: memory bounded: px_buf_peak $peak B, px_buf_bytes $bytes0 B before, $bytes B after, px_active=0"
    else
        fail "flood: memory" "px_buf_peak $peak, px_buf_bytes $bytes0 -> $bytes, px_active $active"
    fi
    for k in cpu_engine_ms cpu_nic_ms cpu_busy_ms cpu_loops cpu_wakeups px_timeouts px_accepted px_refused; do
        echo "  $k: $(stat_of $k "$st0") -> $(stat_of $k "$st1")"
    done
    tail -n 5 "$(console_log flood)"
    mp_stop flood
else
    fail "flood: not ready"
fi
kill "${FL_PIDS[@]}" 2>/dev/null; wait "${FL_PIDS[@]}" 2>/dev/null
rm -rf "$FL"
summary
