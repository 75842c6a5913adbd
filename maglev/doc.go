// Package maglev holds the two pieces of load-balancing math that the XDP
// datapath (bpf/) and the Go side must agree on bit for bit: the packet hash
// ("xlb hash v1") and the Maglev lookup table.
//
// Hash: murmur3_x86_32 with seed [HashSeed] over the client source address
// ([SourceHash], the ip_hash mode) or over the 5-tuple ([FlowHash], the
// flow_hash mode). The byte layout is fixed by the shared contract and pinned
// by testdata/hash_vectors.json, which the C datapath tests read too.
//
// Table: Maglev consistent hashing (Eisenbud et al., NSDI 2016). [Build] maps
// each of M slots (M prime) to a backend so that a backend's share of slots
// matches its weight, removing a backend moves little more than that
// backend's own slots, and the same backend set gives a byte-identical table
// on every host, so several xlb hosts behind ECMP send a flow to the same
// backend. A packet lands on Entries()[hash % M].
//
// The package is pure Go with no dependency on the rest of xlb, so the L7
// proxy tier can use it without touching BPF.
package maglev
