package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/peerport/peerport/internal/config"
)

// The broker cluster example of cluster/ (docs/cluster.md), checked with the
// parsers that will read it: nats-server's for the NATS configs, the
// broker's for broker-N.yaml, YAML for compose.yaml; the systemd units as
// text. Nothing is started but init-state.sh, over a stand-in broker.

const (
	clusterDir = "cluster"
	natsEnv    = "PEERPORT_NATS_PASSWORD" // the NATS password's variable, in the configs, compose and the units
	natsPass   = "password-of-the-test"
	stateMount = "/var/lib/peerport" // the Dockerfile's --state-dir
)

// brokerFlags are the flags `broker --help` documents, and whether each
// takes a value. A list, because the test does not build the broker:
// TestBrokerFlagList checks it against cmd/broker's source. cluster,
// cluster-node and cluster-creds are the cluster's (issue 17).
var brokerFlags = map[string]bool{
	"config": true, "c": true, "listen": true, "public-addr": true, "state-dir": true,
	"metrics-listen": true, "turn-listen": true, "no-turn": false, "cert-file": true,
	"key-file": true, "acme-domain": true, "acme-email": true, "acme-directory": true,
	"acme-http": true, "log-level": true, "log-format": true, "stun-listen": true,
	"no-stun": false, "help": false, "h": false, "version": false,
	"cluster": true, "cluster-node": true, "cluster-creds": true,
}

var clusterFlags = []string{"cluster", "cluster-node", "cluster-creds"}

// TestBrokerFlagList keeps brokerFlags honest: every flag in it, but the
// cluster's until cmd/broker declares them, is declared in cmd/broker, and
// every flag cmd/broker declares is in it.
func TestBrokerFlagList(t *testing.T) {
	src := read(t, "../cmd/broker/main.go")
	declared := map[string]bool{"help": true, "h": true, "version": true} // cobra's
	for _, m := range regexp.MustCompile(`\.(?:String|Bool|StringSlice|Int|Duration)VarP?\(&\w+, "([a-z-]+)"(?:, "([a-z])")?`).FindAllStringSubmatch(src, -1) {
		declared[m[1]] = true
		if m[2] != "" {
			declared[m[2]] = true
		}
	}
	if len(declared) < 10 {
		t.Fatalf("found only %d flags in cmd/broker/main.go: the pattern no longer matches how it declares them", len(declared))
	}
	for f := range declared {
		if _, ok := brokerFlags[f]; !ok {
			t.Errorf("cmd/broker declares --%s, which brokerFlags lacks", f)
		}
	}
	clusterDeclared := 0
	for f := range brokerFlags {
		switch {
		case slices.Contains(clusterFlags, f) && declared[f]:
			clusterDeclared++
		case slices.Contains(clusterFlags, f):
		case !declared[f]:
			t.Errorf("brokerFlags has --%s, which cmd/broker does not declare", f)
		}
	}
	switch clusterDeclared {
	case 0:
		t.Log("cmd/broker declares no cluster flags yet: --cluster, --cluster-node and --cluster-creds are checked against the list only")
	case len(clusterFlags):
	default:
		t.Errorf("cmd/broker declares %d of --cluster, --cluster-node, --cluster-creds; the example uses all three", clusterDeclared)
	}
}

// checkBrokerArgs checks that args (a broker command line without the
// binary) use only documented flags, each with its value, and returns the
// flags' values (the last one of each).
func checkBrokerArgs(t *testing.T, where string, args []string) map[string]string {
	t.Helper()
	vals := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			t.Errorf("%s: %q is not a flag: broker takes no arguments", where, a)
			continue
		}
		takes, ok := brokerFlags[name]
		if !ok || strings.HasPrefix(a, "--") != (len(name) > 1) {
			t.Errorf("%s: %s is not a flag broker documents", where, a)
			continue
		}
		switch {
		case takes && !hasVal:
			if i+1 >= len(args) {
				t.Errorf("%s: %s has no value", where, a)
				continue
			}
			i++
			val = args[i]
		case !takes && hasVal:
			t.Errorf("%s: %s takes no value", where, a)
		}
		vals[name] = val
	}
	return vals
}

// natsServer is what the tests need of one nats-N.conf.
type natsServer struct {
	name        string // server_name, also the file's and the compose service's name
	port        int    // client port
	clusterPort int
}

// silentDrop is how long a NATS server keeps a client that stopped
// answering: its pings, unanswered ping_max times, then one more interval
// (nats-server's defaults where the file sets none).
func silentDrop(o *server.Options) time.Duration {
	every, max := o.PingInterval, o.MaxPingsOut
	if every == 0 {
		every = server.DEFAULT_PING_INTERVAL
	}
	if max == 0 {
		max = server.DEFAULT_PING_MAX_OUT
	}
	return every * time.Duration(max+1)
}

// loadNATS parses every cluster/nats-*.conf with nats-server's parser.
func loadNATS(t *testing.T) []natsServer {
	t.Helper()
	t.Setenv(natsEnv, natsPass)
	paths, err := filepath.Glob(filepath.Join(clusterDir, "nats-*.conf"))
	if err != nil || len(paths) != 3 {
		t.Fatalf("nats-*.conf: %v, %v; want three", paths, err)
	}
	var out []natsServer
	routes := map[string][]string{}
	clusterName := ""
	for _, p := range paths {
		o, err := server.ProcessConfigFile(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		// ProcessConfigFile drops warnings (an option it ignores, say);
		// the method returns them.
		if err := new(server.Options).ProcessConfigFile(p); err != nil {
			t.Errorf("%s: warnings: %v", p, err)
		}
		stem := strings.TrimSuffix(filepath.Base(p), ".conf")
		switch {
		case o.ServerName != stem:
			t.Errorf("%s: server_name %q; want %q, the file's (and compose service's) name", p, o.ServerName, stem)
		case o.Port <= 0 || o.Cluster.Port <= 0:
			t.Errorf("%s: client port %d, cluster port %d", p, o.Port, o.Cluster.Port)
		case o.Username != "peerport" || o.Password != natsPass:
			t.Errorf("%s: client user %q with password %q; want peerport with $%s", p, o.Username, o.Password, natsEnv)
		case o.Cluster.Name == "" || clusterName != "" && o.Cluster.Name != clusterName:
			t.Errorf("%s: cluster name %q; want one name for all three (%q)", p, o.Cluster.Name, clusterName)
		case o.JetStream:
			t.Errorf("%s: JetStream is on; the brokers do not use it", p)
		case o.HTTPPort > 0 && o.HTTPHost != "127.0.0.1":
			t.Errorf("%s: monitoring on %s:%d; keep it on 127.0.0.1", p, o.HTTPHost, o.HTTPPort)
		case silentDrop(o) > 30*time.Second:
			// A vanished broker's subscriptions live this long: its shares
			// look online and connects to them time out.
			t.Errorf("%s: a silent client is dropped after %v; want <= 30s (ping_interval, ping_max)", p, silentDrop(o))
		}
		clusterName = o.Cluster.Name
		for _, r := range o.Routes {
			if r.Scheme != "nats-route" {
				t.Errorf("%s: route %s is not nats-route://", p, r.Redacted())
			}
			routes[stem] = append(routes[stem], r.Host)
		}
		out = append(out, natsServer{name: stem, port: o.Port, clusterPort: o.Cluster.Port})
	}
	// Each routes to the other two, at their cluster ports.
	for _, s := range out {
		var want []string
		for _, o := range out {
			if o.name != s.name {
				want = append(want, net.JoinHostPort(o.name, strconv.Itoa(o.clusterPort)))
			}
		}
		got := slices.Sorted(slices.Values(routes[s.name]))
		if !slices.Equal(got, want) {
			t.Errorf("%s routes to %v; want the other two, %v", s.name, got, want)
		}
	}
	return out
}

func TestClusterNATSConfigs(t *testing.T) {
	loadNATS(t)
	t.Run("no password", func(t *testing.T) {
		// Without the variable the server must not start open to all.
		t.Setenv(natsEnv, "")
		os.Unsetenv(natsEnv)
		p := filepath.Join(clusterDir, "nats-1.conf")
		if _, err := server.ProcessConfigFile(p); err == nil || !strings.Contains(err.Error(), natsEnv) {
			t.Errorf("%s without $%s: %v; want an error naming it", p, natsEnv, err)
		}
	})
}

// compose.yaml, as much as the tests read. Merge keys (<<) are resolved by
// the YAML decoder, as by compose.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Hostname    string            `yaml:"hostname"`
	Build       *composeBuild     `yaml:"build"`
	Command     []string          `yaml:"command"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
	Target     string `yaml:"target"`
}

// interpolate expands compose's ${VAR}, ${VAR:-default} and ${VAR:?error}.
func interpolate(s string, env map[string]string) (string, error) {
	var errs []string
	out := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}`).ReplaceAllStringFunc(s, func(m string) string {
		p := regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}$`).FindStringSubmatch(m)
		v := env[p[1]]
		switch {
		case v != "":
			return v
		case p[2] == ":-":
			return p[3]
		case p[2] == ":?":
			errs = append(errs, p[1]+": "+p[3])
		}
		return ""
	})
	if strings.Contains(out, "$") {
		errs = append(errs, "a $ left after interpolation")
	}
	if errs != nil {
		return "", fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return out, nil
}

// loadCompose parses compose.yaml and, as compose does, interpolates the
// values (not the comments) with env.
func loadCompose(t *testing.T, env map[string]string) (composeFile, error) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(read(t, filepath.Join(clusterDir, "compose.yaml"))), &doc); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	var errs []error
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.ScalarNode {
			v, err := interpolate(n.Value, env)
			if err != nil {
				errs = append(errs, fmt.Errorf("line %d: %w", n.Line, err))
			}
			n.Value = v
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&doc)
	var c composeFile
	if err := doc.Decode(&c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c, errors.Join(errs...)
}

// mount is one entry of a service's volumes (short syntax).
type mount struct {
	src, dst string
	ro       bool
}

func mounts(s composeService) []mount {
	var out []mount
	for _, v := range s.Volumes {
		p := strings.Split(v, ":")
		m := mount{src: p[0]}
		if len(p) > 1 {
			m.dst = p[1]
		}
		m.ro = len(p) > 2 && p[2] == "ro"
		out = append(out, m)
	}
	return out
}

// published are the ports a service publishes, "PORT/PROTO" to the host
// address and port ("IP:PORT", IP empty for every address).
func published(t *testing.T, svc string, ports []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range ports {
		spec, proto, _ := strings.Cut(p, "/")
		if proto == "" {
			proto = "tcp"
		}
		parts := strings.Split(spec, ":")
		if len(parts) < 2 || len(parts) > 3 {
			t.Errorf("%s: port %q: want [IP:]HOST:CONTAINER", svc, p)
			continue
		}
		ip := ""
		if len(parts) == 3 {
			ip, parts = parts[0], parts[1:]
		}
		hlo, hhi := portRange(t, svc, parts[0])
		clo, chi := portRange(t, svc, parts[1])
		if hhi-hlo != chi-clo {
			t.Errorf("%s: port %q: ranges of different lengths", svc, p)
			continue
		}
		for i := 0; i <= chi-clo; i++ {
			out[fmt.Sprintf("%d/%s", clo+i, proto)] = fmt.Sprintf("%s:%d", ip, hlo+i)
		}
	}
	return out
}

func portRange(t *testing.T, svc, s string) (int, int) {
	t.Helper()
	a, b, ok := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := lo, error(nil)
	if ok {
		hi, err2 = strconv.Atoi(b)
	}
	if err1 != nil || err2 != nil || lo < 1 || hi < lo || hi > 65535 {
		t.Errorf("%s: bad port or range %q", svc, s)
	}
	return lo, hi
}

func portOf(t *testing.T, where, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Errorf("%s: %q has no port", where, addr)
	}
	return n
}

func TestClusterCompose(t *testing.T) {
	nats := loadNATS(t)
	env := map[string]string{"PUBLIC_HOST": "broker.example.com", natsEnv: natsPass}
	c, err := loadCompose(t, env)
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, missing := range []string{"PUBLIC_HOST", natsEnv} {
		e := map[string]string{"PUBLIC_HOST": env["PUBLIC_HOST"], natsEnv: natsPass}
		delete(e, missing)
		if _, err := loadCompose(t, e); err == nil || !strings.Contains(err.Error(), missing+": set") {
			t.Errorf("compose.yaml without %s: %v; want compose to refuse, naming it", missing, err)
		}
	}

	// The NATS servers: one service per nats-N.conf, of the same name.
	var natsURLs []string // host:port of each client port
	for _, n := range nats {
		s, ok := c.Services[n.name]
		if !ok {
			t.Errorf("compose.yaml has no service %s for %s.conf", n.name, n.name)
			continue
		}
		if !strings.HasPrefix(s.Image, "nats:2.") {
			t.Errorf("%s: image %q; want nats:2.x", n.name, s.Image)
		}
		i := slices.Index(s.Command, "--config")
		if i < 0 || i+1 >= len(s.Command) {
			t.Errorf("%s: command %q names no --config", n.name, s.Command)
		} else if !slices.Contains(mounts(s), mount{src: "./" + n.name + ".conf", dst: s.Command[i+1], ro: true}) {
			t.Errorf("%s: mounts %v; want ./%s.conf at %s, read-only", n.name, s.Volumes, n.name, s.Command[i+1])
		}
		if s.Environment[natsEnv] != natsPass {
			t.Errorf("%s: no %s in its environment; its config reads it", n.name, natsEnv)
		}
		if len(s.Ports) != 0 {
			t.Errorf("%s publishes %v: NATS is for the brokers, on the project's network only", n.name, s.Ports)
		}
		natsURLs = append(natsURLs, net.JoinHostPort(n.name, strconv.Itoa(n.port)))
	}

	// The Dockerfile the brokers are built from, and its state dir.
	dockerfile := read(t, filepath.Join("..", "Dockerfile"))
	if !strings.Contains(dockerfile, `"--state-dir", "`+stateMount+`"`) {
		t.Fatalf("the Dockerfile's entrypoint no longer passes --state-dir %s", stateMount)
	}
	checkBuild := func(name string, b *composeBuild, target string) {
		t.Helper()
		if b == nil {
			t.Errorf("%s: not built from the repository's Dockerfile", name)
			return
		}
		root, _ := filepath.Abs("..")
		ctx, _ := filepath.Abs(filepath.Join(clusterDir, b.Context))
		if ctx != root || (b.Dockerfile != "" && b.Dockerfile != "Dockerfile") {
			t.Errorf("%s: build context %q, dockerfile %q; want the repository root and its Dockerfile", name, b.Context, b.Dockerfile)
		}
		if b.Target != target {
			t.Errorf("%s: build target %q; want %q", name, b.Target, target)
		}
		if target != "" && !regexp.MustCompile(`(?m)^FROM \S+ AS `+target+`$`).MatchString(dockerfile) {
			t.Errorf("%s: the Dockerfile has no stage %q", name, target)
		}
	}

	// The one-shot service that seeds the state volume.
	const initName = "broker-state"
	seed, ok := c.Services[initName]
	if !ok {
		t.Fatalf("compose.yaml has no service %s", initName)
	}
	checkBuild(initName, seed.Build, "build")
	if !slices.Contains(seed.Entrypoint, "/init-state.sh") || !slices.Contains(mounts(seed), mount{src: "./init-state.sh", dst: "/init-state.sh", ro: true}) {
		t.Errorf("%s: entrypoint %q, volumes %q; want ./init-state.sh, mounted", initName, seed.Entrypoint, seed.Volumes)
	}
	state := ""
	for _, m := range mounts(seed) {
		if m.dst == seed.Environment["STATE"] && !m.ro {
			state = m.src
		}
	}
	if _, declared := c.Volumes[state]; state == "" || !declared {
		t.Fatalf("%s mounts no named volume, writable, at STATE %q: %q", initName, seed.Environment["STATE"], seed.Volumes)
	}
	if b := seed.Environment["BROKER"]; b != "/out/broker" || !strings.Contains(dockerfile, "-o /out/ ./cmd/agent ./cmd/broker") {
		t.Errorf("%s: BROKER %q; the Dockerfile's build stage builds /out/broker", initName, b)
	}

	// The broker nodes: every service that runs the broker with --cluster.
	var brokers, nodes, publicAddrs []string
	hostPorts := map[string]string{} // host port -> service
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range c.Services {
			if !yield(n) {
				return
			}
		}
	}) {
		s := c.Services[name]
		if !slices.ContainsFunc(s.Command, func(a string) bool { return a == "--cluster" || strings.HasPrefix(a, "--cluster=") }) {
			continue
		}
		brokers = append(brokers, name)
		checkBuild(name, s.Build, "")
		flags := checkBrokerArgs(t, name, s.Command)

		var urls []string
		for _, u := range strings.Split(flags["cluster"], ",") {
			pu, err := url.Parse(u)
			if err != nil {
				t.Errorf("%s: --cluster %q: %v", name, u, err)
				continue
			}
			if pass, _ := pu.User.Password(); pu.Scheme != "nats" && pu.Scheme != "tls" || pu.User.Username() != "peerport" || pass != natsPass {
				t.Errorf("%s: --cluster %s: want nats:// or tls:// with user peerport and $%s", name, pu.Redacted(), natsEnv)
			}
			urls = append(urls, pu.Host)
		}
		if !slices.Equal(urls, natsURLs) {
			t.Errorf("%s: --cluster names %v; want the three NATS servers' client ports %v", name, urls, natsURLs)
		}
		if flags["cluster-node"] == "" || slices.Contains(nodes, flags["cluster-node"]) {
			t.Errorf("%s: --cluster-node %q; want a name of its own (container host names change on every recreate)", name, flags["cluster-node"])
		}
		nodes = append(nodes, flags["cluster-node"])
		if d := s.DependsOn[initName]; d.Condition != "service_completed_successfully" {
			t.Errorf("%s: depends on %s with %q; want service_completed_successfully, so that it never starts before the identity is there", name, initName, d.Condition)
		}

		// The shared identity: the one state volume, read-only.
		var stateMounts []mount
		for _, m := range mounts(s) {
			if m.dst == stateMount {
				stateMounts = append(stateMounts, m)
			}
		}
		if want := (mount{src: state, dst: stateMount, ro: true}); len(stateMounts) != 1 || stateMounts[0] != want {
			t.Errorf("%s: mounts %v at %s; want the volume %s, read-only, like every node", name, stateMounts, stateMount, state)
		}

		// Its broker.yaml, by the broker's own parser, and the ports it
		// binds: published as they are, since agents learn them from it.
		cfgPath := flags["config"] + flags["c"]
		var cfg *config.Broker
		for _, m := range mounts(s) {
			if m.dst == cfgPath && cfgPath != "" {
				b, err := config.ParseBroker(m.src, []byte(read(t, filepath.Join(clusterDir, m.src))))
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				cfg = b
			}
		}
		if cfg == nil {
			t.Errorf("%s: -c %q is not a file mounted from this directory", name, cfgPath)
			continue
		}
		pub := published(t, name, s.Ports)
		need := func(what string, port int, proto string) {
			t.Helper()
			key := fmt.Sprintf("%d/%s", port, proto)
			if got, ok := pub[key]; !ok || got != fmt.Sprintf(":%d", port) {
				t.Errorf("%s: %s %s is published as %q; want the same port, on every address", name, what, key, got)
			}
		}
		listen := portOf(t, name+" listen", cfg.Listen)
		need("control port (listen)", listen, "tcp")
		publicAddrs = append(publicAddrs, flags["public-addr"])
		if p := portOf(t, name+" --public-addr", flags["public-addr"]); p != listen {
			t.Errorf("%s: --public-addr %s; want port %d, listen's", name, flags["public-addr"], listen)
		}
		if len(cfg.STUN.Listen) != 2 {
			t.Errorf("%s: stun.listen %v; want its two addresses", name, cfg.STUN.Listen)
		}
		for _, a := range cfg.STUN.Listen {
			need("STUN", portOf(t, name+" stun.listen", a), "tcp")
			need("STUN", portOf(t, name+" stun.listen", a), "udp")
		}
		need("TURN (turn.listen)", portOf(t, name+" turn.listen", cfg.TURN.Listen), "tcp")
		lo, hi, err := config.ParsePortRange(cfg.TURN.RelayPorts)
		if err != nil || hi-lo > 1000 {
			t.Errorf("%s: turn.relay_ports %q (%v): want a narrow range, published", name, cfg.TURN.RelayPorts, err)
		}
		for p := int(lo); p <= int(hi); p++ {
			need("TURN relay port", p, "tcp")
		}
		if cfg.MetricsListen != "" {
			if got := pub[fmt.Sprintf("%d/tcp", portOf(t, name+" metrics_listen", cfg.MetricsListen))]; !strings.HasPrefix(got, "127.0.0.1:") {
				t.Errorf("%s: metrics published as %q; want 127.0.0.1 only", name, got)
			}
		}
		for k, v := range pub {
			hp := v[strings.LastIndex(v, ":")+1:] + k[strings.Index(k, "/"):]
			if other, taken := hostPorts[hp]; taken {
				t.Errorf("%s and %s both publish host port %s", other, name, hp)
			}
			hostPorts[hp] = name
		}
	}
	if len(brokers) != 3 {
		t.Errorf("broker nodes (services with --cluster): %v; want three", brokers)
	}
	if got, want := seed.Environment["AGENT_ADDRS"], strings.Join(publicAddrs, ","); got != want {
		t.Errorf("%s: AGENT_ADDRS %q; want the nodes' public addresses, %q", initName, got, want)
	}
}

// fakeBroker stands in for `broker` in init-state.sh: it makes the state
// files that are missing, as LoadOrCreateState does, prints a URL and runs
// until killed. It writes its arguments to $FAKE_ARGS.
const fakeBroker = `#!/bin/sh
printf '%s\n' "$@" > "$FAKE_ARGS"
while [ $# -gt 0 ]; do
	case $1 in --state-dir) dir=$2; shift ;; esac
	shift
done
for f in broker.key token turn.secret; do
	[ -s "$dir/$f" ] || od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$dir/$f"
done
echo "pp://$(cat "$dir/token")@127.0.0.1:40000#pin-$(cat "$dir/broker.key")"
exec sleep 30
`

func TestClusterInitState(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("init-state.sh is for Unix")
	}
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	bin := filepath.Join(t.TempDir(), "broker")
	if err := os.WriteFile(bin, []byte(fakeBroker), 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state") // as a fresh volume: root's, 0755
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	argsFile := filepath.Join(t.TempDir(), "args")
	const addrs = "h.example:7001,h.example:7002,h.example:7003"
	run := func(t *testing.T, broker string) (stdout, stderr string, err error) {
		t.Helper()
		cmd := exec.Command("sh", filepath.Join(clusterDir, "init-state.sh"))
		cmd.Env = append(os.Environ(), "STATE="+state, "BROKER="+broker, "AGENT_ADDRS="+addrs,
			"FAKE_ARGS="+argsFile, fmt.Sprintf("OWNER=%d:%d", os.Getuid(), os.Getgid()))
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		cmd.WaitDelay = 10 * time.Second
		err = cmd.Run()
		return out.String(), errb.String(), err
	}
	identity := func(t *testing.T) map[string]string {
		t.Helper()
		m := map[string]string{}
		for _, f := range []string{"broker.key", "token", "turn.secret"} {
			p := filepath.Join(state, f)
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v; want 0600", f, fi.Mode().Perm())
			}
			m[f] = read(t, p)
		}
		if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("state dir: %v, %v; want mode 0700", fi, err)
		}
		if ents, _ := os.ReadDir(state); len(ents) != 3 {
			t.Errorf("state dir holds %d entries; want the three files only", len(ents))
		}
		return m
	}

	out, errs, err := run(t, bin)
	if err != nil {
		t.Fatalf("first run: %v\n%s", err, errs)
	}
	first := identity(t)
	want := "pp://" + first["token"] + "@" + addrs + "#pin-" + first["broker.key"] + "\n"
	if out != want {
		t.Errorf("first run printed %q; want the agents' URL %q", out, want)
	}
	checkBrokerArgs(t, "init-state.sh's broker", strings.Fields(read(t, argsFile)))

	out2, errs, err := run(t, bin)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, errs)
	}
	if again := identity(t); fmt.Sprint(again) != fmt.Sprint(first) {
		t.Errorf("second run changed the identity: %v, was %v", again, first)
	}
	if out2 != want || !strings.Contains(errs, "left as it is") {
		t.Errorf("second run printed %q, said %q; want the same URL, and the identity left alone", out2, errs)
	}

	if _, errs, err := run(t, "/bin/false"); err == nil || !strings.Contains(errs, "exited before printing its URL") {
		t.Errorf("with a broker that fails: %v, %q; want a failure that says so", err, errs)
	}

	if err := os.Remove(filepath.Join(state, "turn.secret")); err != nil {
		t.Fatal(err)
	}
	if _, errs, err := run(t, bin); err == nil || !strings.Contains(errs, "not all") {
		t.Errorf("with turn.secret missing: %v, %q; want a refusal: a new one would split the cluster", err, errs)
	}
	if _, err := os.Stat(filepath.Join(state, "turn.secret")); err == nil {
		t.Error("with turn.secret missing, init-state.sh made one")
	}
}

// unit is a systemd unit file: section -> key -> values in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	u := unit{}
	sec := ""
	for n, line := range strings.Split(read(t, path), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			sec = line[1 : len(line)-1]
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		case strings.HasSuffix(line, `\`):
			t.Fatalf("%s:%d: continued lines are not handled here", path, n+1)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == "" {
				t.Fatalf("%s:%d: %q is not KEY=VALUE in a section", path, n+1, line)
			}
			u[sec][k] = append(u[sec][k], v)
		}
	}
	return u
}

// hardening are the [Service] lines of deploy/systemd's broker unit after
// its "# Hardening" comment.
func hardening(t *testing.T, path string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(read(t, path), "\n# Hardening")
	if !ok {
		t.Fatalf("%s has no # Hardening section", path)
	}
	rest, _, _ = strings.Cut(rest, "\n[")
	var out []string
	for _, l := range strings.Split(rest, "\n")[1:] {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func TestClusterSystemd(t *testing.T) {
	nats := loadNATS(t)
	baseUnit := filepath.Join("systemd", "peerport-broker.service")
	base := parseUnit(t, baseUnit)
	dropPath := filepath.Join(clusterDir, "peerport-broker.service.d", "cluster.conf")
	drop := parseUnit(t, dropPath)

	// The drop-in replaces ExecStart and adds its environment, nothing
	// else: the unit's user, state dir and hardening stay in force.
	allowed := map[string][]string{"Unit": {"After", "Wants"}, "Service": {"ExecStart", "EnvironmentFile", "LoadCredential"}}
	for sec, keys := range drop {
		for k := range keys {
			if !slices.Contains(allowed[sec], k) {
				t.Errorf("%s: [%s] %s: the drop-in may only add the cluster; the unit's settings (and hardening) must stay", dropPath, sec, k)
			}
		}
	}
	baseExec := base["Service"]["ExecStart"]
	execs := drop["Service"]["ExecStart"]
	if len(baseExec) != 1 || len(execs) != 2 || execs[0] != "" {
		t.Fatalf("%s: ExecStart %q; want an empty one (to reset the unit's) and the new command", dropPath, execs)
	}
	env := drop["Service"]["EnvironmentFile"]
	natsUnitPath := filepath.Join(clusterDir, "nats-server.service")
	natsUnit := parseUnit(t, natsUnitPath)
	if len(env) != 1 || !slices.Equal(natsUnit["Service"]["EnvironmentFile"], env) {
		t.Errorf("%s: EnvironmentFile %q; want the one nats-server.service reads too, %q", dropPath, env, natsUnit["Service"]["EnvironmentFile"])
	}

	var want []string
	for _, n := range nats {
		want = append(want, net.JoinHostPort(n.name, strconv.Itoa(n.port)))
	}
	checkExec := func(where, line string, creds bool) {
		t.Helper()
		words := strings.Fields(line)
		baseWords := strings.Fields(baseExec[0])
		if len(words) <= len(baseWords) || !slices.Equal(words[:len(baseWords)], baseWords) {
			t.Errorf("%s: ExecStart %q does not start with the unit's %q", where, line, baseExec[0])
			return
		}
		added := words[len(baseWords):]
		flags := checkBrokerArgs(t, where, added)
		for f := range flags {
			if !slices.Contains(clusterFlags, f) {
				t.Errorf("%s: adds --%s; the drop-in adds only cluster flags (the rest belongs in broker.yaml)", where, f)
			}
		}
		var got []string
		for _, u := range strings.Split(strings.ReplaceAll(flags["cluster"], "${"+natsEnv+"}", natsPass), ",") {
			pu, err := url.Parse(u)
			if err != nil {
				t.Errorf("%s: --cluster %q: %v", where, u, err)
				continue
			}
			pass, _ := pu.User.Password()
			switch {
			case creds && (pu.Scheme != "tls" || pu.User != nil):
				t.Errorf("%s: --cluster %s: with --cluster-creds want tls:// and no password", where, pu.Redacted())
			case !creds && (pu.Scheme != "nats" && pu.Scheme != "tls" || pu.User.Username() != "peerport" || pass != natsPass):
				t.Errorf("%s: --cluster %s: want user peerport with ${%s}", where, pu.Redacted(), natsEnv)
			}
			got = append(got, pu.Host)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: --cluster names %v; want the NATS servers %v", where, got, want)
		}
		if creds != (flags["cluster-creds"] != "") {
			t.Errorf("%s: --cluster-creds %q", where, flags["cluster-creds"])
		}
	}
	checkExec(dropPath, execs[1], false)

	// The commented alternative (TLS and a credentials file) must not rot.
	var alt []string
	for _, l := range strings.Split(read(t, dropPath), "\n") {
		if s, ok := strings.CutPrefix(strings.TrimLeft(l, "# "), "ExecStart="); ok && strings.HasPrefix(l, "#") {
			alt = append(alt, s)
		}
	}
	if len(alt) != 1 {
		t.Errorf("%s: %d commented ExecStart lines; want the one with --cluster-creds", dropPath, len(alt))
	}
	for _, a := range alt {
		checkExec(dropPath+" (commented)", a, true)
	}

	// nats-server.service: reads the config compose mounts, and is
	// hardened as the broker's unit is.
	words := strings.Fields(strings.Join(natsUnit["Service"]["ExecStart"], " "))
	if i := slices.Index(words, "--config"); len(words) == 0 || filepath.Base(words[0]) != "nats-server" || i < 0 || i+1 >= len(words) || words[i+1] != "/etc/nats/nats-server.conf" {
		t.Errorf("%s: ExecStart %q; want nats-server --config /etc/nats/nats-server.conf, where compose mounts nats-N.conf", natsUnitPath, words)
	}
	for _, h := range hardening(t, baseUnit) {
		k, v, _ := strings.Cut(h, "=")
		if !slices.Contains(natsUnit["Service"][k], v) {
			t.Errorf("%s: no %s; harden it as %s is", natsUnitPath, h, baseUnit)
		}
	}
}
