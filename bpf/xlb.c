//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xlb XDP datapath: L4 services are steered per packet to a backend chosen from
 * the connection table or the service's Maglev ring, and forwarded by L2 direct
 * server return (only the Ethernet addresses change), for forwarding = "ipip"
 * inside an outer IP header (ipip.h), for forwarding = "nat" with addresses
 * and ports translated both ways (nat.h). Everything else is passed to the
 * kernel. Every return is counted with its reason (enum reason).
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
#include "parse.h"
#include "ipip.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_SVC_KEYS);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

/*
 * rings[service id] -> ARRAY of M backend ids. The loader swaps a whole inner
 * map per update, so a packet sees the old table or the new one, never a mix.
 * BPF_F_INNER_MAP lets inner maps differ in size (M is configurable).
 */
struct ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65537);
	/* MMAPABLE: the loader fills a new table through a memory mapping,
	 * 30x faster than updating 65537 slots one by one. */
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, XLB_MAX_SERVICES);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct ring);
} rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XLB_CONNTRACK_SIZE);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* Key 0: struct idle_timeouts, the idle timeouts of conntrack entries. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct idle_timeouts);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flow_timeouts SEC(".maps");

/* Egress interfaces other than the receiving one, keyed by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, XLB_MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} service_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_REASON_SLOTS);
	__type(key, __u32);
	__type(value, struct counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} reason_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} service_info SEC(".maps");

/*
 * A one-hash Bloom filter of VIP addresses: bit (murmur3(dst) & 0xffff). Lets
 * traffic for the host itself (most non-VIP traffic) pass after one inlined
 * array read instead of two hash table lookups.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_VIP_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vip_filter SEC(".maps");

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
};

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

/* May dst be a VIP? Never false for one; see vip_filter. */
static __always_inline int maybe_vip(const struct flow_key *f)
{
	__u32 alen = f->family == XLB_FAMILY_V6 ? 16 : 4;
	__u32 h = murmur_final(hash_addr(XLB_HASH_SEED, f->dst, f->family), alen);
	__u32 word = (h >> 6) & (XLB_VIP_FILTER_WORDS - 1);
	__u64 *bits = bpf_map_lookup_elem(&vip_filter, &word);

	return bits && (*bits & (1ULL << (h & 63)));
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
static __always_inline int longer_than_frame(struct xdp_md *ctx, void *l3, void *end, __u32 len)
{
	if (len <= (__u64)(end - l3))
		return 0;
	return (__u64)(l3 - (void *)(long)ctx->data) + len > bpf_xdp_get_buff_len(ctx);
}

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP,
	PARSE_MALFORMED,
	PARSE_OTHER_PROTO,
};

static __always_inline int parse_ipv4(struct xdp_md *ctx, struct packet *p, void *data, void *end)
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
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return PARSE_OTHER_PROTO;

	__u16 frag = bpf_ntohs(ip->frag_off);
	if (frag & (IP_MF | IP_OFFSET)) {
		p->fragment = 1;
		if (frag & IP_OFFSET) {
			p->later_fragment = 1;
			return PARSE_OK;
		}
	}
	if (parse_l4(p, data + hlen, end, tot - hlen))
		p->l4_truncated = 1;
	return PARSE_OK;
}

/* l2: the offset of data (the IPv6 header) in the frame. */
static __always_inline int parse_ipv6(struct xdp_md *ctx, struct packet *p, void *data, void *end, __u32 l2)
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
		len = bpf_xdp_get_buff_len(ctx) - l2;
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
	if (next != IPPROTO_TCP && next != IPPROTO_UDP)
		return PARSE_OTHER_PROTO;
	if (p->later_fragment)
		return PARSE_OK;
	/* Extension headers past the payload length leave room < 0. */
	if (parse_l4(p, cur, end, (__s64)len - (cur - data)))
		p->l4_truncated = 1;
	return PARSE_OK;
}

static __always_inline int parse(struct xdp_md *ctx, struct packet *p, struct ethhdr **eth_out)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
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

static __always_inline int forward(struct xdp_md *ctx, struct ethhdr *eth, __u32 svc_id,
				   __u32 be_id, struct backend *be, struct packet *p, __u64 new_flow)
{
	__u32 reason = XLB_R_TX;
	int action = XDP_TX;
	__u32 egress = be->ifindex;
	/* Read once: the loader may rewrite the entry meanwhile. */
	__u8 fwd = be->forwarding;
	int rc = TX_OK;

	if (fwd == XLB_FWD_IPIP)
		rc = encap_ipip(ctx, be, flow_hash(&p->flow, XLB_HASH_FLOW), &egress);
	else if (fwd == XLB_FWD_NAT && p->fragment)
		/* Later fragments carry no ports to translate. */
		return verdict(XLB_R_DROP_FRAGMENT, p->len, XDP_DROP);
	else if (fwd == XLB_FWD_NAT)
		rc = nat_forward(ctx, p, be, be_id, svc_id, &egress);
	if (rc != TX_OK)
		return tx_verdict(rc, p->len);
	if (egress != ctx->ingress_ifindex) {
		/* Only records the target; fails when the port is missing. */
		action = bpf_redirect_map(&tx_ports, egress, XDP_DROP);
		if (action != XDP_REDIRECT)
			return verdict(XLB_R_DROP_NO_TX_PORT, p->len, XDP_DROP);
		reason = XLB_R_REDIRECT;
	}
	if (fwd == XLB_FWD_DSR) {
		/* From ctx again: the verifier cannot tell that this path never
		 * moved the frame's start (bpf_xdp_adjust_head). */
		eth = (void *)(long)ctx->data;
		if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
			return verdict(XLB_R_PASS_MALFORMED, p->len, XDP_PASS);
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
 * closed TCP flow whose ports the client opens again (a SYN)? Either way the
 * service's ring places the packet as a new flow.
 */
static __always_inline int flow_gone(const struct flow_value *ct, const struct packet *p, __u32 now)
{
	__u32 zero = 0;
	struct idle_timeouts *t = bpf_map_lookup_elem(&flow_timeouts, &zero);
	__u32 idle;

	if (p->syn && (ct->flags & XLB_FLOW_CLOSING))
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
static __always_inline int steer_established(struct xdp_md *ctx, struct ethhdr *eth, struct packet *p)
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
static __always_inline void bench_next_flow(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
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
static __always_inline void bench_next_flow(struct xdp_md *ctx)
{
}
#endif

/* A new flow (or one whose backend is gone): the service's Maglev table. */
static __always_inline int steer_new(struct xdp_md *ctx, struct ethhdr *eth, struct svc_value *svc,
				     struct packet *p)
{
	__u32 be_id = ring_pick(svc, p);
	struct backend *be = bpf_map_lookup_elem(&backends, &be_id);

	if (!be || be->state != XLB_BE_UP)
		return verdict(XLB_R_DROP_NO_BACKEND, p->len, XDP_DROP);
	/* Non-first fragments carry no ports: the ring alone places them. */
	if (p->later_fragment)
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

SEC("xdp.frags")
int xlb_xdp(struct xdp_md *ctx)
{
	struct packet p = {};
	struct ethhdr *eth = NULL;
	struct svc_value *svc;

	/*
	 * Bytes of the linear part: for a multi-buffer (jumbo) frame the
	 * fragments are not counted; bpf_xdp_get_buff_len would cost a helper
	 * call per packet.
	 */
	p.len = ctx->data_end - ctx->data;

	switch (parse(ctx, &p, &eth)) {
	case PARSE_NOT_IP:
		return verdict(XLB_R_PASS_NOT_IP, p.len, XDP_PASS);
	case PARSE_MALFORMED:
		return verdict(XLB_R_PASS_MALFORMED, p.len, XDP_PASS);
	case PARSE_OTHER_PROTO:
		/* An ICMP error about a NAT flow, to the LB's NAT source? */
		if (!p.fragment && maybe_vip(&p.flow)) {
			int action = nat_icmp(ctx, &p);
			if (action >= 0)
				return action;
		}
		return verdict(XLB_R_PASS_OTHER_PROTO, p.len, XDP_PASS);
	}
	if (!eth)
		return verdict(XLB_R_PASS_MALFORMED, p.len, XDP_PASS);

	/* VIPs, and the addresses NAT flows leave from (their answers). */
	if (!maybe_vip(&p.flow))
		return verdict(XLB_R_PASS_NO_SERVICE, p.len, XDP_PASS);

	if (p.later_fragment || p.l4_truncated) {
		/* No port to read: only the VIP can be recognised. */
		svc = lookup_vip_marker(&p);
		if (!svc)
			return verdict(XLB_R_PASS_NO_SERVICE, p.len, XDP_PASS);
		if (p.l4_truncated)
			return verdict(XLB_R_DROP_TRUNCATED, p.len, XDP_DROP);
		if (svc->id == XLB_NO_ID)
			return verdict(XLB_R_DROP_FRAGMENT, p.len, XDP_DROP);
		/* The marker names the VIP's only service, an ip_hash one. */
		return steer_new(ctx, eth, svc, &p);
	}

	if (!p.fragment) {
		int action = nat_reply(ctx, &p);
		if (action >= 0)
			return action;
		action = steer_established(ctx, eth, &p);
		if (action >= 0)
			return action;
	}

	svc = lookup_service(&p);
	if (!svc)
		return verdict(XLB_R_PASS_NO_SERVICE, p.len, XDP_PASS);
	if (svc->kind == XLB_SVC_L7) {
		count(&service_stats, svc->id, p.len, 0);
		return verdict(XLB_R_PASS_L7, p.len, XDP_PASS);
	}
	if (svc->kind != XLB_SVC_L4)
		return verdict(XLB_R_PASS_NO_SERVICE, p.len, XDP_PASS);
	if (p.fragment && svc->hash != XLB_HASH_IP)
		return verdict(XLB_R_DROP_FRAGMENT, p.len, XDP_DROP);
	return steer_new(ctx, eth, svc, &p);
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
