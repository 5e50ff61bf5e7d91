package mux

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"
)

// streamPair opens a stream from client to server and returns both ends,
// with the opening byte read.
func streamPair(t *testing.T, client, server *Session) (c, s *Stream) {
	t.Helper()
	c, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	s, err = server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return c, s
}

// woken waits for a wake; false after d.
func woken(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// TestPark: a parked reader is woken by each way its stream can become
// readable, and not before; Park refuses when a read would not block.
func TestPark(t *testing.T) {
	for _, tt := range []struct {
		name   string
		event  func(t *testing.T, c, s *Stream, client *Session)
		expect func(t *testing.T, s *Stream)
	}{
		{"data", func(t *testing.T, c, s *Stream, _ *Session) { c.Write([]byte("hello")) }, func(t *testing.T, s *Stream) {
			b := make([]byte, 16)
			if n, err := s.Read(b); err != nil || string(b[:n]) != "hello" {
				t.Errorf("read %q, %v after the wake", b[:n], err)
			}
		}},
		{"peer's FIN", func(t *testing.T, c, s *Stream, _ *Session) { c.CloseWrite() }, func(t *testing.T, s *Stream) {
			if _, err := s.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("read after the wake: %v, want EOF", err)
			}
		}},
		{"peer's reset", func(t *testing.T, c, s *Stream, _ *Session) { c.Reset() }, func(t *testing.T, s *Stream) {
			if _, err := s.Read(make([]byte, 1)); err == nil || err == io.EOF {
				t.Errorf("read after the wake: %v, want a reset", err)
			}
		}},
		{"our reset", func(t *testing.T, c, s *Stream, _ *Session) { s.Reset() }, func(t *testing.T, s *Stream) {
			if _, err := s.Read(make([]byte, 1)); err == nil || err == io.EOF {
				t.Errorf("read after the wake: %v, want a reset", err)
			}
		}},
		{"session's end", func(t *testing.T, c, s *Stream, client *Session) { client.Close() }, func(t *testing.T, s *Stream) {
			if _, err := s.Read(make([]byte, 1)); err == nil {
				t.Error("read after the session ended did not fail")
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client, server := sessions(t, tcpPair)
			c, s := streamPair(t, client, server)
			wake := make(chan struct{}, 2)
			if !s.Park(func() { wake <- struct{}{} }) {
				t.Fatal("Park refused an idle stream")
			}
			if woken(wake, 100*time.Millisecond) {
				t.Fatal("woken with nothing to read")
			}
			tt.event(t, c, s, client)
			if !woken(wake, 10*time.Second) {
				t.Fatal("not woken")
			}
			tt.expect(t, s)
			if woken(wake, 50*time.Millisecond) {
				t.Error("woken twice")
			}
		})
	}
}

// TestParkRefusedWhenReadable: with bytes buffered, or the stream ended,
// Park registers nothing and the caller reads on.
func TestParkRefusedWhenReadable(t *testing.T) {
	client, server := sessions(t, tcpPair)
	c, s := streamPair(t, client, server)
	c.Write([]byte("x"))
	deadline := time.Now().Add(10 * time.Second)
	for s.Park(func() {}) {
		// Not there yet: the wake is due; take it back and look again.
		if !s.Unpark() {
			t.Fatal("Unpark of a parked stream said its wake had run")
		}
		if time.Now().After(deadline) {
			t.Fatal("the byte never arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
	b := make([]byte, 1)
	if _, err := s.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("read %q, %v", b, err)
	}
	c.CloseWrite()
	for s.Park(func() {}) {
		s.Unpark()
		if time.Now().After(deadline) {
			t.Fatal("the FIN never arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := s.Read(b); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
}

// TestUnpark: a cancelled park is never woken.
func TestUnpark(t *testing.T) {
	client, server := sessions(t, tcpPair)
	c, s := streamPair(t, client, server)
	wake := make(chan struct{}, 1)
	if !s.Park(func() { wake <- struct{}{} }) {
		t.Fatal("Park refused an idle stream")
	}
	if !s.Unpark() {
		t.Fatal("Unpark: the wake had run already")
	}
	c.Write([]byte("x"))
	if woken(wake, 200*time.Millisecond) {
		t.Fatal("woken after Unpark")
	}
	if s.Unpark() {
		t.Fatal("a second Unpark found a wake due")
	}
}

// TestParkNoWakeMissed: a reader that parks after every read, against a
// writer sending at random moments on several streams, never waits for
// bytes that are already there (a missed wake would stall it for good).
// A wake may come with nothing to read (one for bytes read already), and
// the read after it then blocks as usual.
func TestParkNoWakeMissed(t *testing.T) {
	client, server := sessions(t, tcpPair)
	const streams, msgs = 4, 300
	done := make(chan error, streams)
	for i := range streams {
		c, s := streamPair(t, client, server)
		go func() {
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for j := range msgs {
				if r.IntN(3) == 0 {
					time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
				}
				c.Write([]byte{byte(j)})
			}
			c.CloseWrite()
		}()
		go func() { done <- parkingReader(s, msgs) }()
	}
	for range streams {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// parkingReader reads msgs bytes, in order, and the EOF, parking whenever
// Park lets it.
func parkingReader(s *Stream, msgs int) error {
	wake := make(chan struct{}, 1)
	b := make([]byte, 64)
	next := 0
	for {
		if s.Park(func() { wake <- struct{}{} }) {
			if !woken(wake, 10*time.Second) {
				return fmt.Errorf("stream %d: parked after %d bytes and never woken", s.StreamID(), next)
			}
		}
		n, err := s.Read(b)
		for _, c := range b[:n] {
			if c != byte(next) {
				return fmt.Errorf("stream %d: byte %d is %d", s.StreamID(), next, c)
			}
			next++
		}
		if err == io.EOF && next == msgs {
			return nil
		}
		if err != nil {
			return fmt.Errorf("stream %d: after %d bytes: %v", s.StreamID(), next, err)
		}
	}
}

// fakeConn returns its reads one by one, then EOF.
type fakeConn struct {
	net.Conn
	reads [][]byte
}

func (c *fakeConn) Read(b []byte) (int, error) {
	if len(c.reads) == 0 {
		return 0, io.EOF
	}
	n := copy(b, c.reads[0])
	c.reads = c.reads[1:]
	return n, nil
}

// TestWakeAtNextRead: the wake for a frame comes at the read after the
// one that brought its last byte, when yamux has put it in the stream's
// buffer, not in the read itself, which could let Park look too early and
// miss it.
func TestWakeAtNextRead(t *testing.T) {
	f := frame(typeData, 0, 3, []byte("abc"))
	var p parked
	c := &parkConn{Conn: &fakeConn{reads: [][]byte{f[:5], f[5:], frame(typeData, 0, 5, []byte("x"))}}, p: &p}
	woke := 0
	p.add(3, func() { woke++ })
	b := make([]byte, 64)
	for i, want := range []int{0, 0, 1, 1} {
		c.Read(b)
		if woke != want {
			t.Fatalf("after read %d: %d wakes, want %d", i+1, woke, want)
		}
	}
}

// frame is a yamux header and its body, for parkConn's reader.
func frame(typ byte, flags uint16, id uint32, body []byte) []byte {
	h := make([]byte, 12, 12+len(body))
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], uint32(len(body)))
	if typ != typeData {
		binary.BigEndian.PutUint32(h[8:], 1<<16) // a window update's delta, no body
		return h
	}
	return append(h, body...)
}

// TestFollow: parkConn notes each stream whose frame ended, with data or a
// FIN or RST, however the frames are split across reads.
func TestFollow(t *testing.T) {
	var wire []byte
	wire = append(wire, frame(typeData, 1, 3, []byte("abc"))...)     // SYN with data
	wire = append(wire, frame(typeWindowUpdate, 0, 3, nil)...)       // a plain update: nothing to read
	wire = append(wire, frame(typeData, 0, 5, make([]byte, 700))...) // data
	wire = append(wire, frame(typeData, 0, 5, []byte("d"))...)       // same stream again: noted once
	wire = append(wire, frame(typeData, flagFIN, 7, nil)...)         // FIN without data
	wire = append(wire, frame(typeWindowUpdate, flagRST, 9, nil)...) // RST on an update
	wire = append(wire, frame(2, 0, 0, nil)...)                      // a ping
	wire = append(wire, frame(typeData, 0, 11, nil)...)              // empty data: nothing
	want := []uint32{3, 5, 7, 9}
	for _, split := range []int{1, 2, 5, 11, 12, 13, 100, len(wire)} {
		// Notes of one read are merged only within it.
		if got := slices.Compact(followInPieces(&parkConn{}, wire, split)); !slices.Equal(got, want) {
			t.Errorf("reads of %d bytes: noted %v, want %v", split, got, want)
		}
	}
}

// followInPieces feeds wire to c in reads of split bytes and returns what
// the reads noted, one after the other.
func followInPieces(c *parkConn, wire []byte, split int) []uint32 {
	var got []uint32
	for b := wire; len(b) > 0; {
		k := min(split, len(b))
		c.follow(b[:k])
		b = b[k:]
		got = append(got, c.done...)
		c.done = c.done[:0]
	}
	return got
}

// FuzzFollow: parkConn follows any byte stream without panicking, and in
// pieces as it would whole.
func FuzzFollow(f *testing.F) {
	f.Add(frame(typeData, 0, 1, []byte("hi")), 3)
	f.Add(append(frame(typeData, flagFIN, 1, nil), frame(typeWindowUpdate, flagRST, 2, nil)...), 1)
	f.Fuzz(func(t *testing.T, wire []byte, split int) {
		whole := &parkConn{}
		whole.follow(wire)
		split = max(1, split%64)
		pieces := &parkConn{}
		got := followInPieces(pieces, wire, split)
		if !slices.Equal(slices.Compact(got), slices.Compact(whole.done)) || pieces.hn != whole.hn || pieces.body != whole.body {
			t.Fatalf("in pieces of %d: %v (state %d/%d), whole: %v (%d/%d)", split, got, pieces.hn, pieces.body, whole.done, whole.hn, whole.body)
		}
	})
}

// TestKick: Kick ends a waiting WaitRead with ErrQuiet, and the next wait
// waits again; kicks landing all through a bulk transfer lose no window
// update (a read under a passed deadline would drop one, and the stream
// would stall for good).
func TestKick(t *testing.T) {
	client, server := sessions(t, tcpPair)
	c, s := streamPair(t, client, server)
	errc := make(chan error, 1)
	go func() { errc <- s.WaitRead() }()
	time.Sleep(20 * time.Millisecond)
	s.Kick()
	select {
	case err := <-errc:
		if err != ErrQuiet {
			t.Fatalf("WaitRead after Kick: %v, want ErrQuiet", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Kick did not end the wait")
	}
	go func() { errc <- s.WaitRead() }()
	select {
	case err := <-errc:
		t.Fatalf("the wait after a kick returned at once: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	c.Write([]byte("x"))
	if err := <-errc; err != nil {
		t.Fatalf("WaitRead with a byte there: %v", err)
	}
	io.ReadFull(s, make([]byte, 1))

	kickedBulk(t, c, s, false)
}

// TestKickThenFIN: a kick while the stream is open, then the peer's FIN,
// and the bytes before the FIN still read in full. yamux ignores a read
// deadline set (or cleared) once the peer's side has ended, so the kick's
// passed deadline stays; the read that then sends a window update (more
// than half the window read) got a timeout with its bytes, and a pipe took
// a graceful end for a cut one (TestPipeAbruptEnds/mixed, now and then).
func TestKickThenFIN(t *testing.T) {
	client, server := sessions(t, tcpPair)
	c, s := streamPair(t, client, server)
	const size = InitialWindow * 3 / 4 // fits the window, and reading it sends an update
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitRead(); err != nil {
		t.Fatal(err)
	}
	s.Kick()
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Ping(); err != nil { // the server has read the FIN before it answers
		t.Fatal(err)
	}
	got, err := io.ReadAll(s)
	if err != nil || len(got) != size {
		t.Fatalf("read %d of %d bytes, then %v", len(got), size, err)
	}
}

// TestKickWhileParking: kicks landing all through a bulk transfer whose
// reader parks on each ErrQuiet, as a forwarder does, cost no byte, no
// window update and no error: a kick between another step's clearing of
// the flag and of the deadline used to leave the deadline passed with no
// kick on record, and the next read failed with a timeout, or sent its
// window update under it and lost it, and the stream stalled.
func TestKickWhileParking(t *testing.T) {
	client, server := sessions(t, tcpPair)
	c, s := streamPair(t, client, server)
	kickedBulk(t, c, s, true)
}

// kickedBulk moves several windows from c to s while s is kicked as often
// as the scheduler allows, so that kicks land between any two steps of the
// reader's; the reader parks on ErrQuiet if park, else waits again.
func kickedBulk(t *testing.T, c, s *Stream, park bool) {
	t.Helper()
	const size = 64 << 20 // several windows
	go func() {
		c.Write(make([]byte, size))
		c.CloseWrite()
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default: // as often as it can, for the kicks to land between any two steps
				s.Kick()
				runtime.Gosched()
			}
		}
	}()
	read := make(chan error, 1)
	got, parks := 0, 0
	go func() {
		wake := make(chan struct{}, 1)
		b := make([]byte, 64<<10)
		for {
			err := s.WaitRead()
			if err == ErrQuiet {
				if park && s.Park(func() { wake <- struct{}{} }) {
					parks++
					if !woken(wake, 30*time.Second) {
						read <- fmt.Errorf("parked and never woken")
						return
					}
				}
				continue
			}
			if err == nil {
				var n int
				n, err = s.Read(b)
				got += n
			}
			if err != nil {
				read <- err
				return
			}
		}
	}()
	select {
	case err := <-read:
		if err != io.EOF || got != size {
			t.Fatalf("read %d of %d bytes, then %v", got, size, err)
		}
		t.Logf("%d parks", parks)
	case <-time.After(time.Minute):
		s.Reset() // ends the reader
		t.Fatalf("stalled after %d of %d bytes: a window update was lost", got, size)
	}
}
