// Package l7 is xlb's HTTP tier: listeners on L7 services' VIP:port, a
// reverse proxy per service with balancing policies (round robin, least
// connections, ip_hash over the same Maglev table as the XDP path, random),
// cookie stickiness, passive health and per-backend in-flight limits, header
// rules, the /lb endpoints and metrics.
//
// The control loop (package control) owns backend state: it hands each pool
// its upstreams and flips their states; l7 never decides that a backend is
// up, it only stops using one that fails requests (passive health) for a
// back-off period, which it reports back.
package l7
