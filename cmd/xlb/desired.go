package main

import (
	"github.com/xlb-dev/xlb/config"
	"github.com/xlb-dev/xlb/loader"
)

// desiredFromConfig is the datapath state a config asks for; every backend
// starts up (health checks come later and only ever take them down).
func desiredFromConfig(cfg *config.Config) loader.Desired {
	d := loader.Desired{RingSize: cfg.Daemon.MaglevTableSize}
	for _, s := range cfg.Services {
		spec := loader.ServiceSpec{
			Name: s.Name, VIP: s.VIP, Port: s.Port, Proto: s.Protocol.Number(), Kind: loader.KindL4,
		}
		if s.Mode == config.ModeL7 {
			spec.Kind = loader.KindL7
			d.Services = append(d.Services, spec)
			continue
		}
		if s.Hash == config.HashFlow {
			spec.Hash = loader.HashFlow
		}
		for _, b := range s.Backends {
			spec.Backends = append(spec.Backends, loader.BackendSpec{
				Address: b.Address, Weight: b.Weight, State: loader.StateUp, MAC: b.MAC,
			})
		}
		d.Services = append(d.Services, spec)
	}
	return d
}
