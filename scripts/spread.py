"""spread.py LABEL JSON: how the connections of one `xlbtest load` report
(JSON) spread over the backends, for the demos (scripts/demo.sh,
scripts/demo-cluster.sh). A client seen on several backends is flagged "!!"."""
import json
import sys

label, d = sys.argv[1], json.loads(sys.argv[2])
clients = {}
for src, bes in d["by_source"].items():
    clients.setdefault(bes[0], set()).add(src)
    if len(set(bes)) != 1:
        print(f"  !! {src} reached several backends: {sorted(set(bes))}")
n = sum(len(v) for v in clients.values())
print(f"  {label}: {d['ok']} connections ok, {d['failed']} failed, from {n} client addresses")
print("  as the backends answered:")
for be in sorted(d["by_backend"]):
    share = 100 * len(clients.get(be, ())) / max(n, 1)
    print(f"    {be}: {d['by_backend'][be]:4d} connections, {len(clients.get(be, ())):3d} clients ({share:.1f}%), each client always on the same backend")
