package l7

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// The access log: one line per request a service handled, written by a
// goroutine of its own. A request hands its entry to a bounded channel and
// goes on; when the writer falls behind (a slow disk, a blocked pipe) the
// channel fills and entries are dropped and counted
// (xlb_l7_access_log_dropped_total), never waited for. The writer buffers
// its output (see run for when it flushes).

// Access log formats.
const (
	AccessLogJSON   = "json"   // one JSON object per line
	AccessLogCommon = "common" // the Common Log Format, then key=value extras
)

// DefaultAccessLogBuffer is how many entries wait for the writer before
// entries are dropped.
const DefaultAccessLogBuffer = 8192

// AccessEntry is one request as the access log writes it.
type AccessEntry struct {
	Time     time.Time     // the request's arrival
	Service  string        // the service that handled it
	Client   netip.Addr    // the real client (as X-Real-IP), invalid if unknown
	Method   string        //
	Host     string        // the Host header
	Path     string        // the path, without the query
	Proto    string        // "HTTP/1.1", "HTTP/2.0"
	Status   int           // the status sent; 499: the client went away first
	Bytes    int64         // response body bytes sent to the client
	Duration time.Duration // arrival to the end of the response
	Backend  string        // the backend's address:port; "" if none took it
	ID       string        // X-Request-Id
	Error    string        // the gateway error's kind (connect, timeout, ...), "" if none
}

// AccessLogOptions configure NewAccessLog.
type AccessLogOptions struct {
	// Path is "stdout", "stderr" or a file, opened for appending and
	// created (mode 0640) if missing. Ignored when Writer is set.
	Path string
	// Writer, if set, receives the log instead of Path (tests).
	Writer io.Writer
	Format string // AccessLogJSON ("" too) or AccessLogCommon
	Buffer int    // entries queued for the writer; 0: DefaultAccessLogBuffer
}

// AccessLog writes access log entries; see NewAccessLog.
type AccessLog struct {
	ch      chan AccessEntry
	reopen  chan chan error
	quit    chan struct{}
	done    chan struct{}
	dropped atomic.Uint64
	common  bool
	path    string // a file to reopen; "" for stdout, stderr or Writer

	closeOnce sync.Once
	closeErr  error

	// The writer goroutine's own.
	file *os.File  // the open file, if the log is one
	out  io.Writer // what bw writes to
	bw   *bufio.Writer
	line []byte
	err  error // the last write error, reported once
}

// NewAccessLog opens the log and starts its writer; Close stops it.
func NewAccessLog(o AccessLogOptions) (*AccessLog, error) {
	a := &AccessLog{
		reopen: make(chan chan error), quit: make(chan struct{}), done: make(chan struct{}),
		line: make([]byte, 0, 512),
	}
	switch o.Format {
	case "", AccessLogJSON:
	case AccessLogCommon:
		a.common = true
	default:
		return nil, fmt.Errorf("access log: unknown format %q (want %s or %s)", o.Format, AccessLogJSON, AccessLogCommon)
	}
	var w io.Writer
	switch {
	case o.Writer != nil:
		w = o.Writer
	case o.Path == "stdout":
		w = os.Stdout
	case o.Path == "stderr":
		w = os.Stderr
	case o.Path == "":
		return nil, errors.New("access log: no path")
	default:
		f, err := openAccessLog(o.Path)
		if err != nil {
			return nil, err
		}
		a.file, a.path, w = f, o.Path, f
	}
	a.out = w
	a.bw = bufio.NewWriterSize(w, 64<<10)
	a.ch = make(chan AccessEntry, cmpOr(o.Buffer, DefaultAccessLogBuffer))
	go a.run()
	return a, nil
}

func cmpOr(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

func openAccessLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("access log: %w", err)
	}
	return f, nil
}

// Log queues e for the writer, or drops and counts it if the queue is
// full. It never blocks. After Close it drops everything.
func (a *AccessLog) Log(e *AccessEntry) {
	select {
	case <-a.quit:
		a.dropped.Add(1)
		return
	default:
	}
	select {
	case a.ch <- *e:
	default:
		a.dropped.Add(1)
	}
}

// Dropped is how many entries were dropped because the writer fell behind.
func (a *AccessLog) Dropped() uint64 { return a.dropped.Load() }

// Reopen has the writer flush and reopen its file (after logrotate moved
// it); entries queued meanwhile go to the new file. A no-op for stdout and
// stderr.
func (a *AccessLog) Reopen() error {
	res := make(chan error, 1)
	select {
	case a.reopen <- res:
		return <-res
	case <-a.done:
		return errors.New("access log: closed")
	}
}

// Close writes what is queued, flushes and closes the file.
func (a *AccessLog) Close() error {
	a.closeOnce.Do(func() {
		close(a.quit)
		<-a.done
		if a.file != nil {
			if err := a.file.Close(); err != nil && a.closeErr == nil {
				a.closeErr = err
			}
		}
	})
	return a.closeErr
}

// The writer's pace. Idle, it waits on the queue, and the first entry
// wakes it. Busy, it drains the queue every drainTick without waiting on
// it, so that under load a request's send finds no writer to wake (a
// goroutine wake-up per request was most of the log's cost in make
// bench-l7). It flushes when a tick brought nothing, or flushEvery after
// its last flush at the latest.
const (
	drainTick  = 10 * time.Millisecond
	flushEvery = 100 * time.Millisecond
)

// run is the writer goroutine.
func (a *AccessLog) run() {
	defer close(a.done)
	tick := time.NewTimer(drainTick)
	tick.Stop()
	for {
		select { // idle
		case e := <-a.ch:
			a.write(&e)
		case res := <-a.reopen:
			res <- a.doReopen()
			continue
		case <-a.quit:
			a.finish()
			return
		}
		flushed := time.Now()
		for busy := true; busy; { // busy: drain every tick
			tick.Reset(drainTick)
			select {
			case <-tick.C:
			case res := <-a.reopen:
				tick.Stop()
				res <- a.doReopen()
				flushed = time.Now()
			case <-a.quit:
				tick.Stop()
				a.finish()
				return
			}
			n := a.drain()
			if busy = n > 0; !busy || time.Since(flushed) >= flushEvery {
				a.flush()
				flushed = time.Now()
			}
		}
	}
}

// drain writes what is queued now and says how many entries it was.
func (a *AccessLog) drain() int {
	for n := 0; ; n++ {
		select {
		case e := <-a.ch:
			a.write(&e)
		default:
			return n
		}
	}
}

// finish writes what is left and flushes, for Close.
func (a *AccessLog) finish() {
	a.drain()
	a.flush()
	a.closeErr = a.err
}

func (a *AccessLog) write(e *AccessEntry) {
	if a.common {
		a.line = appendCommon(a.line[:0], e)
	} else {
		a.line = appendJSON(a.line[:0], e)
	}
	if _, err := a.bw.Write(a.line); err != nil {
		a.noteErr(err)
	}
}

func (a *AccessLog) flush() {
	if err := a.bw.Flush(); err != nil {
		a.noteErr(err)
	}
}

// noteErr keeps a failed write's error for Close; bufio keeps failing
// after one, so the buffer is reset to retry on the next entry.
func (a *AccessLog) noteErr(err error) {
	if a.err == nil {
		slog.Error("access log: write failed; lines are lost until a write succeeds", "err", err)
	}
	a.err = err
	a.bw.Reset(a.out)
}

func (a *AccessLog) doReopen() error {
	a.flush()
	if a.path == "" {
		return nil
	}
	f, err := openAccessLog(a.path)
	if err != nil {
		return err // keep writing to the old file
	}
	old := a.file
	a.file, a.out = f, f
	a.bw.Reset(f)
	a.err = nil
	return old.Close()
}

// appendJSON appends e as one JSON object and a newline.
func appendJSON(b []byte, e *AccessEntry) []byte {
	b = append(b, `{"time":"`...)
	b = e.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","service":`...)
	b = appendJSONString(b, e.Service)
	b = append(b, `,"client":"`...)
	if e.Client.IsValid() {
		b = e.Client.AppendTo(b)
	}
	b = append(b, `","method":`...)
	b = appendJSONString(b, e.Method)
	b = append(b, `,"host":`...)
	b = appendJSONString(b, e.Host)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, e.Path)
	b = append(b, `,"proto":`...)
	b = appendJSONString(b, e.Proto)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, e.Bytes, 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(e.Duration.Microseconds())/1e3, 'f', 3, 64)
	b = append(b, `,"backend":`...)
	b = appendJSONString(b, e.Backend)
	b = append(b, `,"request_id":`...)
	b = appendJSONString(b, e.ID)
	b = append(b, `,"error":`...)
	b = appendJSONString(b, e.Error)
	return append(b, "}\n"...)
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			b = append(b, c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// appendCommon appends e in the Common Log Format (client, ident and user
// "-", [time], "request line", status, bytes or "-"), then the host in
// quotes and key=value extras: service, backend, duration_ms, request_id,
// error ("-" for an empty value).
func appendCommon(b []byte, e *AccessEntry) []byte {
	if e.Client.IsValid() {
		b = e.Client.AppendTo(b)
	} else {
		b = append(b, '-')
	}
	b = append(b, " - - ["...)
	b = e.Time.UTC().AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
	b = append(b, `] "`...)
	b = appendCommonEscaped(b, e.Method)
	b = append(b, ' ')
	b = appendCommonEscaped(b, e.Path)
	b = append(b, ' ')
	b = appendCommonEscaped(b, e.Proto)
	b = append(b, `" `...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, ' ')
	if e.Bytes > 0 {
		b = strconv.AppendInt(b, e.Bytes, 10)
	} else {
		b = append(b, '-')
	}
	b = append(b, ` "`...)
	b = appendCommonEscaped(b, e.Host)
	b = append(b, `" service=`...)
	b = appendCommonWord(b, e.Service)
	b = append(b, " backend="...)
	b = appendCommonWord(b, e.Backend)
	b = append(b, " duration_ms="...)
	b = strconv.AppendFloat(b, float64(e.Duration.Microseconds())/1e3, 'f', 3, 64)
	b = append(b, " request_id="...)
	b = appendCommonWord(b, e.ID)
	b = append(b, " error="...)
	b = appendCommonWord(b, e.Error)
	return append(b, '\n')
}

// appendCommonEscaped appends s as Apache escapes the request line: '"'
// and '\' backslashed, other bytes outside printable ASCII as \xHH.
func appendCommonEscaped(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c >= 0x7f:
			b = append(b, '\\', 'x', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendCommonWord is appendCommonEscaped for a value that must stay one
// word: spaces escaped too, "-" for an empty value.
func appendCommonWord(b []byte, s string) []byte {
	if s == "" {
		return append(b, '-')
	}
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' {
			b = append(b, `\x20`...)
			continue
		}
		b = appendCommonEscaped(b, s[i:i+1])
	}
	return b
}
