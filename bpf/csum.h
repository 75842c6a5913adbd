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

/* acc folded to 32 bits: a sum for the kernel's checksum helpers (__wsum). */
static __always_inline __u32 csum_fold32(__u64 acc)
{
	acc = (acc & 0xffffffff) + (acc >> 32);
	return (acc & 0xffffffff) + (acc >> 32);
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

/*
 * Incremental updates (RFC 1624, eqn. 3) for rewritten fields: add each
 * change with csum_add_change, then csum_apply each checksum the changed
 * bytes are covered by. Sums of 32-bit words fold to the same 16-bit sum.
 */

/* acc plus the change of n bytes (a multiple of 4) from old to new. */
static __always_inline __u64 csum_add_change(__u64 acc, const void *old, const void *new, int n)
{
	const __u32 *o = old, *w = new;

#pragma unroll
	for (int i = 0; i < n / 4; i++)
		acc += (__u32)~o[i] + (__u64)w[i];
	return acc;
}

/* The checksum field *check after the changes summed in acc. */
static __always_inline void csum_apply(__u16 *check, __u64 acc)
{
	*check = csum_fold(acc + (__u16)~*check);
}

/*
 * The same for a UDP checksum: 0 means none was sent (IPv4), and stays 0;
 * a computed 0 is sent as 0xffff (RFC 768). An IPv6 UDP packet without one
 * is invalid, and is left as invalid as it came.
 */
static __always_inline void csum_apply_udp(__u16 *check, __u64 acc)
{
	if (*check == 0)
		return;
	csum_apply(check, acc);
	if (*check == 0)
		*check = 0xffff;
}

#endif
