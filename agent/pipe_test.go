package agent

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/testutil"
	"github.com/peerport/peerport/mux"
)

// pipeWorld is one forwarded connection: app <-> local TCP conn <-> pipe
// <-> stream over a mux session on loopback <-> peer.
type pipeWorld struct {
	a     *Agent
	stats counters
	app   net.Conn    // the application's end of the local connection
	peer  *mux.Stream // the far end of the stream
	sess  [2]*mux.Session
}

func newPipeWorld(t *testing.T) *pipeWorld {
	t.Helper()
	log := testutil.Log(t, "pipe")
	w := &pipeWorld{a: pipeAgent(log)}
	c1, c2 := testutil.TCPPair(t)
	var err error
	if w.sess[0], err = mux.Client(c1, log); err != nil {
		t.Fatal(err)
	}
	if w.sess[1], err = mux.Server(c2, log); err != nil {
		t.Fatal(err)
	}
	st, err := w.sess[0].OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte{0}) // the SYN goes with it
	if w.peer, err = w.sess[1].AcceptStream(); err != nil {
		t.Fatal(err)
	}
	w.peer.Read(make([]byte, 1))
	var local net.Conn
	w.app, local = testutil.TCPPair(t)
	w.a.pipe(st, local, nil, &w.stats)
	t.Cleanup(func() {
		w.app.Close()
		w.sess[0].Close()
		w.sess[1].Close()
		w.a.parker.close()
		w.a.wg.Wait()
		w.a.release.stop()
	})
	return w
}

// roundTrip sends msg both ways through the pipe.
func (w *pipeWorld) roundTrip(t *testing.T, msg string) {
	t.Helper()
	if _, err := io.WriteString(w.app, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(w.peer, got); err != nil || string(got) != msg {
		t.Fatalf("peer got %q, %v", got, err)
	}
	if _, err := io.WriteString(w.peer, msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(w.app, got); err != nil || string(got) != msg {
		t.Fatalf("app got %q, %v", got, err)
	}
}

func (w *pipeWorld) parked() int { return w.a.parker.count() }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wantReset reads c to its end, which must be a reset, not EOF.
func wantReset(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app read %d bytes, then %v; want ECONNRESET", len(b), err)
	}
}

// needParker skips where there is no parker (off Linux); the test's agents
// park after testParkAfter (pipeAgent).
func needParker(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the parker is Linux only")
	}
}

const testParkAfter = 50 * time.Millisecond

// pipeAgent is an agent for pipes alone, quick to park.
func pipeAgent(log logrus.FieldLogger) *Agent {
	a := &Agent{log: log, quiet: quietWatch{after: testParkAfter}}
	a.parker.spawn = a.spawn
	return a
}

// TestPipeParks: a quiet connection is parked both ways, its local side in
// the agent's parker and its stream's reader in the session, so that no
// goroutine waits for it; it wakes for the next bytes either way, parks
// again, and its EOFs still pass from the parked state.
func TestPipeParks(t *testing.T) {
	needParker(t)
	w := newPipeWorld(t)
	parked := func() bool { return w.parked() == 1 && w.sess[0].Parked() == 1 && pipeGoroutines() == 0 }
	w.roundTrip(t, "hello")
	eventually(t, "parked", parked)
	w.roundTrip(t, "again") // woken by the bytes
	eventually(t, "parked again", parked)
	if _, err := w.peer.Write([]byte("from the peer")); err != nil { // the stream's side wakes first
		t.Fatal(err)
	}
	b := make([]byte, 64)
	if n, err := w.app.Read(b); err != nil || string(b[:n]) != "from the peer" {
		t.Fatalf("app read %q, %v", b[:n], err)
	}
	eventually(t, "parked a third time", parked)

	w.app.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(w.peer); err != nil || len(b) != 0 {
		t.Fatalf("peer read %q, %v; want EOF", b, err)
	}
	eventually(t, "the stream's reader parked after the local EOF", func() bool { return w.sess[0].Parked() == 1 })
	w.peer.Close()
	if b, err := io.ReadAll(w.app); err != nil || len(b) != 0 {
		t.Fatalf("app read %q, %v; want EOF", b, err)
	}
	eventually(t, "pipe ended", func() bool { return w.stats.streams.Load() == 0 })
	if n, m := w.parked(), w.sess[0].Parked(); n != 0 || m != 0 {
		t.Fatalf("%d local sides and %d streams still parked", n, m)
	}
}

// pipeGoroutines counts the goroutines running a pipe's direction.
func pipeGoroutines() int {
	b := make([]byte, 1<<20)
	b = b[:runtime.Stack(b, true)]
	return bytes.Count(b, []byte("agent.(*pipe).toLocal")) + bytes.Count(b, []byte("agent.(*pipe).toPeer"))
}

// TestPipeAbortParked: when the session dies while the local side is
// parked, the local connection is reset (the transfer was cut) and the
// pipe ends.
func TestPipeAbortParked(t *testing.T) {
	needParker(t)
	w := newPipeWorld(t)
	w.roundTrip(t, "x")
	eventually(t, "parked", func() bool { return w.parked() == 1 })
	w.sess[1].Close()
	wantReset(t, w.app)
	eventually(t, "pipe ended", func() bool { return w.stats.streams.Load() == 0 && w.parked() == 0 })
}

// TestPipeStopParked: an agent stopping resets parked connections.
func TestPipeStopParked(t *testing.T) {
	needParker(t)
	w := newPipeWorld(t)
	w.roundTrip(t, "x")
	eventually(t, "parked", func() bool { return w.parked() == 1 })
	w.a.parker.close()
	wantReset(t, w.app)
	w.sess[0].Close() // what the agent's closeSessions does
	eventually(t, "pipe ended", func() bool { return w.stats.streams.Load() == 0 })
}

// TestPipeBulk: 32 MiB each way at once, through parking and waking.
func TestPipeBulk(t *testing.T) {
	needParker(t)
	w := newPipeWorld(t)
	const size = 32 << 20
	errc := make(chan error, 2)
	go func() {
		_, err := w.app.Write(make([]byte, size))
		w.app.(*net.TCPConn).CloseWrite()
		errc <- err
	}()
	go func() {
		n, err := io.Copy(io.Discard, w.peer)
		if err == nil && n != size {
			err = io.ErrUnexpectedEOF
		}
		errc <- err
	}()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if in, out := w.stats.bytesIn.Load(), w.stats.bytesOut.Load(); out != size || in != 0 {
		t.Fatalf("counted in %d out %d, want 0 and %d", in, out, size)
	}
}

// TestPipeStopWhileQuiet: as the agent stops, a connection whose peer side
// already ended and whose local side goes quiet too late to be parked is
// closed, not waited for forever (which would hold up the agent's exit).
func TestPipeStopWhileQuiet(t *testing.T) {
	needParker(t)
	w := newPipeWorld(t)
	w.roundTrip(t, "x")
	w.peer.Close() // the peer's FIN: peer -> local ends cleanly
	if b, err := io.ReadAll(w.app); err != nil || len(b) != 0 {
		t.Fatalf("app read %q, %v; want EOF", b, err)
	}
	w.a.parker.close()
	eventually(t, "pipe ended", func() bool { return w.stats.streams.Load() == 0 })
}
