package main

// The punch part: hole punching in the NAT lab, with the built binaries. A
// broker on the lab's public side, a sharer on host "a" and, for every run,
// a fresh `agent connect` process (its own identity, its own punch) on host
// "b". It needs root and the lab's tools; it is in the default set of parts
// only where the lab can run.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

const (
	punchPart = "punch"
	// punchBudget bounds the whole part, lab builds included.
	punchBudget = 5 * time.Minute
	// punchRunTimeout bounds one connector run: a punch deadline is 10 s.
	punchRunTimeout = 20 * time.Second
	// relayWait bounds how long a symmetric run may take to say "relay needed".
	relayWait = 10 * time.Second
	// punchWANDelay is put on gw-a and on gw-b, one way each, so a-b RTT is
	// 4 × 12.5 ms = 50 ms and each agent's RTT to the broker 25 ms.
	punchWANDelay = 12500 * time.Microsecond
)

// loopbackParts are the parts that need the loopback world (world.up).
var loopbackParts = []string{"throughput", "latency", "connect", "memory", "mux", "broker", frpPart, holPart, memBackPart}

// wantLab says whether a part that runs in the NAT lab (punch, relay, wan)
// runs: when asked for by name (then the lab must be available, else an
// error in one line), or by default where the lab can run.
func wantLab(o options, part string) (bool, error) {
	if o.only != nil && !o.only[part] {
		return false, nil
	}
	err := natlab.Available()
	if o.only == nil {
		return err == nil, nil
	}
	if err != nil {
		return false, fmt.Errorf("part %s needs the NAT lab: %w", part, err)
	}
	return true, nil
}

// wantLoopback says whether any part that needs the loopback world runs.
func (o options) wantLoopback() bool {
	return slices.ContainsFunc(loopbackParts, o.want)
}

// punchLab is one lab with a broker and a sharer of an echo service.
type punchLab struct {
	ctx    context.Context
	bin    binaries
	tmp    string
	name   string
	lab    *natlab.Lab
	url    string // the broker's
	ticket string
	echo   net.Listener
	broker *natlab.Proc
	port   int // the broker's
}

func (l *punchLab) brokerPID() int { return l.broker.Pid() }

func newPunchLab(ctx context.Context, bin binaries, tmp string, topo natlab.Topology) (*punchLab, error) {
	return newPunchLabOn(ctx, bin, tmp, topo, 7000)
}

// newPunchLabOn is newPunchLab with the broker on port.
func newPunchLabOn(ctx context.Context, bin binaries, tmp string, topo natlab.Topology, port int) (*punchLab, error) {
	bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	lab, err := natlab.Build(bctx, topo)
	if err != nil {
		return nil, err
	}
	l := &punchLab{ctx: ctx, bin: bin, tmp: filepath.Join(tmp, "lab-"+topo.Name), name: topo.Name, lab: lab, port: port}
	if err := l.start(); err != nil {
		l.close()
		return nil, fmt.Errorf("lab %s: %w", topo.Name, err)
	}
	return l, nil
}

func (l *punchLab) dir(name string) string {
	d := filepath.Join(l.tmp, name)
	os.MkdirAll(d, 0o700)
	return d
}

func (l *punchLab) start() error {
	br := l.lab.Host("broker")
	bp, err := br.StartCommand(l.ctx, natlab.Command{Path: l.bin.broker, Args: []string{"--state-dir", l.dir("broker"),
		"--public-addr", br.IP().String(), "--listen", ":" + strconv.Itoa(l.port), "--log-level", "warn"}})
	if err != nil {
		return err
	}
	url, err := l.line(bp, 30*time.Second)
	if err != nil {
		return err
	}
	l.url, l.broker = url, bp
	a := l.lab.Host("a")
	sdir := l.dir("sharer")
	if out, err := a.RunCommand(l.ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", sdir, "login", url}}); err != nil {
		return fmt.Errorf("login: %w\n%s", err, out)
	}
	if l.echo, err = a.Listen("tcp", "127.0.0.1:0"); err != nil {
		return err
	}
	go echoServer(l.echo)
	sp, err := a.StartCommand(l.ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", sdir, "share", l.echo.Addr().String()}})
	if err != nil {
		return err
	}
	l.ticket, err = l.line(sp, 30*time.Second)
	return err
}

func (l *punchLab) line(p *natlab.Proc, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(l.ctx, d)
	defer cancel()
	s, err := p.ReadLine(ctx)
	if err != nil {
		return "", fmt.Errorf("%s printed no line: %w\n%s", p, err, p.Stderr())
	}
	return s, nil
}

func (l *punchLab) close() {
	if l.echo != nil {
		l.echo.Close()
	}
	if err := l.lab.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "  natlab close %s: %v\n", l.name, err)
	}
}

// punchRun is one connector run.
type punchRun struct {
	ok        bool
	outcome   string  // "direct", "relay needed", or what went wrong
	punchMS   float64 // the connector's status punch_ms
	upMS      float64 // process start to the peer session's `since`
	firstMS   float64 // process start to the first byte echoed through the tunnel
	rttMS     float64 // the peer session's RTT
	attempts  int
	pair, nat string
}

// peerJSON is the part of `agent status --json` read here (the bench does
// not import the agent package, which others may be editing).
type peerJSON struct {
	Role     string    `json:"role"`
	Path     string    `json:"path"`
	Kind     string    `json:"relay_kind"`
	RTTMS    float64   `json:"rtt_ms"`
	Since    time.Time `json:"since"`
	PunchMS  float64   `json:"punch_ms"`
	Attempts int       `json:"attempts"`
	NAT      string    `json:"nat"`
	PeerNAT  string    `json:"peer_nat"`
	Paused   bool      `json:"paused"`
	Losses   int       `json:"path_losses"`
	Pair     struct {
		Local, Remote, Kind string
	} `json:"candidate_pair"`
	Portmap string `json:"portmap"` // the port mapping a direct path came through
}

// connectOnce runs a new connector on "b" against the sharer, with extra
// arguments, and expects a session on path want (direct or relay, or a
// relay kind: turn or broker), or want "relay needed" in its log.
func (l *punchLab) connectOnce(i int, want string, extra ...string) punchRun {
	ctx, cancel := context.WithTimeout(l.ctx, punchRunTimeout)
	defer cancel()
	dir := l.dir(fmt.Sprintf("conn-%d", i))
	b := l.lab.Host("b")
	t0 := time.Now()
	p, err := b.StartCommand(ctx, natlab.Command{Path: l.bin.agent,
		Args: append([]string{"--state-dir", dir, "connect", l.ticket, "--listen", "127.0.0.1:18080"}, extra...)})
	if err != nil {
		return punchRun{outcome: err.Error()}
	}
	defer p.Stop()
	if want == relayNeeded {
		return waitRelay(ctx, p, t0)
	}
	addr, err := p.ReadLine(ctx)
	if err != nil {
		return punchRun{outcome: "no listen address: " + lastLine(p.Stderr())}
	}
	// With --listen the address comes at once; the first connection waits
	// for the peer session, so this is process start to first byte.
	c, err := b.Dial(ctx, "tcp", addr)
	if err != nil {
		return punchRun{outcome: "dial: " + err.Error()}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(punchRunTimeout))
	buf := []byte{'x'}
	if _, err = c.Write(buf); err == nil {
		_, err = io.ReadFull(c, buf)
	}
	first := time.Since(t0)
	if err != nil {
		return punchRun{outcome: "no echo: " + lastLine(p.Stderr())}
	}
	pj, err := l.connectorPeer(ctx, dir)
	if err != nil {
		return punchRun{outcome: err.Error()}
	}
	got := pj.Path
	if pj.Kind != "" && want != pj.Path {
		got = pj.Kind // want names a relay kind: turn or broker
	}
	r := punchRun{ok: got == want, outcome: got, punchMS: pj.PunchMS, firstMS: ms(first),
		upMS: ms(pj.Since.Sub(t0)), rttMS: pj.RTTMS, attempts: pj.Attempts,
		pair: fmt.Sprintf("%s->%s (%s)", pj.Pair.Local, pj.Pair.Remote, pj.Pair.Kind), nat: pj.NAT + "/" + pj.PeerNAT}
	return r
}

func waitRelay(ctx context.Context, p *natlab.Proc, t0 time.Time) punchRun {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(relayWait)
	for {
		if strings.Contains(p.Stderr(), "relay needed") {
			return punchRun{ok: true, outcome: "relay needed", firstMS: ms(time.Since(t0))}
		}
		select {
		case <-tick.C:
		case <-deadline:
			return punchRun{outcome: fmt.Sprintf("no \"relay needed\" in %v: %s", relayWait, lastLine(p.Stderr()))}
		case <-ctx.Done():
			return punchRun{outcome: ctx.Err().Error()}
		}
	}
}

// connectorPeer reads the connector's one peer from its status. The admin
// socket is a file, so the status command runs outside the namespace.
func (l *punchLab) connectorPeer(ctx context.Context, dir string) (peerJSON, error) {
	out, err := exec.CommandContext(ctx, l.bin.agent, "--state-dir", dir, "status", "--json").Output()
	if err != nil {
		return peerJSON{}, fmt.Errorf("status: %w", err)
	}
	var st struct {
		Agents []struct {
			Peers []peerJSON `json:"peers"`
		} `json:"agents"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return peerJSON{}, fmt.Errorf("status: %w", err)
	}
	if len(st.Agents) != 1 || len(st.Agents[0].Peers) != 1 {
		return peerJSON{}, fmt.Errorf("status: want one agent with one peer: %s", out)
	}
	return st.Agents[0].Peers[0], nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// quantile is the nearest-rank quantile q of v.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(float64(len(s))*q+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// punchCase is one topology of the matrix and its expected outcome.
type punchCase struct {
	name string
	topo natlab.Topology
	want string // direct, relay, or relayNeeded
	args []string
}

// relayNeeded: the run's expected outcome is the connector saying so.
const relayNeeded = "relay needed"

func punchMatrix() []punchCase {
	return []punchCase{
		{"public-public", natlab.Pair(natlab.Public, natlab.Public), pathDirect, nil},
		{"cone-public", natlab.Pair(natlab.BehindCone, natlab.Public), pathDirect, nil},
		{"public-cone", natlab.Pair(natlab.Public, natlab.BehindCone), pathDirect, nil},
		{"cone-cone", natlab.Pair(natlab.BehindCone, natlab.BehindCone), pathDirect, nil},
		{"double-cone", natlab.Pair(natlab.BehindCGN, natlab.BehindCone), pathDirect, nil},
		{"firewall-firewall", natlab.Pair(natlab.BehindFW, natlab.BehindFW), pathDirect, nil},
		{"shared", natlab.Shared(), pathDirect, nil},
		{"ipv6", natlab.IPv6Pair(), pathDirect, nil},
		{"symmetric-cone", natlab.Pair(natlab.BehindSym, natlab.BehindCone), pathRelay, nil},
		{"symmetric-symmetric", natlab.Pair(natlab.BehindSym, natlab.BehindSym), pathRelay, nil},
		{"firewall-symmetric", natlab.Pair(natlab.BehindFW, natlab.BehindSym), pathRelay, nil},
		{"symmetric-cone, --path direct", natlab.Pair(natlab.BehindSym, natlab.BehindCone), relayNeeded, []string{"--path", "direct"}},
	}
}

// punch measures punch_ms on cone-cone at 0 and 50 ms RTT, then the
// success rate over the whole matrix.
func punchBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	ctx, cancel := context.WithTimeout(ctx, punchBudget)
	defer cancel()
	cone := natlab.Pair(natlab.BehindCone, natlab.BehindCone)
	for _, rtt := range []int{0, 50} {
		topo := cone
		if rtt > 0 {
			link := natlab.LinkConfig{Delay: punchWANDelay}
			var err error
			if topo, err = topo.WithLink("gw-a", link); err != nil {
				return err
			}
			if topo, err = topo.WithLink("gw-b", link); err != nil {
				return err
			}
		}
		if err := punchTiming(ctx, bin, tmp, o.punchRuns, rtt, topo, r); err != nil {
			return err
		}
	}
	return punchSuccess(ctx, bin, tmp, o.punchMatrixRuns, r)
}

func punchTiming(ctx context.Context, bin binaries, tmp string, runs, rtt int, topo natlab.Topology, r *Report) error {
	topo.Name = fmt.Sprintf("cone-cone-%dms", rtt)
	l, err := newPunchLab(ctx, bin, tmp, topo)
	if err != nil {
		return err
	}
	defer l.close()
	var punchMS, upMS, firstMS, rtts []float64
	failed := 0
	for i := range runs {
		run := l.connectOnce(i, pathDirect)
		if !run.ok {
			failed++
			fmt.Fprintf(os.Stderr, "  run %d failed: %s\n", i, run.outcome)
			continue
		}
		punchMS, upMS, firstMS, rtts = append(punchMS, run.punchMS), append(upMS, run.upMS), append(firstMS, run.firstMS), append(rtts, run.rttMS)
	}
	if len(punchMS) == 0 {
		return fmt.Errorf("cone-cone at %d ms RTT: all %d runs failed", rtt, runs)
	}
	wan := fmt.Sprintf("WAN %d ms RTT", rtt)
	link := "no WAN link"
	if rtt > 0 {
		link = fmt.Sprintf("link Delay %v on gw-a and on gw-b (a-b RTT %d ms, agent-broker RTT %d ms)", punchWANDelay, rtt, rtt/2)
	}
	rttMed := median(rtts)
	base := func(f Figure) Figure {
		// The peer session's measured RTT is the yardstick: a punch can't
		// take less than about one RTT (SYN, SYN-ACK), then the marker
		// exchange and TLS take more.
		if rttMed > 0 {
			f.Baseline, f.BaseName = rttMed, "peer RTT"
		}
		return f
	}
	note := fmt.Sprintf("cone-cone, %s; %d/%d runs direct, a new `agent connect` process each", link, len(punchMS), runs)
	r.add(base(Figure{Part: punchPart, Name: "punch_ms p50, cone-cone, " + wan, Value: median(punchMS), Unit: "ms",
		Note: note + "; status punch_ms: from the punch start (after NAT discovery and the introduction) to the agreed connection; values " + fmt.Sprint(round2(punchMS))}))
	r.add(base(Figure{Part: punchPart, Name: "punch_ms p90, cone-cone, " + wan, Value: quantile(punchMS, .9), Unit: "ms", Note: note}))
	r.add(Figure{Part: punchPart, Name: "connect start to session up p50, cone-cone, " + wan, Value: median(upMS), Unit: "ms",
		Note: note + "; process start to the peer session's `since` (discovery, introduction, punch, TLS); values " + fmt.Sprint(round2(upMS))})
	r.add(Figure{Part: punchPart, Name: "connect start to session up p90, cone-cone, " + wan, Value: quantile(upMS, .9), Unit: "ms", Note: note})
	r.add(Figure{Part: punchPart, Name: "connect start to first byte p50, cone-cone, " + wan, Value: median(firstMS), Unit: "ms",
		Note: note + "; process start to 1 byte echoed through the tunnel; values " + fmt.Sprint(round2(firstMS))})
	r.add(Figure{Part: punchPart, Name: "connect start to first byte p90, cone-cone, " + wan, Value: quantile(firstMS, .9), Unit: "ms", Note: note})
	return nil
}

func punchSuccess(ctx context.Context, bin binaries, tmp string, runs int, r *Report) error {
	total, good := 0, 0
	for _, pc := range punchMatrix() {
		if ctx.Err() != nil {
			return fmt.Errorf("matrix: %w (part budget %v)", ctx.Err(), punchBudget)
		}
		l, err := newPunchLab(ctx, bin, tmp, pc.topo)
		if err != nil {
			return err
		}
		ok := 0
		var times []float64
		var pairs, fails []string
		for i := range runs {
			run := l.connectOnce(i, pc.want, pc.args...)
			if run.ok {
				ok++
				if pc.want != pathDirect {
					times = append(times, run.firstMS)
				} else {
					times = append(times, run.punchMS)
					if !slices.Contains(pairs, run.pair+" NAT "+run.nat) && len(pairs) < 2 {
						pairs = append(pairs, run.pair+" NAT "+run.nat)
					}
				}
			} else {
				fails = append(fails, run.outcome)
			}
		}
		l.close()
		total, good = total+runs, good+ok
		want := pc.want
		detail := "punch_ms median"
		switch want {
		case relayNeeded:
			detail = "connect start to \"relay needed\" median"
		case pathRelay:
			detail = "connect start to first byte median"
		}
		note := fmt.Sprintf("%d/%d %s; %s %.0f ms", ok, runs, want, detail, median(times))
		if len(pairs) > 0 {
			note += "; pair " + strings.Join(pairs, ", ")
		}
		if len(fails) > 0 {
			note += "; failures: " + strings.Join(fails, " | ")
		}
		r.add(Figure{Part: punchPart, Name: "success, " + pc.name + " (want " + want + ")", Value: 100 * float64(ok) / float64(runs),
			Unit: "%", Target: "100 %", Note: note})
	}
	r.add(Figure{Part: punchPart, Name: "success, whole matrix", Value: 100 * float64(good) / float64(total), Unit: "%",
		Target: "100 %", Note: fmt.Sprintf("%d/%d runs with the expected outcome over %d topologies", good, total, len(punchMatrix()))})
	return nil
}
