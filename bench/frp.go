package main

// The frp part: frp (fatedier/frp, frps and frpc as two processes, TLS and
// tcpMux on as in its defaults) beside peerport's two agents, on loopback,
// on the same targets (the world's iperf3 server and echo server), in
// interleaved rounds. Every peerport figure has frp as its baseline: iperf3
// throughput, both sides' CPU per GB at 1, 2, 4, 8 and 16 streams, 1-byte
// round trips (with raw TCP and the two-relay floor beside them), and RSS
// per idle forwarded connection. It runs only when PEERPORT_BENCH_FRP names
// a directory holding frps and frpc (docs/development.md says how to build
// them); without it the part says so in one line.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	frpPart = "frp"
	// frpEnv names the directory holding frps and frpc.
	frpEnv = "PEERPORT_BENCH_FRP"
	// frpReady bounds frpc's login and proxy registration.
	frpReady = 30 * time.Second
)

// frpStreams are the iperf3 stream counts of the CPU figures.
var frpStreams = []int{1, 2, 4, 8, 16}

// frpWorld is one frps and one frpc forwarding two plain TCP proxies.
type frpWorld struct {
	frps, frpc           *proc
	iperfAddr, echoAddr  string // frps's remote ports
	frpsAdmin, frpcAdmin string // their web servers (pprof), when profiling
	iperfPort, echoPort  int
	controlPort          int
}

// frpsTOML and frpcTOML are frp v0.70 configs: TLS on (frpc's default,
// and frps forced to it), tcpMux on (the default of both), a token.
const frpsTOML = `bindAddr = "127.0.0.1"
bindPort = %d
proxyBindAddr = "127.0.0.1"
auth.method = "token"
auth.token = "peerport-bench"
transport.tls.force = true
transport.tcpMux = true
log.to = "console"
log.level = "warn"
`

const frpcTOML = `serverAddr = "127.0.0.1"
serverPort = %d
loginFailExit = true
auth.method = "token"
auth.token = "peerport-bench"
transport.tls.enable = true
transport.tcpMux = true
log.to = "console"
log.level = "warn"
%s
[[proxies]]
name = "iperf"
type = "tcp"
localIP = "127.0.0.1"
localPort = %s
remotePort = %d

[[proxies]]
name = "echo"
type = "tcp"
localIP = "127.0.0.1"
localPort = %s
remotePort = %d
`

const frpWebTOML = `
webServer.addr = "127.0.0.1"
webServer.port = %d
webServer.user = "bench"
webServer.password = "bench"
webServer.pprofEnable = true
`

// startFRP writes the configs into the bench's temp dir and starts frps
// and frpc; it returns once both proxies listen on frps and the echo one
// answers.
func (w *world) startFRP(bindir string) (*frpWorld, error) {
	for _, b := range []string{"frps", "frpc"} {
		if _, err := os.Stat(filepath.Join(bindir, b)); err != nil {
			return nil, fmt.Errorf("%s=%s: %w (build frp as docs/development.md says)", frpEnv, bindir, err)
		}
	}
	f := &frpWorld{}
	ports := make([]int, 5)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	f.controlPort, f.iperfPort, f.echoPort = ports[0], ports[1], ports[2]
	f.iperfAddr = "127.0.0.1:" + strconv.Itoa(f.iperfPort)
	f.echoAddr = "127.0.0.1:" + strconv.Itoa(f.echoPort)
	_, iperfPort, _ := net.SplitHostPort(w.iperfAddr)
	_, echoPort, _ := net.SplitHostPort(w.echoAddr)
	// The web servers (pprof) only when profiling; in frpc's file before
	// the first table, or their keys would be the last proxy's.
	srv, cliWeb := fmt.Sprintf(frpsTOML, f.controlPort), ""
	if w.o.profileDir != "" {
		srv += fmt.Sprintf(frpWebTOML, ports[3])
		cliWeb = fmt.Sprintf(frpWebTOML, ports[4])
		f.frpsAdmin, f.frpcAdmin = "127.0.0.1:"+strconv.Itoa(ports[3]), "127.0.0.1:"+strconv.Itoa(ports[4])
	}
	cli := fmt.Sprintf(frpcTOML, f.controlPort, cliWeb, iperfPort, f.iperfPort, echoPort, f.echoPort)
	dir := w.dir("frp")
	scfg, ccfg := filepath.Join(dir, "frps.toml"), filepath.Join(dir, "frpc.toml")
	if err := os.WriteFile(scfg, []byte(srv), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(ccfg, []byte(cli), 0o600); err != nil {
		return nil, err
	}
	var err error
	if f.frps, err = w.start("frps", nil, filepath.Join(bindir, "frps"), "-c", scfg); err != nil {
		return nil, err
	}
	if err := waitListening(w.ctx, f.frps, f.controlPort); err != nil {
		return nil, err
	}
	if f.frpc, err = w.start("frpc", nil, filepath.Join(bindir, "frpc"), "-c", ccfg); err != nil {
		return nil, err
	}
	for _, p := range []int{f.iperfPort, f.echoPort} {
		if err := waitListening(w.ctx, f.frpc, p); err != nil {
			return nil, fmt.Errorf("frpc's proxy on frps: %w\nfrps: %s", err, f.frps.stderr.String())
		}
	}
	if err := echoOnce(f.echoAddr); err != nil {
		return nil, fmt.Errorf("echo through frp: %w", err)
	}
	return f, nil
}

// waitListening waits for a listening TCP socket on 127.0.0.1:port (from
// /proc/net/tcp: a probe connection would be a test to iperf3), while p
// runs.
func waitListening(ctx context.Context, p *proc, port int) error {
	deadline := time.Now().Add(frpReady)
	for time.Now().Before(deadline) {
		if listening(port) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited:\n%s%s", p.name, p.stderr.String(), drainLines(p))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("nothing listens on port %d after %v (%s):\n%s", port, frpReady, p.name, p.stderr.String())
}

// drainLines is what p printed to stdout and nobody read (frp logs there).
func drainLines(p *proc) string {
	var b strings.Builder
	for {
		select {
		case l := <-p.lines:
			b.WriteString(l + "\n")
		default:
			return b.String()
		}
	}
}

// listening says whether a TCP socket listens on port (IPv4).
func listening(port int) bool {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false
	}
	want := fmt.Sprintf(":%04X", port)
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 3 && strings.HasSuffix(f[1], want) && f[3] == "0A" {
			return true
		}
	}
	return false
}

// frpSide is one of the two tunnels of the frp part: its two processes
// and its addresses.
type frpSide struct {
	name        string // "peerport" or "frp"
	near, far   *proc  // the client's side (connector, frps), the target's (sharer, frpc)
	iperf, echo string
}

func (w *world) frp(r *Report) error {
	bindir := os.Getenv(frpEnv)
	if bindir == "" {
		fmt.Fprintf(os.Stderr, "  frp: skipped (%s names no directory with frps and frpc; see docs/development.md)\n", frpEnv)
		return nil
	}
	f, err := w.startFRP(bindir)
	if err != nil {
		return err
	}
	// peerport's own pair of agents per target, fresh for this part (the
	// memory figure must not see what earlier parts grew) and never
	// profiled (frp's processes are not while measured either).
	ps, pc, iperfTun, err := w.freshPair("frp-peer-iperf", w.iperfAddr)
	if err != nil {
		return err
	}
	es, ec, echoTun, err := w.freshPair("frp-peer-echo", w.echoAddr)
	if err != nil {
		return err
	}
	peer := frpSide{name: "peerport", near: pc, far: ps, iperf: iperfTun, echo: echoTun}
	fr := frpSide{name: "frp", near: f.frps, far: f.frpc, iperf: f.iperfAddr, echo: f.echoAddr}

	// Memory first, while both tunnels are fresh.
	for _, n := range w.o.streams {
		var kib [2][]float64 // [peerport, frp][time]: both processes together
		for i, s := range []struct {
			addr string
			ps   []*proc
		}{{echoTun, []*proc{ec, es}}, {f.echoAddr, []*proc{f.frps, f.frpc}}} {
			v, err := idleRSS(s.addr, s.ps, n)
			if err != nil {
				return fmt.Errorf("idle connections through %s: %w", []string{"peerport", "frp"}[i], err)
			}
			for _, at := range v {
				kib[i] = append(kib[i], at[0]+at[1])
			}
		}
		for j, at := range idleAt {
			name := fmt.Sprintf("RSS per idle forwarded connection, both processes, %d connections", n)
			if j > 0 {
				name = fmt.Sprintf("RSS per idle forwarded connection after %v, both processes, %d connections", at, n)
			}
			r.add(Figure{Part: frpPart, Name: name, Value: kib[0][j], Unit: "KiB", Baseline: kib[1][j], BaseName: "frps+frpc",
				Note: fmt.Sprintf("RSS growth of both processes (peerport: connector + sharer; frp: frps + frpc) / connections, %v after the last one "+
					"opened and echoed 1 byte (peerport's agent parks idle connections after 1 s and hands memory back within 20 s of the last byte); "+
					"fresh processes; frp measured after peerport", at)})
		}
	}

	if err := w.frpLatency(r, peer, fr); err != nil {
		return err
	}
	if err := w.frpThroughput(r, peer, fr); err != nil {
		return err
	}
	if w.o.profileDir != "" {
		if err := w.frpProfiles(f, fr, 8); err != nil {
			return err
		}
		return w.streamProfiles("frp-peerport", []int{8})
	}
	return nil
}

// frpLatency interleaves blocks of 1-byte round trips through peerport,
// frp, raw TCP and two plain relay processes (the floor).
func (w *world) frpLatency(r *Report, peer, fr frpSide) error {
	relays, err := w.relayChain(w.echoAddr)
	if err != nil {
		return err
	}
	addrs := map[string]string{"peerport": peer.echo, "frp": fr.echo, pathRaw: w.echoAddr, pathRelays: relays}
	rtts, err := interleavedPings([]string{"peerport", "frp", pathRaw, pathRelays}, addrs, w.o.pings)
	if err != nil {
		return err
	}
	p, f, raw, rel := rtts["peerport"], rtts["frp"], rtts[pathRaw], rtts[pathRelays]
	note := fmt.Sprintf("%d 1-byte round trips per path, interleaved blocks of 250 on one connection each; p50/p99 µs: peerport %.0f/%.0f, "+
		"frp %.0f/%.0f, raw TCP %.0f/%.0f, two plain relays (io.Copy processes, no TLS, no mux: the floor of any two-process tunnel) %.0f/%.0f",
		w.o.pings, pct(p, .5), pct(p, .99), pct(f, .5), pct(f, .99), pct(raw, .5), pct(raw, .99), pct(rel, .5), pct(rel, .99))
	for _, q := range []struct {
		name string
		p    float64
	}{{"p50", .5}, {"p99", .99}} {
		r.add(Figure{Part: frpPart, Name: "round trip " + q.name + ", peerport", Value: pct(p, q.p), Unit: "µs",
			Baseline: pct(f, q.p), BaseName: "frp", Note: note})
		target := ""
		if q.name == "p50" {
			target = "<= 1.3x"
		}
		r.add(Figure{Part: frpPart, Name: "round trip " + q.name + ", peerport, against the floor", Value: pct(p, q.p), Unit: "µs",
			Baseline: pct(rel, q.p), BaseName: "two plain relays", Target: target, Note: note})
		r.add(Figure{Part: frpPart, Name: "round trip " + q.name + ", frp, against the floor", Value: pct(f, q.p), Unit: "µs",
			Baseline: pct(rel, q.p), BaseName: "two plain relays", Note: note})
		r.add(Figure{Part: frpPart, Name: "round trip " + q.name + ", two plain relays", Value: pct(rel, q.p), Unit: "µs",
			Baseline: pct(raw, q.p), BaseName: "raw TCP", Note: note})
	}
	return nil
}

// interleavedPings times pings 1-byte round trips on one connection per
// path, in blocks, the paths taking turns.
func interleavedPings(paths []string, addrs map[string]string, pings int) (map[string][]time.Duration, error) {
	conns := map[string]net.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, p := range paths {
		c, err := net.DialTimeout("tcp", addrs[p], 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		conns[p] = c
		if _, err := pingPong(c, 50); err != nil { // warm up
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	const block = 250
	rtts := map[string][]time.Duration{}
	for done, i := 0, 0; done < pings; done, i = done+block, i+1 {
		n := min(block, pings-done)
		for _, p := range rotate(i, paths) {
			d, err := pingPong(conns[p], n)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			rtts[p] = append(rtts[p], d...)
		}
	}
	return rtts, nil
}

// cpuUse is CPU seconds of a tunnel's two processes over the GB carried.
type cpuUse struct{ near, far, gb float64 }

func (u *cpuUse) perGB() float64 { return (u.near + u.far) / max(u.gb, 1e-9) }

// frpThroughput runs iperf3 through both tunnels, interleaved, at every
// count of frpStreams, and reports throughput (1 and 8 streams) and CPU per
// GB of both processes of each tunnel, peerport's with frp's as baseline.
func (w *world) frpThroughput(r *Report, peer, fr frpSide) error {
	type key struct {
		side string
		n    int
	}
	rates := map[key][]float64{}
	use := map[key]*cpuUse{}
	ratios := map[int][]float64{} // per round: peerport CPU/GB over frp's
	for i := range w.o.rounds {
		for _, n := range frpStreams {
			round := map[string]float64{}
			sides := []frpSide{peer, fr}
			if i%2 == 1 {
				sides = []frpSide{fr, peer}
			}
			for _, s := range sides {
				n0, f0 := cpuSeconds(s.near.pid()), cpuSeconds(s.far.pid())
				g, err := w.iperf(s.iperf, n)
				if err != nil {
					return fmt.Errorf("iperf3 %d streams through %s: %w", n, s.name, err)
				}
				k := key{s.name, n}
				u := use[k]
				if u == nil {
					u = &cpuUse{}
					use[k] = u
				}
				dn, df, gb := cpuSeconds(s.near.pid())-n0, cpuSeconds(s.far.pid())-f0, g*float64(w.o.seconds)/8
				u.near, u.far, u.gb = u.near+dn, u.far+df, u.gb+gb
				rates[k] = append(rates[k], g)
				round[s.name] = (dn + df) / max(gb, 1e-9)
			}
			ratios[n] = append(ratios[n], round["peerport"]/max(round["frp"], 1e-9))
		}
	}
	for _, n := range []int{1, 8} {
		p, f := rates[key{"peerport", n}], rates[key{"frp", n}]
		r.add(Figure{Part: frpPart, Name: fmt.Sprintf("iperf3 %d stream(s), peerport", n), Value: median(p), Unit: "Gbit/s",
			Baseline: median(f), BaseName: "frp", Note: fmt.Sprintf("median of %d interleaved rounds (who goes first alternates); peerport %v frp %v",
				w.o.rounds, round2(p), round2(f))})
	}
	for _, n := range frpStreams {
		p, f := use[key{"peerport", n}], use[key{"frp", n}]
		r.add(Figure{Part: frpPart, Name: fmt.Sprintf("CPU per GB, %d stream(s), peerport's agents", n), Value: p.perGB(), Unit: "CPU s/GB",
			Baseline: f.perGB(), BaseName: "frps+frpc", Target: "<= 0.5x",
			Note: fmt.Sprintf("user+system time of both processes during the iperf3 runs over the bytes received, all %d rounds summed; "+
				"connector %.2f sharer %.2f, frps %.2f frpc %.2f CPU s/GB; per-round ratios %v; throughput peerport %v frp %v Gbit/s",
				w.o.rounds, p.near/p.gb, p.far/p.gb, f.near/f.gb, f.far/f.gb, round2(ratios[n]),
				round2(rates[key{"peerport", n}]), round2(rates[key{"frp", n}]))})
	}
	return nil
}

// frpProfiles writes CPU profiles of an n-stream iperf3 run through frp:
// frps's and frpc's own pprof endpoints, sampled during the run.
func (w *world) frpProfiles(f *frpWorld, fr frpSide, n int) error {
	secs := w.o.seconds
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, c := range []struct{ name, addr string }{{"frps", f.frpsAdmin}, {"frpc", f.frpcAdmin}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fetchProfile(w.ctx, "http://"+c.addr+"/debug/pprof/profile?seconds="+strconv.Itoa(secs),
				filepath.Join(w.o.profileDir, fmt.Sprintf("frp-%dstreams-%s.pprof", n, c.name)))
		}()
	}
	time.Sleep(100 * time.Millisecond) // both profiles started before the bytes flow
	_, err := w.iperf(fr.iperf, n)
	wg.Wait()
	for _, e := range append(errs, err) {
		if e != nil {
			return fmt.Errorf("frp profile: %w", e)
		}
	}
	fmt.Fprintf(os.Stderr, "  frp: profiles of %d streams written to %s\n", n, w.o.profileDir)
	return nil
}

func fetchProfile(ctx context.Context, url, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth("bench", "bench")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
