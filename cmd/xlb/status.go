package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/loader"
)

const statusUsage = `usage: xlb status [--bpffs DIR] [--json] [--admin ADDR] [--token TOKEN] [-c FILE]
Show services, backends and counters from the pinned maps (no daemon needed)
and, when the daemon runs, its health and backends' admin state.`

func statusCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	dir := fs.String("bpffs", config.DefaultBPFFSDir, "bpffs directory the daemon pins its maps in")
	asJSON := fs.Bool("json", false, "print JSON")
	addr, token, cfgPath := adminFlags(fs)
	pos, err := parseArgs(fs, args, statusUsage, out)
	if err != nil {
		return err
	}
	if err := noArgs(fs, pos); err != nil {
		return err
	}
	if *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		if !isFlagSet(fs, "bpffs") {
			*dir = cfg.Daemon.BPFFSDir
		}
	}

	// The datapath, from the pins (works without a daemon)...
	var snap *loader.Snapshot
	maps, mapsErr := loader.OpenPinnedMaps(*dir)
	if mapsErr == nil {
		defer maps.Close()
		var err error
		if snap, err = maps.TakeSnapshot(); err != nil {
			return err
		}
	}
	// ...and the daemon's view (health, admin state), when it runs.
	var backends []control.BackendInfo
	var rep *control.HealthReport
	var node *control.NodeInfo
	c, err := newAdminClient(*addr, *token, *cfgPath)
	if err != nil {
		return err
	}
	apiErr := c.do(http.MethodGet, "/lb/backends", nil, &backends)
	if apiErr == nil {
		var h struct {
			control.HealthReport
			Node *control.NodeInfo `json:"node"`
		}
		var ae *errAPI
		// An unhealthy balancer answers 503 with the same report.
		err := c.do(http.MethodGet, "/lb/health", nil, &h)
		if err == nil || errors.As(err, &ae) && ae.code == http.StatusServiceUnavailable && json.Unmarshal(ae.body, &h) == nil {
			rep, node = &h.HealthReport, h.Node
		}
	}
	if snap == nil && apiErr != nil {
		return fmt.Errorf("%w; %v (is xlb running, or was it stopped with --keep-datapath?)", mapsErr, apiErr)
	}

	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Datapath *loader.Snapshot      `json:"datapath,omitempty"`
			Health   *control.HealthReport `json:"health,omitempty"`
			Backends []control.BackendInfo `json:"backends,omitempty"`
			Node     *control.NodeInfo     `json:"node,omitempty"`
		}{snap, rep, backends, node})
	}
	if rep != nil {
		fmt.Fprintf(out, "health: %s (%d of %d backends healthy)\n", rep.Status, rep.HealthyBackends, rep.TotalBackends)
	}
	if node != nil {
		printNode(out, *node)
	}
	if backends != nil {
		printBackends(out, backends)
		fmt.Fprintln(out)
	}
	if snap != nil {
		printStatus(out, snap)
	}
	return nil
}

func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func printBackends(out io.Writer, list []control.BackendInfo) {
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintf(w, "BACKEND\tSTATE\tHEALTH\tADMIN\tWEIGHT\tOPEN FLOWS\tNEW FLOWS\tPACKETS\tCHECKED AT\n")
	for _, b := range list {
		via := b.CheckVia // "address" or "vip" (check_via_vip)
		if via == "" {
			via = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", b.ID, b.State, b.Health, b.Admin, b.Weight, b.OpenFlows, b.NewFlows, b.Packets, via)
	}
	w.Flush()
}

func printStatus(out io.Writer, snap *loader.Snapshot) {
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	for _, s := range snap.Services {
		w.Flush()
		nat := ""
		if s.Forwarding == "nat" {
			nat = fmt.Sprintf("\tnat ports in use %d", s.NATPorts)
		}
		fmt.Fprintf(w, "service %s\t%s\t%s\t%s\tpackets %d\tbytes %d\tnew flows %d%s\n",
			s.Name, netip.AddrPortFrom(s.VIP, s.Port).String()+"/"+s.Protocol, s.Mode,
			strings.TrimSpace(s.Hash+" "+s.Forwarding), s.Packets, s.Bytes, s.NewFlows, nat)
		if s.Mode != "l4" {
			continue
		}
		fmt.Fprintf(w, "  BACKEND\tSTATE\tWEIGHT\tSHARE\tMAC\tPACKETS\tBYTES\tNEW FLOWS\tOPEN FLOWS\n")
		for _, b := range s.Backends {
			addr := b.Address.String()
			if b.Port != 0 { // nat: where translated packets go, and from
				addr = netip.AddrPortFrom(b.Address, b.Port).String() + " from " + b.Source.String()
			}
			fmt.Fprintf(w, "  %s\t%s\t%d\t%.1f%%\t%s\t%d\t%d\t%d\t%d\n",
				addr, b.State, b.Weight, 100*b.Share, b.MAC, b.Packets, b.Bytes, b.NewFlows, b.OpenFlows)
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
