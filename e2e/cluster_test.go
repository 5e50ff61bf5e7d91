package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/secure"
)

// clusterRehome is what issue 17 asks of a node's death: its agents are on
// another node, their shares registered, and existing tickets working again
// within this long of the SIGKILL.
const clusterRehome = 10 * time.Second

// clusterNode is one broker node running as a process.
type clusterNode struct {
	name    string
	proc    *proc
	url     string // the URL it printed, naming only itself
	addr    string // its control address, host:port
	metrics string // its /metrics listener, host:port
}

var clusterMetricsRE = regexp.MustCompile(`metrics listening.*listen="?([0-9.]+:[0-9]+)`)

// clusterStartNATS runs a real nats-server on a free loopback port and
// returns its client URL; it is stopped at cleanup.
func clusterStartNATS(t *testing.T) (*proc, string) {
	t.Helper()
	port := strconv.Itoa(freePort(t))
	p := start(t, "nats-server", bins.nats, "-a", "127.0.0.1", "-p", port)
	eventually(t, 30*time.Second, "nats-server ready", func() bool {
		return strings.Contains(p.stderr.String(), "Server is ready")
	})
	return p, "nats://127.0.0.1:" + port
}

// clusterStartNode runs a broker node of the cluster on natsURL with its
// state in dir, and waits for its URL and its metrics listener.
func clusterStartNode(t *testing.T, natsURL, name, dir string) *clusterNode {
	t.Helper()
	n := &clusterNode{name: name}
	n.proc = start(t, name, bins.broker, "--cluster", natsURL, "--cluster-node", name,
		"--listen", "127.0.0.1:0", "--public-addr", "127.0.0.1", "--state-dir", dir,
		"--metrics-listen", "127.0.0.1:0", "--no-turn", "--no-stun")
	n.url = n.proc.firstLine()
	u, err := secure.ParseBrokerURL(n.url)
	if err != nil {
		t.Fatalf("%s printed %q: %v", name, n.url, err)
	}
	n.addr = u.Addr
	eventually(t, 30*time.Second, name+"'s metrics listener", func() bool {
		m := clusterMetricsRE.FindStringSubmatch(n.proc.stderr.String())
		if m != nil {
			n.metrics = m[1]
		}
		return m != nil
	})
	return n
}

// clusterMetric is one sample of a node's metrics, name with its labels as
// Prometheus prints them; 0 when the series is absent, or the node is not
// answering (see ok).
func clusterMetric(n *clusterNode, name string) (v float64, ok bool) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + n.metrics + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if s, found := strings.CutPrefix(sc.Text(), name+" "); found {
			v, err := strconv.ParseFloat(s, 64)
			return v, err == nil
		}
	}
	return 0, sc.Err() == nil
}

// clusterURL is a broker URL naming the nodes' addresses in this order.
func clusterURL(t *testing.T, nodes ...*clusterNode) string {
	t.Helper()
	u, err := secure.ParseBrokerURL(nodes[0].url)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.addr)
	}
	u.Addr = strings.Join(addrs, ",")
	return u.String()
}

// clusterLogin logs a new state dir in with url.
func clusterLogin(t *testing.T, url string) string {
	t.Helper()
	dir := t.TempDir()
	if _, stderr, err := run(t, bins.agent, "--state-dir", dir, "login", url); err != nil {
		t.Fatalf("login %s: %v\n%s", url, err, stderr)
	}
	return dir
}

// clusterStream keeps one forwarded connection busy: chunk after chunk of
// random bytes, each read back and compared, until stop. It records the
// first error, the rounds done and the longest round.
type clusterStream struct {
	c    net.Conn
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	rounds  int
	bytes   int64
	longest time.Duration
	last    time.Time
	err     error
}

func clusterStartStream(t *testing.T, addr string) *clusterStream {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := &clusterStream{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	t.Cleanup(s.end)
	return s
}

func (s *clusterStream) run() {
	defer close(s.done)
	out, in := make([]byte, 32<<10), make([]byte, 32<<10)
	for {
		select {
		case <-s.stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		began := time.Now()
		s.c.SetDeadline(began.Add(15 * time.Second))
		rand.Read(out)
		errc := make(chan error, 1)
		go func() { _, err := s.c.Write(out); errc <- err }()
		_, err := io.ReadFull(s.c, in)
		if werr := <-errc; err == nil {
			err = werr
		}
		if err == nil && !bytes.Equal(in, out) {
			err = errors.New("the echo differs from what was sent")
		}
		s.mu.Lock()
		if err != nil {
			s.err = fmt.Errorf("round %d: %w", s.rounds+1, err)
			s.mu.Unlock()
			return
		}
		s.rounds++
		s.bytes += int64(len(out))
		s.longest = max(s.longest, time.Since(began))
		s.last = time.Now()
		s.mu.Unlock()
	}
}

func (s *clusterStream) end() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.c.Close()
}

// snapshot returns the rounds done, bytes echoed, the longest round, the
// last round's end and the error that ended the stream, if any.
func (s *clusterStream) snapshot() (int, int64, time.Duration, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rounds, s.bytes, s.longest, s.last, s.err
}

// clusterResult is how long after the kill a new connect first echoed
// data through the share, or why it did not.
type clusterResult struct {
	took time.Duration
	err  error
}

// clusterConnect runs `agent connect` in the background and reports, on
// the returned channel, how long after since it first echoed data through
// the share, or why it did not within d of since.
func clusterConnect(t *testing.T, name, dir, ticket string, since time.Time, d time.Duration) (*proc, <-chan clusterResult) {
	t.Helper()
	p := start(t, name, bins.agent, "--state-dir", dir, "connect", ticket, "--listen", "127.0.0.1:0", "--timeout", "0")
	res := make(chan clusterResult, 1)
	fail := func(format string, a ...any) { res <- clusterResult{err: fmt.Errorf(format, a...)} }
	go func() {
		deadline := since.Add(d)
		var addr string
		select {
		case l, ok := <-p.lines:
			if !ok {
				fail("%s exited: %v", name, p.err)
				return
			}
			addr = l
		case <-time.After(time.Until(deadline)):
			fail("%s not listening within %v", name, d)
			return
		}
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				if err = tryEcho(c, 64<<10, 5*time.Second); err == nil {
					res <- clusterResult{took: time.Since(since)}
					return
				}
			}
			if time.Now().After(deadline) {
				fail("%s: no echo through %s within %v: %v", name, addr, d, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return p, res
}

// TestClusterNodeKilled: three broker nodes as processes over a real
// nats-server; the sharer on node 1, a connector on node 3 reaches it (the
// introduction crosses nodes) over a direct path. Node 1 is SIGKILLed: the
// open forwarded connection keeps echoing (the direct peer session never
// passes a broker), the sharer re-registers on another node, and new
// connects with the same ticket reach the share again, all within 10 s of
// the kill (issue 17). Nothing is left running.
func TestClusterNodeKilled(t *testing.T) {
	t.Parallel()
	var pids []int
	track := func(p *proc) *proc { pids = append(pids, p.cmd.Process.Pid); return p }
	t.Cleanup(func() { // after every process's own cleanup has stopped it
		for _, pid := range pids {
			if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
				t.Errorf("process %d still exists after the test", pid)
			}
		}
	})

	nats, natsURL := clusterStartNATS(t)
	track(nats)
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	var nodes []*clusterNode
	for i, dir := range dirs {
		if i > 0 { // the cluster's identity, from node 1's first start
			for _, f := range []string{"broker.key", "token", "turn.secret"} {
				b, err := os.ReadFile(filepath.Join(dirs[0], f))
				if err != nil {
					t.Fatalf("node 1's state: %v", err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		n := clusterStartNode(t, natsURL, "n"+strconv.Itoa(i+1), dir)
		track(n.proc)
		nodes = append(nodes, n)
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		eventually(t, 30*time.Second, n.name+" in a cluster of 3", func() bool {
			c, _ := clusterMetric(n, "peerport_broker_cluster_connected")
			k, _ := clusterMetric(n, "peerport_broker_cluster_nodes")
			return c == 1 && k == 3
		})
	}

	// The sharer's URL names node 1 first; the connector's, node 3 first.
	// The ticket names the sharer's order, and the connector uses its
	// logged-in session for it all the same (the same cluster), on node 3.
	sharerDir := clusterLogin(t, clusterURL(t, n1, n2, n3))
	connDir := clusterLogin(t, clusterURL(t, n3, n1, n2))
	sharer := track(start(t, "sharer", bins.agent, "--state-dir", sharerDir, "share", echoServer(t)))
	ticket := sharer.firstLine()
	tk, err := secure.ParseTicket(ticket)
	if err != nil {
		t.Fatalf("sharer printed %q: %v", ticket, err)
	}
	if want := n1.addr + "," + n2.addr + "," + n3.addr; tk.Broker != want {
		t.Fatalf("ticket names brokers %s, want the sharer's URL's %s", tk.Broker, want)
	}
	eventually(t, 20*time.Second, "the sharer's session on node 1", func() bool {
		st := status(t, sharerDir)
		return len(st.Agents) == 1 && len(st.Agents[0].Brokers) == 1 &&
			st.Agents[0].Brokers[0].Connected && st.Agents[0].Brokers[0].Addr == n1.addr
	})
	remote := `peerport_broker_introductions_total{where="remote"}`
	remoteBefore, _ := clusterMetric(n3, remote)
	conn := track(start(t, "connector", bins.agent, "--state-dir", connDir, "connect", ticket, "--listen", "127.0.0.1:0"))
	addr := conn.firstLine()
	echoCheck(t, addr, 1<<20)
	cst := status(t, connDir)
	if len(cst.Agents) != 1 || len(cst.Agents[0].Brokers) != 1 || cst.Agents[0].Brokers[0].Addr != n3.addr {
		t.Fatalf("connector's brokers %+v, want one session, on node 3 (%s)", cst.Agents, n3.addr)
	}
	if len(cst.Agents[0].Peers) != 1 || cst.Agents[0].Peers[0].Path != "direct" {
		t.Fatalf("connector's peers %+v, want one direct peer session", cst.Agents[0].Peers)
	}
	peer := cst.Agents[0].Peers[0]
	if v, _ := clusterMetric(n3, remote); v <= remoteBefore {
		t.Fatalf("node 3 counted %v remote introductions (%v before): the introduction did not cross nodes", v, remoteBefore)
	}

	stream := clusterStartStream(t, addr)
	eventually(t, 20*time.Second, "the forwarded connection echoing", func() bool {
		n, _, _, _, err := stream.snapshot()
		return n >= 5 || err != nil
	})

	againDir := clusterLogin(t, clusterURL(t, n3, n1, n2)) // for a connect after the kill
	remoteBefore, _ = clusterMetric(n3, remote)
	localBefore, _ := clusterMetric(n3, `peerport_broker_introductions_total{where="local"}`)

	// Node 1 dies without a word.
	if err := syscall.Kill(n1.proc.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	select {
	case <-n1.proc.done:
	case <-time.After(10 * time.Second):
		t.Fatal("node 1 still running 10 s after SIGKILL")
	}
	roundsAtKill, _, _, _, _ := stream.snapshot()

	// New connects with the same ticket, started during the outage: one
	// from a fresh state dir with the ticket exactly as printed (its first
	// address is the dead node's), one logged in on node 3.
	p, fresh := clusterConnect(t, "connector, fresh", t.TempDir(), ticket, killed, 3*clusterRehome)
	track(p)
	p, again := clusterConnect(t, "connector, node 3", againDir, ticket, killed, 3*clusterRehome)
	track(p)

	// The sharer is on another node, and that node holds its share: the
	// nodes' metrics, read over HTTP, time it closely (an `agent status`
	// takes a process start each).
	var rehomed time.Duration
	var home *clusterNode
	eventually(t, 3*clusterRehome, "the sharer's share registered on another node", func() bool {
		for _, n := range []*clusterNode{n2, n3} {
			if v, _ := clusterMetric(n, "peerport_broker_shares"); v >= 1 {
				rehomed, home = time.Since(killed), n
				return true
			}
		}
		return false
	})
	if b := status(t, sharerDir).Agents[0].Brokers; len(b) != 1 || !b[0].Connected || b[0].Addr != home.addr {
		t.Fatalf("the sharer's brokers %+v, want one session, on %s (%s), which holds its share", b, home.name, home.addr)
	}
	t.Logf("node 1 killed: the sharer re-registered on %s %v later", home.name, rehomed.Round(time.Millisecond))

	for _, r := range []struct {
		name string
		c    <-chan clusterResult
	}{{"fresh state dir, the ticket as printed", fresh}, {"logged in on node 3", again}} {
		res := <-r.c
		if res.err != nil {
			t.Errorf("new connect (%s): %v", r.name, res.err)
			continue
		}
		t.Logf("new connect (%s): data echoed %v after the kill", r.name, res.took.Round(time.Millisecond))
		if res.took > clusterRehome {
			t.Errorf("new connect (%s) took %v from the kill, want at most %v", r.name, res.took, clusterRehome)
		}
	}
	// The sharer moved to n2 or n3 (its own failover order): node 3
	// introduced the connect logged in there across to n2, or locally.
	where, before := `peerport_broker_introductions_total{where="local"}`, localBefore
	if home == n2 {
		where, before = remote, remoteBefore
	}
	if v, _ := clusterMetric(n3, where); v <= before {
		t.Errorf("node 3 counted no %s after the kill (%v), with the sharer on %s", where, v, home.name)
	}
	if rehomed > clusterRehome {
		t.Errorf("the sharer took %v from the kill to re-register, want at most %v", rehomed, clusterRehome)
	}

	// The forwarded connection opened before the kill kept echoing, on the
	// same peer session, never paused.
	time.Sleep(500 * time.Millisecond)
	rounds, echoed, longest, last, err := stream.snapshot()
	if err != nil {
		t.Fatalf("the forwarded connection broke after the kill: %v", err)
	}
	if rounds-roundsAtKill < 10 || time.Since(last) > 5*time.Second {
		t.Fatalf("the forwarded connection stalled: %d rounds since the kill, last %v ago", rounds-roundsAtKill, time.Since(last))
	}
	t.Logf("the connection open across the kill: %d rounds, %d KiB echoed intact, %d after the kill, longest round %v",
		rounds, echoed>>10, rounds-roundsAtKill, longest.Round(time.Millisecond))
	stream.end()
	cst = status(t, connDir)
	if len(cst.Agents) != 1 || len(cst.Agents[0].Peers) != 1 {
		t.Fatalf("connector's peers after the kill: %+v", cst.Agents)
	}
	if p := cst.Agents[0].Peers[0]; !p.Since.Equal(peer.Since) || p.Path != "direct" || p.PathLosses != peer.PathLosses || p.Resumes != peer.Resumes {
		t.Errorf("the direct peer session changed across node 1's death: before %+v\nafter %+v", peer, p)
	}
	if b := cst.Agents[0].Brokers; len(b) != 1 || b[0].Addr != n3.addr || !b[0].Connected || b[0].Reconnects != 0 {
		t.Errorf("the connector's session on node 3 was disturbed by node 1's death: %+v", b)
	}
}
