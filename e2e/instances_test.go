package e2e

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// TestTwoConnectProcessesOneIdentity: two connect processes of one state
// dir (one identity) to one share, each with its own listener, both in use
// for thirty seconds (ten with -short): neither knocks the other's peer
// session down. They used to, each new session replacing the other's at
// the sharer, 60-85 times a second, so a few seconds would show it.
func TestTwoConnectProcessesOneIdentity(t *testing.T) {
	t.Parallel()
	d := 30 * time.Second
	if testing.Short() {
		d = 10 * time.Second
	}
	w := newWorld(t)
	_, ticket := w.share(echoServer(t))
	_, local1 := w.connect(ticket)
	_, local2 := w.connect(ticket)

	// A long-lived connection on each, and new ones every second.
	var long []net.Conn
	for _, l := range []string{local1, local2} {
		c, err := net.DialTimeout("tcp", l, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		long = append(long, c)
	}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(time.Second) {
		for i, l := range []string{local1, local2} {
			echoCheck(t, l, 64<<10)
			roundTrip(t, long[i], 4<<10)
		}
	}

	st := status(t, w.connDir)
	if len(st.Agents) != 2 {
		t.Fatalf("%d connect processes in status, want 2", len(st.Agents))
	}
	for _, ag := range st.Agents {
		for _, c := range ag.Connects {
			if c.Reconnects != 0 || c.LastError != "" {
				t.Errorf("connect %s: %d reconnects, last error %q; want none", c.Listen, c.Reconnects, c.LastError)
			}
		}
	}
	sharer := status(t, w.sharerDir)
	if n := len(sharer.Agents[0].Peers); n != 2 {
		t.Errorf("sharer holds %d peer sessions, want 2 (one per connect process)", n)
	}
}

// roundTrip sends n random bytes over c and reads them back, leaving c open.
func roundTrip(t testing.TB, c net.Conn, n int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	out, in := make([]byte, n), make([]byte, n)
	rand.Read(out)
	if _, err := c.Write(out); err != nil {
		t.Fatalf("long-lived connection: write: %v", err)
	}
	if _, err := io.ReadFull(c, in); err != nil {
		t.Fatalf("long-lived connection: read: %v", err)
	}
	if !bytes.Equal(in, out) {
		t.Fatal("long-lived connection: echo differs")
	}
}
