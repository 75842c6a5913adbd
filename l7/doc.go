// Package l7 is xlb's HTTP tier: listeners on L7 services' VIP:port, a
// reverse proxy per service with balancing policies (round robin, least
// connections, ip_hash over the same Maglev table as the XDP path, random),
// cookie stickiness, passive health and per-backend in-flight limits, header
// rules, the /lb endpoints and metrics.
//
// Connections: the common request (HTTP/1.1, no body, no upgrade) is read
// and answered on the listener's own connection loop (h1.go, h1resp.go,
// h1parse.go); everything else from clients goes through net/http's
// server, to which the loop hands the connection. Every request goes to
// its backend through package h1's Transport: strict HTTP/1.1, keep-alive
// pools, in the request's goroutine.
//
// The control loop (package control) owns backend state: it hands each pool
// its upstreams and flips their states; l7 never decides that a backend is
// up, it only stops using one that fails requests (passive health) for a
// back-off period, which it reports back.
package l7
