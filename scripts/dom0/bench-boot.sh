#!/bin/bash
# Runs inside the testbed's dom0 (scripts/bench-boot puts it there): start
# the Miniproxy kernel and the floor kernel RUNS times each, interleaved,
# with the same xl config, and print one BENCH line per run (ending with the
# guest's data/boot timeline). A benchmark: it
# measures and prints, it does not pass or fail on time.
. /root/lib.sh
cd /root/payload
RUNS=${1:-3}
CFG=xl-configs/miniproxy.cfg
# memory=4 needs the small profile (xl-configs/small.cfg): the default
# profile's worst-case buffers do not fit and the engine refuses them.
VIF="vif=['bridge=xenbr0,mac=00:16:3e:00:00:20,script=/etc/xen/scripts/vif-fast']"

one() {   # one KIND KERNEL N
    local kind=$1 kernel=$2 n=$3 name="bench-$1-$3" t0 t1 create_ms ready_ms guest_us destroy_ms id rc
    t0=$(now_ms)
    xl_create "$CFG" "kernel=\"$PWD/$kernel\"" "name=\"$name\"" 'memory=4' "$VIF" \
        'extra="loglevel=warn ip=10.0.0.2/24 rx_bufs=32 max_conns=64"' 'on_poweroff="preserve"' >/dev/null || { echo "BENCHERR $kind $n: xl create failed"; return 1; }
    create_ms=$(( $(now_ms) - t0 ))
    id=$(domid "$name")
    # Poll the ready key tightly (10 ms) for a finer reading than wait_xs.
    while ! xenstore-read "/local/domain/$id/data/ready" >/dev/null 2>&1; do
        [ $(( $(now_ms) - t0 )) -gt 30000 ] && { echo "BENCHERR $kind $n: no ready key"; xl_destroy "$name" >/dev/null; return 1; }
        sleep 0.01
    done
    ready_ms=$(( $(now_ms) - t0 ))
    guest_us=$(xenstore-read "/local/domain/$id/data/ready")
    # The guest's boot timeline (KEY_us=… offsets, run/steal/blocked) comes
    # one xenstore round trip after the ready key.
    local t2 boot=''
    t2=$(now_ms)
    until boot=$(xenstore-read "/local/domain/$id/data/boot" 2>/dev/null); do
        [ $(( $(now_ms) - t2 )) -gt 5000 ] && { echo "BENCHERR $kind $n: no data/boot key"; break; }
        sleep 0.01
    done
    t1=$(now_ms)
    xl_destroy "$name" >/dev/null || { echo "BENCHERR $kind $n: xl destroy failed"; return 1; }
    destroy_ms=$(( $(now_ms) - t1 ))
    echo "BENCH kind=$kind run=$n create_ms=$create_ms ready_ms=$ready_ms guest_us=$guest_us destroy_ms=$destroy_ms $boot"
}

echo "BENCHINFO accel=${TESTBED_ACCEL:-unknown} runs=$RUNS memory=4 vif=vif-fast"
# One untimed warm-up of each, so the first measured run does not pay for
# cold caches in dom0 (xl's libraries, the kernel files).
# An alternative Miniproxy image (scripts/bench-boot --alt) runs as kind
# "alt" in every round, so A and B see the same dom0 and host load.
ALT=''
[ -f miniproxy-alt ] && ALT=miniproxy-alt
one miniproxy miniproxy 0 >/dev/null
[ -z "$ALT" ] || one alt "$ALT" 0 >/dev/null
one floor floor 0 >/dev/null
for n in $(seq 1 "$RUNS"); do
    # Which Miniproxy goes first alternates, so neither always follows the floor.
    if [ -n "$ALT" ] && [ $((n % 2)) = 0 ]; then
        one alt "$ALT" "$n"; one miniproxy miniproxy "$n"
    else
        one miniproxy miniproxy "$n"; [ -z "$ALT" ] || one alt "$ALT" "$n"
    fi
    one floor floor "$n"
done
