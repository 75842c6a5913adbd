package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vishvananda/netlink"

	"github.com/xlb-dev/xlb/admin"
	"github.com/xlb-dev/xlb/bgp"
	"github.com/xlb-dev/xlb/checkroute"
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/l7"
	"github.com/xlb-dev/xlb/loader"
	"github.com/xlb-dev/xlb/statuspage"
)

const runUsage = `usage: xlb run -c FILE [--keep-datapath]
Run the daemon until SIGINT or SIGTERM; SIGHUP reloads the config file.`

func runCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	path := fs.String("c", "", "config file")
	keep := fs.Bool("keep-datapath", false, "on exit leave the XDP program attached and the maps pinned, for a restart that adopts them")
	pos, err := parseArgs(fs, args, runUsage, out)
	if err != nil {
		return err
	}
	if err := noArgs(fs, pos); err != nil {
		return err
	}
	if *path == "" {
		return usageError("run: -c FILE is required")
	}
	if err := keepSysmonAwake(); err != nil {
		slog.Warn("running with Go's default scheduler monitor", "err", err)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	// Checks of the host that need nothing loaded come before anything is.
	if err := control.CheckNATPorts(cfg); err != nil {
		return fmt.Errorf("apply config: %w", err)
	}
	log := newLogger(cfg.Daemon)
	slog.SetDefault(log)
	tuneRuntime(cfg.Daemon.Threads)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var rec *loader.Reconciler
	var maps *loader.Maps
	var dp *loader.Datapath
	var routes control.CheckRoutes // stays nil (not a nil *Router) without a datapath
	var routeChanges chan struct{}
	root := os.Geteuid() == 0
	switch {
	case cfg.Daemon.Interface == "":
		log.Warn("no XDP interface configured: the L4 datapath is off, only the L7 tier runs")
	case !root && hasMode(cfg, config.ModeL7):
		log.Warn("not root: the L4 datapath is off, only the L7 tier runs; L4 services are not served")
	case !root:
		return loader.ErrNotRoot
	default:
		dp, err = loader.Open(loader.Options{
			Interface:  cfg.Daemon.Interface,
			Mode:       cfg.Daemon.XDPMode,
			PinDir:     cfg.Daemon.BPFFSDir,
			KeepOnExit: *keep,
			Logger:     log,
			// Sizes only: the controller writes the flow timeouts.
			ConntrackSize: cfg.Datapath.ConntrackSize,
			MaxBackends:   cfg.Datapath.MaxBackends,
			// The host's own connections to L4 VIPs, through the
			// cgroup v2 root.
			SteerLocal: !cfg.Daemon.DisableSteerLocal,
		})
		if errors.Is(err, loader.ErrPinsDieWithProcess) {
			return fmt.Errorf("--keep-datapath: %w (`ip netns exec` gives xlb such a namespace: start it with `nsenter --net=/run/netns/NAME` instead, "+
				"or set bpffs_dir on a bpffs mounted in the host's mount namespace)", err)
		}
		if err != nil {
			return err
		}
		if dp.Adopted {
			log.Info("adopted pinned maps: established flows keep their backends", "dir", cfg.Daemon.BPFFSDir)
		}
		defer closeDatapath(dp, *keep, cfg.Daemon.BPFFSDir, log)
		rec, err = loader.NewReconciler(&dp.Maps, loader.NetlinkResolver{}, dp.IfIndex, log)
		if err != nil {
			return err
		}
		rec.Metrics = loader.NewMetrics(reg)
		maps = &dp.Maps
		reg.MustRegister(loader.NewCollector(maps, rec))
		// Opened whatever the config says: it also removes what a killed
		// daemon left.
		r, err := checkroute.Open(checkroute.Options{Logger: log, Instance: cfg.Daemon.BPFFSDir})
		if err != nil {
			return err
		}
		defer closeRoutes(r, log)
		routes = r
		routeChanges = watchRoutes(ctx, log)
	}

	vips := &vipSet{log: log, root: root}
	defer vips.close()
	vips.sync(cfg)

	d := &cfg.Daemon
	accessLog, err := openAccessLog(ctx, d, log)
	if err != nil {
		return err
	}
	if accessLog != nil {
		defer accessLog.Close() // after the L7 tier's shutdown below
	}
	events := control.NewEvents(0) // the status page's
	proxy := l7.NewServer(l7.Options{
		Logger: log, Registerer: reg,
		HeadTimeout: d.HeadTimeout, IdleTimeout: d.IdleTimeout, ClientTimeout: d.ClientTimeout,
		MaxRequestLine: int(d.MaxRequestLine), MaxRequestHead: int(d.MaxRequestHead),
		AccessLog: accessLog,
		OnEject: func(service string, u *l7.Upstream, until time.Time, reason string) {
			log.Warn("backend ejected by passive health", "service", service, "backend", u.ID,
				"until", until.Format(time.RFC3339), "reason", reason)
			events.Add(control.EventEject, service, u.ID, "ejected by passive health until %s: %s", until.Format(time.TimeOnly), reason)
		},
	})
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Daemon.ShutdownGrace)
		defer cancel()
		if err := proxy.Shutdown(sctx); err != nil {
			log.Warn("L7 shutdown: requests still running at the end of the grace period", "err", err)
		}
	}()

	hm := health.NewManager(log, health.NewMetrics(reg))
	defer hm.Close()
	ctl := control.New(cfg, control.Options{
		Reconciler: rec, Maps: maps, L7: proxy, Health: hm, CheckRoutes: routes, RouteChanges: routeChanges,
		Logger: log, Metrics: control.NewMetrics(reg), Events: events,
	})
	bgp.NewMetrics(reg, ctl.BGPStatus)
	// Whatever ends this run ends the BGP sessions; a graceful stop has
	// withdrawn the VIPs and waited already (StopBGP below).
	defer ctl.StopBGP(0)

	var reloadMu sync.Mutex
	reload := func() (err error) {
		reloadMu.Lock()
		defer reloadMu.Unlock()
		defer func() {
			if err != nil {
				events.Add(control.EventReload, "", "", "reload refused, the running config stays: %v", err)
			}
		}()
		next, err := config.Load(*path)
		if err != nil {
			return err
		}
		vips.sync(next) // before the L7 tier binds a new add_vip VIP
		if err := ctl.Reload(next); err != nil {
			vips.sync(ctl.Config())
			return err
		}
		return nil
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	// A start that fails after the admin API is up must end it before
	// waiting for it (the signal context ends only on a signal).
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	if cfg.Admin.Listen != "" {
		token, err := admin.LoadToken(cfg.Admin.TokenFile, cfg.Admin.TokenEnv)
		if err != nil {
			return err
		}
		if token == "" {
			log.Warn("admin API: no token configured, mutating endpoints are disabled")
		}
		l, err := admin.Listen(cfg.Admin.Listen)
		if err != nil {
			return fmt.Errorf("admin listener %s: %w", cfg.Admin.Listen, err)
		}
		page := statuspage.New(ctl, reg, statuspage.Options{Version: versionString(debug.ReadBuildInfo())})
		wg.Go(func() { page.Run(serveCtx) })
		srv := admin.New(ctl, admin.Options{Token: token, Gatherer: reg, Reload: reload, Logger: log, LB: proxy.LBHandler(), Status: page})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := admin.Serve(serveCtx, l, srv); err != nil {
				log.Error("admin listener", "err", err)
			}
		}()
		log.Info("admin API listening", "addr", cfg.Admin.Listen)
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := reload(); err != nil {
					log.Error("reload refused: the running config stays in force", "err", err)
				}
			}
		}
	}()

	if err := ctl.Start(ctx); err != nil {
		return fmt.Errorf("apply config: %w", err)
	}
	// Started: only now does this run's datapath replace what it adopted.
	if dp != nil {
		if err := dp.Commit(); err != nil {
			return fmt.Errorf("take over the pinned datapath: %w", err)
		}
	}
	log.Info("xlb running", "interface", cfg.Daemon.Interface, "services", len(cfg.Services), "config", *path)
	ctl.Run(ctx)
	log.Info("shutting down")
	// Routers first: the VIPs are withdrawn and, for shutdown_grace, this
	// node keeps forwarding what still reaches it; only then do the L7
	// tier and the datapath stop.
	if b := ctl.Config().BGP; b != nil {
		ctl.StopBGP(b.ShutdownGrace)
	}
	return nil
}

// closeDatapath closes dp and says what it left: a start that failed leaves
// the datapath as it found it; a daemon that ran leaves it pinned with keep,
// removed without.
func closeDatapath(dp *loader.Datapath, keep bool, dir string, log *slog.Logger) {
	committed := dp.Committed()
	if err := dp.Close(keep); err != nil {
		log.Error("closing datapath", "err", err)
	}
	// What is attached: the XDP program, or its TC build in mode tc.
	what := "XDP"
	if dp.Mode == loader.XDPTC {
		what = "TC program"
	}
	switch {
	case !committed:
		log.Warn("start failed: the datapath is left as this start found it (an adopted "+what+" link stays attached, pins and maps unchanged)", "dir", dir)
	case keep:
		log.Info("datapath kept: "+what+" stays attached, maps stay pinned", "dir", dir)
	default:
		log.Info(what + " detached and pins removed")
	}
}

// watchRoutes signals route changes until ctx ends, coalesced into one
// pending signal; the check routes' own changes are not signalled.
func watchRoutes(ctx context.Context, log *slog.Logger) chan struct{} {
	changes := make(chan struct{}, 1)
	ignore := func(r netlink.Route) bool { return r.Protocol == checkroute.Protocol }
	go func() {
		err := loader.WatchRoutes(ctx, ignore, func() {
			select {
			case changes <- struct{}{}:
			default:
			}
		})
		if err != nil {
			log.Warn("not watching route changes: backends keep the interface they were resolved on until unresolved", "err", err)
		}
	}()
	return changes
}

// closeRoutes removes the routes of the checks through a VIP; the checks
// have stopped (the health manager closes first).
func closeRoutes(r *checkroute.Router, log *slog.Logger) {
	if err := r.Close(); err != nil {
		log.Error("removing check routes", "err", err)
	}
}

func hasMode(cfg *config.Config, m config.Mode) bool {
	for _, s := range cfg.Services {
		if s.Mode == m {
			return true
		}
	}
	return false
}

// vipSet keeps the VIPs of add_vip services on lo while xlb runs.
type vipSet struct {
	log   *slog.Logger
	root  bool
	owned map[netip.Addr]func() error
}

func (v *vipSet) sync(cfg *config.Config) {
	want := map[netip.Addr]bool{}
	for _, s := range cfg.Services {
		if s.Mode == config.ModeL7 && s.AddVIP {
			want[s.VIP] = true
		}
	}
	if v.owned == nil {
		v.owned = map[netip.Addr]func() error{}
	}
	for vip := range want {
		if _, ok := v.owned[vip]; ok {
			continue
		}
		if !v.root {
			v.log.Warn("add_vip needs root: VIP not added", "vip", vip)
			continue
		}
		remove, err := loader.AddVIP(vip)
		if err != nil {
			v.log.Error("add_vip", "vip", vip, "err", err)
			continue
		}
		v.owned[vip] = remove
		v.log.Info("VIP added to lo", "vip", vip)
	}
	for vip, remove := range v.owned {
		if !want[vip] {
			remove()
			delete(v.owned, vip)
		}
	}
}

func (v *vipSet) close() {
	for vip, remove := range v.owned {
		if err := remove(); err != nil {
			v.log.Warn("removing VIP", "vip", vip, "err", err)
		}
	}
}

func newLogger(d config.Daemon) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(d.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if d.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
