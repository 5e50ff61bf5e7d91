package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sessionBench runs the mux package's Go benchmarks (mux/bench_test.go: a
// bare session over TLS over loopback, both ends in one process, beside raw
// TCP and TLS alone) for several rounds, and reports medians beside their
// same-round baselines: what the mux itself costs, without the agents'
// forwarding around it.
func (w *world) sessionBench(r *Report) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(w.tmp, "mux.test")
	cmd := exec.CommandContext(w.ctx, "go", "test", "-c", "-o", bin, "./mux")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build mux benchmarks: %w\n%s", err, out)
	}
	// name -> per round: MB/s (throughput) or ns/op (round trip), and cpu-ps/B
	val := map[string][]float64{}
	cpu := map[string][]float64{}
	for range w.o.rounds {
		out, err := runOut(w.ctx, 5*time.Minute, nil, bin, "-test.run", "^$", "-test.bench", "^BenchmarkSession", "-test.benchtime", "1s")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkSession") {
				continue
			}
			name := strings.TrimPrefix(f[0], "BenchmarkSession")
			if i := strings.LastIndexByte(name, '-'); i > 0 {
				name = name[:i] // GOMAXPROCS suffix
			}
			for i := 2; i+1 < len(f); i += 2 {
				v, _ := strconv.ParseFloat(f[i], 64)
				switch f[i+1] {
				case "MB/s":
					val[name] = append(val[name], v)
				case "ns/op":
					if strings.HasPrefix(name, "RoundTrip") {
						val[name] = append(val[name], v/1000)
					}
				case "cpu-ps/B":
					cpu[name] = append(cpu[name], v)
				}
			}
		}
	}
	m := func(name string) float64 { return median(val[name]) }
	c := func(name string) float64 { return median(cpu[name]) }
	cpuNote := fmt.Sprintf("CPU per byte, both ends: mux 1 stream %.0f ps/B, 8 streams %.0f, TLS alone %.0f, raw TCP %.0f (these move less than MB/s on a shared machine)",
		c("Throughput/mux/streams=1"), c("Throughput/mux/streams=8"), c("Throughput/tls"), c("Throughput/tcp"))
	for _, n := range []int{1, 8} {
		name := fmt.Sprintf("Throughput/mux/streams=%d", n)
		r.add(Figure{Part: "mux", Name: fmt.Sprintf("bare session over TLS, %d stream(s)", n), Value: m(name), Unit: "MB/s",
			Baseline: m("Throughput/tls"), BaseName: "TLS alone",
			Note: fmt.Sprintf("go test -bench SessionThroughput ./mux, median of %d rounds, each with its baselines; %v MB/s; %s", w.o.rounds, round2(val[name]), cpuNote)})
	}
	r.add(Figure{Part: "mux", Name: "TLS alone", Value: m("Throughput/tls"), Unit: "MB/s", Baseline: m("Throughput/tcp"), BaseName: "raw TCP",
		Note: "the same benchmark without mux: one TLS 1.3 conn (AES-GCM) over loopback, both ends in one process"})
	r.add(Figure{Part: "mux", Name: "bare session round trip", Value: m("RoundTrip/mux"), Unit: "µs", Baseline: m("RoundTrip/tls"), BaseName: "TLS alone",
		Note: fmt.Sprintf("1-byte ping-pong on one stream, both ends in one process; raw TCP %.1f µs", m("RoundTrip/tcp"))})
	return nil
}
