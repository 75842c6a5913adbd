// Package control is the daemon's control loop: it composes the desired state
// from the config, the admin API's changes and the health checker's verdicts,
// and hands it to the reconciler (loader) whenever any of them changes.
//
// Effective backend state, in order of precedence:
//
//   - unhealthy (health checks failing) or unresolved: down, no packets;
//   - drained or being removed through the admin API: draining, established
//     flows continue, no new ones;
//   - otherwise up.
//
// Backends start in the health check's initial state (default up, so a
// restart never blackholes a service). A reload keeps the health state and
// admin state of every backend whose address and check did not change, and
// keeps backends added through the admin API for services that still exist
// (checked as the service's other backends now are).
// Admin changes live in memory only: a restart starts from the config.
//
// A backend of a check_via_vip service is checked at the VIP through the
// backend (health.Spec.Via), with the mark of the (VIP, backend) route that
// CheckRoutes (package checkroute) keeps: the route goes in before the check
// starts and out once it has stopped, and a route that could not be put in
// is tried again every second.
//
// With a [bgp] table the controller runs a speaker (package bgp) and, after
// every reconcile, hands it the VIPs to announce (bgp.go): a VIP while one
// of its services can serve (an L4 service with a backend up or draining and
// resolved, an L7 service whose listener is up), none while the node is
// drained through the admin API. StopBGP withdraws them all and waits
// shutdown_grace before the daemon stops forwarding.
package control
