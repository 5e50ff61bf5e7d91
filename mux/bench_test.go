package mux

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/testutil"
)

// The session benchmarks run mux over the TLS peer channel on loopback
// beside their baselines, raw TCP and TLS alone, in the same run. Compare
// ratios within one run (the machines are shared and noisy), and interleave
// runs for several rounds:
//
//	for i in 1 2 3 4 5; do go test -run '^$' -bench Session -benchtime 2s ./mux/; done
//
// A profile of the mux alone:
//
//	go test -run '^$' -bench 'SessionThroughput/mux' -cpuprofile cpu.pprof ./mux/

// benchChunk is what one Write carries, as the agent's copy buffer.
const benchChunk = 64 << 10

func BenchmarkSessionThroughput(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchConn(b, tcpPair) })
	b.Run("tls", func(b *testing.B) { benchConn(b, tlsPair) })
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("mux/streams=%d", n), func(b *testing.B) { benchMux(b, n) })
	}
}

// drain reads n bytes from r into a chunk-sized buffer, as a forwarder does.
func drain(r io.Reader, n int64) error {
	buf := make([]byte, benchChunk)
	for n > 0 {
		m, err := r.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(m)
		if err != nil {
			if err == io.EOF && n == 0 {
				return nil
			}
			return err
		}
	}
	return nil
}

func benchConn(b *testing.B, pair func(testing.TB) (net.Conn, net.Conn)) {
	c, s := pair(b)
	defer c.Close()
	defer s.Close()
	b.SetBytes(benchChunk)
	done := make(chan error, 1)
	go func() { done <- drain(s, int64(b.N)*benchChunk) }()
	buf := make([]byte, benchChunk)
	b.ResetTimer()
	defer testutil.CPUPerByte(b, int64(b.N)*benchChunk)()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// benchMux moves b.N chunks over n streams of a session over TLS.
func benchMux(b *testing.B, n int) {
	client, server := sessions(b, tlsPair)
	benchStreams(b, client, server, n)
}

// benchStreams moves b.N chunks over n streams of one session, each stream
// written by its own goroutine and read by another, then half-closed.
func benchStreams(b *testing.B, client, server *Session, n int) {
	b.SetBytes(benchChunk)
	per := func(i int) int64 { // chunks on stream i
		c := b.N / n
		if i < b.N%n {
			c++
		}
		return int64(c)
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2*n)
	streams := make([]*Stream, n)
	for i := range n {
		st, err := client.OpenStream()
		if err != nil {
			b.Fatal(err)
		}
		streams[i] = st
	}
	accepted := make([]*Stream, n)
	for i := range n {
		st, err := server.AcceptStream()
		if err != nil {
			b.Fatal(err)
		}
		accepted[i] = st
	}
	b.ResetTimer()
	defer testutil.CPUPerByte(b, int64(b.N)*benchChunk)()
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			buf := make([]byte, benchChunk)
			for range per(i) {
				if _, err := streams[i].Write(buf); err != nil {
					errc <- err
					return
				}
			}
			streams[i].Close()
		}()
		go func() {
			defer wg.Done()
			if err := drain(accepted[i], per(i)*benchChunk); err != nil {
				errc <- err
			}
			accepted[i].Close()
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errc)
	for err := range errc {
		b.Fatal(err)
	}
}

// BenchmarkSessionRoundTrip is a 1-byte ping-pong: the latency a stream adds
// over the TLS channel and over raw TCP.
func BenchmarkSessionRoundTrip(b *testing.B) {
	b.Run("tcp", func(b *testing.B) {
		c, s := tcpPair(b)
		defer c.Close()
		defer s.Close()
		testutil.PingPong(b, c, s)
	})
	b.Run("tls", func(b *testing.B) {
		c, s := tlsPair(b)
		defer c.Close()
		defer s.Close()
		testutil.PingPong(b, c, s)
	})
	b.Run("mux", func(b *testing.B) {
		client, server := sessions(b, tlsPair)
		c, err := client.OpenStream()
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{0}); err != nil { // the peer learns of the stream
			b.Fatal(err)
		}
		s, err := server.AcceptStream()
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		testutil.PingPong(b, c, s)
	})
}

// BenchmarkLongPath moves data on one stream of a session over TLS on a
// path with a 50 ms round trip (delayPair). The delay line buffers without
// limit, so only the stream's window bounds the rate: about window/RTT
// (16 MiB / 50 ms is 335 MB/s), once it has grown from InitialWindow. The
// NAT lab's real 50 ms path, where TCP's own windows count too, is in
// bench/RESULTS.md (history). Use a long -benchtime:
//
//	go test -run '^$' -bench LongPath -benchtime 8s ./mux/
func BenchmarkLongPath(b *testing.B) {
	pair := delayPair(25 * time.Millisecond)
	client, server := sessions(b, func(tb testing.TB) (net.Conn, net.Conn) { return tlsOver(tb, pair) })
	benchStreams(b, client, server, 1)
}
