package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/xlb-dev/xlb/control"
)

const nodeUsage = `usage:
  xlb node drain    withdraw every VIP from the routers (BGP): new flows go to the
                    other nodes, open connections here finish; forwarding goes on
  xlb node ready    announce the VIPs with a usable backend again
  xlb node status   the node's state, BGP sessions and announced VIPs
Common flags: --admin ADDR, --token TOKEN (or $XLB_ADMIN_TOKEN), -c FILE.`

// nodeUsages are the subcommands' --help texts.
var nodeUsages = map[string]string{
	"drain": `usage: xlb node drain
Withdraw every VIP from the routers: new flows go to the other nodes while
connections open here finish (this node still forwards what reaches it).`,
	"ready": `usage: xlb node ready
Announce again every VIP that has a usable backend.`,
	"status": `usage: xlb node status
Show the node's state, each BGP peer's session and the announced VIPs.`,
}

func nodeCmd(args []string, out io.Writer) error {
	sub, args, help, err := subcommand("node", args, nodeUsage, nodeUsages, out)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("node "+sub, flag.ContinueOnError)
	addr, token, cfgPath := adminFlags(fs)
	pos, err := parseArgs(fs, args, help, out)
	if err != nil {
		return err
	}
	if err := noArgs(fs, pos); err != nil {
		return err
	}
	c, err := newAdminClient(*addr, *token, *cfgPath)
	if err != nil {
		return err
	}
	var info control.NodeInfo
	switch sub {
	case "drain":
		err = c.do(http.MethodPost, "/lb/admin/node/drain", nil, &info)
	case "ready":
		err = c.do(http.MethodPost, "/lb/admin/node/ready", nil, &info)
	default:
		err = c.do(http.MethodGet, "/lb/node", nil, &info)
	}
	var ae *errAPI
	if errors.As(err, &ae) && ae.code == http.StatusBadRequest {
		return &exitError{2, err}
	}
	if err != nil {
		return err
	}
	printNode(out, info)
	return nil
}

// printNode writes the node's state, its BGP peers and what it announces.
func printNode(out io.Writer, info control.NodeInfo) {
	fmt.Fprintf(out, "node: %s\n", info.State)
	if info.BGP == nil {
		fmt.Fprintln(out, "bgp: off (no [bgp] table)")
		return
	}
	b := info.BGP
	announced := make([]string, len(b.Announced))
	for i, p := range b.Announced {
		announced[i] = p.String()
	}
	withheld := make([]string, len(info.Withheld))
	for i, p := range info.Withheld {
		withheld[i] = p.String()
	}
	fmt.Fprintf(out, "bgp: asn %d, router id %s; announced: %s; withheld: %s\n", b.LocalASN, b.RouterID,
		orNone(strings.Join(announced, " ")), orNone(strings.Join(withheld, " ")))
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintf(w, "PEER\tASN\tSTATE\tSINCE\tLOCAL ADDRESS\tADVERTISED\n")
	for _, p := range b.Peers {
		since := "-"
		if p.Since != nil {
			since = p.Since.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%d\n", p.Address, p.ASN, p.State, since, orDash(p.LocalAddress), p.Advertised)
	}
	w.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
