#!/usr/bin/env bash
# make demo-cluster: three xlb nodes with the same services announce the VIP
# over BGP to a router (bird2) that spreads the client's flows over them by
# ECMP; the backends answer the client directly (DSR). Prints the router's
# routes, how flows spread over nodes and backends, then stops the node a
# long-lived connection goes through and shows that connection carry on
# through another node to the same backend. Then tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."

P=xclus
NODES=3
CONNS=${CONNS:-600}
HOLD_SECS=${HOLD_SECS:-12}
WORK=$(mktemp -d /tmp/xlb-demo-cluster.XXXXXX)
PIDS=()
declare -A NODE_PID

[ "$(id -u)" = 0 ] || { echo "demo-cluster: needs root (network namespaces, XDP)" >&2; exit 1; }
BIN=${XLB_BIN_DIR:-bin} # where xlb and xlbtest are (the e2e test passes its own)
[ -x "$BIN/xlb" ] && [ -x "$BIN/xlbtest" ] || { echo "demo-cluster: run 'make build' first" >&2; exit 1; }
command -v bird >/dev/null && command -v birdc >/dev/null || { echo "demo-cluster: needs bird2 (make deps)" >&2; exit 1; }

pins() { echo "/sys/fs/bpf/xlb-demo-cluster-n$1"; }

cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	scripts/cluster.sh down "$P" >/dev/null 2>&1 || true
	for i in $(seq "$NODES"); do rm -rf "$(pins "$i")"; done
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }
birdc_() { birdc -s "$WORK/bird.sock" "$@"; }
next_hops() { ip -n "$P-rt" route show 198.19.0.10/32 | grep -o 'via [0-9.]*' | awk '{print $2}' | sort | tr '\n' ' '; }
wait_hops() { # the number of next hops wanted
	for _ in $(seq 200); do
		[ "$(next_hops | wc -w)" = "$1" ] && return 0
		sleep 0.1
	done
	echo "demo-cluster: the router's route has next hops [$(next_hops)], want $1" >&2
	for f in "$WORK"/bird.log "$WORK"/n*.log; do echo "-- $f" >&2; tail -20 "$f" >&2; done
	exit 1
}
node_json() { nsenter --net="/run/netns/$P-n$1" "$BIN/xlb" status --bpffs "$(pins "$1")" --json; }

step "topology: client (100 addresses) -> router (bird2) -> nodes n1..n$NODES and backends b1..b3 on one segment"
NNODES=$NODES NCLIENTS=100 scripts/cluster.sh up "$P" | sed 's/^/  /'

step "router: bird2, the nodes as eBGP peers (hold time 3 s), 'merge paths on' for one ECMP route; L4 hashing"
NNODES=$NODES scripts/cluster.sh bird-conf "$P" 3 >"$WORK/bird.conf"
ip netns exec "$P-rt" bird -c "$WORK/bird.conf" -s "$WORK/bird.sock" -P "$WORK/bird.pid" -f >"$WORK/bird.log" 2>&1 &
PIDS+=($!)
echo "  net.ipv4.fib_multipath_hash_policy = $(ip netns exec "$P-rt" sysctl -n net.ipv4.fib_multipath_hash_policy)"

step "backends: HTTP on the VIP 198.19.0.10 held on lo"
for i in 1 2 3; do
	ip netns exec "$P-b$i" "$BIN/xlbtest" serve --name "b$i" --listen "198.19.0.10:80,198.18.0.1$i:80" >"$WORK/b$i.log" 2>&1 &
	PIDS+=($!)
done

step "nodes: the same [[service]] and [bgp] on each (only router_id and bpffs_dir differ)"
for i in $(seq "$NODES"); do
	cat >"$WORK/n$i.toml" <<EOF
[daemon]
interface = "eth0"
xdp_mode = "generic"
bpffs_dir = "$(pins "$i")"

[health_check]
path = "/health"
interval = "1s"
timeout = "500ms"

[bgp]
local_asn = 64512
router_id = "198.18.0.$((1 + i))"
hold_time = "3s"
shutdown_grace = "2s"

[[bgp.peer]]
address = "198.18.0.1"
asn = 64500

[[service]]
name = "web"
vip = "198.19.0.10"
port = 80
  [[service.backend]]
  address = "198.18.0.11"
  [[service.backend]]
  address = "198.18.0.12"
  [[service.backend]]
  address = "198.18.0.13"
EOF
	rm -rf "$(pins "$i")"
	nsenter --net="/run/netns/$P-n$i" "$BIN/xlb" run -c "$WORK/n$i.toml" >"$WORK/n$i.log" 2>&1 &
	NODE_PID[$i]=$!
	PIDS+=($!)
done
sed -n '/\[bgp\]/,/asn = 64500/p' "$WORK/n1.toml" | sed 's/^/  /'
wait_hops "$NODES"

step "birdc show protocols"
birdc_ show protocols | sed 's/^/  /'
step "birdc show route: the VIP from every node"
birdc_ show route | sed 's/^/  /'
step "the router's kernel route: one next hop per node"
ip -n "$P-rt" route show 198.19.0.10/32 | sed 's/^/  /'
step "xlb node status (n1)"
nsenter --net="/run/netns/$P-n1" "$BIN/xlb" node status | sed 's/^/  /'

step "a long-lived connection from 198.18.2.199: GET /hold?secs=$HOLD_SECS (a line every 200 ms)"
ip netns exec "$P-cl" "$BIN/xlbtest" hold --target http://198.19.0.10/ --secs "$HOLD_SECS" --source 198.18.2.199 --timeout 20s \
	>"$WORK/hold.out" 2>"$WORK/hold.err" &
HOLD=$!
PIDS+=("$HOLD")
for _ in $(seq 100); do grep -q tick "$WORK/hold.out" && break; sleep 0.1; done

step "traffic: $CONNS new connections from 198.18.2.100-198 (one TCP connection each)"
before=()
for i in $(seq "$NODES"); do before[i]=$(node_json "$i" | python3 -c 'import json,sys; print(sum(b["new_flows"] for s in json.load(sys.stdin)["datapath"]["services"] for b in s["backends"]))'); done
out=$(ip netns exec "$P-cl" "$BIN/xlbtest" load --target http://198.19.0.10/ --sources range:198.18.2.100-198.18.2.198 --conns "$CONNS" --parallel 16 --timeout 5s || true)
after=()
for i in $(seq "$NODES"); do after[i]=$(node_json "$i" | python3 -c 'import json,sys; print(sum(b["new_flows"] for s in json.load(sys.stdin)["datapath"]["services"] for b in s["backends"]))'); done
python3 scripts/spread.py IPv4 "$out"
echo "  by node (ECMP on the 5-tuple: one client's connections cross several nodes):"
for i in $(seq "$NODES"); do echo "    n$i: $((after[i] - before[i])) connections"; done

node_of_hold() { # the node whose connection table holds the long-lived connection
	for i in "$@"; do
		n=$(node_json "$i" | python3 -c 'import json,sys; print(sum(b["open_flows"] for s in json.load(sys.stdin)["datapath"]["services"] for b in s["backends"]))')
		[ "$n" -gt 0 ] && { echo "$i"; return; }
	done
	echo "?"
}
ON=$(node_of_hold $(seq "$NODES"))
BE=$(grep -o 'backend=[a-z0-9]*' "$WORK/hold.out" | head -1 | cut -d= -f2)
step "the long-lived connection goes through n$ON to $BE; stop n$ON (SIGTERM: withdraw, 2 s grace, stop)"
kill -TERM "${NODE_PID[$ON]}"
wait_hops $((NODES - 1))
echo "  router's next hops now: $(next_hops)"
wait "${NODE_PID[$ON]}" || true
grep -E 'shutting down|withdrawn|speaker stopped|XDP detached' "$WORK/n$ON.log" | sed 's/^/  n'"$ON"': /'
rest=()
for i in $(seq "$NODES"); do [ "$i" = "$ON" ] || rest+=("$i"); done
sleep 1
NOW=$(node_of_hold "${rest[@]}")

step "the connection carries on"
rc=0
wait "$HOLD" || rc=$?
python3 - "$WORK/hold.out" "$rc" "$ON" "$NOW" <<'PY'
import sys, datetime
path, rc, on, now = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lines = [l.split(" ", 1) for l in open(path).read().splitlines()]
ts = [datetime.datetime.fromisoformat(t.replace("Z", "+00:00")) for t, _ in lines]
backends = sorted({w.split("=")[1] for _, l in lines for w in l.split() if w.startswith("backend=")})
gap = max((b - a).total_seconds() for a, b in zip(ts, ts[1:])) if len(ts) > 1 else 0
ticks = sum(1 for _, l in lines if l.startswith("tick"))
print(f"  {ticks} ticks and '{lines[-1][1] if lines else ''}', all from {', '.join(backends)}; longest silence {gap*1000:.0f} ms")
if rc == 0 and len(backends) == 1:
    print(f"  the connection survived n{on}'s stop: it now goes through n{now}, whose Maglev table (built from the same config) names the same backend")
else:
    print(f"  !! the connection did not survive (exit {rc})")
PY
cat "$WORK/hold.err" | sed 's/^/  hold: /'

step "teardown"
