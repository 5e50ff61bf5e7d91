package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/natlab"
)

// steadyStream is one forwarded connection carrying chunk bytes every
// every, echoed by the share and checked byte for byte, as an ssh session
// or a database client would see it: the bytes of a seeded generator, so
// that the reader knows what must come back without keeping it.
type steadyStream struct {
	c        net.Conn
	chunks   int
	chunk    int
	every    time.Duration
	read     atomic.Int64
	maxStall atomic.Int64 // longest gap between delivered bytes, ns
	stallEnd atomic.Int64 // when it ended, unix ns
	done     chan error
}

func startStream(c net.Conn, chunks, chunk int, every time.Duration) *steadyStream {
	s := &steadyStream{c: c, chunks: chunks, chunk: chunk, every: every, done: make(chan error, 2)}
	seed := [32]byte{1}
	go func() { // the writer
		gen := rand.NewChaCha8(seed)
		buf := make([]byte, chunk)
		t := time.NewTicker(every)
		defer t.Stop()
		for range chunks {
			gen.Read(buf)
			if _, err := c.Write(buf); err != nil {
				s.done <- fmt.Errorf("write: %w", err)
				return
			}
			<-t.C
		}
	}()
	go func() { // the reader
		gen := rand.NewChaCha8(seed)
		want, got := make([]byte, chunk), make([]byte, chunk)
		last := time.Now()
		for i := range chunks {
			gen.Read(want)
			for off := 0; off < chunk; {
				c.SetReadDeadline(time.Now().Add(2 * time.Minute))
				n, err := c.Read(got[off:])
				if n > 0 {
					if gap := time.Since(last); gap > time.Duration(s.maxStall.Load()) {
						s.maxStall.Store(int64(gap))
						s.stallEnd.Store(time.Now().UnixNano())
					}
					last = time.Now()
				}
				off += n
				s.read.Add(int64(n))
				if err != nil {
					s.done <- fmt.Errorf("read after %d bytes: %w", s.read.Load(), err)
					return
				}
			}
			if !bytes.Equal(want, got) {
				s.done <- fmt.Errorf("chunk %d differs from what was written", i)
				return
			}
		}
		s.done <- nil
	}()
	return s
}

// TestLabPathSurvives: a forwarded connection carrying a steady echoed
// stream survives the death of its direct path: the session resumes on
// the relay, comes back to direct once the fault is gone, and the stream
// arrives intact. One namespace lab per fault, in parallel.
func TestLabPathSurvives(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// fault breaks the direct path and returns the repair, nil when
		// the fault repairs itself (a flushed table fills again).
		fault func(w *labWorld) (repair func())
		// relayed: the fault leaves only the relay until it is repaired;
		// lost: it kills the path, which the session must replace.
		relayed, lost bool
	}{
		{"blackhole 20s", func(w *labWorld) func() {
			cut := cutBetweenNATs(w)
			return func() { time.Sleep(20 * time.Second); cut() }
		}, true, true},
		{"conntrack flush", func(w *labWorld) func() {
			for _, gw := range []string{"gw-a", "gw-b"} {
				if err := w.lab.FlushConntrack(w.ctx, gw); err != nil {
					w.t.Fatal(err)
				}
			}
			return nil
		}, false, false},
		{"sharer moves", func(w *labWorld) func() {
			moved, err := w.lab.Host("a").Renumber(w.ctx)
			if err != nil {
				w.t.Fatal(err)
			}
			w.t.Logf("the sharer's host moved to %v", moved)
			return nil
		}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := newLabWorld(t, natlab.Pair(natlab.BehindCone, natlab.BehindCone))
			_, _, addr := w.shareConnect()
			c, err := w.lab.Host("b").Dial(w.ctx, "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s := startStream(c, 1200, 64<<10, 50*time.Millisecond) // 60 s, 1.3 MB/s each way
			w.onlyPath(w.connDir, "direct")
			time.Sleep(5 * time.Second)

			faulted := time.Now()
			repair := tt.fault(w)
			if tt.relayed {
				w.pathAfter(w.connDir, "relay", 30*time.Second, func(agent.PeerStatus) bool { return true })
				t.Logf("resumed on the relay %v after the fault", time.Since(faulted).Round(time.Millisecond))
			}
			repaired := time.Now()
			if repair != nil {
				repair()
				repaired = time.Now()
			}
			// A flushed NAT may map the flow anew on its next packet, the
			// path never lost; a cut one is lost and comes back.
			p := w.pathAfter(w.connDir, "direct", 60*time.Second, func(p agent.PeerStatus) bool { return !tt.lost || p.PathLosses > 0 })
			t.Logf("direct %v after the repair; %d paths lost, history %+v", time.Since(repaired).Round(time.Millisecond), p.PathLosses, p.PathHistory)
			select {
			case err := <-s.done:
				if err != nil {
					t.Fatalf("the stream broke: %v", err)
				}
			case <-time.After(3 * time.Minute):
				t.Fatalf("the stream stalled at %d bytes", s.read.Load())
			}
			t.Logf("stream intact, %d bytes echoed; longest stall %v, ended %v after the fault", s.read.Load(),
				time.Duration(s.maxStall.Load()).Round(time.Millisecond), time.Unix(0, s.stallEnd.Load()).Sub(faulted).Round(time.Millisecond))
		})
	}
}

// TestLabNATSwapGoesDirect: a pair that only a relay can join (the
// connector behind a symmetric NAT) gets a NAT that can be punched, mid-
// session: the relayed session, trying direct again, moves there with its
// open connection intact.
func TestLabNATSwapGoesDirect(t *testing.T) {
	t.Parallel()
	w := newLabWorld(t, natlab.Pair(natlab.BehindCone, natlab.BehindSym))
	_, _, addr := w.shareConnect()
	c, err := w.lab.Host("b").Dial(w.ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := startStream(c, 1400, 64<<10, 50*time.Millisecond) // 70 s: the first retry of direct comes 24-30 s after the relay
	w.onlyPath(w.connDir, "relay")
	if err := w.lab.Router("gw-b").SetNAT(w.ctx, natlab.Cone); err != nil {
		t.Fatal(err)
	}
	swapped := time.Now()
	p := w.pathAfter(w.connDir, "direct", 60*time.Second, func(agent.PeerStatus) bool { return true })
	t.Logf("direct %v after the NAT became cone; history %+v", time.Since(swapped).Round(time.Millisecond), p.PathHistory)
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("the stream broke: %v", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("the stream stalled at %d bytes", s.read.Load())
	}
	t.Logf("stream intact, %d bytes echoed; longest stall %v", s.read.Load(), time.Duration(s.maxStall.Load()).Round(time.Millisecond))
}

// cutBetweenNATs drops everything between the two NATs' public addresses
// on the lab's internet, the broker still reachable; it returns the undo.
func cutBetweenNATs(w *labWorld) func() {
	inet := w.lab.Internet()
	pa, pb := w.lab.PublicIP("a"), w.lab.PublicIP("b")
	nft := func(args ...string) {
		w.t.Helper()
		if out, err := inet.Run(w.ctx, "nft", args...); err != nil {
			w.t.Fatalf("nft %v: %v\n%s", args, err, out)
		}
	}
	nft("add", "table", "bridge", "pptest")
	nft("add", "chain", "bridge", "pptest", "cut", "{ type filter hook forward priority 0 ; }")
	nft("add", "rule", "bridge", "pptest", "cut", "ip", "saddr", pa.String(), "ip", "daddr", pb.String(), "drop")
	nft("add", "rule", "bridge", "pptest", "cut", "ip", "saddr", pb.String(), "ip", "daddr", pa.String(), "drop")
	return func() { nft("delete", "table", "bridge", "pptest") }
}

// pathAfter waits up to d until dir has one peer session, on path and
// attached, for which cond holds.
func (w *labWorld) pathAfter(dir, path string, d time.Duration, cond func(agent.PeerStatus) bool) agent.PeerStatus {
	w.t.Helper()
	var ps []agent.PeerStatus
	eventually(w.t, d, "one peer session on path "+path, func() bool {
		ps = w.peers(dir)
		return len(ps) == 1 && ps[0].Path == path && !ps[0].Paused && cond(ps[0])
	})
	return ps[0]
}

// TestNoPathEndsWithReason: a relayed session whose relay (the broker, the
// only one) dies and never comes back. The application writing into the
// forwarded connection pauses once the resume buffer (64 KiB here) is
// unacknowledged; at the resume deadline (5 s here) the connection is reset
// on both ends, the agents log why, and neither keeps anything of the
// session: no stream, no peer session, no goroutine or fd above its idle
// count before the connection.
func TestNoPathEndsWithReason(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	const resumeCfg = "resume: {timeout: 5s, buffer_kib: 64}\n"
	target, ends := endlessServer(t, false)
	sharerMetrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	sharerCfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, sharerCfg, fmt.Sprintf("%smetrics_listen: %s\nshares:\n  - name: sink\n    target: %s\n    path: relay\n", resumeCfg, sharerMetrics, target))
	sharer, tickets := upTickets(t, w.sharerDir, sharerCfg, 1)
	connMetrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	connCfg := filepath.Join(t.TempDir(), "agent.yaml")
	writeFile(t, connCfg, fmt.Sprintf("%smetrics_listen: %s\nconnects:\n  - ticket: %s\n    listen: 127.0.0.1:0\n    path: relay\n", resumeCfg, connMetrics, tickets["sink"]))
	conn := start(t, "connector", bins.agent, "--state-dir", w.connDir, "up", "-c", connCfg)
	addr := listens(t, w.connDir, 1)["sink"].Listen

	// The idle baseline: the session up, no connection on it.
	echoless, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	echoless.Close() // makes the session; the target sees one connection end
	<-ends
	eventually(t, 30*time.Second, "both sides idle with a session", func() bool {
		s, c := status(t, w.sharerDir), status(t, w.connDir)
		return len(s.Agents) == 1 && len(s.Agents[0].Peers) == 1 && openStreams(s) == 0 &&
			len(c.Agents) == 1 && len(c.Agents[0].Peers) == 1 && openStreams(c) == 0
	})
	time.Sleep(time.Second)
	type gauges struct{ goroutines, fds float64 }
	read := func(m string) gauges {
		return gauges{metric(t, m, "go_goroutines"), metric(t, m, "process_open_fds")}
	}
	idle := map[string]gauges{"sharer": read(sharerMetrics), "connector": read(connMetrics)}

	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wrote := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, zeros{})
		wrote <- err
	}()
	time.Sleep(time.Second)
	w.broker.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()

	// While paused, the writer is held at the buffer bound.
	var unacked int
	eventually(t, 20*time.Second, "the connector's session paused at the buffer bound", func() bool {
		st := status(t, w.connDir)
		if len(st.Agents) != 1 || len(st.Agents[0].Peers) != 1 {
			return false
		}
		p := st.Agents[0].Peers[0]
		unacked = p.Unacked
		return p.Paused && p.Unacked == 64<<10
	})
	select {
	case err := <-wrote:
		wantReset(t, "the application's write", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the application's write still blocked 30 s after the relay died")
	}
	select {
	case err := <-ends:
		wantReset(t, "the target's read", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the target's connection did not end")
	}
	t.Logf("reset %v after the relay died; %d bytes unacknowledged while paused", time.Since(killed).Round(100*time.Millisecond), unacked)
	for name, dir := range map[string]string{"sharer": w.sharerDir, "connector": w.connDir} {
		m := map[string]string{"sharer": sharerMetrics, "connector": connMetrics}[name]
		eventually(t, 30*time.Second, name+" back to idle, with nothing of the session", func() bool {
			st := status(t, dir)
			g := read(m)
			return len(st.Agents) == 1 && len(st.Agents[0].Peers) == 0 && openStreams(st) == 0 &&
				g.goroutines <= idle[name].goroutines && g.fds <= idle[name].fds
		})
	}
	for _, p := range []*proc{sharer, conn} {
		if out := p.stderr.String(); !strings.Contains(out, "session not resumed") || !strings.Contains(out, "no path for 5s") {
			t.Errorf("%s does not log why the session ended:\n%s", p.name, out)
		}
	}
}
