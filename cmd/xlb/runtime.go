package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
)

// defaultGCPercent is the daemon's GOGC unless the environment sets one. The
// proxy's live heap is small (megabytes) and its garbage is per request, so
// Go's default of 100 collects thousands of times a minute under load; 400
// cut the L7 tier's CPU per request by about a tenth (make bench-l7) for a
// few more megabytes of heap.
const defaultGCPercent = 400

// tuneRuntime applies daemon.threads (GOMAXPROCS; 0 keeps Go's default) and
// the GC target.
func tuneRuntime(threads uint32) {
	if threads > 0 {
		runtime.GOMAXPROCS(int(threads))
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
}

// sysmonAwake is the GODEBUG setting the daemon runs with: schedtrace at its
// longest period (2^31-1 ms, 24.8 days).
//
// Why: when every P is idle (a proxy waiting on the network between
// requests), the Go runtime's monitor thread sleeps on a futex, and the next
// system call of any goroutine wakes it first (runtime.entersyscall ->
// entersyscallWakeSysmon). A proxy makes its first system call right after
// every wake-up, so at low load each request paid one or two cross-CPU
// futex wake-ups on its own path: 30 us of its median at one connection and
// a third of its CPU (make bench-l7, c1). With schedtrace set the monitor
// never takes that sleep; idle, it polls every 10 ms instead. The one side
// effect: on a host up for more than 24.8 days the runtime prints one
// "SCHED ..." line to stderr at start and every 24.8 days.
const sysmonAwake = "schedtrace=2147483647"

// keepSysmonAwake re-executes the daemon (same PID, same arguments) with
// sysmonAwake added to GODEBUG, unless GODEBUG already sets schedtrace
// (GODEBUG=schedtrace=0 keeps Go's default). It returns only if it did not
// re-execute.
func keepSysmonAwake() error {
	godebug := os.Getenv("GODEBUG")
	if strings.Contains(godebug, "schedtrace=") {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if godebug != "" {
		godebug += ","
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") })
	env = append(env, "GODEBUG="+godebug+sysmonAwake)
	return syscall.Exec(exe, os.Args, env)
}
