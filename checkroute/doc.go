// Package checkroute sets up the policy routing that sends a health check
// through a VIP to one backend, as xlb's DSR datapath sends client packets:
// addressed to the VIP, with the backend's MAC address (check_via_vip). A
// backend that lacks the VIP on its loopback passes a check sent to its own
// address yet drops every packet for the VIP; a check through the VIP fails
// there too.
//
// Each path (VIP, backend) gets a slot n in 1..MaxSlots, and with it a
// firewall mark and a routing table, both numbered Base+n (0x786c0001 up),
// and in the kernel:
//
//	ip rule add pref 32000 fwmark Base+n lookup Base+n proto 177
//	ip route replace VIP/32 via BACKEND dev IFACE onlink table Base+n proto 177
//	ip route replace unreachable default table Base+n proto 177
//
// (/128 and ip -6 for IPv6). A check whose socket carries the mark (SO_MARK)
// connects to the VIP through the backend: the kernel resolves the backend's
// neighbour entry, as the datapath does, and sends the SYN to the VIP with
// the backend's MAC. A backend holding the VIP answers from the VIP straight
// to the xlb host's address (DSR); XDP passes that packet (it is not addressed
// to a VIP) and the local stack completes the connection. A backend without
// the VIP drops the SYN (with forwarding off; IPv6 may answer "unreachable")
// and the check fails. IFACE is the backend's egress interface, from the
// same unmarked route lookup the datapath's resolution makes. The unreachable
// default keeps marked packets out of the main table whatever happens to the
// VIP route (its interface removed, the backend not on a connected network):
// such a check fails as "unreachable" instead of reaching the VIP some other
// way, which could be through xlb itself.
//
// Rules and routes carry protocol Protocol (177), the rules priority
// Priority: what Open and Close sweep away is exactly that, in tables
// Base+1..Base+MaxSlots, so that a crashed daemon's leftovers go at the next
// start. One daemon per network namespace may use check_via_vip.
//
// What it cannot do, and reports (Install's errors):
//
//   - the VIP is a local address of the xlb host: the local table's rule
//     (priority 0) comes before any other, so the check would never leave the
//     host (ErrNotThroughBackend);
//   - rp_filter (IPv4): the answer's source is the VIP, and the reverse-path
//     check looks it up without the mark. With rp_filter = 1 the host needs a
//     route to the VIP through the backend's interface, with 2 any route to it;
//     without, every answer is dropped and every check times out
//     (ErrRPFilter). IPv6 has no rp_filter.
package checkroute
