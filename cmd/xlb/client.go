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
Common flags: --admin ADDR, --token TOKEN (or $XLB_ADMIN_TOKEN), -c FILE.`

func backendCmd(args []string, out io.Writer) error {
	if len(args) == 0 {
		return usageError("%s", backendUsage)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("backend "+sub, flag.ContinueOnError)
	addr, token, cfgPath := adminFlags(fs)
	var service, address, mac *string
	var port, weight *int
	switch sub {
	case "add":
		service = fs.String("service", "", "service name")
		address = fs.String("address", "", "backend IP address")
		port = fs.Int("port", 0, "backend port (L7 services only)")
		weight = fs.Int("weight", 1, "weight")
		mac = fs.String("mac", "", "backend MAC (L4, optional)")
	case "list":
		service = fs.String("service", "", "only this service")
	case "drain", "ready", "remove":
	default:
		return usageError("unknown backend command %q\n%s", sub, backendUsage)
	}
	if err := fs.Parse(args); err != nil {
		return &exitError{2, err}
	}
	c, err := newAdminClient(*addr, *token, *cfgPath)
	if err != nil {
		return err
	}
	var info control.BackendInfo
	switch sub {
	case "add":
		if *service == "" || *address == "" {
			return usageError("backend add: --service and --address are required")
		}
		req := control.AddRequest{Service: *service, Address: *address, Port: uint16(*port), Weight: weight, MAC: *mac}
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
	default:
		if fs.NArg() != 1 {
			return usageError("backend %s: exactly one backend ID", sub)
		}
		id := url.PathEscape(fs.Arg(0))
		switch sub {
		case "drain":
			err = c.do(http.MethodPut, "/lb/admin/backends/"+id+"/drain", nil, &info)
		case "ready":
			err = c.do(http.MethodPut, "/lb/admin/backends/"+id+"/ready", nil, &info)
		case "remove":
			err = c.do(http.MethodDelete, "/lb/admin/backends/"+id, nil, &info)
		}
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
