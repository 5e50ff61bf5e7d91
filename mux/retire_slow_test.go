package mux

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"
	"time"
)

// TestRetireSlowReader: a connector that reads only after the sharer
// retired the session (and the session ended on the go away) still gets
// every byte buffered before the FIN: the window updates its reads would
// send have no session left, and that is no error of the stream's.
func TestRetireSlowReader(t *testing.T) {
	sharer, connector := sessions(t, tcpPair)
	st, err := connector.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("go"))
	st.CloseWrite()
	peer, err := sharer.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(peer); err != nil || string(b) != "go" {
		t.Fatalf("sharer read %q, %v", b, err)
	}
	payload := make([]byte, InitialWindow) // all within the first window
	rand.Read(payload)
	if _, err := peer.Write(payload); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sharer.Retire(ctx)
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
