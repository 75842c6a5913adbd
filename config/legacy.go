package config

import (
	"math"
	"net/netip"
	"strings"
)

// The compatibility form is the configuration of xlb's original
// specification: one HTTP load balancer, written as
//
//	[loadbalancer]              listen_address, listen_port, algorithm
//	[health_check]              the same table as in the full form
//	[[backends]]                address, port, weight, health_check_path
//
// It parses into a single L7 service named "default" whose VIP is
// listen_address (default 0.0.0.0, all addresses) and whose port is
// listen_port, with the default L7 settings (SetL7Defaults). [daemon] and
// [admin] may accompany it; [[service]] may not.
// Errors name the keys as written (loadbalancer.listen_port, backends[1].port).

// LegacyServiceName is the name of the service the compatibility form
// defines.
const LegacyServiceName = "default"

// legacyForm reports whether the top level has a table of the compatibility
// form.
func legacyForm(root *table) bool {
	return root.has("loadbalancer") || root.has("backends")
}

// mixedForms reports a file that has both forms. Only the [[service]] tables
// are read further.
func mixedForms(root *table, first *table) {
	key := "loadbalancer"
	if !root.has(key) || root.has("backends") && root.lineOf("backends") < root.lineOf(key) {
		key = "backends"
	}
	root.get("loadbalancer")
	root.get("backends")
	root.errorf(key, "the compatibility form ([loadbalancer] with [[backends]]) cannot be mixed with [[service]] tables "+
		"(service[0] at line %d): use one form", first.line)
}

// decodeLegacy reads [loadbalancer] and [[backends]] into one service;
// check is the resolved [health_check].
func decodeLegacy(root *table, check HealthCheck) Service {
	s := Service{
		Name:        LegacyServiceName,
		VIP:         netip.IPv4Unspecified(),
		Protocol:    ProtoTCP,
		Mode:        ModeL7,
		HealthCheck: check,
	}
	s.SetL7Defaults()
	if lb := root.table("loadbalancer"); lb != nil {
		s.Line = lb.line
		lb.addr("listen_address", &s.VIP)
		lb.required("listen_port")
		lb.uint16("listen_port", 1, math.MaxUint16, &s.Port)
		enum(lb, "algorithm", &s.Algorithm)
		lb.finish()
	} else if !root.has("loadbalancer") {
		// Reported as the missing port, which validate would report too.
		root.errs.add(root.lineOf("backends"), "loadbalancer.listen_port",
			"required: [[backends]] belongs to the compatibility form, which needs a [loadbalancer] table with listen_port "+
				"(or write [[service]] with [[service.backend]])")
	}
	for _, bt := range root.tables("backends") {
		s.Backends = append(s.Backends, decodeBackend(bt, check))
	}
	if len(s.Backends) == 0 {
		root.errs.add(root.lines.line("backends", s.Line), "backends", "no backends: add at least one [[backends]]")
	}
	return s
}

// legacyPath turns the field path of the compatibility form's service into
// the key the file has: service[0].port is loadbalancer.listen_port.
func legacyPath(p string) string {
	const svc = "service[0]"
	rest, ok := strings.CutPrefix(p, svc)
	if !ok || rest != "" && rest[0] != '.' {
		return p
	}
	rest = strings.TrimPrefix(rest, ".")
	switch {
	case rest == "" || rest == "name":
		return "loadbalancer"
	case rest == "vip":
		return "loadbalancer.listen_address"
	case rest == "port":
		return "loadbalancer.listen_port"
	case strings.HasPrefix(rest, "backend"):
		return "backends" + strings.TrimPrefix(rest, "backend")
	case strings.HasPrefix(rest, "health_check"):
		return rest
	}
	return "loadbalancer." + rest
}
