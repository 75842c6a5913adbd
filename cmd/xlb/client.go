package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/control"
)

// adminClient talks to a running daemon's admin API.
type adminClient struct {
	base  string // http://host:port
	token string
	hc    *http.Client
}

// adminFlags registers the flags every admin client command shares.
func adminFlags(fs *flag.FlagSet) (addr, token, cfgPath *string) {
	addr = fs.String("admin", "", "admin API address, host:port or unix:/path (default: from -c, else "+config.DefaultAdmin().Listen+")")
	token = fs.String("token", "", "admin bearer token (default: $XLB_ADMIN_TOKEN)")
	cfgPath = fs.String("c", "", "config file to take [admin] listen and the token from")
	return
}

func newAdminClient(addr, token, cfgPath string) (*adminClient, error) {
	if cfgPath != "" {
		cfg, err := config.Load(cfgPath)
		if err != nil {
			return nil, err
		}
		if addr == "" {
			addr = cfg.Admin.Listen
		}
		if token == "" && cfg.Admin.TokenFile != "" {
			b, err := os.ReadFile(cfg.Admin.TokenFile)
			if err != nil {
				return nil, fmt.Errorf("admin token file: %w", err)
			}
			token = strings.TrimSpace(string(b))
		}
	}
	if addr == "" {
		addr = config.DefaultAdmin().Listen
	}
	if err := checkAdminAddr(addr); err != nil {
		return nil, err
	}
	if token == "" {
		token = os.Getenv("XLB_ADMIN_TOKEN")
	}
	c := &adminClient{base: "http://" + addr, token: token, hc: &http.Client{Timeout: 10 * time.Second}}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		c.base = "http://xlb"
		c.hc.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
	}
	return c, nil
}

// errAPI is an error answer of the admin API.
type errAPI struct {
	code int
	msg  string
	body []byte // the whole answer, for endpoints whose errors carry data (/lb/health: 503)
}

func (e *errAPI) Error() string {
	return fmt.Sprintf("admin API: %d %s: %s", e.code, http.StatusText(e.code), e.msg)
}

func (c *adminClient) do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API unreachable: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return &errAPI{resp.StatusCode, e.Error, raw}
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

const backendUsage = `usage:
  xlb backend add --service NAME --address ADDR [--port N] [--weight N] [--mac MAC]
  xlb backend drain ID      stop new flows/requests; established ones finish
  xlb backend ready ID      take new flows again
  xlb backend remove ID     drain, then remove once its flows end (or after drain_timeout)
  xlb backend list [--service NAME]
IDs are service@address (L4) or service@address:port (L7), as 'xlb backend list' shows.
Common flags: --admin ADDR, --token TOKEN (or $XLB_ADMIN_TOKEN), -c FILE; flags may
come before or after the ID. xlb backend COMMAND --help lists a command's flags.`

// backendUsages are the subcommands' --help texts.
var backendUsages = map[string]string{
	"add": `usage: xlb backend add --service NAME --address ADDR [--port N] [--weight N] [--mac MAC]
Add a backend (ready, health-checked like the service's others). --port is for
L7 services only (1..65535), --mac for L4 services only; --weight is 0..65535.`,
	"drain": `usage: xlb backend drain ID
Stop new flows/requests to backend ID; established ones finish.`,
	"ready": `usage: xlb backend ready ID
Take new flows again (also ends a passive-health ejection).`,
	"remove": `usage: xlb backend remove ID
Drain backend ID, then remove it once its flows end (or after drain_timeout).`,
	"list": `usage: xlb backend list [--service NAME]
List the backends as the daemon sees them.`,
}

func backendCmd(args []string, out io.Writer) error {
	sub, args, help, err := subcommand("backend", args, backendUsage, backendUsages, out)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("backend "+sub, flag.ContinueOnError)
	addr, token, cfgPath := adminFlags(fs)
	var service, address, mac *string
	var port, weight *rangeFlag
	switch sub {
	case "add":
		service = fs.String("service", "", "service name (required)")
		address = fs.String("address", "", "backend IP address (required)")
		port = newRangeFlag(fs, "port", 0, 1, 65535, "backend port (L7 services only)")
		weight = newRangeFlag(fs, "weight", 1, 0, config.MaxWeight, "weight")
		mac = fs.String("mac", "", "backend MAC (L4, optional)")
	case "list":
		service = fs.String("service", "", "only this service")
	}
	pos, err := parseArgs(fs, args, help, out)
	if err != nil {
		return err
	}
	// Everything is checked before the first byte goes to the daemon.
	var id string
	switch sub {
	case "add", "list":
		if err := noArgs(fs, pos); err != nil {
			return err
		}
	default:
		if len(pos) != 1 {
			return usageError("backend %s: exactly one backend ID (see xlb backend %s --help)", sub, sub)
		}
		id = pos[0]
	}
	var req control.AddRequest
	if sub == "add" {
		if *service == "" || *address == "" {
			return usageError("backend add: --service and --address are required")
		}
		if _, err := netip.ParseAddr(strings.TrimSpace(*address)); err != nil {
			return usageError("backend add: address %q is not an IP address", *address)
		}
		if *mac != "" {
			if hw, err := net.ParseMAC(*mac); err != nil || len(hw) != 6 {
				return usageError("backend add: mac %q is not an Ethernet address", *mac)
			}
		}
		w := int(weight.v)
		req = control.AddRequest{Service: *service, Address: *address, Port: uint16(port.v), Weight: &w, MAC: *mac}
	}
	c, err := newAdminClient(*addr, *token, *cfgPath)
	if err != nil {
		return err
	}
	var info control.BackendInfo
	switch sub {
	case "add":
		err = c.do(http.MethodPost, "/lb/admin/backends", req, &info)
	case "list":
		var list []control.BackendInfo
		q := ""
		if *service != "" {
			q = "?service=" + url.QueryEscape(*service)
		}
		if err := c.do(http.MethodGet, "/lb/backends"+q, nil, &list); err != nil {
			return err
		}
		printBackends(out, list)
		return nil
	case "drain":
		err = c.do(http.MethodPut, "/lb/admin/backends/"+url.PathEscape(id)+"/drain", nil, &info)
	case "ready":
		err = c.do(http.MethodPut, "/lb/admin/backends/"+url.PathEscape(id)+"/ready", nil, &info)
	case "remove":
		err = c.do(http.MethodDelete, "/lb/admin/backends/"+url.PathEscape(id), nil, &info)
	}
	var ae *errAPI
	if errors.As(err, &ae) && ae.code == http.StatusBadRequest {
		return &exitError{2, err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: state %s, admin %s, health %s, open flows %d\n", info.ID, info.State, info.Admin, info.Health, info.OpenFlows)
	return nil
}
