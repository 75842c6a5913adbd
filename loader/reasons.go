package loader

import "github.com/xlb-dev/xlb/bpf"

// Reason describes one entry of reason_stats: why the program returned the
// verdict it did. Names are stable: they are metric labels.
type Reason struct {
	Name    string
	Verdict string
}

// Reasons is indexed by enum reason of xlb.h.
var Reasons = [bpf.XlbReasonXLB_R_MAX]Reason{
	bpf.XlbReasonXLB_R_TX:                 {"forwarded", "tx"},
	bpf.XlbReasonXLB_R_REDIRECT:           {"forwarded", "redirect"},
	bpf.XlbReasonXLB_R_PASS_NOT_IP:        {"not_ip", "pass"},
	bpf.XlbReasonXLB_R_PASS_MALFORMED:     {"malformed", "pass"},
	bpf.XlbReasonXLB_R_PASS_OTHER_PROTO:   {"other_protocol", "pass"},
	bpf.XlbReasonXLB_R_PASS_NO_SERVICE:    {"no_service", "pass"},
	bpf.XlbReasonXLB_R_PASS_L7:            {"l7", "pass"},
	bpf.XlbReasonXLB_R_DROP_NO_BACKEND:    {"no_backend", "drop"},
	bpf.XlbReasonXLB_R_DROP_TRUNCATED:     {"truncated", "drop"},
	bpf.XlbReasonXLB_R_DROP_FRAGMENT:      {"fragment", "drop"},
	bpf.XlbReasonXLB_R_DROP_NO_TX_PORT:    {"no_tx_port", "drop"},
	bpf.XlbReasonXLB_R_ICMP_TOO_BIG:       {"icmp_too_big", "tx"},
	bpf.XlbReasonXLB_R_DROP_TOO_BIG:       {"too_big", "drop"},
	bpf.XlbReasonXLB_R_DROP_NO_ROUTE:      {"no_route", "drop"},
	bpf.XlbReasonXLB_R_DROP_ENCAP:         {"encap_failed", "drop"},
	bpf.XlbReasonXLB_R_NAT_REPLY_TX:       {"nat_reply", "tx"},
	bpf.XlbReasonXLB_R_NAT_REPLY_REDIRECT: {"nat_reply", "redirect"},
	bpf.XlbReasonXLB_R_DROP_NAT_PORTS:     {"nat_ports_exhausted", "drop"},
	bpf.XlbReasonXLB_R_DROP_ICMP_RATE:     {"icmp_rate_limited", "drop"},
	bpf.XlbReasonXLB_R_DROP_NAT_VLAN:      {"nat_vlan_tagged", "drop"},
}

// ReasonName is "verdict/reason" for reason index i.
func ReasonName(i int) string {
	if i < 0 || i >= len(Reasons) {
		return "unknown"
	}
	return Reasons[i].Verdict + "/" + Reasons[i].Name
}
