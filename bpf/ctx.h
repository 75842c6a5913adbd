/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The program context the steering code (xlb.c and its headers) runs on:
 * XDP's struct xdp_md, or with -DXLB_TC a TC ingress (tcx) program's
 * struct __sk_buff. Everything that differs between the two is here, so the
 * steering source compiles unchanged for both: the frame's bounds and
 * length, where it came in, growing and cutting it, the verdicts, and the
 * transport checksum updates of NAT.
 *
 * At TC ingress the kernel has already taken a VLAN tag out of the frame
 * (skb metadata), and the frame may be a GSO packet: several segments'
 * worth, cut up on its way out (see ctx_gso).
 */
#ifndef XLB_CTX_H
#define XLB_CTX_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "xlb.h"
#include "maps.h"
#include "csum.h"

#ifdef XLB_TC
#include <linux/pkt_cls.h>

typedef struct __sk_buff xlb_ctx;

/* tcx: go on to the next program, or up the stack after the last one. */
#define XLB_PASS TC_ACT_UNSPEC
#define XLB_DROP TC_ACT_SHOT
/* What bpf_redirect returns: the frame leaves by the interface it names. */
#define XLB_REDIRECT TC_ACT_REDIRECT

/*
 * Bytes of headers the program reads and writes in place, which must be in
 * the skb's linear part: Ethernet and a VLAN tag, IPv4 with options or IPv6
 * with some extension headers, and the TCP header, or an ICMP error's
 * quoted headers. Pulled in once per packet, only when the linear part is
 * shorter than this and the packet longer.
 */
#define XLB_TC_HEADERS 128

/*
 * ctx_tx's action, which the entry point turns into the redirect (see
 * ctx_verdict): a helper call amid steering would spill registers, and the
 * whole is near the 512 bytes of stack a BPF function has.
 */
#define XLB_TC_TX 0x100

#else

typedef struct xdp_md xlb_ctx;

#define XLB_PASS XDP_PASS
#define XLB_DROP XDP_DROP
#define XLB_REDIRECT XDP_REDIRECT

#endif

#ifdef XLB_TC
/*
 * A load straight from the context register: left to itself, the compiler
 * may keep &skb->data_end as a pointer and load through it later, which
 * the verifier refuses for an skb (a modified ctx pointer).
 */
#define ctx_field(ctx, field)                                                       \
	({                                                                          \
		long v;                                                             \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                              \
			     : "=r"(v)                                              \
			     : "r"(ctx), "i"(__builtin_offsetof(struct __sk_buff, field))); \
		v;                                                                  \
	})

static __always_inline void *ctx_data(xlb_ctx *ctx)
{
	return (void *)ctx_field(ctx, data);
}

static __always_inline void *ctx_end(xlb_ctx *ctx)
{
	return (void *)ctx_field(ctx, data_end);
}
#else
static __always_inline void *ctx_data(xlb_ctx *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_end(xlb_ctx *ctx)
{
	return (void *)(long)ctx->data_end;
}
#endif

/* The frame's whole length: its linear part and any fragments or pages. */
static __always_inline __u32 ctx_len(xlb_ctx *ctx)
{
#ifdef XLB_TC
	return ctx->len;
#else
	return bpf_xdp_get_buff_len(ctx);
#endif
}

/*
 * The bytes a packet's counters count. XDP: the linear part (of a
 * multi-buffer frame, its first buffer): bpf_xdp_get_buff_len would cost a
 * helper call per packet. TC: the whole skb, a GSO packet's segments
 * included.
 */
static __always_inline __u64 ctx_bytes(xlb_ctx *ctx)
{
#ifdef XLB_TC
	return ctx->len;
#else
	return ctx->data_end - ctx->data;
#endif
}

/* The interface the frame came in by. */
static __always_inline __u32 ctx_ifindex(xlb_ctx *ctx)
{
#ifdef XLB_TC
	return ctx->ifindex;
#else
	return ctx->ingress_ifindex;
#endif
}

/*
 * Did the frame come with a VLAN tag the kernel took out of it (TC: the
 * skb's)? A tag in an XDP frame is in its bytes (struct packet's l3).
 */
static __always_inline int ctx_tagged(xlb_ctx *ctx)
{
#ifdef XLB_TC
	return ctx->vlan_present;
#else
	return 0;
#endif
}

/*
 * Is the frame a GSO packet, whose segments (not the whole) must fit the
 * egress MTU? Never in XDP, which sees frames as they are on the wire
 * (generic XDP sees GSO packets whole, and checks them so).
 */
static __always_inline int ctx_gso(xlb_ctx *ctx)
{
#ifdef XLB_TC
	return ctx->gso_size != 0;
#else
	return 0;
#endif
}

/*
 * Do a GSO packet's segments fit the MTU of interface ifindex (*mtu set to
 * it)? TC only: see ctx_gso.
 */
static __always_inline int ctx_segments_fit(xlb_ctx *ctx, __u32 ifindex, __u32 *mtu)
{
#ifdef XLB_TC
	return bpf_check_mtu(ctx, ifindex, mtu, 0, BPF_MTU_CHK_SEGS) == BPF_MTU_CHK_RET_SUCCESS;
#else
	return 1;
#endif
}

/*
 * Makes sure the frame's first len bytes (at most its length) can be read
 * and written in place: TC pulls them into the skb's linear part, XDP
 * frames have them already (a multi-buffer frame's headers are in its
 * first buffer). Moves the packet: reload pointers from ctx after.
 */
static __always_inline void ctx_pull(xlb_ctx *ctx, __u32 len)
{
#ifdef XLB_TC
	if (len > ctx->len)
		len = ctx->len;
	if (ctx_data(ctx) + len > ctx_end(ctx))
		bpf_skb_pull_data(ctx, len);
#endif
}

/*
 * Rebuilds the frame's start grow bytes longer: the bytes from the L3
 * header on move grow bytes further in, and the caller writes everything
 * before them (Ethernet header included). XDP moves the frame's start; TC
 * inserts room after the Ethernet header (encap: the outer header's
 * BPF_F_ADJ_ROOM_ENCAP_L3_* flag, so GSO cuts segments that fit as before,
 * or 0) and drops the skb's VLAN tag, as XDP's rewrite drops a tag in the
 * frame. 0 when done.
 */
static __always_inline int ctx_grow(xlb_ctx *ctx, __u32 grow, __u64 encap)
{
#ifdef XLB_TC
	if (ctx->vlan_present && bpf_skb_vlan_pop(ctx))
		return -1;
	return bpf_skb_adjust_room(ctx, grow, BPF_ADJ_ROOM_MAC, encap);
#else
	return bpf_xdp_adjust_head(ctx, -(int)grow);
#endif
}

/* Cuts the frame to len bytes, if longer; 0 when done. */
static __always_inline int ctx_cut(xlb_ctx *ctx, __u32 len)
{
#ifdef XLB_TC
	return ctx->len > len && bpf_skb_change_tail(ctx, len, 0);
#else
	int excess = (int)bpf_xdp_get_buff_len(ctx) - (int)len;

	return excess > 0 && bpf_xdp_adjust_tail(ctx, -excess);
#endif
}

/*
 * The action that sends the frame back out of the interface it came in by
 * (XDP_TX; TC: a redirect to that interface's egress).
 */
static __always_inline int ctx_tx(xlb_ctx *ctx)
{
#ifdef XLB_TC
	return XLB_TC_TX;
#else
	return XDP_TX;
#endif
}

/* What the program returns for the action steering chose (see ctx_tx). */
static __always_inline int ctx_verdict(xlb_ctx *ctx, int action)
{
#ifdef XLB_TC
	if (action == XLB_TC_TX)
		return bpf_redirect(ctx->ifindex, 0);
#endif
	return action;
}

/*
 * The action that sends the frame out of interface ifindex: XLB_REDIRECT,
 * or XLB_DROP when it cannot go there. XDP redirects through the tx_ports
 * devmap, which holds the interfaces the loader resolved; TC redirects to
 * any interface.
 */
static __always_inline int ctx_redirect(xlb_ctx *ctx, __u32 ifindex)
{
#ifdef XLB_TC
	return bpf_redirect(ifindex, 0);
#else
	return bpf_redirect_map(&tx_ports, ifindex, XDP_DROP);
#endif
}

/*
 * The TCP or UDP checksum at check (in the frame, the last bytes the caller
 * writes) after the changes summed in acc, of which pseudo were to the
 * addresses of the pseudo-header. UDP's 0 (none sent) stays 0, a computed
 * 0 is sent as 0xffff. 0 when done.
 *
 * XDP frames carry full checksums: csum.h's incremental update. An skb's
 * checksum may be left for the NIC to finish (CHECKSUM_PARTIAL: the field
 * holds the pseudo-header's sum only) or come with the sum of the whole
 * packet (CHECKSUM_COMPLETE), which must follow the change:
 * bpf_l4_csum_replace knows which and does each right.
 */
static __always_inline int ctx_l4_csum(xlb_ctx *ctx, __u16 *check, __u64 acc, __u64 pseudo,
				       __u8 proto, __u8 family)
{
#ifdef XLB_TC
	__u32 off = (void *)check - ctx_data(ctx);
	__u64 flags = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (family == XLB_FAMILY_V6)
		flags |= BPF_F_IPV6;
	long rc = bpf_l4_csum_replace(ctx, off, 0, csum_fold32(pseudo), flags | BPF_F_PSEUDO_HDR);

	if (rc && (flags & BPF_F_IPV6)) {
		/* A kernel before BPF_F_IPV6 (6.16): the field comes out
		 * right, the sum of a CHECKSUM_COMPLETE skb does not. */
		flags &= ~BPF_F_IPV6;
		rc = bpf_l4_csum_replace(ctx, off, 0, csum_fold32(pseudo), flags | BPF_F_PSEUDO_HDR);
	}
	if (rc)
		return -1;
	return bpf_l4_csum_replace(ctx, off, 0, csum_fold32(acc - pseudo), flags);
#else
	if (proto == IPPROTO_UDP)
		csum_apply_udp(check, acc);
	else
		csum_apply(check, acc);
	return 0;
#endif
}

#endif
