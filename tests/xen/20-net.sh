#!/bin/bash
# netfront under Xen (issue 3): address, ping payloads of several sizes up to
# the MTU, a bounded flood, network-detach, memory=4.
. /root/lib.sh
. /root/payload/tests/xen/common.sh

if mp_create net1 6 "ip=10.0.0.2/24 gw=10.0.0.1" 00:16:3e:00:00:21; then
    pass "net1: ready in $MP_READY_MS ms"
else
    fail "net1: not ready"
fi
grep -q 'net: address 10.0.0.2/24 (static)' "$(console_log net1)" && pass "net1: got its address" || fail "net1: no address line"
test "$(xenstore-read /local/domain/$MP_ID/data/ip 2>/dev/null)" = 10.0.0.2/24 && pass "net1: data/ip" || fail "net1: data/ip"

# 1000 echo requests of four sizes up to the MTU (1472 + 28 = 1500); ping
# checks every reply's payload against the pattern it sent.
for size in 56 512 1000 1472; do
    out=$(ping -c 250 -i 0.005 -W 2 -w 40 -s $size -p a55a0ff0 10.0.0.2 2>&1)
    if echo "$out" | grep -q '250 received' && ! echo "$out" | grep -qi 'wrong data'; then
        pass "ping -s $size: 250/250 replies, payload intact"
    else
        fail "ping -s $size" "$(echo "$out" | tail -n 3 | tr '\n' ' ')"
    fi
done

# A bounded flood: whatever is lost must show up as a drop somewhere.
vif="vif$MP_ID.0"
before=$(cat /sys/class/net/$vif/statistics/tx_dropped)
out=$(ping -f -c 2000 -s 1000 -W 1 -w 90 10.0.0.2 2>&1)
after=$(cat /sys/class/net/$vif/statistics/tx_dropped)
sent=$(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
recv=$(echo "$out" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
echo "flood: $out" | tail -n 2
lost=$(( ${sent:-0} - ${recv:-0} )); dropped=$((after - before))
if [ "${sent:-0}" = 2000 ] && [ "$lost" -le "$dropped" ]; then
    pass "ping flood: $recv/2000 back, $lost lost, $dropped dropped by netback"
else
    fail "ping flood" "sent $sent, received $recv, netback dropped $dropped"
fi
echo "stats: $(mp_stats $MP_ID)"
# Stats on the console on request.
xenstore-write /local/domain/$MP_ID/data/stats-dump 1
wait_console net1 'miniproxy: vif0 nf_rx_frames=[0-9]{4,} ' 10 && pass "net1: stats on the console on request" || fail "net1: no stats after data/stats-dump"

# xl network-detach: a clean disconnect is logged; the guest keeps running.
xl network-detach net1 0 && pass "network-detach accepted" || fail "network-detach"
wait_console net1 'netfront: .*(down|closed|Closing|link down)' 10 && pass "net1: logged the disconnect" || fail "net1: no disconnect line"
sleep 1
state=$(xl list net1 2>/dev/null | awk 'NR==2 {print $5}')
case "$state" in *[rb]*) pass "net1: still running after detach ($state)" ;; *) fail "net1: state '$state' after detach" ;; esac
t0=$(now_ms); xl shutdown net1 >/dev/null 2>&1
wait_gone net1 15 && pass "net1: shuts down cleanly after detach ($(( $(now_ms) - t0 )) ms)" || { fail "net1: shutdown after detach"; xl_destroy net1; }
tail -n 8 "$(console_log net1)"

# ip=dhcp: a lease from busybox udhcpd on the bridge; without a server, a
# clear error after dhcp_timeout and a crashed domain.
cat > /tmp/udhcpd.conf <<CONF
start 10.0.0.200
end 10.0.0.210
interface xenbr0
lease_file /tmp/udhcpd.leases
option subnet 255.255.255.0
option router 10.0.0.1
CONF
touch /tmp/udhcpd.leases
busybox udhcpd -f /tmp/udhcpd.conf >/tmp/udhcpd.log 2>&1 &
UDHCPD=$!
if mp_create dh 6 "ip=dhcp dhcp_timeout=20s" 00:16:3e:00:00:25; then
    ip=$(xenstore-read /local/domain/$MP_ID/data/ip)
    case "$ip" in 10.0.0.2[01][0-9]/24) pass "dhcp: leased $ip in $MP_READY_MS ms" ;; *) fail "dhcp: data/ip is '$ip'" ;; esac
    ping -c 3 -i 0.2 "${ip%/*}" >/dev/null && pass "dhcp: reachable at ${ip%/*}" || fail "dhcp: not reachable"
else
    fail "dhcp: not ready"; tail -n 5 /tmp/udhcpd.log
fi
mp_stop dh
kill $UDHCPD 2>/dev/null; wait $UDHCPD 2>/dev/null
rm -f /tmp/udhcpd.conf /tmp/udhcpd.leases /tmp/udhcpd.log
VIFD="vif=['bridge=xenbr0,mac=00:16:3e:00:00:26,script=/etc/xen/scripts/vif-fast']"
xl_create "$MP_CFG" "kernel=\"$P/miniproxy\"" 'name="nodhcp"' 'memory=6' "$VIFD" 'extra="ip=dhcp dhcp_timeout=3s"' >/dev/null || fail "nodhcp: xl create"
wait_console nodhcp 'fatal: net: no DHCP lease within 3s' 30 && pass "no DHCP server: clear error after the timeout" || fail "no DHCP server: no error line"
xl_destroy nodhcp >/dev/null

# The small profile in memory=4.
if mp_create net4 4 "ip=10.0.0.2/24 rx_bufs=32 max_conns=16 buf=8k" 00:16:3e:00:00:24; then
    pass "net4: memory=4 ready in $MP_READY_MS ms"
    out=$(ping -c 100 -i 0.005 -w 30 -s 1472 -p 5aa5 10.0.0.2 2>&1)
    echo "$out" | grep -q '100 received' && ! echo "$out" | grep -qi 'wrong data' \
        && pass "net4: 100 full-MTU pings intact" || fail "net4: ping" "$(echo "$out" | tail -n 2 | tr '\n' ' ')"
else
    fail "net4: memory=4 not ready"
fi
mp_stop net4
