// Package admin is xlb's control surface over HTTP: health, metrics, the
// backend list and the authenticated admin endpoints that change backends.
//
// Read endpoints (/lb/health, /lb/backends, /lb/node, /metrics, the status
// page at /lb/status) are open. Everything
// under /lb/admin/ needs "Authorization: Bearer <token>": 401 without it, 403
// with a wrong one. With no token configured the admin endpoints are
// disabled (403), not open. The token is compared in constant time and never
// logged.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/control"
)

// Controller is what the admin API drives; *control.Controller implements it.
type Controller interface {
	Health(service string) (control.HealthReport, error)
	Backends(service string) ([]control.BackendInfo, error)
	AddBackend(control.AddRequest) (control.BackendInfo, error)
	SetAdminState(id string, st control.AdminState) (control.BackendInfo, error)
	Remove(id string) (control.BackendInfo, error)
	Config() *config.Config
}

var _ Controller = (*control.Controller)(nil)

// NodeController is a Controller that drains the whole node (its VIPs
// withdrawn from the routers, see package bgp); *control.Controller is one.
// With it the API serves GET /lb/node, POST /lb/admin/node/drain and
// /lb/admin/node/ready, and /lb/health carries the node's state.
type NodeController interface {
	Node() control.NodeInfo
	SetNodeState(control.NodeState) (control.NodeInfo, error)
}

var _ NodeController = (*control.Controller)(nil)

// maxBody bounds admin request bodies.
const maxBody = 64 << 10

// Server is the admin HTTP handler.
type Server struct {
	ctl    Controller
	token  []byte // sha256 of the token; nil: admin endpoints disabled
	reload func() error
	log    *slog.Logger
	mux    *http.ServeMux
	node   NodeController // nil: no node endpoints
}

// Options configure New.
type Options struct {
	Token    string // "" disables the mutating endpoints
	Gatherer prometheus.Gatherer
	// Reload re-reads and applies the config file (POST /lb/admin/reload).
	Reload func() error
	// LB serves /lb/metrics (the L7 tier's JSON metrics).
	LB http.Handler
	// Status serves the read-only status page, GET /lb/status and
	// /lb/status/... (package statuspage); GET / redirects to it.
	Status http.Handler
	Logger *slog.Logger
}

// New builds the handler.
func New(ctl Controller, o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{ctl: ctl, reload: o.Reload, log: o.Logger, mux: http.NewServeMux()}
	if o.Token != "" {
		sum := sha256.Sum256([]byte(o.Token))
		s.token = sum[:]
	}
	if o.Gatherer != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	}
	s.mux.HandleFunc("GET /lb/health", s.health)
	if o.LB != nil {
		s.mux.Handle("GET /lb/metrics", o.LB)
	}
	s.mux.HandleFunc("GET /lb/backends", s.backends)
	if o.Status != nil {
		s.mux.Handle("GET /lb/status", o.Status)
		s.mux.Handle("GET /lb/status/", o.Status)
		s.mux.Handle("GET /{$}", http.RedirectHandler("/lb/status", http.StatusFound))
	}
	s.mux.HandleFunc("POST /lb/admin/backends", s.auth(s.addBackend))
	s.mux.HandleFunc("PUT /lb/admin/backends/{id}/drain", s.auth(s.setState(control.AdminDraining)))
	s.mux.HandleFunc("PUT /lb/admin/backends/{id}/ready", s.auth(s.setState(control.AdminReady)))
	s.mux.HandleFunc("DELETE /lb/admin/backends/{id}", s.auth(s.remove))
	if nc, ok := ctl.(NodeController); ok {
		s.node = nc
		s.mux.HandleFunc("GET /lb/node", s.nodeInfo)
		s.mux.HandleFunc("POST /lb/admin/node/drain", s.auth(s.setNode(control.NodeDraining)))
		s.mux.HandleFunc("POST /lb/admin/node/ready", s.auth(s.setNode(control.NodeReady)))
	}
	s.mux.HandleFunc("GET /lb/admin/config", s.auth(s.config))
	s.mux.HandleFunc("POST /lb/admin/reload", s.auth(s.doReload))
	// Go's profiler, behind the token: `go tool pprof` with -H "Authorization: Bearer ..."
	// or curl -H ... /debug/pprof/profile?seconds=10 > cpu.pprof.
	s.mux.HandleFunc("GET /debug/pprof/", s.auth(pprof.Index))
	s.mux.HandleFunc("GET /debug/pprof/profile", s.auth(pprof.Profile))
	s.mux.HandleFunc("GET /debug/pprof/trace", s.auth(pprof.Trace))
	s.mux.HandleFunc("GET /debug/pprof/symbol", s.auth(pprof.Symbol))
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// LoadToken reads the admin token: the file wins over the environment.
func LoadToken(file, env string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("admin token file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if env != "" {
		return strings.TrimSpace(os.Getenv(env)), nil
	}
	return "", nil
}

// Listen opens the admin listener: "host:port" or "unix:/path".
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		os.Remove(path) // a stale socket from a previous run
		return net.Listen("unix", path)
	}
	return net.Listen("tcp", addr)
}

// Serve runs the handler on l until ctx ends.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *Server) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.token == nil {
			httpError(w, http.StatusForbidden, "admin API disabled: no token configured ([admin] token_file or token_env)")
			return
		}
		h := r.Header.Get("Authorization")
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if h == "" || !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="xlb"`)
			httpError(w, http.StatusUnauthorized, "missing bearer token")
			return
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		if subtle.ConstantTimeCompare(sum[:], s.token) != 1 {
			s.log.Warn("admin API: wrong token", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			httpError(w, http.StatusForbidden, "wrong token")
			return
		}
		next(w, r)
	}
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	rep, err := s.ctl.Health(r.URL.Query().Get("service"))
	if err != nil {
		controlError(w, err)
		return
	}
	code := http.StatusOK
	if rep.Status == "unhealthy" {
		code = http.StatusServiceUnavailable
	}
	if s.node != nil && r.URL.Query().Get("service") == "" {
		node := s.node.Node()
		writeJSON(w, code, struct {
			control.HealthReport
			Node *control.NodeInfo `json:"node"`
		}{rep, &node})
		return
	}
	writeJSON(w, code, rep)
}

func (s *Server) nodeInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.node.Node())
}

func (s *Server) setNode(st control.NodeState) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		info, err := s.node.SetNodeState(st)
		if err != nil {
			controlError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	}
}

func (s *Server) backends(w http.ResponseWriter, r *http.Request) {
	list, err := s.ctl.Backends(r.URL.Query().Get("service"))
	if err != nil {
		controlError(w, err)
		return
	}
	if list == nil {
		list = []control.BackendInfo{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) addBackend(w http.ResponseWriter, r *http.Request) {
	var req control.AddRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		httpError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return
	}
	if req.Service == "" || req.Address == "" {
		httpError(w, http.StatusBadRequest, `"service" and "address" are required`)
		return
	}
	info, err := s.ctl.AddBackend(req)
	if err != nil {
		controlError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (s *Server) setState(st control.AdminState) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		info, err := s.ctl.SetAdminState(r.PathValue("id"), st)
		if err != nil {
			controlError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	}
}

func (s *Server) remove(w http.ResponseWriter, r *http.Request) {
	info, err := s.ctl.Remove(r.PathValue("id"))
	if err != nil {
		controlError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, info)
}

func (s *Server) config(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.ctl.Config())
}

func (s *Server) doReload(w http.ResponseWriter, r *http.Request) {
	if s.reload == nil {
		httpError(w, http.StatusNotImplemented, "reload not available")
		return
	}
	if err := s.reload(); err != nil {
		httpError(w, http.StatusBadRequest, "reload refused, the running config stays in force: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "reloaded"})
}

func controlError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, control.ErrUnknownService), errors.Is(err, control.ErrBadRequest):
		httpError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, control.ErrUnknownBackend):
		httpError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, control.ErrExists):
		httpError(w, http.StatusConflict, err.Error())
	default:
		httpError(w, http.StatusInternalServerError, err.Error())
	}
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
