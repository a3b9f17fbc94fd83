#!/usr/bin/env bash
# Recompute the netif.h / ring.h numbers netfront's wire.rs relies on, from the
# real Xen public headers (Debian's libxen-dev), and compare them with the
# values the Rust code asserts. Needs gcc.
#
#   bash netfront/tools/check-layout.sh INCLUDE_DIR   # e.g. build/testbed/ext/libxen-dev/usr/include
#   bash netfront/tools/check-layout.sh               # /usr/include, else apt-get download libxen-dev
#
# INCLUDE_DIR must hold xen/io/netif.h; given one, the script uses nothing
# else (no network). Exit status: 0 layout matches, 1 mismatch, 2 cannot
# check (no headers, no gcc, bad arguments). Prints "layout: OK" or
# "layout: MISMATCH" (with a diff) last.
set -euo pipefail
die() { echo "check-layout: $*" >&2; exit 2; }
[ $# -le 1 ] || die "usage: $0 [INCLUDE_DIR]"
command -v gcc >/dev/null || die "gcc not found"
inc=
if [ $# -eq 1 ]; then
    [ -f "$1/xen/io/netif.h" ] || die "no xen/io/netif.h under $1"
    inc=$(cd "$1" && pwd)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if [ -n "$inc" ]; then
    :
elif [ -f /usr/include/xen/io/netif.h ]; then
    inc=/usr/include
else
    { apt-get download libxen-dev >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download libxen-dev >/dev/null; }; } ||
        die "no Xen headers: pass INCLUDE_DIR or install libxen-dev"
    dpkg -x libxen-dev_*.deb root
    inc=$work/root/usr/include
fi
cat > layout.c <<'C'
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/netif.h>
#include <xen/io/xenbus.h>
int main(void) {
    printf("ring_header %zu\n", offsetof(struct netif_tx_sring, ring));
    printf("req_prod %zu\nreq_event %zu\nrsp_prod %zu\nrsp_event %zu\n",
           offsetof(struct netif_tx_sring, req_prod), offsetof(struct netif_tx_sring, req_event),
           offsetof(struct netif_tx_sring, rsp_prod), offsetof(struct netif_tx_sring, rsp_event));
    printf("tx_request %zu\ntx_response %zu\ntx_slot %zu\n", sizeof(struct netif_tx_request),
           sizeof(struct netif_tx_response), sizeof(union netif_tx_sring_entry));
    printf("tx_req_offsets %zu,%zu,%zu,%zu,%zu\n", offsetof(struct netif_tx_request, gref),
           offsetof(struct netif_tx_request, offset), offsetof(struct netif_tx_request, flags),
           offsetof(struct netif_tx_request, id), offsetof(struct netif_tx_request, size));
    printf("tx_rsp_offsets %zu,%zu\n", offsetof(struct netif_tx_response, id), offsetof(struct netif_tx_response, status));
    printf("rx_request %zu\nrx_response %zu\nrx_slot %zu\n", sizeof(struct netif_rx_request),
           sizeof(struct netif_rx_response), sizeof(union netif_rx_sring_entry));
    printf("rx_req_offsets %zu,%zu\n", offsetof(struct netif_rx_request, id), offsetof(struct netif_rx_request, gref));
    printf("rx_rsp_offsets %zu,%zu,%zu,%zu\n", offsetof(struct netif_rx_response, id),
           offsetof(struct netif_rx_response, offset), offsetof(struct netif_rx_response, flags),
           offsetof(struct netif_rx_response, status));
    printf("extra_info %zu\n", sizeof(struct netif_extra_info));
    printf("extra_info_u %zu,%zu\n", offsetof(struct netif_extra_info, u),
           sizeof(((struct netif_extra_info *)0)->u));
    printf("extra_gso %zu,%zu,%zu,%zu\n", offsetof(struct netif_extra_info, u.gso.size),
           offsetof(struct netif_extra_info, u.gso.type), offsetof(struct netif_extra_info, u.gso.pad),
           offsetof(struct netif_extra_info, u.gso.features));
    printf("extra_consts %d,%d,%d\n", XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_GSO_TYPE_TCPV4,
           XEN_NETIF_EXTRA_FLAG_MORE);
    printf("slots_min %d\nmax_tx_size %d\n", XEN_NETIF_NR_SLOTS_MIN, XEN_NETIF_MAX_TX_SIZE);
    printf("tx_ring_size %lu\nrx_ring_size %lu\n", (unsigned long)__CONST_RING_SIZE(netif_tx, 4096),
           (unsigned long)__CONST_RING_SIZE(netif_rx, 4096));
    printf("flags_rx %u,%u,%u,%u,%u\n", NETRXF_data_validated, NETRXF_csum_blank, NETRXF_more_data,
           NETRXF_extra_info, NETRXF_gso_prefix);
    printf("flags_tx %u,%u,%u,%u\n", NETTXF_csum_blank, NETTXF_data_validated, NETTXF_more_data, NETTXF_extra_info);
    printf("rsp %d,%d,%d,%d\n", NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETIF_RSP_NULL);
    printf("states %d,%d,%d,%d\n", XenbusStateInitWait, XenbusStateConnected, XenbusStateClosing, XenbusStateClosed);
    return 0;
}
C
gcc -I"$inc" layout.c -o layout || die "layout.c does not compile against $inc"
./layout > got.txt
# What netfront/src/wire.rs (and xenbus.rs) assert.
cat > want.txt <<'W'
ring_header 64
req_prod 0
req_event 4
rsp_prod 8
rsp_event 12
tx_request 12
tx_response 4
tx_slot 12
tx_req_offsets 0,4,6,8,10
tx_rsp_offsets 0,2
rx_request 8
rx_response 8
rx_slot 8
rx_req_offsets 0,4
rx_rsp_offsets 0,2,4,6
extra_info 8
extra_info_u 2,6
extra_gso 2,4,5,6
extra_consts 1,1,1
slots_min 18
max_tx_size 65535
tx_ring_size 256
rx_ring_size 256
flags_rx 1,2,4,8,16
flags_tx 1,2,4,8
rsp -2,-1,0,1
states 2,4,5,6
W
cat got.txt
if diff -u want.txt got.txt; then echo "layout: OK, matches netfront/src/wire.rs"; else echo "layout: MISMATCH"; exit 1; fi
