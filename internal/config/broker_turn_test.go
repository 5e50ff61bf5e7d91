package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestParseBrokerTURN(t *testing.T) {
	full := defaultBroker()
	full.TURN = BrokerTURN{
		Listen:                      ":3481",
		RelayIP:                     "203.0.113.7",
		RelayPorts:                  "40000-40999",
		CredentialTTL:               10 * time.Minute,
		AllowPeers:                  []string{"10.0.0.0/8", "192.168.1.7", "fd00::/8"},
		MaxAllocationsPerAgent:      4,
		MaxPermissionsPerAllocation: 2,
		Bandwidth:                   1 << 20,
		External:                    BrokerTURNExternal{URL: "turn:turn.example.com:3478?transport=tcp", SecretFile: "/etc/peerport/turn.secret"},
	}
	off := defaultBroker()
	off.TURN.Off = true
	tests := []struct {
		name string
		yaml string
		want Broker
	}{
		{"empty section", "turn:\n", defaultBroker()},
		{"off", "turn: {off: true}\n", off},
		{"full", `
turn:
  listen: 3481
  relay_ip: 203.0.113.7
  relay_ports: 40000-40999
  credential_ttl: 10m
  allow_peers: [10.0.0.0/8, 192.168.1.7, "fd00::/8"]
  max_allocations_per_agent: 4
  max_permissions_per_allocation: 2
  bandwidth: 1048576
  external:
    url: "turn:turn.example.com:3478?transport=tcp"
    secret_file: /etc/peerport/turn.secret
`, full},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBroker("broker.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got.TURN, tt.want.TURN)
			}
			out, err := yaml.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParseBroker("round-trip.yaml", out)
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Errorf("round trip: %v\n%s", err, out)
			}
		})
	}
	pfx, err := full.TURN.AllowPrefixes()
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32"), netip.MustParsePrefix("fd00::/8")}
	if err != nil || !reflect.DeepEqual(pfx, want) {
		t.Errorf("AllowPrefixes = %v, %v", pfx, err)
	}
}

func TestParseBrokerTURNErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown key", "turn:\n  of: true\n", []string{`broker.yaml:2:3: turn: unknown field "of"; did you mean "off"?`}},
		{"every problem at once", `
listen: 7000
metrics_listen: 9102
turn:
  listen: ":7000"
  relay_ip: 0.0.0.0
  relay_ports: 50000
  credential_ttl: 1s
  allow_peers: [localhost, 10.0.0.0/33]
  max_allocations_per_agent: -1
  max_permissions_per_allocation: 100000
  bandwidth: -5
  external: {url: "turns:t.example.com:5349", secret: a, secret_file: /b}
`, []string{
			`broker.yaml:5: turn.listen: address ":7000" clashes with listen`,
			`broker.yaml:6: turn.relay_ip: "0.0.0.0" is not an IP address agents can reach`,
			`broker.yaml:7: turn.relay_ports: "50000" is not a port range MIN-MAX, e.g. 49152-65535`,
			`broker.yaml:8: turn.credential_ttl: 1s out of range (1m0s-720h0m0s)`,
			`broker.yaml:9: turn.allow_peers[0]: "localhost" is not a CIDR range such as 127.0.0.0/8, nor an IP address`,
			`broker.yaml:9: turn.allow_peers[1]: "10.0.0.0/33" is not a CIDR range such as 127.0.0.0/8, nor an IP address`,
			`broker.yaml:10: turn.max_allocations_per_agent: -1 out of range (1-10000)`,
			`broker.yaml:11: turn.max_permissions_per_allocation: 100000 out of range (1-1000)`,
			`broker.yaml:12: turn.bandwidth: -5 is negative (0 means unlimited)`,
			`broker.yaml:13: turn.external.url: "turns:t.example.com:5349": want turn:HOST:PORT?transport=tcp`,
			`broker.yaml:13: turn.external: exactly one of secret and secret_file is required with url`,
		}},
		{"listen clashes with metrics", "metrics_listen: \"127.0.0.1:9102\"\nturn: {listen: \"127.0.0.1:9102\"}\n",
			[]string{`broker.yaml:2: turn.listen: address "127.0.0.1:9102" clashes with metrics_listen`}},
		{"reversed range", "turn: {relay_ports: 60000-50000}\n",
			[]string{`broker.yaml:1: turn.relay_ports: "60000-50000": 60000 is above 50000`}},
		{"secret without url", "turn:\n  external:\n    secret: s3cret\n",
			[]string{`broker.yaml:3: turn.external.url: required with a secret (turn:HOST:PORT?transport=tcp)`}},
		{"url without secret", "turn:\n  external: {url: \"turn:t.example.com:3478?transport=tcp\"}\n",
			[]string{`broker.yaml:2: turn.external: exactly one of secret and secret_file is required with url`}},
		{"udp url", "turn:\n  external: {url: \"turn:t.example.com:3478\", secret: x}\n",
			[]string{`broker.yaml:2: turn.external.url: "turn:t.example.com:3478": want turn:HOST:PORT?transport=tcp`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBroker("broker.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error; config %+v", got)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			if g := errLines(err); !reflect.DeepEqual(g, tt.want) {
				t.Errorf("error:\n  %s\nwant:\n  %s", strings.Join(g, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

func TestParsePortRange(t *testing.T) {
	for _, tt := range []struct {
		in     string
		lo, hi uint16
		ok     bool
	}{
		{"49152-65535", 49152, 65535, true},
		{"1-1", 1, 1, true},
		{" 100 - 200 ", 100, 200, true},
		{"0-10", 0, 0, false},
		{"10-65536", 0, 0, false},
		{"a-b", 0, 0, false},
		{"-5", 0, 0, false},
		{"", 0, 0, false},
	} {
		lo, hi, err := ParsePortRange(tt.in)
		if (err == nil) != tt.ok || lo != tt.lo || hi != tt.hi {
			t.Errorf("ParsePortRange(%q) = %d, %d, %v", tt.in, lo, hi, err)
		}
	}
}

func TestTURNExternalSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if s, err := (BrokerTURNExternal{Secret: "inline"}).LoadSecret(); err != nil || string(s) != "inline" {
		t.Errorf("inline secret: %q, %v", s, err)
	}
	if s, err := (BrokerTURNExternal{SecretFile: write("ok", "  s3cret\n")}).LoadSecret(); err != nil || string(s) != "s3cret" {
		t.Errorf("secret file: %q, %v", s, err)
	}
	for _, bad := range []string{write("empty", " \n"), write("big", strings.Repeat("x", 5000)), filepath.Join(dir, "missing")} {
		if _, err := (BrokerTURNExternal{SecretFile: bad}).LoadSecret(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "turn.external.secret_file") {
			t.Errorf("%s: %v", filepath.Base(bad), err)
		}
	}

	// An inline secret in a file others may read loads, with a warning.
	cfg := write("broker.yaml", "turn:\n  external: {url: \"turn:127.0.0.1:3478?transport=tcp\", secret: s3cret}\n")
	if err := os.Chmod(cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadBroker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "the TURN secret") {
		t.Errorf("warnings %q", c.Warnings)
	}
}

func TestRelayIPs(t *testing.T) {
	tests := []struct {
		in, ip, ip6 string // "" : invalid
		err         bool
	}{
		{in: ""},
		{in: "203.0.113.10", ip: "203.0.113.10"},
		{in: "2001:db8::10", ip: "2001:db8::10"},
		{in: "::ffff:203.0.113.10", ip: "203.0.113.10"},
		{in: "203.0.113.10,2001:db8::10", ip: "203.0.113.10", ip6: "2001:db8::10"},
		{in: "2001:db8::10, 203.0.113.10", ip: "203.0.113.10", ip6: "2001:db8::10"},
		{in: "203.0.113.10,198.51.100.1", err: true},
		{in: "203.0.113.10,2001:db8::10,2001:db8::11", err: true},
		{in: "203.0.113.10,fe80::1%eth0", err: true},
		{in: "relay.example.com", err: true},
	}
	for _, tt := range tests {
		ip, ip6, err := BrokerTURN{RelayIP: tt.in}.RelayIPs()
		if (err != nil) != tt.err {
			t.Errorf("%q: error %v, want error %v", tt.in, err, tt.err)
			continue
		}
		str := func(a netip.Addr) string {
			if !a.IsValid() {
				return ""
			}
			return a.String()
		}
		if !tt.err && (str(ip) != tt.ip || str(ip6) != tt.ip6) {
			t.Errorf("%q: %v, %v; want %q, %q", tt.in, ip, ip6, tt.ip, tt.ip6)
		}
	}
}
