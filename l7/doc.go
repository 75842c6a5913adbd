// Package l7 is xlb's HTTP tier: listeners on L7 services' VIP:port, a
// reverse proxy per service with balancing policies (round robin, least
// connections, ip_hash over the same Maglev table as the XDP path, random),
// cookie stickiness, passive health and per-backend in-flight limits, header
// rules, the /lb endpoints and metrics.
//
// Connections: the common request (HTTP/1.1, no body, no upgrade) is read
// and answered on the listener's own connection loop (h1.go, h1resp.go) and
// sent to the backend over l7's own keep-alive pools (transport.go), both in
// the request's goroutine, with request and answer heads parsed in place
// (h1parse.go, respparse.go) as net/http would parse them; everything else
// goes through net/http's server and transport, to which those hand it.
//
// The control loop (package control) owns backend state: it hands each pool
// its upstreams and flips their states; l7 never decides that a backend is
// up, it only stops using one that fails requests (passive health) for a
// back-off period, which it reports back.
package l7
