// Command xlbtest is the traffic tool of xlb's end-to-end tests and demos: an HTTP
// backend that says who it is, a load generator that opens one fresh TCP connection
// per request from many client source addresses, and a long-lived connection probe.
// It uses the standard library only, so it can run in any test namespace.
//
// Build: go build -o bin/xlbtest ./scripts/xlbtest
//
// # serve
//
//	xlbtest serve --name NAME --listen ADDR[,ADDR...] [--body-bytes N] [--hang]
//
// Listens on every ADDR (e.g. 198.19.0.10:80,[2001:db8:19::10]:80; port 0 picks a free
// port) and prints one line "ready backend=NAME listen=ADDR,..." with the bound
// addresses once all listeners are open. Endpoints:
//
//	GET /health         200, the standard reply (not counted in /stats)
//	GET /stats          {"CLIENT_IP": requests, ...}: requests per client address
//	                    (everything except /health and /stats is counted)
//	GET /hold?secs=S    200, text/plain, one line "tick I/N backend=NAME" every 200 ms
//	                    for S seconds (N = 5*S, S <= 3600), then "done N backend=NAME"
//	/headers            200, the request as the backend got it:
//	                    {"backend":NAME,"client":PEER_IP,"method":M,"proto":"HTTP/1.1",
//	                     "host":HOST,"uri":PATH?QUERY,"headers":{"Name":["v",...],...}}
//	/slow?ms=MS         the standard reply after MS milliseconds (0..60000, default 1000);
//	                    if the client leaves first, the connection is cut, no answer
//	/status?code=C&body=B  status C (200..599, default 200), text/plain body B
//	                    (default "status C from NAME\n")
//	GET /sse?n=N&ms=MS  text/event-stream: N events (default 5), one every MS ms
//	                    (default 200), each flushed: "id: I\ndata: {"i":I,"n":N,
//	                    "backend":NAME,"sent":RFC3339NANO}\n\n"
//	GET /ws             WebSocket (RFC 6455, version 13) echo: text and binary frames
//	                    come back as sent, pings get pongs, a close is answered
//	anything else       the standard reply:
//	                    {"backend":NAME,"client":CLIENT_IP,"bytes":LEN}
//
// LEN is the length of the body, newline included. With --body-bytes N the reply is
// padded with a "pad" field of 'x' to exactly N bytes (when N is larger than the
// unpadded reply). Responses carry X-Backend: NAME and Server: xlbtest headers (the
// 101 of /ws only X-Backend). SIGINT or SIGTERM end open /hold and /sse streams and
// WebSockets, cut open /slow requests without an answer, and exit 0.
//
// With --hang it serves no HTTP at all: it accepts TCP connections on every ADDR
// and holds them open without reading or answering, until the peer closes them
// or a signal ends it (a backend whose health checks time out). It prints the same
// "ready" line.
//
// # load
//
//	xlbtest load --target URL [--sources LIST] [--conns N] [--timeout 5s]
//	             [--duration-max 30s] [--parallel 16] [--rate R]
//	             [--source-ports FIRST-LAST] [--stream]
//
// Makes N GET requests to URL (http only), each on a fresh TCP connection
// (Connection: close, no pooling), connection i bound to source address
// sources[i % len(sources)] (round robin; no --sources: the kernel picks). Each request
// is bounded by --timeout (connect, send, read). No request starts after
// --duration-max; running ones finish within --timeout, so the command ends within
// duration-max + timeout. --conns 0 means no limit: connections are made until
// --duration-max has passed or SIGINT/SIGTERM arrives (running ones then finish
// and the report is printed as usual). --rate R starts at most R connections per
// second (0, the default: as fast as --parallel allows).
//
// --source-ports FIRST-LAST (with --sources) binds source ports too: connection i
// uses FIRST + (i / len(sources)) mod (LAST-FIRST+1), so no two connections of a run
// from one address share a 5-tuple while the range lasts, and runs given disjoint
// ranges never reuse each other's (a load balancer's connection table would
// otherwise take a reused 5-tuple for an old flow). Bound ports are SO_REUSEADDR.
//
// --stream prints one JSON line per connection as it ends, before the report:
//
//	{"i":7,"start":"RFC3339NANO","end":"RFC3339NANO","source":"198.18.0.107",
//	 "port":20001,"backend":"b1"}
//
// with "error":"PHASE: CLASS" instead of "backend" for a failed one (port is the
// local port, absent when the connection never got one).
//
// LIST is a comma-separated list of items:
//
//	198.18.0.100                           one address (IPv4 or IPv6)
//	range:198.18.0.100-198.18.0.219        inclusive range, both ends in one family
//	range:2001:db8:18::100-2001:db8:18::177  IPv6 ranges count in hex: 0x78 = 120 addresses
//	198.18.0.96/28                         every address of the prefix (network and
//	                                       broadcast addresses included)
//	file:PATH                              items from PATH, one per line, # comments
//
// Expanded lists are capped at 65536 addresses. Stdout is one JSON object:
//
//	{"ok":N,"failed":N,"skipped":N,"errors":{"dial: timeout":N},
//	 "by_source":{"198.18.0.100":["b1","b1"]},"failed_by_source":{"198.18.0.101":1},
//	 "by_backend":{"b1":2},"elapsed_ms":N}
//
// by_source lists, per source, the backend of each successful connection in the order
// the connections were made; without --sources the key is "default". skipped counts
// connections never attempted because --duration-max ran out. Error keys are
// "PHASE: CLASS" (PHASE is dial, write, read, status or body; CLASS has no addresses or
// ports in it, so equal failures aggregate). Exit status: 0 if every connection
// succeeded, 1 if any failed or was skipped (the JSON is printed either way), 2 for
// usage errors.
//
// # hold
//
//	xlbtest hold --target URL --secs S [--source ADDR] [--timeout 5s]
//
// Opens one connection to URL's host, requests /hold?secs=S and prints every line
// received as "RFC3339NANO-TIMESTAMP LINE". --timeout bounds the connect and every gap
// between two lines. Exits 0 only if the whole stream arrived (all 5*S ticks in order
// and the final "done" line); otherwise prints the reason to stderr and exits 1. Used to
// prove that an established connection survives a load balancer restart.
package main
