package main

// The cluster part (issue 17, docs/cluster.md "Sizing"): the broker as three
// nodes over a real nats-server, beside one broker alone, in the same run,
// with the built binaries on 127.0.0.1. It has its own brokers, not the
// loopback world's, because it kills one.
//
//   - introductions per second and the p50/p99 of one Connect to its
//     ConnectReply: one broker alone (the baseline); three nodes with the
//     guests on the sharers' node; three nodes with every introduction
//     crossing nodes over NATS (sharers on node 1, guests on node 3); and,
//     one at a time, what the NATS hop adds beside a bare NATS request;
//   - memory per agent on a clustered node beside the lone broker;
//   - NATS traffic, from nats-server's /varz: messages and bytes per
//     introduction, per minute with the agents idle, and its RSS with the
//     agents' subscriptions;
//   - agents re-homed per second after node 1 is SIGKILLed: each bench
//     client logs in to node 2 again at once (no backoff) when its
//     connection closes, beside the same agents' first registration.
//
// Every broker here, the lone one too, runs with the same broker.yaml:
// admission and rate limits raised (the bench's agents all come from
// 127.0.0.1), no TURN and no STUN (three nodes on one host would contend
// for their ports, and no introduction here asks for a relay).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

const (
	clusterPart = "cluster"
	// clusterBudget bounds the whole part.
	clusterBudget = 20 * time.Minute
	// clusterGuests keep one Connect in flight each, as in part broker.
	clusterGuests = 32
	// clusterSeq is how long one guest alone connects, one at a time.
	clusterSeq = 2 * time.Second
	// clusterIdle is each window over which idle NATS traffic is counted:
	// two of the nodes' 10 s beats at least.
	clusterIdle = 20 * time.Second
	// clusterSample is how many re-homed agents a guest on node 3 must
	// reach before the re-home counts as done.
	clusterSample = 100
	// clusterRehomeDials bounds the bench's own dials in flight after the
	// kill (its CPU is the brokers' too).
	clusterRehomeDials = 256
	// clusterRehomeWait bounds the re-home, from the kill.
	clusterRehomeWait = 3 * time.Minute
	// clusterWarm is a warm-up of introductions before each load, not
	// counted.
	clusterWarm = 500 * time.Millisecond
	// clusterHops is how many bare NATS requests the NATS hop baseline
	// times.
	clusterHops = 2000
)

// clusterYAML is every broker's broker.yaml in this part.
const clusterYAML = benchLimitsYAML + `turn:
  off: true
stun:
  off: true
log:
  level: warn
`

// benchLimitsYAML lifts the broker's per-address limits: every bench
// client comes from 127.0.0.1, which the defaults (20 accepts a second per
// address) would take for a flood.
const benchLimitsYAML = `limits:
  max_preauth_per_ip: 1000000
  accepts_per_second_per_ip: 1000000
  accept_burst_per_ip: 1000000
  logins_per_minute_per_ip: 1000000
  logins_per_minute_per_agent: 1000000
  registers_per_minute_per_ip: 1000000
  registers_per_minute_per_agent: 1000000
  connects_per_minute_per_ip: 1000000
  connects_per_minute_per_agent: 1000000
`

// cbroker is one broker process of this part.
type cbroker struct {
	p       *proc
	url     secure.BrokerURL
	dir     string
	metrics string // host:port of /metrics and /healthz
}

type clusterRun struct {
	ctx  context.Context
	w    *world // owns the processes
	bin  binaries
	nats string // the nats-server binary
	cfg  string // broker.yaml
	n    int
	r    *Report
	// guests are the identities of the guests of every introduction
	// phase: the same pairs come back in each (see run).
	guests []*secure.Identity
}

func clusterBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	ctx, cancel := context.WithTimeout(ctx, clusterBudget)
	defer cancel()
	w := &world{ctx: ctx, bin: bin, tmp: filepath.Join(tmp, "cluster"), o: o}
	defer w.stopAll()
	c := &clusterRun{ctx: ctx, w: w, bin: bin, n: o.clusterAgents, r: r}
	c.cfg = filepath.Join(w.dir("etc"), "broker.yaml")
	if err := os.WriteFile(c.cfg, []byte(clusterYAML), 0o600); err != nil {
		return err
	}
	c.nats = filepath.Join(w.dir("bin"), "nats-server")
	fmt.Fprintln(os.Stderr, "  building nats-server...")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", c.nats, "github.com/nats-io/nats-server/v2")
	if root, err := moduleRoot(); err == nil {
		cmd.Dir = root
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build nats-server: %w", err)
	}
	if err := c.run(); err != nil {
		return err
	}
	// The design not taken, measured beside the one taken (bench/clusterstore.go).
	return clusterStore(ctx, c.nats, c.n, r)
}

// startBroker starts a broker with state in dir; cluster, when not empty,
// joins it to the cluster as node.
func (c *clusterRun) startBroker(name, dir, cluster string) (*cbroker, error) {
	mport, err := freePort()
	if err != nil {
		return nil, err
	}
	b := &cbroker{dir: dir, metrics: "127.0.0.1:" + strconv.Itoa(mport)}
	args := []string{"-c", c.cfg, "--listen", "127.0.0.1:0", "--public-addr", "127.0.0.1", "--state-dir", dir,
		"--metrics-listen", b.metrics}
	if cluster != "" {
		args = append(args, "--cluster", cluster, "--cluster-node", name)
	}
	if b.p, err = c.w.start(name, nil, c.bin.broker, args...); err != nil {
		return nil, err
	}
	line, err := b.p.firstLine(c.ctx)
	if err != nil {
		return nil, err
	}
	if b.url, err = secure.ParseBrokerURL(line); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

func (b *cbroker) rss() (int64, error) { return rss(b.p.pid()) }

// httpGet is the body of an HTTP GET of url, within 5 s; a status other
// than 200 is an error.
func httpGet(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %s", url, res.Status, strings.TrimSpace(string(body)))
	}
	return body, err
}

// waitNodes waits until b's /healthz says it sees n nodes.
func (c *clusterRun) waitNodes(b *cbroker, n int) error {
	want := fmt.Sprintf("connected, %d nodes", n)
	dl := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(dl) {
		body, err := httpGet(c.ctx, "http://"+b.metrics+"/healthz")
		if last = string(body); err == nil && strings.Contains(last, want) {
			return nil
		}
		if err != nil {
			last = err.Error()
		}
		select {
		case <-c.ctx.Done():
			return c.ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: /healthz does not say %q within 30s: %s", b.p.name, want, strings.TrimSpace(last))
}

// metric is the value of the sample named line (name and labels) in b's
// /metrics; -1 when unread.
func (c *clusterRun) metric(b *cbroker, line string) float64 {
	body, err := httpGet(c.ctx, "http://"+b.metrics+"/metrics")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, line+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func (c *clusterRun) remoteIntros(b *cbroker) float64 {
	return c.metric(b, `peerport_broker_introductions_total{where="remote"}`)
}

// natsServer is a nats-server child process on loopback ports.
type natsServer struct {
	p        *proc
	url, mon string // the client URL; host:port of the monitoring endpoint
	dir      string // JetStream's store, removed by stop; "" without JetStream
}

// startNATS starts the nats-server binary bin through start (a world's,
// which then stops it, or startProc) and waits until it serves; with js,
// JetStream is on, its store in a fresh directory of its own.
func startNATS(ctx context.Context, start func(name string, env []string, bin string, args ...string) (*proc, error),
	bin string, js bool) (*natsServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	mport, err := freePort()
	if err != nil {
		return nil, err
	}
	ns := &natsServer{url: "nats://127.0.0.1:" + strconv.Itoa(port), mon: "127.0.0.1:" + strconv.Itoa(mport)}
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-m", strconv.Itoa(mport)}
	ready := "/healthz"
	if js {
		if ns.dir, err = os.MkdirTemp("", "peerport-nats-js-"); err != nil {
			return nil, err
		}
		args = append(args, "-js", "-sd", ns.dir, "-n", "peerport-bench")
		ready += "?js-enabled-only=true"
	}
	if ns.p, err = start("nats-server", nil, bin, args...); err != nil {
		if ns.dir != "" {
			os.RemoveAll(ns.dir)
		}
		return nil, err
	}
	dl := time.Now().Add(30 * time.Second)
	for {
		_, err := httpGet(ctx, "http://"+ns.mon+ready)
		if err == nil {
			return ns, nil
		}
		if time.Now().After(dl) {
			err = fmt.Errorf("nats-server not up in 30s: %v\n%s", err, ns.p.stderr.String())
		} else {
			select {
			case <-ns.p.done:
				err = fmt.Errorf("nats-server exited:\n%s", ns.p.stderr.String())
			case <-ctx.Done():
				err = ctx.Err()
			case <-time.After(20 * time.Millisecond):
				continue
			}
		}
		ns.stop()
		return nil, err
	}
}

func (s *natsServer) pid() int { return s.p.pid() }

func (s *natsServer) rss() (int64, error) { return rss(s.pid()) }

// stop stops the server and removes its JetStream store.
func (s *natsServer) stop() {
	s.p.stop()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// varz is what the bench reads of nats-server's /varz.
type varz struct {
	InMsgs        int64         `json:"in_msgs"`
	OutMsgs       int64         `json:"out_msgs"`
	InBytes       int64         `json:"in_bytes"`
	OutBytes      int64         `json:"out_bytes"`
	Subscriptions int64         `json:"subscriptions"`
	at            time.Time     // when read
	window        time.Duration // of a difference of two
}

// minus is the traffic from o to v.
func (v varz) minus(o varz) varz {
	return varz{InMsgs: v.InMsgs - o.InMsgs, OutMsgs: v.OutMsgs - o.OutMsgs, InBytes: v.InBytes - o.InBytes,
		OutBytes: v.OutBytes - o.OutBytes, Subscriptions: v.Subscriptions - o.Subscriptions, window: v.at.Sub(o.at)}
}

func (s *natsServer) varz(ctx context.Context) (varz, error) {
	var v varz
	body, err := httpGet(ctx, "http://"+s.mon+"/varz")
	if err != nil {
		return v, fmt.Errorf("nats-server /varz: %w", err)
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return v, fmt.Errorf("nats-server /varz: %w", err)
	}
	v.at = time.Now()
	return v, nil
}

// over is the server's traffic over do: /varz after it minus before it.
func (s *natsServer) over(ctx context.Context, do func() error) (varz, error) {
	v0, err := s.varz(ctx)
	if err != nil {
		return v0, err
	}
	if err := do(); err != nil {
		return varz{}, err
	}
	v1, err := s.varz(ctx)
	return v1.minus(v0), err
}

// idleWindow counts NATS traffic over clusterIdle with nothing asked of the
// brokers.
func (c *clusterRun) idleWindow(ns *natsServer) (varz, error) {
	return ns.over(c.ctx, func() error {
		select {
		case <-c.ctx.Done():
			return c.ctx.Err()
		case <-time.After(clusterIdle):
			return nil
		}
	})
}

func perMin(n int64, v varz) float64 { return float64(n) / v.window.Minutes() }

func (c *clusterRun) fig(f Figure) {
	f.Part = clusterPart
	c.r.add(f)
}

func (c *clusterRun) run() error {
	n := c.n
	load0 := loadAvg()
	// The same guests, in every phase, reach the same sharers in the same
	// order: a node remembers the pairs it introduced (broker/presence.go,
	// up to 65536, and past that it scans them all on every new pair), so
	// new guests in each phase would make a later phase on the same node
	// pay for the earlier ones.
	var err error
	if c.guests, err = newIdentities(clusterGuests); err != nil {
		return err
	}
	load := time.Duration(c.w.o.introSecs) * time.Second

	// One broker alone: the baselines.
	fmt.Fprintf(os.Stderr, "  one broker alone: %d agents\n", n)
	lone, err := c.startBroker("broker-alone", c.w.dir("alone"), "")
	if err != nil {
		return err
	}
	loneRSS0, err := lone.rss()
	if err != nil {
		return err
	}
	clients, loneReg, err := registerMany(c.ctx, lone.url, n)
	if err != nil {
		return fmt.Errorf("alone: register: %w", err)
	}
	time.Sleep(time.Second)
	loneRSS1, err := lone.rss()
	if err != nil {
		closeClients(clients)
		return err
	}
	// As long idle as node-1 will be (its idle window) before its load.
	select {
	case <-c.ctx.Done():
		closeClients(clients)
		return c.ctx.Err()
	case <-time.After(clusterIdle):
	}
	loneLoad, err := c.load(lone.url, clients, false, load)
	if err != nil {
		closeClients(clients)
		return fmt.Errorf("alone: %w", err)
	}
	loneSeq, err := c.load(lone.url, clients, true, clusterSeq)
	closeClients(clients)
	if err != nil {
		return fmt.Errorf("alone: %w", err)
	}
	lone.p.stop()

	// Three nodes over one nats-server, sharing node 1's identity.
	ns, err := startNATS(c.ctx, c.w.start, c.nats, false)
	if err != nil {
		return err
	}
	natsRSS0, err := ns.rss()
	if err != nil {
		return err
	}
	var nodes [3]*cbroker
	for i := range nodes {
		name := fmt.Sprintf("node-%d", i+1)
		dir := c.w.dir(name)
		if i > 0 {
			for _, f := range []string{"broker.key", "token", "turn.secret"} {
				b, err := os.ReadFile(filepath.Join(nodes[0].dir, f))
				if err != nil {
					return fmt.Errorf("copy node-1's identity: %w", err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
					return err
				}
			}
		}
		if nodes[i], err = c.startBroker(name, dir, ns.url); err != nil {
			return err
		}
	}
	for _, b := range nodes {
		if err := c.waitNodes(b, len(nodes)); err != nil {
			return err
		}
	}
	if nodes[0].url.Token != nodes[2].url.Token || nodes[0].url.Pin != nodes[2].url.Pin {
		return errors.New("node-3's URL names another token or pin than node-1's")
	}
	natsRSS1, err := ns.rss()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  three nodes: %.0fs idle, no agents\n", clusterIdle.Seconds())
	idle0, err := c.idleWindow(ns)
	if err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "  three nodes: %d agents on node-1\n", n)
	n1 := nodes[0]
	n1RSS0, err := n1.rss()
	if err != nil {
		return err
	}
	vSubs0, err := ns.varz(c.ctx)
	if err != nil {
		return err
	}
	clients, clReg, err := registerMany(c.ctx, n1.url, n)
	if err != nil {
		return fmt.Errorf("node-1: register: %w", err)
	}
	defer func() { closeClients(clients) }()
	time.Sleep(time.Second)
	n1RSS1, err := n1.rss()
	if err != nil {
		return err
	}
	natsRSS2, err := ns.rss()
	if err != nil {
		return err
	}
	vSubs1, err := ns.varz(c.ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  three nodes: %.0fs idle, %d agents\n", clusterIdle.Seconds(), n)
	idle1, err := c.idleWindow(ns)
	if err != nil {
		return err
	}

	fmt.Fprintln(os.Stderr, "  three nodes: introductions on node-1, then from node-3")
	localLoad, err := c.load(n1.url, clients, false, load)
	if err != nil {
		return fmt.Errorf("node-1 to node-1: %w", err)
	}
	localSeq, err := c.load(n1.url, clients, true, clusterSeq)
	if err != nil {
		return fmt.Errorf("node-1 to node-1: %w", err)
	}
	if _, err := introLoadAs(c.ctx, nodes[2].url, clients, c.guests, clusterWarm); err != nil {
		return fmt.Errorf("node-3 to node-1: %w", err)
	}
	remote0 := c.remoteIntros(nodes[2])
	var crossLoad introStats
	crossV, err := ns.over(c.ctx, func() (err error) {
		if crossLoad, err = introLoadAs(c.ctx, nodes[2].url, clients, c.guests, load); err != nil { // warmed up above
			return fmt.Errorf("node-3 to node-1: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	remote := c.remoteIntros(nodes[2]) - remote0
	reqSum0, reqN0 := c.metric(nodes[2], "peerport_broker_cluster_request_seconds_sum"), c.metric(nodes[2], "peerport_broker_cluster_request_seconds_count")
	crossSeq, err := c.load(nodes[2].url, clients, true, clusterSeq)
	if err != nil {
		return fmt.Errorf("node-3 to node-1: %w", err)
	}
	reqSum, reqN := c.metric(nodes[2], "peerport_broker_cluster_request_seconds_sum")-reqSum0, c.metric(nodes[2], "peerport_broker_cluster_request_seconds_count")-reqN0
	intros := float64(crossLoad.ok + crossLoad.failed)

	// The floor: a bare NATS request and reply through the same server,
	// one at a time, of the size of an introduction's request.
	reqSize := int(crossV.InBytes / max(crossV.InMsgs, 1))
	hop, hopV, err := c.natsHops(ns, reqSize)
	if err != nil {
		return err
	}
	ctlBytes, err := introWireBytes(clients[0])
	if err != nil {
		return err
	}

	loneNote := fmt.Sprintf("%d guests, one Connect in flight each, among %d sharers, %ds after a %v warm-up; load average %s at the start of the part, %s here",
		clusterGuests, n, c.w.o.introSecs, clusterWarm, load0, loadAvg())
	loadFig := func(name string, st introStats, where string) {
		c.fig(Figure{Name: "sustained introductions, " + name, Value: st.perSec(), Unit: "/s",
			Baseline: loneLoad.perSec(), BaseName: "one broker alone",
			Note: fmt.Sprintf("%s; %s; %d failed (alone: %d)%s", loneNote, where, st.failed, loneLoad.failed, failNote(st))})
		c.fig(Figure{Name: "introduction p50 under load, " + name, Value: pct(st.lat, 0.50), Unit: "µs",
			Baseline: pct(loneLoad.lat, 0.50), BaseName: "one broker alone"})
		c.fig(Figure{Name: "introduction p99 under load, " + name, Value: pct(st.lat, 0.99), Unit: "µs",
			Baseline: pct(loneLoad.lat, 0.99), BaseName: "one broker alone"})
	}
	loadFig("3 nodes, across nodes", crossLoad, fmt.Sprintf("sharers on node-1, guests on node-3: %.0f of %d introduced by node-1 over NATS", remote, crossLoad.ok))
	loadFig("3 nodes, same node", localLoad, "sharers and guests on node-1")
	c.fig(Figure{Name: "introduction p50 one at a time, across nodes", Value: pct(crossSeq.lat, 0.50), Unit: "µs",
		Baseline: pct(loneSeq.lat, 0.50), BaseName: "one broker alone",
		Note: fmt.Sprintf("one guest, %.0fs each; p99 %.0f µs (alone %.0f µs); 3 nodes same node: p50 %.0f µs, p99 %.0f µs",
			clusterSeq.Seconds(), pct(crossSeq.lat, 0.99), pct(loneSeq.lat, 0.99), pct(localSeq.lat, 0.50), pct(localSeq.lat, 0.99))})
	c.fig(Figure{Name: "latency added by crossing nodes, p50 one at a time", Value: pct(crossSeq.lat, 0.50) - pct(localSeq.lat, 0.50), Unit: "µs",
		Baseline: pct(hop, 0.50), BaseName: "a bare NATS request/reply",
		Note: fmt.Sprintf("across nodes minus same node, of 3 nodes; node-3's requests to node-1 took %.0f µs on average (its cluster_request_seconds, sharer's answer included); "+
			"the baseline: %d requests of %d bytes, one at a time, between two clients of the bench through the same nats-server (p99 %.0f µs)",
			reqSum/max(reqN, 1)*1e6, len(hop), reqSize, pct(hop, 0.99))})

	perAgent := func(v float64) float64 {
		// The windows differ by milliseconds: below a message per
		// window over all agents is none.
		if math.Abs(v*clusterIdle.Minutes()) < 1 {
			return 0
		}
		return v / float64(n)
	}
	subs := vSubs1.Subscriptions - vSubs0.Subscriptions
	agentKiB := func(d int64) float64 { return float64(d) / float64(n) / 1024 }
	c.fig(Figure{Name: "memory per agent, clustered node", Value: agentKiB(n1RSS1 - n1RSS0), Unit: "KiB",
		Baseline: agentKiB(loneRSS1 - loneRSS0), BaseName: "one broker alone",
		Note: fmt.Sprintf("RSS delta / %d registered agents; node-1 %.1f -> %.1f MiB, alone %.1f -> %.1f MiB",
			n, mib(n1RSS0), mib(n1RSS1), mib(loneRSS0), mib(loneRSS1))})
	c.fig(Figure{Name: "registrations, clustered node", Value: float64(n) / clReg.Seconds(), Unit: "/s",
		Baseline: float64(n) / loneReg.Seconds(), BaseName: "one broker alone",
		Note: "TLS handshake, Hello and Register each, 32 at a time; clustered: two NATS subscriptions each (agent and share)"})

	c.fig(Figure{Name: "NATS messages per cross-node introduction", Value: float64(crossV.InMsgs) / intros, Unit: "msgs",
		Baseline: float64(hopV.InMsgs) / float64(len(hop)), BaseName: "a bare NATS request/reply",
		Note: fmt.Sprintf("published into nats-server (in_msgs) over the cross-node load; delivered (out_msgs): %.2f per introduction",
			float64(crossV.OutMsgs)/intros)})
	c.fig(Figure{Name: "NATS bytes per cross-node introduction", Value: float64(crossV.InBytes) / intros, Unit: "B",
		Baseline: float64(ctlBytes), BaseName: "Connect+ConnectReply on the control channel",
		Note: fmt.Sprintf("published (in_bytes), sealed JSON request and reply; delivered (out_bytes): %.0f B per introduction; baseline: the proto encoding, before TLS",
			float64(crossV.OutBytes)/intros)})
	c.fig(Figure{Name: fmt.Sprintf("NATS messages per minute, idle, %d agents", n), Value: perMin(idle1.InMsgs, idle1), Unit: "msgs/min",
		Baseline: perMin(idle0.InMsgs, idle0), BaseName: "3 nodes idle, no agents",
		Note: fmt.Sprintf("in_msgs over %.0fs; per idle agent per minute: %.4f msgs, %.2f B (in_bytes); the 3 nodes alone (their beats): %.0f B/min",
			idle1.window.Seconds(), perAgent(perMin(idle1.InMsgs, idle1)-perMin(idle0.InMsgs, idle0)),
			perAgent(perMin(idle1.InBytes, idle1)-perMin(idle0.InBytes, idle0)), perMin(idle0.InBytes, idle0))})
	c.fig(Figure{Name: fmt.Sprintf("nats-server RSS, %d agents' subscriptions", n), Value: mib(natsRSS2), Unit: "MiB",
		Baseline: mib(natsRSS1), BaseName: "3 nodes, no agents",
		Note: fmt.Sprintf("%d subscriptions added, %.2f KiB each; nats-server before the nodes: %.1f MiB", subs,
			float64(natsRSS2-natsRSS1)/float64(max(subs, 1))/1024, mib(natsRSS0))})

	return c.rehome(nodes, clients, clReg)
}

// load runs the part's guests at u for d after a warm-up of clusterWarm,
// not counted; one guest alone, one Connect at a time, when seq.
func (c *clusterRun) load(u secure.BrokerURL, sharers []*ctlClient, seq bool, d time.Duration) (introStats, error) {
	ids := c.guests
	if seq {
		ids = ids[:1]
	} else if _, err := introLoadAs(c.ctx, u, sharers, ids, clusterWarm); err != nil {
		return introStats{}, err
	}
	return introLoadAs(c.ctx, u, sharers, ids, d)
}

// loadAvg is /proc/loadavg's first three fields: this machine is shared.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// failNote names the first failure of st, if any.
func failNote(st introStats) string {
	if st.failed == 0 {
		return ""
	}
	return "; first failure: " + st.firstFail
}

// natsHops times clusterHops bare requests of size bytes through ns, one at
// a time, from one client to another, and returns the /varz delta.
func (c *clusterRun) natsHops(ns *natsServer, size int) ([]time.Duration, varz, error) {
	var v varz
	srv, err := nats.Connect(ns.url, nats.Name("bench responder"))
	if err != nil {
		return nil, v, err
	}
	defer srv.Close()
	cli, err := nats.Connect(ns.url, nats.Name("bench requester"))
	if err != nil {
		return nil, v, err
	}
	defer cli.Close()
	payload := make([]byte, size)
	if _, err := srv.Subscribe("bench.hop", func(m *nats.Msg) { m.Respond(payload) }); err != nil {
		return nil, v, err
	}
	if err := srv.Flush(); err != nil {
		return nil, v, err
	}
	out := make([]time.Duration, 0, clusterHops)
	v, err = ns.over(c.ctx, func() error {
		for range clusterHops {
			t := time.Now()
			if _, err := cli.Request("bench.hop", payload, 5*time.Second); err != nil {
				return fmt.Errorf("nats request: %w", err)
			}
			out = append(out, time.Since(t))
		}
		return nil
	})
	return out, v, err
}

// introWireBytes is the size of one introduction on the control channel to
// a lone broker: the guest's Connect and the ConnectReply it gets, in the
// proto encoding (before TLS), as introLoad sends it to s.
func introWireBytes(s *ctlClient) (int, error) {
	var b countWriter
	if err := proto.Write(&b, &proto.Connect{ID: 1, Sharer: s.id.ID().String(), Share: "s", Admit: s.admit[:]}); err != nil {
		return 0, err
	}
	rep := &proto.ConnectReply{ID: 1, Port: 9, Candidates: []proto.Candidate{{Kind: proto.KindHost, Addr: "127.0.0.1:9"}}}
	if err := proto.Write(&b, rep); err != nil {
		return 0, err
	}
	return int(b), nil
}

type countWriter int

func (w *countWriter) Write(p []byte) (int, error) { *w += countWriter(len(p)); return len(p), nil }

// rehome kills node-1 with the sharers on it; each comes back on node-2 at
// once, as the same agent with the same ticket. Done when all are back and
// a guest on node-3 has reached a sample of them.
func (c *clusterRun) rehome(nodes [3]*cbroker, clients []*ctlClient, firstReg time.Duration) error {
	n := len(clients)
	fmt.Fprintf(os.Stderr, "  SIGKILL node-1: %d agents move to node-2\n", n)
	ctx, cancel := context.WithTimeout(c.ctx, clusterRehomeWait)
	defer cancel()
	u2 := nodes[1].url
	moved := make([]*ctlClient, n)
	defer func() { closeClients(moved) }()
	sem := make(chan struct{}, clusterRehomeDials)
	var retries atomic.Int64
	var lastMu sync.Mutex
	var last time.Time
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for i, old := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-old.done:
			case <-ctx.Done():
				return
			}
			old.conn.Close()
			sem <- struct{}{}
			defer func() { <-sem }()
			for {
				nc, err := dialCtlAs(ctx, u2, u2.Token, old.id)
				if err == nil {
					nc.admit = old.admit
					if err = nc.register(u2); err != nil {
						nc.conn.Close()
					}
				}
				if err == nil {
					moved[i] = nc
					lastMu.Lock()
					last = time.Now()
					lastMu.Unlock()
					return
				}
				if ctx.Err() != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				retries.Add(1)
				time.Sleep(50 * time.Millisecond) // a refused dial would spin
			}
		}()
	}
	p1 := nodes[0].p
	t0 := time.Now()
	if err := p1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-p1.done
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return fmt.Errorf("re-home: %w (%d retries)", *p, retries.Load())
	}
	if ctx.Err() != nil {
		return fmt.Errorf("re-home: not every agent back on node-2 within %v", clusterRehomeWait)
	}
	allBack := last.Sub(t0)

	// A guest on node-3 reaches a sample of them with their old tickets.
	g, err := dialCtl(ctx, nodes[2].url, "")
	if err != nil {
		return err
	}
	defer g.conn.Close()
	g.conn.SetDeadline(time.Now().Add(clusterRehomeWait))
	var fails int
	var failMsg string
	for k, i := range rand.Perm(n)[:min(clusterSample, n)] {
		s := moved[i]
		for {
			if err := proto.Write(g.conn, &proto.Connect{ID: uint64(k + 1), Sharer: s.id.ID().String(), Share: "s", Admit: s.admit[:]}); err != nil {
				return err
			}
			m, err := proto.Read(g.conn, 0)
			if err != nil {
				return fmt.Errorf("re-home: sample introduction: %w", err)
			}
			if rep, ok := m.(*proto.ConnectReply); ok && rep.Code == "" {
				break
			} else if ok && fails == 0 {
				failMsg = rep.Code + ": " + rep.Message
			}
			if fails++; ctx.Err() != nil {
				return fmt.Errorf("re-home: sample introductions failing: %s", failMsg)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	reachable := time.Since(t0)
	n2RSS, _ := nodes[1].rss()
	note := fmt.Sprintf("SIGKILL to the last of %d back on node-2 (TLS handshake, Hello, Register; at once, no backoff, %d dials in flight at most; %d retries); %d failed tries of the sample",
		n, clusterRehomeDials, retries.Load(), fails)
	if failMsg != "" {
		note += " (first: " + failMsg + ")"
	}
	c.fig(Figure{Name: "agents re-homed after SIGKILL of their node", Value: float64(n) / allBack.Seconds(), Unit: "/s",
		Baseline: float64(n) / firstReg.Seconds(), BaseName: "first registration, fresh node", Note: note})
	c.fig(Figure{Name: "SIGKILL to all re-homed and reachable", Value: reachable.Seconds(), Unit: "s",
		Baseline: firstReg.Seconds(), BaseName: "first registration, fresh node",
		Note: fmt.Sprintf("all back on node-2 after %.2fs; then a guest on node-3 introduced to %d of them at random with their old tickets; node-2 RSS then %.1f MiB",
			allBack.Seconds(), min(clusterSample, n), mib(n2RSS))})
	return nil
}
