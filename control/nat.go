package control

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

// ErrNATPortsOverlap: [datapath] nat_port_range shares ports with the host's
// ephemeral ports, so a host connection (a health check, the L7 tier) and
// a nat flow to the same backend could share a 4-tuple.
var ErrNATPortsOverlap = errors.New("datapath.nat_port_range overlaps the host's ephemeral ports")

// ephemeralPortsFile is the host's ephemeral port range (a var for tests).
var ephemeralPortsFile = "/proc/sys/net/ipv4/ip_local_port_range"

// usesNAT reports whether a service of cfg forwards by nat.
func usesNAT(cfg *config.Config) bool {
	for _, s := range cfg.Services {
		if s.Mode == config.ModeL4 && s.Forwarding == config.ForwardNAT {
			return true
		}
	}
	return false
}

// CheckNATPorts refuses a nat_port_range that overlaps the ephemeral ports
// while a service uses nat.
func CheckNATPorts(cfg *config.Config) error {
	if !usesNAT(cfg) {
		return nil
	}
	b, err := os.ReadFile(ephemeralPortsFile)
	if err != nil {
		return fmt.Errorf("read the ephemeral port range: %w", err)
	}
	eph, err := config.ParsePortRange(strings.Join(strings.Fields(string(b)), "-"))
	if err != nil {
		return fmt.Errorf("%s: %w", ephemeralPortsFile, err)
	}
	if r := cfg.Datapath.NATPorts; r.Overlaps(eph) {
		return fmt.Errorf("%w: %s and %s (net.ipv4.ip_local_port_range): move one of them", ErrNATPortsOverlap, r, eph)
	}
	return nil
}

// setNATPorts checks cfg's nat_port_range and gives it to the datapath.
func (c *Controller) setNATPorts(cfg *config.Config) error {
	if err := CheckNATPorts(cfg); err != nil {
		return err
	}
	if c.maps == nil {
		return nil
	}
	r := cfg.Datapath.NATPorts
	return c.maps.SetNATPorts(loader.NATPorts{First: r.First, Count: r.Count()})
}
