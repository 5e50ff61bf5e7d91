package natlab_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/natlab"
)

// TestConntrack checks that a NAT forgets a mapping after its established
// timeout, and at once after a flush: the public side's next packet is dropped.
func TestConntrack(t *testing.T) {
	tests := []struct {
		name   string
		before func(ctx context.Context, lab *natlab.Lab) error // before the connection
		after  func(ctx context.Context, lab *natlab.Lab) error // while it is idle
	}{
		{
			name: "established-timeout",
			before: func(ctx context.Context, lab *natlab.Lab) error {
				return lab.SetConntrackTCPEstablishedTimeout(ctx, "gw-a", time.Second)
			},
			after: func(context.Context, *natlab.Lab) error { time.Sleep(2500 * time.Millisecond); return nil },
		},
		{
			name:   "flush",
			before: func(context.Context, *natlab.Lab) error { return nil },
			after: func(ctx context.Context, lab *natlab.Lab) error {
				if err := lab.FlushConntrack(ctx, "gw-a"); err != nil {
					return err
				}
				if n, err := lab.Router("gw-a").ConntrackCount(ctx); err != nil || n != 0 {
					return errors.Join(err, errors.New("entries left after flush"))
				}
				return nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lab := natlab.New(t, natlab.Pair(natlab.BehindCone, natlab.Public))
			ctx := testCtx(t, 30*time.Second)
			if err := tt.before(ctx, lab); err != nil {
				t.Fatal(err)
			}
			ln, err := lab.Host("broker").Listen("tcp", ":7100")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- c
				}
			}()
			c, err := lab.Host("a").Dial(ctx, "tcp", net.JoinHostPort(lab.Host("broker").IP().String(), "7100"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s := <-accepted
			defer s.Close()
			// Both directions work while the mapping lives.
			br := bufio.NewReader(c)
			if _, err := s.Write([]byte("early\n")); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if l, err := br.ReadString('\n'); err != nil || l != "early\n" {
				t.Fatalf("before: %q, %v", l, err)
			}
			if n, err := lab.Router("gw-a").ConntrackCount(ctx); err != nil || n == 0 {
				t.Fatalf("conntrack entries on gw-a: %d, %v", n, err)
			}
			if err := tt.after(ctx, lab); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Write([]byte("late\n")); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
			if l, err := br.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("after the mapping is gone the host still got %q, %v; want a timeout", l, err)
			}
		})
	}
}

// TestConntrackSysctl checks the timeout lands in the router's namespace only.
func TestConntrackSysctl(t *testing.T) {
	lab := natlab.New(t, natlab.Pair(natlab.BehindCone, natlab.BehindCone))
	ctx := testCtx(t, 10*time.Second)
	if err := lab.SetConntrackTCPEstablishedTimeout(ctx, "gw-a", 42*time.Second); err != nil {
		t.Fatal(err)
	}
	read := func(n *natlab.Node) string {
		var v []byte
		if err := n.Do(func() (err error) {
			v, err = os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(v))
	}
	if got := read(lab.Router("gw-a")); got != "42" {
		t.Errorf("gw-a: %s, want 42", got)
	}
	if got := read(lab.Router("gw-b")); got == "42" {
		t.Errorf("gw-b changed too")
	}
}
