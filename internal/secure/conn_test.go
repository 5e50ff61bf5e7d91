package secure

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// countingConn counts the writes that reach the transport.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// peerConns returns a handshaken Client and Server over loopback TCP; the
// client's transport counts its writes.
func peerConns(t *testing.T) (*Conn, *Conn, *countingConn) {
	t.Helper()
	sharer, connector := newID(t), newID(t)
	c1, c2 := tcpPair(t)
	counted := &countingConn{Conn: c1}
	cc, sc := Client(counted, peerClient(t, connector, sharer.ID())), Server(c2, peerServer(t, sharer))
	t.Cleanup(func() { cc.Close(); sc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sc.HandshakeContext(ctx) }()
	if err := cc.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return cc, sc, counted
}

// TestConnBatchesRecords: a 64 KiB Write is four TLS records in one write
// to the transport, and arrives intact.
func TestConnBatchesRecords(t *testing.T) {
	cc, sc, counted := peerConns(t)
	msg := make([]byte, 64<<10)
	rand.Read(msg)
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(msg))
		io.ReadFull(sc, b)
		got <- b
	}()
	before := counted.count()
	if _, err := cc.Write(msg); err != nil {
		t.Fatal(err)
	}
	if n := counted.count() - before; n != 1 {
		t.Errorf("a 64 KiB Write made %d transport writes, want 1", n)
	}
	if !bytes.Equal(<-got, msg) {
		t.Fatal("data changed on the way")
	}
}

// TestConnConcurrentWriters: Writes from several goroutines at once (as
// crypto/tls's own alerts and key updates come beside the mux's writes)
// each arrive whole, and each writer's in order.
func TestConnConcurrentWriters(t *testing.T) {
	cc, sc, _ := peerConns(t)
	const writers, each, size = 4, 50, 20000
	done := make(chan error, 1)
	go func() {
		var seen [writers]int
		buf := make([]byte, size)
		for range writers * each {
			if _, err := io.ReadFull(sc, buf); err != nil {
				done <- err
				return
			}
			w := int(buf[0])
			if w >= writers || int(buf[1]) != seen[w]%256 || !bytes.Equal(buf[2:], bytes.Repeat(buf[:1], size-2)) {
				done <- io.ErrUnexpectedEOF
				return
			}
			seen[w]++
		}
		done <- nil
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				msg := bytes.Repeat([]byte{byte(w)}, size)
				msg[1] = byte(i)
				if _, err := cc.Write(msg); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("reader: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not get every message")
	}
}
