/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Tunnel DSR for xlb.c (forwarding = "ipip"), after Katran: the client's
 * packet goes to the backend inside an outer IPv4 header (IP-in-IP, protocol
 * 4) or IPv6 header (IPv6-in-IPv6, next header 41). The backend strips it
 * (`xlb decap`, or a kernel tunnel device) and answers the client directly.
 *
 * The next hop comes from the kernel's FIB (bpf_fib_lookup), so backends may
 * sit behind routers; when the FIB cannot say (no neighbour entry yet,
 * forwarding disabled on the interface), the next hop the loader resolved for
 * the backend is used. A packet that would exceed the egress MTU once
 * encapsulated is answered, as a router would, with ICMP "fragmentation
 * needed" or ICMPv6 "packet too big" built in place and sent back.
 */
#ifndef XLB_IPIP_H
#define XLB_IPIP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xlb.h"
#include "parse.h"
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
#define IPIP_TTL 64

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

enum encap_result {
	ENCAP_OK = 0,    /* encapsulated; send it on *egress */
	ENCAP_ICMP,      /* rewritten into an ICMP error to the client: XDP_TX */
	ENCAP_TOO_BIG,   /* too big, and no ICMP error may be sent: drop */
	ENCAP_NO_ROUTE,  /* the FIB says the backend is unreachable: drop */
	ENCAP_FAILED,    /* no headroom (never with the 256 bytes XDP reserves) */
};

struct next_hop {
	__u32 ifindex;
	__u32 mtu; /* the egress MTU, when too big */
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

/*
 * Finds where the outer packet described by fib goes. Returns ENCAP_OK,
 * ENCAP_TOO_BIG (nh->mtu set) or ENCAP_NO_ROUTE.
 */
static __always_inline int next_hop(struct xdp_md *ctx, struct bpf_fib_lookup *fib,
				    const struct backend *be, struct next_hop *nh)
{
	__u32 len = fib->tot_len; /* the lookup overwrites it (mtu_result) */
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);

	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		nh->ifindex = fib->ifindex;
		__builtin_memcpy(nh->dmac, fib->dmac, ETH_ALEN);
		__builtin_memcpy(nh->smac, fib->smac, ETH_ALEN);
		return ENCAP_OK;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		nh->mtu = fib->mtu_result;
		return ENCAP_TOO_BIG;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return ENCAP_NO_ROUTE;
	}
	/*
	 * No neighbour entry yet, forwarding disabled on the receiving
	 * interface (the FIB helper then refuses), or an error: the next hop
	 * the loader resolved, and that interface's MTU.
	 */
	nh->ifindex = be->ifindex;
	__builtin_memcpy(nh->dmac, be->mac, ETH_ALEN);
	__builtin_memcpy(nh->smac, be->smac, ETH_ALEN);
	__u32 mtu = len;
	if (bpf_check_mtu(ctx, be->ifindex, &mtu, 0, 0) == BPF_MTU_CHK_RET_FRAG_NEEDED) {
		nh->mtu = mtu;
		return ENCAP_TOO_BIG;
	}
	return ENCAP_OK;
}

/* The outer source: be->src with its hash bits taken from the flow's hash. */
static __always_inline void outer_source(const struct backend *be, __u32 hash, __u8 src[16])
{
	__builtin_memcpy(src, be->src, 16);
	__u32 mask = be->src_hash_mask;
	if (!mask)
		return;
	__u32 *w = (__u32 *)(src + (be->family == XLB_FAMILY_V6 ? 12 : 0));
	*w = bpf_htonl((bpf_ntohl(*w) & ~mask) | (hash & mask));
}

/*
 * Starts turning the frame into an ICMP error back to its sender: keeps quote
 * bytes of the IP packet at l2, makes room for hdr bytes of headers in front
 * of them, and writes the Ethernet header (addresses swapped, proto). Returns
 * the frame's start, hdr + quote bytes long, or NULL with *rc set.
 */
static __always_inline void *icmp_reply(struct xdp_md *ctx, __u32 l2, __u32 quote, __u32 hdr,
					__be16 proto, int *rc)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 dmac[ETH_ALEN], smac[ETH_ALEN];

	/* Quoted bytes must be in the linear part (always, but for tiny MTUs). */
	*rc = ENCAP_TOO_BIG;
	if (data + l2 + quote > end)
		return NULL;
	__builtin_memcpy(dmac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(smac, eth->h_dest, ETH_ALEN);

	*rc = ENCAP_FAILED;
	int excess = (int)bpf_xdp_get_buff_len(ctx) - (int)(l2 + quote);
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, -excess))
		return NULL;
	if (bpf_xdp_adjust_head(ctx, (int)l2 - (int)hdr))
		return NULL;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
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
 * code 4, next-hop MTU mtu - 20) from its destination (the VIP) to its
 * source, to go back where it came from.
 */
static __always_inline int icmp4_too_big(struct xdp_md *ctx, __u32 l2, __u32 mtu)
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
		.ttl = IPIP_TTL,
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
	icmp->mtu = bpf_htons(mtu - sizeof(struct iphdr));
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)icmp, sizeof(*icmp) + ICMP4_QUOTE, 0);
	icmp->checksum = csum_fold((__u32)sum);
	return ENCAP_ICMP;
}

/*
 * Turns the IPv6 packet at l2 into an ICMPv6 "packet too big" (type 2, MTU
 * mtu - 40) from its destination (the VIP) to its source.
 */
static __always_inline int icmp6_too_big(struct xdp_md *ctx, __u32 l2, __u32 mtu)
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
		.hop_limit = IPIP_TTL,
		.saddr = orig->daddr,
		.daddr = orig->saddr,
	};
	*ip6 = h;

	icmp6->icmp6_type = ICMPV6_PKT_TOOBIG;
	icmp6->icmp6_code = 0;
	icmp6->icmp6_cksum = 0;
	icmp6->icmp6_mtu = bpf_htonl(mtu - sizeof(struct ipv6hdr));
	/* The pseudo-header: both addresses, the length, the next header. */
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)&ip6->saddr, 32, 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)icmp6, plen, (__u32)sum);
	icmp6->icmp6_cksum = csum_fold((__u64)(__u32)sum + bpf_htonl(plen) + bpf_htonl(IPPROTO_ICMPV6));
	return ENCAP_ICMP;
}

/*
 * Moves the frame's start so that hdr bytes of Ethernet and outer header
 * precede the inner packet at l2 (a VLAN tag's room is reused) and writes
 * the Ethernet header toward nh. Returns the frame's start, at least hdr
 * bytes long, or NULL.
 */
static __always_inline void *push_outer(struct xdp_md *ctx, __u32 l2, __u32 hdr,
					const struct next_hop *nh, __be16 proto)
{
	if (bpf_xdp_adjust_head(ctx, (int)l2 - (int)hdr))
		return NULL;
	void *data = (void *)(long)ctx->data;
	if (data + hdr > (void *)(long)ctx->data_end)
		return NULL;
	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	eth->h_proto = proto;
	return data;
}

static __always_inline int encap4(struct xdp_md *ctx, const struct backend *be, __u32 hash,
				  __u32 l2, __u32 *egress)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *inner = data + l2;
	struct next_hop nh = {};
	const __u32 hdr = sizeof(struct ethhdr) + sizeof(struct iphdr);

	if ((void *)(inner + 1) > end)
		return ENCAP_FAILED;
	__u32 len = bpf_ntohs(inner->tot_len) + sizeof(struct iphdr);
	/* Over 64 KiB only as a generic-XDP GSO packet: too big either way. */
	__u16 fib_len = len > 0xffff ? 0xffff : len;
	__be16 df = inner->frag_off & bpf_htons(IP_DF);
	__u8 src[16];

	outer_source(be, hash, src);
	struct iphdr h = {
		.version = 4,
		.ihl = 5,
		.tos = inner->tos, /* DSCP and ECN as the client set them */
		.tot_len = bpf_htons(len),
		.frag_off = df, /* RFC 2003: DF as the inner packet's */
		.ttl = IPIP_TTL,
		.protocol = IPPROTO_IPIP,
	};
	__builtin_memcpy(&h.saddr, src, 4);
	__builtin_memcpy(&h.daddr, be->addr, 4);
	h.check = ipv4_header_csum(&h);

	struct bpf_fib_lookup fib = {
		.family = XLB_AF_INET,
		.l4_protocol = IPPROTO_IPIP,
		.tot_len = fib_len,
		.ifindex = ctx->ingress_ifindex,
		.tos = h.tos,
		.ipv4_src = h.saddr,
		.ipv4_dst = h.daddr,
	};
	int rc = next_hop(ctx, &fib, be, &nh);
	if (rc == ENCAP_TOO_BIG && df)
		return icmp4_too_big(ctx, l2, nh.mtu);
	if (rc != ENCAP_OK)
		return rc;

	struct ethhdr *eth = push_outer(ctx, l2, hdr, &nh, bpf_htons(ETH_P_IP));
	if (!eth)
		return ENCAP_FAILED;
	*(struct iphdr *)(eth + 1) = h;
	*egress = nh.ifindex;
	return ENCAP_OK;
}

static __always_inline int encap6(struct xdp_md *ctx, const struct backend *be, __u32 hash,
				  __u32 l2, __u32 *egress)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ipv6hdr *inner = data + l2;
	struct next_hop nh = {};
	const __u32 hdr = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);

	if ((void *)(inner + 1) > end)
		return ENCAP_FAILED;
	__u32 len = bpf_ntohs(inner->payload_len) + sizeof(struct ipv6hdr);
	if (len == sizeof(struct ipv6hdr)) /* past 64 KiB (see parse_ipv6) */
		len = bpf_xdp_get_buff_len(ctx) - l2;
	if (len > 0xffff) /* more than an outer payload length holds */
		return icmp6_too_big(ctx, l2, 0xffff + sizeof(struct ipv6hdr));
	__u32 outer_len = len + sizeof(struct ipv6hdr);
	/* The traffic class straddles priority and the label's first byte. */
	__u8 tclass_low = inner->flow_lbl[0] & 0xf0;
	__u32 label = hash & 0xfffff; /* per flow, for ECMP and RSS on the way */

	struct ipv6hdr h = {
		.version = 6,
		.priority = inner->priority,
		.flow_lbl = {tclass_low | (label >> 16), (label >> 8) & 0xff, label & 0xff},
		.payload_len = bpf_htons(len),
		.nexthdr = IPPROTO_IPV6,
		.hop_limit = IPIP_TTL,
	};
	outer_source(be, hash, h.saddr.in6_u.u6_addr8);
	__builtin_memcpy(&h.daddr, be->addr, 16);

	struct bpf_fib_lookup fib = {
		.family = XLB_AF_INET6,
		.l4_protocol = IPPROTO_IPV6,
		.tot_len = outer_len > 0xffff ? 0xffff : outer_len,
		.ifindex = ctx->ingress_ifindex,
	};
	__builtin_memcpy(fib.ipv6_src, &h.saddr, 16);
	__builtin_memcpy(fib.ipv6_dst, &h.daddr, 16);
	int rc = next_hop(ctx, &fib, be, &nh);
	if (rc == ENCAP_TOO_BIG)
		return icmp6_too_big(ctx, l2, nh.mtu);
	if (rc != ENCAP_OK)
		return rc;

	struct ethhdr *eth = push_outer(ctx, l2, hdr, &nh, bpf_htons(ETH_P_IPV6));
	if (!eth)
		return ENCAP_FAILED;
	*(struct ipv6hdr *)(eth + 1) = h;
	*egress = nh.ifindex;
	return ENCAP_OK;
}

/*
 * Encapsulates the frame's IP packet for backend be (hash: the flow's, for
 * the outer source and IPv6 flow label). ENCAP_OK leaves a frame to send on
 * *egress with its Ethernet addresses set; see enum encap_result.
 */
static __always_inline int encap_ipip(struct xdp_md *ctx, const struct backend *be, __u32 hash,
				      __u32 *egress)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__be16 proto;
	int l2 = parse_eth(data, end, &proto);

	if (l2 < 0)
		return ENCAP_FAILED;
	if (be->family == XLB_FAMILY_V4 && proto == bpf_htons(ETH_P_IP))
		return encap4(ctx, be, hash, l2, egress);
	if (be->family == XLB_FAMILY_V6 && proto == bpf_htons(ETH_P_IPV6))
		return encap6(ctx, be, hash, l2, egress);
	return ENCAP_FAILED;
}

#endif
