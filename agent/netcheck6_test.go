package agent

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/peerport/peerport/internal/secure"
)

func TestBrokerIPv6(t *testing.T) {
	tests := []struct {
		name, url, dialed, want string
	}{
		{"dual-stack URL, dialed over IPv4", "203.0.113.10:7000,[2001:db8::10]:7000", "203.0.113.10:7000", "[2001:db8::10]:7000"},
		{"dialed over IPv6", "203.0.113.10:7000,[2001:db8::10]:7000", "[2001:db8::10]:7000", "[2001:db8::10]:7000"},
		{"IPv4 only", "203.0.113.10:7000", "203.0.113.10:7000", ""},
		{"IPv6 only", "[2001:db8::10]:7443", "[2001:db8::10]:7443", "[2001:db8::10]:7443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := brokerIPv6(context.Background(), secure.BrokerURL{Addr: tt.url}, tt.dialed); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestIPv6ReportSummary(t *testing.T) {
	global := []netip.Addr{netip.MustParseAddr("2001:db8:1::10")}
	tests := []struct {
		name string
		r    IPv6Report
		want string
	}{
		{"reachable, no NAT66", IPv6Report{HostAddrs: global, Global: true, Reachable: true, Mapped: netip.MustParseAddrPort("[2001:db8:1::10]:40000")},
			"reachable (global 2001:db8:1::10, no NAT66): direct IPv6 paths possible"},
		{"reachable, no STUN", IPv6Report{HostAddrs: global, Global: true, Reachable: true}, "NAT66 not tested"},
		{"NAT66", IPv6Report{Reachable: true, NAT66: true, Why: "a NAT66 maps fd00::10 to 2001:db8:1::99"}, "reachable (no global IPv6 address on this host): a NAT66 maps"},
		{"no global address", IPv6Report{HostAddrs: []netip.Addr{}, Why: "this host has no global IPv6 address"}, "no: this host has no global IPv6 address"},
		{"broker not on IPv6", IPv6Report{HostAddrs: global, Global: true, Why: "the broker has no IPv6 address"}, "no: the broker has no IPv6 address (global 2001:db8:1::10)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.summary(); !strings.Contains(got, tt.want) {
				t.Fatalf("summary %q, want %q in it", got, tt.want)
			}
		})
	}
	// The JSON keys scripts read.
	b, err := json.Marshal(NetcheckReport{IPv6: IPv6Report{HostAddrs: []netip.Addr{}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"ipv6":{`, `"host_addrs":[]`, `"global":false`, `"reachable":false`, `"nat66":false`, `"stun_tcp":{`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("netcheck JSON %s: no %s", b, k)
		}
	}
}
