// Package checkroute sets up the policy routing that sends a health check
// through a VIP to one backend, as xlb's DSR datapath sends client packets:
// addressed to the VIP, with the backend's MAC address (check_via_vip). A
// backend that lacks the VIP on its loopback passes a check sent to its own
// address yet drops every packet for the VIP; a check through the VIP fails
// there too.
//
// Each path (VIP, backend) gets a slot n in 1..MaxSlots of its daemon's
// range g (below), and with it a firewall mark and a routing table, both
// numbered T = Base + g<<12 + n (0x786c0001 up), and in the kernel:
//
//	ip rule add pref 32000 fwmark T lookup T proto 177
//	ip route replace VIP/32 via BACKEND dev IFACE onlink table T proto 177
//	ip route replace unreachable default table T proto 177
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
// Priority. Ownership: the tables Base+1..Base+0xffff are split into Ranges
// ranges of MaxSlots, and a daemon owns range g while it holds the abstract
// unix socket "@xlb-checkroute-g" bound in the network namespace (Open binds
// it, Close releases it, and it goes with the process when a daemon is
// killed). Abstract sockets belong to the network namespace, like the rules,
// so daemons with different pin directories or mount namespaces never share
// a range. A daemon tries its Instance's range first (a hash of its pin
// directory), so a restart usually finds its range again. Open removes the
// rules (priority and protocol as above) and routes (protocol 177) in the
// tables of every range that no live daemon holds, its own included, which
// removes a killed daemon's leftovers whichever range it had; Close removes
// its own range's. Nothing in another live daemon's range is touched. Up to
// Ranges daemons of one network namespace may use check_via_vip.
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
