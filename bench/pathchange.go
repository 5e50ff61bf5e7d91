package main

// The path part (issue 15): what a change of path costs an open forwarded
// connection. For each kind of change, on its own lab, in parallel: a
// steady echoed stream (64 KiB every 50 ms each way, checked byte for byte)
// through a connector on host b; the fault; and, from `agent status`
// polled every 100 ms, the time from the fault until the path is declared
// dead, until the session is on a path again, and until it is direct
// again. The stall is the longest gap in delivered bytes after the fault;
// its baseline is the longest gap in the 5 s before it, on the same stream.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

const (
	pathPart = "path"
	// pathBudget bounds each fault's run, lab build included.
	pathBudget     = 4 * time.Minute
	pathChunk      = 64 << 10
	pathChunkEvery = 50 * time.Millisecond
	pathListenPort = 18081
)

// pathFault is one kind of path change.
type pathFault struct {
	name  string
	topo  natlab.Topology
	start string // the connector's path before the fault
	// inject breaks the path and returns once the fault is over.
	inject func(ctx context.Context, lab *natlab.Lab) error
	lost   bool // the fault kills the path (else it may survive it)
}

func pathFaults() []pathFault {
	cone := natlab.Pair(natlab.BehindCone, natlab.BehindCone)
	return []pathFault{
		{"black hole 20 s between the NATs", cone, pathDirect, func(ctx context.Context, lab *natlab.Lab) error {
			undo, err := cutNATs(ctx, lab)
			if err != nil {
				return err
			}
			time.Sleep(20 * time.Second)
			return undo()
		}, true},
		{"conntrack flush on both NATs", cone, pathDirect, func(ctx context.Context, lab *natlab.Lab) error {
			for _, gw := range []string{"gw-a", "gw-b"} {
				if err := lab.FlushConntrack(ctx, gw); err != nil {
					return err
				}
			}
			return nil
		}, false},
		{"sharer host moves to a new address", cone, pathDirect, func(ctx context.Context, lab *natlab.Lab) error {
			_, err := lab.Host("a").Renumber(ctx)
			return err
		}, true},
		{"connector NAT symmetric to cone", natlab.Pair(natlab.BehindCone, natlab.BehindSym), pathRelay, func(ctx context.Context, lab *natlab.Lab) error {
			return lab.Router("gw-b").SetNAT(ctx, natlab.Cone)
		}, false},
	}
}

// cutNATs drops everything between the two NATs' public addresses on the
// lab's internet (the broker stays reachable) and returns the undo.
func cutNATs(ctx context.Context, lab *natlab.Lab) (func() error, error) {
	inet := lab.Internet()
	pa, pb := lab.PublicIP("a").String(), lab.PublicIP("b").String()
	for _, args := range [][]string{
		{"add", "table", "bridge", "ppbench"},
		{"add", "chain", "bridge", "ppbench", "cut", "{ type filter hook forward priority 0 ; }"},
		{"add", "rule", "bridge", "ppbench", "cut", "ip", "saddr", pa, "ip", "daddr", pb, "drop"},
		{"add", "rule", "bridge", "ppbench", "cut", "ip", "saddr", pb, "ip", "daddr", pa, "drop"},
	} {
		if out, err := inet.Run(ctx, "nft", args...); err != nil {
			return nil, fmt.Errorf("nft %v: %w: %s", args, err, out)
		}
	}
	return func() error {
		_, err := inet.Run(ctx, "nft", "delete", "table", "bridge", "ppbench")
		return err
	}, nil
}

// pathRun is what one fault did to the session and the stream.
type pathRun struct {
	detected, resumed, direct time.Duration // from the fault; 0: not seen
	faultFor                  time.Duration // how long inject took
	before, stall             time.Duration // longest gaps before and after the fault
	bytes                     int64
	err                       error
}

func pathBench(ctx context.Context, bin binaries, tmp string, o options, r *Report) error {
	faults := pathFaults()
	runs := make([]pathRun, len(faults))
	var wg sync.WaitGroup
	for i, f := range faults {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.topo.Name = fmt.Sprintf("path%d-%s", i, f.topo.Name)
			runs[i] = pathOnce(ctx, bin, tmp, f)
		}()
	}
	wg.Wait()
	for i, f := range faults {
		run := runs[i]
		if run.err != nil {
			return fmt.Errorf("%s: %w", f.name, run.err)
		}
		note := fmt.Sprintf("%s, started %s; fault took %v; %d bytes echoed intact", f.topo.Name, f.start, run.faultFor.Round(time.Millisecond), run.bytes)
		r.add(Figure{Part: pathPart, Name: "longest stall, " + f.name, Value: ms(run.stall), Unit: "ms",
			Baseline: ms(run.before), BaseName: "longest gap before the fault", Note: note})
		if f.lost {
			r.add(Figure{Part: pathPart, Name: "dead path found, " + f.name, Value: ms(run.detected), Unit: "ms",
				Note: "from the fault to path_losses in the connector's status; " + note})
			r.add(Figure{Part: pathPart, Name: "on a path again, " + f.name, Value: ms(run.resumed), Unit: "ms",
				Note: "from the fault to the session attached again; " + note})
		}
		r.add(Figure{Part: pathPart, Name: "direct again, " + f.name, Value: ms(run.direct - run.faultFor), Unit: "ms",
			Note: "from the end of the fault to the session attached on a direct path; " + note})
	}
	return nil
}

func pathOnce(ctx context.Context, bin binaries, tmp string, f pathFault) (run pathRun) {
	ctx, cancel := context.WithTimeout(ctx, pathBudget)
	defer cancel()
	l, err := newPunchLab(ctx, bin, tmp, f.topo)
	if err != nil {
		return pathRun{err: err}
	}
	defer l.close()
	b := l.lab.Host("b")
	dir := l.dir("connector")
	p, err := b.StartCommand(ctx, natlab.Command{Path: bin.agent, Args: []string{"--state-dir", dir, "connect", l.ticket,
		"--listen", fmt.Sprintf("127.0.0.1:%d", pathListenPort)}})
	if err != nil {
		return pathRun{err: err}
	}
	defer p.Stop()
	addr, err := l.line(p, 30*time.Second)
	if err != nil {
		return pathRun{err: err}
	}
	c, err := b.Dial(ctx, "tcp", addr)
	if err != nil {
		return pathRun{err: err}
	}
	defer c.Close()
	peer := func() (peerJSON, bool) {
		pj, err := l.connectorPeer(ctx, dir)
		return pj, err == nil
	}
	if err := pathWait(ctx, 30*time.Second, func() bool { pj, ok := peer(); return ok && pj.Path == f.start && !pj.Paused }); err != nil {
		return pathRun{err: fmt.Errorf("session on %s: %w", f.start, err)}
	}
	s := newPathStream(c)
	defer s.stop()
	time.Sleep(5 * time.Second)
	run.before = s.resetGap()
	t0 := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- f.inject(ctx, l.lab) }()
	var faultDone time.Time
	err = pathWait(ctx, 2*time.Minute, func() bool {
		select {
		case err := <-errc:
			if err != nil {
				run.err = err
				return true
			}
			faultDone = time.Now()
		default:
		}
		pj, ok := peer()
		if !ok {
			return false
		}
		since := time.Since(t0)
		if pj.Losses > 0 && run.detected == 0 {
			run.detected = since
		}
		if run.detected != 0 && run.resumed == 0 && !pj.Paused {
			run.resumed = since
		}
		if !faultDone.IsZero() && pj.Path == pathDirect && !pj.Paused && (!f.lost || pj.Losses > 0) {
			run.direct, run.faultFor = since, faultDone.Sub(t0)
			return true
		}
		return false
	})
	if run.err != nil {
		return run
	}
	if err != nil {
		return pathRun{err: fmt.Errorf("direct again: %w", err)}
	}
	time.Sleep(3 * time.Second) // the stream crosses the new path too
	run.stall, run.bytes = s.resetGap(), s.read.Load()
	if err := s.stop(); err != nil {
		return pathRun{err: fmt.Errorf("the stream: %w", err)}
	}
	return run
}

// pathWait polls cond every 100 ms for up to d.
func pathWait(ctx context.Context, d time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// pathStream writes a seeded stream to an echo and checks what comes back,
// keeping the longest gap between delivered bytes.
type pathStream struct {
	c       net.Conn
	read    atomic.Int64
	mu      sync.Mutex
	last    time.Time
	gap     time.Duration
	done    chan struct{}
	stopped sync.Once
	errc    chan error
}

func newPathStream(c net.Conn) *pathStream {
	s := &pathStream{c: c, last: time.Now(), done: make(chan struct{}), errc: make(chan error, 2)}
	seed := [32]byte{7}
	go func() {
		gen, buf := rand.NewChaCha8(seed), make([]byte, pathChunk)
		t := time.NewTicker(pathChunkEvery)
		defer t.Stop()
		for {
			gen.Read(buf)
			if _, err := c.Write(buf); err != nil {
				s.errc <- s.ended(fmt.Errorf("write: %w", err))
				return
			}
			select {
			case <-s.done:
				s.errc <- nil
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		gen := rand.NewChaCha8(seed)
		want, got := make([]byte, 32<<10), make([]byte, 32<<10)
		for {
			n, err := c.Read(got)
			if n > 0 {
				gen.Read(want[:n])
				if !bytes.Equal(want[:n], got[:n]) {
					s.errc <- fmt.Errorf("byte %d and after differ from what was sent", s.read.Load())
					return
				}
				s.read.Add(int64(n))
				s.mu.Lock()
				now := time.Now()
				s.gap, s.last = max(s.gap, now.Sub(s.last)), now
				s.mu.Unlock()
			}
			if err != nil {
				s.errc <- s.ended(fmt.Errorf("read after %d bytes: %w", s.read.Load(), err))
				return
			}
		}
	}()
	return s
}

// ended is nil for an error that stop caused.
func (s *pathStream) ended(err error) error {
	select {
	case <-s.done:
		return nil
	default:
		return err
	}
}

// resetGap returns the longest gap since the last call and starts anew.
func (s *pathStream) resetGap() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := max(s.gap, time.Since(s.last))
	s.gap = 0
	return g
}

// stop ends the stream and returns the first error either side had.
func (s *pathStream) stop() error {
	var err error
	s.stopped.Do(func() {
		close(s.done)
		s.c.SetReadDeadline(time.Now().Add(time.Second))
		for range 2 {
			if e := <-s.errc; e != nil && err == nil {
				err = e
			}
		}
	})
	return err
}
