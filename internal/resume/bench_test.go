package resume

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/testutil"
)

// The benchmarks run the resumable layer over TLS on loopback beside TLS
// alone, in the same run: compare the ratios, interleaved over rounds.
//
//	for i in 1 2 3; do go test -run '^$' -bench . -benchtime 2s ./internal/resume/; done

const benchChunk = 64 << 10

func tlsCarriers(b *testing.B) (net.Conn, net.Conn) {
	ca := testutil.NewCA(b, "bench")
	cert := ca.Issue(b, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), "peer")
	c1, c2 := testutil.TCPPair(b)
	cc := tls.Client(c1, &tls.Config{RootCAs: ca.Pool, ServerName: "peer"})
	sc := tls.Server(c2, &tls.Config{Certificates: []tls.Certificate{cert}})
	errc := make(chan error, 1)
	go func() { errc <- sc.Handshake() }()
	if err := cc.Handshake(); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return cc, sc
}

func resumePair(b *testing.B) (net.Conn, net.Conn) {
	cd, ca := tlsCarriers(b)
	tab := NewTable(Config{})
	ac := make(chan *Conn, 1)
	go func() { c, _, _ := tab.Accept(context.Background(), ca, "peer"); ac <- c }()
	d, err := Dial(context.Background(), cd, Config{})
	if err != nil {
		b.Fatal(err)
	}
	a := <-ac
	b.Cleanup(func() { d.Close(); a.Close(); tab.Close() })
	return d, a
}

func BenchmarkThroughput(b *testing.B) {
	for _, bc := range []struct {
		name string
		pair func(*testing.B) (net.Conn, net.Conn)
	}{{"tls", tlsCarriers}, {"tls+resume", resumePair}} {
		b.Run(bc.name, func(b *testing.B) {
			w, r := bc.pair(b)
			buf := make([]byte, benchChunk)
			b.SetBytes(benchChunk)
			done := make(chan error, 1)
			go func() {
				_, err := io.CopyBuffer(io.Discard, io.LimitReader(r, int64(b.N)*benchChunk), make([]byte, benchChunk))
				done <- err
			}()
			report := testutil.CPUPerByte(b, int64(b.N)*benchChunk)
			b.ResetTimer()
			for range b.N {
				if _, err := w.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			report()
		})
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	for _, bc := range []struct {
		name string
		pair func(*testing.B) (net.Conn, net.Conn)
	}{{"tls", tlsCarriers}, {"tls+resume", resumePair}} {
		b.Run(bc.name, func(b *testing.B) {
			c, s := bc.pair(b)
			testutil.PingPong(b, c, s)
		})
	}
}
