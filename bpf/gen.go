package bpf

// The C structs and enums below cross the user/kernel boundary; bpf2go turns
// them into Go types so they are defined once, in xlb.h.
//go:generate go tool bpf2go -go-package bpf -tags linux -target bpfel -type svc_key -type svc_value -type backend -type flow_key -type flow_value -type counters -type svc_info -type reason -type svc_kind -type hash_mode -type backend_state -type family -type limits -type flow_flags -type idle_timeouts -type forwarding -type nat_port_range -type nat_flow -type nat_binding -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" Xlb xlb.c -- -I.

// XlbBench is the same program built for `make bench-xdp` only: each rerun
// under BPF_PROG_TEST_RUN becomes a new flow (see bench_next_flow in xlb.c),
// and xlb_bench_restore puts a frame back before each rerun of another
// program (a restore-and-tail-call harness).
//go:generate go tool bpf2go -go-package bpf -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -DXLB_BENCH_NEW_FLOWS -DXLB_BENCH_RESTORE -I/usr/include/x86_64-linux-gnu" XlbBench xlb.c -- -I.

// XlbTc is the same steering program built as a TC ingress (tcx) program
// over skbs, for xdp_mode = "tc": the same maps, with the context's
// differences in ctx.h.
//go:generate go tool bpf2go -go-package bpf -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -DXLB_TC -I/usr/include/x86_64-linux-gnu" XlbTc xlb.c -- -I.

// XlbDecap is the backends' tunnel decapsulation (decap.c), which `xlb decap`
// attaches at TC ingress.
//go:generate go tool bpf2go -go-package bpf -tags linux -target bpfel -type vip_key -type outcome -type vip_limits -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" XlbDecap decap.c -- -I.

// XlbSock is the socket hooks (sock.c): cgroup connect, sendmsg, recvmsg and
// getpeername programs that steer the xlb host's own connections to L4 VIPs.
// The loader hands them the XDP datapath's maps (maps.h) to share.
//go:generate go tool bpf2go -go-package bpf -tags linux -target bpfel -type sock_key -type sock_peer -type sock_flow -type sock_limits -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" XlbSock sock.c -- -I.
