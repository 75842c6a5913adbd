/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared between the XDP datapath and the Go loader. bpf2go generates the
 * Go side of every struct and enum here (-type), so this file is the single
 * definition of the user/kernel boundary.
 */
#ifndef XLB_H
#define XLB_H

#include <linux/types.h>

/* Sizes and constants; an enum so bpf2go hands them to Go too. */
enum limits {
	XLB_MAX_SERVICES = 1024, /* service ids: [0, XLB_MAX_SERVICES) */
	/* backend ids: [0, XLB_MAX_BACKENDS); the loader resizes backends and
	 * backend_stats to [datapath] max_backends */
	XLB_MAX_BACKENDS = 16384,
	XLB_MAX_SVC_KEYS = 4096, /* services map: services plus VIP markers */
	/* resized by the loader to [datapath] conntrack_size, as are
	 * nat_flows and nat_bindings */
	XLB_CONNTRACK_SIZE = 262144,
	/* reason_stats slots: more than enum reason has, so that new reasons
	 * keep the pinned map compatible */
	XLB_REASON_SLOTS = 32,
	/* source ports a new NAT flow tries before it is dropped as
	 * exhaustion (see nat.h) */
	XLB_NAT_PROBES = 24,
	/* ICMP errors a CPU may send at once; one more each 2^20 ns (~1 ms) */
	XLB_ICMP_BURST = 64,
	/* NAT rewrites transport headers starting within this many bytes of
	 * the frame (IPv6 extension headers may push one further) */
	XLB_MAX_L4_OFFSET = 512,
	XLB_MAX_L2_LEN = 18, /* Ethernet and one VLAN tag */
	XLB_ICMP_REFILL_SHIFT = 20,
	/* flow_value.seen and flow_timeouts count ticks of 2^30 ns (1.07 s) */
	XLB_FLOW_TICK_SHIFT = 30,
	/*
	 * Ticks a closing TCP flow (FIN or RST seen) must be silent before a
	 * SYN on its ports is a new connection, and before a drain stops
	 * waiting for it: a FIN may be a half-close with data still flowing,
	 * and an RST may be forged, so neither ends a flow that goes on.
	 */
	XLB_CLOSING_QUIET_TICKS = 2,
	XLB_MAX_TX_PORTS = 64,
	XLB_NAME_LEN = 48,
	/* vip_filter: 2^16 bits, one per hash of a VIP address */
	XLB_VIP_FILTER_WORDS = 1024,
	/* murmur3_x86_32 seed of "xlb hash v1"; maglev.HashSeed in Go. */
	XLB_HASH_SEED = 0x786c6231,
	XLB_NO_ID = 0xffffffff, /* no service / backend */
};

enum family {
	XLB_FAMILY_V4 = 4,
	XLB_FAMILY_V6 = 6,
};

/* What a services map entry is. */
enum svc_kind {
	/* Forwarded by XDP to a backend. */
	XLB_SVC_L4 = 1,
	/* Passed to the local stack, where the Go proxy listens. */
	XLB_SVC_L7 = 2,
	/*
	 * A (VIP, port 0, protocol) marker written for every VIP and protocol that
	 * has an L4 service. It lets the datapath recognise packets for an L4 VIP
	 * whose port it cannot read: non-first fragments and truncated transport
	 * headers. id is the service such fragments belong to, or XLB_NO_ID when
	 * that is ambiguous (several services) or unsafe (flow_hash).
	 */
	XLB_SVC_VIP = 3,
};

enum hash_mode {
	XLB_HASH_IP = 0,   /* source address only */
	XLB_HASH_FLOW = 1, /* 5-tuple */
};

enum backend_state {
	XLB_BE_UNUSED = 0,     /* free id */
	XLB_BE_UP = 1,         /* in the rings, gets new and old flows */
	XLB_BE_DRAINING = 2,   /* out of the rings, keeps its conntrack flows */
	XLB_BE_DOWN = 3,       /* out of the rings, its conntrack entries ignored */
	XLB_BE_UNRESOLVED = 4, /* no MAC/egress known: treated as down */
};


/*
 * Why the program returned what it returned. The verdict follows from the
 * reason (see xlb_reason_verdict in Go). Indexes into reason_stats.
 */
enum reason {
	XLB_R_TX = 0,             /* XDP_TX to a backend on the receiving interface */
	XLB_R_REDIRECT = 1,       /* XDP_REDIRECT to a backend via tx_ports */
	XLB_R_PASS_NOT_IP = 2,    /* not IPv4/IPv6 (ARP, LLDP, double VLAN tag, ...) */
	XLB_R_PASS_MALFORMED = 3, /* truncated or malformed L2/L3 header */
	XLB_R_PASS_OTHER_PROTO = 4, /* neither TCP nor UDP (ICMP, ...) */
	XLB_R_PASS_NO_SERVICE = 5,  /* not addressed to a service */
	XLB_R_PASS_L7 = 6,          /* L7 service: handed to the local proxy */
	XLB_R_DROP_NO_BACKEND = 7,  /* L4 service without a usable backend */
	XLB_R_DROP_TRUNCATED = 8,   /* L4 VIP, transport header truncated/malformed */
	XLB_R_DROP_FRAGMENT = 9,    /* L4 VIP fragment that cannot be steered safely */
	XLB_R_DROP_NO_TX_PORT = 10, /* egress interface missing from tx_ports */
	/* ipip: too big for the egress MTU once encapsulated; the packet was
	 * turned into ICMP "fragmentation needed" / ICMPv6 "packet too big"
	 * and sent back to the client (XDP_TX) */
	XLB_R_ICMP_TOO_BIG = 11,
	XLB_R_DROP_TOO_BIG = 12,    /* ipip: too big, and no ICMP allowed (IPv4 without DF) */
	XLB_R_DROP_NO_ROUTE = 13,   /* ipip: the FIB says the backend is unreachable */
	XLB_R_DROP_ENCAP = 14,      /* ipip: no room to add the outer header */
	/* nat: a backend's answer (or an ICMP error about a NAT flow)
	 * translated back to VIP -> client and sent on */
	XLB_R_NAT_REPLY_TX = 15,
	XLB_R_NAT_REPLY_REDIRECT = 16,
	/* nat: no free source port among those probed, or a NAT table full */
	XLB_R_DROP_NAT_PORTS = 17,
	/* ipip, nat: too big, and this CPU's ICMP error budget is spent
	 * (XLB_ICMP_BURST, refilled at about 1000/s: as Linux limits its own) */
	XLB_R_DROP_ICMP_RATE = 18,
	/* nat: a VLAN-tagged client packet (NAT sends untagged only) */
	XLB_R_DROP_NAT_VLAN = 19,
	XLB_R_MAX = 20,
};

/* How an L4 service's packets reach its backends (struct backend). */
enum forwarding {
	/* L2 direct server return: only the Ethernet addresses change. */
	XLB_FWD_DSR = 0,
	/*
	 * Tunnel DSR: the packet inside an outer IPv4 (IP-in-IP) or IPv6
	 * (IPv6-in-IPv6) header to the backend, which may sit behind routers;
	 * next hop from the kernel's FIB (see ipip.h).
	 */
	XLB_FWD_IPIP = 1,
	/*
	 * Full NAT: client -> VIP:port leaves as source -> backend:port, with
	 * source the LB's address (backend.src) and a port allocated per
	 * flow; the backend's answers come back to the LB and are translated
	 * to VIP -> client (nat.h).
	 */
	XLB_FWD_NAT = 2,
};

struct svc_key {
	__u8 addr[16]; /* IPv4 in the first 4 bytes, rest zero */
	__u16 port;    /* host byte order (bpftool shows 80 as 80); 0: VIP marker */
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;   /* enum family */
};

struct svc_value {
	__u32 id;        /* index into rings, service_stats, service_info */
	__u32 ring_size; /* Maglev M of this service's ring */
	__u8 kind;       /* enum svc_kind */
	__u8 hash;       /* enum hash_mode */
	__u8 pad[2];
};

struct backend {
	__u8 addr[16];
	__u32 ifindex;    /* egress interface */
	__u32 service_id; /* owning service (for tooling) */
	__u16 weight;     /* configured weight (for tooling) */
	__u8 mac[6];      /* destination MAC */
	__u8 smac[6];     /* source MAC: the egress interface's */
	__u8 family;
	__u8 state;       /* enum backend_state */
	__u8 forwarding;  /* enum forwarding; the service's */
	__u8 pad;
	__u16 port;       /* nat: the backend's port (host order) */
	/*
	 * nat: the source address of translated packets (the LB's).
	 * ipip: the outer source address. The bits of src_hash_mask (host
	 * order, over the address's last 32 bits) are replaced by the flow's
	 * hash, so that each flow has its own source within a prefix the
	 * operator set aside (ipip_source_prefix) and a backend's receive
	 * hashing (RSS) spreads flows over its queues. Mask 0: src as is.
	 */
	__u8 src[16];
	__u32 src_hash_mask;
};

struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport; /* host byte order */
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

/*
 * A TCP flow's state as the client's packets show it (DSR: the LB never sees
 * the backend's). Neither bit: only the SYN was seen. UDP flows keep 0.
 */
enum flow_flags {
	XLB_FLOW_CLOSING = 1,     /* the client sent FIN or RST */
	XLB_FLOW_ESTABLISHED = 2, /* the client sent an ACK without SYN */
};

struct flow_value {
	__u32 backend_id;
	__u16 service_id; /* for the counters of an established flow */
	__u16 flags;      /* enum flow_flags */
	__u32 packets;    /* packets seen, wrapping */
	/*
	 * Tick (bpf_ktime_get_coarse_ns >> XLB_FLOW_TICK_SHIFT) of the last
	 * packet: an entry idle longer than its state's flow_timeouts is gone.
	 * The last-seen tick is the later of seen and idle_timeouts.seen_floor
	 * (the daemon's start), so a build before timeouts (seen 0, this was
	 * padding) ages from the start that found it, with no write to it.
	 */
	__u32 seen;
	__u64 created_ns; /* bpf_ktime_get_coarse_ns at the first packet */
};

/*
 * Idle timeouts of connection table entries in ticks, by protocol and TCP
 * state; 0 never expires. The one entry of the flow_timeouts map, written
 * by the daemon from [datapath] (a reload changes it in place).
 */
struct idle_timeouts {
	__u32 tcp_syn;
	__u32 tcp_established;
	__u32 tcp_closing;
	__u32 udp;
	/*
	 * Tick of the daemon's start: no entry counts as seen before it, so a
	 * restart counts as a packet of every flow (no early expiry across
	 * restarts, upgrades or downgrades; seen 0 expires in time).
	 */
	__u32 seen_floor;
};

struct counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows; /* conntrack entries created */
};

/*
 * nat: the source ports new NAT flows are given, [first, first + count),
 * and those answers are looked for on, [reply_first, reply_first +
 * reply_count): the range, widened to cover an earlier one while flows
 * hold its ports (the daemon narrows it once none do). The one entry of
 * the nat_ports map; count 0 turns new NAT flows away.
 */
struct nat_port_range {
	__u16 first;
	__u16 reply_first;
	__u32 count;
	__u32 reply_count;
};

/*
 * nat: a client flow's translation, keyed by its flow_key as the client
 * sends it. The backend's answers find it through nat_bindings.
 */
struct nat_flow {
	__u32 backend_id;
	__u16 port; /* the allocated source port (host order) */
	__u16 pad;
};

/*
 * nat: one allocated source port, keyed by the flow_key of the backend's
 * answers (backend:port -> LB source:allocated port), so a reply is looked
 * up by the key its own header gives.
 */
struct nat_binding {
	struct flow_key client; /* client -> VIP:port, as the client sends it */
	__u32 backend_id;
	__u16 service_id;
	__u16 flags; /* enum flow_flags, from both directions */
	__u32 seen;  /* tick of the last packet, either direction */
	/*
	 * Where the client's first packet came from: the answers' next hop
	 * when the FIB cannot give one (no neighbour entry, forwarding off).
	 */
	__u32 client_ifindex;
	__u8 client_mac[6]; /* its source MAC */
	__u8 local_mac[6];  /* its destination MAC (the receiving interface) */
};

/* Not read by the datapath: lets `xlb status` and bpftool name things. */
struct svc_info {
	char name[XLB_NAME_LEN];
	struct svc_key key;
	__u32 ring_size;
	__u8 kind;
	__u8 hash;
	__u8 forwarding; /* enum forwarding; L4 only */
	__u8 pad;
};

#endif
