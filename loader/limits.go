package loader

import "github.com/xlb-dev/xlb/bpf"

// Limits of the datapath, from xlb.h. MaxBackends is the compiled size of the
// backend tables; Options.MaxBackends changes it.
const (
	MaxServices = uint32(bpf.XlbLimitsXLB_MAX_SERVICES)
	MaxBackends = uint32(bpf.XlbLimitsXLB_MAX_BACKENDS)
	noID        = uint32(bpf.XlbLimitsXLB_NO_ID)
)
