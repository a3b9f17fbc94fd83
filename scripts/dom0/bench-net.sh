#!/bin/bash
# In dom0 (scripts/bench-net): how many packets and bytes netfront moves,
# measured with ICMP echo floods against one instance (each request is a
# frame in and a frame out of the guest). Prints BENCHNET lines; a benchmark,
# never pass/fail.
. /root/lib.sh
. /root/payload/tests/xen/common.sh
COUNT=${1:-3000}
mp_create bnet 6 "ip=10.0.0.2/24" 00:16:3e:00:00:61 || { echo "BENCHERR instance not ready"; exit 1; }
grep -o 'netfront: [0-9]* pages ([0-9]* KiB) for rings and buffers' "$(console_log bnet)" | sed 's/^/BENCHMEM /'
echo "BENCHMEM heap_total_kib=$(grep -o 'heap [0-9]* KiB' "$(console_log bnet)" | head -n1 | grep -o '[0-9]*')"
ping -c 20 -i 0.01 10.0.0.2 >/dev/null   # warm up ARP and caches
for size in 56 512 1472; do
    for mode in flood window; do
        t0=$(now_ms)
        if [ $mode = flood ]; then
            out=$(ping -f -c "$COUNT" -s $size -W 1 10.0.0.2 2>&1)          # one in flight
        else
            out=$(ping -f -l 32 -c "$COUNT" -s $size -W 1 10.0.0.2 2>&1)    # up to 32 in flight
        fi
        ms=$(( $(now_ms) - t0 ))
        recv=$(echo "$out" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
        echo "BENCHNET size=$size mode=$mode sent=$COUNT received=${recv:-0} ms=$ms"
    done
done
echo "BENCHSTATS $(xenstore-read /local/domain/$MP_ID/data/stats)"
mp_stop bnet
