package main

// The relay part: the broker's two relays beside the punched path, in the
// NAT lab, with the built binaries. On cone-cone every path works, so every
// figure has its same-run baseline on the same path: a connector forced to
// the TURN relay (--path turn) and one forced to the broker relay (--path
// broker, the broker's own TLS port) against one forced direct (--path
// direct), for the time from `agent connect` to the first forwarded byte,
// iperf3 throughput, 1-byte round trips, and the broker's CPU per relayed
// GB. Then the case the relays exist for: symmetric-cone with the default
// policy, where the connector learns it cannot punch and relays.

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
	relayBudget = 10 * time.Minute
	// Fixed listen ports of the long-lived connectors on host b.
	directIperfPort, turnIperfPort, brokerIperfPort = 15201, 15202, 15203
	// relayPings is how many 1-byte round trips each path is timed over;
	// on a WAN path fewer, each one takes the RTT.
	relayPings, relayWANPings = 2000, 200
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
	if err := relaySymmetric(ctx, bin, tmp, o, r); err != nil {
		return err
	}
	return relayOnePort(ctx, bin, tmp, o, r)
}

// relayOnePort is the network that lets out only TCP 443: the sharer behind
// such a cone NAT, the broker on 443, policy auto. The connector cannot know
// in advance; it punches, races both relays after the head start, and the
// broker relay wins. Baseline: the same pair of NATs without the filter,
// where the punch wins.
func relayOnePort(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	first := map[string][]float64{}
	var fails []string
	for _, c := range []struct {
		name string
		topo natlab.Topology
		want string
	}{
		{"open", natlab.Pair(natlab.BehindCone, natlab.BehindCone), pathDirect},
		{"443", natlab.Pair(natlab.BehindCone443, natlab.BehindCone), pathBroker},
	} {
		c.topo.Name = "relay-oneport-" + c.name
		l, err := newPunchLabOn(ctx, bin, tmp, c.topo, 443)
		if err != nil {
			return err
		}
		for i := range o.punchMatrixRuns {
			run := l.connectOnce(i, c.want)
			if !run.ok {
				fails = append(fails, c.name+": "+run.outcome)
				continue
			}
			first[c.name] = append(first[c.name], run.firstMS)
		}
		l.close()
	}
	if len(first["443"]) == 0 || len(first["open"]) == 0 {
		return fmt.Errorf("relay-oneport: no successful run of each network: %v", fails)
	}
	note := fmt.Sprintf("sharer behind a cone NAT that lets out only TCP to port 443 (UDP and every other port dropped), connector behind "+
		"a cone, broker on 443, policy auto, a new `agent connect` per run: STUN and the TURN port get no answer, the punch cannot "+
		"reach the sharer, the broker relay comes up after the 1 s head start; values %v, open network %v", round2(first["443"]), round2(first["open"]))
	if len(fails) > 0 {
		note += fmt.Sprintf("; failures: %v", fails)
	}
	r.add(Figure{Part: relayPart, Name: "connect start to first byte p50, 443-only network, auto", Value: median(first["443"]), Unit: "ms",
		Baseline: median(first["open"]), BaseName: "same NATs unfiltered (direct)", Note: note})
	return nil
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
		for j, path := range rotate(i, relayPaths) {
			run := l.connectOnce(len(relayPaths)*i+j, path, "--path", path)
			if !run.ok {
				fails = append(fails, path+": "+run.outcome)
				continue
			}
			first[path] = append(first[path], run.firstMS)
		}
	}
	for _, path := range relayPaths {
		if len(first[path]) == 0 {
			return fmt.Errorf("%s: no successful run on path %s: %v", topo.Name, path, fails)
		}
	}
	note := fmt.Sprintf("cone-cone, %s; a new `agent connect` process per run, --path direct, turn and broker in rotation; "+
		"%d direct, %d turn and %d broker runs ok", wan, len(first[pathDirect]), len(first[pathTURN]), len(first[pathBroker]))
	if len(fails) > 0 {
		note += fmt.Sprintf("; failures: %v", fails)
	}
	for _, path := range []string{pathTURN, pathBroker} {
		r.add(Figure{Part: relayPart, Name: "connect start to first byte p50, " + relayName[path] + ", " + wan, Value: median(first[path]), Unit: "ms",
			Baseline: median(first[pathDirect]), BaseName: "direct (punched)", Note: note + "; values " + fmt.Sprint(round2(first[path])) +
				", direct values " + fmt.Sprint(round2(first[pathDirect]))})
	}

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
	ports := map[string]int{pathDirect: directIperfPort, pathTURN: turnIperfPort, pathBroker: brokerIperfPort}
	// Per path, one connector to iperf3 and one to the echo server (at the
	// port + 100), each kept for the whole part.
	for path, port := range ports {
		for _, c := range []struct {
			name, ticket string
			port         int
		}{{"iperf", ticket, port}, {"echo", l.ticket, port + 100}} {
			p, err := b.StartCommand(ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", l.dir(c.name + "-" + path),
				"connect", c.ticket, "--path", path, "--listen", "127.0.0.1:" + strconv.Itoa(c.port)}})
			if err != nil {
				return err
			}
			defer p.Stop()
			if _, err := l.line(p, 30*time.Second); err != nil {
				return err
			}
		}
	}
	prefix := []string{"ip", "netns", "exec", b.Namespace()}
	rates := map[string][]float64{}
	cpu := map[string][]float64{} // broker CPU seconds per GB relayed
	for i := range o.rounds {
		for _, path := range rotate(i, relayPaths) {
			before := cpuSeconds(l.brokerPID())
			g, err := iperfRun(ctx, prefix, "127.0.0.1", strconv.Itoa(ports[path]), o.seconds, 1)
			if err != nil {
				return fmt.Errorf("iperf3 %s, %s: %w", path, wan, err)
			}
			rates[path] = append(rates[path], g)
			if gb := g / 8 * float64(o.seconds); gb > 0 && path != pathDirect {
				cpu[path] = append(cpu[path], (cpuSeconds(l.brokerPID())-before)/gb)
			}
		}
	}
	for _, path := range []string{pathTURN, pathBroker} {
		r.add(Figure{Part: relayPart, Name: "iperf3 1 stream, " + relayName[path] + ", " + wan, Value: median(rates[path]), Unit: "Gbit/s",
			Baseline: median(rates[pathDirect]), BaseName: "direct (punched)", Note: fmt.Sprintf("cone-cone, %s, all through the tunnel (TLS); "+
				"median of %d interleaved rounds; %s %v direct %v", wan, o.rounds, path, round2(rates[path]), round2(rates[pathDirect]))})
	}
	r.add(Figure{Part: relayPart, Name: "broker CPU per relayed GB, broker relay, " + wan, Value: median(cpu[pathBroker]), Unit: "s/GB",
		Baseline: median(cpu[pathTURN]), BaseName: "TURN relay (same broker process)", Note: fmt.Sprintf(
			"broker process CPU (user+sys) over each iperf3 run / GB moved; the broker relay decrypts and re-encrypts its TLS, "+
				"the TURN relay copies plain TCP; broker %v turn %v", round2(cpu[pathBroker]), round2(cpu[pathTURN]))})

	// Round trips, one connection per path through the long-lived connectors.
	rtts := map[string][]time.Duration{}
	pings := relayPings
	if rtt > 0 {
		pings = relayWANPings
	}
	for _, path := range relayPaths {
		c, err := b.Dial(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(ports[path]+100))
		if err != nil {
			return fmt.Errorf("echo %s: %w", path, err)
		}
		d, err := pingPong(c, pings)
		c.Close()
		if err != nil {
			return fmt.Errorf("round trips %s, %s: %w", path, wan, err)
		}
		rtts[path] = d
	}
	for _, path := range []string{pathTURN, pathBroker} {
		r.add(Figure{Part: relayPart, Name: "round trip p50, " + relayName[path] + ", " + wan, Value: pct(rtts[path], 0.5), Unit: "µs",
			Baseline: pct(rtts[pathDirect], 0.5), BaseName: "direct (punched)", Note: fmt.Sprintf("%d 1-byte round trips on one forwarded connection "+
				"to an echo server beside the sharer; p99 %.0f µs, direct p99 %.0f µs", pings, pct(rtts[path], 0.99), pct(rtts[pathDirect], 0.99))})
	}
	return nil
}

// relayPaths are the paths the relay part compares, direct first.
var relayPaths = []string{pathDirect, pathTURN, pathBroker}

var relayName = map[string]string{pathTURN: "TURN relay", pathBroker: "broker relay"}

// rotate gives paths starting at a different one each round, so none
// always goes first.
func rotate(round int, paths []string) []string {
	k := round % len(paths)
	return append(append([]string{}, paths[k:]...), paths[:k]...)
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
	pathTURN   = "turn"
	pathBroker = "broker"
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
