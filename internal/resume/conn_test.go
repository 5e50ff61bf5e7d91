package resume

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/testutil"
)

// faultConn is a carrier the test can break: once cut, writes past the
// budget vanish (the path is a black hole: nothing fails, nothing arrives).
type faultConn struct {
	net.Conn
	budget  atomic.Int64 // bytes still delivered; <0: no limit
	written atomic.Int64
	trickle atomic.Bool // writes go out in small pieces, spaced
}

func newFault(c net.Conn) *faultConn {
	f := &faultConn{Conn: c}
	f.budget.Store(-1)
	return f
}

// cutAfter lets n more bytes through, then drops the rest.
func (f *faultConn) cutAfter(n int64) { f.budget.Store(n) }

func (f *faultConn) Write(p []byte) (int, error) {
	f.written.Add(int64(len(p)))
	for {
		b := f.budget.Load()
		if b < 0 && f.trickle.Load() {
			for off := 0; off < len(p); off += 1000 {
				if _, err := f.Conn.Write(p[off:min(off+1000, len(p))]); err != nil {
					return off, err
				}
				time.Sleep(20 * time.Microsecond)
			}
			return len(p), nil
		}
		if b < 0 {
			return f.Conn.Write(p)
		}
		k := min(b, int64(len(p)))
		if !f.budget.CompareAndSwap(b, b-k) {
			continue
		}
		if k > 0 {
			if _, err := f.Conn.Write(p[:k]); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
}

// testCfg finds dead paths in about a second: quick enough for the
// tests, slow enough that a race-instrumented run on a loaded machine does
// not take a stalled scheduler for a dead path (200 ms did, in CI).
var testCfg = Config{KeepAlive: 200 * time.Millisecond, DeadFloor: time.Second, ResumeTimeout: 10 * time.Second}

// carriers returns a fresh pair of loopback carriers, breakable.
func carriers(t *testing.T) (*faultConn, *faultConn) {
	a, b := testutil.TCPPair(t)
	return newFault(a), newFault(b)
}

// session starts a session over a fresh carrier pair: the dialer's end,
// the acceptor's, the table, and the carriers.
func session(t *testing.T, cfg Config) (*Conn, *Conn, *Table, [2]*faultConn) {
	t.Helper()
	tab := NewTable(cfg)
	cd, ca := carriers(t)
	d, a := handshake(t, tab, cd, ca, nil)
	t.Cleanup(func() {
		d.Close()
		a.Close()
		tab.Close()
	})
	return d, a, tab, [2]*faultConn{cd, ca}
}

// handshake runs Dial (or d.Resume) against tab.Accept over one carrier pair.
func handshake(t *testing.T, tab *Table, cd, ca net.Conn, d *Conn) (*Conn, *Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   *Conn
		err error
	}
	ac := make(chan res, 1)
	go func() {
		c, _, err := tab.Accept(ctx, ca, "peer")
		ac <- res{c, err}
	}()
	var err error
	if d == nil {
		d, err = Dial(ctx, cd, testCfg)
	} else {
		err = d.Resume(ctx, cd)
	}
	r := <-ac
	if err != nil || r.err != nil {
		t.Fatalf("handshake: dial %v, accept %v", err, r.err)
	}
	return d, r.c
}

func random(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// pump writes want to w and reads as much from r, reporting what it read.
func pump(w io.Writer, r io.Reader, want []byte) <-chan []byte {
	out := make(chan []byte, 1)
	go func() {
		go func() {
			for off := 0; off < len(want); off += 10000 {
				if _, err := w.Write(want[off:min(off+10000, len(want))]); err != nil {
					return
				}
			}
		}()
		got := make([]byte, len(want))
		n, _ := io.ReadFull(r, got)
		out <- got[:n]
	}()
	return out
}

func check(t *testing.T, what string, got <-chan []byte, want []byte) {
	t.Helper()
	select {
	case g := <-got:
		if !bytes.Equal(g, want) {
			t.Fatalf("%s: %d bytes arrived, %d written, first difference at %d", what, len(g), len(want), firstDiff(g, want))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not delivered", what)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestStreamBothWays(t *testing.T) {
	d, a, _, _ := session(t, testCfg)
	up, down := random(t, 8<<20), random(t, 8<<20)
	gotUp, gotDown := pump(d, a, up), pump(a, d, down)
	check(t, "up", gotUp, up)
	check(t, "down", gotDown, down)
	if s := d.Stats(); s.PathLosses != 0 || s.Acked > s.Written {
		t.Errorf("stats %+v", s)
	}
}

// A black hole under a busy session: the dialer notices, a new carrier
// takes over, and both streams arrive whole.
func TestResumeAfterBlackhole(t *testing.T) {
	d, a, tab, cs := session(t, testCfg)
	up, down := random(t, 6<<20), random(t, 6<<20)
	gotUp, gotDown := pump(d, a, up), pump(a, d, down)
	time.Sleep(20 * time.Millisecond)
	cs[0].cutAfter(0)
	cs[1].cutAfter(0)
	select {
	case <-d.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("dead path not noticed")
	}
	cd, ca := carriers(t)
	handshake(t, tab, cd, ca, d)
	check(t, "up", gotUp, up)
	check(t, "down", gotDown, down)
	if s := d.Stats(); s.Resumes != 1 || s.PathLosses != 1 {
		t.Errorf("dialer stats %+v", s)
	}
}

// A quiet session's dead path is found by keepalive alone.
func TestKeepaliveFindsDeadPath(t *testing.T) {
	d, a, _, cs := session(t, testCfg)
	cs[0].cutAfter(0)
	cs[1].cutAfter(0)
	for _, c := range []*Conn{d, a} {
		select {
		case <-c.Lost():
		case <-time.After(10 * time.Second):
			t.Fatalf("dialer %v: dead quiet path not noticed", c.dialer)
		}
	}
}

// On a quiet session only the dialer pings: one ping and one pong per
// KeepAlive.
func TestKeepaliveIsCheap(t *testing.T) {
	d, _, _, cs := session(t, testCfg)
	time.Sleep(10 * testCfg.KeepAlive)
	pings := cs[0].written.Load() / 12
	pongs := cs[1].written.Load() / 12
	if pings > 11 || pongs > 11 || pings == 0 {
		t.Errorf("%d bytes of pings and %d of pongs in 10 keepalive intervals", cs[0].written.Load(), cs[1].written.Load())
	}
	if d.Stats().RTT == 0 {
		t.Error("no round trip measured")
	}
}

// The carrier breaks at every byte offset around the hello and the first
// frames; the resumed session delivers each stream exactly once.
func TestResumeAtEveryOffset(t *testing.T) {
	msg := random(t, 2*MaxData+100)
	var offsets []int64
	for _, b := range []int64{0, frameHeaderLen + MaxData, 2 * (frameHeaderLen + MaxData), 2*(frameHeaderLen+MaxData) + frameHeaderLen + 100} {
		for k := b - 5; k <= b+5; k++ {
			if k >= 0 {
				offsets = append(offsets, k)
			}
		}
	}
	for _, k := range offsets {
		d, a, tab, cs := session(t, testCfg)
		cs[0].cutAfter(k)
		cs[1].cutAfter(k)
		gotUp, gotDown := pump(d, a, msg), pump(a, d, msg)
		time.Sleep(5 * time.Millisecond)
		cd, ca := carriers(t)
		handshake(t, tab, cd, ca, d)
		check(t, "up", gotUp, msg)
		check(t, "down", gotDown, msg)
		d.Close()
		a.Close()
	}
}

// Resumes one after the other, the second before the first carried
// anything, and a resume while the old carrier still works.
func TestRepeatedResume(t *testing.T) {
	d, a, tab, _ := session(t, testCfg)
	up := random(t, 4<<20)
	gotUp := pump(d, a, up)
	for range 3 {
		cd, ca := carriers(t)
		handshake(t, tab, cd, ca, d)
	}
	check(t, "up", gotUp, up)
	if s := d.Stats(); s.Resumes != 3 || s.PathLosses != 0 {
		t.Errorf("dialer stats %+v", s)
	}
	if s := a.Stats(); s.Resumes != 3 {
		t.Errorf("acceptor stats %+v", s)
	}
}

func rawResume(t *testing.T, tab *Table, h Hello, peer string) (error, []byte) {
	t.Helper()
	cd, ca := carriers(t)
	errc := make(chan error, 1)
	go func() {
		_, _, err := tab.Accept(context.Background(), ca, peer)
		errc <- err
	}()
	b, _ := h.MarshalBinary()
	cd.Write(b)
	ans, _ := io.ReadAll(cd)
	return <-errc, ans
}

func TestResumeRefused(t *testing.T) {
	d, a, tab, _ := session(t, testCfg)
	if _, err := d.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}

	// Another peer naming our session is turned away; the session lives.
	err, ans := rawResume(t, tab, Hello{Session: d.ID(), Resume: true}, "intruder")
	if !errors.Is(err, ErrWrongPeer) || !bytes.Contains(ans, []byte(reasonWrong)) {
		t.Errorf("wrong peer: %v, answer %q", err, ans)
	}
	// A session the table does not know.
	err, ans = rawResume(t, tab, Hello{Session: SessionID{1}, Resume: true}, "peer")
	if !errors.Is(err, ErrUnknownSession) || !bytes.Contains(ans, []byte(reasonUnknown)) {
		t.Errorf("unknown session: %v, answer %q", err, ans)
	}
	cd, ca := carriers(t)
	handshake(t, tab, cd, ca, d) // still resumable by its own peer
	buf := make([]byte, 6)
	if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "before" {
		t.Fatalf("after refusals: %q %v", buf, err)
	}

	// A count beyond what was sent ends the session on both sides.
	err, ans = rawResume(t, tab, Hello{Session: d.ID(), Resume: true, Received: 1 << 40}, "peer")
	if !errors.Is(err, ErrStaleResume) || !bytes.Contains(ans, []byte(reasonStale)) {
		t.Errorf("stale resume: %v, answer %q", err, ans)
	}
	if _, err := a.Read(buf); !errors.Is(err, ErrStaleResume) {
		t.Errorf("acceptor read after a stale resume: %v", err)
	}
	cd, ca = carriers(t)
	go tab.Accept(context.Background(), ca, "peer")
	if err := d.Resume(context.Background(), cd); !errors.Is(err, ErrUnknownSession) {
		t.Errorf("resume of an ended session: %v", err)
	}
	if _, err := d.Write([]byte("x")); !errors.Is(err, ErrUnknownSession) {
		t.Errorf("write after the session ended: %v", err)
	}
}

// With no new path, writers pause at the buffer bound, and the session
// ends at the resume deadline with the reason on both sides.
func TestBufferBoundAndResumeTimeout(t *testing.T) {
	cfg := testCfg
	cfg.MaxUnacked, cfg.ResumeTimeout = 64<<10, 500*time.Millisecond
	tab := NewTable(cfg)
	defer tab.Close()
	cd, ca := carriers(t)
	ctx := context.Background()
	ac := make(chan *Conn, 1)
	go func() { c, _, _ := tab.Accept(ctx, ca, "peer"); ac <- c }()
	d, err := Dial(ctx, cd, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := <-ac
	defer d.Close()
	defer a.Close()
	cd.cutAfter(0)
	ca.cutAfter(0)
	n, err := d.Write(make([]byte, 1<<20))
	if n != cfg.MaxUnacked || !errors.Is(err, ErrResumeTimeout) {
		t.Errorf("write into a dead path: %d bytes taken, %v; want %d and ErrResumeTimeout", n, err, cfg.MaxUnacked)
	}
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, ErrResumeTimeout) {
		t.Errorf("acceptor read: %v", err)
	}
}

func TestCloseDeliversThenEOF(t *testing.T) {
	d, a, _, _ := session(t, testCfg)
	msg := random(t, 1<<20)
	if _, err := d.Write(msg); err != nil {
		t.Fatal(err)
	}
	d.Close()
	got, err := io.ReadAll(a)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("after the peer's close: %d bytes, %v", len(got), err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, ErrPeerClosed) {
		t.Errorf("write after the peer closed: %v", err)
	}
	if _, err := d.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
}

// Abandon, for a peer known gone, fails a writer paused at the bound and a
// blocked reader with its error at once, not after the resume timeout.
func TestAbandonEndsPausedSession(t *testing.T) {
	d, _, _, cs := session(t, testCfg)
	cs[0].cutAfter(0)
	cs[1].cutAfter(0)
	gone := errors.New("peer gone")
	ends := make(chan error, 2)
	go func() { _, err := d.Write(make([]byte, 2*DefaultMaxUnacked)); ends <- err }() // the dialer has the default bound
	go func() { _, err := d.Read(make([]byte, 1)); ends <- err }()
	select {
	case <-d.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the dead path was not found")
	}
	d.Abandon(gone)
	for range 2 {
		select {
		case err := <-ends:
			if !errors.Is(err, gone) {
				t.Errorf("after Abandon: %v, want its error", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a read or write still blocked after Abandon")
		}
	}
	if !errors.Is(d.Err(), gone) {
		t.Errorf("Err after Abandon: %v", d.Err())
	}
}

// An application that stops reading pauses the peer; it is not a dead path.
func TestSlowReaderIsNotDead(t *testing.T) {
	cfg := testCfg
	cfg.MaxUnacked = 64 << 10
	d, a, _, _ := session(t, cfg)
	msg := random(t, 1<<20)
	go d.Write(msg)
	time.Sleep(3 * cfg.DeadFloor)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(a, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %v", err)
	}
	if d.Stats().PathLosses+a.Stats().PathLosses != 0 {
		t.Errorf("a paused reader was taken for a dead path: %+v %+v", d.Stats(), a.Stats())
	}
}

func TestDeadlines(t *testing.T) {
	d, _, _, _ := session(t, testCfg)
	d.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := d.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read past its deadline: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.SetReadDeadline(time.Time{})
		d.Read(make([]byte, 1))
	}()
	time.Sleep(10 * time.Millisecond)
	d.SetReadDeadline(time.Now()) // wakes the blocked reader
	wg.Wait()
}

// After a burst, Trim lets the idle session's grown buffers go.
func TestTrimAfterBurst(t *testing.T) {
	d, a, _, _ := session(t, testCfg)
	msg := random(t, 1<<20)
	check(t, "burst", pump(d, a, msg), msg)
	caps := func() (int, int) {
		d.mu.Lock()
		defer d.mu.Unlock()
		a.mu.Lock()
		defer a.mu.Unlock()
		return cap(d.send.buf), cap(a.recv.buf)
	}
	if s, r := caps(); s == 0 && r == 0 {
		t.Fatal("the burst grew no buffer; the test proves nothing")
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		d.Trim()
		a.Trim()
		if s, r := caps(); s == 0 && r == 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("after Trim on an idle session: send buffer %d, receive buffer %d bytes", s, r)
		}
		time.Sleep(20 * time.Millisecond) // the last ack may still be on its way
	}
}

// Reads cut short by deadlines, at any point of a frame, lose nothing: a
// Read reads the carrier itself and leaves a frame it did not finish to
// the next reader, which the carrier's reader goroutine may be.
func TestDeadlinesCutFrames(t *testing.T) {
	d, a, _, cs := session(t, testCfg)
	cs[0].trickle.Store(true) // frames arrive in pieces, for deadlines to cut
	msg := random(t, 1<<20)
	go d.Write(msg)
	got := make([]byte, 0, len(msg))
	buf := make([]byte, 48<<10)
	for i := 0; len(got) < len(msg); i++ {
		a.SetReadDeadline(time.Now().Add(time.Duration(1+i%5) * 10 * time.Microsecond))
		n, err := a.Read(buf[:1+i*7919%len(buf)])
		got = append(got, buf[:n]...)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read after %d bytes: %v", len(got), err)
		}
		if i%50 == 0 {
			time.Sleep(3 * handGrace) // the reader goroutine takes over
		}
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("first difference at %d", firstDiff(got, msg))
	}
}
