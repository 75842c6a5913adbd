// Package bpf holds xlb's XDP datapath: the C program (xlb.c), the types it
// shares with Go (xlb.h) and the bpf2go output that embeds the compiled object.
//
// Regenerate with `make generate` (needs clang); the output is committed so a
// plain `go build` needs no C toolchain.
package bpf
