/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet parsing shared by xlb's BPF programs: the XDP datapath (xlb.c) and
 * the backends' tunnel decapsulation (decap.c).
 */
#ifndef XLB_PARSE_H
#define XLB_PARSE_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>

/* IPv4 frag_off bits, host order. */
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/*
 * Walks an Ethernet header and at most one VLAN tag (802.1Q or 802.1ad):
 * returns where the L3 header starts (14 or 18 bytes in) and sets *proto to
 * its protocol (network order); -1 when the frame ends first. An offset,
 * not a pointer: the verifier bounds a constant, not a pointer difference.
 */
static __always_inline int parse_eth(void *data, void *end, __be16 *proto)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return -1;
	*proto = eth->h_proto;
	if (eth->h_proto != bpf_htons(ETH_P_8021Q) && eth->h_proto != bpf_htons(ETH_P_8021AD))
		return sizeof(*eth);

	struct vlan_hdr *vlan = (void *)(eth + 1);
	if ((void *)(vlan + 1) > end)
		return -1;
	*proto = vlan->proto;
	return sizeof(*eth) + sizeof(*vlan);
}

#endif
