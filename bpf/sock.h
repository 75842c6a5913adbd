/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types of the socket hooks (sock.c) shared with Go: bpf2go generates their
 * Go side (-type), as for xlb.h and decap.h.
 */
#ifndef XLB_SOCK_H
#define XLB_SOCK_H

#include <linux/types.h>

enum sock_limits {
	/* Entries of sock_peers and of sock_flows (LRU: the least recently
	 * used goes when full). */
	XLB_SOCK_MAP_SIZE = 65536,
	/*
	 * Sockets whose SO_MARK is in [BASE, BASE + 0xffff] are xlb's own
	 * checks through a VIP (check_via_vip, package checkroute: Base), which
	 * must reach the VIP itself: never steered.
	 */
	XLB_SOCK_CHECK_MARK_BASE = 0x786c0000,
	XLB_SOCK_CHECK_MARK_MASK = 0xffff0000,
};

/*
 * One socket's view of one address: the socket (its cookie, never reused
 * while the host runs) and an address and port (host order). sock_peers is
 * keyed by the backend a steered socket was sent to, sock_flows by the VIP
 * an unconnected UDP socket sends to.
 */
struct sock_key {
	__u64 cookie;
	__u8 addr[16]; /* IPv4 in the first 4 bytes, rest zero */
	__u16 port;
	__u8 family;   /* enum family */
	__u8 pad[5];
};

/* sock_peers: the VIP and port the application addressed. */
struct sock_peer {
	__u8 addr[16];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/*
 * sock_flows: where an unconnected UDP socket's datagrams to a VIP go, so
 * that they stay on one backend while it is usable (a drain keeps them, as
 * the connection table keeps a UDP flow), until idle past flow_timeouts.udp.
 */
struct sock_flow {
	__u32 backend_id;
	__u32 service_id;
	__u32 seen; /* tick of the last datagram (XLB_FLOW_TICK_SHIFT) */
};

#endif
