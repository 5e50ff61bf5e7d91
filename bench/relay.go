package main

// The relay part: the broker's TURN relay beside the punched path, in the
// NAT lab, with the built binaries. On cone-cone both paths work, so every
// figure has its same-run baseline on the same path: a connector forced to
// the relay (--path relay) against one forced direct (--path direct), for
// the time from `agent connect` to the first forwarded byte and for iperf3
// throughput. Then the case the relay exists for: symmetric-cone with the
// default policy, where the connector learns it cannot punch and relays.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

const (
	relayPart = "relay"
	// relayBudget bounds the whole part, lab builds included.
	relayBudget = 5 * time.Minute
	// Fixed listen ports of the long-lived connectors on host b.
	directIperfPort, relayIperfPort = 15201, 15202
)

func relayBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	ctx, cancel := context.WithTimeout(ctx, relayBudget)
	defer cancel()
	for _, rtt := range []int{0, 50} {
		topo := natlab.Pair(natlab.BehindCone, natlab.BehindCone)
		if rtt > 0 {
			var err error
			if topo, err = withWAN(topo); err != nil {
				return err
			}
		}
		topo.Name = fmt.Sprintf("relay-cone-cone-%dms", rtt)
		if err := relayBeside(ctx, bin, tmp, o, rtt, topo, r); err != nil {
			return err
		}
	}
	return relaySymmetric(ctx, bin, tmp, o, r)
}

// withWAN puts punchWANDelay on both NATs' uplinks: 50 ms a-b RTT.
func withWAN(topo natlab.Topology) (natlab.Topology, error) {
	link := natlab.LinkConfig{Delay: punchWANDelay}
	topo, err := topo.WithLink("gw-a", link)
	if err != nil {
		return topo, err
	}
	return topo.WithLink("gw-b", link)
}

// relayBeside measures relay against direct on one cone-cone lab.
func relayBeside(ctx context.Context, bin binaries, tmp string, o options, rtt int, topo natlab.Topology, r *Report) error {
	l, err := newPunchLab(ctx, bin, tmp, topo)
	if err != nil {
		return err
	}
	defer l.close()
	wan := fmt.Sprintf("WAN %d ms RTT", rtt)
	// Connect start to first byte, a new connector process per run, the
	// two paths alternating.
	first := map[string][]float64{}
	var fails []string
	for i := range o.punchRuns / 2 {
		for j, path := range alternate(i, pathDirect, pathRelay) {
			run := l.connectOnce(2*i+j, path, "--path", path)
			if !run.ok {
				fails = append(fails, path+": "+run.outcome)
				continue
			}
			first[path] = append(first[path], run.firstMS)
		}
	}
	if len(first[pathRelay]) == 0 || len(first[pathDirect]) == 0 {
		return fmt.Errorf("%s: no successful run of each path: %v", topo.Name, fails)
	}
	note := fmt.Sprintf("cone-cone, %s; a new `agent connect` process per run, --path relay and --path direct alternating; "+
		"%d relay and %d direct runs ok", wan, len(first[pathRelay]), len(first[pathDirect]))
	if len(fails) > 0 {
		note += fmt.Sprintf("; failures: %v", fails)
	}
	r.add(Figure{Part: relayPart, Name: "connect start to first byte p50, relay, " + wan, Value: median(first[pathRelay]), Unit: "ms",
		Baseline: median(first[pathDirect]), BaseName: "direct (punched)", Note: note + "; relay values " + fmt.Sprint(round2(first[pathRelay])) +
			", direct values " + fmt.Sprint(round2(first[pathDirect]))})

	// Throughput through the relay and direct, on this same path.
	a, b := l.lab.Host("a"), l.lab.Host("b")
	const iperfPort = 5201
	srv, err := a.StartCommand(ctx, natlab.Command{Path: "iperf3", Args: []string{"-s", "-B", "127.0.0.1", "-p", strconv.Itoa(iperfPort)}})
	if err != nil {
		return err
	}
	defer srv.Stop()
	ticket, err := l.share("iperf", net.JoinHostPort("127.0.0.1", strconv.Itoa(iperfPort)))
	if err != nil {
		return err
	}
	ports := map[string]int{pathDirect: directIperfPort, pathRelay: relayIperfPort}
	for path, port := range ports {
		p, err := b.StartCommand(ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", l.dir("iperf-" + path),
			"connect", ticket, "--path", path, "--listen", "127.0.0.1:" + strconv.Itoa(port)}})
		if err != nil {
			return err
		}
		defer p.Stop()
		if _, err := l.line(p, 30*time.Second); err != nil {
			return err
		}
	}
	prefix := []string{"ip", "netns", "exec", b.Namespace()}
	rates := map[string][]float64{}
	for i := range o.rounds {
		for _, path := range alternate(i, pathDirect, pathRelay) {
			g, err := iperfRun(ctx, prefix, "127.0.0.1", strconv.Itoa(ports[path]), o.seconds, 1)
			if err != nil {
				return fmt.Errorf("iperf3 %s, %s: %w", path, wan, err)
			}
			rates[path] = append(rates[path], g)
		}
	}
	r.add(Figure{Part: relayPart, Name: "iperf3 1 stream, relay, " + wan, Value: median(rates[pathRelay]), Unit: "Gbit/s",
		Baseline: median(rates[pathDirect]), BaseName: "direct (punched)", Note: fmt.Sprintf("cone-cone, %s, both through the tunnel (TLS); "+
			"median of %d interleaved rounds; relay %v direct %v", wan, o.rounds, round2(rates[pathRelay]), round2(rates[pathDirect]))})
	return nil
}

// relaySymmetric is the relay as users meet it: symmetric-cone, policy auto.
func relaySymmetric(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	topo := natlab.Pair(natlab.BehindSym, natlab.BehindCone)
	topo.Name = "relay-symmetric-cone"
	l, err := newPunchLab(ctx, bin, tmp, topo)
	if err != nil {
		return err
	}
	defer l.close()
	var first []float64
	var fails []string
	for i := range o.punchMatrixRuns {
		run := l.connectOnce(i, pathRelay)
		if !run.ok {
			fails = append(fails, run.outcome)
			continue
		}
		first = append(first, run.firstMS)
	}
	if len(first) == 0 {
		return fmt.Errorf("%s: all runs failed: %v", topo.Name, fails)
	}
	note := fmt.Sprintf("sharer behind a symmetric NAT, connector behind a cone, no WAN link, policy auto: the punch is ruled out "+
		"by the introduction, then the relay; %d/%d runs relayed; values %v", len(first), o.punchMatrixRuns, round2(first))
	if len(fails) > 0 {
		note += fmt.Sprintf("; failures: %v", fails)
	}
	r.add(Figure{Part: relayPart, Name: "connect start to first byte p50, symmetric-cone, auto", Value: median(first), Unit: "ms", Note: note})
	return nil
}

const (
	pathDirect = "direct"
	pathRelay  = "relay"
)

// alternate gives x and y, swapped on odd rounds, so neither always goes first.
func alternate(round int, x, y string) []string {
	if round%2 == 1 {
		return []string{y, x}
	}
	return []string{x, y}
}

// share runs one more sharer on host a (its own state dir, the lab's
// broker) and returns its ticket.
func (l *punchLab) share(name, target string) (string, error) {
	p, err := l.lab.Host("a").StartCommand(l.ctx, natlab.Command{Path: l.bin.agent,
		Args: []string{"--state-dir", l.dir("sharer-" + name), "share", "--broker", l.url, "--name", name, target}})
	if err != nil {
		return "", err
	}
	return l.line(p, 30*time.Second)
}
