#!/usr/bin/env bash
# cluster.sh - network-namespace topology for several xlb nodes behind a BGP
# router with ECMP (see README "Several nodes").
#
# Usage:
#   cluster.sh up PREFIX             build it (removes a stale one first)
#   cluster.sh down PREFIX           tear it down (idempotent)
#   cluster.sh bird-conf PREFIX HOLD print the router's bird2 config (nodes as
#                                    passive eBGP peers, hold time HOLD seconds)
#
# Environment (for "up" and "bird-conf"):
#   NNODES     xlb nodes, 1..8            (default 3)
#   NBACKENDS  backends, 1..9             (default 3)
#   NCLIENTS   client addresses, 1..150   (default 100)
#
# PREFIX is 1..6 letters/digits. Nothing lives in the root namespace.
#
#   client PREFIX-cl ---- PREFIX-rt router ---- br0 (in PREFIX-br) ---- nodes PREFIX-n1..nN
#                                                                  `--- backends PREFIX-b1..bM
#
# Addresses (only these, never routed outside the namespaces):
#   router     eth0 198.18.0.1/24 (on br0), eth1 198.18.2.1/24 (towards the client)
#   node i     198.18.0.(1+i)/24      i.e. n1 .2, n2 .3, n3 .4
#   backend i  198.18.0.(10+i)/24     the VIP 198.19.0.10/32 on lo, default route via
#              the router (direct server return: answers go to the client through it)
#   client     198.18.2.100 .. 198.18.2.(100+NCLIENTS-1), default route via the router
#   Nodes and backends have arp_ignore=1 and arp_announce=2: nobody answers ARP for the
#   VIP. The router forwards, without rp_filter, and hashes multipath routes on the
#   5-tuple (net.ipv4.fib_multipath_hash_policy=1), so one client's connections
#   spread over the nodes. It learns the VIP from the nodes over BGP (bird2, started
#   by the caller with the config bird-conf prints); "merge paths" in bird's kernel
#   protocol installs one multipath route with a next hop per node.
#
# Veth peers in PREFIX-br are PREFIX + HOST + "p" (e.g. xc1n1p). "down" stops every
# process still running in the namespaces (SIGTERM by PID, SIGKILL after 2 s), then
# deletes the namespaces.

set -euo pipefail

# The namespace helpers (die, check_prefix, stop_pids, new_ns, plug,
# no_arp_flux, cmd_down, undo_failed_up) and VIP4 are topology.sh's.
# shellcheck source=topology.sh
source "$(dirname "${BASH_SOURCE[0]}")/topology.sh"

readonly RT4=198.18.0.1
readonly RTCL4=198.18.2.1
readonly ROUTER_ASN=64500
readonly NODE_ASN=64512

usage() {
	echo "usage: $prog up|down PREFIX | $prog bird-conf PREFIX HOLD" >&2
	exit 2
}

counts() {
	nn=${NNODES:-3} nb=${NBACKENDS:-3} nc=${NCLIENTS:-100}
	[[ $nn =~ ^[1-8]$ ]] || die "NNODES=$nn: want 1..8"
	[[ $nb =~ ^[1-9]$ ]] || die "NBACKENDS=$nb: want 1..9"
	[[ $nc =~ ^[0-9]+$ ]] && ((nc >= 1 && nc <= 150)) || die "NCLIENTS=$nc: want 1..150"
}

# topology_namespaces PREFIX replaces topology.sh's, whose cmd_down (and so
# undo_failed_up) tears down what it lists: this cluster's namespaces, bridge
# first.
topology_namespaces() {
	local p=$1 names
	names=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${p}-(br|cl|rt|n[0-9]+|b[0-9]+)$" || true)
	grep -x "${p}-br" <<<"$names" || true
	grep -vx "${p}-br" <<<"$names" || true
}

cmd_up() {
	local p=$1 i ns
	counts
	cmd_down "$p"
	trap "undo_failed_up $p" EXIT

	new_ns "$p-br"
	ip -n "$p-br" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
	ip -n "$p-br" link set br0 up

	# Router: on br0 and towards the client.
	new_ns "$p-rt"
	plug "$p" rt
	ip -n "$p-rt" addr add "$RT4/24" dev eth0
	new_ns "$p-cl"
	ip -n "$p-rt" link add eth1 type veth peer name eth0 netns "$p-cl"
	ip -n "$p-rt" link set eth1 up
	ip -n "$p-rt" addr add "$RTCL4/24" dev eth1
	ip netns exec "$p-rt" sysctl -qw net.ipv4.ip_forward=1 \
		net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
		net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.eth1.rp_filter=0 \
		net.ipv4.fib_multipath_hash_policy=1

	# Client: many source addresses, everything via the router.
	ip -n "$p-cl" link set eth0 up
	for ((i = 0; i < nc; i++)); do
		echo "addr add 198.18.2.$((100 + i))/24 dev eth0"
	done | ip -n "$p-cl" -batch -
	ip -n "$p-cl" route add default via "$RTCL4"

	# Nodes.
	for ((i = 1; i <= nn; i++)); do
		ns=$p-n$i
		new_ns "$ns"
		plug "$p" "n$i"
		ip -n "$ns" addr add "198.18.0.$((1 + i))/24" dev eth0
		no_arp_flux "$ns"
	done

	# Backends.
	for ((i = 1; i <= nb; i++)); do
		ns=$p-b$i
		new_ns "$ns"
		plug "$p" "b$i"
		ip -n "$ns" addr add "198.18.0.$((10 + i))/24" dev eth0
		ip -n "$ns" addr add "$VIP4/32" dev lo
		ip -n "$ns" route add default via "$RT4"
		no_arp_flux "$ns"
	done

	trap - EXIT
	local names="$p-br,$p-rt,$p-cl"
	for ((i = 1; i <= nn; i++)); do names+=",$p-n$i"; done
	for ((i = 1; i <= nb; i++)); do names+=",$p-b$i"; done
	printf 'cluster %s up ns=%s router=%s nodes=198.18.0.2-198.18.0.%d backends=198.18.0.11-198.18.0.%d vip=%s clients=198.18.2.100-198.18.2.%d\n' \
		"$p" "$names" "$RT4" $((1 + nn)) $((10 + nb)) "$VIP4" $((100 + nc - 1))
}

cmd_bird_conf() {
	local hold=$2 i
	counts
	[[ $hold =~ ^[0-9]+$ ]] && ((hold >= 3)) || die "HOLD=$hold: want 3 or more seconds"
	cat <<EOF
# bird2 config of the cluster's router ($prog bird-conf)
router id $RT4;
log stderr all;

protocol device {
	scan time 10;
}

# One kernel route per prefix, with a next hop for every node announcing it.
protocol kernel {
	merge paths on;
	ipv4 {
		import none;
		export all;
	};
}
EOF
	for ((i = 1; i <= nn; i++)); do
		cat <<EOF

protocol bgp n$i {
	local $RT4 as $ROUTER_ASN;
	neighbor 198.18.0.$((1 + i)) as $NODE_ASN;
	passive on;
	hold time $hold;
	keepalive time $(((hold + 2) / 3));
	error wait time 1, 5;
	ipv4 {
		import all;
		export none;
	};
}
EOF
	done
}

main() {
	(($# >= 2)) || usage
	local cmd=$1 p=$2
	check_prefix "$p"
	case $cmd in
	up)
		(($# == 2)) || usage
		[[ $(id -u) == 0 ]] || die "must run as root"
		cmd_up "$p"
		;;
	down)
		(($# == 2)) || usage
		[[ $(id -u) == 0 ]] || die "must run as root"
		cmd_down "$p"
		;;
	bird-conf)
		(($# == 3)) || usage
		cmd_bird_conf "$p" "$3"
		;;
	*) usage ;;
	esac
}

main "$@"
