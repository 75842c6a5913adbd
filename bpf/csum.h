/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Internet checksums (RFC 1071) of the headers xlb's programs write. Sums
 * are of 16-bit words as loaded in host order, so the folded result is stored
 * as is, whatever the byte order.
 */
#ifndef XLB_CSUM_H
#define XLB_CSUM_H

#include <linux/types.h>
#include <linux/ip.h>

/* One's complement of the folded sum: what goes into a checksum field. */
static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* The header checksum of an option-less IPv4 header whose check field is 0. */
static __always_inline __u16 ipv4_header_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	return csum_fold(sum);
}

#endif
