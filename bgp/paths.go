package bgp

import (
	"context"
	"fmt"
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

var (
	familyV4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyV6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// hostPrefix checks that p is one host and returns it canonical.
func hostPrefix(p netip.Prefix) (netip.Prefix, error) {
	a := p.Addr().Unmap()
	if !p.IsValid() || p.Bits() != a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("%w: %v (want /32 or /128)", ErrPrefix, p)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only for messages of the api package, which always marshal
	}
	return a
}

// path is the GoBGP path announcing p with attributes at.
func path(p netip.Prefix, at attrs, communities []uint32) *api.Path {
	nlri := mustAny(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
	pattrs := []*anypb.Any{mustAny(&api.OriginAttribute{Origin: 0})} // IGP
	fam := familyV4
	if p.Addr().Is4() {
		nh := "0.0.0.0" // unspecified: GoBGP puts the session's local address
		if at.nh4.IsValid() {
			nh = at.nh4.String()
		}
		pattrs = append(pattrs, mustAny(&api.NextHopAttribute{NextHop: nh}))
	} else {
		fam = familyV6
		nh := "::"
		if at.nh6.IsValid() {
			nh = at.nh6.String()
		}
		pattrs = append(pattrs, mustAny(&api.MpReachNLRIAttribute{Family: familyV6, NextHops: []string{nh}, Nlris: []*anypb.Any{nlri}}))
	}
	if len(communities) > 0 {
		pattrs = append(pattrs, mustAny(&api.CommunitiesAttribute{Communities: communities}))
	}
	return &api.Path{Family: fam, Nlri: nlri, Pattrs: pattrs}
}

// addPath announces (or re-announces with new attributes) p; the caller
// holds s.mu.
func (s *Speaker) addPath(ctx context.Context, p netip.Prefix) error {
	_, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path(p, s.attrs, s.communities())})
	if err != nil {
		return fmt.Errorf("bgp: announce %v: %w", p, err)
	}
	return nil
}

// deletePath withdraws p; the caller holds s.mu.
func (s *Speaker) deletePath(ctx context.Context, p netip.Prefix) error {
	err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Path: path(p, s.attrs, s.communities())})
	if err != nil {
		return fmt.Errorf("bgp: withdraw %v: %w", p, err)
	}
	return nil
}

func (s *Speaker) communities() []uint32 {
	out := make([]uint32, 0, len(s.cfg.Communities))
	seen := map[Community]bool{}
	for _, c := range s.cfg.Communities {
		if !seen[c] {
			seen[c] = true
			out = append(out, uint32(c))
		}
	}
	return out
}
