package main

// The portmap part (issue 18): the topologies of the NAT lab that were
// relayed before agents asked their gateway for a port mapping and punched
// over IPv6 behind symmetric IPv4 NATs, each run "before" (--no-portmap on
// both agents, and for the dual-stack lab IPv6 turned off on hosts a and
// b: IPv4 only) and "after" (the defaults), in the same lab. Also
// cone-cone and firewall-firewall, direct either way, for the overall share
// and for the baseline of the timing figures: the cone-cone direct path
// without a mapping. Every run is a new `agent connect` process on "b"
// against a sharer on "a" (bench/punch.go); miniupnpd (Debian's
// miniupnpd-nftables) runs on every symmetric gateway of the mapping labs,
// started before any agent (an agent that found its gateway silent asks it
// again only minutes later).
// It needs root, the lab's tools and miniupnpd.

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

const (
	portmapPart = "portmap"
	// portmapBudget bounds the whole part, lab builds included.
	portmapBudget = 8 * time.Minute
	// portmapHold bounds how long a relayed connector is held for its
	// move to a direct path: the first re-punch comes 24 to 30 s after the
	// session went up (repunchMin less up to a fifth).
	portmapHold = 40 * time.Second
)

// portmapCase is one topology: the gateways that run miniupnpd, and whether
// its before is IPv4 only (dual-stack).
type portmapCase struct {
	name    string
	topo    natlab.Topology
	upnp    []string // gateways running miniupnpd
	dual    bool     // before: IPv6 off on hosts a and b
	newPath bool     // relayed without issue 18's paths
	via     string   // how the after path goes direct
}

func portmapMatrix() []portmapCase {
	dual := natlab.Pair(natlab.BehindSym, natlab.BehindSym)
	dual.Name, dual.IPv6 = "dual-symmetric-symmetric", true
	return []portmapCase{
		{name: "cone-cone", topo: natlab.Pair(natlab.BehindCone, natlab.BehindCone)},
		{name: "firewall-firewall", topo: natlab.Pair(natlab.BehindFW, natlab.BehindFW)},
		{name: "symmetric-cone", topo: natlab.Pair(natlab.BehindSym, natlab.BehindCone), upnp: []string{"gw-a"}, newPath: true, via: "through the mapping"},
		{name: "cone-symmetric", topo: natlab.Pair(natlab.BehindCone, natlab.BehindSym), upnp: []string{"gw-b"}, newPath: true, via: "through the mapping"},
		{name: "symmetric-symmetric", topo: natlab.Pair(natlab.BehindSym, natlab.BehindSym), upnp: []string{"gw-a", "gw-b"}, newPath: true, via: "through the mapping"},
		{name: "symmetric-symmetric dual-stack", topo: dual, dual: true, newPath: true, via: "over IPv6"},
	}
}

func (c portmapCase) beforeName() string {
	if c.dual {
		return "--no-portmap, IPv4 only"
	}
	return "--no-portmap"
}

func (c portmapCase) describe() string {
	s := c.name
	switch {
	case len(c.upnp) > 0:
		s += ", miniupnpd on " + strings.Join(c.upnp, " and ")
	case c.dual:
		s += " (global IPv6 behind stateful firewalls, broker over IPv4; before: IPv6 turned off on a and b, disable_ipv6)"
	}
	return s
}

// portmapPhase is what the runs of one phase (before or after) of a case gave.
type portmapPhase struct {
	runs, direct, relayed int
	upDirect, upRelay     []float64 // connect start to session up
	paths                 map[string]int
	fails                 []string
}

func (p *portmapPhase) share() float64 { return 100 * float64(p.direct) / float64(max(p.runs, 1)) }

func (p *portmapPhase) pathNote() string {
	var s []string
	for _, k := range slices.Sorted(maps.Keys(p.paths)) {
		s = append(s, fmt.Sprintf("%d× %s", p.paths[k], k))
	}
	if len(p.fails) > 0 {
		s = append(s, "failures: "+strings.Join(p.fails, " | "))
	}
	return strings.Join(s, "; ")
}

type portmapResult struct {
	c             portmapCase
	before, after portmapPhase
	held          string  // the held connector's first path, "": none held
	heldDirectMS  float64 // its connect start to the status showing direct; 0: not in portmapHold
}

// portmapConnect is connectOnce without an expected path: a new connector
// on "b", the path it got, and the port mapping that path came through.
// With hold, a connector that got a relayed path is kept until its status
// shows a direct one, at most hold: directMS is connect start to that
// status (polled every 100 ms), 0 if it did not come.
func (l *punchLab) portmapConnect(i int, hold time.Duration, extra ...string) (run punchRun, portmap string, directMS float64) {
	var why string // what moved a held connector
	ctx, cancel := context.WithTimeout(l.ctx, punchRunTimeout+hold)
	defer cancel()
	dir := l.dir(fmt.Sprintf("conn-%d", i))
	b := l.lab.Host("b")
	t0 := time.Now()
	p, err := b.StartCommand(ctx, natlab.Command{Path: l.bin.agent,
		Args: append([]string{"--state-dir", dir, "connect", l.ticket, "--listen", "127.0.0.1:18080"}, extra...)})
	if err != nil {
		return punchRun{outcome: err.Error()}, "", 0
	}
	defer p.Stop()
	addr, err := p.ReadLine(ctx)
	if err != nil {
		return punchRun{outcome: "no listen address: " + lastLine(p.Stderr())}, "", 0
	}
	c, err := b.Dial(ctx, "tcp", addr)
	if err != nil {
		return punchRun{outcome: "dial: " + err.Error()}, "", 0
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(punchRunTimeout))
	buf := []byte{'x'}
	if _, err = c.Write(buf); err == nil {
		_, err = io.ReadFull(c, buf)
	}
	first := time.Since(t0)
	if err != nil {
		return punchRun{outcome: "no echo: " + lastLine(p.Stderr())}, "", 0
	}
	pj, err := l.connectorPeer(ctx, dir)
	if err != nil {
		return punchRun{outcome: err.Error()}, "", 0
	}
	if hold > 0 && pj.Path != pathDirect {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(hold)
	wait:
		for {
			select {
			case <-tick.C:
			case <-deadline:
				break wait
			case <-ctx.Done():
				break wait
			}
			if now, err := l.connectorPeer(ctx, dir); err == nil && now.Path == pathDirect {
				directMS = ms(time.Since(t0))
				break
			}
		}
		why = "the re-punch timer"
		if strings.Contains(p.Stderr(), "network changed; trying a direct path") {
			why = "a network change it saw (\"network changed; trying a direct path\")"
		}
	}
	outcome := pj.Path
	if pj.Path == pathDirect {
		fam := "IPv4"
		if ap, err := netip.ParseAddrPort(pj.Pair.Remote); err == nil && ap.Addr().Is6() {
			fam = "IPv6"
		}
		outcome = fmt.Sprintf("direct %s %s pair", fam, pj.Pair.Kind)
		if pj.Portmap != "" {
			outcome += ", portmap " + pj.Portmap
		}
	} else if pj.Kind != "" {
		outcome = pj.Path + " (" + pj.Kind + ")"
	}
	if directMS > 0 {
		outcome += ", moved to direct after " + why
	}
	return punchRun{ok: true, outcome: outcome, punchMS: pj.PunchMS, firstMS: ms(first), upMS: ms(pj.Since.Sub(t0)),
		rttMS: pj.RTTMS, attempts: pj.Attempts, nat: pj.NAT + "/" + pj.PeerNAT}, pj.Portmap, directMS
}

// newPortmapLab is newPunchLab with miniupnpd started on the case's
// gateways before the broker and the sharer.
func newPortmapLab(ctx context.Context, bin binaries, tmp string, c portmapCase) (*punchLab, error) {
	bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	lab, err := natlab.Build(bctx, c.topo)
	if err != nil {
		return nil, err
	}
	l := &punchLab{ctx: ctx, bin: bin, tmp: filepath.Join(tmp, "lab-"+c.topo.Name), name: c.topo.Name, lab: lab, port: 7000}
	for _, gw := range c.upnp {
		if _, err := lab.Router(gw).StartMiniUPnPd(ctx, natlab.MiniUPnPdConfig{}); err != nil { // ctx, not bctx: it lives as long as the lab
			l.close()
			return nil, err
		}
	}
	if err := l.start(); err != nil {
		l.close()
		return nil, fmt.Errorf("lab %s: %w", c.topo.Name, err)
	}
	return l, nil
}

// shareAgain starts a second sharer of the lab's echo service, with its own
// identity and extra arguments, and returns it and its ticket.
func (l *punchLab) shareAgain(name string, extra ...string) (*natlab.Proc, string, error) {
	a := l.lab.Host("a")
	dir := l.dir(name)
	if out, err := a.RunCommand(l.ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", dir, "login", l.url}}); err != nil {
		return nil, "", fmt.Errorf("login: %w\n%s", err, out)
	}
	sp, err := a.StartCommand(l.ctx, natlab.Command{Path: l.bin.agent, Args: append([]string{"--state-dir", dir, "share", l.echo.Addr().String()}, extra...)})
	if err != nil {
		return nil, "", err
	}
	ticket, err := l.line(sp, 30*time.Second)
	if err != nil {
		sp.Stop()
		return nil, "", err
	}
	return sp, ticket, nil
}

// portmapCaseRun runs one case: runs connectors after (the lab's sharer,
// defaults), then before (a second sharer and every connector with
// --no-portmap; dual-stack: IPv6 turned off on a and b first).
func portmapCaseRun(ctx context.Context, bin binaries, tmp string, runs int, c portmapCase) (portmapResult, error) {
	res := portmapResult{c: c}
	l, err := newPortmapLab(ctx, bin, tmp, c)
	if err != nil {
		return res, err
	}
	defer l.close()
	phase := func(ph *portmapPhase, base int, extra ...string) {
		ph.paths = map[string]int{}
		for i := range runs {
			run, _, _ := l.portmapConnect(base+i, 0, extra...)
			ph.runs++
			switch {
			case !run.ok:
				ph.fails = append(ph.fails, run.outcome)
			case strings.HasPrefix(run.outcome, pathDirect):
				ph.direct++
				ph.upDirect = append(ph.upDirect, run.upMS)
				ph.paths[run.outcome]++
			default:
				ph.relayed++
				ph.upRelay = append(ph.upRelay, run.upMS)
				ph.paths[run.outcome]++
			}
		}
	}
	phase(&res.after, 0)
	if c.newPath && res.after.direct < res.after.runs {
		// The first connects were relayed: hold one connector until its
		// session moves to a direct path (the connector's re-punch of a
		// relayed session, agent/keeppath.go), or portmapHold.
		run, _, directMS := l.portmapConnect(2*runs, portmapHold)
		res.held, res.heldDirectMS = run.outcome, directMS
	}
	if c.dual {
		for _, h := range []string{"a", "b"} {
			n := l.lab.Host(h)
			if out, err := n.Run(ctx, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"); err != nil {
				return res, fmt.Errorf("turn IPv6 off on %s: %w %s", h, err, out)
			}
			if out, err := n.Run(ctx, "ip", "-6", "-o", "addr", "show", "scope", "global"); err != nil || len(strings.TrimSpace(string(out))) > 0 {
				return res, fmt.Errorf("IPv6 off on %s, yet: %v %s", h, err, out)
			}
		}
	}
	sp, ticket, err := l.shareAgain("sharer-before", "--no-portmap")
	if err != nil {
		return res, err
	}
	defer sp.Stop()
	l.ticket = ticket
	phase(&res.before, runs, "--no-portmap")
	return res, nil
}

func portmapBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	if _, err := natlab.MiniUPnPdPath(); err != nil {
		if o.only == nil { // not asked for by name
			fmt.Fprintf(os.Stderr, "  skipped: %v\n", err)
			return nil
		}
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, portmapBudget)
	defer cancel()
	runs := max(o.portmapRuns, 1)
	var results []portmapResult
	for _, c := range portmapMatrix() {
		if ctx.Err() != nil {
			return fmt.Errorf("matrix: %w (part budget %v)", ctx.Err(), portmapBudget)
		}
		res, err := portmapCaseRun(ctx, bin, tmp, runs, c)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		fmt.Fprintf(os.Stderr, "  %s: before %d/%d direct, after %d/%d direct\n", c.name, res.before.direct, runs, res.after.direct, runs)
		results = append(results, res)
	}
	each := fmt.Sprintf("%d runs each, a new `agent connect` process per run", runs)

	// Shares: per topology, then overall.
	var topoBefore, topoAfter, runsBefore, runsAfter, runsAll int
	var endBefore, endAfter, endHeld []string
	newPaths, newDirect := 0, 0
	for _, res := range results {
		c := res.c
		r.add(Figure{Part: portmapPart, Name: "runs ending direct, " + c.name + ", before (" + c.beforeName() + ")", Value: res.before.share(), Unit: "%",
			Note: fmt.Sprintf("%s; %d/%d direct, %d relayed; %s", c.describe(), res.before.direct, res.before.runs, res.before.relayed, res.before.pathNote())})
		f := Figure{Part: portmapPart, Name: "runs ending direct, " + c.name + ", after (defaults)", Value: res.after.share(), Unit: "%", Target: "100 %",
			Note: fmt.Sprintf("%s; %d/%d direct, %d relayed; %s", c.describe(), res.after.direct, res.after.runs, res.after.relayed, res.after.pathNote())}
		if v := res.before.share(); v > 0 {
			f.Baseline, f.BaseName = v, "before"
		}
		r.add(f)
		if res.before.direct == res.before.runs {
			topoBefore++
			endBefore = append(endBefore, c.name)
		}
		if res.after.direct == res.after.runs {
			topoAfter++
			endAfter = append(endAfter, c.name)
			if c.newPath {
				newDirect++
			}
		} else if res.heldDirectMS > 0 {
			endHeld = append(endHeld, c.name)
		}
		if c.newPath {
			newPaths++
		}
		runsBefore, runsAfter, runsAll = runsBefore+res.before.direct, runsAfter+res.after.direct, runsAll+res.after.runs
	}
	n := len(results)
	r.add(Figure{Part: portmapPart, Name: fmt.Sprintf("lab topologies ending direct (every run), %d topologies, after", n),
		Value: 100 * float64(topoAfter) / float64(n), Unit: "%", Baseline: 100 * float64(topoBefore) / float64(n), BaseName: "before", Target: "100 %",
		Note: fmt.Sprintf("%s; before %d/%d (%s), after %d/%d (%s); of the %d relayed without issue 18's paths: %d after", each, topoBefore, n, strings.Join(endBefore, ", "),
			topoAfter, n, strings.Join(endAfter, ", "), newPaths, newDirect)})
	if len(endHeld) > 0 {
		r.add(Figure{Part: portmapPart, Name: fmt.Sprintf("lab topologies ending direct, first path or the held connector's re-punch, %d topologies, after", n),
			Value: 100 * float64(topoAfter+len(endHeld)) / float64(n), Unit: "%", Baseline: 100 * float64(topoBefore) / float64(n), BaseName: "before", Target: "100 %",
			Note: fmt.Sprintf("as above, and the topologies whose first paths were relayed but whose held connector moved to a direct path within %v: %s", portmapHold, strings.Join(endHeld, ", "))})
	}
	r.add(Figure{Part: portmapPart, Name: fmt.Sprintf("runs ending direct, %d topologies, after", n),
		Value: 100 * float64(runsAfter) / float64(runsAll), Unit: "%", Baseline: 100 * float64(runsBefore) / float64(runsAll), BaseName: "before", Target: "100 %",
		Note: fmt.Sprintf("%s; before %d/%d runs direct, after %d/%d", each, runsBefore, runsAll, runsAfter, runsAll)})

	// Time to a direct path: with a mapping (or over IPv6) against the
	// cone-cone direct path without one, and against the relayed path of
	// the same topology before.
	cone := results[0]
	coneBase := median(cone.before.upDirect)
	r.add(Figure{Part: portmapPart, Name: "connect start to session up p50, cone-cone, defaults", Value: median(cone.after.upDirect), Unit: "ms",
		Baseline: coneBase, BaseName: "cone-cone, --no-portmap",
		Note: fmt.Sprintf("what asking a gateway that serves no mapping protocol costs; process start to the peer session's `since`; defaults %v, --no-portmap %v",
			round2(cone.after.upDirect), round2(cone.before.upDirect))})
	for _, res := range results {
		c := res.c
		if res.held != "" {
			note := fmt.Sprintf("%s; every first path relayed, so one more connector (defaults) held up to %v: first path %s; connect start to its status showing direct (polled every 100 ms; agent/keeppath.go moves a relayed session at a network change, else at a re-punch timer of 24 to 30 s)",
				c.describe(), portmapHold, res.held)
			if res.heldDirectMS == 0 {
				r.add(Figure{Part: portmapPart, Name: "held connector direct within " + portmapHold.String() + ", " + c.name, Value: 0, Unit: "%", Target: "100 %", Note: note})
			} else {
				r.add(Figure{Part: portmapPart, Name: "connect start to direct path, " + c.name + ", held connector (relayed first, then re-punched " + c.via + ")", Value: res.heldDirectMS, Unit: "ms",
					Baseline: coneBase, BaseName: "cone-cone direct, no mapping", Note: note + fmt.Sprintf("; baseline: cone-cone --no-portmap session up %v", round2(cone.before.upDirect))})
			}
		}
		if !c.newPath || len(res.after.upDirect) == 0 {
			continue
		}
		v := median(res.after.upDirect)
		note := fmt.Sprintf("%s; process start to the peer session's `since`; %d direct runs %v", c.describe(), len(res.after.upDirect), round2(res.after.upDirect))
		r.add(Figure{Part: portmapPart, Name: "connect start to session up p50, " + c.name + ", direct " + c.via + " vs cone-cone", Value: v, Unit: "ms",
			Baseline: coneBase, BaseName: "cone-cone direct, no mapping",
			Note: note + fmt.Sprintf("; baseline: cone-cone --no-portmap %v", round2(cone.before.upDirect))})
		if len(res.before.upRelay) > 0 {
			r.add(Figure{Part: portmapPart, Name: "connect start to session up p50, " + c.name + ", direct " + c.via + " vs relayed before", Value: v, Unit: "ms",
				Baseline: median(res.before.upRelay), BaseName: "relayed, " + c.beforeName(),
				Note: note + fmt.Sprintf("; baseline: the same lab before (%s), %d relayed runs %v", c.beforeName(), len(res.before.upRelay), round2(res.before.upRelay))})
		}
	}
	return nil
}
