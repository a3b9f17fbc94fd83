#!/bin/bash
# dom0 keeps its vector registers while guests run beside it. Under TCG, with
# Xen's lazy FPU switching, it did not: QEMU raises no #NM for XSAVE/XRSTOR,
# so PV dom0 Linux saved a guest's registers as its own task's at a task
# switch (scripts/testbed-run, at XEN_ARGS). dom0 then computed wrong results
# or spun (sha256sum, cmp, grep, ld.so) whenever guests moved data, and never
# with dom0 alone. testbed-run boots Xen with spec-ctrl=eager-fpu under TCG;
# this test checks what that is for, and fails with TESTBED_LAZY_FPU=1 (seen
# there in 4 of 4 runs of this load, within ~2 minutes; none with eager).
#
# The load: a chain of two instances (fpu-a -> fpu-b -> dom0) relays 1 MB
# downloads for FPU_LOAD_S seconds (default 120), each compared with cmp;
# meanwhile dom0 compares two unchanged 10 MB files (cmp, sha256sum) in
# rounds of 10. The vector-heavy code (glibc's memcmp, SHA) is what broke.
. /root/lib.sh
. /root/payload/tests/xen/common.sh
MP=$P/scripts/miniproxy
FD=/tmp/fpu
rm -rf "$FD"; mkdir -p "$FD"
log "Xen's FPU switching: $(xl dmesg | grep -o 'Support for PV VMs:.*' | head -n 1)"
head -c 10485760 /dev/urandom > "$FD/a"; cp "$FD/a" "$FD/b"
ref=$(sha256sum "$FD/a" | cut -c1-64)
head -c 1048576 /dev/urandom > "$FD/f1m"
socat -t 30 TCP-LISTEN:8093,bind=10.0.0.1,reuseaddr,fork OPEN:"$FD/f1m",rdonly & fpu_srv=$!
"$MP" spawn --name fpu-b --mode reverse --listen 80 --upstream 10.0.0.1:8093 --ip 10.0.0.6/24 > "$FD/b.out" 2>&1 & pb=$!
"$MP" spawn --name fpu-a --mode reverse --listen 80 --upstream 10.0.0.6:80 --ip 10.0.0.5/24 > "$FD/a.out" 2>&1 & pa=$!
wait $pb; rb=$?; wait $pa; ra=$?
if [ $ra != 0 ] || [ $rb != 0 ]; then
    fail "dom0 fpu: spawn the chain" "fpu-a rc $ra, fpu-b rc $rb: $(cat "$FD/a.out" "$FD/b.out")"
else
    # The downloads, in the background; their count goes to a file.
    (
        end=$(( $(date +%s) + ${FPU_LOAD_S:-120} )); n=0; nb=0
        while [ "$(date +%s)" -lt $end ]; do
            timeout 60 socat -u TCP:10.0.0.5:80,connect-timeout=10 - > "$FD/got" 2>/dev/null
            n=$((n + 1)); cmp -s "$FD/got" "$FD/f1m" || nb=$((nb + 1))
        done
        echo "$nb $n" > "$FD/downloads"
    ) & fpu_load=$!
    rounds=0 wrong_cmp=0 wrong_sha=0 hung=0
    while kill -0 $fpu_load 2>/dev/null; do
        for _ in $(seq 1 10); do
            timeout 60 cmp -s "$FD/a" "$FD/b"; rc=$?
            [ $rc = 124 ] && hung=$((hung + 1))
            [ $rc = 0 ] || wrong_cmp=$((wrong_cmp + 1))
            [ "$(timeout 60 sha256sum "$FD/a" | cut -c1-64)" = "$ref" ] || wrong_sha=$((wrong_sha + 1))
        done
        rounds=$((rounds + 1))
    done
    wait $fpu_load
    read -r nb n < "$FD/downloads"
    what="$((rounds * 10)) cmp and sha256sum of an unchanged 10 MB file"
    if [ $rounds -gt 0 ] && [ $wrong_cmp = 0 ] && [ $wrong_sha = 0 ]; then
        pass "dom0 fpu: under guest traffic, $what all right"
    else
        fail "dom0 fpu: under guest traffic, $what" "cmp wrong $wrong_cmp ($hung hung 60 s), sha256sum wrong $wrong_sha"
    fi
    if [ "$n" -gt 0 ] && [ "$nb" = 0 ]; then
        pass "dom0 fpu: $n 1 MB downloads through the chain byte-exact meanwhile"
    else
        fail "dom0 fpu: downloads through the chain" "$nb of $n differ"
    fi
fi
"$MP" stop fpu-a fpu-b > /dev/null 2>&1
kill $fpu_srv 2>/dev/null; wait $fpu_srv 2>/dev/null
rm -rf "$FD"
