//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xlb socket hooks: connections the xlb host itself makes to an L4 VIP
 * never cross the XDP program (it sees only what arrives on its interface),
 * so these cgroup socket-address programs steer them where they start: a
 * connect() (TCP, connected UDP) or sendto() (unconnected UDP) to an L4
 * service's VIP and port goes to a backend picked from the service's Maglev
 * ring, once per connection, straight to the backend's own address (the
 * service port; for nat the backend's port). recvmsg and getpeername show
 * the application the VIP again. Only sockets of the daemon's network
 * namespace are steered, and never xlb's own checks through a VIP (their
 * SO_MARK, see sock.h).
 *
 * The pick is the XDP program's: the service's ring at flow_hash(key) %
 * ring_size, a backend in state UP. The key's source is the unspecified
 * address for ip_hash (the host is one client: all its connections to a
 * service share a backend) and the socket's cookie for flow_hash (its 8
 * bytes, little-endian, in place of the source address; for IPv4 the
 * first 4), with the VIP, port 0 as source port, the service port and the
 * protocol. No usable backend: the connect or send fails at once with
 * ECONNREFUSED (as from a host with nothing listening) rather than waiting
 * on a VIP that nothing here answers.
 */
#include <linux/bpf.h>
#include <linux/errno.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xlb.h"
#include "maps.h"
#include "hash.h"
#include "sock.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Keep the enum in BTF so bpf2go can emit it. */
const enum sock_limits *unused_sock_limits __attribute__((unused));

/* bpf_get_netns_cookie of the namespace steered (the daemon's); the loader sets it. */
volatile const __u64 netns_cookie = 0;

/* A steered socket's backend -> the VIP it addressed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XLB_SOCK_MAP_SIZE);
	__type(key, struct sock_key);
	__type(value, struct sock_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_peers SEC(".maps");

/* An unconnected UDP socket's VIP -> its backend. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XLB_SOCK_MAP_SIZE);
	__type(key, struct sock_key);
	__type(value, struct sock_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sock_flows SEC(".maps");

/* An address as the datapath keys it: IPv4 (also IPv4-mapped IPv6, from a
 * dual-stack socket) in the first word. Below, v6 is the hook's family, a
 * constant in each program: the verifier refuses an IPv4 hook any access
 * to user_ip6, even on a branch never taken. */
struct dest {
	__u32 addr[4];
	__u16 port; /* host order */
	__u8 family;
};

static __always_inline void read_dest(struct bpf_sock_addr *ctx, int v6, struct dest *d)
{
	d->port = bpf_ntohs((__u16)ctx->user_port);
	if (!v6) {
		d->addr[0] = ctx->user_ip4;
		d->family = XLB_FAMILY_V4;
		return;
	}
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {
		d->addr[0] = w3;
		d->family = XLB_FAMILY_V4;
		return;
	}
	d->addr[0] = w0;
	d->addr[1] = w1;
	d->addr[2] = w2;
	d->addr[3] = w3;
	d->family = XLB_FAMILY_V6;
}

/* Writes addr (family's layout) and port in the socket's own form. */
static __always_inline void write_dest(struct bpf_sock_addr *ctx, int v6, const __u32 *addr, __u8 family,
				       __u16 port)
{
	if (!v6) {
		ctx->user_ip4 = addr[0];
	} else if (family == XLB_FAMILY_V4) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = addr[0];
	} else {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	}
	ctx->user_port = bpf_htons(port);
}

static __always_inline void sock_key_of(struct sock_key *k, __u64 cookie, const __u32 *addr, __u16 port, __u8 family)
{
	k->cookie = cookie;
	__builtin_memcpy(k->addr, addr, 16);
	k->port = port;
	k->family = family;
}

static __always_inline struct svc_value *l4_service(const struct dest *d, __u8 proto)
{
	struct svc_key key = {};

	__builtin_memcpy(key.addr, d->addr, 16);
	key.port = d->port;
	key.proto = proto;
	key.family = d->family;
	struct svc_value *svc = bpf_map_lookup_elem(&services, &key);
	/* Port 0 is a VIP marker (XLB_SVC_VIP); L7 VIPs are the local proxy's. */
	return svc && svc->kind == XLB_SVC_L4 ? svc : NULL;
}

/* The service's Maglev pick for this socket (see the top of the file). */
static __always_inline __u32 sock_ring_pick(struct bpf_sock_addr *ctx, struct svc_value *svc,
					    const struct dest *d, __u8 proto)
{
	struct flow_key f __attribute__((aligned(8))) = {};
	__u32 id = svc->id;
	__u32 size = svc->ring_size;
	__u8 mode = svc->hash;
	void *ring = bpf_map_lookup_elem(&rings, &id);

	if (!ring || size == 0)
		return XLB_NO_ID;
	if (mode == XLB_HASH_FLOW) {
		__u64 cookie = bpf_get_socket_cookie(ctx);
		__builtin_memcpy(f.src, &cookie, 8);
	}
	__builtin_memcpy(f.dst, d->addr, 16);
	f.dport = d->port;
	f.proto = proto;
	f.family = d->family;
	__u32 slot = flow_hash(&f, mode) % size;
	__u32 *be = bpf_map_lookup_elem(ring, &slot);

	return be ? *be : XLB_NO_ID;
}

static __always_inline __u32 now_tick(void)
{
	return bpf_ktime_get_coarse_ns() >> XLB_FLOW_TICK_SHIFT;
}

/*
 * The backend an unconnected UDP socket's earlier datagrams to d went to,
 * while it is usable (up or draining) and the flow not idle past the UDP
 * timeout; NULL: place it anew.
 */
static __always_inline struct backend *udp_flow(const struct sock_key *k, __u32 svc_id, __u32 *be_id)
{
	struct sock_flow *fl = bpf_map_lookup_elem(&sock_flows, k);
	__u32 zero = 0;

	if (!fl || fl->service_id != svc_id)
		return NULL;
	__u32 now = now_tick();
	struct idle_timeouts *t = bpf_map_lookup_elem(&flow_timeouts, &zero);
	if (t && t->udp && (__s32)(now - fl->seen) > (__s32)t->udp)
		return NULL;
	__u32 id = fl->backend_id;
	struct backend *be = bpf_map_lookup_elem(&backends, &id);
	if (!be || be->service_id != svc_id || (be->state != XLB_BE_UP && be->state != XLB_BE_DRAINING))
		return NULL;
	if (fl->seen != now)
		fl->seen = now;
	*be_id = id;
	return be;
}

static __always_inline void count_new_flow(void *map, __u32 idx)
{
	struct counters *c = bpf_map_lookup_elem(map, &idx);

	if (c)
		c->new_flows++;
}

/* connect (unconnected 0) or sendmsg (1): 1 lets the call go on, 0 fails it. */
static __always_inline int steer(struct bpf_sock_addr *ctx, int v6, int unconnected)
{
	__u8 proto = ctx->protocol;
	struct bpf_sock *sk = ctx->sk;
	struct dest d = {};

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	if (bpf_get_netns_cookie(ctx) != netns_cookie)
		return 1;
	if (!sk || (sk->mark & XLB_SOCK_CHECK_MARK_MASK) == XLB_SOCK_CHECK_MARK_BASE)
		return 1;
	read_dest(ctx, v6, &d);
	struct svc_value *svc = l4_service(&d, proto);
	if (!svc)
		return 1;

	__u32 svc_id = svc->id;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_key k = {};
	__u32 be_id = XLB_NO_ID;
	struct backend *be = NULL;

	if (unconnected) {
		sock_key_of(&k, cookie, d.addr, d.port, d.family);
		be = udp_flow(&k, svc_id, &be_id);
	}
	int placed = !be;
	if (!be) {
		be_id = sock_ring_pick(ctx, svc, &d, proto);
		be = bpf_map_lookup_elem(&backends, &be_id);
		if (!be || be->state != XLB_BE_UP || be->family != d.family) {
			bpf_set_retval(-ECONNREFUSED);
			return 0;
		}
		if (unconnected) {
			struct sock_flow fl = {.backend_id = be_id, .service_id = svc_id, .seen = now_tick()};
			bpf_map_update_elem(&sock_flows, &k, &fl, BPF_ANY);
		}
	}

	__u32 addr[4];
	__builtin_memcpy(addr, be->addr, 16);
	__u16 port = be->forwarding == XLB_FWD_NAT ? be->port : d.port;
	struct sock_peer peer = {.port = d.port, .family = d.family};
	__builtin_memcpy(peer.addr, d.addr, 16);
	sock_key_of(&k, cookie, addr, port, d.family);
	bpf_map_update_elem(&sock_peers, &k, &peer, BPF_ANY);
	write_dest(ctx, v6, addr, d.family, port);
	if (placed) {
		count_new_flow(&service_stats, svc_id);
		count_new_flow(&backend_stats, be_id);
	}
	return 1;
}

/* recvmsg, getpeername: a steered socket's backend reads as the VIP. */
static __always_inline int unsteer(struct bpf_sock_addr *ctx, int v6)
{
	struct dest d = {};
	struct sock_key k = {};

	read_dest(ctx, v6, &d);
	sock_key_of(&k, bpf_get_socket_cookie(ctx), d.addr, d.port, d.family);
	struct sock_peer *p = bpf_map_lookup_elem(&sock_peers, &k);
	if (p) {
		__u32 addr[4];
		__builtin_memcpy(addr, p->addr, 16);
		write_dest(ctx, v6, addr, p->family, p->port);
	}
	return 1;
}

SEC("cgroup/connect4")
int xlb_connect4(struct bpf_sock_addr *ctx)
{
	return steer(ctx, 0, 0);
}

SEC("cgroup/connect6")
int xlb_connect6(struct bpf_sock_addr *ctx)
{
	return steer(ctx, 1, 0);
}

SEC("cgroup/sendmsg4")
int xlb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return steer(ctx, 0, 1);
}

SEC("cgroup/sendmsg6")
int xlb_sendmsg6(struct bpf_sock_addr *ctx)
{
	return steer(ctx, 1, 1);
}

SEC("cgroup/recvmsg4")
int xlb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return unsteer(ctx, 0);
}

SEC("cgroup/recvmsg6")
int xlb_recvmsg6(struct bpf_sock_addr *ctx)
{
	return unsteer(ctx, 1);
}

SEC("cgroup/getpeername4")
int xlb_getpeername4(struct bpf_sock_addr *ctx)
{
	return unsteer(ctx, 0);
}

SEC("cgroup/getpeername6")
int xlb_getpeername6(struct bpf_sock_addr *ctx)
{
	return unsteer(ctx, 1);
}
