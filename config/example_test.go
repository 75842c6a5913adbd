package config_test

import (
	"errors"
	"fmt"

	"github.com/xlb-dev/xlb/config"
)

func ExampleParse() {
	cfg, err := config.Parse([]byte(`
[[service]]
name = "web"
vip = "198.19.0.10"
port = 80

  [[service.backend]]
  address = "198.18.0.11"
`), "xlb.toml")
	if err != nil {
		fmt.Println(err)
		return
	}
	s := cfg.Services[0]
	fmt.Println(s.Name, s.VIP, s.Port, s.Protocol, s.Mode, s.Hash, s.Forwarding, len(s.Backends))

	_, err = config.Parse([]byte(`
[[service]]
name = "web"
vip = "198.19.0.10"
port = 80

  [[service.backend]]
  address = "2001:db8:18::11"
  wieght = 2
`), "xlb.toml")
	fmt.Println(errors.Is(err, config.ErrInvalid))
	fmt.Println(err)
	// Output:
	// web 198.19.0.10 80 tcp l4 ip_hash dsr 1
	// true
	// xlb.toml:8: service[0].backend[0].address: IPv6 address 2001:db8:18::11 in an IPv4 service (vip 198.19.0.10)
	// xlb.toml:9: service[0].backend[0].wieght: unknown key (did you mean "weight"?)
}
