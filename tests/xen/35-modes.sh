#!/bin/bash
# Proxy modes under Xen (issue 5): transparent mode (a client routed through
# the instance reaches servers at two addresses, byte-exact, without knowing
# the proxy exists; the servers see the instance's address), a chain of two
# instances, the small profile in memory=4 with 64 concurrent connections, and
# the shipped xl-configs (transparent.cfg, reverse.cfg, small.cfg) as written.
. /root/lib.sh
. /root/payload/tests/xen/common.sh
MP=$P/scripts/miniproxy
MD=/tmp/modes
rm -rf "$MD"; mkdir -p "$MD"
MD_PIDS=()
md_sha() { sha256sum "$1" | cut -c1-64; }
md_stats() { mp_stats "$(domid "$1")"; }
# md_diff WANT GOT: how GOT differs from WANT: sizes, the runs of differing
# bytes (offset+length, gaps under 16 B bridged, the first 20), how many of
# them are zero, and where in WANT the first wrong bytes come from (if
# anywhere): the pattern says which layer to suspect.
md_diff() {
    local first pat
    echo "got $(stat -c %s "$2") of $(stat -c %s "$1") B;"
    cmp -l "$1" "$2" 2>/dev/null | awk '
        { o = $1 - 1; if (n == 0 || o > last + 16) { if (n && n <= 20) printf "%d+%d ", s, last - s + 1; s = o; n++ } last = o; c++; z += ($3 == 0) }
        END { if (n && n <= 20) printf "%d+%d ", s, last - s + 1; printf "(%d runs, %d bytes differ, %d of them zero);", n, c, z }'
    first=$(cmp "$1" "$2" 2>/dev/null | awk '{ print $5 }' | tr -d ,)
    [ -n "$first" ] || return 0
    first=$((first - 1))
    pat=$(od -An -tx1 -j "$first" -N 16 "$2" | tr -d ' \n' | sed 's/../\\x&/g')
    echo " the wrong bytes at $first are found in the original at: $(LC_ALL=C grep -obUaP "$pat" "$1" | cut -d: -f1 | head -n 3 | tr '\n' ' ')"
}
# md_cfg NAME CFG: xl create a shipped config as written, but with the built
# kernel, vif-fast and a MAC of our own; waits for the ready key.
# The address was another instance's (another MAC) a moment ago: the guest
# sends no gratuitous ARP, so forget the old MAC here and in the namespaces.
md_cfg() {
    local md_t0 id ns; md_t0=$(now_ms)
    for ns in "" md-cli md-srv; do
        [ -z "$ns" ] || [ -e "/run/netns/$ns" ] || continue
        ip ${ns:+-n "$ns"} neigh show 10.0.0.2 | sed "s/^/neighbour in ${ns:-dom0} before $1: /"
        ip ${ns:+-n "$ns"} neigh flush to 10.0.0.2
    done
    xl_create "$P/xl-configs/$2" "name=\"$1\"" "kernel=\"$P/miniproxy\"" \
        "vif=['bridge=xenbr0,mac=00:16:3e:00:35:$3,script=/etc/xen/scripts/vif-fast']" >/dev/null || return 1
    id=$(domid "$1") || return 1
    wait_xs "/local/domain/$id/data/ready" 30 >/dev/null || { tail -n 20 "$(console_log "$1")"; return 1; }
    echo "$1 ($2): ready in $(( $(now_ms) - md_t0 )) ms"
    # Learn its MAC before the checks (a first ARP answer can take seconds in
    # an overloaded testbed; what is checked here is the proxying).
    ping -c 1 -W 10 10.0.0.2 >/dev/null || echo "$1: no answer to ping"
}

# ---- transparent mode ---------------------------------------------------------------
# Client 10.0.0.50 routes 10.0.2.0/24 via the instance (10.0.0.2); the servers
# 10.0.2.10 and 10.0.2.11 sit behind 10.0.0.60, the instance's gateway.
# With veth (network namespaces): client and servers each in their own netns
# with a veth on xenbr0. Without veth (no veth module in dom0): the same
# addresses in dom0's own namespace, the client's traffic steered by a source
# rule (from 10.0.0.50 -> table 150 -> via 10.0.0.2) placed before the local
# table.
# MD_NO_NETNS=1 forces the second variant.
MD_NETNS=0
[ "${MD_NO_NETNS:-0}" = 1 ] || modprobe veth 2>/dev/null
if [ "${MD_NO_NETNS:-0}" != 1 ] && ip link add md-c0 type veth peer name md-c1 2>/dev/null && ip link add md-s0 type veth peer name md-s1 2>/dev/null; then
    MD_NETNS=1
    ip netns add md-cli && ip netns add md-srv
    ip link set md-c1 netns md-cli && ip link set md-s1 netns md-srv
    for d in md-c0 md-s0; do ip link set "$d" master xenbr0 && ip link set "$d" up; done
    ip -n md-cli addr add 10.0.0.50/24 dev md-c1
    ip -n md-cli link set md-c1 up && ip -n md-cli link set lo up
    ip -n md-cli route add 10.0.2.0/24 via 10.0.0.2
    for a in 10.0.0.60/24 10.0.2.10/24 10.0.2.11/24; do ip -n md-srv addr add "$a" dev md-s1; done
    ip -n md-srv link set md-s1 up && ip -n md-srv link set lo up
    MD_CLI=(ip netns exec md-cli); MD_SRV=(ip netns exec md-srv); MD_BIND=""
    log "transparent: client and servers in network namespaces md-cli / md-srv (veth on xenbr0)"
else
    ip link del md-c0 2>/dev/null
    for a in 10.0.0.50/24 10.0.0.60/24; do ip addr add "$a" dev xenbr0; done
    for a in 10.0.2.10/32 10.0.2.11/32; do ip addr add "$a" dev lo; done
    ip route add 10.0.2.0/24 via 10.0.0.2 dev xenbr0 table 150
    ip rule add pref 100 from 10.0.0.50 lookup 150
    ip rule add pref 200 lookup local && ip rule del pref 0 lookup local
    # The instance answers as 10.0.2.x, which is also local here.
    MD_ACCEPT_LOCAL=$(sysctl -n net.ipv4.conf.xenbr0.accept_local)
    sysctl -qw net.ipv4.conf.xenbr0.accept_local=1
    MD_CLI=(); MD_SRV=(); MD_BIND=",bind=10.0.0.50"
    log "transparent: no veth in this dom0: client 10.0.0.50 and servers 10.0.2.10/.11 in dom0's namespace, policy-routed"
fi
# Servers: :80 sends a file of its own per address; :81 reads to EOF and
# answers the SHA-256 of what it got and who it saw. Both log the peer.
for a in 10 11; do head -c $((300000 + a * 1000)) /dev/urandom > "$MD/t10.0.2.$a.bin"; done
head -c 200000 /dev/urandom > "$MD/up.bin"
cat > "$MD/dl.sh" <<EOF
#!/bin/sh
echo "\$SOCAT_SOCKADDR \$SOCAT_PEERADDR" >> $MD/peers
exec cat $MD/t\$SOCAT_SOCKADDR.bin
EOF
cat > "$MD/ul.sh" <<EOF
#!/bin/sh
echo "\$SOCAT_SOCKADDR \$SOCAT_PEERADDR" >> $MD/peers
sha256sum | cut -c1-64
echo "srv=\$SOCAT_SOCKADDR peer=\$SOCAT_PEERADDR"
EOF
chmod +x "$MD/dl.sh" "$MD/ul.sh"
for a in 10.0.2.10 10.0.2.11; do
    "${MD_SRV[@]}" socat -t 30 "TCP-LISTEN:80,bind=$a,reuseaddr,fork" "EXEC:$MD/dl.sh" & MD_PIDS+=($!)
    "${MD_SRV[@]}" socat -t 30 "TCP-LISTEN:81,bind=$a,reuseaddr,fork" "EXEC:$MD/ul.sh" & MD_PIDS+=($!)
done
sleep 0.5

# md_transparent LABEL: from the client, download from and upload to both
# servers by their own addresses; check the bytes and what the servers saw.
md_transparent() {
    local label=$1 a got reply ok=0
    : > "$MD/peers"
    for a in 10.0.2.10 10.0.2.11; do
        got=$("${MD_CLI[@]}" timeout 60 socat -u "TCP:$a:80,connect-timeout=10$MD_BIND" - 2>"$MD/err" | sha256sum | cut -c1-64)
        if [ "$got" = "$(md_sha "$MD/t$a.bin")" ]; then
            ok=$((ok + 1))
        else
            echo "$label: download from $a: sha $got, not that of $a's file $(tail -n1 "$MD/err")"
        fi
        reply=$("${MD_CLI[@]}" timeout 60 socat -t 30 - "TCP:$a:81,connect-timeout=10$MD_BIND" < "$MD/up.bin" 2>"$MD/err")
        if [ "$(echo "$reply" | head -n1)" = "$(md_sha "$MD/up.bin")" ] && [ "$(echo "$reply" | sed -n 2p)" = "srv=$a peer=10.0.0.2" ]; then
            ok=$((ok + 1))
        else
            echo "$label: upload to $a: reply '$(echo "$reply" | tr '\n' ' ')' $(tail -n1 "$MD/err")"
        fi
    done
    [ $ok = 4 ] && pass "$label: client reached 10.0.2.10 and 10.0.2.11 (ports 80, 81) through the instance, byte-exact both ways" \
                || fail "$label" "$ok of 4 transfers right"
    # Split TCP: every server-side connection came from the instance.
    if [ "$(wc -l < "$MD/peers")" = 4 ] && [ "$(awk '$2 != "10.0.0.2"' "$MD/peers" | wc -l)" = 0 ]; then
        pass "$label: the servers saw the instance (10.0.0.2), not the client: $(sort "$MD/peers" | uniq -c | tr -s ' \n' ' ')"
    else
        fail "$label: server side" "peers: $(tr '\n' ';' < "$MD/peers")"
    fi
}

if out=$("$MP" spawn --name md-tp --mode transparent --listen 80 --extra rule=transparent:81 --ip 10.0.0.2/24 --gw 10.0.0.60 2>&1); then
    pass "transparent: spawned ($out)"
    md_transparent "transparent"
    sleep 1.2
    stats=$(md_stats md-tp); echo "md-tp: $stats"
    [ "$(stat_of px_accepted "$stats")" = 4 ] && pass "transparent: instance stats count the 4 connections" \
        || fail "transparent: stats" "$stats"
    # Not a proxied port: the instance is not an IP router.
    if "${MD_CLI[@]}" timeout 10 socat -u "TCP:10.0.2.10:82,connect-timeout=3$MD_BIND" - >/dev/null 2>&1; then
        fail "transparent: port 82 (no rule) was reachable through the instance"
    else
        pass "transparent: port 82 (no rule) is not forwarded"
    fi
    "$MP" stop md-tp
else
    fail "transparent: spawn" "$(echo "$out" | tail -n 8 | tr '\n' ' ')"
fi

# The shipped transparent.cfg (10.0.0.2, gw 10.0.0.60, ports 80 and 443) as written.
if md_cfg mp-transparent transparent.cfg 12; then
    pass "transparent.cfg boots as shipped"
    got=$("${MD_CLI[@]}" timeout 60 socat -u "TCP:10.0.2.11:80,connect-timeout=10$MD_BIND" - 2>/dev/null | sha256sum | cut -c1-64)
    [ "$got" = "$(md_sha "$MD/t10.0.2.11.bin")" ] && pass "transparent.cfg: download from 10.0.2.11 byte-exact" \
        || fail "transparent.cfg: download" "sha $got"
    mp_stop mp-transparent
else
    fail "transparent.cfg: not ready"
    xl_destroy mp-transparent >/dev/null 2>&1
fi

# Undo the transparent setup.
kill "${MD_PIDS[@]}" 2>/dev/null; wait "${MD_PIDS[@]}" 2>/dev/null; MD_PIDS=()
if [ $MD_NETNS = 1 ]; then
    ip netns del md-cli; ip netns del md-srv
    ip link del md-c0 2>/dev/null; ip link del md-s0 2>/dev/null
else
    ip rule add pref 0 lookup local && ip rule del pref 200 lookup local
    ip rule del pref 100 from 10.0.0.50 lookup 150
    ip route flush table 150
    for a in 10.0.0.50/24 10.0.0.60/24; do ip addr del "$a" dev xenbr0; done
    for a in 10.0.2.10/32 10.0.2.11/32; do ip addr del "$a" dev lo; done
    sysctl -qw "net.ipv4.conf.xenbr0.accept_local=${MD_ACCEPT_LOCAL:-0}"
fi
ip rule | grep -q '^0:.*lookup local' || fail "transparent: cleanup" "dom0's local rule not restored: $(ip rule | tr '\n' ';')"

# ---- a chain: client -> md-a (10.0.0.3) -> md-b (10.0.0.4) -> dom0 ----------------------
head -c 1048576 /dev/urandom > "$MD/f1m"
head -c 10485760 /dev/urandom > "$MD/f10m"
ln -sfn "$MD/f1m" "$MD/cur"   # what the download server sends (opened per connection)
socat -t 30 TCP-LISTEN:8091,bind=10.0.0.1,reuseaddr,fork OPEN:"$MD/cur",rdonly & MD_PIDS+=($!)
socat -t 30 TCP-LISTEN:8092,bind=10.0.0.1,reuseaddr,fork SYSTEM:sha256sum & MD_PIDS+=($!)
"$MP" spawn --name md-b --mode reverse --listen 80 --upstream 10.0.0.1:8091 --extra rule=reverse:81:10.0.0.1:8092 --ip 10.0.0.4/24 > "$MD/b.out" 2>&1 & pb=$!
"$MP" spawn --name md-a --mode reverse --listen 80 --upstream 10.0.0.4:80 --extra rule=reverse:81:10.0.0.4:81 --ip 10.0.0.3/24 > "$MD/a.out" 2>&1 & pa=$!
wait $pb; rb=$?; wait $pa; ra=$?
cat "$MD/a.out" "$MD/b.out"
if [ $ra = 0 ] && [ $rb = 0 ]; then
    pass "chain: md-a and md-b spawned together"
    for _ in $(seq 1 "${MD_CHAIN_N:-3}"); do
        md_t0=$(now_ms)
        timeout 120 socat -u TCP:10.0.0.3:80,connect-timeout=10 - > "$MD/chain.down" 2>"$MD/chain.err"
        ms=$(( $(now_ms) - md_t0 ))
        if cmp -s "$MD/f1m" "$MD/chain.down"; then
            pass "chain: 1 MB download through two instances byte-exact ($ms ms)"
        else
            fail "chain: download" "$(md_diff "$MD/f1m" "$MD/chain.down") after $ms ms; socat: '$(tail -n1 "$MD/chain.err")'"
            echo "md-a: $(md_stats md-a)"; echo "md-b: $(md_stats md-b)"
        fi
    done
    md_t0=$(now_ms)
    got=$(timeout 120 socat -t 60 - TCP:10.0.0.3:81,connect-timeout=10 < "$MD/f1m" 2>/dev/null | cut -c1-64)
    ms=$(( $(now_ms) - md_t0 ))
    [ "$got" = "$(md_sha "$MD/f1m")" ] && pass "chain: 1 MB upload through two instances byte-exact, reply after half-close ($ms ms)" \
        || fail "chain: upload" "server saw sha '$got'"
    sleep 1.2
    sa=$(md_stats md-a); sb=$(md_stats md-b)
    echo "md-a: $sa"; echo "md-b: $sb"
    # Each instance relayed both transfers: 1 MB each way (plus the 68-byte
    # sha256sum reply downwards).
    md_down=$(( ${MD_CHAIN_N:-3} * 1048576 + 68 ))
    if [ "$(stat_of px_bytes_down "$sa")" = $md_down ] && [ "$(stat_of px_bytes_down "$sb")" = $md_down ] \
        && [ "$(stat_of px_bytes_up "$sa")" = 1048576 ] && [ "$(stat_of px_bytes_up "$sb")" = 1048576 ]; then
        pass "chain: both instances moved the 1 MB each way (the download ${MD_CHAIN_N:-3} times)"
    else
        fail "chain: stats" "md-a: $sa / md-b: $sb"
    fi
    # Under loss: netem on both instances' vifs (dom0's side), so any segment
    # to either instance, from dom0 or from the other one, may be lost or
    # reordered. Two smoltcp stacks then face each other across lossy links
    # (md-a's upstream socket and md-b's client socket): 10 MB each way.
    modprobe sch_netem 2>/dev/null
    vifs=""
    for n in md-a md-b; do
        v="vif$(domid "$n").0"
        tc qdisc add dev "$v" root netem delay 2ms 1ms loss 1% && vifs="$vifs $v"
    done
    if [ "$(echo $vifs | wc -w)" = 2 ]; then
        ln -sfn "$MD/f10m" "$MD/cur"
        md_t0=$(now_ms)
        # Kept whole, so that a mismatch says how much arrived and where it first differs.
        timeout 300 socat -u TCP:10.0.0.3:80,connect-timeout=10 - > "$MD/chain.down" 2>"$MD/chain.err"
        ms=$(( $(now_ms) - md_t0 ))
        if cmp -s "$MD/f10m" "$MD/chain.down"; then
            pass "chain under 1% loss: 10 MB download through two instances byte-exact ($ms ms)"
        else
            fail "chain under 1% loss: download" "$(md_diff "$MD/f10m" "$MD/chain.down") after $ms ms; socat: '$(tail -n1 "$MD/chain.err")'"
        fi
        rm -f "$MD/chain.down"
        md_t0=$(now_ms)
        got=$(timeout 300 socat -t 120 - TCP:10.0.0.3:81,connect-timeout=10 < "$MD/f10m" 2>/dev/null | cut -c1-64)
        ms=$(( $(now_ms) - md_t0 ))
        [ "$got" = "$(md_sha "$MD/f10m")" ] && pass "chain under 1% loss: 10 MB upload through two instances byte-exact ($ms ms)" \
            || fail "chain under 1% loss: upload" "server saw sha '$got' after $ms ms"
        for v in $vifs; do tc -s qdisc show dev "$v" | grep -oE 'dropped [0-9]+' | sed "s/^/$v netem: /"; done
        echo "md-a: $(md_stats md-a)"; echo "md-b: $(md_stats md-b)"
    else
        fail "chain under loss: netem on the vifs" "got only '$vifs'"
    fi
    for v in $vifs; do tc qdisc del dev "$v" root 2>/dev/null; done
    ln -sfn "$MD/f1m" "$MD/cur"
else
    fail "chain: spawn" "md-a rc $ra, md-b rc $rb"
fi
"$MP" stop md-a md-b

# ---- the shipped configs: small.cfg in memory=4 with 64 concurrent connections (its max_conns), reverse.cfg
# Both: 10.0.0.2:80 -> 10.0.0.1:8080.
socat -t 60 TCP-LISTEN:8080,bind=10.0.0.1,reuseaddr,fork,backlog=128 EXEC:cat & MD_PIDS+=($!)
sleep 0.3
if md_cfg mp-small small.cfg 13; then
    pass "small.cfg (memory=4) boots as shipped"
    grep -E 'miniproxy: memory|engine: worst case' "$(console_log mp-small)"
    mkdir -p "$MD/cc"
    for i in $(seq 1 64); do head -c $((20000 + i * 97)) /dev/urandom > "$MD/cc/in.$i"; done
    md_t0=$(now_ms)
    pids=()
    for i in $(seq 1 64); do
        timeout 120 socat -t 60 - TCP:10.0.0.2:80,connect-timeout=20 < "$MD/cc/in.$i" > "$MD/cc/out.$i" 2>"$MD/cc/err.$i" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    ms=$(( $(now_ms) - md_t0 ))
    ok=0
    for i in $(seq 1 64); do
        if cmp -s "$MD/cc/in.$i" "$MD/cc/out.$i"; then ok=$((ok + 1))
        else echo "conn $i: sent $(stat -c %s "$MD/cc/in.$i") B, got $(stat -c %s "$MD/cc/out.$i") B: $(tail -n1 "$MD/cc/err.$i")"; fi
    done
    sleep 1.2
    stats=$(md_stats mp-small); echo "mp-small: $stats"
    [ $ok = 64 ] && pass "small.cfg, memory=4: 64 concurrent connections byte-exact ($ms ms)" \
                 || fail "small.cfg: 64 concurrent" "$ok of 64 byte-exact; $stats"
    [ "$(stat_of px_refused "$stats")" = 0 ] || fail "small.cfg: refused connections" "$stats"
    mp_stop mp-small
    tail -n 4 "$(console_log mp-small)"
else
    fail "small.cfg (memory=4): not ready"
    xl_destroy mp-small >/dev/null 2>&1
fi
if md_cfg mp-reverse reverse.cfg 11; then
    pass "reverse.cfg boots as shipped"
    head -c 100000 /dev/urandom > "$MD/r.in"
    timeout 60 socat -t 30 - TCP:10.0.0.2:80,connect-timeout=10 < "$MD/r.in" > "$MD/r.out" 2>/dev/null
    cmp -s "$MD/r.in" "$MD/r.out" && pass "reverse.cfg: echo byte-exact" || fail "reverse.cfg: echo" "got $(stat -c %s "$MD/r.out") B"
    mp_stop mp-reverse
else
    fail "reverse.cfg: not ready"
    xl_destroy mp-reverse >/dev/null 2>&1
fi

kill "${MD_PIDS[@]}" 2>/dev/null; wait "${MD_PIDS[@]}" 2>/dev/null
rm -rf "$MD"
summary
