# xlb: eBPF-accelerated L4/L7 load balancer. `make demo` shows it, `make test` proves it.
GO      ?= go
BIN     := bin
PKGS    := ./...
# Packages whose tests need root, the real kernel and network namespaces run
# one at a time: they share the machine's two cores and its bpffs.
TESTFLAGS ?= -count=1 -timeout 40m
# make test-race: the packages with concurrent Go code and no root-only tests.
RACEPKGS := ./l7/... ./health/... ./control/... ./admin/... ./statuspage/...
# make fuzz: how long each fuzz target runs.
FUZZTIME ?= 20s

APT_PACKAGES := clang llvm libbpf-dev bpftool iproute2 ethtool iputils-ping util-linux python3 bird2 chromium zsh

# make install: where things go (DESTDIR is prepended to every path).
PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/xlb

.PHONY: install
.PHONY: all deps generate build test test-unit test-race fuzz e2e bench bench-xdp bench-control bench-l7 bench-l4 demo demo-cluster fmt vet clean check-generate

all: build

## deps: install the system packages xlb builds and tests with (Debian/Ubuntu, root)
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "deps: all present"; fi
	$(GO) mod download

## generate: compile bpf/xlb.c with bpf2go (output is committed)
generate:
	cd bpf && $(GO) generate ./...

## check-generate: fail if `make generate` changes a committed file
check-generate: generate
	@git diff --exit-code --stat -- bpf/ || { echo "bpf2go output differs from the committed files: run 'make generate' and commit"; exit 1; }

## build: bin/xlb and the test tool bin/xlbtest
build:
	$(GO) build -o $(BIN)/xlb ./cmd/xlb
	$(GO) build -o $(BIN)/xlbtest ./scripts/xlbtest

## install: bin/xlb, the systemd unit (deploy/xlb.service, paths made PREFIX's), the
## example config as SYSCONFDIR/xlb/xlb.toml unless one is there, bash and zsh
## completions, README, example and Grafana dashboard under DOCDIR
install: build
	install -D -m 0755 $(BIN)/xlb $(DESTDIR)$(BINDIR)/xlb
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's#/usr/local/bin/xlb#$(BINDIR)/xlb#g' -e 's#/etc/xlb/#$(SYSCONFDIR)/xlb/#g' \
		-e 's#/usr/local/share/doc/xlb#$(DOCDIR)#g' deploy/xlb.service > $(DESTDIR)$(UNITDIR)/xlb.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/xlb.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/xlb/xlb.toml ]; then \
		echo "install: $(DESTDIR)$(SYSCONFDIR)/xlb/xlb.toml exists, left as it is"; \
	else install -D -m 0640 examples/xlb.toml $(DESTDIR)$(SYSCONFDIR)/xlb/xlb.toml; fi
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions
	$(BIN)/xlb completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/xlb
	$(BIN)/xlb completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_xlb
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 examples/xlb.toml $(DESTDIR)$(DOCDIR)/xlb.toml.example
	install -D -m 0644 deploy/grafana/xlb.json $(DESTDIR)$(DOCDIR)/grafana/xlb.json

vet:
	$(GO) vet $(PKGS)

## test: every test, including the root-only datapath and namespace tests,
## then the race detector run and every fuzz target for FUZZTIME
test: deps build vet
	XLB_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test $(TESTFLAGS) -p 1 $(PKGS)
	$(MAKE) --no-print-directory test-race
	$(MAKE) --no-print-directory fuzz

## test-race: the L7 proxy, health checks, controller and admin API under -race
## (one package at a time: some health tests count checks against the clock)
test-race:
	$(GO) test -race -count=1 -timeout 20m -p 1 $(RACEPKGS)

## fuzz: every `func FuzzXxx(f *testing.F)` in the repository, found with grep,
## for FUZZTIME each, one at a time (go test takes one -fuzz target per run).
## A crash fails it, and go test writes the input to the package's
## testdata/fuzz/FuzzXxx/ (commit it as a regression case once fixed); the
## corpus it grows is kept in GOCACHE, out of the tree.
fuzz:
	@targets=$$(grep -rEo --include='*_test.go' --exclude-dir=.git --exclude-dir=testdata --exclude-dir=vendor \
		'^func Fuzz[A-Za-z0-9_]*\([A-Za-z_][A-Za-z0-9_]* \*testing\.F\)' . \
		| sed -E 's#^(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*)\(.*#\1:\2#' | sort -u); \
	if [ -z "$$targets" ]; then echo "fuzz: no fuzz targets found"; exit 1; fi; \
	echo "fuzz: $$(echo $$targets | wc -w) targets, $(FUZZTIME) each"; \
	log=$$(mktemp); trap 'rm -f "$$log"' EXIT; failed=0; summary=""; \
	for t in $$targets; do \
		dir=$${t%%:*}; name=$${t##*:}; start=$$(date +%s); \
		if $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$dir/" >"$$log" 2>&1; then res=ok; \
		else res=FAIL; failed=$$((failed + 1)); cat "$$log"; fi; \
		execs=$$(grep -Eo 'execs: [0-9]+' "$$log" | tail -n 1); \
		line=$$(printf '%-4s %-22s %-10s %4ss  %s' "$$res" "$$name" "$$dir" "$$(( $$(date +%s) - start ))" "$${execs:-no execs}"); \
		echo "fuzz: $$line"; summary="$$summary$$line\n"; \
	done; \
	echo "fuzz summary:"; printf '%b' "$$summary" | sed 's/^/  /'; \
	if [ $$failed -gt 0 ]; then echo "fuzz: $$failed target(s) failed (inputs in testdata/fuzz/ of their package)"; exit 1; fi

## test-unit: the tests that need neither root nor namespaces
test-unit:
	$(GO) test -count=1 ./maglev/ ./config/ ./scripts/...

## bench-xdp: ns/packet of the XDP program under BPF_PROG_TEST_RUN vs a no-op program
bench-xdp:
	$(GO) test -count=1 -run '^$$' -bench 'BenchmarkXDP' -benchtime 1x ./loader/

## bench-control: health transition to swapped Maglev table (M=65537, 100 backends),
## reconcile of 64 services x 100 backends, 1000 HTTP health checks a second (CPU, goroutines)
bench-control:
	$(GO) build -o $(BIN)/xlbtest ./scripts/xlbtest
	XLB_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -count=1 -p 1 -run '^$$' \
		-bench 'BenchmarkTransitionToTable|BenchmarkReconcile|BenchmarkHealthChecks' -benchtime 1x \
		./control/ ./loader/ ./health/

## bench-l7: wrk against xlb, HAProxy and nginx on the same three local backends
## (BENCHL7_FLAGS="-access-log file" measures xlb with its access log to a file)
bench-l7: build
	@missing=""; for p in wrk haproxy nginx; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	$(GO) run ./scripts/benchl7 -xlb $(BIN)/xlb $(BENCHL7_FLAGS)

## bench-l4: iperf3 through an L4 VIP per forwarding mode vs the direct path, in namespaces (root)
bench-l4: build
	@command -v iperf3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
	$(GO) run ./scripts/benchl4 -bin $(BIN)

bench: bench-xdp bench-control bench-l7 bench-l4

## demo: namespaces, three backends, xlb, traffic, the spread, teardown
demo: deps build
	./scripts/demo.sh

## demo-cluster: three xlb nodes behind a BGP router (bird2, ECMP): routes, spread, a connection surviving its node
demo-cluster: deps build
	./scripts/demo-cluster.sh

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '_bpfel.go$$')

clean:
	rm -rf $(BIN)
