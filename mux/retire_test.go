package mux

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// slowConn takes a millisecond per write, so frames queue behind it.
type slowConn struct{ net.Conn }

func (c slowConn) Write(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return c.Conn.Write(p)
}

func slowPair(t testing.TB) (net.Conn, net.Conn) {
	a, b := tlsPair(t)
	return slowConn{a}, b
}

// retire is the exchange of the retire tests: the connector opens a
// stream, says "go" and closes its side (Close, the reset timer armed);
// reading(st) starts, and may read on in the background; the sharer reads
// the "go", writes payload, closes its side and retires its session. It
// returns the connector's stream and whether Retire ended by the peer's
// close rather than its 30 s context.
func retire(t *testing.T, sharer, connector *Session, payload []byte, reading func(st *Stream)) (*Stream, bool) {
	t.Helper()
	st, err := connector.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	st.Close()
	reading(st)
	peer, err := sharer.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(peer); err != nil || string(b) != "go" {
		t.Fatalf("sharer read %q, %v", b, err)
	}
	if _, err := peer.Write(payload); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sharer.Retire(ctx)
	return st, ctx.Err() == nil
}

// TestRetireDeliversQueued: the sharer writes 8 MiB and closes its side,
// and its session is retired at once, while most frames are still queued
// behind a slow connection: the connector gets every byte and EOF, and
// both sessions end. (Closing instead of retiring loses the queue.)
func TestRetireDeliversQueued(t *testing.T) {
	sharer, connector := sessions(t, slowPair)
	payload := make([]byte, 8<<20)
	rand.Read(payload)
	type read struct {
		b   []byte
		err error
	}
	got := make(chan read, 1)
	_, inTime := retire(t, sharer, connector, payload, func(st *Stream) {
		go func() {
			b, err := io.ReadAll(st)
			got <- read{b, err}
		}()
	})

	select {
	case r := <-got:
		if r.err != nil || !bytes.Equal(r.b, payload) {
			t.Fatalf("connector got %d bytes (%v), want the %d written", len(r.b), r.err, len(payload))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("connector's read did not end")
	}
	for name, s := range map[string]*Session{"sharer": sharer, "connector": connector} {
		select {
		case <-s.CloseChan():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s session still open after Retire", name)
		}
	}
	if !inTime {
		t.Fatal("Retire waited for its context instead of the peer's close")
	}
}

// TestRetireSlowReader: a connector that reads only after the sharer
// retired the session (and the session ended on the go away) still gets
// every byte buffered before the FIN: the window updates its reads would
// send have no session left, and that is no error of the stream's.
func TestRetireSlowReader(t *testing.T) {
	sharer, connector := sessions(t, tcpPair)
	payload := make([]byte, InitialWindow) // all within the first window
	rand.Read(payload)
	st, _ := retire(t, sharer, connector, payload, func(*Stream) {})
	select {
	case <-connector.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("the connector's session did not end on the go away")
	}
	b, err := io.ReadAll(st)
	if err != nil || !bytes.Equal(b, payload) {
		t.Fatalf("connector read %d of %d bytes, then %v", len(b), len(payload), err)
	}
}

// TestRetireWaitsForStreams: a retired session keeps serving its open
// stream, takes no new work from this side, and ends once that stream has.
func TestRetireWaitsForStreams(t *testing.T) {
	client, server := sessions(t, tcpPair)
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	retired := make(chan struct{})
	go func() {
		defer close(retired)
		client.Retire(context.Background())
	}()
	for !client.Retiring() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(3 * retirePoll)
	// Still up: an echo on the open stream.
	buf := make([]byte, 2)
	echoed := make(chan struct{})
	go func() {
		defer close(echoed)
		io.ReadFull(peer, make([]byte, 1))
		peer.Write([]byte("b"))
		peer.Close()
	}()
	defer func() { <-echoed }() // its Close reads closeTimeout, which other tests set
	if _, err := io.ReadFull(st, buf[:1]); err != nil || buf[0] != 'b' {
		t.Fatalf("stream of a retiring session: %q, %v", buf[:1], err)
	}
	select {
	case <-retired:
		t.Fatal("Retire returned with a stream open")
	default:
	}
	st.Close()
	select {
	case <-retired:
	case <-time.After(10 * time.Second):
		t.Fatal("Retire did not return after the last stream ended")
	}
	if !client.IsClosed() {
		t.Fatal("retired session still open")
	}
}
