package main

// The relaycost part: what relaying costs the broker, in the NAT lab (the
// relays refuse loopback peers), with the built binaries. On a cone-cone
// lab, where every path works, one sharer of an iperf3 server and three
// long-lived connectors to it, forced to the direct path, the TURN relay
// and the broker relay (--path), take turns carrying iperf3 at 1 and 8
// streams: the broker process's CPU per relayed GB, beside what both
// agents spend per GB on the direct path (the cost of the tunnel itself),
// and the agents' own CPU per GB on each relayed path beside direct. Then
// per path a fresh lab with N idle pairs (N connector processes to one
// sharer, each with its session up and checked on the path asked for): the
// broker's RSS growth per pair, beside the same for direct pairs.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

const (
	relayCostPart = "relaycost"
	// relayCostBudget bounds the whole part, lab builds included.
	relayCostBudget = 12 * time.Minute
	// costIperfPort is the direct connector's listen port on host b; the
	// TURN and broker ones follow it.
	costIperfPort = 15301
	// costPairPort is the first idle pair's listen port on host b.
	costPairPort = 16001
)

// relayCostStreams are the iperf3 stream counts of the CPU figures.
var relayCostStreams = []int{1, 8}

func relayCostBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	ctx, cancel := context.WithTimeout(ctx, relayCostBudget)
	defer cancel()
	if err := relayCostCPU(ctx, bin, tmp, o, r); err != nil {
		return err
	}
	return relayCostRSS(ctx, bin, tmp, o, r)
}

// shareProc runs one more sharer on host a and returns it with its ticket.
func (l *punchLab) shareProc(name, target string) (*natlab.Proc, string, error) {
	p, err := l.lab.Host("a").StartCommand(l.ctx, natlab.Command{Path: l.bin.agent,
		Args: []string{"--state-dir", l.dir("sharer-" + name), "share", "--broker", l.url, "--name", name, target}})
	if err != nil {
		return nil, "", err
	}
	t, err := l.line(p, 30*time.Second)
	return p, t, err
}

// connectOn starts a connector on host b to ticket on path, listening on
// port; it returns once a byte was echoed through it (when echo) and its
// status shows the session on that path.
func (l *punchLab) connectOn(name, ticket, path string, port int, echo bool) (*natlab.Proc, error) {
	b := l.lab.Host("b")
	dir := l.dir(name)
	p, err := b.StartCommand(l.ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", dir,
		"connect", ticket, "--path", path, "--listen", "127.0.0.1:" + strconv.Itoa(port)}})
	if err != nil {
		return nil, err
	}
	addr, err := l.line(p, 30*time.Second)
	if err != nil {
		p.Stop()
		return nil, err
	}
	if echo {
		ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
		defer cancel()
		c, err := b.Dial(ctx, "tcp", addr)
		if err == nil {
			_, err = pingPong(c, 1)
			c.Close()
		}
		if err != nil {
			p.Stop()
			return nil, fmt.Errorf("%s: echo: %w\n%s", name, err, p.Stderr())
		}
		pj, err := l.connectorPeer(ctx, dir)
		if err != nil {
			p.Stop()
			return nil, err
		}
		if got := pj.Path; got != path && pj.Kind != path {
			p.Stop()
			return nil, fmt.Errorf("%s: session on %s/%s, want %s", name, pj.Path, pj.Kind, path)
		}
	}
	return p, nil
}

// relayCostCPU is the CPU figures, on one cone-cone lab.
func relayCostCPU(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	topo := natlab.Pair(natlab.BehindCone, natlab.BehindCone)
	topo.Name = "relaycost-cpu"
	l, err := newPunchLab(ctx, bin, tmp, topo)
	if err != nil {
		return err
	}
	defer l.close()
	a, b := l.lab.Host("a"), l.lab.Host("b")
	const iperfPort = 5201
	srv, err := a.StartCommand(ctx, natlab.Command{Path: "iperf3", Args: []string{"-s", "-B", "127.0.0.1", "-p", strconv.Itoa(iperfPort)}})
	if err != nil {
		return err
	}
	defer srv.Stop()
	sharer, ticket, err := l.shareProc("iperf", net.JoinHostPort("127.0.0.1", strconv.Itoa(iperfPort)))
	if err != nil {
		return err
	}
	conns := map[string]*natlab.Proc{}
	ports := map[string]int{}
	for i, path := range relayPaths {
		ports[path] = costIperfPort + i
		// The echo check needs an echo target; the iperf3 share has none,
		// so the session is checked by the first iperf3 run instead.
		p, err := l.connectOn("iperf-"+path, ticket, path, ports[path], false)
		if err != nil {
			return err
		}
		defer p.Stop()
		conns[path] = p
	}
	prefix := []string{"ip", "netns", "exec", b.Namespace()}
	type key struct {
		path string
		n    int
	}
	type use struct{ broker, sharer, connector, gb float64 }
	got := map[key]*use{}
	rates := map[key][]float64{}
	for i := range o.rounds {
		for _, n := range relayCostStreams {
			for _, path := range rotate(i, relayPaths) {
				b0, s0, c0 := cpuSeconds(l.brokerPID()), cpuSeconds(sharer.Pid()), cpuSeconds(conns[path].Pid())
				g, err := iperfRun(ctx, prefix, "127.0.0.1", strconv.Itoa(ports[path]), o.seconds, n)
				if err != nil {
					return fmt.Errorf("iperf3 %d streams, %s: %w", n, path, err)
				}
				k := key{path, n}
				u := got[k]
				if u == nil {
					u = &use{}
					got[k] = u
				}
				u.broker += cpuSeconds(l.brokerPID()) - b0
				u.sharer += cpuSeconds(sharer.Pid()) - s0
				u.connector += cpuSeconds(conns[path].Pid()) - c0
				u.gb += g * float64(o.seconds) / 8
				rates[k] = append(rates[k], g)
			}
		}
	}
	// Each relayed session's path, as its connector reports it.
	for _, path := range relayPaths {
		pj, err := l.connectorPeer(ctx, l.dir("iperf-"+path))
		if err != nil {
			return err
		}
		if pj.Path != path && pj.Kind != path {
			return fmt.Errorf("connector --path %s ended on %s/%s", path, pj.Path, pj.Kind)
		}
	}
	for _, n := range relayCostStreams {
		d := got[key{pathDirect, n}]
		agentsDirect := (d.sharer + d.connector) / d.gb
		for _, path := range []string{pathTURN, pathBroker} {
			u := got[key{path, n}]
			note := fmt.Sprintf("cone-cone lab, no WAN delay, iperf3 %d stream(s), %d interleaved rounds of %d s, the three paths rotated; "+
				"CPU (user+sys) summed over the runs / GB received; broker on this path %.2f, on the direct path %.2f CPU s/GB; "+
				"sharer %.2f connector %.2f on this path, %.2f %.2f direct; Gbit/s %s %v direct %v",
				n, o.rounds, o.seconds, u.broker/u.gb, d.broker/d.gb, u.sharer/u.gb, u.connector/u.gb, d.sharer/d.gb, d.connector/d.gb,
				path, round2(rates[key{path, n}]), round2(rates[key{pathDirect, n}]))
			r.add(Figure{Part: relayCostPart, Name: fmt.Sprintf("broker CPU per relayed GB, %s, %d stream(s)", relayName[path], n),
				Value: u.broker / u.gb, Unit: "CPU s/GB", Baseline: agentsDirect, BaseName: "both agents, direct path", Note: note})
			r.add(Figure{Part: relayCostPart, Name: fmt.Sprintf("agents' CPU per GB, %s path, %d stream(s)", relayName[path], n),
				Value: (u.sharer + u.connector) / u.gb, Unit: "CPU s/GB", Baseline: agentsDirect, BaseName: "both agents, direct path", Note: note})
		}
	}
	return nil
}

// relayCostRSS is the broker's RSS per idle pair, per path on a fresh lab.
func relayCostRSS(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	n := max(o.relayPairs, 1)
	per := map[string]float64{}
	idle := map[string]float64{}
	sharerPer := map[string]float64{}
	for _, path := range relayPaths {
		topo := natlab.Pair(natlab.BehindCone, natlab.BehindCone)
		topo.Name = "relaycost-rss-" + path
		kib, base, sh, err := relayPairsRSS(ctx, bin, tmp, topo, path, n)
		if err != nil {
			return err
		}
		per[path], idle[path], sharerPer[path] = kib, base, sh
	}
	for _, path := range []string{pathTURN, pathBroker} {
		f := Figure{Part: relayCostPart, Name: fmt.Sprintf("broker RSS per idle relayed pair, %s, %d pairs", relayName[path], n),
			Value: per[path], Unit: "KiB",
			Note: fmt.Sprintf("a fresh cone-cone lab per path: broker, one sharer of an echo server, then %d `agent connect --path %s` "+
				"processes on host b, each session up (1 byte echoed) and checked on its path; broker RSS growth / pairs 3 s after the last; "+
				"broker idle before %.1f MiB; per direct pair %.1f KiB (its lab's broker idle %.1f MiB); sharer RSS per pair %.1f KiB, direct %.1f",
				n, path, idle[path], per[pathDirect], idle[pathDirect], sharerPer[path], sharerPer[pathDirect])}
		if per[pathDirect] > 0.5 {
			f.Baseline, f.BaseName = per[pathDirect], "per direct pair"
		}
		r.add(f)
	}
	return nil
}

// relayPairsRSS builds topo, connects n pairs on path and returns the
// broker's RSS growth per pair (KiB), its RSS before (MiB), and the
// sharer's growth per pair (KiB).
func relayPairsRSS(ctx context.Context, bin binaries, tmp string, topo natlab.Topology, path string, n int) (float64, float64, float64, error) {
	l, err := newPunchLab(ctx, bin, tmp, topo)
	if err != nil {
		return 0, 0, 0, err
	}
	defer l.close()
	sharer, ticket, err := l.shareProc("echo-rss", l.echo.Addr().String())
	if err != nil {
		return 0, 0, 0, err
	}
	time.Sleep(time.Second)
	b0, err := rss(l.brokerPID())
	if err != nil {
		return 0, 0, 0, err
	}
	s0, err := rss(sharer.Pid())
	if err != nil {
		return 0, 0, 0, err
	}
	for i := range n {
		p, err := l.connectOn(fmt.Sprintf("pair-%s-%d", path, i), ticket, path, costPairPort+i, true)
		if err != nil {
			return 0, 0, 0, err
		}
		defer p.Stop()
	}
	time.Sleep(3 * time.Second)
	b1, err := rss(l.brokerPID())
	if err != nil {
		return 0, 0, 0, err
	}
	s1, err := rss(sharer.Pid())
	if err != nil {
		return 0, 0, 0, err
	}
	return float64(b1-b0) / float64(n) / 1024, float64(b0) / (1 << 20), float64(s1-s0) / float64(n) / 1024, nil
}
