// Package bgp announces xlb's VIPs to routers with BGP, so that several xlb
// nodes in front of the same backends share a VIP by ECMP. It embeds GoBGP
// (github.com/osrg/gobgp/v3) as a library: no gobgpd, no gRPC listener.
//
// A Speaker holds the sessions of a Config's peers and announces the desired
// set of host prefixes (/32 for IPv4, /128 for IPv6) that Announce gives it:
// prefixes new to the set are announced, prefixes gone from it withdrawn.
// IPv4 prefixes go to IPv4 peers and IPv6 prefixes to IPv6 peers, each with
// origin IGP, the configured communities and a next hop that is
// Config.NextHop4 (NextHop6) or, unset, the local address of the session.
//
// xlb originates routes and is never a transit: a policy on the global RIB
// accepts only locally originated paths, in and out, so routes a router sends
// are dropped and nothing learnt from one peer reaches another.
//
// Reconfigure applies a new Config as a difference: a peer whose settings did
// not change keeps its session; a changed peer is deleted and added again
// (its session alone restarts); a new next hop or new communities re-announce
// the same prefixes with the new attributes on the live sessions. Only a
// change of the local ASN, the router id or the listening port restarts the
// whole speaker, and so every session.
//
// Status reports each peer's session state and the prefixes announced;
// Metrics exports them to Prometheus (xlb_bgp_session_up{peer},
// xlb_bgp_announced_prefixes), with one label per configured peer.
// Session changes are logged with log/slog, one line each.
package bgp
