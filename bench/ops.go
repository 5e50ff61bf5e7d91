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

// reconnects kills and restarts the broker 10 times under a sharer
// and a connector with a working forward, and times each agent's return.
func (w *world) reconnects(r *Report, brokerArgs []string) error {
	const rounds = 10
	ctx := w.ctx
	share, ticket, err := w.share("rc-sharer", w.echoAddr)
	if err != nil {
		return err
	}
	con, addr, err := w.connect("rc-connector", ticket)
	if err != nil {
		return err
	}
	if err := echoOnce(addr); err != nil {
		return fmt.Errorf("first echo through the forward: %w\n%s", err, con.stderr.String())
	}
	dirs := []string{w.dir("rc-sharer"), w.dir("rc-connector")}
	var both, ready, login []float64
	per := [2][]float64{}
	for i := range rounds {
		before := [2]int{}
		for j, d := range dirs {
			// Both must be up before the kill, or the round would time a
			// reconnect that had started already.
			wctx, cancel := context.WithTimeout(ctx, opsRoundTimeout)
			_, _, err := w.waitBroker(wctx, d, -1)
			cancel()
			if err != nil {
				return err
			}
			if _, before[j], err = w.brokerState(ctx, d); err != nil {
				return err
			}
		}
		w.brokerProc.cmd.Process.Kill()
		<-w.brokerProc.done
		t0 := time.Now()
		if w.brokerProc, err = w.start("broker", nil, w.bin.broker, brokerArgs...); err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, opsRoundTimeout)
		var wg sync.WaitGroup
		var back [2]time.Time
		var errs [2]error
		for j, d := range dirs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				back[j], _, errs[j] = w.waitBroker(rctx, d, before[j])
			}()
		}
		url, uerr := w.brokerProc.firstLine(rctx)
		tReady := time.Since(t0)
		wg.Wait()
		cancel()
		if uerr != nil {
			return fmt.Errorf("round %d: restarted broker: %w", i+1, uerr)
		}
		if url != w.brokerURL {
			return fmt.Errorf("round %d: restarted broker has another URL %q, want %q", i+1, url, w.brokerURL)
		}
		if err := errors.Join(errs[:]...); err != nil {
			return fmt.Errorf("round %d: %w\nsharer: %s\nconnector: %s", i+1, err, lastLine(share.stderr.String()), lastLine(con.stderr.String()))
		}
		for j := range back {
			per[j] = append(per[j], ms(back[j].Sub(t0)))
		}
		both = append(both, ms(max(back[0].Sub(t0), back[1].Sub(t0))))
		ready = append(ready, ms(tReady))
		if err := echoOnce(addr); err != nil {
			return fmt.Errorf("round %d: new connection through the forward: %w\n%s", i+1, err, lastLine(con.stderr.String()))
		}
		// Baseline: one control handshake with a fresh identity against the
		// broker just restarted, process start included.
		t := time.Now()
		if _, err := runOut(ctx, 30*time.Second, nil, w.bin.agent, "--state-dir", w.dir(fmt.Sprintf("login-%d", i)), "login", w.brokerURL); err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		login = append(login, ms(time.Since(t)))
		fmt.Fprintf(os.Stderr, "  round %d: both back %.0f ms (sharer %.0f, connector %.0f), broker ready %.0f ms, login %.0f ms\n",
			i+1, both[i], per[0][i], per[1][i], ready[i], login[i])
	}
	note := fmt.Sprintf("%d rounds: SIGKILL the broker, restart it at once (same state dir and port), time from the restart "+
		"until `agent status --json` of both the sharer (`agent share`) and the connector (`agent connect`) shows brokers[0] "+
		"connected with a higher reconnects count (polled every %v, each poll a status process); a new connection "+
		"through the forward echoed after every round. Includes the agents' control backoff draw: full jitter, ceiling "+
		"0.5 s doubling per attempt up to 30 s, reset only after 1 min stable; rounds here are seconds apart, so the "+
		"ceiling keeps doubling from round to round (0.5, 1, 2, 4 s, ...), and later rounds time the backoff rather "+
		"than the handshake. Round 1 is the case of an isolated restart. Values, both back (ms): %v; sharer: %v; "+
		"connector: %v", rounds, opsPoll, round2(both), round2(per[0]), round2(per[1]))
	base := fmt.Sprintf("baseline: `agent login` with a fresh state dir against the restarted broker, one control "+
		"handshake, process start included, median of %d: %v ms", rounds, round2(login))
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to both agents reconnected, median of %d", rounds),
		Value: median(both), Unit: "ms", Baseline: median(login), BaseName: "fresh agent login",
		Note: note + "; " + base})
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to both agents reconnected, p90 of %d", rounds),
		Value: quantile(both, .9), Unit: "ms"})
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to both agents reconnected, min of %d", rounds),
		Value: quantile(both, 0), Unit: "ms"})
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to both agents reconnected, max of %d", rounds),
		Value: quantile(both, 1), Unit: "ms"})
	r.add(Figure{Part: opsPart, Name: "broker restart to both agents reconnected, round 1 (fresh backoff)",
		Value: both[0], Unit: "ms", Baseline: login[0], BaseName: "fresh agent login",
		Note: "the first restart, when the control backoff ceiling is 0.5 s, like a restart after 1 min stable"})
	r.add(Figure{Part: opsPart, Name: fmt.Sprintf("broker restart to its URL line, median of %d", rounds),
		Value: median(ready), Unit: "ms", Note: "process start to the first stdout line; part of the reconnect time"})
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

// Results: the ops figures live in their own marked section at the end of
// RESULTS.md, after the punch section, so other runs keep the last one.

const (
	opsBegin = "<!-- ops:begin -->"
	opsEnd   = "<!-- ops:end -->"
)

// saveAll writes the other figures through saveResults, then the ops
// section (this run's, else the one the file had) at the end.
func saveAll(path string, rep *Report) error {
	old, _ := os.ReadFile(path)
	_, prev := cutSection(string(old), opsBegin, opsEnd)
	rest, ops := *rep, *rep
	rest.Figures, ops.Figures = nil, nil
	for _, f := range rep.Figures {
		if f.Part == opsPart {
			ops.Figures = append(ops.Figures, f)
		} else {
			rest.Figures = append(rest.Figures, f)
		}
	}
	if err := saveResults(path, &rest); err != nil {
		return err
	}
	if len(ops.Figures) > 0 {
		prev = opsSection(&ops)
	}
	if prev == "" {
		return nil
	}
	cur, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s, _ := cutSection(string(cur), opsBegin, opsEnd)
	s = strings.TrimRight(s, "\n")
	if s != "" {
		s += "\n\n"
	}
	return os.WriteFile(path, []byte(s+prev), 0o644)
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

func opsSection(r *Report) string {
	var b strings.Builder
	m := r.Machine
	b.WriteString(opsBegin + "\n## Operations: broker restart, idle RSS of `agent up` (`go run ./bench -only ops`)\n\n")
	b.WriteString("Issue 6's closing-note figures, with the built binaries on 127.0.0.1; see bench/ops.go.\n" +
		"Written by the last run that included the ops part.\n\n")
	fmt.Fprintf(&b, "- date: %s\n- machine: %d CPUs, %s, kernel %s\n- go: %s\n\n", r.Date, m.CPUs, m.CPU, m.Kernel, m.Go)
	b.WriteString("| part | figure | value | baseline (same run) | ratio | target |\n|---|---|---|---|---|---|\n")
	for _, f := range r.Figures {
		base, ratio := "-", "-"
		if f.Baseline != 0 {
			base = fmt.Sprintf("%.4g %s (%s)", f.Baseline, f.Unit, f.BaseName)
			ratio = fmt.Sprintf("%.2fx", f.Ratio)
		}
		fmt.Fprintf(&b, "| %s | %s | %.4g %s | %s | %s | %s |\n", f.Part, f.Name, f.Value, f.Unit, base, ratio, f.Target)
	}
	b.WriteString("\nNotes:\n\n")
	for _, f := range r.Figures {
		if f.Note != "" {
			fmt.Fprintf(&b, "- %s: %s\n", f.Name, f.Note)
		}
	}
	js, _ := json.MarshalIndent(r, "", "  ")
	fmt.Fprintf(&b, "\n```json\n%s\n```\n%s\n", js, opsEnd)
	return b.String()
}
