package main

// The hol part: head-of-line blocking across the streams of one peer
// session. A small server (a child process of the bench, -hol-child) serves
// request/response and a bulk sink and source on one port; one `agent share`
// of it and one `agent connect` to that share carry 50 concurrent small
// request/response streams, first alone, then beside one bulk stream that
// saturates the session (upload: connector to sharer, the small requests'
// direction; download: the small responses' direction). Each small figure
// has the same streams alone, on the same path, as its baseline; the same
// load straight to the server (raw TCP) is the reference rows.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	holPart = "hol"
	// holStreams small request/response streams, each sending a
	// holMsg-byte request every holEvery (5000 requests/s in all) and
	// waiting for its answer before the next one is due.
	holStreams = 50
	holMsg     = 64
	holEvery   = 10 * time.Millisecond
	// holRamp is how long the bulk stream runs before the small ones are
	// timed: long enough to fill the windows and buffers on the path.
	holRamp = 500 * time.Millisecond
)

// Modes of a connection to the hol server, its first byte.
const (
	holReqResp  = 'R' // echo holMsg-byte messages
	holSink     = 'U' // read and discard until EOF
	holSource   = 'D' // write until the connection breaks
	holBulkSize = 64 << 10
)

// Phases of the hol part.
const (
	holAlone    = "alone"
	holUpload   = "beside a bulk upload"
	holDownload = "beside a bulk download"
	// holApart is the bulk upload through another session (a second
	// connector to the same share): the machine as loaded as beside a
	// bulk upload, the session not shared.
	holApart = "beside a bulk upload on another session"
)

// holChild serves the hol protocol on loopback until killed; it prints its
// address first.
func holChild() { serveChild("hol child", holServe) }

func holServe(c net.Conn) {
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	mode := []byte{0}
	if _, err := io.ReadFull(c, mode); err != nil {
		return
	}
	switch mode[0] {
	case holReqResp:
		b := make([]byte, holMsg)
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	case holSink:
		io.Copy(io.Discard, c)
	case holSource:
		b := make([]byte, holBulkSize)
		for {
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}
}

// holResult is one timed phase on one path.
type holResult struct {
	rtts    []time.Duration
	bulkGB  float64 // bytes moved by the bulk stream while the small ones were timed
	seconds float64
}

func (h holResult) gbits() float64 { return h.bulkGB * 8 / max(h.seconds, 1e-9) }

// holPhase runs the small streams against addr for secs, beside a bulk
// stream to bulkAddr when phase says so.
func holPhase(addr, bulkAddr, phase string, secs int) (holResult, error) {
	var res holResult
	var moved atomic.Int64
	var timing atomic.Bool
	stop := make(chan struct{})
	var bulkWG sync.WaitGroup
	bulkErr := make(chan error, 1)
	if phase != holAlone {
		mode := byte(holSink)
		if phase == holDownload {
			mode = holSource
		}
		c, err := net.DialTimeout("tcp", bulkAddr, 10*time.Second)
		if err != nil {
			return res, fmt.Errorf("bulk: %w", err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{mode}); err != nil {
			return res, fmt.Errorf("bulk: %w", err)
		}
		bulkWG.Add(1)
		go func() {
			defer bulkWG.Done()
			b := make([]byte, holBulkSize)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var n int
				var err error
				if mode == holSink {
					n, err = c.Write(b)
				} else {
					n, err = c.Read(b)
				}
				if timing.Load() {
					moved.Add(int64(n))
				}
				if err != nil {
					select {
					case <-stop:
					default:
						bulkErr <- err
					}
					return
				}
			}
		}()
		defer func() {
			close(stop)
			c.Close()
			bulkWG.Wait()
		}()
		time.Sleep(holRamp)
	} else {
		defer close(stop)
	}
	conns := make([]net.Conn, holStreams)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return res, fmt.Errorf("small stream %d: %w", i, err)
		}
		conns[i] = c
		c.(*net.TCPConn).SetNoDelay(true)
		if _, err := c.Write([]byte{holReqResp}); err != nil {
			return res, err
		}
		if _, err := holRoundTrips(c, 2, 0, time.Time{}); err != nil { // warm up
			return res, fmt.Errorf("small stream %d: %w", i, err)
		}
	}
	t0 := time.Now()
	timing.Store(true)
	end := t0.Add(time.Duration(secs) * time.Second)
	out := make([][]time.Duration, holStreams)
	errs := make([]error, holStreams)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(holEvery * time.Duration(i) / holStreams) // spread the sends over the period
			out[i], errs[i] = holRoundTrips(c, -1, holEvery, end)
		}()
	}
	wg.Wait()
	timing.Store(false)
	res.seconds = time.Since(t0).Seconds()
	res.bulkGB = float64(moved.Load()) / 1e9
	for i := range out {
		if errs[i] != nil {
			return res, fmt.Errorf("small stream %d: %w", i, errs[i])
		}
		res.rtts = append(res.rtts, out[i]...)
	}
	select {
	case err := <-bulkErr: // it broke while the small streams were timed
		return res, fmt.Errorf("bulk: %w", err)
	default:
	}
	return res, nil
}

// holRoundTrips sends a holMsg-byte request every period and times its
// answer, n times or (n < 0) until end; a late answer delays the next
// request, it does not pile requests up.
func holRoundTrips(c net.Conn, n int, period time.Duration, end time.Time) ([]time.Duration, error) {
	b := make([]byte, holMsg)
	r := bufio.NewReaderSize(c, holMsg)
	var out []time.Duration
	next := time.Now()
	for i := 0; n < 0 || i < n; i++ {
		if n < 0 && !next.Before(end) {
			break
		}
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		t := time.Now()
		if _, err := c.Write(b); err != nil {
			return out, err
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return out, err
		}
		out = append(out, time.Since(t))
		next = next.Add(period)
		if now := time.Now(); next.Before(now) {
			next = now
		}
	}
	return out, nil
}

func (w *world) hol(r *Report) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	srv, err := w.start("hol-server", nil, self, "-hol-child")
	if err != nil {
		return err
	}
	target, err := srv.firstLine(w.ctx)
	if err != nil {
		return err
	}
	_, ticket, err := w.shareEnv("hol", target, nil) // not profiled: a profile costs both phases alike, but noise
	if err != nil {
		return err
	}
	_, tun, err := w.connectEnv("hol-connector", ticket, nil)
	if err != nil {
		return err
	}
	_, apart, err := w.connectEnv("hol-connector-2", ticket, nil)
	if err != nil {
		return err
	}
	paths := map[string]string{pathTunnel: tun, pathRaw: target}
	type key struct{ path, phase string }
	got := map[key]*holResult{}
	gbits := map[key][]float64{}
	for i := range w.o.rounds {
		for _, path := range alternate(i, pathTunnel, pathRaw) {
			phases := []string{holAlone, holUpload, holDownload}
			if path == pathTunnel {
				phases = append(phases, holApart)
			}
			for _, phase := range rotate(i, phases) {
				bulk := paths[path]
				if phase == holApart {
					bulk = apart
				}
				res, err := holPhase(paths[path], bulk, phase, w.o.seconds)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", path, phase, err)
				}
				k := key{path, phase}
				if got[k] == nil {
					got[k] = &holResult{}
				}
				got[k].rtts = append(got[k].rtts, res.rtts...)
				got[k].bulkGB += res.bulkGB
				got[k].seconds += res.seconds
				if phase != holAlone {
					gbits[k] = append(gbits[k], res.gbits())
				}
			}
		}
	}
	note := fmt.Sprintf("%d concurrent streams through one peer session (one connect to one share), each a %d-byte request every %v "+
		"(waiting for the answer; a late one delays the next), %d interleaved rounds of %d s per phase, phases rotated, all round trips of a "+
		"phase pooled; the bulk stream starts %v before the timing and writes (upload) or reads (download) 64 KiB at a time",
		holStreams, holMsg, holEvery, w.o.rounds, w.o.seconds, holRamp)
	ms := func(d []time.Duration, q float64) float64 { return pct(d, q) / 1000 }
	quantiles := []struct {
		name string
		p    float64
	}{{"p99", .99}, {"p50", .5}}
	for _, path := range []string{pathTunnel, pathRaw} {
		alone := got[key{path, holAlone}]
		for _, phase := range []string{holUpload, holDownload} {
			b := got[key{path, phase}]
			for _, q := range quantiles {
				target := ""
				if path == pathTunnel && q.name == "p99" {
					target = "<= 2x"
				}
				r.add(Figure{Part: holPart, Name: fmt.Sprintf("small streams' %s %s, %s", q.name, phase, path), Value: ms(b.rtts, q.p), Unit: "ms",
					Baseline: ms(alone.rtts, q.p), BaseName: "alone, " + path, Target: target,
					Note: fmt.Sprintf("%s; %d round trips beside the bulk stream, %d alone", note, len(b.rtts), len(alone.rtts))})
			}
		}
	}
	up, apartRes := got[key{pathTunnel, holUpload}], got[key{pathTunnel, holApart}]
	for _, q := range quantiles {
		r.add(Figure{Part: holPart, Name: fmt.Sprintf("small streams' %s beside a bulk upload, same session against another", q.name),
			Value: ms(up.rtts, q.p), Unit: "ms", Baseline: ms(apartRes.rtts, q.p), BaseName: "bulk on another session",
			Note: fmt.Sprintf("%s; baseline: the same bulk upload through a second connector's own session to the same sharer, so the "+
				"machine is as loaded but the small streams share no session with it: the ratio is what sharing the session adds; "+
				"%d and %d round trips", note, len(up.rtts), len(apartRes.rtts))})
	}
	tunAlone, rawAlone := got[key{pathTunnel, holAlone}], got[key{pathRaw, holAlone}]
	for _, q := range quantiles {
		r.add(Figure{Part: holPart, Name: fmt.Sprintf("small streams' %s alone, tunnel", q.name), Value: ms(tunAlone.rtts, q.p), Unit: "ms",
			Baseline: ms(rawAlone.rtts, q.p), BaseName: "alone, raw TCP", Note: note})
	}
	for _, phase := range []string{holUpload, holDownload, holApart} {
		t, raw := gbits[key{pathTunnel, phase}], gbits[key{pathRaw, phase}]
		f := Figure{Part: holPart, Name: fmt.Sprintf("%s beside the small streams, tunnel", strings.TrimPrefix(phase, "beside a ")),
			Value: median(t), Unit: "Gbit/s",
			Note: fmt.Sprintf("what the bulk stream moved while the 50 small streams were timed, median of rounds; tunnel %v raw %v", round2(t), round2(raw))}
		if len(raw) > 0 {
			f.Baseline, f.BaseName = median(raw), "raw TCP, beside the same small load"
		}
		r.add(f)
	}
	return nil
}
