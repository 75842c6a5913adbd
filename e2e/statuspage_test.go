package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// transitionBound is how soon a health transition must show on the status
// page once the backend's health endpoint stops: two failed checks (100 ms
// apart, 80 ms timeout), the event stream and a redraw (the 2 s).
const transitionBound = 2 * time.Second

// TestStatusPageInBrowser loads the admin listener's status page in
// Debian's headless chromium, against the real xlb running an L4 and an L7
// service in namespaces: the page loads with no console error, no failed
// request and no CSP violation, shows every backend with its state and
// Maglev share and the verdicts, and when a backend's server (its health
// endpoint with it) stops, the transition shows as an event and in its
// rows within 2 s. The access log has a line per L7 request and starts a
// new file after a rename and SIGUSR1.
func TestStatusPageInBrowser(t *testing.T) {
	requireChromium(t)
	e := newOpsEnv(t, "xsp")
	e.traffic(t, 8, "21000-21099")

	// The browser: its own temporary profile, every process of it gone at
	// the end (chromedp's cancel, then a look for leftovers by PID).
	actx, acancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 1800),
		chromedp.Flag("no-first-run", true), chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-dev-shm-usage", true))
	ctx, cancel := chromedp.NewContext(actx)
	var dirArg string
	t.Cleanup(func() {
		cancel()
		acancel()
		if dirArg != "" {
			if n := killProcessesWith(dirArg); n > 0 {
				t.Errorf("%d browser processes outlived chromedp's cancel (killed)", n)
			}
		}
	})

	var mu sync.Mutex
	var problems []string
	note := func(format string, args ...any) {
		mu.Lock()
		problems = append(problems, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	if err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				note("console.%s: %s", ev.Type, strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			note("exception: %s %v", ev.ExceptionDetails.Text, ev.ExceptionDetails.Exception)
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError || ev.Entry.Level == cdplog.EntryLevelWarning {
				note("log %s (%s): %s %s", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
			}
		case *network.EventLoadingFailed:
			note("request failed: %s %s (blocked: %s)", ev.Type, ev.ErrorText, ev.BlockedReason)
		case *network.EventResponseReceived:
			if ev.Response.Status >= 400 {
				note("HTTP %d for %s", ev.Response.Status, ev.Response.URL)
			}
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if p := chromedp.FromContext(ctx).Browser.Process(); p != nil {
		var err error
		if dirArg, err = browserDirArg(p.Pid); err != nil {
			t.Fatal(err)
		}
	}
	step := func(what string, d time.Duration, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, d)
		defer scancel()
		if err := chromedp.Do(sctx, a); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(expr string) (bool, error) {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		defer scancel()
		return chromedp.Run(sctx, chromedp.Evaluate[bool]("Boolean("+expr+")"))
	}
	waitTrue := func(what, expr string, d time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			ok, err := eval(expr)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if ok {
				return time.Since(start)
			}
			if time.Since(start) > d {
				shot(t, ctx, "statuspage-"+strings.ReplaceAll(what, " ", "-"))
				t.Fatalf("%s: not within %v", what, d)
			}
			time.Sleep(25 * time.Millisecond)
		}
	}

	step("load the page", 30*time.Second, chromedp.Navigate(e.adminURL+"/lb/status"))
	b := func(svc string, i int) string {
		id := svc + "@" + e.tp.BackendAddr4(i)
		if svc == "ops-l7" {
			id += fmt.Sprintf(":%d", opsL7Port)
		}
		return id
	}
	row := func(id string) string { return fmt.Sprintf(`document.querySelector('tr[data-backend=%q]')`, id) }
	var all []string
	for _, svc := range []string{"ops-l4", "ops-l7"} {
		for i := 1; i <= 2; i++ {
			all = append(all, fmt.Sprintf(`(%[1]s && %[1]s.querySelector('td.state').textContent === 'up' && %[1]s.querySelector('td.health').textContent === 'healthy')`, row(b(svc, i))))
		}
	}
	waitTrue("every backend up and healthy", strings.Join(all, " && "), 10*time.Second)
	waitTrue("the event stream is live", `document.getElementById('live').textContent === 'live'`, 10*time.Second)
	waitTrue("Maglev shares of the L4 backends, adding up to 100%", fmt.Sprintf(`(() => {
		const s = [%s, %s].map(r => parseFloat(r.querySelector('td.share').textContent));
		return s.every(v => v > 40 && v < 60) && Math.abs(s[0] + s[1] - 100) < 0.2;
	})()`, row(b("ops-l4", 1)), row(b("ops-l4", 2))), 5*time.Second)
	waitTrue("the verdicts table", `!!document.querySelector('tr[data-verdict="pass/l7"]') && !!document.querySelector('tr[data-verdict="tx/forwarded"]')`, 5*time.Second)
	waitTrue("a chart drawn from the samples", `document.querySelectorAll('[data-service="ops-l7"] svg polyline').length >= 4`, 10*time.Second)

	// A backend's health endpoint stops: the page shows it within 2 s.
	e.stopServer(t, "b2")
	stopped := time.Now()
	took := waitTrue("the health transition on the page", fmt.Sprintf(`(() => {
		const ev = [...document.querySelectorAll('#events li[data-kind="health"]')].some(li =>
			li.dataset.backend === %q && li.textContent.includes('unhealthy'));
		const r = %s;
		return ev && r.querySelector('td.health').textContent === 'unhealthy' && r.querySelector('td.state').textContent === 'down';
	})()`, b("ops-l4", 2), row(b("ops-l4", 2))), transitionBound)
	t.Logf("the health transition showed %v after the server stopped (bound %v)", took.Round(time.Millisecond), transitionBound)
	if since := time.Since(stopped); since > transitionBound+time.Second {
		t.Errorf("the check itself took %v", since)
	}
	waitTrue("the L7 backend's transition too", fmt.Sprintf(`%s.querySelector('td.health').textContent === 'unhealthy'`, row(b("ops-l7", 2))), transitionBound)
	if path := os.Getenv("XLB_E2E_SCREENSHOT"); path != "" {
		shotTo(t, ctx, path)
	}

	mu.Lock()
	for _, p := range problems {
		t.Errorf("browser: %s", p)
	}
	mu.Unlock()

	t.Run("access log", func(t *testing.T) { e.checkAccessLog(t) })
}

// checkAccessLog: the L7 requests are in the access log, one JSON line
// each; after a rename and SIGUSR1 xlb writes to a new file.
func (e *opsEnv) checkAccessLog(t *testing.T) {
	lines := func(path string) []map[string]any {
		f, err := os.Open(path)
		if err != nil {
			return nil
		}
		defer f.Close()
		var out []map[string]any
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("access log line is not JSON: %v: %s", err, sc.Text())
				continue
			}
			out = append(out, m)
		}
		return out
	}
	waitFor(t, "8 access log lines", 5*time.Second, 20*time.Millisecond, func() bool { return len(lines(e.accessLog)) >= 8 })
	for _, m := range lines(e.accessLog) {
		if m["service"] != "ops-l7" || m["path"] != "/ops" || m["status"] != 200.0 || m["client"] != ClientAddr4 || m["backend"] == "" || m["request_id"] == "" {
			t.Errorf("access log line %v", m)
		}
	}
	rotated := e.accessLog + ".1"
	if err := os.Rename(e.accessLog, rotated); err != nil {
		t.Fatal(err)
	}
	if err := e.xlb.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	e.tp.WaitStderr(t, e.xlb, `msg="access log reopened"`, 5*time.Second)
	c := nsClient(e.tp.Namespace("cl"), 10*time.Second)
	if r := do(t, c, "GET", fmt.Sprintf("http://%s:%d/after-rotation", VIP4, opsL7Port)); r.Code != 200 {
		t.Fatalf("L7 request: %d", r.Code)
	}
	waitFor(t, "a line in the new file", 5*time.Second, 20*time.Millisecond, func() bool {
		l := lines(e.accessLog)
		return len(l) == 1 && l[0]["path"] == "/after-rotation"
	})
	if n := len(lines(rotated)); n < 8 {
		t.Errorf("the rotated file has %d lines", n)
	}
}

// shot saves a screenshot of the page into the test's log directory when
// a wait fails (best effort).
func shot(t *testing.T, ctx context.Context, name string) {
	dir := os.Getenv("XLB_E2E_SCREENSHOT_DIR")
	if dir == "" {
		return
	}
	shotTo(t, ctx, dir+"/"+name+".png")
}

func shotTo(t *testing.T, ctx context.Context, path string) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Logf("screenshot: %v", err)
		return
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Logf("screenshot: %v", err)
	}
}
