// Package config reads, defaults and validates the xlb TOML configuration.
//
// The file has one [daemon], [health_check] and [admin] table and any number
// of [[service]] tables, each with its [[service.backend]] tables and an
// optional [service.health_check] that overrides the global one key by key;
// examples/xlb.toml documents every key. The compatibility form of the
// original specification ([loadbalancer] with [[backends]]) is read as one L7
// service (legacy.go). Decoding is strict: an unknown key is an error, as is a
// value of the wrong type, so a typo never silently falls back to a default.
//
// Parsing happens in three steps, each in its own file:
//
//   - parse.go decodes the TOML into a generic tree and reads it into the
//     typed Config, reporting syntax, type and unknown-key errors; it also
//     merges each service's health check over the global one
//     (healthcheck.go), since only the decoder knows which keys were written;
//   - config.go fills in defaults (ApplyDefaults);
//   - validate.go checks the meaning of the values (Validate), with
//     healthcheck.go and admin.go for their tables.
//
// l7.go holds the settings of mode = "l7" services (routing by hosts and
// path_prefix, timeouts, retries, [service.sticky], [service.passive_health],
// [service.headers]) through all three steps, and the checks of L7 services
// that share a listener.
//
// Durations are written as strings ("1500ms", "5s") or, with the _secs form
// of the key, as plain seconds (interval_secs = 1.5); giving both is an error.
//
// BurntSushi/toml does not expose where a key was written, so keylines.go
// scans the source once more to map every key path to its line.
//
// Every problem is reported as an *Error that names the file, the line of the
// offending key (or of its table header when the key is missing), the field
// path and what is wrong:
//
//	xlb.toml:14: service[0].backend[1].address: invalid IP address "198.18.0.300": IPv4 field has value >255
//
// Field paths use 0-based indexes for array tables: service[1] is the second
// [[service]], service[1].backend[0] its first [[service.backend]]. Parse
// collects as many errors as it can and returns them together as Errors; both
// *Error and Errors match ErrInvalid with errors.Is.
package config
