package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/peerport/peerport/internal/secure"
)

// creds are real identities, a broker URL and a ticket for test configs.
type creds struct {
	id, id2, broker, ticket string
}

func newCreds(t testing.TB) creds {
	t.Helper()
	a, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	b, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	var pin secure.Pin
	pin[0], pin[31] = 1, 2
	// Not broker.example.com: that is the example's placeholder, refused.
	tk, err := secure.NewTicket("broker.peerport.test:7000", pin, a.ID(), "web")
	if err != nil {
		t.Fatal(err)
	}
	return creds{
		id:     a.ID().String(),
		id2:    b.ID().String(),
		broker: "pp://tok@broker.peerport.test:7000#" + pin.String(),
		ticket: tk.String(),
	}
}

// expand fills {ID}, {ID2}, {BROKER} and {TICKET} into a test YAML.
func (c creds) expand(s string) string {
	return strings.NewReplacer("{ID}", c.id, "{ID2}", c.id2, "{BROKER}", c.broker, "{TICKET}", c.ticket, "{ALTERED}", c.altered()).Replace(s)
}

// altered is the ticket with one character changed.
func (c creds) altered() string {
	b := []byte(c.ticket)
	i := len(b) / 2
	if b[i] == 'a' {
		b[i] = 'b'
	} else {
		b[i] = 'a'
	}
	return string(b)
}

// errLines splits a joined error into its lines.
func errLines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

// nothingToRun is the problem of an agent.yaml without shares and connects.
const nothingToRun = "agent.yaml: nothing to run: add a share or a connect (see config.example.yaml)"

func TestParseAgentErrors(t *testing.T) {
	c := newCreds(t)
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"duplicate key", "log:\n  level: info\n  level: debug\n",
			[]string{`agent.yaml:3:3: log: duplicate field "level" (first at line 2)`}},
		{"merge key", "base: &b {level: info}\n",
			[]string{`agent.yaml:1:1: unknown field "base"`}},
		{"merge key refused", "log:\n  <<: {level: info}\n",
			[]string{`agent.yaml:2:3: log: merge keys (<<) are not supported; put an anchor on the value instead`}},
		{"seq into string", "shares:\n  - target: 80\n\n    name:\n      - a\n",
			[]string{`agent.yaml:5:7: shares[0].name: cannot decode !!seq into string`}},
		{"map into list", "shares:\n  name: web\n",
			[]string{`agent.yaml:2:3: shares: cannot decode !!map into a list`}},
		{"scalar into mapping", "log: loud\n",
			[]string{"agent.yaml:1:6: log: cannot decode !!str `loud` into a mapping"}},
		{"root not a mapping", "- a\n- b\n",
			[]string{`agent.yaml:1:1: cannot decode !!seq into a mapping`}},
		{"every decode error at once", "sharez: 1\nlog: [x]\nconnects: {}\n",
			[]string{
				`agent.yaml:1:1: unknown field "sharez"; did you mean "shares"?`,
				`agent.yaml:2:6: log: cannot decode !!seq into a mapping`,
				`agent.yaml:3:11: connects: cannot decode !!map into a list`,
			}},
		{"two documents", "log: {level: info}\n---\nlog: {level: info}\n",
			[]string{`agent.yaml:2: more than one YAML document (---); put one configuration in a file`}},

		{"bad broker URL", "broker: http://x\n",
			[]string{`agent.yaml:1: broker: malformed broker URL: scheme must be pp:// (got "http")`, nothingToRun}},
		{"bad log level and format", "log:\n  level: loud\n  format: xml\n",
			[]string{
				`agent.yaml:2: log.level: unknown level "loud" (want trace, debug, info, warn, error)`,
				`agent.yaml:3: log.format: unknown format "xml" (want text, json)`,
				nothingToRun,
			}},
		{"share name and target required", "shares:\n  - allow: []\n",
			[]string{
				`agent.yaml:2: shares[0].name: required`,
				`agent.yaml:2: shares[0].target: required (PORT or HOST:PORT)`,
			}},
		{"bad share name", "shares:\n  - name: Web\n    target: 80\n",
			[]string{`agent.yaml:2: shares[0].name: share name "Web": use 1-63 of a-z 0-9 . _ - starting with a letter or digit`}},
		{"duplicate share name", "shares:\n  - name: web\n    target: 80\n  - name: web\n    target: 81\n",
			[]string{`agent.yaml:4: shares[1].name: duplicate share name "web" (also shares[0])`}},
		{"target port out of range", "shares:\n  - name: web\n    target: 70000\n",
			[]string{`agent.yaml:3: shares[0].target: port 70000 out of range (1-65535)`}},
		{"target port zero", "shares:\n  - name: web\n    target: \"localhost:0\"\n",
			[]string{`agent.yaml:3: shares[0].target: port 0 out of range (1-65535)`}},
		{"target without host", "shares:\n  - name: web\n    target: \":80\"\n",
			[]string{`agent.yaml:3: shares[0].target: ":80" has no host (write PORT for 127.0.0.1, or HOST:PORT)`}},
		{"target not an address", "shares:\n  - name: web\n    target: localhost\n",
			[]string{`agent.yaml:3: shares[0].target: "localhost" is not PORT or HOST:PORT`}},
		{"target named port", "shares:\n  - name: web\n    target: localhost:http\n",
			[]string{`agent.yaml:3: shares[0].target: port "http" is not a number`}},
		{"target URL", "shares:\n  - name: web\n    target: http://x:80\n",
			[]string{`agent.yaml:3: shares[0].target: "http://x:80" is not PORT or HOST:PORT`}},
		{"bad allow ID", "shares:\n  - name: web\n    target: 80\n    allow:\n      - {ID}\n      - nope\n",
			[]string{"agent.yaml:6: shares[0].allow[1]: malformed agent ID: want 52 base32 characters, as printed by `agent id`"}},

		{"connect with nothing", "connects:\n  - listen: 9000\n",
			[]string{`agent.yaml:2: connects[0]: set ticket, or peer and share`}},
		{"connect with ticket and peer", "broker: {BROKER}\nconnects:\n  - ticket: {TICKET}\n    peer: {ID}\n    share: web\n",
			[]string{`agent.yaml:3: connects[0]: set either ticket, or peer and share; not both`}},
		{"bad ticket", "connects:\n  - ticket: pp1abc\n",
			[]string{`agent.yaml:2: connects[0].ticket: malformed ticket: too short`}},
		{"altered ticket", "connects:\n  - ticket: {ALTERED}\n",
			[]string{`agent.yaml:2: connects[0].ticket: malformed ticket: checksum mismatch (truncated or altered)`}},
		{"future ticket", "connects:\n  - ticket: pp9abc\n",
			[]string{`agent.yaml:2: connects[0].ticket: unsupported ticket version: "pp9" (this build reads "pp1" tickets; upgrade the agent)`}},
		{"peer without share", "broker: {BROKER}\nconnects:\n  - peer: {ID}\n",
			[]string{`agent.yaml:3: connects[0].share: required with peer (the share name on that peer)`}},
		{"share without peer", "broker: {BROKER}\nconnects:\n  - share: web\n",
			[]string{`agent.yaml:3: connects[0].peer: required with share (the agent ID of the sharer)`}},
		{"bad peer and share", "broker: {BROKER}\nconnects:\n  - peer: bob\n    share: -x\n",
			[]string{
				"agent.yaml:3: connects[0].peer: malformed agent ID: want 52 base32 characters, as printed by `agent id`",
				`agent.yaml:4: connects[0].share: share name "-x": use 1-63 of a-z 0-9 . _ - starting with a letter or digit`,
			}},
		{"listen port out of range", "connects:\n  - ticket: {TICKET}\n  - ticket: {TICKET}\n    listen: 70000\n",
			[]string{`agent.yaml:4: connects[1].listen: port 70000 out of range (0-65535)`}},
		{"listen garbage", "connects:\n  - ticket: {TICKET}\n    listen: \"[::1]\"\n",
			[]string{`agent.yaml:3: connects[0].listen: "[::1]" is not PORT or HOST:PORT`}},
		{"duplicate listen", "connects:\n  - ticket: {TICKET}\n    listen: 9000\n  - ticket: {TICKET}\n    listen: 127.0.0.1:9000\n",
			[]string{`agent.yaml:5: connects[1].listen: address 127.0.0.1:9000 clashes with connects[0].listen`}},
		{"listen clashes with wildcard", "connects:\n  - ticket: {TICKET}\n    listen: \":9000\"\n  - ticket: {TICKET}\n    listen: 9000\n",
			[]string{`agent.yaml:5: connects[1].listen: address 127.0.0.1:9000 clashes with connects[0].listen`}},
		{"resume out of range", "resume:\n  keepalive: 100ms\n  dead_after: -1s\n  timeout: 2h\n  buffer_kib: 1\n",
			[]string{
				`agent.yaml:2: resume.keepalive: 100ms out of range (500ms-1m0s)`,
				`agent.yaml:3: resume.dead_after: -1s out of range (500ms-1m0s)`,
				`agent.yaml:4: resume.timeout: 2h0m0s out of range (5s-1h0m0s)`,
				`agent.yaml:5: resume.buffer_kib: 1 out of range (64-65536)`,
				nothingToRun,
			}},
		{"resume duration without unit", "resume:\n  timeout: 120\n",
			[]string{"agent.yaml:2:12: resume.timeout: cannot decode !!int `120` into time.Duration (write a duration with a unit, e.g. 10s, 1m30s)"}},
		{"bad metrics listen", "metrics_listen: localhost\n",
			[]string{`agent.yaml:1: metrics_listen: "localhost" is not PORT or HOST:PORT`, nothingToRun}},
		{"metrics listen clashes with a connect", "metrics_listen: 9101\nconnects:\n  - ticket: {TICKET}\n    listen: \":9101\"\n",
			[]string{`agent.yaml:4: connects[0].listen: address :9101 clashes with metrics_listen`}},
		{"bad path", "path: fast\nshares:\n  - name: web\n    target: 80\n    path: relay\n  - name: db\n    target: 81\n",
			[]string{`agent.yaml:1: path: "fast": want auto, direct, relay, turn or broker`}},
		{"bad share and connect path", "shares:\n  - name: web\n    target: 80\n    path: derp\nconnects:\n  - ticket: {TICKET}\n    path: p2p\n",
			[]string{`agent.yaml:4: shares[0].path: "derp": want auto, direct, relay, turn or broker`, `agent.yaml:7: connects[0].path: "p2p": want auto, direct, relay, turn or broker`}},
		{"relay secret without url", "relay:\n  secret: s3cret\n",
			[]string{`agent.yaml:2: relay.url: required with a secret (turn:HOST:PORT?transport=tcp)`, nothingToRun}},
		{"relay url without secret", "relay:\n  url: turn:t.example.com:3478\n",
			[]string{`agent.yaml:2: relay: exactly one of secret and secret_file is required with url`, nothingToRun}},
		{"relay with both secrets and a stun url", "relay:\n  url: stun:t.example.com:3478\n  secret: a\n  secret_file: /b\n",
			[]string{`agent.yaml:2: relay.url: "stun:t.example.com:3478": want turn:HOST:PORT?transport=tcp`,
				`agent.yaml:2: relay: exactly one of secret and secret_file is required with url`, nothingToRun}},
		{"every validation problem at once", "broker: pp://x\nlog: {level: x}\nshares:\n  - name: web\n    target: 0\nconnects:\n  - {}\n",
			[]string{
				`agent.yaml:1: broker: malformed broker URL: missing token (pp://TOKEN@host:port#pin)`,
				`agent.yaml:2: log.level: unknown level "x" (want trace, debug, info, warn, error)`,
				`agent.yaml:5: shares[0].target: port 0 out of range (1-65535)`,
				`agent.yaml:7: connects[0]: set ticket, or peer and share`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAgent("agent.yaml", []byte(c.expand(tt.yaml)))
			if err == nil {
				t.Fatalf("no error; config %+v", got)
			}
			if got != nil {
				t.Errorf("config %+v returned with an error", got)
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

func TestParseAgentValid(t *testing.T) {
	c := newCreds(t)
	tests := []struct {
		name string
		yaml string
		want Agent
	}{
		{"null sections", "log:\nrelay:\nshares:\nconnects:\n  - ticket: {TICKET}\n",
			Agent{Log: Log{Level: "info", Format: "text"}, Path: "auto", Connects: []Connect{{Ticket: c.ticket, Path: "auto"}}}},
		{"resume", "resume:\n  keepalive: 1s\n  dead_after: 1500ms\n  timeout: 10m\n  buffer_kib: 1024\nshares: [{name: web, target: 80}]\n",
			Agent{Log: Log{Level: "info", Format: "text"}, Path: "auto", Resume: Resume{KeepAlive: time.Second, DeadAfter: 1500 * time.Millisecond, Timeout: 10 * time.Minute, BufferKiB: 1024},
				Shares: []Share{{Name: "web", Target: "127.0.0.1:80", Path: "auto"}}}},
		{"full", `
broker: {BROKER}
state_dir: /var/lib/peerport
metrics_listen: 9101
log: {level: debug, format: json}
path: direct
relay: {url: "turn:turn.example.com:3478?transport=tcp", secret_file: /etc/peerport/turn.secret}
shares:
  - name: web
    target: 8080
    allow: [{ID2}]
  - name: db
    target: "[::1]:5432"
    path: relay
  - name: api
    target: api.internal:443
connects:
  - ticket: {TICKET}
  - ticket: {TICKET}
    listen: 9000
  - peer: {ID}
    share: web
    listen: ":9001"
    path: auto
  - ticket: {TICKET}
    listen: 0
  - ticket: {TICKET}
    listen: 127.0.0.1:0
`, Agent{
			Broker:        c.broker,
			StateDir:      "/var/lib/peerport",
			MetricsListen: "127.0.0.1:9101",
			Log:           Log{Level: "debug", Format: "json"},
			Path:          "direct",
			Relay:         Relay{URL: "turn:turn.example.com:3478?transport=tcp", SecretFile: "/etc/peerport/turn.secret"},
			Shares: []Share{
				{Name: "web", Target: "127.0.0.1:8080", Allow: []string{c.id2}, Path: "direct"},
				{Name: "db", Target: "[::1]:5432", Path: "relay"},
				{Name: "api", Target: "api.internal:443", Path: "direct"},
			},
			Connects: []Connect{
				{Ticket: c.ticket, Path: "direct"},
				{Ticket: c.ticket, Listen: "127.0.0.1:9000", Path: "direct"},
				{Peer: c.id, Share: "web", Listen: ":9001", Path: "auto"},
				{Ticket: c.ticket, Listen: "127.0.0.1:0", Path: "direct"},
				{Ticket: c.ticket, Listen: "127.0.0.1:0", Path: "direct"},
			},
		}},
		{"anchors and aliases", "shares:\n  - name: a\n    target: 1\n    allow: &team [{ID}, {ID2}]\n  - name: b\n    target: 2\n    allow: *team\n",
			Agent{Log: Log{Level: "info", Format: "text"}, Path: "auto", Shares: []Share{
				{Name: "a", Target: "127.0.0.1:1", Allow: []string{c.id, c.id2}, Path: "auto"},
				{Name: "b", Target: "127.0.0.1:2", Allow: []string{c.id, c.id2}, Path: "auto"},
			}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			want.Resume.SetDefaults() // cases that set them give them all
			got, err := ParseAgent("agent.yaml", []byte(c.expand(tt.yaml)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("got  %+v\nwant %+v", *got, want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("parsed config does not validate again: %v", err)
			}
			roundTripAgent(t, got)
		})
	}
}

func roundTripAgent(t *testing.T, c *Agent) {
	t.Helper()
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseAgent("round-trip.yaml", out)
	if err != nil {
		t.Fatalf("re-parse of marshalled config: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, c) {
		t.Errorf("round trip changed the config:\n got  %+v\n want %+v", back, c)
	}
}

func defaultBroker() Broker {
	return Broker{
		Listen: ":7000",
		Log:    Log{Level: "info", Format: "text"},
		Limits: BrokerLimits{
			MaxAgents:         100000,
			MaxSharesPerAgent: 64,
			MaxPendingIntros:  64,
			MaxMessageBytes:   65536,
			HandshakeTimeout:  10 * time.Second,
			IdleTimeout:       90 * time.Second,
			IntroTimeout:      10 * time.Second,
			RegistrationGrace: time.Minute,
			PreAuthTimeout:    10 * time.Second, MaxPreAuthPerIP: 32, AcceptsPerSecondPerIP: 20, AcceptBurstPerIP: 64, PreAuthPercent: 50,
			LoginsPerMinPerIP: 120, LoginsPerMinPerAgent: 30, RegistersPerMinPerIP: 600, RegistersPerMinPerAg: 300,
			ConnectsPerMinPerIP: 120, ConnectsPerMinPerAg: 60,
		},
		TURN: BrokerTURN{
			RelayPorts:                  "49152-65535",
			CredentialTTL:               time.Hour,
			MaxAllocationsPerAgent:      16,
			MaxPermissionsPerAllocation: 8,
		},
	}
}

func TestParseBroker(t *testing.T) {
	custom := defaultBroker()
	custom.Listen = "127.0.0.1:7443"
	custom.PublicAddr = "broker.example.com:443"
	custom.StateDir = "/var/lib/broker"
	custom.MetricsListen = "127.0.0.1:9102"
	custom.Log = Log{Level: "warn", Format: "json"}
	custom.Limits.MaxAgents = 10
	custom.Limits.IdleTimeout = 2 * time.Minute
	bare := defaultBroker()
	bare.Listen = ":7001"
	v6 := defaultBroker()
	v6.PublicAddr = "2001:db8::1"
	dual := defaultBroker()
	dual.PublicAddr = "203.0.113.10,2001:db8::10"
	dual.TURN.RelayIP = "2001:db8::10,203.0.113.10"

	tests := []struct {
		name string
		yaml string
		want Broker
	}{
		{"empty", "", defaultBroker()},
		{"zero limits mean defaults", "limits: {max_agents: 0, idle_timeout: 0s}\n", defaultBroker()},
		{"bare listen port", "listen: 7001\n", bare},
		{"bare IPv6 public addr", "public_addr: \"2001:db8::1\"\n", v6},
		{"dual-stack", "public_addr: \"203.0.113.10,2001:db8::10\"\nturn: {relay_ip: \"2001:db8::10,203.0.113.10\"}\n", dual},
		{"custom", `
listen: 127.0.0.1:7443
public_addr: broker.example.com:443
state_dir: /var/lib/broker
metrics_listen: 9102
log: {level: warn, format: json}
limits:
  max_agents: 10
  idle_timeout: 2m
`, custom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBroker("broker.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", *got, tt.want)
			}
			out, err := yaml.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParseBroker("round-trip.yaml", out)
			if err != nil {
				t.Fatalf("re-parse: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(back, got) {
				t.Errorf("round trip changed the config:\n got  %+v\n want %+v", back, got)
			}
		})
	}
}

func TestParseBrokerErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown key", "listen: :7000\nlimit: {}\n",
			[]string{`broker.yaml:2:1: unknown field "limit"; did you mean "limits"?`}},
		{"unknown limit", "limits:\n  max_agent: 1\n",
			[]string{`broker.yaml:2:3: limits: unknown field "max_agent"; did you mean "max_agents"?`}},
		{"string into int", "limits:\n  max_agents: lots\n",
			[]string{"broker.yaml:2:15: limits.max_agents: cannot decode !!str `lots` into int"}},
		{"duration without unit", "limits:\n  idle_timeout: 90\n",
			[]string{"broker.yaml:2:17: limits.idle_timeout: cannot decode !!int `90` into time.Duration (write a duration with a unit, e.g. 10s, 1m30s)"}},
		{"bad duration", "limits:\n  idle_timeout: soon\n",
			[]string{"broker.yaml:2:17: limits.idle_timeout: cannot decode !!str `soon` into time.Duration (write a duration with a unit, e.g. 10s, 1m30s)"}},
		{"bad listen", "listen: \"localhost\"\n",
			[]string{`broker.yaml:1: listen: "localhost" is not PORT or HOST:PORT`}},
		{"listen port out of range", "listen: \":65536\"\n",
			[]string{`broker.yaml:1: listen: port 65536 out of range (0-65535)`}},
		{"public addr URL", "public_addr: https://broker.example.com\n",
			[]string{`broker.yaml:1: public_addr: "https://broker.example.com" is not HOST or HOST:PORT`}},
		{"public addr port", "public_addr: \"x:0\"\n",
			[]string{`broker.yaml:1: public_addr: port 0 out of range (1-65535)`}},
		{"public addr no host", "public_addr: \":7000\"\n",
			[]string{`broker.yaml:1: public_addr: ":7000" has no host`}},
		{"public addr with user", "public_addr: tok@host\n",
			[]string{`broker.yaml:1: public_addr: host "tok@host" is not a host name or IP address`}},
		{"public addrs of one family", "public_addr: \"203.0.113.10,198.51.100.1\"\n",
			[]string{`broker.yaml:1: public_addr: "203.0.113.10,198.51.100.1": two addresses must be one IPv4 and one IPv6 address`}},
		{"public addrs with a name", "public_addr: \"broker.example.com,2001:db8::10\"\n",
			[]string{`broker.yaml:1: public_addr: "broker.example.com,2001:db8::10": two addresses must be one IPv4 and one IPv6 address, not names`}},
		{"three public addrs", "public_addr: \"203.0.113.10,2001:db8::10,2001:db8::11\"\n",
			[]string{`broker.yaml:1: public_addr: "203.0.113.10,2001:db8::10,2001:db8::11": at most two addresses, an IPv4 and an IPv6 one`}},
		{"public addrs, one bad", "public_addr: \"203.0.113.10,[2001:db8::10]:0\"\n",
			[]string{`broker.yaml:1: public_addr: port 0 out of range (1-65535)`}},
		{"relay ips of one family", "turn: {relay_ip: \"2001:db8::10,2001:db8::11\"}\n",
			[]string{`broker.yaml:1: turn.relay_ip: "2001:db8::10,2001:db8::11": two addresses must be one IPv4 and one IPv6 address`}},
		{"relay ip unspecified", "turn: {relay_ip: \"203.0.113.10,::\"}\n",
			[]string{`broker.yaml:1: turn.relay_ip: "::" is not an IP address agents can reach`}},
		{"limits out of range", `
log: {format: yaml}
limits:
  max_agents: -1
  max_shares_per_agent: 100000
  max_pending_intros: -5
  max_message_bytes: 100
  handshake_timeout: -1s
  idle_timeout: -90s
  intro_timeout: -1ms
`, []string{
			`broker.yaml:2: log.format: unknown format "yaml" (want text, json)`,
			`broker.yaml:4: limits.max_agents: -1 out of range (1-10000000)`,
			`broker.yaml:5: limits.max_shares_per_agent: 100000 out of range (1-10000)`,
			`broker.yaml:6: limits.max_pending_intros: -5 out of range (1-10000)`,
			`broker.yaml:7: limits.max_message_bytes: 100 out of range (1024-1048576)`,
			`broker.yaml:8: limits.handshake_timeout: must be positive (got -1s)`,
			`broker.yaml:9: limits.idle_timeout: must be positive (got -1m30s)`,
			`broker.yaml:10: limits.intro_timeout: must be positive (got -1ms)`,
		}},
		{"bad metrics listen", "metrics_listen: http://x:9102\n",
			[]string{`broker.yaml:1: metrics_listen: "http://x:9102" is not PORT or HOST:PORT`}},
		{"metrics listen clashes with listen", "listen: 7000\nmetrics_listen: \":7000\"\n",
			[]string{`broker.yaml:2: metrics_listen: address ":7000" clashes with listen`}},
		{"admission limits out of range", `
limits:
  preauth_timeout: -1s
  max_preauth_per_ip: -1
  preauth_percent: 150
  connects_per_minute_per_ip: -3
`, []string{
			`broker.yaml:3: limits.preauth_timeout: must be positive (got -1s)`,
			`broker.yaml:4: limits.max_preauth_per_ip: -1 out of range (1-1000000)`,
			`broker.yaml:5: limits.preauth_percent: 150 out of range (1-100)`,
			`broker.yaml:6: limits.connects_per_minute_per_ip: -3 out of range (1-1000000)`,
		}},
		{"message size too large", "limits: {max_message_bytes: 2000000}\n",
			[]string{`broker.yaml:1: limits.max_message_bytes: 2000000 out of range (1024-1048576)`}},
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

// A config built in code has no file: messages carry only the field path.
func TestValidateInCode(t *testing.T) {
	a := &Agent{
		Shares:   []Share{{Name: "web", Target: "8080"}},
		Connects: []Connect{{Peer: "x", Share: "web", Listen: "70000"}},
	}
	a.SetDefaults()
	want := []string{
		"connects[0].peer: malformed agent ID: want 52 base32 characters, as printed by `agent id`",
		"connects[0].listen: port 70000 out of range (0-65535)",
	}
	err := a.Validate()
	if g := errLines(err); !reflect.DeepEqual(g, want) {
		t.Errorf("error:\n  %s\nwant:\n  %s", strings.Join(g, "\n  "), strings.Join(want, "\n  "))
	}
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, secure.ErrBadAgentID) {
		t.Errorf("error should match ErrInvalid and secure.ErrBadAgentID: %v", err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Path != "connects[0].peer" || ce.Line != 0 || ce.File != "" {
		t.Errorf("errors.As *Error = %+v", ce)
	}
	if a.Shares[0].Target != "127.0.0.1:8080" {
		t.Errorf("SetDefaults left target %q", a.Shares[0].Target)
	}

	b := &Broker{}
	if err := b.Validate(); err == nil {
		t.Error("Broker.Validate without SetDefaults accepted zero limits")
	}
	b.SetDefaults()
	if err := b.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	if !reflect.DeepEqual(*b, defaultBroker()) {
		t.Errorf("SetDefaults = %+v", *b)
	}
}

func TestErrorCauses(t *testing.T) {
	_, err := ParseAgent("a.yaml", []byte("connects:\n  - ticket: pp1aaaa\n"))
	if !errors.Is(err, secure.ErrBadTicket) {
		t.Errorf("bad ticket error %v does not wrap secure.ErrBadTicket", err)
	}
	_, err = ParseAgent("a.yaml", []byte("broker: pp://x@y#short-pin\n"))
	if !errors.Is(err, secure.ErrBadBrokerURL) {
		t.Errorf("bad broker error %v does not wrap secure.ErrBadBrokerURL", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	good := write("agent.yaml", []byte("log: {level: debug}\nshares: [{name: web, target: 80}]\n"))
	a, err := LoadAgent(good)
	if err != nil || a.Log.Level != "debug" {
		t.Fatalf("LoadAgent = %+v, %v", a, err)
	}
	bad := write("bad.yaml", []byte("log:\n  level: loud\nshares: [{name: web, target: 80}]\n"))
	if _, err := LoadAgent(bad); err == nil || err.Error() != bad+`:2: log.level: unknown level "loud" (want trace, debug, info, warn, error)` {
		t.Errorf("LoadAgent(bad) = %v", err)
	}
	b, err := LoadBroker(write("broker.yaml", []byte("listen: 127.0.0.1:0\n")))
	if err != nil || b.Listen != "127.0.0.1:0" {
		t.Fatalf("LoadBroker = %+v, %v", b, err)
	}

	missing := filepath.Join(dir, "nope.yaml")
	for _, load := range []func(string) error{
		func(p string) error { _, err := LoadAgent(p); return err },
		func(p string) error { _, err := LoadBroker(p); return err },
	} {
		err := load(missing)
		if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, ErrInvalid) {
			t.Errorf("missing file: %v should match fs.ErrNotExist and ErrInvalid", err)
		}
		if want := missing + ": cannot read: no such file or directory"; err == nil || err.Error() != want {
			t.Errorf("missing file: %v, want %s", err, want)
		}
	}

	// Exactly at the cap is read (and, only a comment, has nothing to run);
	// one byte more is refused unread.
	atCap := write("cap.yaml", []byte(strings.Repeat("#", MaxFileSize)))
	if _, err := LoadAgent(atCap); err == nil || err.Error() != atCap+": nothing to run: add a share or a connect (see config.example.yaml)" {
		t.Errorf("file of exactly MaxFileSize: %v", err)
	}
	big := write("big.yaml", []byte(strings.Repeat("#", MaxFileSize+1)))
	if _, err := LoadAgent(big); err == nil || err.Error() != big+": file is larger than 1024 KiB; is this the right file?" {
		t.Errorf("big file: %v", err)
	}
	if _, err := ParseBroker("big.yaml", make([]byte, MaxFileSize+1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseBroker of a big buffer: %v", err)
	}
}

// Aliases can expand a small file into a huge one; decoding must stay bounded.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("a: &a [x, x, x, x, x, x, x, x, x, x]\nshares:\n")
	for i := range 20000 {
		b.WriteString("  - {name: s")
		b.WriteString(strings.Repeat("x", i%3))
		b.WriteString(", allow: *a}\n")
	}
	_, err := ParseAgent("bomb.yaml", []byte(b.String()))
	if err == nil {
		t.Fatal("alias bomb accepted")
	}
	if !strings.Contains(err.Error(), "more than 100000 values (aliases expanding too far?)") {
		t.Errorf("error does not name the cap: %.300s", err)
	}
}

func TestNormalizeTarget(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"8080", "127.0.0.1:8080", ""},
		{" 8080\n", "127.0.0.1:8080", ""},
		{"1", "127.0.0.1:1", ""},
		{"65535", "127.0.0.1:65535", ""},
		{"localhost:22", "localhost:22", ""},
		{"10.0.0.5:5432", "10.0.0.5:5432", ""},
		{"[::1]:80", "[::1]:80", ""},
		{"[fe80::1%eth0]:80", "[fe80::1%eth0]:80", ""},
		{"0", "", "port 0 out of range (1-65535)"},
		{"65536", "", "port 65536 out of range (1-65535)"},
		{"99999999999999999999999", "", "port 99999999999999999999999 out of range (1-65535)"},
		{"host:" + strings.Repeat("9", 50), "", "port " + strings.Repeat("9", 37) + "... out of range (1-65535)"},
		{strings.Repeat("x", 50), "", `"` + strings.Repeat("x", 37) + `..." is not PORT or HOST:PORT`},
		{"", "", `"" is not PORT or HOST:PORT`},
		{"-1", "", `"-1" is not PORT or HOST:PORT`},
		{":80", "", `":80" has no host (write PORT for 127.0.0.1, or HOST:PORT)`},
		{"host:", "", `port "" is not a number`},
		{"host:+80", "", `port "+80" is not a number`},
		{"::1", "", `"::1" is not PORT or HOST:PORT`},
		{"a b:80", "", `host "a b" is not a host name or IP address`},
	}
	for _, tt := range tests {
		got, err := NormalizeTarget(tt.in)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && err.Error() != tt.err) {
			t.Errorf("NormalizeTarget(%q) = %q, %v; want %q, %s", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestNormalizeListen(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"", "", ""},
		{"9000", "127.0.0.1:9000", ""},
		{"0", "127.0.0.1:0", ""},
		{":9000", ":9000", ""},
		{"0.0.0.0:9000", "0.0.0.0:9000", ""},
		{"[::]:0", "[::]:0", ""},
		{"70000", "", "port 70000 out of range (0-65535)"},
		{"localhost", "", `"localhost" is not PORT or HOST:PORT`},
	}
	for _, tt := range tests {
		got, err := NormalizeListen(tt.in)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && err.Error() != tt.err) {
			t.Errorf("NormalizeListen(%q) = %q, %v; want %q, %s", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestConnectTimeoutAndSTUN(t *testing.T) {
	a, err := ParseAgent("agent.yaml", []byte("connects:\n  - peer: "+strings.Repeat("a", 52)+"\n    share: web\n    timeout: 90s\n"))
	if err != nil || a.Connects[0].Timeout != 90*time.Second {
		t.Fatalf("connects[0].timeout: %v, want 90s", err)
	}
	_, err = ParseAgent("agent.yaml", []byte("connects:\n  - peer: "+strings.Repeat("a", 52)+"\n    share: web\n    timeout: 10ms\n"))
	if err == nil || !strings.Contains(err.Error(), "connects[0].timeout: 10ms out of range (1s-24h0m0s)") {
		t.Errorf("a 10ms timeout: %v", err)
	}
	b, err := ParseBroker("broker.yaml", []byte("stun:\n  listen: [\"127.0.0.1:3578\", \"127.0.0.1:3579\"]\n"))
	if err != nil || len(b.STUN.Listen) != 2 {
		t.Errorf("stun.listen: %+v, %v", b.STUN, err)
	}
	if _, err := ParseBroker("broker.yaml", []byte("stun:\n  off: true\n  listen: [\":3578\"]\n")); err == nil || !strings.Contains(err.Error(), "stun: off with listen addresses") {
		t.Errorf("stun off with listen: %v", err)
	}
}
