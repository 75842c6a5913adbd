package h1

import "runtime"

// yieldBeforeWrite lets the other goroutines that are ready to run (the
// connections whose requests or answers arrived together with this one)
// reach their own writes first, so that the writes of one burst go out
// back to back.
//
// Why: a peer that finds nothing to read goes to sleep, and a write to a
// sleeping peer pays its wake-up, a cross-CPU interrupt that costs more
// than the write itself in a VM. Each goroutine reading, parsing and
// writing in turn spaces the writes by the work in between, long enough
// for an nginx backend to sleep after each request: behind xlb it slept
// 0.47 times per request, behind HAProxy (whose event loop reads all that
// is ready, then writes all) 0.06. Yielding first took it to 0.10, and
// cut xlb's CPU per request by a sixth (binaries side by side, wrk -c50,
// docs/performance.md). With nothing else ready to run it returns at
// once: one connection alone loses no time.
func yieldBeforeWrite() { runtime.Gosched() }
