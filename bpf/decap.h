/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared between the backends' tunnel decapsulation (decap.c, run by
 * `xlb decap`) and the Go loader; bpf2go generates the Go side.
 */
#ifndef XLB_DECAP_H
#define XLB_DECAP_H

#include <linux/types.h>

enum vip_limits {
	XLB_DECAP_MAX_VIPS = 1024,
};

/* A key of decap_vips: an address the backend serves through xlb. */
struct vip_key {
	__u8 addr[16]; /* IPv4 in the first 4 bytes, rest zero */
	__u8 family;   /* enum family (xlb.h) */
	__u8 pad[3];
};

/* What decap did with a tunnel packet; indexes decap_stats. Packets that
 * are not IP-in-IP or IPv6-in-IPv6 are neither touched nor counted. */
enum outcome {
	XLB_DECAP_OK = 0,        /* outer header stripped, inner packet passed up */
	XLB_DECAP_NOT_VIP = 1,   /* inner destination is no VIP: passed untouched */
	XLB_DECAP_UNUSABLE = 2,  /* outer fragment or cut inner header: passed untouched */
	XLB_DECAP_FAILED = 3,    /* the kernel refused to strip it: passed untouched */
	XLB_DECAP_R_MAX = 4,
};

#endif
