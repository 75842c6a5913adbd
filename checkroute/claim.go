package checkroute

import (
	"errors"
	"fmt"
	"hash/fnv"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Ranges split the tables Base+1..Base+0xffff among the daemons of one
// network namespace: range g holds tables Base + g<<rangeBits + 1..MaxSlots.
const (
	// Ranges is how many daemons of one network namespace can route checks.
	Ranges    = 1 << (16 - rangeBits)
	rangeBits = 12
)

// claimName is the abstract unix socket whose binding owns range g. Abstract
// sockets belong to a network namespace, as rules and routes do, and go
// with the process that bound them: a bound name is a live daemon's range,
// a free one is nobody's (or a killed daemon's), whatever the mount
// namespaces or pin directories.
func claimName(g int) string { return fmt.Sprintf("@xlb-checkroute-%d", g) }

// claim binds range g's socket in ns (netns.None(): the calling thread's
// namespace); ok is false when another process holds it.
func claim(ns netns.NsHandle, g int) (fd int, ok bool, err error) {
	fd, err = socketIn(ns)
	if err != nil {
		return -1, false, fmt.Errorf("claim socket: %w", err)
	}
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: claimName(g)})
	if errors.Is(err, unix.EADDRINUSE) {
		unix.Close(fd)
		return -1, false, nil
	}
	if err != nil {
		unix.Close(fd)
		return -1, false, fmt.Errorf("bind %s: %w", claimName(g), err)
	}
	return fd, true, nil
}

// socketIn makes a unix datagram socket in ns: a socket's namespace is its
// creator thread's, so a namespace other than the caller's takes a thread of
// its own, left locked so that it ends with its goroutine rather than go
// back to the pool in the wrong namespace.
func socketIn(ns netns.NsHandle) (int, error) {
	mk := func() (int, error) { return unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0) }
	if !ns.IsOpen() {
		return mk()
	}
	type result struct {
		fd  int
		err error
	}
	done := make(chan result)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			done <- result{-1, fmt.Errorf("enter namespace: %w", err)}
			return
		}
		fd, err := mk()
		done <- result{fd, err}
	}()
	r := <-done
	return r.fd, r.err
}

// preferredRange is where a daemon looks first: its instance's own, so that
// one restarted usually finds its range (and its leftovers) again.
func preferredRange(instance string) int {
	h := fnv.New32a()
	h.Write([]byte(instance))
	return int(h.Sum32() % Ranges)
}

// rangeOf is the range of table t, false if t is not one of xlb's tables.
func rangeOf(t int) (int, bool) {
	if uint32(t) <= Base || uint32(t) > Base+0xffff {
		return 0, false
	}
	return int(uint32(t)-Base) >> rangeBits, true
}
