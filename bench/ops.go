package main

// The ops part: the figures of issue 6's closing note, with the built
// binaries on 127.0.0.1. How long agents take to come back after a broker
// restart (SIGKILL, then the same state dir and port), and the idle RSS of
// `agent up` with 10 forwards. It has its own broker and echo service, not
// the loopback world of the other parts, because it kills its broker.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	opsPart = "ops"
	// opsBudget bounds the whole part.
	opsBudget = 3 * time.Minute
	// opsRoundTimeout bounds one restart round, from the restart to both
	// agents back.
	opsRoundTimeout = 60 * time.Second
	// opsPoll is the status polling interval.
	opsPoll = 20 * time.Millisecond
	// opsIdle is how long the `agent up` processes sit idle before their RSS
	// is read.
	opsIdle = 2 * time.Second
)

// opsStatus is the part of `agent status --json` read here (the bench does
// not import the agent package, which others may be editing).
type opsStatus struct {
	Agents []struct {
		PID     int `json:"pid"`
		Brokers []struct {
			Connected  bool   `json:"connected"`
			Reconnects int    `json:"reconnects"`
			LastError  string `json:"last_error"`
		} `json:"brokers"`
		Connects []struct {
			Share  string `json:"share"`
			Listen string `json:"listen"`
		} `json:"connects"`
	} `json:"agents"`
}

// status runs `agent status --json` against the one agent of dir.
func (w *world) status(ctx context.Context, dir string) (opsStatus, error) {
	var st opsStatus
	out, err := runOut(ctx, 10*time.Second, nil, w.bin.agent, "--state-dir", dir, "status", "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("status: %w: %s", err, out)
	}
	if len(st.Agents) != 1 {
		return st, fmt.Errorf("status of %s: want one agent, got %d", dir, len(st.Agents))
	}
	return st, nil
}

// brokerState is brokers[0] of the agent of dir: connected, and its
// reconnect count.
func (w *world) brokerState(ctx context.Context, dir string) (bool, int, error) {
	st, err := w.status(ctx, dir)
	if err != nil {
		return false, 0, err
	}
	if len(st.Agents[0].Brokers) == 0 {
		return false, 0, fmt.Errorf("status of %s: no broker", dir)
	}
	b := st.Agents[0].Brokers[0]
	return b.Connected, b.Reconnects, nil
}

// waitBroker polls the agent of dir every opsPoll until its broker session
// is up with more than after reconnects; it returns when it saw that.
func (w *world) waitBroker(ctx context.Context, dir string, after int) (time.Time, int, error) {
	for {
		ok, n, err := w.brokerState(ctx, dir)
		if err == nil && ok && n > after {
			return time.Now(), n, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, 0, fmt.Errorf("%s: broker not back (connected=%v reconnects=%d, last: %v): %w", filepath.Base(dir), ok, n, err, ctx.Err())
		case <-time.After(opsPoll):
		}
	}
}

func opsBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	ctx, cancel := context.WithTimeout(ctx, opsBudget)
	defer cancel()
	w := &world{ctx: ctx, bin: bin, tmp: filepath.Join(tmp, "ops"), o: o}
	defer w.stopAll()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	w.echoLn = echo // closed by stopAll
	go echoServer(echo)
	w.echoAddr = echo.Addr().String()
	port, err := freePort()
	if err != nil {
		return err
	}
	brokerArgs := []string{"--listen", "127.0.0.1:" + strconv.Itoa(port), "--state-dir", w.dir("broker"),
		"--public-addr", "127.0.0.1", "--log-level", "warn"}
	if w.brokerProc, err = w.start("broker", nil, bin.broker, brokerArgs...); err != nil {
		return err
	}
	if w.brokerURL, err = w.brokerProc.firstLine(ctx); err != nil {
		return err
	}
	if err := w.upMemory(r); err != nil {
		return fmt.Errorf("idle RSS: %w", err)
	}
	return w.reconnects(r, brokerArgs)
}

// echoOnce opens a new connection to addr and checks one byte comes back.
func echoOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = pingPong(c, 1)
	return err
}

// restartSample is one round: from the broker's restart to each agent's
// broker session back (sharer, connector), and the reconnect attempts each
// made in between.
type restartSample struct {
	sharer, conn     float64 // ms
	sharerN, connN   int
	both, ready, log float64 // ms: both back, broker URL line, baseline login
}

// agentPair is a sharer (`agent share`) and a connector (`agent connect`)
// of the echo service, with a working forward.
type agentPair struct {
	share, conn *proc
	dirs        [2]string // sharer, connector
	addr        string    // the connector's listener
}

func (w *world) newPair(name string) (*agentPair, error) {
	sh, ticket, err := w.share(name+"-sharer", w.echoAddr)
	if err != nil {
		return nil, err
	}
	con, addr, err := w.connect(name+"-connector", ticket)
	if err != nil {
		return nil, err
	}
	if err := echoOnce(addr); err != nil {
		return nil, fmt.Errorf("first echo through the forward: %w\n%s", err, con.stderr.String())
	}
	return &agentPair{share: sh, conn: con, dirs: [2]string{w.dir(name + "-sharer"), w.dir(name + "-connector")}, addr: addr}, nil
}

func (p *agentPair) kill() {
	for _, q := range []*proc{p.share, p.conn} {
		q.cmd.Process.Kill()
		<-q.done
	}
}

// restartRound waits for both agents of p to be on the broker, kills the
// broker, restarts it at once and times both agents' return; then checks a
// new connection through the forward and times the baseline login.
func (w *world) restartRound(p *agentPair, brokerArgs []string, label string) (restartSample, error) {
	var s restartSample
	ctx := w.ctx
	before := [2]int{}
	for j, d := range p.dirs {
		// Both must be up before the kill, or the round would time a
		// reconnect that had started already.
		wctx, cancel := context.WithTimeout(ctx, opsRoundTimeout)
		_, n, err := w.waitBroker(wctx, d, -1)
		cancel()
		if err != nil {
			return s, err
		}
		before[j] = n
	}
	w.brokerProc.cmd.Process.Kill()
	<-w.brokerProc.done
	t0 := time.Now()
	var err error
	if w.brokerProc, err = w.start("broker", nil, w.bin.broker, brokerArgs...); err != nil {
		return s, err
	}
	rctx, cancel := context.WithTimeout(ctx, opsRoundTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var back [2]time.Time
	var after [2]int
	var errs [2]error
	for j, d := range p.dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			back[j], after[j], errs[j] = w.waitBroker(rctx, d, before[j])
		}()
	}
	url, uerr := w.brokerProc.firstLine(rctx)
	s.ready = ms(time.Since(t0))
	wg.Wait()
	if uerr != nil {
		return s, fmt.Errorf("restarted broker: %w", uerr)
	}
	if url != w.brokerURL {
		return s, fmt.Errorf("restarted broker has another URL %q, want %q", url, w.brokerURL)
	}
	if err := errors.Join(errs[:]...); err != nil {
		return s, fmt.Errorf("%w\nsharer: %s\nconnector: %s", err, lastLine(p.share.stderr.String()), lastLine(p.conn.stderr.String()))
	}
	s.sharer, s.conn = ms(back[0].Sub(t0)), ms(back[1].Sub(t0))
	s.sharerN, s.connN = after[0]-before[0], after[1]-before[1]
	s.both = max(s.sharer, s.conn)
	if err := echoOnce(p.addr); err != nil {
		return s, fmt.Errorf("new connection through the forward: %w\n%s", err, lastLine(p.conn.stderr.String()))
	}
	// Baseline: one control handshake with a fresh identity against the
	// broker just restarted, process start included.
	t := time.Now()
	if _, err := runOut(ctx, 30*time.Second, nil, w.bin.agent, "--state-dir", w.dir("login-"+strings.ReplaceAll(label, " ", "-")), "login", w.brokerURL); err != nil {
		return s, err
	}
	s.log = ms(time.Since(t))
	fmt.Fprintf(os.Stderr, "  %s: both back %.0f ms (sharer %.0f ms/%d draws, connector %.0f ms/%d), broker URL line %.0f ms, login %.0f ms\n",
		label, s.both, s.sharer, s.sharerN, s.conn, s.connN, s.ready, s.log)
	return s, nil
}

type restartSeries []restartSample

func (ss restartSeries) col(f func(restartSample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

func (ss restartSeries) attempts() string {
	var b strings.Builder
	for i, s := range ss {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%d/%d", s.sharerN, s.connN)
	}
	return b.String()
}

const opsRounds = 10

// isolatedRestarts restarts the broker under a new pair of agents each
// round, so every round starts at the first backoff step, as a restart
// after a stable minute would.
func (w *world) isolatedRestarts(brokerArgs []string) (restartSeries, error) {
	var ss restartSeries
	for i := range opsRounds {
		p, err := w.newPair(fmt.Sprintf("iso%d", i))
		if err != nil {
			return nil, fmt.Errorf("isolated round %d: %w", i+1, err)
		}
		s, err := w.restartRound(p, brokerArgs, fmt.Sprintf("isolated %d", i+1))
		p.kill()
		if err != nil {
			return nil, fmt.Errorf("isolated round %d: %w", i+1, err)
		}
		ss = append(ss, s)
	}
	return ss, nil
}

// repeatedRestarts restarts the broker opsRounds times under the same
// pair. It stops early, keeping what it has, when the part's budget ends.
func (w *world) repeatedRestarts(brokerArgs []string) (restartSeries, error) {
	p, err := w.newPair("rc")
	if err != nil {
		return nil, err
	}
	var ss restartSeries
	for i := range opsRounds {
		s, err := w.restartRound(p, brokerArgs, fmt.Sprintf("round %d", i+1))
		if err != nil {
			if w.ctx.Err() != nil && len(ss) > 0 {
				fmt.Fprintf(os.Stderr, "  round %d: part budget %v over; keeping %d rounds\n", i+1, opsBudget, len(ss))
				return ss, nil
			}
			return nil, fmt.Errorf("round %d: %w", i+1, err)
		}
		ss = append(ss, s)
	}
	return ss, nil
}

// reconnects reports both restart series.
func (w *world) reconnects(r *Report, brokerArgs []string) error {
	iso, err := w.isolatedRestarts(brokerArgs)
	if err != nil {
		return err
	}
	rep, err := w.repeatedRestarts(brokerArgs)
	if err != nil {
		return err
	}
	both := func(s restartSample) float64 { return s.both }
	login := func(s restartSample) float64 { return s.log }
	how := fmt.Sprintf("SIGKILL the broker, restart it at once (same state dir and port), time from the restart until "+
		"`agent status --json` of both the sharer (`agent share`) and the connector (`agent connect --listen 127.0.0.1:0`) "+
		"shows brokers[0] connected with a higher reconnects count (each polled every %v, a status process per poll); "+
		"a new connection through the forward echoed after every round. The figure includes the agents' control backoff "+
		"draw: full jitter, ceiling 0.5 s doubling per failed attempt up to 30 s, reset only after 1 min stable; an agent "+
		"that redials before the broker listens draws again from a doubled ceiling", opsPoll)
	baseNote := func(ss restartSeries) string {
		return fmt.Sprintf("baseline: `agent login` with a fresh state dir against the restarted broker, one control "+
			"handshake, process start included, median of %d: %v ms", len(ss), round2(ss.col(login)))
	}
	n := len(rep)
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to both agents back, same agents, median of %d", n),
		Value: median(rep.col(both)), Unit: "ms", Baseline: median(rep.col(login)), BaseName: "fresh agent login",
		Note: fmt.Sprintf("%d back-to-back restarts under the same sharer and connector: %s. The rounds are seconds "+
			"apart, so the 1-min reset never comes and each agent's ceiling keeps doubling from round to round "+
			"(0.5, 1, 2, 4, 8, 16, 30 s...): later rounds time the backoff, not the handshake (crash-loop case). Values, "+
			"both back (ms): %v; sharer: %v; connector: %v; backoff draws (reconnects count delta) sharer/connector: %s; %s",
			n, how, round2(rep.col(both)), round2(rep.col(func(s restartSample) float64 { return s.sharer })),
			round2(rep.col(func(s restartSample) float64 { return s.conn })), rep.attempts(), baseNote(rep))})
	for _, q := range []struct {
		name string
		q    float64
	}{{"p90", .9}, {"min", 0}, {"max", 1}} {
		r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to both agents back, same agents, %s of %d", q.name, n),
			Value: quantile(rep.col(both), q.q), Unit: "ms"})
	}
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to both agents back, new agents each round, median of %d", len(iso)),
		Value: median(iso.col(both)), Unit: "ms", Baseline: median(iso.col(login)), BaseName: "fresh agent login",
		Note: fmt.Sprintf("%d restarts, each under a new sharer and connector (so each agent's backoff is at its first "+
			"step, 0..0.5 s, as after a restart that follows a stable minute): %s. Values, both back (ms): %v; "+
			"backoff draws (reconnects count delta) sharer/connector: %s; %s", len(iso), how, round2(iso.col(both)), iso.attempts(), baseNote(iso))})
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to both agents back, new agents each round, p90 of %d", len(iso)),
		Value: quantile(iso.col(both), .9), Unit: "ms",
		Note: fmt.Sprintf("min %.0f ms, max %.0f ms", quantile(iso.col(both), 0), quantile(iso.col(both), 1))})
	all := append(slices.Clone(iso), rep...)
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to its URL line, median of %d", len(all)),
		Value: median(all.col(func(s restartSample) float64 { return s.ready })), Unit: "ms",
		Note: "broker process start to its first stdout line, both series; part of every reconnect time above"})
	return nil
}

// upMemory runs `agent up` pairs, a sharer with N shares of the echo service
// and a connector with N connects to them, for N = 10 and 1 at once; after
// one connection through each forward and opsIdle, it reads their VmRSS.
func (w *world) upMemory(r *Report) error {
	type pair struct {
		n             int
		sharer, conn  *proc
		sdir, cdir    string
		listen        []string
		share, connRS int64
	}
	pairs := []*pair{{n: 10}, {n: 1}}
	for _, p := range pairs {
		var err error
		p.sdir, p.cdir = w.dir(fmt.Sprintf("up%d-sharer", p.n)), w.dir(fmt.Sprintf("up%d-connector", p.n))
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "broker: %q\nshares:\n", w.brokerURL)
		for i := range p.n {
			fmt.Fprintf(&cfg, "  - name: s%d\n    target: %q\n", i, w.echoAddr)
		}
		if p.sharer, err = w.upProc(p.sdir, cfg.String(), "--tickets"); err != nil {
			return err
		}
		tickets := map[string]string{}
		for len(tickets) < p.n {
			l, err := p.sharer.firstLine(w.ctx)
			if err != nil {
				return err
			}
			if name, t, ok := strings.Cut(l, " "); ok {
				tickets[name] = t
			}
		}
		cfg.Reset()
		fmt.Fprintf(&cfg, "broker: %q\nconnects:\n", w.brokerURL)
		for i := range p.n {
			fmt.Fprintf(&cfg, "  - ticket: %q\n    listen: \"127.0.0.1:0\"\n", tickets[fmt.Sprintf("s%d", i)])
		}
		if p.conn, err = w.upProc(p.cdir, cfg.String()); err != nil {
			return err
		}
	}
	for _, p := range pairs {
		// The listeners open at start; their addresses are in the status.
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := w.status(w.ctx, p.cdir)
			p.listen = p.listen[:0]
			if err == nil {
				for _, c := range st.Agents[0].Connects {
					if _, port, _ := net.SplitHostPort(c.Listen); port != "" && port != "0" {
						p.listen = append(p.listen, c.Listen)
					}
				}
			}
			if len(p.listen) == p.n {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("connector with %d connects: %d listeners after 30s (%v)\n%s", p.n, len(p.listen), err, p.conn.stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, a := range p.listen {
			if err := echoOnce(a); err != nil {
				return fmt.Errorf("echo through %s (%d forwards): %w\n%s", a, p.n, err, lastLine(p.conn.stderr.String()))
			}
		}
	}
	time.Sleep(opsIdle)
	for _, p := range pairs {
		var err error
		if p.share, err = rss(p.sharer.pid()); err != nil {
			return err
		}
		if p.connRS, err = rss(p.conn.pid()); err != nil {
			return err
		}
	}
	ten, one := pairs[0], pairs[1]
	note := fmt.Sprintf("VmRSS after one connection through each forward and %v idle; the sharer runs one `agent up` "+
		"with 10 shares of one echo service, the connector one `agent up` with 10 connects (tickets) to them, all over one "+
		"direct peer session; baseline: the same with 1 share and 1 connect, running at the same time", opsIdle)
	r.add(Figure{Part: opsPart, Name: "idle RSS, agent up with 10 connects", Value: mib(ten.connRS), Unit: "MiB",
		Baseline: mib(one.connRS), BaseName: "1 connect", Note: note})
	r.add(Figure{Part: opsPart, Name: "idle RSS, agent up with 10 shares", Value: mib(ten.share), Unit: "MiB",
		Baseline: mib(one.share), BaseName: "1 share", Note: note})
	for _, p := range pairs {
		p.sharer.stop()
		p.conn.stop()
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// upProc writes cfg as agent.yaml in dir (0600: it holds tickets) and runs
// `agent up` on it.
func (w *world) upProc(dir, cfg string, args ...string) (*proc, error) {
	path := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return w.start(filepath.Base(dir), nil, w.bin.agent, append([]string{"--state-dir", dir, "--log-level", "warn", "up", "-c", path}, args...)...)
}

// cutSection returns s without the section from begin to end (markers
// included), and that section with a trailing newline.
func cutSection(s, begin, end string) (rest, section string) {
	i := strings.Index(s, begin)
	if i < 0 {
		return s, ""
	}
	j := strings.Index(s[i:], end)
	if j < 0 {
		return s[:i], s[i:] + "\n" + end + "\n"
	}
	j += i + len(end)
	return s[:i] + strings.TrimLeft(s[j:], "\n"), s[i:j] + "\n"
}
