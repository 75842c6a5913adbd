// Package loader is everything between xlb and the kernel: it loads the XDP
// collection from package bpf, pins its maps and link under a bpffs directory
// (adopting them on restart so established flows survive), attaches the
// program natively or in generic mode, gives typed access to the maps, resolves
// backends' MACs with netlink, and reconciles a desired state into map writes
// and whole-table Maglev ring swaps.
package loader
