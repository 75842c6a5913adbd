// Package e2e holds xlb's end-to-end tests. They build network namespaces with
// scripts/topology.sh (client, load balancer and backends on a bridge), run real
// binaries inside them and tear everything down afterwards, even when a test fails.
// They need root: without it they skip, and with CI=true they fail instead.
//
//	sudo go test -count=1 -v ./e2e/
//
// Set XLB_BIN_DIR to use prebuilt binaries (xlbtest, xlb) instead of building them.
package e2e
