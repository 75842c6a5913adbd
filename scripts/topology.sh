#!/usr/bin/env bash
# topology.sh - network-namespace test topology for xlb (L2 direct server return).
#
# Usage:
#   topology.sh up PREFIX            build the topology (removes a stale one first)
#   topology.sh down PREFIX          tear it down (idempotent; exit 0 if nothing exists)
#   topology.sh exec PREFIX HOST CMD [ARGS...]
#                                    run CMD in namespace PREFIX-HOST (HOST: br cl lb b1 ...)
#
# Environment (for "up"):
#   NBACKENDS  number of backends, 1..89             (default 3)
#   NROUTED    number of routed backends, 0..9       (default 0; see "Routed backends")
#   ROUTED_PLAIN  1: routed backends are plain hosts  (default 0; see "Routed backends")
#   NCLIENTS   number of client addresses, 1..155    (default 120)
#   MODE       generic | native                      (default generic)
#
# PREFIX is 1..6 letters/digits, so several topologies can exist at once.
#
# Naming (all derived from PREFIX, nothing lives in the root namespace):
#   namespaces   PREFIX-br (bridge), PREFIX-cl (client), PREFIX-lb (load balancer),
#                PREFIX-b1 .. PREFIX-bN (backends), PREFIX-rt and PREFIX-r1 .. rN (router
#                and routed backends, NROUTED)
#   bridge       br0 in PREFIX-br
#   veth         eth0 inside every host namespace; its peer (a port of br0, in PREFIX-br)
#                is PREFIX + HOST + "p": e.g. xd1clp, xd1lbp, xd1b1p (at most 11 chars)
#
# Addresses (the only ones used; never routed outside these namespaces):
#   LB        198.18.0.2/24           2001:db8:18::2/64
#   backend i 198.18.0.(10+i)/24      2001:db8:18::(10+i)/64   i.e. .11 ::11, .12 ::12, ...
#             (the IPv6 suffix is the same digit string as the IPv4 octet, read as hex)
#   client    198.18.0.100 .. 198.18.0.(100+NCLIENTS-1)  (first is primary, rest secondary)
#             2001:db8:18::100 .. 2001:db8:18::(0x100+NCLIENTS-1 in hex); with the default
#             120 that is ::100..::177. The extra IPv6 addresses are "deprecated"
#             (preferred_lft 0): usable when a socket binds them, never picked as the
#             default source, so unbound client traffic always comes from ::100 (as IPv4
#             from .100).
#   VIP       198.19.0.10/32 and 2001:db8:19::10/128 on every backend's lo; the client
#             routes both via the LB (198.18.0.2 / 2001:db8:18::2).
#   Backends and the LB have arp_ignore=1 and arp_announce=2 (all and eth0), so only the
#   owner of an address answers ARP for it and nobody answers for the VIP.
#   IPv6 DAD is off in every namespace (accept_dad=0, addresses nodad): usable at once.
#
# Routed backends (NROUTED=N, for tunnel forwarding): a router PREFIX-rt on br0
# (198.18.0.3/24, 2001:db8:18::3/64, forwarding on, rp_filter off) with a bridge br1
# (198.18.1.1/24, 2001:db8:18:1::1/64) in its namespace, and backends PREFIX-r1 .. rN
# on br1 (port rNp): 198.18.1.(10+i)/24 and 2001:db8:18:1::(10+i)/64, default routes
# via the router, the VIPs on lo, arp_ignore/arp_announce as above. The LB routes
# 198.18.1.0/24 and 2001:db8:18:1::/64 via the router; the client has no route to
# them (routed backends answer it from the VIP through the router).
# With ROUTED_PLAIN=1 the routed backends are plain hosts, as full NAT takes
# them: no VIP on lo, no arp_ignore/arp_announce, only their addresses and
# default routes (and DAD off, as everywhere).
#
# MODE=native prepares the veths for native XDP on the LB's eth0 (see LAB.md):
#   - client eth0: tx checksum offload off (native XDP loses partial checksums on veth);
#   - the LB veth's peer (PREFIXlbp, in PREFIX-br): gro on.
#   XDP_TX in native mode also needs an XDP program (any, XDP_PASS is enough) attached
#   to that peer; the caller attaches it. Generic mode needs none of this.
#
# On success "up" prints one summary line of key=value words, e.g.
#   topology xd1 up mode=generic ns=xd1-br,xd1-cl,xd1-lb,xd1-b1,xd1-b2,xd1-b3 bridge=br0 peer=xd1lbp ...
# where peer= names the LB veth's peer in PREFIX-br. Errors go to stderr, exit status 1
# (2 for usage errors); a failed "up" removes what it created.
#
# "down" first stops every process still running inside the topology's namespaces
# (SIGTERM by PID as listed by `ip netns pids`, SIGKILL after 2 s), so a namespace is
# never left alive by a leaked test process, then deletes the namespaces (bridge first,
# which removes all veth pairs).

set -euo pipefail

readonly VIP4=198.19.0.10
readonly VIP6=2001:db8:19::10
readonly LB4=198.18.0.2
readonly LB6=2001:db8:18::2
readonly ROUTER4=198.18.0.3
readonly ROUTER6=2001:db8:18::3
readonly ROUTED_GW4=198.18.1.1
readonly ROUTED_GW6=2001:db8:18:1::1

prog=${0##*/}

die() {
	echo "$prog: $*" >&2
	exit 1
}

usage() {
	echo "usage: $prog up|down PREFIX | $prog exec PREFIX HOST CMD [ARGS...]" >&2
	exit 2
}

check_prefix() {
	[[ $1 =~ ^[A-Za-z0-9]{1,6}$ ]] || {
		echo "$prog: bad PREFIX '$1': want 1..6 letters or digits" >&2
		exit 2
	}
}

check_root() {
	[[ $(id -u) == 0 ]] || die "must run as root"
}

# topology_namespaces PREFIX: existing namespaces of this topology, bridge first.
topology_namespaces() {
	local p=$1 names
	names=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${p}-(br|cl|lb|rt|b[0-9]+|r[0-9]+)$" || true)
	# The bridge namespace goes first: deleting it removes every veth pair at once.
	grep -x "${p}-br" <<<"$names" || true
	grep -vx "${p}-br" <<<"$names" || true
}

# stop_pids NS: stop processes still running in NS, by PID.
stop_pids() {
	local ns=$1 pids i
	pids=$(ip netns pids "$ns" 2>/dev/null || true)
	[[ -n $pids ]] || return 0
	# shellcheck disable=SC2086 # word splitting of the PID list is intended
	kill -TERM $pids 2>/dev/null || true
	for ((i = 0; i < 20; i++)); do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		[[ -n $pids ]] || return 0
		sleep 0.1
	done
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
}

cmd_down() {
	local p=$1 ns left
	for ns in $(topology_namespaces "$p"); do
		stop_pids "$ns"
	done
	for ns in $(topology_namespaces "$p"); do
		ip netns del "$ns" 2>/dev/null || true
	done
	left=$(topology_namespaces "$p")
	[[ -z $left ]] || die "namespaces left after down: $(echo $left)"
}

# nsexec NS CMD...: run CMD inside namespace NS.
nsexec() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

# new_ns NS: create NS with lo up and IPv6 DAD off for everything created later.
new_ns() {
	local ns=$1
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	nsexec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
}

# plug P HOST: veth pair, eth0 in P-HOST, P+HOST+p as a port of br0 in P-br.
plug() {
	local p=$1 host=$2 port=$1$2p
	ip -n "$p-br" link add "$port" type veth peer name eth0 netns "$p-$host"
	ip -n "$p-br" link set "$port" master br0 up
	ip -n "$p-$host" link set eth0 up
}

# no_arp_flux NS: answer ARP only for addresses of the receiving interface, and never
# announce an address that does not belong to the sending interface (the VIP on lo).
no_arp_flux() {
	local ns=$1
	nsexec "$ns" sysctl -qw \
		net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
		net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2
}

# routed P N: the router P-rt on br0 and N backends P-r1..rN behind it (see
# "Routed backends" above).
routed() {
	local p=$1 n=$2 plain=$3 i ns octet
	new_ns "$p-rt"
	plug "$p" rt
	ip -n "$p-rt" addr add "$ROUTER4/24" dev eth0
	ip -n "$p-rt" addr add "$ROUTER6/64" dev eth0 nodad
	ip -n "$p-rt" link add br1 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
	ip -n "$p-rt" link set br1 up
	ip -n "$p-rt" addr add "$ROUTED_GW4/24" dev br1
	ip -n "$p-rt" addr add "$ROUTED_GW6/64" dev br1 nodad
	nsexec "$p-rt" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
		net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 \
		net.ipv4.conf.br1.rp_filter=0
	for ((i = 1; i <= n; i++)); do
		ns=$p-r$i
		octet=$((10 + i))
		new_ns "$ns"
		ip -n "$p-rt" link add "r${i}p" type veth peer name eth0 netns "$ns"
		ip -n "$p-rt" link set "r${i}p" master br1 up
		ip -n "$ns" link set eth0 up
		ip -n "$ns" addr add "198.18.1.$octet/24" dev eth0
		ip -n "$ns" addr add "2001:db8:18:1::$octet/64" dev eth0 nodad
		ip -n "$ns" route add default via "$ROUTED_GW4"
		ip -n "$ns" -6 route add default via "$ROUTED_GW6"
		((plain == 0)) || continue
		ip -n "$ns" addr add "$VIP4/32" dev lo
		ip -n "$ns" addr add "$VIP6/128" dev lo nodad
		no_arp_flux "$ns"
	done
	ip -n "$p-lb" route add 198.18.1.0/24 via "$ROUTER4"
	ip -n "$p-lb" -6 route add 2001:db8:18:1::/64 via "$ROUTER6"
}

# undo_failed_up PREFIX: EXIT trap of "up"; removes a half-built topology.
undo_failed_up() {
	local rc=$?
	((rc != 0)) || return 0
	echo "$prog: up $1 failed, cleaning up" >&2
	cmd_down "$1" || true
	exit "$rc"
}

cmd_up() {
	local p=$1 nb=${NBACKENDS:-3} nc=${NCLIENTS:-120} nr=${NROUTED:-0} plain=${ROUTED_PLAIN:-0} mode=${MODE:-generic} i octet ns

	[[ $nb =~ ^[0-9]+$ ]] && ((nb >= 1 && nb <= 89)) || die "NBACKENDS=$nb: want 1..89"
	[[ $nc =~ ^[0-9]+$ ]] && ((nc >= 1 && nc <= 155)) || die "NCLIENTS=$nc: want 1..155"
	[[ $nr =~ ^[0-9]$ ]] || die "NROUTED=$nr: want 0..9"
	[[ $plain == 0 || $plain == 1 ]] || die "ROUTED_PLAIN=$plain: want 0 or 1"
	[[ $mode == generic || $mode == native ]] || die "MODE=$mode: want generic or native"

	cmd_down "$p"
	# The trap runs after cmd_up's locals are gone: bake the (validated) prefix in.
	trap "undo_failed_up $p" EXIT

	new_ns "$p-br"
	ip -n "$p-br" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
	ip -n "$p-br" link set br0 up

	# Load balancer.
	new_ns "$p-lb"
	plug "$p" lb
	ip -n "$p-lb" addr add "$LB4/24" dev eth0
	ip -n "$p-lb" addr add "$LB6/64" dev eth0 nodad
	no_arp_flux "$p-lb"

	# Backends.
	for ((i = 1; i <= nb; i++)); do
		ns=$p-b$i
		octet=$((10 + i))
		new_ns "$ns"
		plug "$p" "b$i"
		ip -n "$ns" addr add "198.18.0.$octet/24" dev eth0
		ip -n "$ns" addr add "2001:db8:18::$octet/64" dev eth0 nodad
		ip -n "$ns" addr add "$VIP4/32" dev lo
		ip -n "$ns" addr add "$VIP6/128" dev lo nodad
		no_arp_flux "$ns"
	done

	# Client: many source addresses on one interface, VIPs routed via the LB.
	new_ns "$p-cl"
	plug "$p" cl
	{
		for ((i = 0; i < nc; i++)); do
			echo "addr add 198.18.0.$((100 + i))/24 dev eth0"
			if ((i == 0)); then
				echo "addr add 2001:db8:18::100/64 dev eth0 nodad"
			else
				printf 'addr add 2001:db8:18::%x/64 dev eth0 nodad preferred_lft 0\n' $((0x100 + i))
			fi
		done
	} | ip -n "$p-cl" -batch -
	ip -n "$p-cl" route add "$VIP4/32" via "$LB4"
	ip -n "$p-cl" -6 route add "$VIP6/128" via "$LB6"

	((nr == 0)) || routed "$p" "$nr" "$plain"

	if [[ $mode == native ]]; then
		nsexec "$p-cl" ethtool -K eth0 tx off >/dev/null
		nsexec "$p-br" ethtool -K "${p}lbp" gro on >/dev/null
	fi

	trap - EXIT
	local names="$p-br,$p-cl,$p-lb"
	for ((i = 1; i <= nb; i++)); do names+=",$p-b$i"; done
	((nr == 0)) || names+=",$p-rt"
	for ((i = 1; i <= nr; i++)); do names+=",$p-r$i"; done
	printf 'topology %s up mode=%s ns=%s bridge=br0 peer=%slbp lb=%s,%s vip=%s,%s clients=198.18.0.100-198.18.0.%d,2001:db8:18::100-2001:db8:18::%x\n' \
		"$p" "$mode" "$names" "$p" "$LB4" "$LB6" "$VIP4" "$VIP6" $((100 + nc - 1)) $((0x100 + nc - 1))
}

cmd_exec() {
	local p=$1 host=$2
	shift 2
	[[ $host =~ ^(br|cl|lb|rt|b[0-9]+|r[0-9]+)$ ]] || {
		echo "$prog: bad HOST '$host': want br, cl, lb, rt, bN or rN" >&2
		exit 2
	}
	(($# > 0)) || usage
	exec ip netns exec "$p-$host" "$@"
}

main() {
	(($# >= 2)) || usage
	local cmd=$1 p=$2
	shift 2
	check_prefix "$p"
	case $cmd in
	up)
		(($# == 0)) || usage
		check_root
		cmd_up "$p"
		;;
	down)
		(($# == 0)) || usage
		check_root
		cmd_down "$p"
		;;
	exec)
		(($# >= 2)) || usage
		check_root
		cmd_exec "$p" "$@"
		;;
	*) usage ;;
	esac
}

# Sourced (scripts/cluster.sh reuses the namespace helpers), it defines them only.
[[ ${BASH_SOURCE[0]} != "$0" ]] || main "$@"
