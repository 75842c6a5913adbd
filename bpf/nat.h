/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Full NAT for xlb.c (forwarding = "nat"): a client's packet to VIP:port
 * leaves as LB-source:port' -> backend:backend-port, the port' allocated per
 * flow; the backend's answers, addressed to LB-source:port', are found by
 * their own header in nat_bindings and leave as VIP:port -> client. Backends
 * need nothing: no VIP, no sysctls, any network the LB can route to.
 *
 * Ports are allocated without collisions: a binding is inserted only where
 * none exists (BPF_NOEXIST), so two flows never share one, and only the
 * daemon's sweep removes bindings (after the flow's idle timeout), so a
 * binding is never taken over while its flow may still send. A flow that
 * finds no free port among XLB_NAT_PROBES tries is dropped and counted.
 *
 * ICMP errors about a NAT flow that reach the LB source (fragmentation
 * needed, packet too big, unreachable, time exceeded) are translated back
 * to the client, headers and quoted packet alike, as from the VIP.
 *
 * Checksums are updated incrementally (csum.h): XDP assumes full checksums,
 * as NICs deliver them (see LAB.md on veth's partial ones); TC updates the
 * transport checksum with the kernel's helper, which also keeps partial
 * (offloaded) and complete ones right (ctx_l4_csum). Every other update
 * keeps the sum of the bytes it changes (the IPv4 header, ICMP errors), so
 * an skb's sum of the whole packet stays right as well.
 *
 * Included by xlb.c after struct packet, the conntrack and tx_ports maps and
 * flow_hash, which it uses.
 */
#ifndef XLB_NAT_H
#define XLB_NAT_H

#include "route.h"

/* Client flow -> its translation. Allocated as used: NAT may be unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_CONNTRACK_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct nat_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_flows SEC(".maps");

/* The backend's answers' flow_key -> the client flow they belong to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_CONNTRACK_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct nat_binding);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_bindings SEC(".maps");

/* Key 0: struct nat_port_range, written by the daemon from [datapath]. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_port_range);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_ports SEC(".maps");

#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

static __always_inline int flow_key_eq(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	__u64 diff = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*a) / 8); i++)
		diff |= x[i] ^ y[i];
	return diff == 0;
}

/* The flow_key of the backend's answers to a flow that was given port. */
static __always_inline void reply_key(struct flow_key *k, const struct backend *be, __u8 proto,
				      __u8 family, __u16 port)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->src, be->addr, 16);
	__builtin_memcpy(k->dst, be->src, 16);
	k->sport = be->port;
	k->dport = port;
	k->proto = proto;
	k->family = family;
}

/* Inserts the binding k for the client flow p, if k is free; 0 when done. */
static __always_inline long nat_bind(xlb_ctx *ctx, const struct flow_key *k,
				     const struct packet *p, __u32 be_id, __u32 svc_id, __u32 now)
{
	void *data = ctx_data(ctx);
	struct ethhdr *eth = data;
	struct nat_binding fresh = {
		.client = p->flow,
		.backend_id = be_id,
		.service_id = svc_id,
		.flags = p->flow_flags,
		.seen = now,
		.client_ifindex = ctx_ifindex(ctx),
	};

	if ((void *)(eth + 1) > ctx_end(ctx))
		return -1;
	__builtin_memcpy(fresh.client_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(fresh.local_mac, eth->h_dest, ETH_ALEN);
	return bpf_map_update_elem(&nat_bindings, k, &fresh, BPF_NOEXIST);
}

/*
 * The source port of the client flow p to backend be: the flow's own while
 * its binding stands (put back if the sweep removed it), else a new one.
 * new_flow: the connection table placed p as a new flow (a reopened one
 * starts its state afresh; a SYN on a live flow does not).
 * Returns TX_OK with *port set, or TX_NO_PORT.
 */
static __always_inline int nat_port(xlb_ctx *ctx, const struct packet *p,
				    const struct backend *be, __u32 be_id, __u32 svc_id,
				    __u64 new_flow, __u16 *port)
{
	__u32 now = flow_tick(bpf_ktime_get_coarse_ns());
	struct nat_flow *nf = bpf_map_lookup_elem(&nat_flows, &p->flow);
	struct flow_key k;

	if (nf && nf->backend_id == be_id) {
		__u16 own = nf->port;

		reply_key(&k, be, p->flow.proto, p->flow.family, own);
		struct nat_binding *b = bpf_map_lookup_elem(&nat_bindings, &k);
		if (b && flow_key_eq(&b->client, &p->flow)) {
			if (b->seen != now)
				b->seen = now;
			if (new_flow)
				b->flags = p->flow_flags; /* the client opens its ports again */
			else if (p->flow_flags & ~b->flags)
				b->flags |= p->flow_flags;
			*port = own;
			return TX_OK;
		}
		if (!b && nat_bind(ctx, &k, p, be_id, svc_id, now) == 0) {
			*port = own;
			return TX_OK;
		}
	}

	__u32 zero = 0;
	struct nat_port_range *r = bpf_map_lookup_elem(&nat_ports, &zero);
	if (!r || r->count == 0)
		return TX_NO_PORT;
	__u32 first = r->first, count = r->count;
	__u32 h = flow_hash(&p->flow, XLB_HASH_FLOW);
	/* Double hashing: an odd step spreads the tries of colliding flows. */
	__u32 step = (h >> 16) | 1;

#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < XLB_NAT_PROBES; i++) {
		__u16 try = first + (h + i * step) % count;

		reply_key(&k, be, p->flow.proto, p->flow.family, try);
		if (nat_bind(ctx, &k, p, be_id, svc_id, now))
			continue;
		struct nat_flow v = {.backend_id = be_id, .port = try};
		if (bpf_map_update_elem(&nat_flows, &p->flow, &v, BPF_ANY)) {
			bpf_map_delete_elem(&nat_bindings, &k);
			return TX_NO_PORT;
		}
		*port = try;
		return TX_OK;
	}
	return TX_NO_PORT;
}

/* acc plus the change of one 16-bit word. */
static __always_inline __u64 csum_add_change16(__u64 acc, __u16 old, __u16 new)
{
	return acc + (__u16)~old + new;
}

/*
 * Rewrites the addresses and ports of the TCP or UDP packet p to src:sport
 * -> dst:dport (ports in host order), updating the IPv4 header and transport
 * checksums (the latter last: in TC its helper moves the packet).
 */
static __always_inline int nat_rewrite(xlb_ctx *ctx, const struct packet *p, const __u8 *src,
				       const __u8 *dst, __u16 sport, __u16 dport)
{
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	__u32 l3 = p->l3 & 0x1f;  /* 14 or 18 */
	__u32 l4 = p->l4 & 0x3ff; /* past IPv4 options or IPv6 extensions */
	__be16 ports[2] = {bpf_htons(sport), bpf_htons(dport)};
	__u64 acc, addrs;

	if (p->l4_far) /* the mask below would point elsewhere */
		return TX_TRUNCATED;
	if (p->flow.family == XLB_FAMILY_V4) {
		struct iphdr *ip = data + l3;

		if ((void *)(ip + 1) > end)
			return TX_FAILED;
		acc = csum_add_change(0, &ip->saddr, src, 4);
		acc = csum_add_change(acc, &ip->daddr, dst, 4);
		csum_apply(&ip->check, acc);
		__builtin_memcpy(&ip->saddr, src, 4);
		__builtin_memcpy(&ip->daddr, dst, 4);
	} else {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > end)
			return TX_FAILED;
		acc = csum_add_change(0, &ip6->saddr, src, 16);
		acc = csum_add_change(acc, &ip6->daddr, dst, 16);
		__builtin_memcpy(&ip6->saddr, src, 16);
		__builtin_memcpy(&ip6->daddr, dst, 16);
	}
	addrs = acc; /* the pseudo-header's part */

	if (p->flow.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + l4;

		if ((void *)(tcp + 1) > end)
			return TX_FAILED;
		acc = csum_add_change(acc, &tcp->source, ports, 4);
		tcp->source = ports[0];
		tcp->dest = ports[1];
		if (ctx_l4_csum(ctx, &tcp->check, acc, addrs, IPPROTO_TCP, p->flow.family))
			return TX_FAILED;
		return TX_OK;
	}
	struct udphdr *udp = data + l4;

	if ((void *)(udp + 1) > end)
		return TX_FAILED;
	acc = csum_add_change(acc, &udp->source, ports, 4);
	udp->source = ports[0];
	udp->dest = ports[1];
	if (ctx_l4_csum(ctx, &udp->check, acc, addrs, IPPROTO_UDP, p->flow.family))
		return TX_FAILED;
	return TX_OK;
}

/* Points the frame's Ethernet header at nh. */
static __always_inline int set_eth(xlb_ctx *ctx, const struct next_hop *nh)
{
	struct ethhdr *eth = ctx_data(ctx);

	if ((void *)(eth + 1) > ctx_end(ctx))
		return TX_FAILED;
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	return TX_OK;
}

/*
 * The FIB lookup of a packet of ip_len bytes from src to dst (16-byte
 * addresses, IPv4 in the first 4).
 */
static __always_inline void fib_params(xlb_ctx *ctx, struct bpf_fib_lookup *fib, __u8 family,
				       __u8 proto, __u32 ip_len, const __u8 *src, const __u8 *dst)
{
	fib->l4_protocol = proto;
	fib->tot_len = ip_len > 0xffff ? 0xffff : ip_len;
	fib->ifindex = ctx_ifindex(ctx);
	if (family == XLB_FAMILY_V4) {
		fib->family = XLB_AF_INET;
		__builtin_memcpy(&fib->ipv4_src, src, 4);
		__builtin_memcpy(&fib->ipv4_dst, dst, 4);
	} else {
		fib->family = XLB_AF_INET6;
		__builtin_memcpy(fib->ipv6_src, src, 16);
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
	}
}

/*
 * The answer to a packet too big for its next hop: an ICMP error back to
 * its source (from its destination) with the hop's MTU as it is (NAT adds
 * no header), or a drop where none may be sent.
 */
static __always_inline int too_big(xlb_ctx *ctx, const struct packet *p, __u32 mtu)
{
	if (p->flow.family == XLB_FAMILY_V6)
		return icmp6_too_big(ctx, p->l3 & 0x1f, mtu);
	if (p->df)
		return icmp4_too_big(ctx, p->l3 & 0x1f, mtu);
	return TX_TOO_BIG;
}

/*
 * Translates the client's packet p for backend be (forwarding = "nat").
 * TX_OK leaves a frame to send on *egress with its Ethernet addresses set;
 * see enum tx_result.
 */
static __always_inline int nat_forward(xlb_ctx *ctx, const struct packet *p,
				       const struct backend *be, __u32 be_id, __u32 svc_id,
				       __u64 new_flow, __u32 *egress)
{
	struct bpf_fib_lookup fib = {};
	struct next_hop fallback = {}, nh = {};
	__u16 port;

	if (p->l4_far)
		return TX_TRUNCATED;
	/* Sent on untagged, answered untagged: refused rather than half done. */
	if (p->l3 != sizeof(struct ethhdr) || ctx_tagged(ctx))
		return TX_VLAN;
	/* The route first: a packet too big is answered from the VIP, as sent. */
	fib_params(ctx, &fib, p->flow.family, p->flow.proto, p->ip_len, be->src, be->addr);
	backend_hop(be, &fallback);
	int rc = next_hop(ctx, &fib, &fallback, &nh);
	if (rc == TX_TOO_BIG)
		return too_big(ctx, p, nh.mtu);
	if (rc != TX_OK)
		return rc;

	rc = nat_port(ctx, p, be, be_id, svc_id, new_flow, &port);
	if (rc != TX_OK)
		return rc;
	rc = nat_rewrite(ctx, p, be->src, be->addr, port, be->port);
	if (rc != TX_OK)
		return rc;
	*egress = nh.ifindex;
	return set_eth(ctx, &nh);
}

/* Where a NAT flow's client's packets came from (b: its binding). */
static __always_inline void client_fallback(const struct nat_binding *b, struct next_hop *fb)
{
	fb->ifindex = b->client_ifindex;
	__builtin_memcpy(fb->dmac, b->client_mac, ETH_ALEN);
	__builtin_memcpy(fb->smac, b->local_mac, ETH_ALEN);
}

/*
 * Sends a translated answer toward nh, or, when nh's interface is not one
 * xlb may redirect to (XDP: no tx_ports entry), back out of the receiving
 * interface to fallback: where the client's packets came from.
 */
static __always_inline int reply_verdict(xlb_ctx *ctx, const struct next_hop *nh,
					 const struct next_hop *fallback, __u64 len)
{
	if (nh->ifindex != ctx_ifindex(ctx)) {
		int action = ctx_redirect(ctx, nh->ifindex);
		if (action == XLB_REDIRECT) {
			if (set_eth(ctx, nh) != TX_OK)
				return verdict(XLB_R_DROP_ENCAP, len, XLB_DROP);
			return verdict(XLB_R_NAT_REPLY_REDIRECT, len, action);
		}
		if (fallback->ifindex != ctx_ifindex(ctx))
			return verdict(XLB_R_DROP_NO_TX_PORT, len, XLB_DROP);
		nh = fallback;
	}
	if (set_eth(ctx, nh) != TX_OK)
		return verdict(XLB_R_DROP_ENCAP, len, XLB_DROP);
	return verdict(XLB_R_NAT_REPLY_TX, len, ctx_tx(ctx));
}

/* The verdict of a packet nat_forward or nat_reply did not leave to send. */
static __always_inline int tx_verdict(xlb_ctx *ctx, int rc, __u64 len)
{
	switch (rc) {
	case TX_ICMP:
		return verdict(XLB_R_ICMP_TOO_BIG, len, ctx_tx(ctx));
	case TX_TOO_BIG:
		return verdict(XLB_R_DROP_TOO_BIG, len, XLB_DROP);
	case TX_NO_ROUTE:
		return verdict(XLB_R_DROP_NO_ROUTE, len, XLB_DROP);
	case TX_NO_PORT:
		return verdict(XLB_R_DROP_NAT_PORTS, len, XLB_DROP);
	case TX_ICMP_LIMITED:
		return verdict(XLB_R_DROP_ICMP_RATE, len, XLB_DROP);
	case TX_TRUNCATED:
		return verdict(XLB_R_DROP_TRUNCATED, len, XLB_DROP);
	case TX_VLAN:
		return verdict(XLB_R_DROP_NAT_VLAN, len, XLB_DROP);
	}
	return verdict(XLB_R_DROP_ENCAP, len, XLB_DROP);
}

/* May port be one a NAT flow holds (its answers' destination port)? */
static __always_inline int nat_port_in_range(__u16 port)
{
	__u32 zero = 0;
	struct nat_port_range *r = bpf_map_lookup_elem(&nat_ports, &zero);

	return r && (__u32)port - r->reply_first < r->reply_count;
}

/*
 * A backend's answer to a NAT flow, translated to VIP -> client and sent on;
 * -1 when p (TCP or UDP, a first fragment at most) is not one.
 */
static __always_inline int nat_reply(xlb_ctx *ctx, const struct packet *p)
{
	if (p->l4_far || !nat_port_in_range(p->flow.dport))
		return -1;
	struct nat_binding *b = bpf_map_lookup_elem(&nat_bindings, &p->flow);
	if (!b)
		return -1;
	/* Later fragments carry no ports to translate: the answer is lost
	 * either way, so it is dropped and counted, not left to the host. */
	if (p->fragment)
		return verdict(XLB_R_DROP_FRAGMENT, p->len, XLB_DROP);

	__u32 now = flow_tick(bpf_ktime_get_coarse_ns());
	if (b->seen != now)
		b->seen = now;
	if ((p->flow_flags & XLB_FLOW_CLOSING) && !(b->flags & XLB_FLOW_CLOSING))
		b->flags |= XLB_FLOW_CLOSING;
	/* The flow stays placed while only the backend speaks. */
	struct flow_value *ct = bpf_map_lookup_elem(&conntrack, &b->client);
	if (ct && ct->seen != now)
		ct->seen = now;

	struct flow_key c = b->client;
	struct bpf_fib_lookup fib = {};
	struct next_hop fallback = {}, nh = {};
	client_fallback(b, &fallback);
	fib_params(ctx, &fib, c.family, p->flow.proto, p->ip_len, c.dst, c.src);
	int rc = next_hop(ctx, &fib, &fallback, &nh);
	if (rc == TX_TOO_BIG)
		rc = too_big(ctx, p, nh.mtu); /* to the backend, from the LB source */
	if (rc == TX_OK)
		rc = nat_rewrite(ctx, p, c.dst, c.src, c.dport, c.sport);
	if (rc != TX_OK)
		return tx_verdict(ctx, rc, p->len);
	return reply_verdict(ctx, &nh, &fallback, p->len);
}

/*
 * Where the parts of an ICMP error's quoted packet start (offsets from the
 * frame's start; the quote is bounded by the error's IP length).
 */
struct icmp_quote {
	__u32 check; /* the ICMP checksum */
	__u32 ip;    /* the quoted IP header */
	__u32 l4;    /* the quoted transport header */
	__u32 end;   /* the end of the error's IP packet */
	__u8 proto;  /* the quoted transport protocol */
};

/* An ICMP error's rewrite: its new addresses, and its quote's. */
struct icmp_xlat {
	__u8 outer_src[16];
	__u8 outer_dst[16];
	__u8 in_src[16];
	__u8 in_dst[16];
	__u16 in_sport; /* host order */
	__u16 in_dport;
};

/*
 * Reads the ICMP or ICMPv6 error p: where its quote is and its quoted flow
 * (src, dst, ports as the quoted packet has them). -1 when p is no error
 * with a TCP or UDP quote that names its ports.
 */
static __always_inline int read_quote(void *data, void *end, const struct packet *p,
				      struct icmp_quote *q, struct flow_key *quoted)
{
	__u32 l4 = p->l4 & 0x3ff;
	__u8 *icmp = data + l4;

	if (p->l4_far || (void *)(icmp + 8) > end)
		return -1;
	q->check = l4 + 2;
	q->ip = l4 + 8;
	q->end = (p->l3 & 0x1f) + p->ip_len;
	quoted->family = p->flow.family;
	if (p->flow.family == XLB_FAMILY_V4) {
		if (p->flow.proto != IPPROTO_ICMP)
			return -1;
		if (icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED &&
		    icmp[0] != ICMP_PARAMETERPROB)
			return -1;
		struct iphdr *in = data + (q->ip & 0x3ff);
		if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5)
			return -1;
		if (in->frag_off & bpf_htons(IP_OFFSET))
			return -1; /* no ports quoted */
		q->proto = in->protocol;
		__builtin_memcpy(quoted->src, &in->saddr, 4);
		__builtin_memcpy(quoted->dst, &in->daddr, 4);
		q->l4 = (q->ip & 0x3ff) + ((in->ihl * 4) & 0x3c);
	} else {
		if (p->flow.proto != IPPROTO_ICMPV6)
			return -1;
		/* destination unreachable, packet too big, time exceeded,
		 * parameter problem: the error types (RFC 4443) */
		if (icmp[0] < ICMPV6_DEST_UNREACH || icmp[0] > ICMPV6_PARAMPROB)
			return -1;
		struct ipv6hdr *in = data + (q->ip & 0x3ff);
		if ((void *)(in + 1) > end)
			return -1;
		q->proto = in->nexthdr; /* quotes with extension headers pass */
		__builtin_memcpy(quoted->src, &in->saddr, 16);
		__builtin_memcpy(quoted->dst, &in->daddr, 16);
		q->l4 = (q->ip & 0x3ff) + sizeof(*in);
	}
	if (q->proto != IPPROTO_TCP && q->proto != IPPROTO_UDP)
		return -1;
	quoted->proto = q->proto;
	__be16 *ports = data + (q->l4 & 0x7ff);
	if ((void *)(ports + 2) > end || q->l4 + 4 > q->end)
		return -1;
	quoted->sport = bpf_ntohs(ports[0]);
	quoted->dport = bpf_ntohs(ports[1]);
	return 0;
}

/* Are the 16-byte addresses a and b equal? */
static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1];
}

/*
 * Rewrites the ICMP error p per x: outer addresses, quoted addresses and
 * ports, and the checksums over each (the quoted transport checksum only
 * when the quote holds it).
 */
static __always_inline int icmp_rewrite(xlb_ctx *ctx, const struct packet *p,
					const struct icmp_quote *q, const struct icmp_xlat *x)
{
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	__u32 l3 = p->l3 & 0x1f;
	__u16 *check = data + (q->check & 0x3ff);
	__be16 ports[2] = {bpf_htons(x->in_sport), bpf_htons(x->in_dport)};
	__be16 *qports = data + (q->l4 & 0x7ff);
	__u64 outer, inner, icmp = 0;

	if ((void *)(check + 1) > end || (void *)(qports + 2) > end)
		return TX_FAILED;

	if (p->flow.family == XLB_FAMILY_V4) {
		struct iphdr *ip = data + l3;
		struct iphdr *in = data + (q->ip & 0x3ff);

		if ((void *)(ip + 1) > end || (void *)(in + 1) > end)
			return TX_FAILED;
		outer = csum_add_change(0, &ip->saddr, x->outer_src, 4);
		outer = csum_add_change(outer, &ip->daddr, x->outer_dst, 4);
		csum_apply(&ip->check, outer);
		__builtin_memcpy(&ip->saddr, x->outer_src, 4);
		__builtin_memcpy(&ip->daddr, x->outer_dst, 4);

		inner = csum_add_change(0, &in->saddr, x->in_src, 4);
		inner = csum_add_change(inner, &in->daddr, x->in_dst, 4);
		__u16 old = in->check;
		csum_apply(&in->check, inner);
		icmp = csum_add_change16(inner, old, in->check);
		__builtin_memcpy(&in->saddr, x->in_src, 4);
		__builtin_memcpy(&in->daddr, x->in_dst, 4);
	} else {
		struct ipv6hdr *ip6 = data + l3;
		struct ipv6hdr *in = data + (q->ip & 0x3ff);

		if ((void *)(ip6 + 1) > end || (void *)(in + 1) > end)
			return TX_FAILED;
		/* The ICMPv6 checksum covers the outer addresses too. */
		outer = csum_add_change(0, &ip6->saddr, x->outer_src, 16);
		outer = csum_add_change(outer, &ip6->daddr, x->outer_dst, 16);
		__builtin_memcpy(&ip6->saddr, x->outer_src, 16);
		__builtin_memcpy(&ip6->daddr, x->outer_dst, 16);

		inner = csum_add_change(0, &in->saddr, x->in_src, 16);
		inner = csum_add_change(inner, &in->daddr, x->in_dst, 16);
		__builtin_memcpy(&in->saddr, x->in_src, 16);
		__builtin_memcpy(&in->daddr, x->in_dst, 16);
		icmp = outer + inner;
	}

	/* The quoted transport header: ports, and its checksum if quoted
	 * (within the error's IP length: bytes past it are padding). */
	__u64 l4 = csum_add_change(inner, qports, ports, 4);
	icmp = csum_add_change(icmp, qports, ports, 4);
	qports[0] = ports[0];
	qports[1] = ports[1];
	if (q->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)qports;
		if ((void *)(tcp + 1) <= end && q->l4 + sizeof(*tcp) <= q->end) {
			__u16 old = tcp->check;
			csum_apply(&tcp->check, l4);
			icmp = csum_add_change16(icmp, old, tcp->check);
		}
	} else {
		struct udphdr *udp = (void *)qports;
		if ((void *)(udp + 1) <= end && q->l4 + sizeof(*udp) <= q->end) {
			__u16 old = udp->check;
			csum_apply_udp(&udp->check, l4);
			icmp = csum_add_change16(icmp, old, udp->check);
		}
	}
	csum_apply(check, icmp);
	return TX_OK;
}

/*
 * The translation of an error about a packet xlb sent to a backend (the
 * quote: source:port' -> backend:port), addressed to source: back to the
 * client, as from the VIP, about the client's packet. -1: no such flow.
 */
static __always_inline int xlat_to_client(xlb_ctx *ctx, const struct packet *p,
					  const struct flow_key *quoted, struct icmp_xlat *x,
					  struct next_hop *nh, struct next_hop *fallback)
{
	struct flow_key k = {
		.sport = quoted->dport, .dport = quoted->sport,
		.proto = quoted->proto, .family = quoted->family,
	};

	/* Sent to where the quoted packet came from: anything else is forged. */
	if (!addr_eq(p->flow.dst, quoted->src) || !nat_port_in_range(quoted->sport))
		return -1;
	__builtin_memcpy(k.src, quoted->dst, 16);
	__builtin_memcpy(k.dst, quoted->src, 16);
	struct nat_binding *b = bpf_map_lookup_elem(&nat_bindings, &k);
	if (!b)
		return -1;
	struct flow_key c = b->client;
	__builtin_memcpy(x->outer_src, c.dst, 16);
	__builtin_memcpy(x->outer_dst, c.src, 16);
	__builtin_memcpy(x->in_src, c.src, 16);
	__builtin_memcpy(x->in_dst, c.dst, 16);
	x->in_sport = c.sport;
	x->in_dport = c.dport;

	struct bpf_fib_lookup fib = {};
	client_fallback(b, fallback);
	fib_params(ctx, &fib, c.family, p->flow.proto, p->ip_len, c.dst, c.src);
	return next_hop(ctx, &fib, fallback, nh);
}

/*
 * The translation of an error about an answer xlb sent to a client (the
 * quote: VIP:port -> client), addressed to the VIP: on to the backend, as
 * from the NAT source, about the backend's answer. -1: no such flow.
 */
static __always_inline int xlat_to_backend(xlb_ctx *ctx, const struct packet *p,
					   const struct flow_key *quoted, struct icmp_xlat *x,
					   struct next_hop *nh, struct next_hop *fallback)
{
	struct flow_key k = {
		.sport = quoted->dport, .dport = quoted->sport,
		.proto = quoted->proto, .family = quoted->family,
	};

	if (!addr_eq(p->flow.dst, quoted->src))
		return -1;
	__builtin_memcpy(k.src, quoted->dst, 16);
	__builtin_memcpy(k.dst, quoted->src, 16);
	struct nat_flow *nf = bpf_map_lookup_elem(&nat_flows, &k);
	if (!nf)
		return -1;
	__u32 be_id = nf->backend_id;
	__u16 port = nf->port;
	struct backend *be = bpf_map_lookup_elem(&backends, &be_id);
	if (!be || be->forwarding != XLB_FWD_NAT)
		return -1;
	__builtin_memcpy(x->outer_src, be->src, 16);
	__builtin_memcpy(x->outer_dst, be->addr, 16);
	__builtin_memcpy(x->in_src, be->addr, 16);
	__builtin_memcpy(x->in_dst, be->src, 16);
	x->in_sport = be->port;
	x->in_dport = port;

	struct bpf_fib_lookup fib = {};
	backend_hop(be, fallback);
	fib_params(ctx, &fib, p->flow.family, p->flow.proto, p->ip_len, be->src, be->addr);
	return next_hop(ctx, &fib, fallback, nh);
}

/*
 * An ICMP error about a NAT flow (p: ICMP or ICMPv6 to a possible VIP or
 * NAT source, not a fragment), translated and sent on: about a packet to a
 * backend, back to the client; about an answer to a client, on to the
 * backend. -1 when it is about no NAT flow. Errors count against the ICMP
 * budget: forged ones cannot make xlb a reflector.
 */
static __always_inline int nat_icmp(xlb_ctx *ctx, const struct packet *p)
{
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	struct icmp_quote q = {};
	struct flow_key quoted = {};
	struct icmp_xlat x = {};
	struct next_hop nh = {}, fallback = {};
	int rc;

	if (read_quote(data, end, p, &q, &quoted))
		return -1;
	rc = xlat_to_client(ctx, p, &quoted, &x, &nh, &fallback);
	if (rc < 0)
		rc = xlat_to_backend(ctx, p, &quoted, &x, &nh, &fallback);
	if (rc < 0)
		return -1;
	/* Too big, it is dropped: never an ICMP error about an ICMP error. */
	if (rc == TX_OK && !icmp_allowed())
		rc = TX_ICMP_LIMITED;
	if (rc == TX_OK)
		rc = icmp_rewrite(ctx, p, &q, &x);
	if (rc != TX_OK)
		return tx_verdict(ctx, rc, p->len);
	return reply_verdict(ctx, &nh, &fallback, p->len);
}

#endif
