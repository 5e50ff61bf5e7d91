package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// echo sends n random bytes from `from`, has `echoer` send them back, and
// checks they return intact.
func echo(t *testing.T, from, echoer net.Conn, n int) {
	t.Helper()
	if err := echoErr(from, echoer, n); err != nil {
		t.Fatal(err)
	}
}

func echoErr(from, echoer net.Conn, n int) error {
	deadline := time.Now().Add(20 * time.Second)
	from.SetDeadline(deadline)
	echoer.SetDeadline(deadline)
	defer from.SetDeadline(time.Time{})
	defer echoer.SetDeadline(time.Time{})

	data := make([]byte, n)
	rand.Read(data)
	echoed := make(chan error, 1)
	go func() {
		_, err := io.CopyN(echoer, echoer, int64(n))
		echoed <- err
	}()
	wrote := make(chan error, 1)
	go func() {
		_, err := from.Write(data)
		wrote <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(from, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-wrote; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := <-echoed; err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("%d bytes came back changed", n)
	}
	return nil
}

// TestEcho is the relay path end to end: allocate, permit, a plain dial to
// the relayed address, Accept, and 1 MiB echoed intact each way.
func TestEcho(t *testing.T) {
	for _, s := range turnServers {
		t.Run(s.name, func(t *testing.T) {
			srv := s.start(t)
			a := allocate(t, srv, "sharer")
			if !a.Addr().Addr().IsLoopback() || a.Addr().Port() == 0 {
				t.Fatalf("Addr() = %v, want a loopback relayed address", a.Addr())
			}
			if want := srv.url[len("turn:") : len(srv.url)-len("?transport=tcp")]; a.Server() != want {
				t.Errorf("Server() = %q, want %q", a.Server(), want)
			}
			peer, acc := dialAccept(t, a)
			if got, want := acc.RemoteAddr().String(), peer.LocalAddr().String(); got != want {
				t.Errorf("accepted RemoteAddr = %s, want the peer's %s", got, want)
			}
			if got, want := acc.LocalAddr().String(), a.Addr().String(); got != want {
				t.Errorf("accepted LocalAddr = %s, want the relayed %s", got, want)
			}
			echo(t, peer, acc, 1<<20) // connector -> sharer -> connector
			echo(t, acc, peer, 1<<20) // sharer -> connector -> sharer
		})
	}
}

// TestConcurrentPeers runs 20 peer connections on one allocation at once,
// each echoed intact.
func TestConcurrentPeers(t *testing.T) {
	const peers, size = 20, 256 << 10
	for _, s := range turnServers {
		t.Run(s.name, func(t *testing.T) {
			srv := s.start(t)
			a := allocate(t, srv, "sharer")
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			accepted := make(chan net.Conn, peers)
			acceptErr := make(chan error, 1)
			go func() {
				for range peers {
					c, err := a.Accept(ctx)
					if err != nil {
						acceptErr <- err
						return
					}
					accepted <- c
				}
				acceptErr <- nil
			}()

			var wg sync.WaitGroup
			errs := make(chan error, peers)
			dialed := make(chan net.Conn, peers)
			for range peers {
				wg.Go(func() {
					var d net.Dialer
					c, err := d.DialContext(ctx, "tcp", a.Addr().String())
					if err != nil {
						errs <- err
						return
					}
					dialed <- c
				})
			}
			wg.Wait()
			close(dialed)
			close(errs)
			for err := range errs {
				t.Fatalf("dial: %v", err)
			}
			if err := <-acceptErr; err != nil {
				t.Fatalf("Accept: %v", err)
			}
			close(accepted)
			byPeer := map[string]net.Conn{}
			for c := range accepted {
				defer c.Close()
				byPeer[c.RemoteAddr().String()] = c
			}
			results := make(chan error, peers)
			for p := range dialed {
				defer p.Close()
				acc, ok := byPeer[p.LocalAddr().String()]
				if !ok {
					t.Fatalf("no accepted connection from %s", p.LocalAddr())
				}
				wg.Go(func() { results <- echoErr(p, acc, size) })
			}
			wg.Wait()
			close(results)
			for err := range results {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// TestErrors checks the sentinels callers branch on, and local checks.
func TestErrors(t *testing.T) {
	expiredUser, expiredPass := clientTestCreds(clientTestSecret, "sharer", -time.Minute)
	tests := []struct {
		name   string
		server func(*testing.T) *testTURN
		cfg    func(Config) Config
		permit []netip.Addr
		want   error // from Allocate, or from Permit when permit is set
	}{
		{
			name:   "pion wrong password",
			server: func(t *testing.T) *testTURN { return startPionTURN(t, pionOptions{}) },
			cfg:    func(c Config) Config { c.Password = "wrong"; return c },
			want:   ErrUnauthorized,
		},
		{
			name:   "coturn wrong password",
			server: func(t *testing.T) *testTURN { return startCoturn(t) },
			cfg:    func(c Config) Config { c.Password = "wrong"; return c },
			want:   ErrUnauthorized,
		},
		{
			name:   "pion expired credentials",
			server: func(t *testing.T) *testTURN { return startPionTURN(t, pionOptions{}) },
			cfg:    func(c Config) Config { c.Username, c.Password = expiredUser, expiredPass; return c },
			want:   ErrUnauthorized,
		},
		{
			name:   "coturn expired credentials",
			server: func(t *testing.T) *testTURN { return startCoturn(t) },
			cfg:    func(c Config) Config { c.Username, c.Password = expiredUser, expiredPass; return c },
			want:   ErrUnauthorized,
		},
		{
			name:   "pion quota",
			server: func(t *testing.T) *testTURN { return startPionTURN(t, pionOptions{noQuota: true}) },
			want:   ErrQuota,
		},
		{
			name:   "pion peer forbidden",
			server: func(t *testing.T) *testTURN { return startPionTURN(t, pionOptions{denyPeers: true}) },
			permit: []netip.Addr{loopback},
			want:   ErrForbidden,
		},
		{
			name:   "coturn peer forbidden",
			server: func(t *testing.T) *testTURN { return startCoturn(t) }, // denies 0.0.0.0/8 whatever the loopback setting
			permit: []netip.Addr{netip.MustParseAddr("0.0.0.1")},
			want:   ErrForbidden,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.server(t)
			cfg := srv.config(t, "sharer")
			if tt.cfg != nil {
				cfg = tt.cfg(cfg)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			a, err := Allocate(ctx, cfg)
			if tt.permit == nil {
				if err == nil {
					a.Close()
				}
				if !errors.Is(err, tt.want) {
					t.Fatalf("Allocate: %v, want errors.Is %v", err, tt.want)
				}
				t.Logf("Allocate: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			defer a.Close()
			err = a.Permit(ctx, tt.permit...)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Permit: %v, want errors.Is %v", err, tt.want)
			}
			t.Logf("Permit: %v", err)
		})
	}
}

// TestLocalErrors are refused before anything is sent.
func TestLocalErrors(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []Config{
		{URL: "turn:127.0.0.1:1?transport=udp", Username: "u"},
		{URL: "stun:127.0.0.1:3478", Username: "u"},
		{URL: "turn:127.0.0.1:3478"}, // no username
	} {
		if a, err := Allocate(ctx, cfg); err == nil {
			a.Close()
			t.Errorf("Allocate(%+v) succeeded", cfg)
		} else {
			t.Logf("Allocate(%q): %v", cfg.URL, err)
		}
	}

	srv := startPionTURN(t, pionOptions{})
	a := allocate(t, srv, "sharer")
	for _, ip := range []netip.Addr{{}, netip.MustParseAddr("::1")} {
		if err := a.Permit(ctx, ip); err == nil {
			t.Errorf("Permit(%v) succeeded", ip)
		} else {
			t.Logf("Permit(%v): %v", ip, err)
		}
	}
	// IPv4-mapped IPv6 is IPv4.
	if err := a.Permit(ctx, netip.MustParseAddr("::ffff:127.0.0.1")); err != nil {
		t.Errorf("Permit(::ffff:127.0.0.1): %v", err)
	}
}

// TestAcceptUnblocks checks Accept returns on ctx and on Close.
func TestAcceptUnblocks(t *testing.T) {
	srv := startPionTURN(t, pionOptions{})
	a := allocate(t, srv, "sharer")

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := a.Accept(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept after cancel: %v, want context.Canceled", err)
	}

	tctx, tcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer tcancel()
	if _, err := a.Accept(tctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Accept after deadline: %v, want context.DeadlineExceeded", err)
	}

	got := make(chan error, 1)
	go func() {
		_, err := a.Accept(context.Background())
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-got:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept during Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5 s after Close")
	}
	if _, err := a.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if err := a.Permit(context.Background(), loopback); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Permit after Close: %v, want net.ErrClosed", err)
	}
}

// TestCloseThenAllocate: Close deallocates (the server drops it at once, not
// at expiry), is idempotent, and the same credentials allocate again.
func TestCloseThenAllocate(t *testing.T) {
	srv := startPionTURN(t, pionOptions{})
	cfg := srv.config(t, "sharer")
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		a, err := Allocate(ctx, cfg)
		if err != nil {
			cancel()
			t.Fatalf("Allocate #%d: %v", i, err)
		}
		if err := a.Permit(ctx, loopback); err != nil {
			t.Fatalf("Permit #%d: %v", i, err)
		}
		peer, acc := dialAccept(t, a)
		echo(t, peer, acc, 64<<10)
		if n := srv.pion.AllocationCount(); n != 1 {
			t.Errorf("server has %d allocations, want 1", n)
		}
		if err := a.Close(); err != nil {
			t.Errorf("Close #%d: %v", i, err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("second Close #%d: %v", i, err)
		}
		cancel()
		waitFor(t, "allocation deleted", func() bool { return srv.pion.AllocationCount() == 0 })
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 5 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readsEOF reports whether c's next read ends (EOF or reset) within d.
func readsEOF(c net.Conn, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("read %d bytes, want the connection closed", n)
	case err == nil:
		return errors.New("read returned nothing and no error")
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("still open after %v", d)
	}
	return nil // reset
}

// TestCloseEndsDataConns documents what the servers do to data connections
// already accepted when the allocation is deleted: they close them, and the
// peer connections with them.
func TestCloseEndsDataConns(t *testing.T) {
	for _, s := range turnServers {
		t.Run(s.name, func(t *testing.T) {
			srv := s.start(t)
			a := allocate(t, srv, "sharer")
			peer, acc := dialAccept(t, a)
			echo(t, peer, acc, 1024)
			if err := a.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := readsEOF(acc, 5*time.Second); err != nil {
				t.Errorf("accepted data connection after Close: %v", err)
			}
			if err := readsEOF(peer, 5*time.Second); err != nil {
				t.Errorf("peer connection after Close: %v", err)
			}
		})
	}
}

// TestPeerWithoutPermission: the server takes the peer's TCP connection and
// then closes it; Accept sees nothing.
func TestPeerWithoutPermission(t *testing.T) {
	for _, s := range turnServers {
		t.Run(s.name, func(t *testing.T) {
			srv := s.start(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			a, err := Allocate(ctx, srv.config(t, "sharer"))
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			c, err := net.Dial("tcp", a.Addr().String())
			if err == nil {
				defer c.Close()
				if err := readsEOF(c, 5*time.Second); err != nil {
					t.Errorf("unpermitted peer: %v", err)
				}
			} else {
				t.Logf("unpermitted peer's dial: %v", err)
			}
			actx, acancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer acancel()
			if c, err := a.Accept(actx); err == nil {
				c.Close()
				t.Fatal("Accept returned a connection from an unpermitted peer")
			}
		})
	}
}

// TestRefreshes runs past short allocation and permission lifetimes (and,
// on coturn, nonce lifetimes): pion refreshes the allocation, this package
// the permissions, both get past 438 Stale Nonce, and peers still get
// through.
func TestRefreshes(t *testing.T) {
	t.Parallel()
	servers := []struct {
		name  string
		start func(*testing.T) *testTURN
	}{
		{"pion", func(t *testing.T) *testTURN {
			return startPionTURN(t, pionOptions{allocationLifetime: time.Second, permissionTimeout: time.Second})
		}},
		{"coturn", func(t *testing.T) *testTURN {
			return startCoturn(t, "--max-allocate-lifetime=1", "--permission-lifetime=1", "--stale-nonce=1")
		}},
	}
	for _, s := range servers {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			srv := s.start(t)
			cfg := srv.config(t, "sharer")
			cfg.permRefresh = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			a, err := Allocate(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if err := a.Permit(ctx, loopback); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second) // three allocation and permission lifetimes
			if srv.pion != nil {
				if n := srv.pion.AllocationCount(); n != 1 {
					t.Fatalf("server has %d allocations after 3 lifetimes, want 1", n)
				}
			}
			peer, acc := dialAccept(t, a)
			echo(t, peer, acc, 64<<10)
		})
	}
}

// TestStaleNonce runs on coturn with nonces that go stale after a second
// (pion's last an hour). A ConnectionBind with a stale nonce is not answered
// 438 there: coturn drops the data connection and the peer's with it. So the
// nonce is checked before binding, and the deallocation of Close is repeated
// with the new nonce.
func TestStaleNonce(t *testing.T) {
	t.Parallel()
	srv := startCoturn(t, "--stale-nonce=1")
	cfg := srv.config(t, "sharer")
	hook := logtest.NewLocal(cfg.Log.(*logrus.Logger))
	cfg.permRefresh = time.Hour // no traffic that would renew the nonce
	cfg.nonceFresh = -1         // check before every bind
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := Allocate(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Permit(ctx, loopback); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond) // the nonce is stale
	peer, acc := dialAccept(t, a)
	echo(t, peer, acc, 1024)
	time.Sleep(2100 * time.Millisecond) // stale again
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, e := range hook.AllEntries() {
		if strings.Contains(e.Message, "deallocation failed") || e.Level <= logrus.WarnLevel {
			t.Errorf("logged %s: %s %v", e.Level, e.Message, e.Data)
		}
	}
}

// TestPeerSpeaksFirst: the connector (the TLS client) writes as soon as its
// dial returns, before the sharer has bound the connection, let alone
// called Accept. Those bytes arrive intact, first.
func TestPeerSpeaksFirst(t *testing.T) {
	for _, s := range turnServers {
		t.Run(s.name, func(t *testing.T) {
			srv := s.start(t)
			a := allocate(t, srv, "sharer")
			peer, err := net.Dial("tcp", a.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			hello := make([]byte, 4096)
			rand.Read(hello)
			if _, err := peer.Write(hello); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // bound by now, not yet accepted
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			acc, err := a.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer acc.Close()
			acc.SetReadDeadline(time.Now().Add(10 * time.Second))
			got := make([]byte, len(hello))
			if _, err := io.ReadFull(acc, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, hello) {
				t.Fatal("the peer's first bytes came changed")
			}
			echo(t, acc, peer, 4096)
		})
	}
}

// TestControlConnLost: when the control connection dies, Accept says so
// instead of waiting for peers that cannot come.
func TestControlConnLost(t *testing.T) {
	srv := startPionTURN(t, pionOptions{})
	cfg := srv.config(t, "sharer")
	var mu sync.Mutex
	var conns []net.Conn
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := Allocate(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	mu.Lock()
	conns[0].(*net.TCPConn).CloseRead() // reads see EOF, as when the server closes
	mu.Unlock()
	_, err = a.Accept(ctx)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("Accept after losing the control connection: %v, want io.EOF", err)
	}
	t.Logf("Accept: %v", err)
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	waitFor(t, "server drops the allocation", func() bool { return srv.pion.AllocationCount() == 0 })
}

// TestControlConnClosed: the server deletes the allocation when its control
// connection closes, and with it the data connections: Close does not need
// its Refresh(0) to be heard.
func TestControlConnClosed(t *testing.T) {
	for _, s := range turnServers {
		t.Run(s.name, func(t *testing.T) {
			srv := s.start(t)
			cfg := srv.config(t, "sharer")
			var mu sync.Mutex
			var conns []net.Conn
			cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err == nil {
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
				return c, err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			a, err := Allocate(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if err := a.Permit(ctx, loopback); err != nil {
				t.Fatal(err)
			}
			peer, acc := dialAccept(t, a)
			echo(t, peer, acc, 1024)
			mu.Lock()
			conns[0].Close() // the control connection
			mu.Unlock()
			if err := readsEOF(acc, 5*time.Second); err != nil {
				t.Errorf("accepted data connection: %v", err)
			}
			if err := readsEOF(peer, 5*time.Second); err != nil {
				t.Errorf("peer connection: %v", err)
			}
			if _, err := a.Accept(ctx); err == nil || ctx.Err() != nil {
				t.Errorf("Accept: %v, want the loss", err)
			}
		})
	}
}

// TestAllocateContext: a context ending during Allocate ends it.
func TestAllocateContext(t *testing.T) {
	// A server that takes the connection and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	defer func() {
		ln.Close()
		<-acceptDone
		for _, c := range held {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Allocate(ctx, Config{URL: "turn:" + ln.Addr().String(), Username: "u", Password: "p"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Allocate: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Allocate took %v after its context ended", d)
	}
}
