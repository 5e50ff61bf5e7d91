package mux

import (
	"crypto/tls"
	"io"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/peerport/peerport/internal/testutil"
)

// TestSessionDeathEndsReads kills the connection under a session that has
// 10,000 streams, each with a read blocked on both sides, and checks that
// every read returns promptly and nothing is left running. hashicorp/yamux
// v0.1.2, used before, could keep such readers spinning for minutes
// (upstream PR #176); go-yamux wakes each once, with the stream marked
// reset. The bound is generous (-race, a shared machine); bench reports
// the time itself (part mux).
func TestSessionDeathEndsReads(t *testing.T) {
	const streams = 10000
	const bound = 10 * time.Second
	before := goleak.IgnoreCurrent()

	cc, sc := tlsPair(t)
	client, err := Client(cc, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(sc, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	defer server.Close()

	// Every stream carries one byte each way, so both sides hold it open,
	// then a read blocks on each side until the session dies.
	var readers sync.WaitGroup
	readers.Add(2 * streams)
	block := func(st *Stream) {
		defer readers.Done()
		st.Read(make([]byte, 1))
	}
	go func() {
		for {
			st, err := server.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				b := []byte{0}
				if _, err := io.ReadFull(st, b); err == nil {
					st.Write(b)
				}
				block(st)
			}()
		}
	}()
	const openers = 32
	errc := make(chan error, openers)
	for w := range openers {
		go func() {
			errc <- func() error {
				for i := w; i < streams; i += openers {
					st, err := client.OpenStream()
					if err != nil {
						return err
					}
					b := []byte{1}
					if _, err := st.Write(b); err != nil {
						return err
					}
					if _, err := io.ReadFull(st, b); err != nil {
						return err
					}
					go block(st)
				}
				return nil
			}()
		}()
	}
	for range openers {
		if err := <-errc; err != nil {
			t.Fatalf("open streams: %v", err)
		}
	}
	if n := client.NumStreams(); n != streams {
		t.Fatalf("client has %d streams open, want %d", n, streams)
	}

	// Kill the connection under both sessions, as a broken path does.
	t0 := time.Now()
	cc.(*tls.Conn).NetConn().Close()
	sc.(*tls.Conn).NetConn().Close()
	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	select {
	case <-done:
		t.Logf("%d blocked reads on each side returned %v after the connection closed", streams, time.Since(t0).Round(time.Millisecond))
	case <-time.After(bound):
		t.Fatalf("blocked reads still waiting %v after the connection closed", bound)
	}
	for _, s := range []*Session{client, server} {
		select {
		case <-s.CloseChan():
		case <-time.After(bound):
			t.Fatal("session not closed after its connection was")
		}
		if n := s.NumStreams(); n != 0 {
			t.Errorf("%d streams left on a dead session", n)
		}
	}
	c0 := testutil.CPUTime()
	goleak.VerifyNone(t, before) // no reader, loop or timer goroutine left; retries ~2 s
	t.Logf("CPU while the last goroutines ended: %v", (testutil.CPUTime() - c0).Round(time.Millisecond))
}
