package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestParseBrokerCert(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "broker.crt"), filepath.Join(dir, "broker.key")
	for _, p := range []string{cert, key} {
		if err := os.WriteFile(p, []byte("pem"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	acme := defaultBroker()
	acme.Listen = ":443"
	acme.ACME = BrokerACME{Domain: "broker.example.com", Email: "ops@example.com", Directory: "https://acme-staging-v02.api.letsencrypt.org/directory", HTTPListen: ":80"}
	files := defaultBroker()
	files.TLS = BrokerTLS{CertFile: cert, KeyFile: key}
	tests := []struct {
		name string
		yaml string
		want Broker
	}{
		{"empty sections", "acme:\ntls:\n", defaultBroker()},
		{"acme", `
listen: 443
acme:
  domain: Broker.Example.COM.
  email: ops@example.com
  directory: https://acme-staging-v02.api.letsencrypt.org/directory
  http_listen: 80
`, acme},
		{"tls", "tls:\n  cert_file: " + cert + "\n  key_file: " + key + "\n", files},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBroker("broker.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("got  %+v %+v\nwant %+v %+v", got.ACME, got.TLS, tt.want.ACME, tt.want.TLS)
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
}

func TestParseBrokerCertErrors(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "broker.crt")
	if err := os.WriteFile(cert, []byte("pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.key")
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown key", "acme:\n  domains: [a.example.com]\n", []string{`broker.yaml:2:3: acme: unknown field "domains"; did you mean "domain"?`}},
		{"both sources", "acme: {domain: broker.example.com}\ntls: {cert_file: " + cert + ", key_file: " + cert + "}\n",
			[]string{`broker.yaml:2: tls: set either acme (a certificate the broker gets) or tls (your own), not both`}},
		{"every acme problem at once", `
listen: 443
metrics_listen: ":9102"
acme:
  domain: "*.example.com"
  email: "not an address"
  directory: http://acme.example.com/dir
  http_listen: ":9102"
`, []string{
			`broker.yaml:5: acme.domain: "*.example.com" is not a DNS name such as broker.example.com`,
			`broker.yaml:6: acme.email: "not an address" is not an email address`,
			`broker.yaml:7: acme.directory: "http://acme.example.com/dir": want the CA's https:// directory URL`,
			`broker.yaml:8: acme.http_listen: address ":9102" clashes with metrics_listen`,
		}},
		{"no domain", "acme:\n  email: ops@example.com\n  directory: https://ca.example.com/dir\n  http_listen: 80\n", []string{
			`broker.yaml:2: acme.email: needs acme.domain, the name to get a certificate for`,
			`broker.yaml:3: acme.directory: needs acme.domain, the name to get a certificate for`,
			`broker.yaml:4: acme.http_listen: needs acme.domain, the name to get a certificate for`,
		}},
		{"domain forms", "acme: {domain: localhost}\n", []string{`broker.yaml:1: acme.domain: "localhost" is not a DNS name such as broker.example.com`}},
		{"domain IP", "acme: {domain: 203.0.113.7}\n", []string{`broker.yaml:1: acme.domain: "203.0.113.7" is not a DNS name such as broker.example.com`}},
		{"domain label", "acme: {domain: -bad.example.com}\n", []string{`broker.yaml:1: acme.domain: "-bad.example.com" is not a DNS name such as broker.example.com`}},
		{"http_listen clashes", "listen: 80\nacme: {domain: b.example.com, http_listen: 80}\n",
			[]string{`broker.yaml:2: acme.http_listen: address ":80" clashes with listen`}},
		{"http_listen clashes with turn", "turn: {listen: 3480}\nacme: {domain: b.example.com, http_listen: 3480}\n",
			[]string{`broker.yaml:2: acme.http_listen: address ":3480" clashes with turn.listen`}},
		{"http_listen bad", "acme: {domain: b.example.com, http_listen: 70000}\n",
			[]string{`broker.yaml:1: acme.http_listen: port 70000 out of range (0-65535)`}},
		{"cert without key", "tls:\n  cert_file: " + cert + "\n", []string{`broker.yaml:2: tls.key_file: required with cert_file`}},
		{"key without cert", "tls:\n  key_file: " + cert + "\n", []string{`broker.yaml:2: tls.cert_file: required with key_file`}},
		{"missing and directory", "tls:\n  cert_file: " + dir + "\n  key_file: " + missing + "\n", []string{
			`broker.yaml:2: tls.cert_file: "` + cut(dir) + `" is not a regular file`,
			`broker.yaml:3: tls.key_file: "` + cut(missing) + `": cannot read: no such file or directory`,
		}},
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
	// A missing file's error carries the cause, for callers that branch.
	_, err := ParseBroker("broker.yaml", []byte("tls: {cert_file: "+missing+", key_file: "+missing+"}\n"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file error %v does not wrap fs.ErrNotExist", err)
	}
}

func TestDNSName(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"broker.example.com", true},
		{"a-b.c0", true},
		{"xn--bcher-kva.example", true},
		{"broker.test", true},
		{"localhost", false},
		{"", false},
		{"a..b", false},
		{"a.b-", false},
		{"Broker.example.com", false}, // SetDefaults lowercases first
		{"*.example.com", false},
		{"a_b.example.com", false},
		{"::1", false},
		{"10.0.0.1", false},
		{strings.Repeat("a", 64) + ".com", false},
		{strings.Repeat("a.", 127) + "com", false},
	} {
		if got := dnsName(tt.in); got != tt.ok {
			t.Errorf("dnsName(%q) = %v, want %v", tt.in, got, tt.ok)
		}
	}
}
