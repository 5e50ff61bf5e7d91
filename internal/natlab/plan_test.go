package natlab_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// These tests need no root.

func TestPresetsValid(t *testing.T) {
	for _, name := range natlab.PresetNames() {
		topo, err := natlab.Preset(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := topo.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := natlab.Preset("cone-nope"); err == nil {
		t.Error("unknown preset accepted")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		topo natlab.Topology
		want string // substring of the error; "" for valid
	}{
		{"ok", natlab.Shared(), ""},
		{"dup", natlab.Topology{Hosts: []natlab.HostSpec{{Name: "a"}, {Name: "a"}}}, "hosts[1].name"},
		{"reserved", natlab.Topology{Hosts: []natlab.HostSpec{{Name: "inet"}}}, "hosts[0].name"},
		{"badname", natlab.Topology{Hosts: []natlab.HostSpec{{Name: "A_1"}}}, "must match"},
		{"behind", natlab.Topology{Hosts: []natlab.HostSpec{{Name: "a", Behind: "gw"}}}, `hosts[0].behind: no router named "gw"`},
		{"cycle", natlab.Topology{Routers: []natlab.RouterSpec{{Name: "x", Kind: natlab.Cone, Behind: "y"}, {Name: "y", Kind: natlab.Cone, Behind: "x"}}}, "cycle"},
		{"kind", natlab.Topology{Routers: []natlab.RouterSpec{{Name: "x"}}}, "routers[0].kind"},
		{"link", natlab.Topology{Hosts: []natlab.HostSpec{{Name: "a", Link: &natlab.LinkConfig{Loss: 2, Rate: 10}}}}, "hosts[0].link.loss"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.topo.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseLinkConfig(t *testing.T) {
	got, err := natlab.ParseLinkConfig("delay=40ms,jitter=5ms,loss=1%,rate=20mbit,queue=64")
	want := natlab.LinkConfig{Delay: 40 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.01, Rate: 20_000_000, Queue: 64}
	if err != nil || got != want {
		t.Errorf("got %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range []string{"delay", "delay=x", "loss=150%", "speed=1", "rate=10"} {
		if _, err := natlab.ParseLinkConfig(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestAddressPlan pins the documented plan (docs/development.md and the package doc
// promise these addresses).
func TestAddressPlan(t *testing.T) {
	want := map[string][3]string{ // node: IPv4, IPv6, public IPv4
		"inet":     {"203.0.113.1", "2001:db8::1", ""},
		"broker":   {"203.0.113.10", "2001:db8::10", "203.0.113.10"},
		"pub":      {"203.0.113.12", "2001:db8::12", "203.0.113.12"},
		"gw-cone1": {"203.0.113.100", "2001:db8::100", "203.0.113.100"},
		"cone1":    {"10.0.1.10", "2001:db8:0:1::10", "203.0.113.100"},
		"fw1":      {"198.51.100.18", "2001:db8:0:5::18", "198.51.100.18"},
		"gw-dbl":   {"10.0.7.10", "2001:db8:0:7::10", "203.0.113.106"},
		"dbl":      {"10.0.8.10", "2001:db8:0:8::10", "203.0.113.106"},
		"lan2":     {"10.0.9.11", "2001:db8:0:9::11", "203.0.113.107"},
	}
	info, err := natlab.PlanInfo(natlab.Zoo())
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, n := range info {
		w, ok := want[n.Name]
		if !ok {
			continue
		}
		seen++
		if n.IP != w[0] || n.IPv6 != w[1] || n.PublicIP != w[2] {
			t.Errorf("%s: %s %s seen as %q; want %v", n.Name, n.IP, n.IPv6, n.PublicIP, w)
		}
		for _, a := range []string{n.IP, n.IPv6} {
			if !allowed(netip.MustParseAddr(a)) {
				t.Errorf("%s: %s outside the lab's ranges", n.Name, a)
			}
		}
	}
	if seen != len(want) {
		t.Errorf("found %d of %d nodes", seen, len(want))
	}
}

func allowed(a netip.Addr) bool {
	for _, p := range []string{"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/8", "2001:db8::/32"} {
		if netip.MustParsePrefix(p).Contains(a) {
			return true
		}
	}
	return false
}
