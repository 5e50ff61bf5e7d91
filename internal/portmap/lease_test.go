package portmap

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock tests move by hand.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	clock *fakeClock
	c     chan time.Time
	at    time.Time
	dead  bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := !t.dead
	t.dead = true
	return was
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{clock: c, c: make(chan time.Time, 1), at: c.now.Add(d)}
	c.timers = append(c.timers, t)
	return t
}

// waitTimer waits until n timers were made and returns the last one's delay.
func (c *fakeClock) waitTimer(t *testing.T, n int) time.Duration {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		c.mu.Lock()
		if len(c.timers) >= n {
			d := c.timers[n-1].at.Sub(c.now)
			c.mu.Unlock()
			return d
		}
		c.mu.Unlock()
	}
	t.Fatalf("no timer #%d", n)
	return 0
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		if !t.dead && !t.at.After(c.now) {
			t.dead = true
			t.c <- c.now
		}
	}
}

// TestLeaseRenew drives a PCP lease with a fake clock: it renews at half the
// granted lifetime with the same nonce and suggests the same external port,
// reports each renewal on Events; a failed renewal is logged, reported, and
// retried sooner; Close stops the goroutine, deletes the mapping and closes
// Events.
func TestLeaseRenew(t *testing.T) {
	var mu sync.Mutex
	refuse := false
	f := newFakePMP(t, func(b []byte) [][]byte {
		req, ok := parsePCPRequest(b)
		if ok && req.op == pcpOpAnnounce {
			return [][]byte{encodePCP(pcpResponse{op: pcpOpAnnounce})}
		}
		if !ok || req.op != pcpOpMap {
			return nil
		}
		g := pcpGrant(req, extIP, 100)
		mu.Lock()
		if refuse && req.lifetime != 0 {
			g.result = 8 // NO_RESOURCES
		}
		mu.Unlock()
		return [][]byte{encodePCP(g)}
	})
	clock := &fakeClock{now: time.Unix(1000, 0)}
	opts, lines := loopOptions(t, f.port(), 0, PCP)
	opts.Clock = clock
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := c.Map(context.Background(), 4242)
	if err != nil {
		t.Fatal(err)
	}
	first := lease.Current()
	if first.Expires != time.Unix(1100, 0) {
		t.Errorf("expires %v, want lease end at 1100", first.Expires)
	}
	if d := clock.waitTimer(t, 1); d != 50*time.Second {
		t.Errorf("renewal in %v, want half the 100s lifetime", d)
	}
	clock.advance(50 * time.Second)
	ev := <-lease.Events()
	if ev.Err != nil || ev.Mapping.Expires != time.Unix(1150, 0) {
		t.Errorf("renewal event %+v", ev)
	}
	reqs := f.requests()
	r0 := firstPCPMap(reqs)
	r1, _ := parsePCPRequest(reqs[len(reqs)-1])
	if r1.nonce != r0.nonce || r1.suggested != first.External {
		t.Errorf("renewal %+v, want nonce %x and suggested %v", r1, r0.nonce, first.External)
	}

	mu.Lock()
	refuse = true
	mu.Unlock()
	clock.waitTimer(t, 2)
	clock.advance(50 * time.Second)
	ev = <-lease.Events()
	if !errors.Is(ev.Err, ErrRefused) || ev.Mapping.External != first.External {
		t.Errorf("failed renewal event %+v", ev)
	}
	if !lines.has("renewal failed") {
		t.Errorf("no log line for the failed renewal:\n%s", lines)
	}
	// Half of the 50s left.
	if d := clock.waitTimer(t, 3); d != 25*time.Second {
		t.Errorf("retry in %v, want 25s", d)
	}
	if err := lease.Close(); err != nil {
		t.Fatal(err)
	}
	if _, open := <-lease.Events(); open {
		t.Error("Events still open after Close")
	}
	reqs = f.requests()
	if del, _ := parsePCPRequest(reqs[len(reqs)-1]); del.lifetime != 0 || del.nonce != r0.nonce {
		t.Errorf("Close sent %+v, want a delete", del)
	}
	if lease.Close() != nil || !errors.Is(lease.Err(), ErrClosed) {
		t.Error("second Close or Err after Close")
	}
}

// TestCloseBounded: a gateway gone silent does not hold Close past
// CloseTimeout.
func TestCloseBounded(t *testing.T) {
	var mu sync.Mutex
	silent := false
	f := newFakePMP(t, func(b []byte) [][]byte {
		mu.Lock()
		defer mu.Unlock()
		req, ok := parsePCPRequest(b)
		switch {
		case !ok || silent:
			return nil
		case req.op == pcpOpAnnounce:
			return [][]byte{encodePCP(pcpResponse{op: pcpOpAnnounce})}
		}
		return [][]byte{encodePCP(pcpGrant(req, extIP, 100))}
	})
	opts, _ := loopOptions(t, f.port(), 0, PCP)
	opts.CloseTimeout = 300 * time.Millisecond
	c, _ := New(opts)
	lease, err := c.Map(context.Background(), 4242)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	silent = true
	mu.Unlock()
	start := time.Now()
	err = lease.Close()
	if took := time.Since(start); took > time.Second || !errors.Is(err, ErrNoGateway) {
		t.Errorf("Close took %v: %v", took, err)
	}
}

func TestOptions(t *testing.T) {
	_, err := New(Options{Gateway: loopback, Protocols: []string{"pcp", "smtp", "pcp"}})
	if err == nil || !strings.Contains(err.Error(), `protocols[1]: unknown protocol "smtp"`) || !strings.Contains(err.Error(), `protocols[2]: "pcp" listed twice`) {
		t.Errorf("bad protocols: %v", err)
	}
	if _, err := New(Options{Gateway: netip.MustParseAddr("2001:db8::1")}); err == nil {
		t.Error("IPv6 gateway accepted")
	}
}

func TestParseProcNetRoute(t *testing.T) {
	const table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
		"wlan0\t00000000\t0202000A\t0003\t0\t0\t600\t00000000\t0\t0\t0\n" +
		"eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
	got, err := parseProcNetRoute(strings.NewReader(table))
	if err != nil || got != netip.MustParseAddr("10.0.1.1") {
		t.Errorf("got %v, %v; want 10.0.1.1 (lowest metric)", got, err)
	}
	if _, err := parseProcNetRoute(strings.NewReader(table[:strings.Index(table, "wlan0")])); !errors.Is(err, ErrNoGateway) {
		t.Errorf("no default route: %v", err)
	}
}
