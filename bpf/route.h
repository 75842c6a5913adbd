/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Where a packet xlb rewrote goes next, for the programs that rewrite
 * addresses (ipip.h, nat.h): the next hop from the kernel's FIB
 * (bpf_fib_lookup), so destinations may sit behind routers, with a fallback
 * when the FIB cannot say; and, when the packet is too big for that hop,
 * the ICMP "fragmentation needed" / ICMPv6 "packet too big" a router would
 * send, built in place and sent back to the packet's source.
 */
#ifndef XLB_ROUTE_H
#define XLB_ROUTE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xlb.h"
#include "ctx.h"
#include "csum.h"

/* linux/icmp.h pulls in libc headers BPF cannot build with. */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4
struct icmp_frag_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 unused;
	__be16 mtu; /* next-hop MTU (RFC 1191) */
};

#define XLB_AF_INET 2
#define XLB_AF_INET6 10
#define XLB_TTL 64 /* of the headers xlb writes */

/*
 * Bytes of the offending packet an ICMP error quotes, from its IP header on:
 * fixed, so the checksum is one helper call over a constant length. Packets
 * too big for any MTU IPv4 (576) or IPv6 (1280) must carry are longer. 128
 * covers an IPv4 header with options and the transport ports and sequence
 * number (RFC 792 asks for 8 bytes past the header); 256 leaves IPv6 room
 * for extension headers.
 */
#define ICMP4_QUOTE 128
#define ICMP6_QUOTE 256

/* What became of a packet xlb rewrote to send on (ipip.h, nat.h). */
enum tx_result {
	TX_OK = 0,    /* rewritten; send it on *egress */
	TX_ICMP,      /* rewritten into an ICMP error to its sender: back out (XDP_TX) */
	TX_TOO_BIG,   /* too big, and no ICMP error may be sent: drop */
	TX_NO_ROUTE,  /* the FIB says the destination is unreachable: drop */
	TX_FAILED,    /* no headroom (never with the 256 bytes XDP reserves); TC: the skb refused */
	TX_NO_PORT,   /* nat: no source port free, or a NAT table full: drop */
	TX_ICMP_LIMITED, /* an ICMP error was due, but the budget is spent: drop */
	TX_TRUNCATED, /* nat: the transport header is out of reach: drop */
	TX_VLAN,      /* nat: a VLAN-tagged client packet: drop */
};

/*
 * This CPU's budget of ICMP errors: a token bucket, so that packets sent to
 * provoke errors (from forged sources: reflection) get a bounded answer.
 */
struct icmp_budget {
	__u64 last_ns;
	__u64 tokens;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct icmp_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* every map is: tools open them all */
} icmp_budget SEC(".maps");

/* Takes one ICMP error from this CPU's budget; 0 when it is spent. */
static __always_inline int icmp_allowed(void)
{
	__u32 zero = 0;
	struct icmp_budget *b = bpf_map_lookup_elem(&icmp_budget, &zero);
	__u64 now = bpf_ktime_get_ns();

	if (!b)
		return 0;
	__u64 tokens = b->tokens + ((now - b->last_ns) >> XLB_ICMP_REFILL_SHIFT);
	if (tokens > XLB_ICMP_BURST)
		tokens = XLB_ICMP_BURST;
	if (tokens > b->tokens) /* whole tokens only: keep the remainder */
		b->last_ns = now;
	if (!tokens)
		return 0;
	b->tokens = tokens - 1;
	return 1;
}

struct next_hop {
	__u32 ifindex;
	__u32 mtu; /* the egress MTU, when too big */
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

/*
 * A GSO packet (TC) goes out as segments: TX_OK when they fit nh's MTU,
 * else TX_TOO_BIG with nh->mtu set. Encapsulation keeps their size (it
 * shrinks their payload, see ctx_grow).
 */
static __always_inline int segments_fit(xlb_ctx *ctx, struct next_hop *nh)
{
	__u32 mtu = 0;

	if (ctx_segments_fit(ctx, nh->ifindex, &mtu))
		return TX_OK;
	nh->mtu = mtu;
	return TX_TOO_BIG;
}

/*
 * Finds where the packet described by fib goes. Returns TX_OK, TX_TOO_BIG
 * (nh->mtu set) or TX_NO_ROUTE. When the FIB cannot say, the next hop is
 * fallback (the daemon's resolution, or where a flow's packets came from).
 */
static __always_inline int next_hop(xlb_ctx *ctx, struct bpf_fib_lookup *fib,
				    const struct next_hop *fallback, struct next_hop *nh)
{
	__u32 len = fib->tot_len; /* the lookup overwrites it (mtu_result) */

	if (ctx_gso(ctx))
		fib->tot_len = 0; /* no MTU check of the whole: segments_fit */
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);

	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		nh->ifindex = fib->ifindex;
		__builtin_memcpy(nh->dmac, fib->dmac, ETH_ALEN);
		__builtin_memcpy(nh->smac, fib->smac, ETH_ALEN);
		if (ctx_gso(ctx))
			return segments_fit(ctx, nh);
		return TX_OK;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		nh->mtu = fib->mtu_result;
		return TX_TOO_BIG;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return TX_NO_ROUTE;
	}
	/*
	 * No neighbour entry yet, forwarding disabled on the receiving
	 * interface (the FIB helper then refuses), or an error: the fallback,
	 * and that interface's MTU.
	 */
	*nh = *fallback;
	if (ctx_gso(ctx))
		return segments_fit(ctx, nh);
	__u32 mtu = len;
	if (bpf_check_mtu(ctx, nh->ifindex, &mtu, 0, 0) == BPF_MTU_CHK_RET_FRAG_NEEDED) {
		nh->mtu = mtu;
		return TX_TOO_BIG;
	}
	return TX_OK;
}

/*
 * Starts turning the frame into an ICMP error back to its sender: keeps quote
 * bytes of the IP packet at l2, makes room for hdr bytes of headers in front
 * of them, and writes the Ethernet header (addresses swapped, proto). Returns
 * the frame's start, hdr + quote bytes long, or NULL with *rc set.
 */
static __always_inline void *icmp_reply(xlb_ctx *ctx, __u32 l2, __u32 quote, __u32 hdr,
					__be16 proto, int *rc)
{
	ctx_pull(ctx, l2 + quote);
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	struct ethhdr *eth = data;
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];

	*rc = TX_ICMP_LIMITED;
	if (!icmp_allowed())
		return NULL;
	/* Quoted bytes must be in the linear part (always, but for tiny MTUs). */
	*rc = TX_TOO_BIG;
	if (data + l2 + quote > end || (void *)(eth + 1) > end)
		return NULL;
	__builtin_memcpy(dmac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_dest, ETH_ALEN);

	*rc = TX_FAILED;
	if (ctx_cut(ctx, l2 + quote))
		return NULL;
	if (ctx_grow(ctx, hdr - l2, 0))
		return NULL;
	data = ctx_data(ctx);
	end = ctx_end(ctx);
	if (data + hdr + quote > end)
		return NULL;
	eth = data;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = proto;
	return data;
}

/*
 * Turns the IPv4 packet at l2 into an ICMP "fragmentation needed" (type 3
 * code 4, next-hop MTU mtu: the largest packet its source may send, less
 * any header the caller adds on the way) from its destination (the VIP) to
 * its source, to go back where it came from.
 */
static __always_inline int icmp4_too_big(xlb_ctx *ctx, __u32 l2, __u32 mtu)
{
	const __u32 hdr = sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct icmp_frag_hdr);
	int rc;
	struct ethhdr *eth = icmp_reply(ctx, l2, ICMP4_QUOTE, hdr, bpf_htons(ETH_P_IP), &rc);

	if (!eth)
		return rc;
	struct iphdr *ip = (void *)(eth + 1);
	struct icmp_frag_hdr *icmp = (void *)(ip + 1);
	struct iphdr *orig = (void *)(icmp + 1);

	struct iphdr h = {
		.version = 4,
		.ihl = 5,
		.tos = 0xc0, /* precedence "internetwork control", as Linux sends errors */
		.tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct icmp_frag_hdr) + ICMP4_QUOTE),
		.ttl = XLB_TTL,
		.protocol = IPPROTO_ICMP,
		.saddr = orig->daddr,
		.daddr = orig->saddr,
	};
	h.check = ipv4_header_csum(&h);
	*ip = h;

	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->unused = 0;
	icmp->mtu = bpf_htons(mtu);
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)icmp, sizeof(*icmp) + ICMP4_QUOTE, 0);
	icmp->checksum = csum_fold((__u32)sum);
	return TX_ICMP;
}

/*
 * Turns the IPv6 packet at l2 into an ICMPv6 "packet too big" (type 2, MTU
 * mtu, as for icmp4_too_big) from its destination (the VIP) to its source.
 */
static __always_inline int icmp6_too_big(xlb_ctx *ctx, __u32 l2, __u32 mtu)
{
	const __u32 hdr = sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr);
	const __u32 plen = sizeof(struct icmp6hdr) + ICMP6_QUOTE;
	int rc;
	struct ethhdr *eth = icmp_reply(ctx, l2, ICMP6_QUOTE, hdr, bpf_htons(ETH_P_IPV6), &rc);

	if (!eth)
		return rc;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct icmp6hdr *icmp6 = (void *)(ip6 + 1);
	struct ipv6hdr *orig = (void *)(icmp6 + 1);

	struct ipv6hdr h = {
		.version = 6,
		.payload_len = bpf_htons(plen),
		.nexthdr = IPPROTO_ICMPV6,
		.hop_limit = XLB_TTL,
		.saddr = orig->daddr,
		.daddr = orig->saddr,
	};
	*ip6 = h;

	icmp6->icmp6_type = ICMPV6_PKT_TOOBIG;
	icmp6->icmp6_code = 0;
	icmp6->icmp6_cksum = 0;
	icmp6->icmp6_mtu = bpf_htonl(mtu);
	/* The pseudo-header: both addresses, the length, the next header. */
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)&ip6->saddr, 32, 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)icmp6, plen, (__u32)sum);
	icmp6->icmp6_cksum = csum_fold((__u64)(__u32)sum + bpf_htonl(plen) + bpf_htonl(IPPROTO_ICMPV6));
	return TX_ICMP;
}

#endif
