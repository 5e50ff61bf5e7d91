package mux

import (
	"io"
	"sync"
	"testing"
	"time"
)

// TestSessionDeathEndsBlockedReads: when the transport under a session dies
// with thousands of streams whose readers are blocked (on both sides), every
// read returns promptly. Upstream yamux v0.1.2 spun these readers at full CPU
// for minutes (PR #176). The bound is generous; the bench measures the time.
func TestSessionDeathEndsBlockedReads(t *testing.T) {
	n := 10000
	if raceEnabled {
		n = 3000 // two goroutines per stream, under the race detector's limit
	}
	for _, tc := range []struct {
		name string
		kill func(client, server io.Closer)
	}{
		{"transport closed", func(c, s io.Closer) { c.Close(); s.Close() }},
		{"one end closed", func(c, _ io.Closer) { c.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c1, c2 := benchTLSPair(t)
			cs, err := NewClient(c1, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			ss, err := NewServer(c2, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ss.Close()
			var readers sync.WaitGroup
			block := func(r io.Reader) {
				defer readers.Done()
				io.Copy(io.Discard, r)
			}
			readers.Add(2 * n)
			accepted := make(chan struct{})
			go func() {
				defer close(accepted)
				for range n {
					st, err := ss.AcceptStream()
					if err != nil {
						t.Error(err)
						return
					}
					go block(st)
				}
			}()
			for i := range n {
				st, err := cs.OpenStream()
				if err != nil {
					t.Fatalf("open stream %d: %v", i, err)
				}
				if _, err := st.Write([]byte{1}); err != nil { // sends the SYN
					t.Fatal(err)
				}
				go block(st)
			}
			<-accepted
			tc.kill(c1, c2)
			done := make(chan struct{})
			go func() { readers.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("reads still blocked 5s after the session died with %d streams", n)
			}
		})
	}
}
