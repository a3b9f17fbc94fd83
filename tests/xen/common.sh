# Helpers shared by the Miniproxy Xen tests (sourced; needs /root/lib.sh).
P=/root/payload
MP_CFG=$P/xl-configs/miniproxy.cfg

# The guest's data/stats is one line of key=value tokens, keys prefixed by
# their source (px_ proxy engine, nf_ netfront, cpu_ profile, xen_ platform;
# README.md, "The stats line"). These two are the only way the tests read it.
# mp_stats DOMID: the line.
mp_stats() { xenstore-read "/local/domain/$1/data/stats" 2>/dev/null; }
# stat_of KEY [LINE]: KEY's value in LINE (default: stdin); fails if absent.
stat_of() {
    local key=$1 line t
    if [ $# -gt 1 ]; then line=$2; else IFS= read -r line; fi
    for t in $line; do [ "${t%%=*}" = "$key" ] && { echo "${t#*=}"; return 0; }; done
    return 1
}

# mp_create NAME MEMORY_MB EXTRA [MAC]: start an instance from the shipped
# config with a vif on xenbr0 (fast hotplug script) and wait for its ready key.
# Sets MP_ID and MP_READY_MS.
mp_create() {
    local name=$1 mem=$2 extra=$3 mac=${4:-00:16:3e:00:01:$(printf %02x $((RANDOM % 250)))}
    MP_ID=""; MP_READY_MS=""
    local t0; t0=$(now_ms)
    xl_create "$MP_CFG" "kernel=\"$P/miniproxy\"" "name=\"$name\"" "memory=$mem" \
        "vif=['bridge=xenbr0,mac=$mac,script=/etc/xen/scripts/vif-fast']" "extra=\"$extra\"" >/dev/null || return 1
    MP_ID=$(domid "$name") || return 1
    wait_xs "/local/domain/$MP_ID/data/ready" 30 >/dev/null || { tail -n 20 "$(console_log "$name")"; return 1; }
    MP_READY_MS=$(( $(now_ms) - t0 ))
}

# mp_stop NAME: xl shutdown and wait; destroy if it does not go.
mp_stop() {
    xl shutdown "$1" >/dev/null 2>&1
    wait_gone "$1" 15 >/dev/null || xl_destroy "$1" >/dev/null
}
