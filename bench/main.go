// Command bench measures peerport end to end and prints every figure beside
// a baseline measured in the same run (raw TCP on the same path), as a ratio:
// these machines are noisy, and only ratios travel (DESIGN §7).
//
//	go run ./bench                 # loopback, everything (~3 min)
//	go run ./bench -only throughput,latency -rounds 5
//	sudo go run ./bench -only punch  # hole punching in the NAT lab (root)
//	sudo go run ./bench -only wan    # tunnel vs raw TCP over the lab's WAN link at 0/20/50 ms
//	sudo go run ./bench -only portmap  # port mappings (miniupnpd) and IPv6 behind symmetric NATs: direct share before/after (bench/portmap.go)
//	sudo go run ./bench -only relaycost  # the broker's CPU per relayed GB and RSS per relayed pair, TURN and broker relay, beside a direct pair (bench/relaycost.go)
//	sudo go run ./bench -lab         # all NAT-lab parts: punch, relay, relaycost, wan, path, portmap
//	PEERPORT_BENCH_FRP=/work/frp go run ./bench -only frp  # frp (frps+frpc, TLS, tcpMux) as the baseline: throughput, CPU per GB at 1-16 streams, round trips, idle connections (bench/frp.go)
//	go run ./bench -only hol         # head-of-line: 50 small request/response streams through one session, alone and beside a bulk stream (bench/hol.go)
//	go run ./bench -only memback     # memory that comes back: RSS after iperf3 -P 8 through a fresh pair, for a minute (bench/memback.go)
//	go run ./bench -only throughput -cpuprofile-dir /tmp/prof  # plus CPU profiles of 1 and 8 streams alone (bench/profile.go)
//	go run ./bench -only ops         # broker restarts, idle RSS of agent up (bench/ops.go)
//	go run ./bench -only cluster     # one broker vs three nodes over NATS: introductions, memory, NATS traffic, re-homing (bench/cluster.go)
//	sudo go run ./bench soak -duration 10m  # transfers under faults in the NAT lab (bench/soak.go)
//
// It builds the agent and broker (no -race), runs a broker, sharers and
// connectors as separate processes on 127.0.0.1, drives them with iperf3 and
// its own sockets, prints a table and JSON, and writes bench/RESULTS.md
// (keeping its hand-written history section, see report.go). Part latency
// also times two plain relay processes, the floor of any two-process
// tunnel; part mux also runs the mux package's Go benchmarks (bare session
// beside TLS alone and raw TCP, bench/session.go).
// Everything is bounded in count and time and talks only to loopback, or
// inside the NAT lab (parts punch, relay, wan and portmap, bench/punch.go,
// relay.go, wan.go, portmap.go: by default only where the lab can run, i.e.
// as root with nft; portmap also needs miniupnpd).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type options struct {
	rounds        int
	seconds       int
	pings         int
	streams       []int
	muxStreams    []int
	brokerAgents  int
	clusterAgents int
	introSecs     int
	only          map[string]bool
	results       string
	profileDir    string

	punchRuns, punchMatrixRuns int
	portmapRuns                int
	relayPairs                 int
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-mux-streams-child" {
		muxStreamsChild(os.Args[2])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "soak" {
		os.Exit(soakMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "-hol-child" {
		holChild()
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "-relay-child" {
		relayChild(os.Args[2])
		return
	}
	var o options
	var only, streams, muxStreams string
	var lab bool
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds of each throughput figure (median reported)")
	flag.IntVar(&o.seconds, "t", 4, "seconds per iperf3 run")
	flag.IntVar(&o.pings, "pings", 4000, "1-byte round trips per latency figure")
	flag.StringVar(&streams, "streams", "1000", "idle streams through the agents (comma list; the sharer admits at most 1024 per connector)")
	flag.StringVar(&muxStreams, "mux-streams", "1000,10000", "idle streams on a bare mux session (comma list)")
	flag.IntVar(&o.brokerAgents, "broker-agents", 10000, "control clients registered at the broker")
	flag.IntVar(&o.introSecs, "intro-seconds", 3, "seconds of sustained introductions")
	flag.IntVar(&o.clusterAgents, "cluster-agents", 10000, "cluster: control clients registered at each broker measured (the lone one, node 1, then re-homed to node 2)")
	flag.StringVar(&only, "only", "", "comma list of parts: throughput,latency,connect,memory,mux,broker,frp,hol,memback,ops,cluster,punch,relay,relaycost,wan,path,portmap (default all; punch, relay, relaycost, wan, path and portmap only where the NAT lab can run; frp only with $"+frpEnv+")")
	flag.BoolVar(&lab, "lab", false, "the NAT-lab parts only: -only punch,relay,relaycost,wan,path,portmap (root)")
	flag.IntVar(&o.punchRuns, "punch-runs", 20, "punch: cone-cone runs per WAN RTT")
	flag.IntVar(&o.punchMatrixRuns, "punch-matrix-runs", 5, "punch: runs per topology of the success matrix")
	flag.IntVar(&o.portmapRuns, "portmap-runs", 5, "portmap: runs per topology, before and after each")
	flag.StringVar(&o.results, "results", "bench/RESULTS.md", "markdown file for the results (empty: none)")
	flag.StringVar(&o.profileDir, "cpuprofile-dir", "", "write agent CPU profiles here: of the whole run per agent, and of 1 and 8 iperf3 streams alone (throughput part; frp part: 8 streams, peerport's agents and frps/frpc)")
	flag.IntVar(&o.relayPairs, "relay-pairs", 10, "relaycost: idle pairs (connector processes) per path for the broker's RSS per pair")
	flag.Parse()
	o.streams, o.muxStreams = ints(streams), ints(muxStreams)
	if lab {
		only = strings.Join([]string{punchPart, relayPart, relayCostPart, wanPart, pathPart, portmapPart}, ",")
	}
	if only != "" {
		o.only = map[string]bool{}
		for _, p := range strings.Split(only, ",") {
			o.only[strings.TrimSpace(p)] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (o options) want(part string) bool {
	return o.only == nil || o.only[part]
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// Figure is one measured value beside its same-run baseline.
type Figure struct {
	Part     string  `json:"part"`
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Baseline float64 `json:"baseline,omitempty"` // 0: none
	BaseName string  `json:"baseline_name,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"` // value / baseline
	Target   string  `json:"target,omitempty"`
	Note     string  `json:"note,omitempty"`
}

// Report is what one run prints and saves.
type Report struct {
	Date    string   `json:"date"`
	Machine Machine  `json:"machine"`
	Figures []Figure `json:"figures"`
}

type Machine struct {
	CPUs   int    `json:"nproc"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func (r *Report) add(f Figure) {
	if f.Baseline != 0 && f.Ratio == 0 {
		f.Ratio = f.Value / f.Baseline
	}
	r.Figures = append(r.Figures, f)
	fmt.Fprintf(os.Stderr, "  %-40s %s\n", f.Part+": "+f.Name, fmtFigure(f))
}

func fmtFigure(f Figure) string {
	s := fmt.Sprintf("%.4g %s", f.Value, f.Unit)
	if f.Baseline != 0 {
		s += fmt.Sprintf("  (%s %.4g %s, %.2fx)", f.BaseName, f.Baseline, f.Unit, f.Ratio)
	}
	return s
}

func run(ctx context.Context, o options) error {
	doPunch, err := wantLab(o, punchPart)
	if err != nil {
		return err
	}
	doRelay, err := wantLab(o, relayPart)
	if err != nil {
		return err
	}
	doRelayCost, err := wantLab(o, relayCostPart)
	if err != nil {
		return err
	}
	doWAN, err := wantLab(o, wanPart)
	if err != nil {
		return err
	}
	doPath, err := wantLab(o, pathPart)
	if err != nil {
		return err
	}
	doPortmap, err := wantLab(o, portmapPart)
	if err != nil {
		return err
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "peerport-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintln(os.Stderr, "building agent and broker (no -race)...")
	bin, err := build(ctx, root, filepath.Join(tmp, "bin"))
	if err != nil {
		return err
	}
	rep := &Report{Date: time.Now().UTC().Format(time.RFC3339), Machine: machine()}
	w := &world{ctx: ctx, bin: bin, tmp: tmp, o: o}
	defer w.stopAll()
	if o.wantLoopback() {
		if err := w.up(); err != nil {
			return err
		}
	}
	steps := []struct {
		part string
		fn   func(*Report) error
	}{
		{"throughput", w.throughput},
		{"latency", w.latency},
		{"connect", w.connectTime},
		{"memory", w.memory},
		{"mux", w.muxMemory},
		{"broker", w.brokerCapacity},
		{frpPart, w.frp},
		{holPart, w.hol},
		{memBackPart, w.memBack},
	}
	for _, s := range steps {
		if !o.want(s.part) {
			continue
		}
		fmt.Fprintf(os.Stderr, "== %s\n", s.part)
		if err := s.fn(rep); err != nil {
			return fmt.Errorf("%s: %w", s.part, err)
		}
	}
	if o.want(opsPart) {
		fmt.Fprintf(os.Stderr, "== %s\n", opsPart)
		if err := opsBench(ctx, bin, tmp, o, rep); err != nil {
			return fmt.Errorf("%s: %w", opsPart, err)
		}
	}
	if o.want(clusterPart) {
		fmt.Fprintf(os.Stderr, "== %s\n", clusterPart)
		if err := clusterBench(ctx, bin, tmp, o, rep); err != nil {
			return fmt.Errorf("%s: %w", clusterPart, err)
		}
	}
	if doPunch {
		fmt.Fprintf(os.Stderr, "== %s\n", punchPart)
		if err := punchBench(ctx, bin, tmp, o, rep); err != nil {
			return fmt.Errorf("%s: %w", punchPart, err)
		}
	}
	if doRelay {
		fmt.Fprintf(os.Stderr, "== %s\n", relayPart)
		if err := relayBench(ctx, bin, tmp, o, rep); err != nil {
			return fmt.Errorf("%s: %w", relayPart, err)
		}
	}
	if doRelayCost {
		fmt.Fprintf(os.Stderr, "== %s\n", relayCostPart)
		if err := relayCostBench(ctx, bin, tmp, o, rep); err != nil {
			return fmt.Errorf("%s: %w", relayCostPart, err)
		}
	}
	if doWAN {
		fmt.Fprintf(os.Stderr, "== %s\n", wanPart)
		if err := wanBench(ctx, bin, tmp, o, rep); err != nil {
			return fmt.Errorf("%s: %w", wanPart, err)
		}
	}
	if doPath {
		fmt.Fprintf(os.Stderr, "== %s\n", pathPart)
		if err := pathBench(ctx, bin, tmp, o, rep); err != nil {
			return fmt.Errorf("%s: %w", pathPart, err)
		}
	}
	if doPortmap {
		fmt.Fprintf(os.Stderr, "== %s\n", portmapPart)
		if err := portmapBench(ctx, bin, tmp, o, rep); err != nil {
			return fmt.Errorf("%s: %w", portmapPart, err)
		}
	}
	printTable(os.Stdout, rep)
	js, _ := json.MarshalIndent(rep, "", "  ")
	fmt.Println(string(js))
	if o.results != "" {
		path := o.results
		if !filepath.IsAbs(path) {
			path = filepath.Join(root, path)
		}
		if err := saveResults(path, rep); err != nil {
			return err
		}
	}
	return nil
}
