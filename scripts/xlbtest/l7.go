package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Endpoints for testing an HTTP proxy in front of serve: what the backend
// saw, slow answers, chosen statuses, event streams and WebSocket echo.

const (
	// maxSlowMS bounds /slow?ms=.
	maxSlowMS = 60_000
	// maxSSEEvents and maxSSEGapMS bound /sse.
	maxSSEEvents = 10_000
	maxSSEGapMS  = 10_000
	// maxStatusBody bounds /status?body=.
	maxStatusBody = 64 << 10
)

// headersReply is the /headers answer: the request as the backend got it.
type headersReply struct {
	Backend string              `json:"backend"`
	Client  string              `json:"client"` // peer address
	Method  string              `json:"method"`
	Proto   string              `json:"proto"` // "HTTP/1.1", "HTTP/2.0"
	Host    string              `json:"host"`
	URI     string              `json:"uri"` // path and query
	Headers map[string][]string `json:"headers"`
}

// headers answers with the request's method, protocol, host, URI and every
// header (canonical names, values in order).
func (b *backend) headers(w http.ResponseWriter, r *http.Request) {
	rep := headersReply{
		Backend: b.name, Client: clientIP(r), Method: r.Method, Proto: r.Proto,
		Host: r.Host, URI: r.URL.RequestURI(), Headers: r.Header,
	}
	if rep.Headers == nil {
		rep.Headers = map[string][]string{}
	}
	body, _ := json.Marshal(rep)
	writeJSONBody(w, http.StatusOK, append(body, '\n'))
}

func writeJSONBody(w http.ResponseWriter, code int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body)
}

// intParam reads query parameter name as an integer in lo..hi, def when
// absent; ok is false (and a 400 was sent) when it is malformed.
func intParam(w http.ResponseWriter, r *http.Request, name string, def, lo, hi int) (int, bool) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		http.Error(w, fmt.Sprintf("%s must be an integer in %d..%d", name, lo, hi), http.StatusBadRequest)
		return 0, false
	}
	return n, true
}

// slow waits ms milliseconds (0..60000, default 1000) before the standard
// reply. When the client goes away or the server shuts down first, the
// connection is cut without an answer (never an empty 200).
func (b *backend) slow(w http.ResponseWriter, r *http.Request) {
	ms, ok := intParam(w, r, "ms", 1000, 0, maxSlowMS)
	if !ok {
		return
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-r.Context().Done():
		panic(http.ErrAbortHandler)
	case <-t.C:
	}
	b.reply(w, r)
}

// status answers with code (200..599, default 200) and body (default
// "status CODE from NAME\n") as text/plain.
func (b *backend) status(w http.ResponseWriter, r *http.Request) {
	code, ok := intParam(w, r, "code", http.StatusOK, 200, 599)
	if !ok {
		return
	}
	body := r.URL.Query().Get("body")
	if len(body) > maxStatusBody {
		http.Error(w, "body too long", http.StatusBadRequest)
		return
	}
	if _, set := r.URL.Query()["body"]; !set {
		body = fmt.Sprintf("status %d from %s\n", code, b.name)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write([]byte(body))
}

// sseEvent is the data of one /sse event.
type sseEvent struct {
	I       int       `json:"i"`
	N       int       `json:"n"`
	Backend string    `json:"backend"`
	Sent    time.Time `json:"sent"` // when the backend wrote it
}

// sse streams n events (default 5, at most 10000), one every ms milliseconds
// (default 200, at most 10000), as text/event-stream, flushing each:
//
//	id: I
//	data: {"i":I,"n":N,"backend":NAME,"sent":RFC3339NANO}
func (b *backend) sse(w http.ResponseWriter, r *http.Request) {
	n, ok := intParam(w, r, "n", 5, 1, maxSSEEvents)
	if !ok {
		return
	}
	gap, ok := intParam(w, r, "ms", 200, 0, maxSSEGapMS)
	if !ok {
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return
	}
	t := time.NewTicker(max(time.Duration(gap)*time.Millisecond, time.Millisecond))
	defer t.Stop()
	for i := 1; i <= n; i++ {
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
		data, _ := json.Marshal(sseEvent{I: i, N: n, Backend: b.name, Sent: time.Now()})
		fmt.Fprintf(w, "id: %d\ndata: %s\n\n", i, data)
		if rc.Flush() != nil {
			return
		}
	}
}
