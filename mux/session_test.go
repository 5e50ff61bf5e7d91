package mux

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-yamux/v5"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/secure"

	"github.com/peerport/peerport/internal/testutil"
)

func testLog(t testing.TB) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.DebugLevel) // exercise the adapter
	return l.WithField("test", t.Name())
}

func TestConfigValid(t *testing.T) {
	c := config(testLog(t))
	if err := yamux.VerifyConfig(c); err != nil {
		t.Fatal(err)
	}
	if c.MaxStreamWindowSize != StreamWindow || c.InitialStreamWindowSize != InitialWindow || !c.EnableKeepAlive || c.AcceptBacklog != MaxStreams ||
		c.MaxIncomingStreams != MaxIncomingStreams || c.ConnectionWriteTimeout != WriteTimeout {
		t.Errorf("config %+v does not carry the package's tuning", c)
	}
}

// transports run the same session tests over an in-memory pipe, loopback
// TCP, and the TLS peer channel over loopback TCP, as in production.
var transports = []struct {
	name string
	pair func(t testing.TB) (client, server net.Conn)
}{
	{"pipe", func(testing.TB) (net.Conn, net.Conn) { return net.Pipe() }},
	{"tcp", tcpPair},
	{"tls", tlsPair},
}

func tcpPair(t testing.TB) (net.Conn, net.Conn) { return testutil.TCPPair(t) }

func tlsPair(t testing.TB) (net.Conn, net.Conn) { return tlsOver(t, tcpPair) }

// tlsOver runs the peer channel's TLS handshake over a pair of conns.
func tlsOver(t testing.TB, pair func(testing.TB) (net.Conn, net.Conn)) (net.Conn, net.Conn) {
	t.Helper()
	sharer, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	connector, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	scfg, err := secure.PeerServerConfig(sharer)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := secure.PeerClientConfig(connector, sharer.ID())
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := pair(t)
	cc, sc := tls.Client(c1, ccfg), tls.Server(c2, scfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sc.HandshakeContext(ctx) }()
	cerr := cc.HandshakeContext(ctx)
	if serr := <-errc; cerr != nil || serr != nil {
		c1.Close()
		c2.Close()
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	return cc, sc
}

// sessions returns a connected client and server session, closed at the end.
func sessions(t testing.TB, pair func(testing.TB) (net.Conn, net.Conn)) (client, server *Session) {
	t.Helper()
	c1, c2 := pair(t)
	client, err := Client(c1, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	server, err = Server(c2, testLog(t))
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

func TestSession(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { testSession(t, tr.pair) })
	}
}

// testSession runs one stream the way the agents do: header, status, then a
// 4 MiB echo; the connector half-closes, the sharer sees EOF and still
// answers with a trailer before closing its side.
func testSession(t *testing.T, pair func(testing.TB) (net.Conn, net.Conn)) {
	client, server := sessions(t, pair)
	const trailer = "bye"
	proof := bytes.Repeat([]byte{7}, 32)

	srvErr := make(chan error, 1)
	go func() {
		srvErr <- func() error {
			st, err := server.AcceptStream()
			if err != nil {
				return fmt.Errorf("accept: %w", err)
			}
			defer st.Close()
			h, err := ReadHeader(st)
			if err != nil {
				return err
			}
			if h.Share != "web" || !bytes.Equal(h.Proof, proof) {
				return fmt.Errorf("header %+v", h)
			}
			if err := WriteStatus(st, StatusOK, ""); err != nil {
				return err
			}
			// Echo until the connector's half-close, then write after it.
			if _, err := io.Copy(st, st); err != nil {
				return fmt.Errorf("echo: %w", err)
			}
			if _, err := io.WriteString(st, trailer); err != nil {
				return fmt.Errorf("write after half-close: %w", err)
			}
			return nil
		}()
	}()

	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := WriteHeader(st, Header{Share: "web", Proof: proof}); err != nil {
		t.Fatal(err)
	}
	if err := ReadStatus(st); err != nil {
		t.Fatal(err)
	}

	payload := make([]byte, 4<<20)
	rand.Read(payload)
	wErr := make(chan error, 1)
	go func() {
		_, err := st.Write(payload)
		if err == nil {
			err = st.Close() // a half-close: we keep reading
		}
		wErr <- err
	}()
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-wErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("sharer: %v", err)
	}
	if len(got) != len(payload)+len(trailer) || !bytes.Equal(got[:len(payload)], payload) || string(got[len(payload):]) != trailer {
		t.Fatalf("got %d bytes back, want the %d-byte payload and %q", len(got), len(payload), trailer)
	}
}

func TestSessionManyStreams(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			client, server := sessions(t, tr.pair)
			const streams, size = 16, 64 << 10
			// The sharer's goroutines end before the test does: a later
			// test sets closeTimeout, which their Close reads.
			var served sync.WaitGroup
			defer served.Wait()
			defer server.Close()
			served.Add(1)
			go func() {
				defer served.Done()
				for {
					st, err := server.AcceptStream()
					if err != nil {
						return // session closed
					}
					served.Add(1)
					go func() {
						defer served.Done()
						defer st.Close()
						h, err := ReadHeader(st)
						if err != nil {
							WriteStatus(st, StatusBadHeader, err.Error())
							return
						}
						if h.Share != "echo" {
							WriteStatus(st, StatusDenied, "no share "+h.Share)
							return
						}
						WriteStatus(st, StatusOK, "")
						io.Copy(st, st)
					}()
				}
			}()

			errc := make(chan error, streams+1)
			for i := range streams {
				go func() {
					errc <- func() error {
						st, err := client.OpenStream()
						if err != nil {
							return err
						}
						defer st.Close()
						if err := WriteHeader(st, Header{Share: "echo"}); err != nil {
							return err
						}
						if err := ReadStatus(st); err != nil {
							return err
						}
						want := bytes.Repeat([]byte{byte(i)}, size)
						wrote := make(chan struct{})
						go func() { st.Write(want); st.Close(); close(wrote) }()
						defer func() { <-wrote }()
						got, err := io.ReadAll(st)
						if err != nil {
							return err
						}
						if !bytes.Equal(got, want) {
							return fmt.Errorf("stream %d: %d bytes back, want %d", i, len(got), len(want))
						}
						return nil
					}()
				}()
			}
			// A stream for an unknown share is refused with a status, and
			// the session carries on.
			go func() {
				errc <- func() error {
					st, err := client.OpenStream()
					if err != nil {
						return err
					}
					defer st.Close()
					if err := WriteHeader(st, Header{Share: "nope"}); err != nil {
						return err
					}
					var se *StatusError
					if err := ReadStatus(st); !errors.As(err, &se) || se.Status != StatusDenied {
						return fmt.Errorf("unknown share: %v, want denied", err)
					}
					return nil
				}()
			}()
			for range streams + 1 {
				if err := <-errc; err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// TestStreamCloseTimeout: Close is a half-close; when the peer never closes
// its side, the stream is reset after the close timeout, so it does not
// stay open forever: the peer's writes then fail.
func TestStreamCloseTimeout(t *testing.T) {
	closeTimeout = 50 * time.Millisecond
	defer func() { closeTimeout = CloseTimeout }()
	client, server := sessions(t, tcpPair)
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(peer); err != nil || string(got) != "x" {
		t.Fatalf("peer read %q, %v; want what was written, then EOF", got, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := peer.Write([]byte("y")); err != nil {
			break // reset
		}
		if time.Now().After(deadline) {
			t.Fatal("the peer can still write 10 s after our side closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := st.Read(make([]byte, 8)); err == nil || err == io.EOF {
		t.Errorf("read on the reset stream: %v, want a reset error", err)
	}
	for time.Now().Before(deadline) && (client.NumStreams() > 0 || server.NumStreams() > 0) {
		time.Sleep(10 * time.Millisecond)
	}
	if c, s := client.NumStreams(), server.NumStreams(); c+s > 0 {
		t.Errorf("streams left: client %d, server %d", c, s)
	}
}

// TestWindowBudget: a session's streams grow their receive windows from one
// budget; initial windows are always granted, growth only while it lasts,
// and a stream's growth returns to the budget when the stream ends.
func TestWindowBudget(t *testing.T) {
	b := &budget{max: 10}
	s1, s2 := &span{b: b}, &span{b: b}
	for _, tt := range []struct {
		s    *span
		size int
		prio uint8
		ok   bool
	}{
		{s1, 1 << 20, 255, true}, // initial window: not counted
		{s1, 6, 128, true},
		{s2, 6, 128, false}, // 12 > 10
		{s2, 4, 128, true},
		{s2, 1, 128, false},
	} {
		if err := tt.s.ReserveMemory(tt.size, tt.prio); (err == nil) != tt.ok {
			t.Fatalf("ReserveMemory(%d, %d) = %v, want ok %v (used %d)", tt.size, tt.prio, err, tt.ok, b.used.Load())
		}
	}
	s1.Done()
	if got := b.used.Load(); got != 4 {
		t.Fatalf("after one stream ended the budget holds %d, want 4", got)
	}
	s1.Done() // twice: no change
	s2.ReleaseMemory(3)
	s2.Done()
	if got := b.used.Load(); got != 0 {
		t.Fatalf("after both ended the budget holds %d, want 0", got)
	}
}

// TestWindowGrows: on a path with a round trip of 40 ms, a stream read as
// fast as it arrives gets a receive window beyond InitialWindow, charged to
// the session's budget, and returns it when it ends.
func TestWindowGrows(t *testing.T) {
	// A round trip well above scheduling noise, so that growth, which is
	// paced by the measured RTT, shows also on a loaded machine (-race).
	client, server := sessions(t, delayPair(20*time.Millisecond))
	for _, s := range []*Session{client, server} {
		for i := 0; s.ys.RTT() == 0; i++ {
			if i == 1000 {
				t.Fatal("no round trip measured in 10 s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// transfer sends 16 MiB on a new stream and returns the most of the
	// session's window budget the receiving side held meanwhile.
	transfer := func() int64 {
		st, err := client.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			st.Write(make([]byte, 16<<20))
			st.Close()
		}()
		peer, err := server.AcceptStream()
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close()
		var grown int64
		buf := make([]byte, 64<<10)
		for {
			_, err := peer.Read(buf)
			grown = max(grown, server.budget.used.Load())
			if err == io.EOF {
				return grown
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	// A stream that is read at once grows its window; a few tries, as a
	// stalled scheduler can keep one transfer from looking fast.
	var grown int64
	for try := 0; try < 3 && grown < 1<<20; try++ {
		grown = transfer()
	}
	if grown < 1<<20 {
		t.Errorf("the receive window grew by %d bytes in 3 transfers, want at least 1 MiB", grown)
	}
	deadline := time.Now().Add(10 * time.Second)
	for server.budget.used.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := server.budget.used.Load(); got != 0 {
		t.Errorf("the ended stream still holds %d bytes of the budget", got)
	}
}

// delayPair is a loopback TCP pair whose bytes arrive d after they were
// sent, each way, without a bandwidth limit: a long path.
func delayPair(d time.Duration) func(testing.TB) (net.Conn, net.Conn) {
	return func(t testing.TB) (net.Conn, net.Conn) {
		a, a2 := tcpPair(t)
		b2, b := tcpPair(t)
		go delayCopy(b2, a2, d)
		go delayCopy(a2, b2, d)
		return a, b
	}
}

// delayCopy copies src to dst, each chunk d after it was read, until
// either side closes; then it closes both.
func delayCopy(dst, src net.Conn, d time.Duration) {
	type chunk struct {
		due time.Time
		b   []byte
	}
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 64<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{time.Now().Add(d), b[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	defer src.Close()
	defer dst.Close()
	for c := range q {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.b); err != nil {
			src.Close()
			for range q { // let the reader end
			}
			return
		}
	}
}

// TestSessionClosedErrors: a session closed on this side says so, and the
// peer's session ends too.
func TestSessionClosedErrors(t *testing.T) {
	client, server := sessions(t, tcpPair)
	client.Close()
	if _, err := client.OpenStream(); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("OpenStream on a closed session: %v, want ErrSessionClosed", err)
	}
	if _, err := client.AcceptStream(); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("AcceptStream on a closed session: %v, want ErrSessionClosed", err)
	}
	if _, err := client.Ping(); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("Ping on a closed session: %v, want ErrSessionClosed", err)
	}
	if !client.IsClosed() {
		t.Error("IsClosed = false after Close")
	}
	select {
	case <-server.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("the peer's session did not end")
	}
	if _, err := server.AcceptStream(); err == nil || errors.Is(err, ErrSessionClosed) {
		t.Errorf("AcceptStream on a session the peer closed: %v, want the connection's error", err)
	}
}

// TestWaitRead: WaitRead returns once data is there without taking any,
// and io.EOF once the peer closed its side and everything was read.
func TestWaitRead(t *testing.T) {
	client, server := sessions(t, tcpPair)
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err != nil { // the SYN goes with it
		t.Fatal(err)
	}
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if n, err := peer.Read(buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}

	waited := make(chan error, 1)
	go func() { waited <- peer.WaitRead() }()
	select {
	case err := <-waited:
		t.Fatalf("WaitRead returned %v with nothing to read", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("WaitRead: %v", err)
	}
	if err := peer.WaitRead(); err != nil { // data still there: returns at once
		t.Fatalf("WaitRead again: %v", err)
	}
	if n, err := peer.Read(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v: WaitRead took data", buf[:n], err)
	}
	st.Close()
	if err := peer.WaitRead(); err != io.EOF {
		t.Fatalf("WaitRead after the peer's close: %v, want io.EOF", err)
	}
}
