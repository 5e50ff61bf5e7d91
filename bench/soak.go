package main

// bench soak: for a bounded time, many concurrent sha256-checked transfers
// through a punched (direct) pair and a relayed pair in the NAT lab, with
// real broker and agent processes, while a driver injects faults. A
// transfer either arrives intact or its application sees an error; one
// that ends cleanly (EOF) with short or wrong data is "silently wrong", and
// must never happen. At the end it checks that the agents are back where
// they started: no open streams, no more goroutines or fds than before the
// traffic.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

type soakOptions struct {
	duration   time.Duration
	faultEvery time.Duration
	workers    int // per pair
	maxSize    int
	seed       uint64
	faults     []string
}

// Fault kinds, in the order the driver cycles through them.
const (
	faultBroker    = "broker SIGKILL+restart"
	faultSharer    = "sharer SIGKILL+restart"
	faultBlackhole = "blackhole gw-a 4s"
	faultConntrack = "conntrack flush"
	faultLoss      = "5% loss gw-b 8s"
	faultDup       = "duplicate connector 8s"
)

var allFaults = []string{faultBroker, faultSharer, faultBlackhole, faultConntrack, faultLoss, faultDup}

// Outcomes of one transfer.
const (
	outOK    = "ok"
	outError = "failed with error"
	outWrong = "SILENTLY WRONG"
)

// soakMain is `bench soak`; it returns the exit code.
func soakMain(args []string) int {
	fs := flag.NewFlagSet("soak", flag.ExitOnError)
	var o soakOptions
	var faults string
	fs.DurationVar(&o.duration, "duration", time.Minute, "how long traffic runs (and faults are injected)")
	fs.DurationVar(&o.faultEvery, "fault-every", 8*time.Second, "pause between two faults")
	fs.IntVar(&o.workers, "workers", 4, "concurrent transfers per pair (direct, relayed)")
	fs.IntVar(&o.maxSize, "max-size", 4<<20, "largest transfer in bytes (sizes are log-uniform from 1 KiB)")
	fs.Uint64Var(&o.seed, "seed", uint64(time.Now().UnixNano()), "random seed (sizes, directions)")
	fs.StringVar(&faults, "faults", "all", "comma list of faults: broker,sharer,blackhole,conntrack,loss,dup, or all, or none")
	fs.Parse(args)
	var err error
	if o.faults, err = parseFaults(faults); err != nil {
		fmt.Fprintln(os.Stderr, "bench soak:", err)
		return 2
	}
	if err := natlab.Available(); err != nil {
		fmt.Fprintln(os.Stderr, "bench soak needs the NAT lab:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench soak:", err)
		return 2
	}
	tmp, err := os.MkdirTemp("", "peerport-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench soak:", err)
		return 2
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintln(os.Stderr, "building agent and broker (no -race)...")
	bin, err := build(ctx, root, filepath.Join(tmp, "bin"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench soak:", err)
		return 2
	}
	res, err := runSoak(ctx, bin, tmp, o, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench soak:", err)
		return 2
	}
	res.print(os.Stdout)
	if res.failed() {
		return 1
	}
	return 0
}

func parseFaults(s string) ([]string, error) {
	switch s {
	case "all":
		return allFaults, nil
	case "none", "":
		return nil, nil
	}
	names := map[string]string{"broker": faultBroker, "sharer": faultSharer, "blackhole": faultBlackhole,
		"conntrack": faultConntrack, "loss": faultLoss, "dup": faultDup}
	var out []string
	for _, f := range strings.Split(s, ",") {
		k, ok := names[strings.TrimSpace(f)]
		if !ok {
			return nil, fmt.Errorf("-faults: unknown fault %q", f)
		}
		out = append(out, k)
	}
	return out, nil
}

// soakResult is what a soak found.
type soakResult struct {
	Duration  time.Duration
	Transfers map[string]map[string]int // pair -> outcome -> count
	Bytes     int64                     // delivered intact
	Faults    map[string]int
	FaultErrs []string
	Errors    map[string]int // failed transfers by what the application saw
	Wrong     []string       // one line per silently wrong transfer (first 20)
	Leaks     []soakLeak
}

// soakLeak is one agent process's state after the traffic, against its
// baseline before it.
type soakLeak struct {
	Agent                      string
	Streams, PeerStreams       int
	Goroutines, GoroutinesBase int
	FDs, FDsBase               int
	// NewFDs and GoneFDs name, when there are more fds than at the
	// baseline, what the fds not there then point to and what the
	// baseline's that went pointed to (a socket by its /proc/net line).
	NewFDs, GoneFDs []string
	Note            string
	// Restarted: the process is not the one the baseline was taken of.
	// An idle agent's goroutines vary by some 8 with what its sessions
	// are doing (27 or 35 for the same sharer), so only streams count.
	Restarted bool
	// Stacks groups the goroutines of an agent that kept more than its
	// baseline, from its SIGQUIT dump at the end: "count  function".
	Stacks []string
	// Log is the end of a leaking agent's log about its peer sessions
	// and paths: what it was doing when the soak stopped.
	Log []string
}

func (l soakLeak) leaked() bool {
	if l.Streams != 0 || l.PeerStreams != 0 {
		return true
	}
	return !l.Restarted && (l.Goroutines > l.GoroutinesBase || l.FDs > l.FDsBase)
}

func (r *soakResult) wrong() int {
	n := 0
	for _, m := range r.Transfers {
		n += m[outWrong]
	}
	return n
}

func (r *soakResult) leaks() int {
	n := 0
	for _, l := range r.Leaks {
		if l.leaked() {
			n++
		}
	}
	return n
}

func (r *soakResult) failed() bool { return r.wrong() > 0 || r.leaks() > 0 }

func (r *soakResult) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "soak, %v of traffic\n\n", r.Duration.Round(time.Second))
	fmt.Fprintf(tw, "pair\t%s\t%s\t%s\n", outOK, outError, outWrong)
	for _, p := range []string{pathDirect, pathRelay} {
		m := r.Transfers[p]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", p, m[outOK], m[outError], m[outWrong])
	}
	fmt.Fprintf(tw, "\t%.1f MiB delivered intact\t\t\n\n", float64(r.Bytes)/(1<<20))
	fmt.Fprintf(tw, "fault\tinjected\t\n")
	for _, f := range allFaults {
		if r.Faults[f] > 0 {
			fmt.Fprintf(tw, "%s\t%d\t\n", f, r.Faults[f])
		}
	}
	fmt.Fprintf(tw, "\nagent\tstreams\tpeer streams\tgoroutines (before)\tfds (before)\tleak\n")
	for _, l := range r.Leaks {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d (%d)\t%d (%d)\t%v\n", l.Agent, l.Streams, l.PeerStreams, l.Goroutines, l.GoroutinesBase, l.FDs, l.FDsBase, l.leaked())
	}
	tw.Flush()
	for _, l := range r.Leaks {
		if l.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", l.Agent, l.Note)
		}
	}
	for _, l := range r.Leaks {
		if len(l.Log) > 0 {
			fmt.Fprintf(w, "\nlast session and path log lines of %s:\n", l.Agent)
			for _, s := range l.Log {
				fmt.Fprintf(w, "  %s\n", s)
			}
		}
	}
	for _, l := range r.Leaks {
		if len(l.Stacks) > 0 {
			fmt.Fprintf(w, "\ngoroutines of %s at the end (SIGQUIT dump, by function):\n", l.Agent)
			for _, s := range l.Stacks {
				fmt.Fprintf(w, "  %s\n", s)
			}
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(w, "\nerrors the applications saw:")
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  %5d  %s\n", r.Errors[k], k)
		}
	}
	for _, s := range r.Wrong {
		fmt.Fprintln(w, "  wrong:", s)
	}
	for _, s := range r.FaultErrs {
		fmt.Fprintln(w, "  fault error:", s)
	}
	fmt.Fprintf(w, "\nsilently wrong transfers: %d, leaking agents: %d\n", r.wrong(), r.leaks())
}

// Fixed ports inside the lab hosts.
const (
	soakBrokerPort                                  = 7000
	soakSharerMetrics, soakDirectMetrics, soakRelay = 9101, 9102, 9103
	soakDirectListen, soakRelayListen, soakDupPort  = 15301, 15302, 15311
)

// soakLab is the lab and the processes of a soak.
type soakLab struct {
	ctx  context.Context
	bin  binaries
	tmp  string
	lab  *natlab.Lab
	logw io.Writer

	mu       sync.Mutex
	broker   *natlab.Proc
	sharer   *natlab.Proc
	conns    map[string]*natlab.Proc // by path
	url      string
	ticket   string
	sinkAddr string
}

func (l *soakLab) dir(name string) string {
	d := filepath.Join(l.tmp, name)
	os.MkdirAll(d, 0o700)
	return d
}

func (l *soakLab) line(p *natlab.Proc, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(l.ctx, d)
	defer cancel()
	s, err := p.ReadLine(ctx)
	if err != nil {
		return "", fmt.Errorf("%s: %w\n%s", p, err, p.Stderr())
	}
	return s, nil
}

func (l *soakLab) startBroker() error {
	br := l.lab.Host("broker")
	p, err := br.StartCommand(l.ctx, natlab.Command{Path: l.bin.broker, Args: []string{"--state-dir", l.dir("broker"),
		"--public-addr", br.IP().String(), "--listen", ":" + strconv.Itoa(soakBrokerPort), "--log-level", "warn"}})
	if err != nil {
		return err
	}
	url, err := l.line(p, 30*time.Second)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.broker, l.url = p, url
	l.mu.Unlock()
	return nil
}

// startSharer runs `agent up` on host a with the sink share; its ticket is
// kept across restarts.
func (l *soakLab) startSharer() error {
	dir := l.dir("sharer")
	cfg := fmt.Sprintf("metrics_listen: 127.0.0.1:%d\nlog: {level: warn}\nshares:\n  - name: sink\n    target: %s\n", soakSharerMetrics, l.sinkAddr)
	file := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		return err
	}
	p, err := l.lab.Host("a").StartCommand(l.ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", dir, "up", "-c", file, "--tickets"}})
	if err != nil {
		return err
	}
	s, err := l.line(p, 30*time.Second)
	if err != nil {
		return err
	}
	_, tk, ok := strings.Cut(s, " ")
	if !ok {
		return fmt.Errorf("sharer printed %q, not NAME TICKET", s)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ticket != "" && tk != l.ticket {
		return errors.New("sharer's ticket changed across a restart")
	}
	l.sharer, l.ticket = p, tk
	return nil
}

// startConnector runs `agent up` on host b with one connect on path.
func (l *soakLab) startConnector(path string) error {
	metrics, listen := soakDirectMetrics, soakDirectListen
	if path == pathRelay {
		metrics, listen = soakRelay, soakRelayListen
	}
	dir := l.dir("connector-" + path)
	cfg := fmt.Sprintf("metrics_listen: 127.0.0.1:%d\nlog: {level: warn}\nconnects:\n  - ticket: %s\n    listen: 127.0.0.1:%d\n    path: %s\n",
		metrics, l.ticket, listen, path)
	file := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		return err
	}
	p, err := l.lab.Host("b").StartCommand(l.ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", dir, "up", "-c", file}})
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.conns[path] = p
	l.mu.Unlock()
	return nil
}

// soakStatus is the part of `agent status --json` the soak reads.
type soakStatus struct {
	Agents []struct {
		PID    int `json:"pid"`
		Shares []struct {
			Streams int `json:"streams"`
		} `json:"shares"`
		Connects []struct {
			Streams    int    `json:"streams"`
			Path       string `json:"path"`
			Reconnects int    `json:"reconnects"`
		} `json:"connects"`
		Peers []struct {
			Streams int    `json:"streams"`
			Path    string `json:"path"`
		} `json:"peers"`
	} `json:"agents"`
}

func (l *soakLab) status(name string) (soakStatus, error) {
	var st soakStatus
	out, err := runOut(l.ctx, 10*time.Second, nil, l.bin.agent, "--state-dir", l.dir(name), "status", "--json")
	if err != nil {
		return st, err
	}
	err = json.Unmarshal(out, &st)
	return st, err
}

// streams is the open streams of the state dir's agents: by forward and
// share, and by peer session.
func (st soakStatus) streams() (streams, peer int) {
	for _, a := range st.Agents {
		for _, s := range a.Shares {
			streams += s.Streams
		}
		for _, c := range a.Connects {
			streams += c.Streams
		}
		for _, p := range a.Peers {
			peer += p.Streams
		}
	}
	return streams, peer
}

func (st soakStatus) reconnects() int {
	n := 0
	for _, a := range st.Agents {
		for _, c := range a.Connects {
			n += c.Reconnects
		}
	}
	return n
}

// gauges reads go_goroutines from an agent's /metrics inside its host, and
// counts its fds in /proc.
func (l *soakLab) gauges(host string, port, pid int) (goroutines, fds int, err error) {
	node := l.lab.Host(host)
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return node.Dial(ctx, network, addr)
		},
	}}
	defer cl.CloseIdleConnections()
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	goroutines = -1
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			goroutines = int(f)
		}
	}
	if goroutines < 0 {
		return 0, 0, errors.New("no go_goroutines in /metrics")
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, 0, err
	}
	return goroutines, len(ents), nil
}

// fdTargets lists what a process's fds point to; a socket is named by its
// line in /proc/PID/net (protocol, local and remote address in hex, state).
func fdTargets(pid int) []string {
	sockets := map[string]string{}
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, proto))
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 9 {
				sockets["socket:["+f[9]+"]"] = fmt.Sprintf("%s %s->%s st %s", proto, f[1], f[2], f[3])
			}
		}
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if t, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			if s, ok := sockets[t]; ok {
				t = s
			}
			out = append(out, t)
		}
	}
	return out
}

// newFDs is now without one of each target in base.
func newFDs(base, now []string) []string {
	left := map[string]int{}
	for _, t := range base {
		left[t]++
	}
	var out []string
	for _, t := range now {
		if left[t] > 0 {
			left[t]--
			continue
		}
		out = append(out, t)
	}
	return out
}

// soakAgents are the agent processes whose leaks are checked.
var soakAgents = []struct{ name, host, path string }{
	{"sharer", "a", ""},
	{"connector-" + pathDirect, "b", pathDirect},
	{"connector-" + pathRelay, "b", pathRelay},
}

func (l *soakLab) agentProc(name string) (*natlab.Proc, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch name {
	case "sharer":
		return l.sharer, soakSharerMetrics
	case "connector-" + pathDirect:
		return l.conns[pathDirect], soakDirectMetrics
	default:
		return l.conns[pathRelay], soakRelay
	}
}

// runSoak builds the lab, runs the traffic and the faults for o.duration,
// then measures what is left. log gets progress lines.
func runSoak(ctx context.Context, bin binaries, tmp string, o soakOptions, log io.Writer) (*soakResult, error) {
	ctx, cancel := context.WithTimeout(ctx, o.duration+5*time.Minute)
	defer cancel()
	topo := natlab.Pair(natlab.BehindCone, natlab.BehindCone)
	topo.Name = "soak"
	topo, err := topo.WithLink("gw-b", natlab.LinkConfig{})
	if err != nil {
		return nil, err
	}
	bctx, bcancel := context.WithTimeout(ctx, 60*time.Second)
	lab, err := natlab.Build(bctx, topo)
	bcancel()
	if err != nil {
		return nil, err
	}
	defer lab.Close()
	l := &soakLab{ctx: ctx, bin: bin, tmp: filepath.Join(tmp, "soak"), lab: lab, logw: log, conns: map[string]*natlab.Proc{}}

	sink, err := newSoakSink(lab.Host("a"))
	if err != nil {
		return nil, err
	}
	defer sink.close()
	l.sinkAddr = sink.ln.Addr().String()
	if err := l.startBroker(); err != nil {
		return nil, err
	}
	if out, err := lab.Host("a").RunCommand(ctx, natlab.Command{Path: bin.agent, Args: []string{"--state-dir", l.dir("sharer"), "login", l.url}}); err != nil {
		return nil, fmt.Errorf("login: %w\n%s", err, out)
	}
	if err := l.startSharer(); err != nil {
		return nil, err
	}
	for _, p := range []string{pathDirect, pathRelay} {
		if err := l.startConnector(p); err != nil {
			return nil, err
		}
	}
	rng := rand.New(rand.NewPCG(o.seed, 0x50a4))
	tr := &soakTraffic{b: lab.Host("b"), sink: sink, maxSize: o.maxSize}
	tr.reset()
	// Up: one intact transfer through each pair, then the baseline.
	for _, p := range []string{pathDirect, pathRelay} {
		deadline := time.Now().Add(60 * time.Second)
		for {
			out, detail := tr.transfer(ctx, p, 'd', 1024, 1)
			if out == outOK {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("pair %s never carried a transfer: %s", p, detail)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	tr.reset()
	time.Sleep(2 * time.Second)
	base := map[string][2]int{}
	baseFDs := map[string][]string{}
	for _, a := range soakAgents {
		p, port := l.agentProc(a.name)
		g, f, err := l.gauges(a.host, port, p.Pid())
		if err != nil {
			return nil, fmt.Errorf("baseline of %s: %w", a.name, err)
		}
		base[a.name] = [2]int{g, f}
		baseFDs[a.name] = fdTargets(p.Pid())
	}
	fmt.Fprintf(log, "soak: pairs up, baseline %v; traffic for %v, %d workers per pair, faults %v\n", base, o.duration, o.workers, o.faults)

	res := &soakResult{Duration: o.duration, Faults: map[string]int{}}
	tctx, tcancel := context.WithTimeout(ctx, o.duration)
	defer tcancel()
	var wg sync.WaitGroup
	for _, p := range []string{pathDirect, pathRelay} {
		for i := range o.workers {
			wseed := rng.Uint64()
			wg.Add(1)
			go func() {
				defer wg.Done()
				tr.worker(tctx, p, rand.New(rand.NewPCG(wseed, uint64(i))))
			}()
		}
	}
	var fwg sync.WaitGroup
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		l.driveFaults(tctx, o, res, log)
	}()
	fwg.Wait()
	wg.Wait()
	// Faults end with the traffic; the last one is undone before this.
	sink.wait(soakTransferTimeout)
	tr.reconcile()
	tr.mu.Lock()
	res.Transfers, res.Bytes, res.Errors, res.Wrong = tr.results, tr.bytes, tr.errs, tr.wrong
	tr.mu.Unlock()
	fmt.Fprintf(log, "soak: traffic stopped: %v; waiting for the agents to settle\n", res.Transfers)

	// Leaks: wait up to 30 s for streams to close and gauges to come back.
	settle := time.Now().Add(30 * time.Second)
	for _, a := range soakAgents {
		var lk soakLeak
		for {
			lk = soakLeak{Agent: a.name, GoroutinesBase: base[a.name][0], FDsBase: base[a.name][1]}
			st, err := l.status(a.name)
			if err != nil {
				lk.Note = "status: " + err.Error()
			}
			lk.Streams, lk.PeerStreams = st.streams()
			p, port := l.agentProc(a.name)
			g, f, gerr := l.gauges(a.host, port, p.Pid())
			if gerr != nil {
				lk.Note = "gauges: " + gerr.Error()
			}
			lk.Goroutines, lk.FDs = g, f
			if (!lk.leaked() && err == nil && gerr == nil) || time.Now().After(settle) {
				break
			}
			time.Sleep(time.Second)
		}
		if lk.FDs > lk.FDsBase {
			p, _ := l.agentProc(a.name)
			now := fdTargets(p.Pid())
			lk.NewFDs, lk.GoneFDs = newFDs(baseFDs[a.name], now), newFDs(now, baseFDs[a.name])
		}
		if a.name == "sharer" && res.Faults[faultSharer] > 0 {
			lk.Restarted = true
			lk.Note = strings.TrimSpace(lk.Note + " restarted during the soak: the baseline is its first process's, so only its streams count")
		}
		res.Leaks = append(res.Leaks, lk)
	}
	// Only once all are measured: a dump ends the agent, and its peers with
	// it would change.
	for i, lk := range res.Leaks {
		if lk.Goroutines > lk.GoroutinesBase {
			p, _ := l.agentProc(lk.Agent)
			res.Leaks[i].Log = sessionLog(p.Stderr(), 25)
			res.Leaks[i].Stacks = goroutineGroups(l.ctx, p)
		}
	}
	return res, nil
}

// driveFaults injects one fault every o.faultEvery, cycling through
// o.faults, until ctx is done; each fault is undone before the next.
func (l *soakLab) driveFaults(ctx context.Context, o soakOptions, res *soakResult, log io.Writer) {
	if len(o.faults) == 0 {
		<-ctx.Done()
		return
	}
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(o.faultEvery):
		}
		kind := o.faults[i%len(o.faults)]
		fmt.Fprintf(log, "soak: fault %s\n", kind)
		// A fault is undone on l.ctx, not ctx: traffic may end while it runs.
		if err := l.inject(kind, i); err != nil {
			res.FaultErrs = append(res.FaultErrs, kind+": "+err.Error())
			fmt.Fprintf(log, "soak: fault %s: %v\n", kind, err)
		}
		res.Faults[kind]++
	}
}

func (l *soakLab) inject(kind string, round int) error {
	ctx := l.ctx
	pause := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	switch kind {
	case faultBroker:
		l.mu.Lock()
		p := l.broker
		l.mu.Unlock()
		if err := kill(ctx, p); err != nil {
			return err
		}
		pause(time.Second)
		return l.startBroker()
	case faultSharer:
		l.mu.Lock()
		p := l.sharer
		l.mu.Unlock()
		if err := kill(ctx, p); err != nil {
			return err
		}
		pause(time.Second)
		return l.startSharer()
	case faultBlackhole:
		gw := l.lab.Router("gw-a")
		if _, err := gw.Run(ctx, "nft", "add", "table", "inet", "soak_blackhole"); err != nil {
			return err
		}
		defer gw.Run(ctx, "nft", "delete", "table", "inet", "soak_blackhole")
		if _, err := gw.Run(ctx, "nft", "add chain inet soak_blackhole drop_all { type filter hook forward priority -400 ; policy drop ; }"); err != nil {
			return err
		}
		pause(4 * time.Second)
		return nil
	case faultConntrack:
		return l.lab.FlushConntrack(ctx, []string{"gw-a", "gw-b"}[round%2])
	case faultLoss:
		link := l.lab.Link("gw-b")
		if link == nil {
			return errors.New("no link on gw-b")
		}
		link.SetLoss(0.05)
		pause(8 * time.Second)
		link.ResetLoss()
		return nil
	case faultDup:
		before, _ := l.status("connector-" + pathDirect)
		p, err := l.lab.Host("b").StartCommand(ctx, natlab.Command{Path: l.bin.agent, Args: []string{"--state-dir", l.dir("connector-" + pathDirect),
			"connect", l.ticket, "--path", pathDirect, "--listen", "127.0.0.1:" + strconv.Itoa(soakDupPort)}})
		if err != nil {
			return err
		}
		pause(8 * time.Second)
		p.Stop()
		after, _ := l.status("connector-" + pathDirect)
		if n := after.reconnects() - before.reconnects(); n > 0 {
			return fmt.Errorf("the first connector re-made its peer session %d times while the duplicate ran", n)
		}
		return nil
	}
	return fmt.Errorf("unknown fault %q", kind)
}

// sessionLog is the last n lines of an agent's log from the components
// that keep peer sessions on their paths.
func sessionLog(log string, n int) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		for _, c := range []string{"component=peer", "component=resume", "component=relay", "component=punch"} {
			if strings.Contains(line, c) {
				out = append(out, line)
				break
			}
		}
	}
	return out[max(0, len(out)-n):]
}

// goroutineGroups ends an agent with SIGQUIT (the Go runtime then prints
// every goroutine's stack and exits) once the soak is over, and counts its
// goroutines by the function each one is parked in, outside the runtime,
// so a leak shows where it sits. Largest groups first.
func goroutineGroups(ctx context.Context, p *natlab.Proc) []string {
	mark := len(p.Stderr())
	if err := p.Signal(syscall.SIGQUIT); err != nil {
		return []string{"SIGQUIT: " + err.Error()}
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p.Wait(wctx) // it exits 2 after the dump
	dump := p.Stderr()
	if len(dump) < mark {
		return nil
	}
	return goroutineCounts(dump[mark:])
}

// goroutineCounts reads a Go traceback of all goroutines.
func goroutineCounts(dump string) []string {
	counts := map[string]int{}
	var cur string // function of the goroutine being read, "" once counted
	inG := false
	for _, line := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(line, "goroutine 0 "): // a scheduler stack, not a goroutine
			inG = false
		case strings.HasPrefix(line, "goroutine ") && strings.HasSuffix(line, ":"):
			inG, cur = true, ""
		case !inG || strings.HasPrefix(line, "\t"):
		case line == "":
			if cur != "" {
				counts[cur]++
			}
			inG = false
		case cur == "" || plumbing(cur):
			// the first frame outside the runtime and the standard library's plumbing
			if i := strings.LastIndex(line, "("); i > 0 {
				cur = line[:i]
			} else {
				cur = line
			}
		}
	}
	if inG && cur != "" {
		counts[cur]++
	}
	if len(counts) == 0 {
		return []string{"no goroutine dump on stderr (capture full?)"}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if counts[keys[i]] != counts[keys[j]] {
			return counts[keys[i]] > counts[keys[j]]
		}
		return keys[i] < keys[j]
	})
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%4d  %s", counts[k], k))
	}
	return out
}

// plumbing says whether a frame's function is one every parked goroutine
// passes through (so it names no owner).
func plumbing(fn string) bool {
	for _, p := range []string{"runtime.", "sync.", "internal/", "net.", "io.", "bufio.", "os.", "time.", "crypto/tls."} {
		if strings.HasPrefix(fn, p) {
			return true
		}
	}
	return false
}

func kill(ctx context.Context, p *natlab.Proc) error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p.Wait(wctx) // killed: its exit error is expected
	return nil
}

// The transfer protocol between the soak's client (on host b, through a
// connector) and its sink (on host a, behind the sharer): a header of
// direction, id, size and seed, then size bytes of a stream seeded by seed,
// one way. 'u': the client sends them and half-closes, the sink checks
// them and answers 'K'. 'd': the sink sends them and closes, the client
// checks them.
const soakHeader = 1 + 8 + 8 + 8

// soakTransferTimeout bounds one transfer: a fault holds a path up for a
// few seconds, a reconnect a few more.
const soakTransferTimeout = 90 * time.Second

func soakStream(seed uint64) io.Reader {
	var s [32]byte
	binary.BigEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

func soakSum(seed uint64, size int) [32]byte {
	h := sha256.New()
	io.CopyN(h, soakStream(seed), int64(size))
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// soakSink is the service behind the sharer. Uploads are judged here: it
// records each one's outcome by id.
type soakSink struct {
	ln  net.Listener
	wg  sync.WaitGroup
	mu  sync.Mutex
	got map[uint64]string // upload id -> outcome
	why map[uint64]string
}

func newSoakSink(a *natlab.Node) (*soakSink, error) {
	ln, err := a.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &soakSink{ln: ln, got: map[uint64]string{}, why: map[uint64]string{}}
	go s.serve()
	return s, nil
}

func (s *soakSink) close() { s.ln.Close() }

// wait waits for the connections being served, at most d.
func (s *soakSink) wait(d time.Duration) {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

func (s *soakSink) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.handle(c)
		}()
	}
}

func (s *soakSink) handle(c net.Conn) {
	c.SetDeadline(time.Now().Add(soakTransferTimeout))
	var h [soakHeader]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return // the client sees this as an error
	}
	id, size, seed := binary.BigEndian.Uint64(h[1:9]), int(binary.BigEndian.Uint64(h[9:17])), binary.BigEndian.Uint64(h[17:25])
	if h[0] == 'd' {
		io.CopyN(c, soakStream(seed), int64(size))
		return
	}
	out, why := judge(c, size, seed)
	s.mu.Lock()
	s.got[id], s.why[id] = out, why
	s.mu.Unlock()
	if out == outOK {
		c.Write([]byte{'K'})
	}
}

func (s *soakSink) verdict(id uint64) (string, string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.got[id]
	return o, s.why[id], ok
}

// judge reads r to its end as the receiving application would and says
// what it got: intact, an error, or a clean end with the wrong bytes.
func judge(r io.Reader, size int, seed uint64) (outcome, detail string) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return outError, errClass(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	switch {
	case int(n) != size:
		return outWrong, fmt.Sprintf("clean EOF after %d of %d bytes", n, size)
	case sum != soakSum(seed, size):
		return outWrong, fmt.Sprintf("clean EOF, %d bytes, sha256 differs", n)
	}
	return outOK, ""
}

// errClass names an error the way an application sees it, for counting.
func errClass(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return "EOF before the answer"
	}
	return err.Error()
}

// soakTraffic runs transfers from host b and counts their outcomes.
type soakTraffic struct {
	b       *natlab.Node
	sink    *soakSink
	maxSize int
	nextID  uint64

	mu      sync.Mutex
	results map[string]map[string]int
	noVerd  map[uint64]string // uploads counted as errors before the sink judged them: id -> path
	bytes   int64
	errs    map[string]int
	wrong   []string
}

func (t *soakTraffic) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.results, t.bytes, t.errs, t.wrong, t.noVerd = map[string]map[string]int{}, 0, map[string]int{}, nil, map[uint64]string{}
}

// reconcile recounts uploads the client gave up on before the sink judged
// them: one the sink later found cut short at a clean EOF is wrong.
func (t *soakTraffic) reconcile() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, path := range t.noVerd {
		if out, why, ok := t.sink.verdict(id); ok && out == outWrong {
			t.results[path][outError]--
			t.results[path][outWrong]++
			if len(t.wrong) < 20 {
				t.wrong = append(t.wrong, fmt.Sprintf("%s u (judged late): %s", path, why))
			}
		}
	}
}

func (t *soakTraffic) worker(ctx context.Context, path string, rng *rand.Rand) {
	for ctx.Err() == nil {
		// Log-uniform from 1 KiB to maxSize: many small, some large.
		size := int(math.Exp(rng.Float64()*(math.Log(float64(t.maxSize))-math.Log(1024)) + math.Log(1024)))
		dir := byte('d')
		if rng.IntN(2) == 0 {
			dir = 'u'
		}
		out, detail := t.transfer(ctx, path, dir, size, rng.Uint64())
		if out == outError && ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond) // a path being re-made: do not spin
		}
		_ = detail
	}
}

// transfer runs one transfer through the connector of path and records
// its outcome.
func (t *soakTraffic) transfer(ctx context.Context, path string, dir byte, size int, seed uint64) (string, string) {
	t.mu.Lock()
	t.nextID++
	id := t.nextID
	t.mu.Unlock()
	out, detail := t.run(path, id, dir, size, seed)
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, _, ok := t.sink.verdict(id); dir == 'u' && out == outError && !ok {
		t.noVerd[id] = path
	}
	m := t.results[path]
	if m == nil {
		m = map[string]int{}
		t.results[path] = m
	}
	m[out]++
	switch out {
	case outOK:
		t.bytes += int64(size)
	case outError:
		t.errs[path+": "+detail]++
	case outWrong:
		if len(t.wrong) < 20 {
			t.wrong = append(t.wrong, fmt.Sprintf("%s %c %d bytes: %s", path, dir, size, detail))
		}
	}
	return out, detail
}

func (t *soakTraffic) run(path string, id uint64, dir byte, size int, seed uint64) (string, string) {
	port := soakDirectListen
	if path == pathRelay {
		port = soakRelayListen
	}
	// Not ctx: a transfer under way when the traffic stops runs to its end.
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := t.b.Dial(dctx, "tcp", "127.0.0.1:"+strconv.Itoa(port))
	cancel()
	if err != nil {
		return outError, "dial: " + errClass(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(soakTransferTimeout))
	var h [soakHeader]byte
	h[0] = dir
	binary.BigEndian.PutUint64(h[1:9], id)
	binary.BigEndian.PutUint64(h[9:17], uint64(size))
	binary.BigEndian.PutUint64(h[17:25], seed)
	if _, err := c.Write(h[:]); err != nil {
		return outError, "write: " + errClass(err)
	}
	if dir == 'd' {
		out, why := judge(c, size, seed)
		if out == outError {
			why = "read: " + why
		}
		return out, why
	}
	// Upload: the sink judges; the client's own error only counts when the
	// sink never got as far as a verdict.
	_, werr := io.CopyN(c, soakStream(seed), int64(size))
	var ack [1]byte
	var rerr error
	if werr == nil {
		c.(*net.TCPConn).CloseWrite()
		_, rerr = io.ReadFull(c, ack[:])
	}
	c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if out, why, ok := t.sink.verdict(id); ok {
			return out, why
		}
		if time.Now().After(deadline) {
			break
		}
	}
	switch {
	case werr != nil:
		return outError, "write: " + errClass(werr)
	case rerr != nil:
		return outError, "ack: " + errClass(rerr)
	}
	return outError, "acknowledged, but the sink has no verdict"
}
