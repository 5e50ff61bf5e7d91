// Package config owns the configuration files of peerport: agent.yaml (for
// `agent up` and agent defaults) and broker.yaml.
//
// Loading runs in three steps, as in frp:
//
//  1. decode: strict, against the Go types; syntax errors, unknown keys and
//     wrong types are errors that name file, line, column and dotted field
//     path, with a hint for the usual causes (a tab, a misaligned line, an
//     unclosed quote or bracket, the nearest known key);
//  2. defaults: SetDefaults fills every unset field in one place;
//  3. validate: Validate reports every problem at once (errors.Join), one line
//     each, e.g. "agent.yaml:7: connects[1].listen: port 70000 out of range (0-65535)".
//
// Every error returned wraps ErrInvalid; each line is an *Error.
package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/peerport/peerport/internal/proxy"
)

// ErrInvalid is wrapped by every error of loading, decoding or validating a
// configuration.
var ErrInvalid = errors.New("invalid configuration")

// MaxFileSize is the largest configuration file read. Real ones are a few KiB;
// the cap keeps a wrong path (a log, a disk image) from being read whole.
const MaxFileSize = 1 << 20

// Log configures the logger of an agent or broker.
type Log struct {
	Level  string `yaml:"level"`  // trace|debug|info|warn|error; default info
	Format string `yaml:"format"` // text|json; default text
}

// Agent is agent.yaml: the shares and connects `agent up` runs, and defaults
// for the other agent commands.
type Agent struct {
	Broker        string    `yaml:"broker"`         // pp://TOKEN@host:port#PIN; empty = no broker (shares then need an embedded broker)
	StateDir      string    `yaml:"state_dir"`      // empty: cmd resolves $PEERPORT_HOME or ~/.config/peerport
	MetricsListen string    `yaml:"metrics_listen"` // Prometheus /metrics of `agent up`; empty = off; PORT means 127.0.0.1:PORT
	Log           Log       `yaml:"log"`
	Shares        []Share   `yaml:"shares"`
	Connects      []Connect `yaml:"connects"`
	// Path is the default path policy of shares and connects: auto
	// (punch, relay when punching cannot work, move to direct when it comes
	// up), direct, or relay. Default auto.
	Path string `yaml:"path"`
	// Relay is an external TURN server this agent's shares allocate on
	// instead of the broker's relay; empty URL: the broker's.
	Relay Relay `yaml:"relay"`
	// Proxy is the HTTP CONNECT proxy every connection to the broker goes
	// through, http://[user:pass@]host:port; empty: HTTPS_PROXY, ALL_PROXY
	// and NO_PROXY from the environment decide.
	Proxy string `yaml:"proxy"`
	// Portmap asks the gateway for port mappings of punch ports (PCP,
	// NAT-PMP, UPnP IGD); nil: on. false turns it off.
	Portmap *bool `yaml:"portmap"`
	// Resume tunes how a peer session outlives its path (DESIGN §3): when
	// a silent path counts as dead, and how long a session without one
	// holds its connections for a new one.
	Resume Resume `yaml:"resume"`
	// Dashboard is where the agent serves its local status page: PORT (on
	// 127.0.0.1) or a loopback HOST:PORT; a taken port falls back to a free
	// one. "off" turns it off; empty: DefaultDashboard.
	Dashboard string `yaml:"dashboard"`

	// Warnings are problems of the file that do not stop it from loading,
	// such as a mode that lets other users read the secrets in it. LoadAgent
	// sets them; the caller logs them. Never part of the YAML.
	Warnings []string `yaml:"-"`
}

// Resume is the resumable layer under every peer session. Zero values take
// the defaults.
type Resume struct {
	KeepAlive time.Duration `yaml:"keepalive"`  // silence after which a quiet session pings; default 3s
	DeadAfter time.Duration `yaml:"dead_after"` // least silence, while an answer is due, that declares the path dead; default 2s
	Timeout   time.Duration `yaml:"timeout"`    // how long a session without a path waits for a new one; default 2m
	BufferKiB int           `yaml:"buffer_kib"` // data kept per session for resending (and received, unread); default 4096
}

// Share exposes one local TCP target to peers.
type Share struct {
	Name   string   `yaml:"name"`   // required; secure.ValidShareName
	Target string   `yaml:"target"` // required; PORT or HOST:PORT, normalized to host:port (host default 127.0.0.1)
	Allow  []string `yaml:"allow"`  // agent IDs that may connect by identity, without a ticket
	Path   string   `yaml:"path"`   // auto|direct|relay; default: the file's path
}

// Relay is an external TURN server with TURN REST credentials (coturn's
// use-auth-secret): the agent makes its own from the shared secret.
type Relay struct {
	URL        string `yaml:"url"`         // turn:HOST:PORT?transport=tcp
	Secret     string `yaml:"secret"`      // the shared secret; or
	SecretFile string `yaml:"secret_file"` // a file holding it (surrounding whitespace ignored)
}

// Connect reaches one share, by ticket or (team mode) by peer and share name.
type Connect struct {
	Ticket string `yaml:"ticket"` // pp1...; exactly one of ticket, or peer+share
	Peer   string `yaml:"peer"`   // agent ID of the sharer (team mode)
	Share  string `yaml:"share"`  // share name on that peer (team mode)
	Listen string `yaml:"listen"` // empty: the agent picks 127.0.0.1:<port>; else host:port or port (normalized to 127.0.0.1:port)
	Path   string `yaml:"path"`   // auto|direct|relay; default: the file's path
	// Timeout: give this connect up, with the reason, if its share cannot
	// be reached for the first time within it; 0 (the default) keeps
	// trying, as a forward that runs for good should.
	Timeout time.Duration `yaml:"timeout"`
}

// BrokerSTUN is broker.yaml's stun: section.
type BrokerSTUN struct {
	// Listen are its addresses, each served on UDP and TCP; empty: ports
	// 3478 and 3479 of listen's host, or free ports when those are taken.
	Listen []string `yaml:"listen"`
	Off    bool     `yaml:"off"`
}

// Broker is broker.yaml.
type Broker struct {
	Listen     string `yaml:"listen"`      // default ":7000"; a bare port means ":PORT"
	PublicAddr string `yaml:"public_addr"` // host or host:port advertised in the broker URL; or IPv4,IPv6 (dual-stack)
	StateDir   string `yaml:"state_dir"`   // empty: cmd resolves
	// MetricsListen serves Prometheus /metrics and /healthz; empty = off.
	// PORT means 127.0.0.1:PORT, as metrics are for the operator, not the public.
	MetricsListen string `yaml:"metrics_listen"`
	// STUN is the STUN server agents learn their NAT type from.
	STUN   BrokerSTUN   `yaml:"stun"`
	Log    Log          `yaml:"log"`
	Limits BrokerLimits `yaml:"limits"`
	TURN   BrokerTURN   `yaml:"turn"` // the relay; see broker_turn.go
	// ACME and TLS replace the self-signed, pinned certificate with one
	// from a CA (broker_cert.go); at most one of them is set.
	ACME BrokerACME `yaml:"acme"`
	TLS  BrokerTLS  `yaml:"tls"`
	// Cluster joins the broker to other nodes over NATS (broker_cluster.go);
	// empty: the broker runs alone.
	Cluster BrokerCluster `yaml:"cluster"`

	// Warnings are problems of the file that do not stop it from loading
	// (a TURN secret other users may read). LoadBroker sets them; the
	// caller logs them. Never part of the YAML.
	Warnings []string `yaml:"-"`
}

// BrokerLimits bound what one broker holds in memory.
type BrokerLimits struct {
	MaxAgents         int           `yaml:"max_agents"`
	MaxSharesPerAgent int           `yaml:"max_shares_per_agent"`
	MaxPendingIntros  int           `yaml:"max_pending_intros"`
	MaxMessageBytes   int           `yaml:"max_message_bytes"`
	HandshakeTimeout  time.Duration `yaml:"handshake_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	IntroTimeout      time.Duration `yaml:"intro_timeout"`
	// RegistrationGrace: how long a share its online sharer does not hold
	// is "not registered yet" (agents retry) before it is refused.
	RegistrationGrace time.Duration `yaml:"registration_grace"`

	// Admission limits of every listener (control, TURN, STUN over TCP)
	// and rate limits of control requests; see docs/reference.md, "Broker limits".
	PreAuthTimeout        time.Duration `yaml:"preauth_timeout"`           // a connection must authenticate within it
	MaxPreAuthPerIP       int           `yaml:"max_preauth_per_ip"`        // unauthenticated connections per source IP and listener
	AcceptsPerSecondPerIP int           `yaml:"accepts_per_second_per_ip"` // accepted connections per source IP and listener
	AcceptBurstPerIP      int           `yaml:"accept_burst_per_ip"`
	MaxConns              int           `yaml:"max_conns"`       // global; 0: derived from the fd limit
	PreAuthPercent        int           `yaml:"preauth_percent"` // of max_conns unauthenticated connections may hold
	LoginsPerMinPerIP     int           `yaml:"logins_per_minute_per_ip"`
	LoginsPerMinPerAgent  int           `yaml:"logins_per_minute_per_agent"`
	RegistersPerMinPerIP  int           `yaml:"registers_per_minute_per_ip"`
	RegistersPerMinPerAg  int           `yaml:"registers_per_minute_per_agent"`
	ConnectsPerMinPerIP   int           `yaml:"connects_per_minute_per_ip"`
	ConnectsPerMinPerAg   int           `yaml:"connects_per_minute_per_agent"`
}

// Error is one problem in a configuration. Its text is
// "FILE:LINE:COLUMN: PATH: MSG; hint: HINT", leaving out the parts that are
// unknown. It stays on one line, so that joined errors read one per line.
type Error struct {
	File   string // as given to Load*/Parse*; empty for Validate on a config built in code
	Line   int    // 1-based; 0 when unknown
	Column int    // 1-based, in characters; 0 when unknown (validation points at lines only)
	Path   string // dotted field path, e.g. "connects[1].listen"; empty for the whole file
	Msg    string
	Hint   string // what to do about it, when the cause is a common one; may be empty
	Err    error  // the underlying cause, if any (e.g. secure.ErrBadTicket, fs.ErrNotExist)
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteString(":" + strconv.Itoa(e.Line))
			if e.Column > 0 {
				b.WriteString(":" + strconv.Itoa(e.Column))
			}
		}
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	if e.Hint != "" {
		b.WriteString("; hint: " + e.Hint)
	}
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Is makes every configuration error match ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// LoadAgent reads, decodes, defaults and validates an agent.yaml. A file
// holding secrets (a broker URL carries its token, a ticket its admit key)
// that other users may read or write loads, with a line in Warnings.
func LoadAgent(path string) (*Agent, error) {
	data, fi, err := readFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseAgent(path, data)
	if err != nil {
		return nil, err
	}
	if secrets := c.secrets(); len(secrets) > 0 {
		if w := exposed(path, fi, secrets); w != "" {
			c.Warnings = append(c.Warnings, w)
		}
	}
	return c, nil
}

// secrets names what in c must not be read by other users.
func (c *Agent) secrets() []string {
	var out []string
	if c.Broker != "" {
		out = append(out, "the broker token")
	}
	if c.Relay.Secret != "" {
		out = append(out, "the relay secret")
	}
	if u, err := proxy.ParseURL(c.Proxy); err == nil && u.User != nil {
		out = append(out, "the proxy credentials")
	}
	for _, cn := range c.Connects {
		if cn.Ticket != "" {
			out = append(out, "tickets")
			break
		}
	}
	return out
}

// ParseAgent is LoadAgent from bytes; name stands for the file in messages.
func ParseAgent(name string, data []byte) (*Agent, error) {
	c := new(Agent)
	lines, err := decode(name, data, c)
	if err != nil {
		return nil, err
	}
	c.SetDefaults()
	if err := c.validate(&problems{file: name, lines: lines}); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadBroker reads, decodes, defaults and validates a broker.yaml.
func LoadBroker(path string) (*Broker, error) {
	data, fi, err := readFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseBroker(path, data)
	if err != nil {
		return nil, err
	}
	if c.TURN.External.Secret != "" {
		if w := exposed(path, fi, []string{"the TURN secret"}); w != "" {
			c.Warnings = append(c.Warnings, w)
		}
	}
	return c, nil
}

// ParseBroker is LoadBroker from bytes; name stands for the file in messages.
func ParseBroker(name string, data []byte) (*Broker, error) {
	c := new(Broker)
	lines, err := decode(name, data, c)
	if err != nil {
		return nil, err
	}
	c.SetDefaults()
	if err := c.validate(&problems{file: name, lines: lines}); err != nil {
		return nil, err
	}
	return c, nil
}

// readFile reads a config file of at most MaxFileSize and returns what it
// read and the file's info (for its mode), taken from the open file.
func readFile(path string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, openError(path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, &Error{File: path, Msg: "cannot read: " + causeText(err), Err: err}
	}
	if fi.IsDir() {
		return nil, nil, &Error{File: path, Msg: "cannot read: is a directory, not a configuration file"}
	}
	// Read one byte past the cap to tell "exactly at the cap" from "over it".
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, nil, &Error{File: path, Msg: "cannot read: " + causeText(err), Err: err}
	}
	if len(data) > MaxFileSize {
		return nil, nil, tooLarge(path)
	}
	return data, fi, nil
}

// openError says why path cannot be opened and, when it exists but may not
// be read, who may read it: the usual cause is a service user that is not
// the file's owner or in its group.
func openError(path string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		if fi, serr := os.Stat(path); serr == nil {
			return &Error{File: path, Err: err, Msg: fmt.Sprintf(
				"cannot read: permission denied (%s); run as its owner or a member of its group, or fix them with chown/chmod",
				describeOwner(fi))}
		}
	}
	return &Error{File: path, Msg: "cannot read: " + causeText(err), Err: err}
}

func tooLarge(name string) error {
	return &Error{File: name, Msg: fmt.Sprintf("file is larger than %d KiB; is this the right file?", MaxFileSize>>10)}
}

// causeText drops the path an *os.PathError repeats, since Error names the file.
func causeText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
