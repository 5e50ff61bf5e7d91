package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/testutil"
	"github.com/peerport/peerport/mux"
)

// tunnel is two agents' pipes over one mux session on loopback, as a
// connector and a sharer hold them: app <-> pipe <-> session <-> pipe <->
// target. Each conn is one forwarded connection.
type tunnel struct {
	conn, share *Agent
	sess        [2]*mux.Session // connector's, sharer's
}

type tunnelConn struct {
	app, target net.Conn
}

func newTunnel(t *testing.T) *tunnel {
	t.Helper()
	log := testutil.Log(t, "tunnel")
	w := &tunnel{conn: pipeAgent(log.WithField("agent", "connector")), share: pipeAgent(log.WithField("agent", "sharer"))}
	c1, c2 := testutil.TCPPair(t)
	var err error
	if w.sess[0], err = mux.Client(c1, w.conn.log); err != nil {
		t.Fatal(err)
	}
	if w.sess[1], err = mux.Server(c2, w.share.log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.sess[0].Close()
		w.sess[1].Close()
		for _, a := range []*Agent{w.conn, w.share} {
			a.parker.close()
			a.wg.Wait()
			a.release.stop()
		}
	})
	return w
}

// open makes one forwarded connection.
func (w *tunnel) open(t *testing.T) tunnelConn {
	t.Helper()
	st, err := w.sess[0].OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte{0}) // the SYN goes with it
	peer, err := w.sess[1].AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	peer.Read(make([]byte, 1))
	var tc tunnelConn
	var local, sharerLocal net.Conn
	tc.app, local = testutil.TCPPair(t)
	sharerLocal, tc.target = testutil.TCPPair(t)
	t.Cleanup(func() { tc.app.Close(); tc.target.Close() })
	w.conn.pipe(st, local, nil, &w.conn.stats)
	w.share.pipe(peer, sharerLocal, nil, &w.share.stats)
	return tc
}

// open counts what each side still holds: pipes by the agents' counters
// and streams by the sessions themselves.
func (w *tunnel) open4() [4]int64 {
	return [4]int64{w.conn.stats.streams.Load(), w.share.stats.streams.Load(),
		int64(w.sess[0].NumStreams()), int64(w.sess[1].NumStreams())}
}

// flow moves bytes through c both ways until it ends or halt stops the
// writer: one goroutine writes, one reads. read gets how the connection
// ended to it: the first error either saw, or io.EOF for a clean end.
type flow struct {
	read    chan error
	moved   chan struct{}
	stop    chan struct{}
	halt    func() // stops the writer
	written sync.WaitGroup
}

func startFlow(c net.Conn) *flow {
	f := &flow{read: make(chan error, 1), moved: make(chan struct{}), stop: make(chan struct{})}
	f.halt = sync.OnceFunc(func() { close(f.stop) })
	f.written.Add(1)
	go func() {
		defer f.written.Done()
		b := make([]byte, 32<<10)
		for {
			select {
			case <-f.stop:
				return
			default:
			}
			if _, err := c.Write(b); err != nil {
				f.report(err)
				return
			}
		}
	}()
	go func() {
		b := make([]byte, 32<<10)
		var n int
		for {
			m, err := c.Read(b)
			if n < 1<<20 && n+m >= 1<<20 {
				close(f.moved)
			}
			n += m
			if err != nil {
				f.report(err)
				return
			}
		}
	}()
	return f
}

func (f *flow) report(err error) {
	select {
	case f.read <- err:
	default:
	}
}

// ended waits for the connection's end.
func (f *flow) ended(t *testing.T, who string) error {
	t.Helper()
	select {
	case err := <-f.read:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: the connection did not end", who)
	}
	return nil
}

func rst(c net.Conn) {
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// TestPipeAbruptEnds is iperf3 -P 8 and worse: eight forwarded connections
// move data both ways at once, then end each way there is, and nothing is
// left behind. An RST from either application reaches the other as an RST
// (not a clean FIN), a graceful end stays a clean half-close carried
// across, and the session's death resets both applications; after all of
// them both agents count zero open connections, both sessions hold zero
// streams, and goroutines and heap return to where they were.
func TestPipeAbruptEnds(t *testing.T) {
	needParker(t)
	const conns = 8
	type end int
	const (
		appRST end = iota
		targetRST
		graceful
	)
	cases := []struct {
		name    string
		ends    func(i int) end
		killSes bool // the session dies under them instead
	}{
		{"app resets", func(int) end { return appRST }, false},
		{"target resets", func(int) end { return targetRST }, false},
		{"graceful", func(int) end { return graceful }, false},
		{"mixed", func(i int) end { return end(i % 3) }, false},
		{"session dies", nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newTunnel(t)
			baseG := runtime.NumGoroutine()
			baseHeap := heapInUse()
			cs := make([]tunnelConn, conns)
			appF, targetF := make([]*flow, conns), make([]*flow, conns)
			for i := range cs {
				cs[i] = w.open(t)
				appF[i], targetF[i] = startFlow(cs[i].app), startFlow(cs[i].target)
			}
			for i := range cs { // a megabyte each way, all at once
				for side, f := range map[string]*flow{"app": appF[i], "target": targetF[i]} {
					select {
					case <-f.moved:
					case <-time.After(30 * time.Second):
						t.Fatalf("conn %d: the %s read less than a megabyte in 30 s: stalled (connector %d parked, sharer %d parked)",
							i, side, w.conn.parker.count(), w.share.parker.count())
					}
				}
			}
			if tc.killSes {
				for i := range cs {
					appF[i].halt()
					targetF[i].halt()
					appF[i].written.Wait()
					targetF[i].written.Wait()
				}
				w.sess[1].Close()
			}
			var wg sync.WaitGroup
			for i, c := range cs {
				if tc.killSes {
					break
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					// The side that sees the reset only reads from now on: a
					// reset is reported to one syscall, and a write of its
					// own could take it from the read we check.
					switch tc.ends(i) {
					case appRST:
						targetF[i].halt()
						targetF[i].written.Wait()
						rst(c.app)
					case targetRST:
						appF[i].halt()
						appF[i].written.Wait()
						rst(c.target)
					case graceful:
						appF[i].halt()
						targetF[i].halt()
						appF[i].written.Wait()
						targetF[i].written.Wait()
						c.app.(*net.TCPConn).CloseWrite()
						c.target.(*net.TCPConn).CloseWrite()
					}
				}()
			}
			wg.Wait()
			for i, c := range cs {
				who := fmt.Sprintf("conn %d", i)
				var e end = -1
				if !tc.killSes {
					e = tc.ends(i)
				}
				// The side that did not end it sees how it ended.
				switch e {
				case appRST:
					if err := targetF[i].ended(t, who+" target"); !errors.Is(err, syscall.ECONNRESET) {
						t.Errorf("%s: the app reset; the target read %v, want ECONNRESET", who, err)
					}
				case targetRST:
					if err := appF[i].ended(t, who+" app"); !errors.Is(err, syscall.ECONNRESET) {
						t.Errorf("%s: the target reset; the app read %v, want ECONNRESET", who, err)
					}
				case graceful:
					for side, f := range map[string]*flow{"app": appF[i], "target": targetF[i]} {
						if err := f.ended(t, who+" "+side); err != io.EOF {
							t.Errorf("%s: graceful end; the %s read %v, want EOF", who, side, err)
						}
					}
					c.app.Close()
					c.target.Close()
				default: // the session died: both applications see a reset
					for side, f := range map[string]*flow{"app": appF[i], "target": targetF[i]} {
						if err := f.ended(t, who+" "+side); !errors.Is(err, syscall.ECONNRESET) {
							t.Errorf("%s: the session died; the %s read %v, want ECONNRESET", who, side, err)
						}
					}
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for w.open4() != [4]int64{} && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := w.open4(); n != [4]int64{} {
				t.Fatalf("left open: connector %d pipes, sharer %d pipes, sessions %d and %d streams", n[0], n[1], n[2], n[3])
			}
			for _, c := range cs {
				c.app.Close()
				c.target.Close()
			}
			for i := range cs {
				appF[i].halt()
				targetF[i].halt()
				appF[i].written.Wait()
				targetF[i].written.Wait()
			}
			// What moving data took comes back: no goroutine, buffer or
			// window memory stays with an ended connection.
			for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > baseG+4 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			if g := runtime.NumGoroutine(); g > baseG+4 {
				t.Errorf("%d goroutines after the run, %d before", g, baseG)
			}
			if h := heapInUse(); h > baseHeap+8<<20 {
				t.Errorf("heap in use %d KiB after the run, %d KiB before", h>>10, baseHeap>>10)
			}
			t.Logf("after the run: %d goroutines (%d before), heap in use %d KiB (%d before)",
				runtime.NumGoroutine(), baseG, heapInUse()>>10, baseHeap>>10)
		})
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
