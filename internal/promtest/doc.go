// Package promtest reads series back from a Prometheus registry, for tests
// of the packages that export metrics (l7, loader, control): one helper
// instead of one per package.
package promtest
