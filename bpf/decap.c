//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xlb decap: a TC ingress program for backends of forwarding = "ipip"
 * services. It strips the outer IPv4 or IPv6 header of IP-in-IP and
 * IPv6-in-IPv6 packets whose inner destination is one of the VIPs in
 * decap_vips, and lets the inner packet continue up the stack as if it had
 * arrived bare: no tunnel device or module needed. Everything else goes on
 * untouched.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xlb.h"
#include "decap.h"
#include "parse.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_DECAP_MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, __u8);
} decap_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_DECAP_R_MAX);
	__type(key, __u32);
	__type(value, struct counters);
} decap_stats SEC(".maps");

const enum outcome *unused_outcome __attribute__((unused));
const enum vip_limits *unused_vip_limits __attribute__((unused));

/* tcx: go on to the next program, or up the stack after the last one. */
#define TCX_NEXT TC_ACT_UNSPEC

static __always_inline int done(__u32 reason, __u32 len)
{
	struct counters *c = bpf_map_lookup_elem(&decap_stats, &reason);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
	return TCX_NEXT;
}

static __always_inline int is_vip(const void *addr, __u32 alen, __u8 family)
{
	struct vip_key key = {.family = family};

	__builtin_memcpy(key.addr, addr, alen);
	return bpf_map_lookup_elem(&decap_vips, &key) != NULL;
}

/*
 * Removes the outer header (hlen bytes right after the Ethernet header).
 * FIXED_GSO: an aggregated packet's segments keep their payload size.
 */
static __always_inline int strip(struct __sk_buff *skb, __u32 hlen)
{
	if (bpf_skb_adjust_room(skb, -(__s32)hlen, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO))
		return done(XLB_DECAP_FAILED, skb->len);
	return done(XLB_DECAP_OK, skb->len);
}

SEC("tc")
int xlb_decap(struct __sk_buff *skb)
{
	/* Ethernet, the largest outer header and the inner one's start: in
	 * the linear part (it nearly always is already). */
	const __u32 most = sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct ipv6hdr);
	__u32 want = skb->len < most ? skb->len : most;

	if ((void *)(long)skb->data + want > (void *)(long)skb->data_end)
		bpf_skb_pull_data(skb, want);

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__be16 proto;

	/* At TC ingress the kernel has already taken a VLAN tag out of the
	 * frame; a tag still in it is not for us. */
	if (parse_eth(data, end, &proto) != sizeof(struct ethhdr))
		return TCX_NEXT;
	void *l3 = data + sizeof(struct ethhdr);

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *outer = l3;

		if ((void *)(outer + 1) > end || outer->protocol != IPPROTO_IPIP)
			return TCX_NEXT;
		__u32 hlen = outer->ihl * 4;
		if (hlen < sizeof(*outer) || hlen > 60 ||
		    outer->frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return done(XLB_DECAP_UNUSABLE, skb->len);
		struct iphdr *inner = l3 + hlen;
		if ((void *)(inner + 1) > end || inner->version != 4)
			return done(XLB_DECAP_UNUSABLE, skb->len);
		if (!is_vip(&inner->daddr, 4, XLB_FAMILY_V4))
			return done(XLB_DECAP_NOT_VIP, skb->len);
		return strip(skb, hlen);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *outer = l3;

		/* xlb sends no extension headers in front of the inner packet. */
		if ((void *)(outer + 1) > end || outer->nexthdr != IPPROTO_IPV6)
			return TCX_NEXT;
		struct ipv6hdr *inner = (void *)(outer + 1);
		if ((void *)(inner + 1) > end || inner->version != 6)
			return done(XLB_DECAP_UNUSABLE, skb->len);
		if (!is_vip(&inner->daddr, 16, XLB_FAMILY_V6))
			return done(XLB_DECAP_NOT_VIP, skb->len);
		return strip(skb, sizeof(*outer));
	}
	return TCX_NEXT;
}
