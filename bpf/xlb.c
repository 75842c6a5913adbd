//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xlb XDP datapath: L4 services are steered per packet to a backend chosen from
 * the connection table or the service's Maglev ring, and forwarded by L2 direct
 * server return (only the Ethernet addresses change), for forwarding = "ipip"
 * inside an outer IP header (ipip.h), for forwarding = "nat" with addresses
 * and ports translated both ways (nat.h). Everything else is passed to the
 * kernel. Every return is counted with its reason (enum reason).
 *
 * Built twice: as XDP, and with -DXLB_TC as a TC ingress (tcx) program for
 * interfaces where XDP does not fit, with the same maps, reasons and
 * counters; ctx.h holds what differs.
 */
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
#include "maps.h"
#include "ctx.h"
#include "hash.h"
#include "packet.h"
#include "ipip.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Keep the enums in BTF so bpf2go can emit them. */
const enum reason *unused_reason __attribute__((unused));
const enum svc_kind *unused_kind __attribute__((unused));
const enum hash_mode *unused_hash __attribute__((unused));
const enum backend_state *unused_state __attribute__((unused));
const enum family *unused_family __attribute__((unused));
const enum limits *unused_limits __attribute__((unused));
const enum flow_flags *unused_flow_flags __attribute__((unused));
const enum forwarding *unused_forwarding __attribute__((unused));
const struct svc_info *unused_info __attribute__((unused));

static __always_inline void count(void *map, __u32 idx, __u64 len, __u64 new_flow)
{
	struct counters *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
		c->new_flows += new_flow;
	}
}

static __always_inline int verdict(__u32 reason, __u64 len, int action)
{
	count(&reason_stats, reason, len, 0);
	return action;
}

/* May dst be a VIP? Never false for one; see vip_filter. */
static __always_inline int maybe_vip(const struct flow_key *f)
{
	__u32 alen = f->family == XLB_FAMILY_V6 ? 16 : 4;
	__u32 h = murmur_final(hash_addr(XLB_HASH_SEED, f->dst, f->family), alen);
	__u32 word = (h >> 6) & (XLB_VIP_FILTER_WORDS - 1);
	__u64 *bits = bpf_map_lookup_elem(&vip_filter, &word);

	return bits && (*bits & (1ULL << (h & 63)));
}

static __always_inline struct svc_value *lookup_vip_marker(struct packet *p)
{
	struct svc_key key = {};

	__builtin_memcpy(key.addr, p->flow.dst, 16);
	key.proto = p->flow.proto;
	key.family = p->flow.family;
	return bpf_map_lookup_elem(&services, &key);
}

static __always_inline struct svc_value *lookup_service(struct packet *p)
{
	struct svc_key key = {};

	__builtin_memcpy(key.addr, p->flow.dst, 16);
	key.port = p->flow.dport;
	key.proto = p->flow.proto;
	key.family = p->flow.family;
	return bpf_map_lookup_elem(&services, &key);
}

/* The service's Maglev pick, or XLB_NO_ID when its ring is empty. */
static __always_inline __u32 ring_pick(struct svc_value *svc, struct packet *p)
{
	__u32 id = svc->id;
	void *ring = bpf_map_lookup_elem(&rings, &id);

	if (!ring || svc->ring_size == 0)
		return XLB_NO_ID;
	__u32 slot = flow_hash(&p->flow, svc->hash) % svc->ring_size;
	__u32 *be = bpf_map_lookup_elem(ring, &slot);

	return be ? *be : XLB_NO_ID;
}

/* The clock of flow_value.seen: ticks of 2^XLB_FLOW_TICK_SHIFT ns. */
static __always_inline __u32 flow_tick(__u64 ns)
{
	return ns >> XLB_FLOW_TICK_SHIFT;
}

#include "nat.h"

static __always_inline int forward(xlb_ctx *ctx, struct ethhdr *eth, __u32 svc_id,
				   __u32 be_id, struct backend *be, struct packet *p, __u64 new_flow)
{
	__u32 reason = XLB_R_TX;
	int action = ctx_tx(ctx);
	__u32 egress = be->ifindex;
	/* Read once: the loader may rewrite the entry meanwhile. */
	__u8 fwd = be->forwarding;
	int rc = TX_OK;

	if (fwd == XLB_FWD_IPIP)
		rc = encap_ipip(ctx, be, flow_hash(&p->flow, XLB_HASH_FLOW), &egress);
	else if (fwd == XLB_FWD_NAT && p->fragment)
		/* Later fragments carry no ports to translate. */
		return verdict(XLB_R_DROP_FRAGMENT, p->len, XLB_DROP);
	else if (fwd == XLB_FWD_NAT)
		rc = nat_forward(ctx, p, be, be_id, svc_id, new_flow, &egress);
	if (rc != TX_OK)
		return tx_verdict(ctx, rc, p->len);
	if (egress != ctx_ifindex(ctx)) {
		/* Only records the target; fails when the port is missing. */
		action = ctx_redirect(ctx, egress);
		if (action != XLB_REDIRECT)
			return verdict(XLB_R_DROP_NO_TX_PORT, p->len, XLB_DROP);
		reason = XLB_R_REDIRECT;
	}
	if (fwd == XLB_FWD_DSR) {
		/* From ctx again: the verifier cannot tell that this path never
		 * moved the frame's start (bpf_xdp_adjust_head). */
		eth = ctx_data(ctx);
		if ((void *)(eth + 1) > ctx_end(ctx))
			return verdict(XLB_R_PASS_MALFORMED, p->len, XLB_PASS);
		__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, be->smac, ETH_ALEN);
	}

	count(&service_stats, svc_id, p->len, new_flow);
	count(&backend_stats, be_id, p->len, new_flow);
	return verdict(reason, p->len, action);
}

static __always_inline int usable(struct backend *be)
{
	return be && (be->state == XLB_BE_UP || be->state == XLB_BE_DRAINING);
}

/*
 * Is a connection table entry gone: idle past its state's timeout, or a
 * closed TCP flow, silent for XLB_CLOSING_QUIET_TICKS, whose ports the client
 * opens again (a SYN)? Either way the
 * service's ring places the packet as a new flow.
 */
static __always_inline int flow_gone(const struct flow_value *ct, const struct packet *p, __u32 now)
{
	__u32 zero = 0;
	struct idle_timeouts *t = bpf_map_lookup_elem(&flow_timeouts, &zero);
	__u32 idle;

	if (p->syn && (ct->flags & XLB_FLOW_CLOSING) &&
	    (__s32)(now - ct->seen) >= XLB_CLOSING_QUIET_TICKS)
		return 1;
	if (!t)
		return 0;
	if (p->flow.proto == IPPROTO_UDP)
		idle = t->udp;
	else if (ct->flags & XLB_FLOW_CLOSING)
		idle = t->tcp_closing;
	else if ((ct->flags & XLB_FLOW_ESTABLISHED) || (!ct->seen && ct->packets > 1))
		/* A build before flow states: past its SYN after one packet. */
		idle = t->tcp_established;
	else
		idle = t->tcp_syn;
	/* The later of seen and the daemon's start (signed: ticks wrap). */
	__u32 last = ct->seen;
	if ((__s32)(t->seen_floor - last) > 0)
		last = t->seen_floor;
	/* Signed: another CPU may have stamped the entry with the next tick. */
	return idle && (__s32)(now - last) > (__s32)idle;
}

/*
 * An established flow: the connection table names its backend and service.
 * Checked before the service lookup because it is the common case and the
 * entry alone decides; entries only exist for L4 services. A backend that is
 * down or was removed, or an entry that is gone (flow_gone), makes the entry
 * void (the service lookup then decides).
 */
static __always_inline int steer_established(xlb_ctx *ctx, struct ethhdr *eth, struct packet *p)
{
	struct flow_value *ct = bpf_map_lookup_elem(&conntrack, &p->flow);

	if (!ct)
		return -1;
	__u32 now = flow_tick(bpf_ktime_get_coarse_ns());
	if (flow_gone(ct, p, now))
		return -1;
	__u32 be_id = ct->backend_id;
	struct backend *be = bpf_map_lookup_elem(&backends, &be_id);
	if (!usable(be) || be->service_id != ct->service_id)
		return -1;

	ct->packets++;
	/* seen moves once a tick, flags once a state: no store a packet of their own. */
	if (ct->seen != now)
		ct->seen = now;
	if (p->flow_flags & ~ct->flags)
		ct->flags |= p->flow_flags;
	return forward(ctx, eth, ct->service_id, be_id, be, p, 0);
}

#ifdef XLB_BENCH_NEW_FLOWS
/*
 * Benchmark build only (bpf2go XlbBench): BPF_PROG_TEST_RUN reruns a packet as
 * the previous run left it, so bumping the (untagged IPv4) source address and
 * port here makes every rerun a new flow. Sources stay in 198.18.0.0/15.
 */
static __always_inline void bench_next_flow(xlb_ctx *ctx)
{
	void *data = ctx_data(ctx);
	void *end = ctx_end(ctx);
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct tcphdr *tcp = (void *)(ip + 1);

	if ((void *)(tcp + 1) > end)
		return;
	__u32 low = (bpf_ntohl(ip->saddr) + 1) & 0x1ffff;
	ip->saddr = bpf_htonl(0xc6120000 | low);
	if (low == 0)
		tcp->source = bpf_htons(bpf_ntohs(tcp->source) + 1);
}
#else
static __always_inline void bench_next_flow(xlb_ctx *ctx)
{
}
#endif

/* A new flow (or one whose backend is gone): the service's Maglev table. */
static __always_inline int steer_new(xlb_ctx *ctx, struct ethhdr *eth, struct svc_value *svc,
				     struct packet *p)
{
	__u32 be_id = ring_pick(svc, p);
	struct backend *be = bpf_map_lookup_elem(&backends, &be_id);

	if (!be || be->state != XLB_BE_UP)
		return verdict(XLB_R_DROP_NO_BACKEND, p->len, XLB_DROP);
	/* Non-first fragments carry no ports: the ring alone places them. NAT
	 * drops every fragment: no flow to record for it. */
	if (p->later_fragment || (p->fragment && be->forwarding == XLB_FWD_NAT))
		return forward(ctx, eth, svc->id, be_id, be, p, 0);

	__u64 ns = bpf_ktime_get_coarse_ns();
	struct flow_value fresh = {
		.backend_id = be_id,
		.service_id = svc->id,
		.flags = p->flow_flags,
		.packets = 1,
		.seen = flow_tick(ns),
		.created_ns = ns,
	};
	bpf_map_update_elem(&conntrack, &p->flow, &fresh, BPF_ANY);
	int action = forward(ctx, eth, svc->id, be_id, be, p, 1);
	bench_next_flow(ctx);
	return action;
}

/* The program: what both builds' entry points run. */
static __always_inline int steer(xlb_ctx *ctx)
{
	struct packet p = {};
	struct ethhdr *eth = NULL;
	struct svc_value *svc;

	p.len = ctx_bytes(ctx);

	switch (parse(ctx, &p, &eth)) {
	case PARSE_NOT_IP:
		return verdict(XLB_R_PASS_NOT_IP, p.len, XLB_PASS);
	case PARSE_MALFORMED:
		return verdict(XLB_R_PASS_MALFORMED, p.len, XLB_PASS);
	case PARSE_OTHER_PROTO:
		/* An ICMP error about a NAT flow, to the LB's NAT source? */
		if (!p.fragment && maybe_vip(&p.flow)) {
			int action = nat_icmp(ctx, &p);
			if (action >= 0)
				return action;
		}
		return verdict(XLB_R_PASS_OTHER_PROTO, p.len, XLB_PASS);
	}
	if (!eth)
		return verdict(XLB_R_PASS_MALFORMED, p.len, XLB_PASS);

	/* VIPs, and the addresses NAT flows leave from (their answers). */
	if (!maybe_vip(&p.flow))
		return verdict(XLB_R_PASS_NO_SERVICE, p.len, XLB_PASS);

	if (p.later_fragment || p.l4_truncated) {
		/* No port to read: only the VIP can be recognised. */
		svc = lookup_vip_marker(&p);
		if (!svc)
			return verdict(XLB_R_PASS_NO_SERVICE, p.len, XLB_PASS);
		if (p.l4_truncated)
			return verdict(XLB_R_DROP_TRUNCATED, p.len, XLB_DROP);
		if (svc->id == XLB_NO_ID)
			return verdict(XLB_R_DROP_FRAGMENT, p.len, XLB_DROP);
		/* The marker names the VIP's only service, an ip_hash one. */
		return steer_new(ctx, eth, svc, &p);
	}

	if (!p.later_fragment) {
		int action = nat_reply(ctx, &p);
		if (action >= 0)
			return action;
	}
	if (!p.fragment) {
		int action = steer_established(ctx, eth, &p);
		if (action >= 0)
			return action;
	}

	svc = lookup_service(&p);
	if (!svc)
		return verdict(XLB_R_PASS_NO_SERVICE, p.len, XLB_PASS);
	if (svc->kind == XLB_SVC_L7) {
		count(&service_stats, svc->id, p.len, 0);
		return verdict(XLB_R_PASS_L7, p.len, XLB_PASS);
	}
	if (svc->kind != XLB_SVC_L4)
		return verdict(XLB_R_PASS_NO_SERVICE, p.len, XLB_PASS);
	if (p.fragment && svc->hash != XLB_HASH_IP)
		return verdict(XLB_R_DROP_FRAGMENT, p.len, XLB_DROP);
	return steer_new(ctx, eth, svc, &p);
}

#ifdef XLB_TC
SEC("tc")
int xlb_tc(struct __sk_buff *skb)
{
	ctx_pull(skb, XLB_TC_HEADERS);
	return ctx_verdict(skb, steer(skb));
}
#else
SEC("xdp.frags")
int xlb_xdp(struct xdp_md *ctx)
{
	return steer(ctx);
}

/*
 * Returns XDP_PASS. Attached to the peer of a veth that uses native XDP_TX (the
 * kernel needs an XDP program there), and the floor of `make bench-xdp`.
 */
SEC("xdp.frags")
int xlb_noop(struct xdp_md *ctx)
{
	return XDP_PASS;
}

#ifdef XLB_BENCH_RESTORE
/*
 * Benchmark build only (bpf2go XlbBench): BPF_PROG_TEST_RUN reruns a packet as
 * the previous run left it, and forwarding that rewrites headers (nat's
 * addresses and ports, ipip's outer header) leaves one the next run would
 * not recognise. xlb_bench_restore puts the frame back as bench_frame holds
 * it (the start moved back, then its first bytes copied in), and tail-calls
 * bench_target[0]: xlb_xdp, or xlb_noop to measure the harness itself.
 */
#define XLB_BENCH_HEAD 80 /* Ethernet, IPv6 and TCP headers fit */

struct bench_head {
	__u32 len; /* the frame's length */
	__u8 head[XLB_BENCH_HEAD];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_head);
} bench_frame SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_target SEC(".maps");

SEC("xdp.frags")
int xlb_bench_restore(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_head *f = bpf_map_lookup_elem(&bench_frame, &zero);

	if (!f)
		return XDP_ABORTED;
	/* ipip pushed an outer header in front: move the start back past it. */
	int pushed = (int)(ctx->data_end - ctx->data) - (int)f->len;
	if (pushed && bpf_xdp_adjust_head(ctx, pushed))
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	if (data + XLB_BENCH_HEAD > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, f->head, XLB_BENCH_HEAD);
	bpf_tail_call(ctx, &bench_target, 0);
	return XDP_ABORTED;
}
#endif /* XLB_BENCH_RESTORE */
#endif /* XLB_TC */
