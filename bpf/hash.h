/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xlb hash v1, which the Go side repeats (package maglev): Maglev slots,
 * the VIP filter and ipip outer sources all depend on both computing the
 * same value.
 */
#ifndef XLB_HASH_H
#define XLB_HASH_H

#include <linux/types.h>

#include "xlb.h"

/* xlb hash v1: murmur3_x86_32 over 32-bit words read little-endian. */
static __always_inline __u32 rotl32(__u32 x, __u32 r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 le32(__u32 w)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	return __builtin_bswap32(w);
#else
	return w;
#endif
}

static __always_inline __u32 murmur_round(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 murmur_final(__u32 h, __u32 len)
{
	h ^= len;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 hash_addr(__u32 h, const __u8 *addr, __u8 family)
{
	const __u32 *w = (const __u32 *)addr;

	h = murmur_round(h, le32(w[0]));
	if (family == XLB_FAMILY_V6) {
		h = murmur_round(h, le32(w[1]));
		h = murmur_round(h, le32(w[2]));
		h = murmur_round(h, le32(w[3]));
	}
	return h;
}

static __always_inline __u32 flow_hash(const struct flow_key *f, __u8 mode)
{
	__u32 alen = f->family == XLB_FAMILY_V6 ? 16 : 4;
	__u32 h = hash_addr(XLB_HASH_SEED, f->src, f->family);

	if (mode == XLB_HASH_IP)
		return murmur_final(h, alen);

	h = hash_addr(h, f->dst, f->family);
	/* The ports as on the wire (big endian), read as a little-endian word. */
	__u32 ports = __builtin_bswap16(f->sport) | (__u32)__builtin_bswap16(f->dport) << 16;
	h = murmur_round(h, ports);
	h = murmur_round(h, f->proto);
	return murmur_final(h, 2 * alen + 8);
}

#endif
