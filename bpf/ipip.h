/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Tunnel DSR for xlb.c (forwarding = "ipip"), after Katran: the client's
 * packet goes to the backend inside an outer IPv4 header (IP-in-IP, protocol
 * 4) or IPv6 header (IPv6-in-IPv6, next header 41). The backend strips it
 * (`xlb decap`, or a kernel tunnel device) and answers the client directly.
 *
 * The next hop comes from the kernel's FIB, falling back to the one the
 * loader resolved for the backend (route.h). A packet that would exceed the
 * egress MTU once encapsulated is answered, as a router would, with ICMP
 * "fragmentation needed" or ICMPv6 "packet too big".
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
#include "ctx.h"
#include "csum.h"
#include "route.h"

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

/* The next hop the daemon resolved for a backend: the FIB's fallback. */
static __always_inline void backend_hop(const struct backend *be, struct next_hop *nh)
{
	nh->ifindex = be->ifindex;
	__builtin_memcpy(nh->dmac, be->mac, ETH_ALEN);
	__builtin_memcpy(nh->smac, be->smac, ETH_ALEN);
}

/*
 * Moves the frame's start so that hdr bytes of Ethernet and outer header
 * precede the inner packet at l2 (a VLAN tag's room is reused) and writes
 * the Ethernet header toward nh. Returns the frame's start, at least hdr
 * bytes long, or NULL.
 */
static __always_inline void *push_outer(xlb_ctx *ctx, __u32 l2, __u32 hdr,
					const struct next_hop *nh, __be16 proto)
{
	__u64 encap = proto == bpf_htons(ETH_P_IP) ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV6;

	if (ctx_grow(ctx, hdr - l2, encap))
		return NULL;
	void *data = ctx_data(ctx);
	if (data + hdr > ctx_end(ctx))
		return NULL;
	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	eth->h_proto = proto;
	return data;
}

static __always_inline int encap4(xlb_ctx *ctx, const struct backend *be, __u32 hash,
				  __u32 l2, __u32 *egress)
{
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	struct iphdr *inner = data + l2;
	struct next_hop nh = {};
	const __u32 hdr = sizeof(struct ethhdr) + sizeof(struct iphdr);

	if ((void *)(inner + 1) > end)
		return TX_FAILED;
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
		.ttl = XLB_TTL,
		.protocol = IPPROTO_IPIP,
	};
	__builtin_memcpy(&h.saddr, src, 4);
	__builtin_memcpy(&h.daddr, be->addr, 4);
	h.check = ipv4_header_csum(&h);

	struct bpf_fib_lookup fib = {
		.family = XLB_AF_INET,
		.l4_protocol = IPPROTO_IPIP,
		.tot_len = fib_len,
		.ifindex = ctx_ifindex(ctx),
		.tos = h.tos,
		.ipv4_src = h.saddr,
		.ipv4_dst = h.daddr,
	};
	struct next_hop fallback = {};
	backend_hop(be, &fallback);
	int rc = next_hop(ctx, &fib, &fallback, &nh);
	if (rc == TX_TOO_BIG && df)
		return icmp4_too_big(ctx, l2, nh.mtu - sizeof(struct iphdr)); /* room for the outer header */
	if (rc != TX_OK)
		return rc;

	struct ethhdr *eth = push_outer(ctx, l2, hdr, &nh, bpf_htons(ETH_P_IP));
	if (!eth)
		return TX_FAILED;
	*(struct iphdr *)(eth + 1) = h;
	*egress = nh.ifindex;
	return TX_OK;
}

static __always_inline int encap6(xlb_ctx *ctx, const struct backend *be, __u32 hash,
				  __u32 l2, __u32 *egress)
{
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	struct ipv6hdr *inner = data + l2;
	struct next_hop nh = {};
	const __u32 hdr = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);

	if ((void *)(inner + 1) > end)
		return TX_FAILED;
	__u32 len = bpf_ntohs(inner->payload_len) + sizeof(struct ipv6hdr);
	if (len == sizeof(struct ipv6hdr)) /* past 64 KiB (see parse_ipv6) */
		len = ctx_len(ctx) - l2;
	if (len > 0xffff) /* more than an outer payload length holds */
		return icmp6_too_big(ctx, l2, 0xffff);
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
		.hop_limit = XLB_TTL,
	};
	outer_source(be, hash, h.saddr.in6_u.u6_addr8);
	__builtin_memcpy(&h.daddr, be->addr, 16);

	struct bpf_fib_lookup fib = {
		.family = XLB_AF_INET6,
		.l4_protocol = IPPROTO_IPV6,
		.tot_len = outer_len > 0xffff ? 0xffff : outer_len,
		.ifindex = ctx_ifindex(ctx),
	};
	__builtin_memcpy(fib.ipv6_src, &h.saddr, 16);
	__builtin_memcpy(fib.ipv6_dst, &h.daddr, 16);
	struct next_hop fallback = {};
	backend_hop(be, &fallback);
	int rc = next_hop(ctx, &fib, &fallback, &nh);
	if (rc == TX_TOO_BIG)
		return icmp6_too_big(ctx, l2, nh.mtu - sizeof(struct ipv6hdr));
	if (rc != TX_OK)
		return rc;

	struct ethhdr *eth = push_outer(ctx, l2, hdr, &nh, bpf_htons(ETH_P_IPV6));
	if (!eth)
		return TX_FAILED;
	*(struct ipv6hdr *)(eth + 1) = h;
	*egress = nh.ifindex;
	return TX_OK;
}

/*
 * Encapsulates the frame's IP packet for backend be (hash: the flow's, for
 * the outer source and IPv6 flow label). TX_OK leaves a frame to send on
 * *egress with its Ethernet addresses set; see enum tx_result.
 */
static __always_inline int encap_ipip(xlb_ctx *ctx, const struct backend *be, __u32 hash,
				      __u32 *egress)
{
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	__be16 proto;
	int l2 = parse_eth(data, end, &proto);

	if (l2 < 0)
		return TX_FAILED;
	if (be->family == XLB_FAMILY_V4 && proto == bpf_htons(ETH_P_IP))
		return encap4(ctx, be, hash, l2, egress);
	if (be->family == XLB_FAMILY_V6 && proto == bpf_htons(ETH_P_IPV6))
		return encap6(ctx, be, hash, l2, egress);
	return TX_FAILED;
}

#endif
