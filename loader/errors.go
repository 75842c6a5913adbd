package loader

import "errors"

var (
	// ErrNotRoot: loading XDP needs CAP_BPF and CAP_NET_ADMIN.
	ErrNotRoot = errors.New("xlb needs root (CAP_BPF and CAP_NET_ADMIN) to load XDP")
	// ErrNoInterface: the configured interface does not exist.
	ErrNoInterface = errors.New("no such interface")
	// ErrNoBPFFS: the pin directory is not on a mounted bpffs.
	ErrNoBPFFS = errors.New("not on a bpf filesystem")
	// ErrPinDirInUse: another daemon holds the pin directory's lock.
	ErrPinDirInUse = errors.New("pin directory in use by another xlb daemon")
	// ErrPinsDieWithProcess: the bpffs holding the pin directory is mounted
	// only in this process's mount namespace, so nothing pinned there can
	// outlive the process.
	ErrPinsDieWithProcess = errors.New("the bpffs holding the pins is private to this process's mount namespace and goes when it exits")
	// ErrVerifier: the kernel's verifier rejected the program.
	ErrVerifier = errors.New("verifier rejected the XDP program")
	// ErrNotPinned: no pinned xlb datapath in the directory.
	ErrNotPinned = errors.New("no pinned xlb datapath")
	// ErrNotOnLink: a DSR backend must be on the LB's L2 segment.
	ErrNotOnLink = errors.New("backend is not on a directly connected network")
	// ErrUnresolved: the backend's MAC address could not be learnt.
	ErrUnresolved = errors.New("backend MAC address unresolved")
	// ErrNoRoutedResolver: the Resolver cannot find an ipip backend's next
	// hop (it is no RoutedResolver).
	ErrNoRoutedResolver = errors.New("resolver cannot resolve routed (ipip) backends")
	// ErrNATBypass: a nat backend is reached through an interface other
	// than the XDP one, so its answers (arriving there) would bypass the
	// translation back.
	ErrNATBypass = errors.New("nat backend reached through another interface than the XDP one: its answers would bypass xlb")
	// ErrNoTCX: the kernel cannot attach TC programs with tcx (Linux 6.6+).
	ErrNoTCX = errors.New("kernel without tcx (TC programs through bpf links need Linux 6.6 or later)")
	// ErrFull: no free service or backend id.
	ErrFull = errors.New("map full")
)
