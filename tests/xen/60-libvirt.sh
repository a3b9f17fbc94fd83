#!/bin/bash
# Miniproxy through libvirt's Xen driver (issue 14), with the libvirtd that
# dom0-init starts:
#   1. xl-configs/miniproxy.xml against xl-configs/miniproxy.cfg: virsh
#      domxml-to-native / domxml-from-native xen-xl, the settings compared.
#   2. virsh create of the XML: ready key, a transfer byte-exact, virsh list;
#      virsh shutdown drains a transfer in flight and the domain goes.
#   3. A bad command line: the guest says "config: ..." and crashes (kept).
#   4. 10 instances spawned --via libvirt by the operator tool in parallel,
#      all serving byte-exact, listed by virsh and the tool, stop --all.
#   5. Timings: spawn --via libvirt and --via xl, ready_ms and create_ms.
. /root/lib.sh
. /root/payload/tests/xen/common.sh
MP=$P/scripts/miniproxy
LV=/tmp/lv
rm -rf "$LV"; mkdir -p "$LV"
LV_PIDS=()
V="virsh -c xen:///system"
MP_XML=$P/xl-configs/miniproxy.xml
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

if ! $V uri >/dev/null 2>&1; then
    fail "libvirt: libvirtd answers on xen:///system" "$($V uri 2>&1 | head -n 2 | tr '\n' ' ')"
    tail -n 20 /var/log/libvirt/libvirtd.log 2>/dev/null
    summary
    return 1 2>/dev/null || exit 1
fi
log "virsh version"; $V version 2>&1
echo "MEASURE libvirtd_rss_kb=$(ps -o rss= -C libvirtd | head -n1 | tr -d ' ')"

# Servers on dom0's bridge address: 8080 a 640 KiB file, slowly (10 chunks of
# 64 KiB, 0.15 s apart: a transfer in flight for 1.5 s); 7000 echo.
head -c 655360 /dev/urandom > "$LV/file"
cat > "$LV/slow.sh" <<'SH'
#!/bin/bash
for i in $(seq 0 9); do dd if=/tmp/lv/file bs=65536 skip=$i count=1 2>/dev/null; sleep 0.15; done
SH
chmod +x "$LV/slow.sh"
socat -t 30 TCP-LISTEN:8080,bind=10.0.0.1,reuseaddr,fork EXEC:"$LV/slow.sh" & LV_PIDS+=($!)
socat -t 30 TCP-LISTEN:7000,bind=10.0.0.1,reuseaddr,fork,backlog=128 EXEC:cat & LV_PIDS+=($!)
sleep 0.5

# ---- 1. the XML against the xl config -------------------------------------------
# miniproxy.cfg with what the XML spells out for this dom0: the kernel's
# absolute path and the fast hotplug script.
sed -e "s|^kernel .*|kernel  = \"$P/miniproxy\"|" \
    -e "s|bridge=xenbr0,mac=00:16:3e:00:00:10|&,script=/etc/xen/scripts/vif-fast|" \
    "$P/xl-configs/miniproxy.cfg" > "$LV/miniproxy.cfg"
log "virsh domxml-to-native xen-xl xl-configs/miniproxy.xml"
$V domxml-to-native xen-xl "$MP_XML" > "$LV/native.cfg" 2>&1; rc=$?
cat "$LV/native.cfg"
log "virsh domxml-from-native xen-xl miniproxy.cfg (kernel and script as in the XML)"
$V domxml-from-native xen-xl "$LV/miniproxy.cfg" > "$LV/from.xml" 2>&1; rc2=$?
cat "$LV/from.xml"
# Every setting of the xl config, as key=value with spaces and quotes
# dropped; what libvirt writes, the same way.
norm() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/[[:space:]"]//g' -e "s/'//g" "$1" | sort; }
norm "$LV/miniproxy.cfg" > "$LV/a"; norm "$LV/native.cfg" > "$LV/b"
log "xl settings: only in miniproxy.cfg (<) / only in libvirt's conversion of miniproxy.xml (>)"
diff "$LV/a" "$LV/b" | grep '^[<>]'
# The settings that make the guest what it is must agree. libvirt writes
# no type= for a PV guest (PV is xl's default without type=/builder=), the
# command line as cmdline= (xl's other name for extra=), and the vif's
# keys in its own order.
missing=""
for k in name=miniproxy "kernel=$P/miniproxy" memory=6 vcpus=1 on_poweroff=destroy \
         on_reboot=restart on_crash=preserve; do
    grep -qxF "$k" "$LV/b" || missing="$missing $k"
done
grep -qE '^(type|builder)=' "$LV/b" && ! grep -qx 'type=pv' "$LV/b" && missing="$missing type"
cmdline=$(sed -n 's/^extra *= *"\(.*\)"/\1/p' "$LV/miniproxy.cfg")
grep -qE "^(extra|cmdline) *= *\"$cmdline\"" "$LV/native.cfg" || missing="$missing cmdline"
vif_of() { sed -n 's/^vif *= *\[ *["'"'"']\([^"'"'"']*\)["'"'"'] *\]/\1/p' "$1" | tr ',' '\n' | sort | tr '\n' ','; }
[ -n "$(vif_of "$LV/native.cfg")" ] && [ "$(vif_of "$LV/native.cfg")" = "$(vif_of "$LV/miniproxy.cfg")" ] \
    || missing="$missing vif($(vif_of "$LV/native.cfg") vs $(vif_of "$LV/miniproxy.cfg"))"
if [ $rc = 0 ] && [ $rc2 = 0 ] && [ -z "$missing" ]; then
    pass "libvirt: domxml-to-native of miniproxy.xml has every setting of miniproxy.cfg"
else
    fail "libvirt: domxml-to-native" "rc $rc / $rc2, missing or different:$missing"
fi

# ---- 2. virsh create, serve, list, shutdown drains --------------------------------
# lv_fetch OUT: download from 10.0.0.2:80 (-> the slow server) into OUT;
# then OUT.rc is socat's exit code.
lv_fetch() {
    timeout 60 socat -u "TCP:10.0.0.2:80,connect-timeout=5" "OPEN:$1,creat,trunc" 2> "$1.err"
    echo $? > "$1.rc"
}
t0=$(now_ms)
log "virsh create $MP_XML"
if $V create "$MP_XML"; then
    c_ms=$(( $(now_ms) - t0 ))
    id=$($V domid miniproxy 2>/dev/null)
    if [ -n "$id" ] && wait_xs "/local/domain/$id/data/ready" 30 >/dev/null; then
        pass "libvirt: virsh create of miniproxy.xml: ready in $(( $(now_ms) - t0 )) ms (virsh create $c_ms ms), domain $id"
        lv_fetch "$LV/got1"
        if [ "$(cat "$LV/got1.rc")" = 0 ] && cmp -s "$LV/file" "$LV/got1"; then
            pass "libvirt: 640 KiB through the proxy byte-exact"
        else
            fail "libvirt: transfer" "rc $(cat "$LV/got1.rc"), got $(stat -c %s "$LV/got1") B: $(tail -n1 "$LV/got1.err")"
        fi
        log "virsh list; xl list"
        $V list | tee "$LV/list"; xl list
        grep -qE "^ *$id +miniproxy +running" "$LV/list" \
            && pass "libvirt: virsh list shows miniproxy running" \
            || fail "libvirt: virsh list" "$(tr '\n' ' ' < "$LV/list")"
        log "virsh dumpxml miniproxy"
        $V dumpxml miniproxy
        # libvirt lists xen mouse/keyboard inputs for every PV guest; libxl
        # must not make a vkbd (or vfb) device of them: only the vif and the
        # suspend node, as with xl (the console is not under device/).
        devs=$(xenstore-list "/local/domain/$id/device" 2>/dev/null | sort | tr '\n' ' ')
        case " $devs" in
        *" vif "*) case " $devs" in
                   *" vkbd "*|*" vfb "*) fail "libvirt: guest devices" "'$devs'" ;;
                   *) pass "libvirt: no device made of libvirt's default inputs (device/: $devs)" ;;
                   esac ;;
        *) fail "libvirt: guest devices" "no vif: '$devs'" ;;
        esac
        # A transfer in flight when virsh shutdown comes: drained, complete.
        lv_fetch "$LV/got2" & c=$!
        sleep 0.4
        t1=$(now_ms)
        log "virsh shutdown miniproxy (a transfer in flight)"
        $V shutdown miniproxy
        wait "$c"
        if [ "$(cat "$LV/got2.rc")" = 0 ] && cmp -s "$LV/file" "$LV/got2"; then
            pass "libvirt: the transfer in flight at virsh shutdown completed byte-exact"
        else
            fail "libvirt: drain" "rc $(cat "$LV/got2.rc"), got $(stat -c %s "$LV/got2") B: $(tail -n1 "$LV/got2.err")"
        fi
        if wait_gone miniproxy 20 >/dev/null && [ -z "$($V list --all --name 2>/dev/null | grep -x miniproxy)" ]; then
            pass "libvirt: virsh shutdown: gone from Xen and libvirt in $(( $(now_ms) - t1 )) ms"
        else
            fail "libvirt: virsh shutdown" "still there after 20 s: $($V list --all 2>&1 | tr '\n' ' ')"
        fi
        grep -q 'miniproxy: draining 1 connections' "$(console_log miniproxy)" \
            && pass "libvirt: the console reports the drain" \
            || fail "libvirt: drain console" "$(grep -a 'drain' "$(console_log miniproxy)" | tr '\n' ' ')"
        tail -n 4 "$(console_log miniproxy)"
    else
        fail "libvirt: miniproxy.xml not ready" "domain '$id'"; tail -n 20 "$(console_log miniproxy)"
    fi
else
    fail "libvirt: virsh create of miniproxy.xml" "$(tail -n 5 /var/log/libvirt/libvirtd.log 2>/dev/null | tr '\n' ' ')"
fi
$V destroy miniproxy >/dev/null 2>&1

# ---- 3. a bad command line --------------------------------------------------------
sed -e 's|<name>miniproxy</name>|<name>lv-bad</name>|' -e 's|00:16:3e:00:00:10|00:16:3e:00:60:ee|' \
    -e 's|<cmdline>.*</cmdline>|<cmdline>ip=10.0.0.3/24 buf=16q</cmdline>|' \
    "$MP_XML" > "$LV/bad.xml"
if $V create "$LV/bad.xml" >/dev/null; then
    st=""
    for _ in $(seq 1 100); do
        st=$(xl list lv-bad 2>/dev/null | awk 'NR==2 {print $5}')
        case "$st" in *c*) break ;; esac
        sleep 0.1
    done
    if wait_console lv-bad "config: .*'buf'.*'16q'" 20 >/dev/null && [[ $st == *c* ]]; then
        pass "libvirt: a bad command line: '$(grep -a -m1 "config: .*'buf'" "$(console_log lv-bad)")', xl state $st"
    else
        fail "libvirt: bad command line" "xl state '$st': $(tail -n 3 "$(console_log lv-bad)" | tr '\n' ' ')"
    fi
    log "virsh list --all; virsh domstate --reason lv-bad (a crashed domain, preserved)"
    $V list --all; $V domstate --reason lv-bad
    $V destroy lv-bad
    wait_gone lv-bad 15 >/dev/null && pass "libvirt: virsh destroy clears the crashed domain" \
        || { fail "libvirt: virsh destroy of the crashed domain" "still there"; xl_destroy lv-bad >/dev/null; }
else
    fail "libvirt: virsh create of bad.xml" "refused by libvirt"
fi

# ---- 4. 10 instances via the operator tool, in parallel --------------------------------
log "spawning lv0..lv9 --via libvirt in parallel"
t0=$(now_ms)
pids=()
for i in $(seq 0 9); do
    "$MP" spawn --via libvirt --name "lv$i" --mode reverse --listen 80 --upstream 10.0.0.1:7000 \
        --ip "10.0.0.$((120 + i))/24" --memory 4 --timeout 120 > "$LV/spawn.$i" 2>&1 &
    pids+=($!)
done
ok=0
for i in $(seq 0 9); do
    if wait "${pids[$i]}" && grep -q "^spawned name=lv$i " "$LV/spawn.$i"; then ok=$((ok + 1))
    else echo "lv$i: $(tail -n 8 "$LV/spawn.$i" | tr '\n' ' ')"; fi
done
wall=$(( $(now_ms) - t0 ))
cat "$LV"/spawn.*
med=$(cat "$LV"/spawn.* | field ready_ms | median)
echo "MEASURE libvirt_parallel10_ready_ms_median=${med:-?} wall_ms=$wall"
if [ $ok = 10 ]; then
    pass "libvirt: 10 parallel spawns --via libvirt all ready (median $med ms, all in $wall ms)"
else
    fail "libvirt: 10 parallel spawns" "$ok of 10 ready"
    $V list --all; xl list
    echo "--- libvirtd.log:"; tail -n 30 /var/log/libvirt/libvirtd.log
    for f in /var/log/libvirt/libxl/lv*.log; do echo "--- $f:"; tail -n 6 "$f"; done
fi
ls /run/miniproxy/lv0.* 2>&1
lv_echo() {
    local f=$LV/in.$1
    head -c "$2" /dev/urandom > "$f"
    timeout 60 socat -t 30 - "TCP:$1:80,connect-timeout=10" < "$f" > "$LV/out.$1" 2> "$LV/err.$1"
    cmp -s "$f" "$LV/out.$1" || { echo "echo via $1: sent $2 B, got $(stat -c %s "$LV/out.$1") B $(tail -n1 "$LV/err.$1")"; return 1; }
}
pids=()
for i in $(seq 0 9); do lv_echo "10.0.0.$((120 + i))" $((50000 + i * 101)) & pids+=($!); done
ok=0
for p in "${pids[@]}"; do wait "$p" && ok=$((ok + 1)); done
[ $ok = 10 ] && pass "libvirt: each of the 10 serves a request byte-exact" \
             || fail "libvirt: requests to the 10" "$ok of 10 byte-exact"
log "virsh list; miniproxy list"
$V list | tee "$LV/vlist"
"$MP" list | tee "$LV/mlist"
n=$(grep -cE '^ *[0-9]+ +lv[0-9] +running' "$LV/vlist")
m=$(grep -cE '^name=lv[0-9] domid=[0-9]+ state=running ' "$LV/mlist")
[ "$n" = 10 ] && [ "$m" = 10 ] && pass "libvirt: virsh list and miniproxy list show the 10 running" \
    || fail "libvirt: lists" "virsh $n, miniproxy $m of 10"
t0=$(now_ms)
"$MP" stop --all > "$LV/stop" 2>&1; rc=$?
ms=$(( $(now_ms) - t0 ))
cat "$LV/stop"
left=$(xl list 2>/dev/null | awk 'NR > 1 && $1 ~ /^lv[0-9]$/' | wc -l)
vleft=$($V list --all --name 2>/dev/null | grep -c '^lv[0-9]$')
if [ $rc = 0 ] && [ "$(grep -c '^stopped name=lv[0-9] .*how=shutdown' "$LV/stop")" = 10 ] && [ "$left" = 0 ] && [ "$vleft" = 0 ]; then
    pass "libvirt: stop --all shut the 10 down through virsh in $ms ms; none left in Xen or libvirt"
else
    fail "libvirt: stop --all" "rc $rc, $left left in Xen, $vleft in libvirt: $(grep -v 'how=shutdown' "$LV/stop" | head -n 3 | tr '\n' ' ')"
fi
echo "MEASURE libvirt_stop_all10_ms=$ms"

# ---- 5. timings: virsh create -> ready against xl create -> ready ----------------------
for r in 1 2 3 4 5; do
    for via in libvirt xl; do
        out=$("$MP" spawn --via $via --name "lt-$via" --mode reverse --listen 80 --upstream 10.0.0.1:7000 \
            --ip 10.0.0.140/24 --memory 4 2>&1) && echo "$out" >> "$LV/t.$via" || echo "lt-$via: $out"
        "$MP" stop "lt-$via" >/dev/null 2>&1
    done
done
for via in libvirt xl; do
    n=$(grep -c '^spawned' "$LV/t.$via" 2>/dev/null)
    echo "MEASURE spawn_via_${via}_ready_ms_median=$(field ready_ms < "$LV/t.$via" | median) create_ms_median=$(field create_ms < "$LV/t.$via" | median) runs=$n ready_ms=[$(field ready_ms < "$LV/t.$via" | tr '\n' ' ')]"
    [ "$n" = 5 ] && pass "libvirt: 5 spawns --via $via for timing" || fail "libvirt: timing spawns --via $via" "$n of 5"
done

# ---- clean up -----------------------------------------------------------------------
"$MP" stop --all >/dev/null 2>&1
for d in miniproxy lv-bad lt-libvirt lt-xl $(seq -f 'lv%g' 0 9); do
    $V destroy "$d" >/dev/null 2>&1
    domid "$d" >/dev/null 2>&1 && xl_destroy "$d" >/dev/null
done
kill "${LV_PIDS[@]}" 2>/dev/null; wait "${LV_PIDS[@]}" 2>/dev/null
rm -rf "$LV"
summary
