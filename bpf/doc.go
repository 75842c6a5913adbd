// Package bpf holds xlb's BPF programs: the XDP datapath (xlb.c, with tunnel
// encapsulation in ipip.h; also built as a TC ingress program, XlbTc, with
// the context's differences in ctx.h), the backends' TC decapsulation
// (decap.c), the cgroup socket hooks that steer the host's own connections
// to L4 VIPs (sock.c, on the datapath's maps), the
// types they share with Go (xlb.h, decap.h, sock.h), the parsing and checksum headers
// both include (parse.h, csum.h), and the bpf2go output that embeds the
// compiled objects.
//
// Regenerate with `make generate` (needs clang); the output is committed so a
// plain `go build` needs no C toolchain.
package bpf
