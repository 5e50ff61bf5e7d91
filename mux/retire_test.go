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

// TestRetireDeliversQueued: the sharer writes 8 MiB and closes its side,
// and its session is retired at once, while most frames are still queued
// behind a slow connection: the connector gets every byte and EOF, and
// both sessions end. (Closing instead of retiring loses the queue.)
func TestRetireDeliversQueued(t *testing.T) {
	sharer, connector := sessions(t, slowPair)
	st, err := connector.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	st.Close()
	payload := make([]byte, 8<<20)
	rand.Read(payload)
	type read struct {
		b   []byte
		err error
	}
	got := make(chan read, 1)
	go func() {
		b, err := io.ReadAll(st)
		got <- read{b, err}
	}()

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
	if ctx.Err() != nil {
		t.Fatal("Retire waited for its context instead of the peer's close")
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
