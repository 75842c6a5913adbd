#!/usr/bin/env bash
# make demo: a client with 155 addresses, an xlb host and three backends in
# network namespaces on one bridge; xlb steers HTTP connections to the VIP's
# port 80 by client address (L4, XDP) and the backends answer the client
# directly (DSR), while its HTTP proxy serves port 8080 of the same VIP (L7,
# round robin, headers injected). Prints how the clients spread, from xlb's
# counters and from the backends' answers, then tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."

P=xdemo
CONF=examples/demo.toml
PINS=/sys/fs/bpf/xlb-demo
CONNS=${CONNS:-620}
L7REQS=${L7REQS:-300}
WORK=$(mktemp -d /tmp/xlb-demo.XXXXXX)
PIDS=()

[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, XDP)" >&2; exit 1; }
BIN=${XLB_BIN_DIR:-bin} # where xlb and xlbtest are (the e2e test passes its own)
[ -x "$BIN/xlb" ] && [ -x "$BIN/xlbtest" ] || { echo "demo: run 'make build' first" >&2; exit 1; }

cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	scripts/topology.sh down "$P" >/dev/null 2>&1 || true
	rm -rf "$PINS" "$WORK"
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

step "topology: client (155 addresses), lb, backends b1..b3 on a bridge"
NCLIENTS=155 scripts/topology.sh up "$P"

step "backends: HTTP on the VIP held on lo (198.19.0.10, 2001:db8:19::10) for L4, on their own addresses for checks and L7"
for i in 1 2 3; do
	ip netns exec "$P-b$i" "$BIN/xlbtest" serve --name "b$i" --listen "198.19.0.10:80,[2001:db8:19::10]:80,198.18.0.1$i:80,[2001:db8:18::1$i]:80,198.18.0.1$i:8080" --body-bytes 16384 \
		>"$WORK/b$i.log" 2>&1 &
	PIDS+=($!)
done

step "xlb run -c $CONF (in the lb's network namespace)"
nsenter --net="/run/netns/$P-lb" "$BIN/xlb" run -c "$CONF" >"$WORK/xlb.log" 2>&1 &
XLB=$!
PIDS+=("$XLB")
for _ in $(seq 50); do grep -q 'xlb running' "$WORK/xlb.log" && break; sleep 0.1; done
grep -q 'xlb running' "$WORK/xlb.log" || { cat "$WORK/xlb.log"; echo "demo: xlb did not start" >&2; exit 1; }
sed 's/^/  xlb: /' "$WORK/xlb.log"

spread() { # family target sources
	local out
	out=$(ip netns exec "$P-cl" "$BIN/xlbtest" load --target "$2" --sources "$3" --conns "$CONNS" --timeout 3s || true)
	python3 scripts/spread.py "$1" "$out"
}

step "traffic: $CONNS new connections over IPv4 from 198.18.0.100-254"
spread IPv4 http://198.19.0.10/ range:198.18.0.100-198.18.0.254
step "traffic: $CONNS new connections over IPv6 from 2001:db8:18::100-19a"
spread IPv6 "http://[2001:db8:19::10]/" range:2001:db8:18::100-2001:db8:18::19a

step "replies went straight from the backends to the client: the lb saw only requests"
ip netns exec "$P-lb" sh -c 'echo "  lb eth0: rx $(cat /sys/class/net/eth0/statistics/rx_bytes) bytes, tx $(cat /sys/class/net/eth0/statistics/tx_bytes) bytes"'
for i in 1 2 3; do
	ip netns exec "$P-b$i" sh -c "echo \"  b$i eth0: tx \$(cat /sys/class/net/eth0/statistics/tx_bytes) bytes\""
done

step "L7 on the same VIP: $L7REQS requests to 198.19.0.10:8080, proxied by xlb (XDP passes them to the host)"
out=$(ip netns exec "$P-cl" "$BIN/xlbtest" load --target http://198.19.0.10:8080/ --sources range:198.18.0.100-198.18.0.254 --conns "$L7REQS" --timeout 3s || true)
python3 - "$out" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print(f"  {d['ok']} requests ok, {d['failed']} failed; round robin by backend:")
for be in sorted(d["by_backend"]):
    print(f"    {be}: {d['by_backend'][be]:4d} requests")
PY
ip netns exec "$P-cl" python3 - <<'PY'
import http.client, json
c = http.client.HTTPConnection("198.19.0.10", 8080, timeout=5, source_address=("198.18.0.100", 0))
c.request("GET", "/headers", headers={"Authorization": "Bearer demo"})
r = c.getresponse()
seen = json.loads(r.read())
print(f"  GET /headers from 198.18.0.100: {seen['backend']} saw a connection from {seen['client']} (the lb) with")
for k in ("Authorization", "X-Forwarded-For", "X-Real-Ip", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Request-Id"):
    print(f"    {k}: {', '.join(seen['headers'].get(k, ['(none)']))}")
print(f"  and the client got {r.status} with", ", ".join(f"{k}: {r.getheader(k)}" for k in ("X-Request-Id", "X-Response-Time", "X-Proxy")))
PY
nsenter --net="/run/netns/$P-lb" python3 - <<'PY'
import json, urllib.request
m = json.load(urllib.request.urlopen("http://127.0.0.1:9090/lb/metrics?service=app", timeout=5))
print(f"  /lb/metrics?service=app: total_requests {m['total_requests']}, total_errors {m['total_errors']}, avg_latency_us {m['avg_latency_us']:.0f}, healthy_backends {m['healthy_backends']}/{m['total_backends']}")
for b in m["backends"]:
    print(f"    {b['address']:18} {b['state']:8} total_requests {b['total_requests']:4d}  avg_latency_us {b['avg_latency_us']:.0f}")
PY

step "xlb status: health and admin state from the daemon, counters and Maglev shares from the pinned maps"
nsenter --net="/run/netns/$P-lb" "$BIN/xlb" status --bpffs "$PINS" | sed 's/^/  /'

step "stop xlb (SIGTERM): XDP detached, pins removed, the VIP off the lb's lo"
kill -TERM "$XLB"
wait "$XLB" || true
ip -n "$P-lb" -d link show eth0 | grep -q xdp && echo "  !! XDP still attached" || echo "  no XDP program on the lb's eth0"
[ -e "$PINS" ] && echo "  !! pins remain in $PINS" || echo "  no pins left in $PINS"
ip -n "$P-lb" -4 addr show dev lo | grep -q 198.19.0.10 && echo "  !! the VIP is still on the lb's lo" || echo "  the VIP is off the lb's lo"
step "teardown"
