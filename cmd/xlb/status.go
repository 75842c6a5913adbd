package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"text/tabwriter"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

func statusCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	dir := fs.String("bpffs", config.DefaultBPFFSDir, "bpffs directory the daemon pins its maps in")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return &exitError{2, err}
	}
	maps, err := loader.OpenPinnedMaps(*dir)
	if err != nil {
		return fmt.Errorf("%w (is xlb running, or was it stopped with --keep-datapath?)", err)
	}
	defer maps.Close()
	snap, err := maps.TakeSnapshot()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(snap)
	}
	printStatus(out, snap)
	return nil
}

func printStatus(out io.Writer, snap *loader.Snapshot) {
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	for _, s := range snap.Services {
		fmt.Fprintf(w, "service %s\t%s\t%s\t%s\tpackets %d\tbytes %d\tnew flows %d\n",
			s.Name, netip.AddrPortFrom(s.VIP, s.Port).String()+"/"+s.Protocol, s.Mode, s.Hash,
			s.Packets, s.Bytes, s.NewFlows)
		if s.Mode != "l4" {
			continue
		}
		fmt.Fprintf(w, "  BACKEND\tSTATE\tWEIGHT\tSHARE\tMAC\tPACKETS\tBYTES\tNEW FLOWS\tOPEN FLOWS\n")
		for _, b := range s.Backends {
			fmt.Fprintf(w, "  %s\t%s\t%d\t%.1f%%\t%s\t%d\t%d\t%d\t%d\n",
				b.Address, b.State, b.Weight, 100*b.Share, b.MAC, b.Packets, b.Bytes, b.NewFlows, b.OpenFlows)
		}
		if len(s.Backends) == 0 || allZero(s.Backends) {
			fmt.Fprintf(w, "  (no usable backend: packets to this service are dropped)\n")
		}
	}
	fmt.Fprintf(w, "\nVERDICT\tREASON\tPACKETS\tBYTES\n")
	for _, v := range snap.Verdicts {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\n", v.Verdict, v.Reason, v.Packets, v.Bytes)
	}
	w.Flush()
}

func allZero(bs []loader.BackendStatus) bool {
	for _, b := range bs {
		if b.Slots > 0 {
			return false
		}
	}
	return true
}
