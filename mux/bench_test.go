package mux

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/peerport/peerport/internal/secure"
)

// Benchmarks of one session over the TLS peer channel on loopback TCP, as the
// agents run it. They print throughput (go test -bench . ./mux/); nothing
// here asserts a speed. Profile with -cpuprofile.

func benchTCPPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		ch <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	s := <-ch
	if s == nil {
		c.Close()
		tb.Fatal("accept failed")
	}
	return c, s
}

func benchTLSPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	sharer, err := secure.NewIdentity()
	if err != nil {
		tb.Fatal(err)
	}
	connector, err := secure.NewIdentity()
	if err != nil {
		tb.Fatal(err)
	}
	scfg, err := secure.PeerServerConfig(sharer)
	if err != nil {
		tb.Fatal(err)
	}
	ccfg, err := secure.PeerClientConfig(connector, sharer.ID())
	if err != nil {
		tb.Fatal(err)
	}
	c1, c2 := benchTCPPair(tb)
	cc, sc := tls.Client(c1, ccfg), tls.Server(c2, scfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sc.HandshakeContext(ctx) }()
	cerr := cc.HandshakeContext(ctx)
	if serr := <-errc; cerr != nil || serr != nil {
		c1.Close()
		c2.Close()
		tb.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	return cc, sc
}

// benchSessions returns a session pair over TLS; plain skips the package's
// wrapping (coalescing) to compare against bare yamux.
type streamer interface {
	Open() (net.Conn, error)
	Accept() (net.Conn, error)
	Close() error
}

func benchSessions(tb testing.TB, plain bool) (streamer, streamer) {
	c1, c2 := benchTLSPair(tb)
	var cs, ss streamer
	var err error
	if plain {
		cs, err = yamux.Client(c1, Config(nil))
		if err == nil {
			ss, err = yamux.Server(c2, Config(nil))
		}
	} else {
		cs, err = NewClient(c1, nil)
		if err == nil {
			ss, err = NewServer(c2, nil)
		}
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cs.Close(); ss.Close() })
	return cs, ss
}

const benchChunk = 64 << 10

// benchCopy pushes b.N chunks over each of n streams, client to server.
func benchCopy(b *testing.B, plain bool, streams int) {
	cs, ss := benchSessions(b, plain)
	var wg sync.WaitGroup
	go func() {
		for {
			st, err := ss.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(io.Discard, st)
				st.Close()
			}()
		}
	}()
	buf := make([]byte, benchChunk)
	b.SetBytes(int64(benchChunk * streams))
	b.ResetTimer()
	var wwg sync.WaitGroup
	for range streams {
		st, err := cs.Open()
		if err != nil {
			b.Fatal(err)
		}
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for range b.N {
				if _, err := st.Write(buf); err != nil {
					b.Error(err)
					return
				}
			}
			st.Close()
		}()
	}
	wwg.Wait()
	wg.Wait()
}

func BenchmarkStream(b *testing.B) {
	for _, bc := range []struct {
		name    string
		plain   bool
		streams int
	}{
		{"yamux/1", true, 1},
		{"mux/1", false, 1},
		{"yamux/8", true, 8},
		{"mux/8", false, 8},
	} {
		b.Run(bc.name, func(b *testing.B) { benchCopy(b, bc.plain, bc.streams) })
	}
}

// BenchmarkTLS is the baseline: the same copy over the bare TLS channel.
func BenchmarkTLS(b *testing.B) {
	c1, c2 := benchTLSPair(b)
	defer c1.Close()
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, c2); c2.Close(); close(done) }()
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	for range b.N {
		if _, err := c1.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c1.Close()
	<-done
}
