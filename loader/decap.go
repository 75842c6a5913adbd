package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/xlb-dev/xlb/bpf"
)

// MaxDecapVIPs is how many VIPs one decapsulation program serves.
const MaxDecapVIPs = int(bpf.XlbDecapVipLimitsXLB_DECAP_MAX_VIPS)

// DecapOutcomes names the decap_stats entries (enum outcome of decap.h).
var DecapOutcomes = [bpf.XlbDecapOutcomeXLB_DECAP_R_MAX]string{
	bpf.XlbDecapOutcomeXLB_DECAP_OK:       "decapsulated",
	bpf.XlbDecapOutcomeXLB_DECAP_NOT_VIP:  "not_vip",
	bpf.XlbDecapOutcomeXLB_DECAP_UNUSABLE: "unusable",
	bpf.XlbDecapOutcomeXLB_DECAP_FAILED:   "failed",
}

// Decap is the backends' tunnel decapsulation (bpf/decap.c, `xlb decap`):
// loaded with its VIPs and, once attached, on an interface's TC ingress.
// Nothing is pinned: it goes when the process does.
type Decap struct {
	objs bpf.XlbDecapObjects
	link link.Link
}

// LoadDecap loads the decapsulation program for packets to vips.
func LoadDecap(vips []netip.Addr) (*Decap, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if len(vips) == 0 || len(vips) > MaxDecapVIPs {
		return nil, fmt.Errorf("%d VIPs: want 1..%d", len(vips), MaxDecapVIPs)
	}
	d := &Decap{}
	if err := bpf.LoadXlbDecapObjects(&d.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: %s", ErrVerifier, verifierTail(ve, 8))
		}
		return nil, fmt.Errorf("load decap program: %w", err)
	}
	for _, v := range vips {
		addr, family := addrBytes(v)
		key := bpf.XlbDecapVipKey{Addr: addr, Family: family}
		if err := d.objs.DecapVips.Put(key, uint8(1)); err != nil {
			d.Close()
			return nil, fmt.Errorf("add VIP %s: %w", v, err)
		}
	}
	return d, nil
}

// Program is the TC program (for BPF_PROG_TEST_RUN).
func (d *Decap) Program() *ebpf.Program { return d.objs.XlbDecap }

// Attach puts the program on ifindex's TC ingress with tcx (Linux 6.6+),
// after any program already there.
func (d *Decap) Attach(ifindex int) error {
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   d.objs.XlbDecap,
		Attach:    ebpf.AttachTCXIngress,
		Anchor:    link.Tail(),
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("attach to interface %d: %w", ifindex, ErrNoTCX)
	}
	if err != nil {
		return fmt.Errorf("attach to interface %d: %w", ifindex, err)
	}
	d.link = l
	return nil
}

// Counters returns the decap_stats counters, indexed like DecapOutcomes.
func (d *Decap) Counters() ([]Counters, error) {
	out := make([]Counters, len(DecapOutcomes))
	for i := range out {
		var per []bpf.XlbDecapCounters
		if err := d.objs.DecapStats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read decap_stats: %w", err)
		}
		for _, p := range per {
			out[i].Packets += p.Packets
			out[i].Bytes += p.Bytes
		}
	}
	return out, nil
}

// Close detaches the program (if attached) and releases it.
func (d *Decap) Close() error {
	var errs []error
	if d.link != nil {
		errs = append(errs, d.link.Close())
		d.link = nil
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}
