/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Parsing of a frame into what steering decides on (struct packet): the
 * flow's addresses, ports and protocol, the TCP state a segment shows,
 * fragments, truncation, and where each header starts.
 */
#ifndef XLB_PACKET_H
#define XLB_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xlb.h"
#include "ctx.h"
#include "parse.h"

#define IPV6_FRAG_OFFSET 0xfff8
#define IPV6_FRAG_MF 0x0001
#define IPV6_MAX_EXT_HEADERS 6

struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* The parsed packet: what the steering decision needs. */
struct packet {
	struct flow_key flow;
	__u64 len;
	__u32 ip_len;    /* the IP packet's length, header included */
	__u16 l3;        /* offset of the IP header in the frame */
	__u16 l4;        /* offset of the transport (or ICMP) header */
	__u8 flow_flags; /* enum flow_flags this TCP packet shows */
	__u8 syn;        /* a TCP SYN without ACK: a connection's first packet */
	__u8 fragment;  /* any fragment */
	__u8 later_fragment; /* no transport header in this packet */
	__u8 l4_truncated;
	__u8 df;         /* IPv4 "don't fragment" */
	/* the transport header starts past XLB_MAX_L4_OFFSET (IPv6 extension
	 * headers): NAT cannot rewrite it */
	__u8 l4_far;
};

/*
 * Reads the transport ports; returns 0 if the header is complete. room is
 * what the IP header says follows it: a header that fits the frame only
 * thanks to Ethernet padding, or a TCP header longer than room, is cut.
 */
static __always_inline int parse_l4(struct packet *p, void *l4, void *end, __s64 room)
{
	if (p->flow.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > end || tcp->doff < 5 || (__s64)tcp->doff * 4 > room)
			return -1;
		p->flow.sport = bpf_ntohs(tcp->source);
		p->flow.dport = bpf_ntohs(tcp->dest);
		__u8 fl = ((__u8 *)tcp)[13];
		if (fl & (TCP_FLAG_FIN | TCP_FLAG_RST))
			p->flow_flags = XLB_FLOW_CLOSING;
		else if ((fl & (TCP_FLAG_ACK | TCP_FLAG_SYN)) == TCP_FLAG_ACK)
			p->flow_flags = XLB_FLOW_ESTABLISHED;
		p->syn = (fl & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
		return 0;
	}
	struct udphdr *udp = l4;

	if ((void *)(udp + 1) > end || room < (__s64)sizeof(*udp))
		return -1;
	p->flow.sport = bpf_ntohs(udp->source);
	p->flow.dport = bpf_ntohs(udp->dest);
	return 0;
}

/*
 * Does the IP header claim more bytes (len, counted from l3) than the frame
 * holds? Padding makes a frame longer than its packet, never shorter. Only a
 * multi-buffer frame's linear part ends before its packet does, so the helper
 * that measures the whole frame is called only then.
 */
static __always_inline int longer_than_frame(xlb_ctx *ctx, void *l3, void *end, __u32 len)
{
	if (len <= (__u64)(end - l3))
		return 0;
	return (__u64)(l3 - ctx_data(ctx)) + len > ctx_len(ctx);
}

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP,
	PARSE_MALFORMED,
	PARSE_OTHER_PROTO,
};

static __always_inline int parse_ipv4(xlb_ctx *ctx, struct packet *p, void *data, void *end)
{
	struct iphdr *ip = data;

	if ((void *)(ip + 1) > end)
		return PARSE_MALFORMED;
	__u32 hlen = ip->ihl * 4;
	__u32 tot = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || hlen < sizeof(*ip) || tot < hlen)
		return PARSE_MALFORMED;
	if (data + hlen > end || longer_than_frame(ctx, data, end, tot))
		return PARSE_MALFORMED;

	p->flow.family = XLB_FAMILY_V4;
	p->flow.proto = ip->protocol;
	p->ip_len = tot;
	p->l4 = p->l3 + hlen;
	p->df = !!(ip->frag_off & bpf_htons(IP_DF));
	__builtin_memcpy(p->flow.src, &ip->saddr, 4);
	__builtin_memcpy(p->flow.dst, &ip->daddr, 4);
	/* Before the protocol: an ICMP fragment is no ICMP error to read. */
	__u16 frag = bpf_ntohs(ip->frag_off);
	if (frag & (IP_MF | IP_OFFSET)) {
		p->fragment = 1;
		p->later_fragment = !!(frag & IP_OFFSET);
	}
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return PARSE_OTHER_PROTO;
	if (p->later_fragment)
		return PARSE_OK;
	if (parse_l4(p, data + hlen, end, tot - hlen))
		p->l4_truncated = 1;
	return PARSE_OK;
}

/* l2: the offset of data (the IPv6 header) in the frame. */
static __always_inline int parse_ipv6(xlb_ctx *ctx, struct packet *p, void *data, void *end, __u32 l2)
{
	struct ipv6hdr *ip6 = data;

	if ((void *)(ip6 + 1) > end)
		return PARSE_MALFORMED;
	__u32 len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	/*
	 * Payload length 0: a packet past 64 KiB, which the frame measures.
	 * Generic XDP sees GRO-built BIG TCP packets, which carry no jumbo
	 * option; jumbograms carry one.
	 */
	if (len == sizeof(*ip6))
		len = ctx_len(ctx) - l2;
	if (ip6->version != 6 || longer_than_frame(ctx, data, end, len))
		return PARSE_MALFORMED;

	p->flow.family = XLB_FAMILY_V6;
	p->ip_len = len;
	__builtin_memcpy(p->flow.src, &ip6->saddr, 16);
	__builtin_memcpy(p->flow.dst, &ip6->daddr, 16);

	__u8 next = ip6->nexthdr;
	void *cur = ip6 + 1;

#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS: {
			struct ipv6_opt_hdr *opt = cur;

			if ((void *)(opt + 1) > end)
				goto truncated;
			next = opt->nexthdr;
			cur += (opt->hdrlen + 1) * 8;
			break;
		}
		case IPPROTO_AH: {
			struct ipv6_opt_hdr *opt = cur;

			if ((void *)(opt + 1) > end)
				goto truncated;
			next = opt->nexthdr;
			cur += (opt->hdrlen + 2) * 4;
			break;
		}
		case IPPROTO_FRAGMENT: {
			struct ipv6_frag_hdr *fh = cur;

			if ((void *)(fh + 1) > end)
				goto truncated;
			next = fh->nexthdr;
			cur = fh + 1;
			__u16 off = bpf_ntohs(fh->frag_off);
			if (off & (IPV6_FRAG_OFFSET | IPV6_FRAG_MF)) {
				p->fragment = 1;
				if (off & IPV6_FRAG_OFFSET)
					p->later_fragment = 1;
			}
			break;
		}
		default:
			goto done;
		}
	}
	/* Too many extension headers to find the transport header. */
	if (next == IPPROTO_TCP || next == IPPROTO_UDP)
		p->flow.proto = next;
	else
		p->flow.proto = IPPROTO_TCP; /* marker lookup: any L4 VIP */
	p->l4_truncated = 1;
	return PARSE_OK;

truncated:
	/* The extension chain is cut: the transport protocol is unknown. */
	p->flow.proto = IPPROTO_TCP;
	p->l4_truncated = 1;
	return PARSE_OK;

done:
	p->flow.proto = next;
	p->l4 = l2 + (cur - data);
	/* Rewriting programs address the transport header by a bounded
	 * offset; past it, extension headers leave it unreachable. */
	if (cur - data > XLB_MAX_L4_OFFSET - XLB_MAX_L2_LEN)
		p->l4_far = 1;
	if (next != IPPROTO_TCP && next != IPPROTO_UDP)
		return PARSE_OTHER_PROTO;
	if (p->later_fragment)
		return PARSE_OK;
	/* Extension headers past the payload length leave room < 0. */
	if (parse_l4(p, cur, end, (__s64)len - (cur - data)))
		p->l4_truncated = 1;
	return PARSE_OK;
}

static __always_inline int parse(xlb_ctx *ctx, struct packet *p, struct ethhdr **eth_out)
{
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	__be16 proto;
	int l2 = parse_eth(data, end, &proto);

	if (l2 < 0)
		return PARSE_MALFORMED;
	*eth_out = data;
	p->l3 = l2;
	void *l3 = data + l2;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(ctx, p, l3, end);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(ctx, p, l3, end, l2);
	return PARSE_NOT_IP;
}

#endif
