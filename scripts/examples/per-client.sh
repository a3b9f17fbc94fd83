#!/bin/bash
# An example of instance-per-client with the operator tool (README.md, "Operating Miniproxy"):
#
#   per-client.sh ensure CLIENT   the instance for CLIENT, spawned if it has none; prints
#                                 "ready name=pc-CLIENT ip=A.B.C.D domid=N spawned=yes|no"
#   per-client.sh reap [IDLE_S]   stops each pc-* instance that has held no connection and
#                                 accepted none for IDLE_S seconds (default 300); prints
#                                 "reaped name=… idle_s=…" per instance stopped
#
# Run `ensure` from whatever admits a client (a login hook, a DHCP or RADIUS script...) and
# `reap` from a timer. It reads the tool's --json output and the instance's stats (px_active:
# connections held now; px_accepted: connections ever accepted); CLIENT is a name-safe id
# (letters, digits, '.', '_', '-'; an IP address is fine). The guest can also end itself:
# --extra idle_exit=10m (see proxy/README.md); this script shows the dom0-side policy.
# Settings (environment): MINIPROXY (the tool, default miniproxy), PC_UPSTREAM (reverse
# target, default 10.0.0.1:8080), PC_LISTEN (80), PC_NET (first three octets of the
# instances' /24, default 10.0.0), PC_FIRST/PC_LAST (host numbers to hand out, 100..199),
# PC_MEMORY (4), PC_STATE (where idle times are kept, default /run/miniproxy-per-client).
set -uo pipefail
MINIPROXY=${MINIPROXY:-miniproxy}
UPSTREAM=${PC_UPSTREAM:-10.0.0.1:8080}
LISTEN=${PC_LISTEN:-80}
NET=${PC_NET:-10.0.0}
FIRST=${PC_FIRST:-100}
LAST=${PC_LAST:-199}
MEMORY=${PC_MEMORY:-4}
STATE=${PC_STATE:-/run/miniproxy-per-client}

die() { echo "per-client: $*" >&2; exit 1; }
# field KEY: KEY's value in the flat JSON object on stdin (the tool's keys are unique
# within a line, its names and addresses never contain quotes).
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }

# Every instance as the tool lists it, one JSON object per line.
instances() { "$MINIPROXY" list --json; }

ensure() {
    local client=$1 name="pc-$1" row ip n out rc
    case $client in ''|*[!A-Za-z0-9._-]*) die "bad client id '$client' (letters, digits, '.', '_', '-')" ;; esac
    row=$(instances | grep -F "\"name\":\"$name\"")
    if [ -n "$row" ]; then
        ip=$(echo "$row" | field ip)
        echo "ready name=$name ip=${ip%/*} domid=$(echo "$row" | field domid) spawned=no"
        return 0
    fi
    # The first free address of the pool; spawn refuses one in use (another spawn may
    # have taken it meanwhile), so try the next.
    local used; used=$(instances | field ip)
    for n in $(seq "$FIRST" "$LAST"); do
        ip=$NET.$n
        grep -qx "$ip/24" <<<"$used" && continue
        out=$("$MINIPROXY" spawn --json --name "$name" --mode reverse --listen "$LISTEN" \
            --upstream "$UPSTREAM" --ip "$ip/24" --memory "$MEMORY" 2>&1); rc=$?
        if [ $rc = 0 ]; then
            echo "ready name=$name ip=$ip domid=$(echo "$out" | field domid) spawned=yes"
            return 0
        fi
        case $out in *"is in use"*) continue ;; esac
        die "spawn $name failed (rc $rc): $out"
    done
    die "no free address in $NET.$FIRST..$NET.$LAST"
}

# reap IDLE_S: STATE/NAME holds "ACCEPTED SINCE": the px_accepted last seen and since when
# (epoch s) it has not changed with no connection held.
reap() {
    local idle=$1 now row name active accepted seen since list
    case $idle in ''|*[!0-9]*) die "bad idle time '$idle' (seconds)" ;; esac
    mkdir -p "$STATE" || die "cannot create $STATE"
    list=$(instances) || die "'$MINIPROXY list --json' failed"
    now=$(date +%s)
    while IFS= read -r row; do
        name=$(echo "$row" | field name)
        case $name in pc-*) ;; *) continue ;; esac
        active=$(echo "$row" | field px_active)
        accepted=$(echo "$row" | field px_accepted)
        # No stats yet (starting) or a connection held: not idle.
        if [ -z "$active" ] || [ -z "$accepted" ] || [ "$active" != 0 ]; then
            rm -f "$STATE/$name"
            continue
        fi
        read -r seen since 2>/dev/null < "$STATE/$name" || seen=""
        if [ "$seen" != "$accepted" ]; then
            echo "$accepted $now" > "$STATE/$name"
            since=$now
        fi
        if [ $((now - since)) -ge "$idle" ]; then
            if "$MINIPROXY" stop --json "$name" >/dev/null; then
                echo "reaped name=$name idle_s=$((now - since))"
                rm -f "$STATE/$name"
            else
                echo "per-client: stop $name failed" >&2
            fi
        fi
    done <<<"$list"
    # Forget instances that are gone (stopped elsewhere, idle_exit).
    local f
    for f in "$STATE"/pc-*; do
        [ -e "$f" ] || continue
        grep -qF "\"name\":\"${f##*/}\"" <<<"$list" || rm -f "$f"
    done
}

case ${1:-} in
ensure) [ $# = 2 ] || die "usage: per-client.sh ensure CLIENT"; ensure "$2" ;;
reap) [ $# -le 2 ] || die "usage: per-client.sh reap [IDLE_S]"; reap "${2:-300}" ;;
*) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; [ "${1:-}" = --help ] || [ "${1:-}" = -h ] ;;
esac
