package natlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Lab is a built topology. Its methods are safe for concurrent use.
type Lab struct {
	topo   Topology
	plan   *plan
	prefix string
	nodes  map[string]*Node
	order  []*Node // plan order: internet, routers top-down, hosts

	mu     sync.Mutex
	procs  map[*Proc]struct{}
	links  map[string]*Link // by node name
	closed bool
}

// Option configures Build.
type Option func(*buildOptions)

type buildOptions struct {
	keepStale bool
}

// WithoutStaleCleanup skips removing namespaces left by dead processes.
func WithoutStaleCleanup() Option { return func(o *buildOptions) { o.keepStale = true } }

// staleRE matches lab namespace names and captures the creating pid.
var staleRE = regexp.MustCompile(`^ppl([0-9]+)-[0-9a-f]+-`)

// New builds topo for a test: it calls Require, fails the test if the build
// fails, and registers Close with t.Cleanup. On failure, the output of every
// process started in the lab is logged.
func New(t testing.TB, topo Topology, opts ...Option) *Lab {
	t.Helper()
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	lab, err := Build(ctx, topo, opts...)
	if err != nil {
		t.Fatalf("natlab: %v", err)
	}
	t.Logf("natlab: built %q as %s* in %v", topo.Name, lab.prefix, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			lab.logProcs(t)
		}
		start := time.Now()
		if err := lab.Close(); err != nil {
			t.Errorf("natlab: close: %v", err)
		}
		t.Logf("natlab: closed %q in %v", topo.Name, time.Since(start).Round(time.Millisecond))
	})
	return lab
}

// Build creates every namespace, link, address, route and rule of topo and
// starts its WAN links. Namespaces left by dead processes are removed first.
// On error nothing of the new lab is left behind.
func Build(ctx context.Context, topo Topology, opts ...Option) (*Lab, error) {
	var o buildOptions
	for _, f := range opts {
		f(&o)
	}
	if err := Available(); err != nil {
		return nil, err
	}
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	p, err := planAddresses(topo)
	if err != nil {
		return nil, fmt.Errorf("natlab: plan %q: %w", topo.Name, err)
	}
	if !o.keepStale {
		if err := CleanStale(ctx); err != nil {
			return nil, err
		}
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	l := &Lab{
		topo:   topo,
		plan:   p,
		prefix: fmt.Sprintf("ppl%d-%s-", os.Getpid(), hex.EncodeToString(rnd[:])),
		nodes:  map[string]*Node{},
		procs:  map[*Proc]struct{}{},
		links:  map[string]*Link{},
	}
	for _, pn := range p.nodes {
		n := &Node{lab: l, p: pn, ns: l.prefix + pn.name}
		l.nodes[pn.name] = n
		l.order = append(l.order, n)
	}
	if err := l.build(ctx); err != nil {
		cerr := l.Close()
		return nil, errors.Join(fmt.Errorf("natlab: build %q: %w", topo.Name, err), cerr)
	}
	return l, nil
}

// parallel runs fn for every node at once and joins the errors.
func (l *Lab) parallel(fn func(n *Node) error) error {
	errs := make([]error, len(l.order))
	var wg sync.WaitGroup
	for i, n := range l.order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (l *Lab) build(ctx context.Context) error {
	v6 := l.topo.IPv6
	// 1. Namespaces, with their sysctls set before any interface exists.
	if err := l.parallel(func(n *Node) error {
		if _, err := run(ctx, "", "ip", "netns", "add", n.ns); err != nil {
			return err
		}
		n.created = true
		kv := [][2]string{}
		if v6 {
			kv = append(kv, [2]string{"net.ipv6.conf.all.accept_dad", "0"}, [2]string{"net.ipv6.conf.default.accept_dad", "0"})
		} else {
			kv = append(kv, [2]string{"net.ipv6.conf.all.disable_ipv6", "1"}, [2]string{"net.ipv6.conf.default.disable_ipv6", "1"})
		}
		if n.p.kind != nodeHost {
			kv = append(kv, [2]string{"net.ipv4.ip_forward", "1"},
				[2]string{"net.ipv4.conf.all.send_redirects", "0"}, [2]string{"net.ipv4.conf.default.send_redirects", "0"})
			if v6 {
				kv = append(kv, [2]string{"net.ipv6.conf.all.forwarding", "1"})
			}
		}
		if err := writeSysctls(n.ns, kv); err != nil {
			return err
		}
		// br_netfilter, when loaded, would pass bridged frames through the
		// router's rules; the lab's bridges are plain switches.
		_ = writeSysctls(n.ns, [][2]string{
			{"net.bridge.bridge-nf-call-iptables", "0"},
			{"net.bridge.bridge-nf-call-ip6tables", "0"},
			{"net.bridge.bridge-nf-call-arptables", "0"},
		})
		return nil
	}); err != nil {
		return err
	}
	// 2. Bridges and veth pairs (each pair created from the child's side,
	// its peer placed straight into the parent's namespace).
	if err := l.parallel(func(n *Node) error {
		lines := []string{"link set lo up"}
		if br := n.bridge(); br != "" {
			lines = append(lines, "link add "+br+" type bridge")
		}
		if n.p.parent != nil && n.p.link == nil {
			lines = append(lines, fmt.Sprintf("link add %s type veth peer name %s netns %s",
				n.p.uplink, n.p.port, l.nodes[n.p.parent.name].ns))
		}
		return ipBatch(ctx, n.ns, lines)
	}); err != nil {
		return err
	}
	// 3. WAN links: a TAP device on each side, joined in userspace.
	for _, n := range l.order {
		if n.p.parent == nil || n.p.link == nil {
			continue
		}
		parent := l.nodes[n.p.parent.name]
		lk, err := openLink(n.name()+" uplink", *n.p.link, n.ns, n.p.uplink, parent.ns, n.p.port)
		if err != nil {
			return err
		}
		l.mu.Lock()
		l.links[n.name()] = lk
		l.mu.Unlock()
	}
	// 4. Bridges with their ports and addresses, then uplinks and routes (a
	// veth pair whose two ends go up at the same instant can miss its carrier).
	if err := l.parallel(func(n *Node) error {
		var lines []string
		if br := n.bridge(); br != "" {
			for _, c := range n.p.children {
				lines = append(lines, fmt.Sprintf("link set %s master %s", c.port, br), "link set "+c.port+" up")
			}
			lines = append(lines, fmt.Sprintf("addr add %s dev %s", n.p.lan4, br))
			if v6 {
				lines = append(lines, fmt.Sprintf("addr add %s dev %s nodad", n.p.lan6, br))
			}
			lines = append(lines, "link set "+br+" up")
		}
		return ipBatch(ctx, n.ns, lines)
	}); err != nil {
		return err
	}
	if err := l.parallel(func(n *Node) error {
		var lines []string
		if n.p.parent != nil {
			up := n.p.uplink
			for _, a := range n.p.addr4 {
				lines = append(lines, fmt.Sprintf("addr add %s dev %s", a, up))
			}
			if v6 {
				lines = append(lines, fmt.Sprintf("addr add %s dev %s nodad", n.p.addr6, up))
			}
			lines = append(lines, "link set "+up+" up", "route add default via "+n.p.gw4.String())
			if v6 {
				lines = append(lines, "route add default via "+n.p.gw6.String())
			}
		}
		for _, r := range n.p.routes4 {
			lines = append(lines, fmt.Sprintf("route add %s via %s", r.dst, r.via))
		}
		for _, r := range n.p.routes6 {
			lines = append(lines, fmt.Sprintf("route add %s via %s", r.dst, r.via))
		}
		return ipBatch(ctx, n.ns, lines)
	}); err != nil {
		return err
	}
	// 5. Router rules.
	if err := l.parallel(func(n *Node) error {
		if n.p.kind != nodeRouter {
			return nil
		}
		_, err := nsExec(ctx, n.ns, rulesFor(n.p.rkind)+egressRules(n.p, n.p.egress), "nft", "-f", "-")
		return err
	}); err != nil {
		return err
	}
	l.mu.Lock()
	for _, lk := range l.links {
		lk.start()
	}
	l.mu.Unlock()
	// 6. IPv6 uses an interface only once the kernel marks it running,
	// which it does asynchronously (up to a second later); IPv4 does not wait.
	if !v6 {
		return nil
	}
	return l.parallel(func(n *Node) error {
		deadline := time.Now().Add(5 * time.Second)
		for {
			out, err := run(ctx, "", "ip", "-n", n.ns, "-o", "link", "show", "up")
			if err != nil {
				return err
			}
			if !strings.Contains(string(out), "NO-CARRIER") {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: links without carrier after 5s: %s", n.ns, out)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// Close stops every process and link and deletes every namespace of the lab.
// It is idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := make([]*Proc, 0, len(l.procs))
	for p := range l.procs {
		procs = append(procs, p)
	}
	links := l.links
	l.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = p.Stop() // exit status of a stopped process is not an error of Close
		}()
	}
	wg.Wait()
	for _, lk := range links {
		lk.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs = append(errs, l.parallel(func(n *Node) error {
		if !n.created {
			return nil
		}
		return deleteNetns(ctx, n.ns)
	}))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("natlab: close %q: %w", l.topo.Name, err)
	}
	return nil
}

func (l *Lab) logProcs(t testing.TB) {
	l.mu.Lock()
	procs := make([]*Proc, 0, len(l.procs))
	for p := range l.procs {
		procs = append(procs, p)
	}
	l.mu.Unlock()
	for _, p := range procs {
		t.Logf("natlab: %s stdout:\n%s\nstderr:\n%s", p, p.Stdout(), p.Stderr())
	}
}

// Topology returns the topology the lab was built from.
func (l *Lab) Topology() Topology { return l.topo }

// Prefix is the per-run namespace name prefix, "ppl<pid>-<random>-".
func (l *Lab) Prefix() string { return l.prefix }

// Node returns the named host, router or InternetName; nil if unknown.
func (l *Lab) Node(name string) *Node { return l.nodes[name] }

// Host returns the named host. It panics on an unknown name or a router name:
// a typo in a test should fail loudly.
func (l *Lab) Host(name string) *Node { return l.mustNode(name, nodeHost) }

// Router returns the named router. It panics on an unknown name.
func (l *Lab) Router(name string) *Node { return l.mustNode(name, nodeRouter) }

// Internet returns the internet's node (its router owns 203.0.113.1).
func (l *Lab) Internet() *Node { return l.nodes[InternetName] }

// Nodes returns every node, internet first, then routers top-down, then hosts.
func (l *Lab) Nodes() []*Node { return append([]*Node(nil), l.order...) }

func (l *Lab) mustNode(name string, k nodeKind) *Node {
	n := l.nodes[name]
	if n == nil || n.p.kind != k {
		panic(fmt.Sprintf("natlab: lab %q has no %s named %q", l.topo.Name, map[nodeKind]string{nodeHost: "host", nodeRouter: "router"}[k], name))
	}
	return n
}

// PublicIP returns the IPv4 address the internet sees for node: the outer
// address of the outermost NAT above it, or its own address.
func (l *Lab) PublicIP(name string) netip.Addr {
	n := l.nodes[name]
	if n == nil {
		return netip.Addr{}
	}
	return n.PublicIP()
}

// Link returns the WAN link on the named node's uplink, or nil.
func (l *Lab) Link(name string) *Link {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.links[name]
}

// FlushConntrack empties the conntrack table of the named router (all
// mappings and firewall state are lost, as in a NAT reboot or rebinding).
func (l *Lab) FlushConntrack(ctx context.Context, router string) error {
	return l.Router(router).FlushConntrack(ctx)
}

// SetConntrackTCPEstablishedTimeout sets how long the named router keeps an
// idle established TCP mapping (whole seconds, at least 1).
func (l *Lab) SetConntrackTCPEstablishedTimeout(ctx context.Context, router string, d time.Duration) error {
	return l.Router(router).SetConntrackTCPEstablishedTimeout(ctx, d)
}

func (l *Lab) track(p *Proc) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("natlab: lab closed")
	}
	l.procs[p] = struct{}{}
	return nil
}

// errNotLinux is why the lab cannot run off Linux (sys_other.go).
var errNotLinux = fmt.Errorf("natlab: needs Linux network namespaces, this is %s: %w", runtime.GOOS, errors.ErrUnsupported)

// Available reports why the lab cannot run here (not root, tools missing), or nil.
func Available() error {
	if runtime.GOOS != "linux" {
		return errNotLinux
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("natlab: needs root (euid %d); run the lab tests as root", os.Geteuid())
	}
	var missing []string
	for _, tool := range []string{"ip", "nft", "conntrack"} {
		if _, err := lookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("natlab: %s not found in PATH; apt-get install iproute2 nftables conntrack", strings.Join(missing, ", "))
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("natlab: no /dev/net/tun (needed by WAN links): %w", err)
	}
	return nil
}

// EnvRequired is the environment variable that turns lab skips into failures
// when set to "required".
const EnvRequired = "PEERPORT_LAB"

// Require skips the test with one line saying why when the lab cannot run
// here, or fails it when PEERPORT_LAB=required.
func Require(t testing.TB) {
	t.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv(EnvRequired) == "required" {
		t.Fatalf("%v (%s=required)", err, EnvRequired)
	}
	t.Skipf("%v", err)
}

// CleanStale removes lab namespaces whose creating process is dead, killing
// whatever still runs inside them. Namespaces of live processes (other test
// binaries, a running "natlab up") are left alone.
func CleanStale(ctx context.Context) error {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("natlab: list namespaces: %w", err)
	}
	var errs []error
	for _, e := range ents {
		m := staleRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pidAlive(pid) {
			continue
		}
		if err := deleteNetns(ctx, e.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
			// Another process may have removed it at the same moment.
			if _, serr := os.Stat(netnsDir + "/" + e.Name()); serr == nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("natlab: remove stale namespaces: %w", err)
	}
	return nil
}
