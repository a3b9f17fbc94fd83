#!/bin/bash
# 00-smoke: checks the test bed itself, before any of our code is involved:
# the Xen toolstack (xl, xenstore, xenconsoled), dom0's bridge, the versions, and one
# guest life cycle with the tiny PV guest pvhello (xl create with a vif-fast vif,
# console capture, xl destroy).
# Run: scripts/testbed-run tests/xen/00-smoke.sh
. /root/lib.sh

log "accel=$TESTBED_ACCEL; $(uname -r); $(grep MemTotal /proc/meminfo)"

# ---- toolstack -----------------------------------------------------------
xl info > /tmp/xl-info 2>&1
check "xl info" grep -q '^xen_caps .*xen-3.0-x86_64' /tmp/xl-info
grep -E '^(xen_version|xen_changeset|xen_caps|nr_cpus|total_memory|free_memory|xen_commandline) ' /tmp/xl-info
check "xl list shows Domain-0" grep -q '^Domain-0 ' <(xl list)
check "xenstore-ls" quiet xenstore-ls /
check "dom0 name in xenstore" test "$(xenstore-read /local/domain/0/name)" = Domain-0
check "xenconsoled runs" quiet pgrep -x xenconsoled

# The tools must be the hypervisor's release: xen_version 4.17.7 vs Debian's 4.17.7+13-g...
hv=$(awk '$1 == "xen_version" { print $3 }' /tmp/xl-info)
tools=$(dpkg-query -W -f='${Version}' xen-utils-4.17)
check "xen-utils $tools matches hypervisor $hv" test -n "$hv" -a "${tools#"$hv"[+-]}" != "$tools"

# ---- dom0-lib helpers on xenstore -----------------------------------------
(sleep 0.3; xenstore-write /testbed/smoke hello) &
check "wait_xs sees a key written later" wait_xs /testbed/smoke 5
wait
if wait_xs /testbed/absent 0.2; then fail "wait_xs times out" "it found a missing key"; else pass "wait_xs times out"; fi

# ---- network plumbing ----------------------------------------------------
check "xenbr0 has 10.0.0.1/24" grep -q 'inet 10.0.0.1/24' <(ip -4 addr show dev xenbr0)
check "vif-fast installed" test -x /etc/xen/scripts/vif-fast
check "payload dir is cwd" test "$(pwd)" = /root/payload

# ---- one guest life cycle --------------------------------------------------
cat > /tmp/pvhello.cfg <<'EOF'
name    = "pvhello"
type    = "pv"
kernel  = "/root/testbed/pvhello.elf"
memory  = 4
vcpus   = 1
vif     = [ 'bridge=xenbr0,mac=00:16:3e:00:00:10,script=/etc/xen/scripts/vif-fast' ]
on_crash = "preserve"
EOF
if check "xl_create pvhello" xl_create /tmp/pvhello.cfg; then
    d=$(domid pvhello)
    check "guest console line" wait_console pvhello 'PVHELLO from the testbed guest' 20
    check "vif hotplug connected" wait_xs "/local/domain/0/backend/vif/$d/0/hotplug-status" 10
    check "vif$d.0 on xenbr0" test -e "/sys/class/net/xenbr0/brif/vif$d.0"
    state=$(xl list pvhello | awk 'NR == 2 { print $5 }')   # e.g. -b----; no c(rashed)/s(hutdown)
    check "guest alive (state $state)" test -n "$state" -a -z "${state//[rb-]/}"
    check "xl_destroy pvhello" xl_destroy pvhello
    check "wait_gone pvhello" wait_gone pvhello 10
    check "vif$d.0 removed" test ! -e "/sys/class/net/vif$d.0"
fi
rm -f /tmp/xl-info /tmp/pvhello.cfg

summary || { diag; false; }
