package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// world is a broker, two sharers (iperf3 and a 1-byte echo) and a connector
// to each, all processes on 127.0.0.1.
type world struct {
	ctx context.Context
	bin binaries
	tmp string
	o   options

	mu    sync.Mutex
	procs []*proc

	brokerURL            string
	brokerProc           *proc
	iperfAddr            string // direct
	iperfServer          *proc
	echoAddr             string // direct
	iperfTun, echoTun    string // through the tunnel
	echoTicket           string
	echoShare, echoCon   *proc
	iperfShare, iperfCon *proc
	echoLn               net.Listener
}

func (w *world) start(name string, env []string, bin string, args ...string) (*proc, error) {
	p, err := startProc(name, env, bin, args...)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.procs = append(w.procs, p)
	w.mu.Unlock()
	return p, nil
}

func (w *world) stopAll() {
	w.mu.Lock()
	ps := w.procs
	w.procs = nil
	w.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
	}
	wg.Wait()
	if w.echoLn != nil {
		w.echoLn.Close()
	}
}

func (w *world) dir(name string) string {
	d := filepath.Join(w.tmp, name)
	os.MkdirAll(d, 0o700)
	return d
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// echoServer echoes every connection until ln closes.
func echoServer(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func (w *world) profileEnv(name string) []string {
	if w.o.profileDir == "" {
		return nil
	}
	os.MkdirAll(w.o.profileDir, 0o755)
	p, _ := filepath.Abs(filepath.Join(w.o.profileDir, name+".pprof"))
	return []string{"PEERPORT_CPUPROFILE=" + p}
}

// share logs a sharer in and starts it, profiled with -cpuprofile-dir; it
// returns the ticket.
func (w *world) share(name, target string) (*proc, string, error) {
	return w.shareEnv(name, target, w.profileEnv(name))
}

// shareEnv is share with env for the agent (no profile unless env asks).
func (w *world) shareEnv(name, target string, env []string) (*proc, string, error) {
	dir := w.dir(name)
	if _, err := runOut(w.ctx, 30*time.Second, nil, w.bin.agent, "--state-dir", dir, "login", w.brokerURL); err != nil {
		return nil, "", err
	}
	p, err := w.start(name, env, w.bin.agent, "--state-dir", dir, "share", target, "--name", name)
	if err != nil {
		return nil, "", err
	}
	t, err := p.firstLine(w.ctx)
	return p, t, err
}

// freshPair starts an unprofiled sharer of target named name and a
// connector to it named name-connector, and returns both and the
// connector's listen address; a failed connector stops the sharer.
func (w *world) freshPair(name, target string) (share, con *proc, addr string, err error) {
	share, ticket, err := w.shareEnv(name, target, nil)
	if err != nil {
		return nil, nil, "", err
	}
	con, addr, err = w.connectEnv(name+"-connector", ticket, nil)
	if err != nil {
		share.stop()
		return nil, nil, "", err
	}
	return share, con, addr, nil
}

func (w *world) connect(name, ticket string) (*proc, string, error) {
	return w.connectEnv(name, ticket, w.profileEnv(name))
}

func (w *world) connectEnv(name, ticket string, env []string) (*proc, string, error) {
	p, err := w.start(name, env, w.bin.agent, "--state-dir", w.dir(name), "connect", ticket, "--listen", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	a, err := p.firstLine(w.ctx)
	return p, a, err
}

func (w *world) up() error {
	var err error
	if w.echoLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return err
	}
	go echoServer(w.echoLn)
	w.echoAddr = w.echoLn.Addr().String()
	port, err := freePort()
	if err != nil {
		return err
	}
	w.iperfAddr = "127.0.0.1:" + strconv.Itoa(port)
	if err := w.startIperfServer(); err != nil {
		return err
	}
	cfg := filepath.Join(w.dir("broker"), "broker.yaml")
	if err := os.WriteFile(cfg, []byte(benchLimitsYAML), 0o600); err != nil {
		return err
	}
	if w.brokerProc, err = w.start("broker", nil, w.bin.broker, "-c", cfg, "--listen", "127.0.0.1:0", "--state-dir", w.dir("broker"),
		"--public-addr", "127.0.0.1", "--log-level", "warn"); err != nil {
		return err
	}
	if w.brokerURL, err = w.brokerProc.firstLine(w.ctx); err != nil {
		return err
	}
	var it string
	if w.iperfShare, it, err = w.share("iperf", w.iperfAddr); err != nil {
		return err
	}
	if w.iperfCon, w.iperfTun, err = w.connect("iperf-connector", it); err != nil {
		return err
	}
	if w.echoShare, w.echoTicket, err = w.share("echo", w.echoAddr); err != nil {
		return err
	}
	w.echoCon, w.echoTun, err = w.connect("echo-connector", w.echoTicket)
	return err
}

func (w *world) startIperfServer() error {
	_, port, _ := net.SplitHostPort(w.iperfAddr)
	var err error
	w.iperfServer, err = w.start("iperf3-server", nil, "iperf3", "-s", "-B", "127.0.0.1", "-p", port)
	time.Sleep(200 * time.Millisecond) // to listen; a probe connection would be a test to iperf3
	return err
}

// iperf runs one iperf3 client and returns the received rate in Gbit/s. An
// iperf3 server that has exited (3.12 was seen to, now and then, between
// a test of 1 stream and one of 8) is started again on its port, which the
// share points at, and a run it failed is tried once more.
func (w *world) iperf(addr string, streams int) (float64, error) {
	for try := 0; ; try++ {
		w.keepIperfServer()
		g, err := w.iperfOnce(addr, streams)
		if err == nil || try == 1 {
			return g, err
		}
		time.Sleep(500 * time.Millisecond) // let an exiting server go
		select {
		case <-w.iperfServer.done:
		default:
			return g, err // not the server's fault
		}
	}
}

func (w *world) keepIperfServer() {
	select {
	case <-w.iperfServer.done:
		fmt.Fprintf(os.Stderr, "  (iperf3 server exited; starting it again)\n%s", w.iperfServer.stderr.String())
		if err := w.startIperfServer(); err != nil {
			fmt.Fprintln(os.Stderr, "  restart iperf3 server:", err)
		}
	default:
	}
}

func (w *world) iperfOnce(addr string, streams int) (float64, error) {
	host, port, _ := net.SplitHostPort(addr)
	return iperfRun(w.ctx, nil, host, port, w.o.seconds, streams)
}

// iperfRun runs one iperf3 client, retrying while the server is still busy
// with the previous test, or between tests: the server closes its listener
// after each test for a moment, and through the tunnel a connect refused
// by the target shows as the connection reset (the agent accepted it).
func iperfRun(ctx context.Context, prefix []string, host, port string, secs, streams int) (float64, error) {
	for try := 0; ; try++ {
		g, err := iperfOnce(ctx, prefix, host, port, secs, streams)
		if err == nil || try == 10 || !iperfBetweenTests(err) {
			return g, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func iperfBetweenTests(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "busy") || strings.Contains(msg, "unable to receive control message") ||
		strings.Contains(msg, "unable to connect to server")
}

func iperfOnce(ctx context.Context, prefix []string, host, port string, secs, streams int) (float64, error) {
	args := append(append([]string{}, prefix...), "iperf3", "-c", host, "-p", port, "-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-J")
	out, err := runOut(ctx, time.Duration(secs+30)*time.Second, nil, args[0], args[1:]...)
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		if err == nil {
			err = jerr
		}
		return 0, err
	}
	if r.Error != "" {
		return 0, errors.New("iperf3: " + r.Error)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// throughput interleaves direct and tunnel iperf3 runs and reports medians,
// then the CPU time the two agents spent per GB carried: on a shared
// machine that figure moves less than the rate, and it is what a change to
// the forwarding path changes.
func (w *world) throughput(r *Report) error {
	type use struct{ sharer, connector, gb, busy, total float64 }
	cpu := map[int]*use{}
	err := throughputFigures(r, "throughput", "", w.o.rounds, func(direct bool, n int) (float64, error) {
		if direct {
			return w.iperf(w.iperfAddr, n)
		}
		s0, c0 := cpuSeconds(w.iperfShare.pid()), cpuSeconds(w.iperfCon.pid())
		b0, t0 := machineTicks()
		g, err := w.iperf(w.iperfTun, n)
		b1, t1 := machineTicks()
		if err == nil {
			u := cpu[n]
			if u == nil {
				u = &use{}
				cpu[n] = u
			}
			u.sharer += cpuSeconds(w.iperfShare.pid()) - s0
			u.connector += cpuSeconds(w.iperfCon.pid()) - c0
			u.gb += g * float64(w.o.seconds) / 8
			u.busy, u.total = u.busy+b1-b0, u.total+t1-t0
		}
		return g, err
	})
	if err != nil {
		return err
	}
	for _, n := range []int{1, 8} {
		if u := cpu[n]; u != nil && u.gb > 0 {
			r.add(Figure{Part: "throughput", Name: fmt.Sprintf("agents' CPU per GB, iperf3 %d stream(s)", n),
				Value: (u.sharer + u.connector) / u.gb, Unit: "CPU s/GB",
				Note: fmt.Sprintf("user+system time of both agents during the tunnel runs (includes iperf3's setup and wind-down) over the bytes iperf3 received; sharer %.2f, connector %.2f CPU s/GB; all CPUs of the machine %.0f%% busy meanwhile",
					u.sharer/u.gb, u.connector/u.gb, 100*u.busy/max(u.total, 1))})
		}
	}
	return w.streamProfiles("throughput", []int{1, 8})
}

// machineTicks is the busy and total time of all CPUs, from /proc/stat.
func machineTicks() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i >= 8 { // guest time is already in user
			break
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// cpuSeconds is the user and system time pid has used, from /proc (clock
// ticks of 10 ms); 0 when it cannot be read.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // utime, field 14
	st, _ := strconv.ParseFloat(f[12], 64) // stime, field 15
	return (ut + st) / 100
}

func throughputFigures(r *Report, part, suffix string, rounds int, measure func(direct bool, streams int) (float64, error)) error {
	for _, n := range []int{1, 8} {
		var raw, tun []float64
		for i := range rounds {
			for _, direct := range []bool{i%2 == 0, i%2 != 0} { // alternate who goes first
				g, err := measure(direct, n)
				if err != nil {
					return fmt.Errorf("%d streams, direct=%v: %w", n, direct, err)
				}
				if direct {
					raw = append(raw, g)
				} else {
					tun = append(tun, g)
				}
			}
		}
		target := ">= 0.35x"
		if n == 8 {
			target = ">= 0.40x"
		}
		if suffix != "" {
			target = ""
			if n == 1 && suffix == "50ms RTT" {
				target = ">= 0.9x"
			}
		}
		name := fmt.Sprintf("iperf3 %d stream(s)", n)
		if suffix != "" {
			name += ", " + suffix
		}
		r.add(Figure{Part: part, Name: name, Value: median(tun), Unit: "Gbit/s", Baseline: median(raw),
			BaseName: "raw TCP", Target: target, Note: fmt.Sprintf("median of %d interleaved rounds; tunnel %v raw %v", rounds, round2(tun), round2(raw))})
	}
	return nil
}

func round2(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(int(x*100+0.5)) / 100
	}
	return out
}

// pingPong measures n 1-byte round trips on c.
func pingPong(c net.Conn, n int) ([]time.Duration, error) {
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	b := []byte{'x'}
	out := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if _, err := c.Write(b); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, err
		}
		out = append(out, time.Since(t))
	}
	return out, nil
}

func pct(d []time.Duration, p float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	i := min(int(float64(len(s))*p), len(s)-1)
	return float64(s[i].Microseconds())
}

func (w *world) latency(r *Report) error {
	relays, err := w.relayChain(w.echoAddr)
	if err != nil {
		return err
	}
	return latencyFigures(r, "latency", "", w.o.pings, func(path string) (net.Conn, error) {
		addr := map[string]string{pathTunnel: w.echoTun, pathRaw: w.echoAddr, pathRelays: relays}[path]
		return net.DialTimeout("tcp", addr, 10*time.Second)
	})
}

// relayChain starts two plain TCP relay processes in a row in front of
// target and returns the first one's address: the path of the tunnel
// (client, connector, sharer, target) without TLS and mux, the floor of
// what two forwarding processes cost on this machine.
func (w *world) relayChain(target string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	for _, name := range []string{"relay-2", "relay-1"} {
		p, err := w.start(name, nil, self, "-relay-child", target)
		if err != nil {
			return "", err
		}
		if target, err = p.firstLine(w.ctx); err != nil {
			return "", err
		}
	}
	return target, nil
}

// relayChild listens on loopback, prints its address, and relays every
// connection to target with io.Copy both ways (splice(2) on Linux).
func relayChild(target string) {
	serveChild("relay child", func(c net.Conn) {
		defer c.Close()
		t, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer t.Close()
		go func() {
			io.Copy(t, c)
			t.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(c, t)
	})
}

// serveChild is a bench child process's server: it listens on loopback,
// prints its address first, and serves each connection in a goroutine of
// its own until it is killed.
func serveChild(name string, serve func(net.Conn)) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go serve(c)
	}
}

// Paths of the latency figures.
const (
	pathTunnel = "tunnel"
	pathRaw    = "raw TCP"
	pathRelays = "two plain relays"
)

// latencyFigures interleaves blocks of round trips through the tunnel,
// directly, and through two plain relay processes.
func latencyFigures(r *Report, part, suffix string, pings int, dial func(path string) (net.Conn, error)) error {
	paths := []string{pathTunnel, pathRaw, pathRelays}
	conns := map[string]net.Conn{}
	rtts := map[string][]time.Duration{}
	for _, p := range paths {
		c, err := dial(p)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		defer c.Close()
		if _, err := pingPong(c, 50); err != nil { // warm up: stream open, TLS records sized
			return fmt.Errorf("%s: %w", p, err)
		}
		conns[p] = c
	}
	const block = 250
	for done := 0; done < pings; done += block {
		n := min(block, pings-done)
		for _, p := range paths {
			d, err := pingPong(conns[p], n)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			rtts[p] = append(rtts[p], d...)
		}
	}
	sfx := ""
	if suffix != "" {
		sfx = ", " + suffix
	}
	tun, raw, rel := rtts[pathTunnel], rtts[pathRaw], rtts[pathRelays]
	note := fmt.Sprintf("1-byte ping-pong, interleaved blocks; target is on added latency (tunnel - raw <= 1.5x raw at p50, <= 3x at p99); "+
		"floor: two plain relay processes (io.Copy, no TLS, no mux) on the tunnel's path, p50 %.0f µs, p99 %.0f µs", pct(rel, .5), pct(rel, .99))
	t50, r50, t99, r99 := pct(tun, .5), pct(raw, .5), pct(tun, .99), pct(raw, .99)
	f50 := Figure{Part: part, Name: "round trip p50" + sfx, Value: t50, Unit: "µs", Baseline: r50, BaseName: "raw TCP", Note: note}
	f99 := Figure{Part: part, Name: "round trip p99" + sfx, Value: t99, Unit: "µs", Baseline: r99, BaseName: "raw TCP", Note: note}
	if suffix == "" {
		f50.Target, f99.Target = "<= 2.5x", "<= 4x"
	}
	r.add(f50)
	r.add(f99)
	note = "the floor of any two-process tunnel here: client -> relay -> relay -> echo, each relay a process copying with io.Copy; " +
		"each hop wakes a process on another CPU"
	r.add(Figure{Part: part, Name: "round trip p50, two plain relays" + sfx, Value: pct(rel, .5), Unit: "µs", Baseline: r50, BaseName: "raw TCP", Note: note})
	r.add(Figure{Part: part, Name: "round trip p99, two plain relays" + sfx, Value: pct(rel, .99), Unit: "µs", Baseline: r99, BaseName: "raw TCP", Note: note})
	return nil
}

// connectTime times `agent connect` from process start to the first byte
// echoed through it, against a raw dial and echo.
func (w *world) connectTime(r *Report) error {
	var tun, raw []float64
	for i := range 5 {
		t0 := time.Now()
		c, err := net.DialTimeout("tcp", w.echoAddr, 10*time.Second)
		if err != nil {
			return err
		}
		_, err = pingPong(c, 1)
		c.Close()
		if err != nil {
			return err
		}
		raw = append(raw, float64(time.Since(t0).Microseconds())/1000)

		t0 = time.Now()
		p, addr, err := w.connect(fmt.Sprintf("connect-time-%d", i), w.echoTicket)
		if err != nil {
			return err
		}
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
		if err == nil {
			_, err = pingPong(c, 1)
			c.Close()
		}
		d := time.Since(t0)
		p.stop()
		if err != nil {
			return fmt.Errorf("first byte through a new connector: %w\n%s", err, p.stderr.String())
		}
		tun = append(tun, float64(d.Microseconds())/1000)
	}
	r.add(Figure{Part: "connect", Name: "agent connect to first byte (direct)", Value: median(tun), Unit: "ms",
		Baseline: median(raw), BaseName: "raw dial+echo",
		Note: "median of 5; includes process start, broker introduction, peer TLS and stream open. through the relay: see the relay part (NAT lab)"})
	return nil
}

// memory reports the RSS of the idle echo sharer and connector, then per
// open idle stream through them.
func (w *world) memory(r *Report) error {
	time.Sleep(time.Second)
	for _, p := range []*proc{w.echoShare, w.echoCon} {
		v, err := rss(p.pid())
		if err != nil {
			return err
		}
		r.add(Figure{Part: "memory", Name: "idle " + p.name + " RSS", Value: float64(v) / (1 << 20), Unit: "MiB",
			Target: "< 20 MiB", Note: "peer session up, no stream open"})
	}
	for _, n := range w.o.streams {
		if err := w.streamMemory(r, n); err != nil {
			return err
		}
	}
	return nil
}

func (w *world) streamMemory(r *Report, n int) error {
	ps := []*proc{w.echoShare, w.echoCon}
	kib, err := idleRSS(w.echoTun, ps, n)
	if err != nil {
		return err
	}
	for j, at := range idleAt {
		name, note := "", "3 s after the last one opened"
		if j > 0 {
			name, note = ", settled", fmt.Sprintf("%v after the last one opened, past the agent's release of memory (at most 20 s after the last byte)", at)
		}
		for i, p := range ps {
			r.add(Figure{Part: "memory", Name: fmt.Sprintf("RSS per idle stream%s, %s, %d streams", name, p.name, n),
				Value: kib[j][i], Unit: "KiB", Target: "< 8 KiB",
				Note: "RSS growth / streams, " + note + "; each stream is also a TCP connection on each side, its local side parked in the agent's epoll set and its stream's reader parked in the session"})
		}
	}
	return nil
}

// idleAt is when idleRSS looks, after the last connection opened: past
// the agent's parkAfter (1 s), when quiet connections leave their
// goroutines for the parker and the session; and past its release (at
// most 20 s after the last byte: a check every releaseAfter, 10 s), when
// it hands back to the OS what opening them took, the stacks of that first
// second among it. The second is what idle connections cost for as long
// as they stay open.
var idleAt = []time.Duration{3 * time.Second, 25 * time.Second}

// idleRSS opens n connections to the echo at addr and returns, at each
// of idleAt, the RSS growth of each of ps per connection, in KiB.
func idleRSS(addr string, ps []*proc, n int) ([][]float64, error) {
	time.Sleep(time.Second)
	before := make([]int64, len(ps))
	for i, p := range ps {
		v, err := rss(p.pid())
		if err != nil {
			return nil, err
		}
		before[i] = v
	}
	conns, err := openEchoed(addr, n)
	opened := time.Now()
	defer func() {
		closeAll(conns)
		time.Sleep(time.Second) // let both ends close them before the next figure
	}()
	if err != nil {
		return nil, err
	}
	kib := make([][]float64, len(idleAt))
	for j, d := range idleAt {
		time.Sleep(d - time.Since(opened))
		for _, p := range ps {
			v, err := rss(p.pid())
			if err != nil {
				return nil, err
			}
			kib[j] = append(kib[j], float64(v-before[len(kib[j])])/float64(n)/1024)
		}
	}
	return kib, nil
}

// openEchoed opens n connections to the echo at addr, 32 at a time, each
// with one byte echoed through it so that it is carried end to end (a
// stream, not just an accepted socket). What it opened is returned even
// with an error, for the caller to close.
func openEchoed(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	sem := make(chan struct{}, 32)
	errc := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				errc <- err
				return
			}
			conns[i] = c
			if _, err := pingPong(c, 1); err != nil {
				errc <- fmt.Errorf("connection %d: %w", i, err)
			}
			c.SetDeadline(time.Time{})
		}()
	}
	wg.Wait()
	close(errc)
	return conns, <-errc
}

// closeAll closes every connection of conns that is open, and forgets it.
func closeAll(conns []net.Conn) {
	for i, c := range conns {
		if c != nil {
			c.Close()
			conns[i] = nil
		}
	}
}
