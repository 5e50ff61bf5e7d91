package limit

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock moves only when told; its timers fire in Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1e9, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.stopped {
			return true
		}
		if !t.at.After(c.now) {
			due = append(due, t)
			return true
		}
		return false
	})
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

func TestKeyed(t *testing.T) {
	type step struct {
		wait time.Duration
		key  string
		slot bool // Acquire, else Allow
		want string
	}
	tests := []struct {
		name  string
		rate  float64
		burst int
		max   int
		steps []step
	}{
		{"burst then refused", 1, 2, 0, []step{
			{0, "a", false, ""}, {0, "a", false, ""}, {0, "a", false, ReasonRate},
		}},
		{"refills with time", 2, 1, 0, []step{
			{0, "a", false, ""}, {0, "a", false, ReasonRate}, {500 * time.Millisecond, "a", false, ""},
		}},
		{"keys apart", 1, 1, 0, []step{
			{0, "a", false, ""}, {0, "b", false, ""}, {0, "a", false, ReasonRate},
		}},
		{"concurrent slots", 0, 0, 2, []step{
			{0, "a", true, ""}, {0, "a", true, ""}, {0, "a", true, ReasonPerKey}, {0, "b", true, ""},
		}},
		{"no limits", 0, 0, 0, []step{
			{0, "a", true, ""}, {0, "a", true, ""}, {0, "a", false, ""},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			k := &Keyed[string]{Rate: tt.rate, Burst: tt.burst, Max: tt.max, Clock: clk}
			for i, s := range tt.steps {
				clk.Advance(s.wait)
				var got string
				if s.slot {
					_, got = k.Acquire(s.key)
				} else if !k.Allow(s.key) {
					got = ReasonRate
				}
				if got != s.want {
					t.Fatalf("step %d (%s): %q, want %q", i, s.key, got, s.want)
				}
			}
		})
	}
}

func TestKeyedRelease(t *testing.T) {
	k := &Keyed[string]{Max: 1, Clock: newFakeClock()}
	rel, reason := k.Acquire("a")
	if reason != "" {
		t.Fatal(reason)
	}
	if _, r := k.Acquire("a"); r != ReasonPerKey {
		t.Fatalf("second slot: %q", r)
	}
	rel()
	rel() // once only
	if k.Held("a") != 0 {
		t.Fatalf("held %d after release", k.Held("a"))
	}
	if _, r := k.Acquire("a"); r != "" {
		t.Fatalf("after release: %q", r)
	}
}

func TestBudget(t *testing.T) {
	b := &Budget{Total: 3, PreAuth: 2}
	s1, _ := b.Admit()
	s2, _ := b.Admit()
	if _, r := b.Admit(); r != ReasonGlobal {
		t.Fatalf("third pre-auth: %q, want global", r)
	}
	s1.Authenticated() // room for one more pre-auth, within Total
	s3, r := b.Admit()
	if r != "" {
		t.Fatalf("after auth: %q", r)
	}
	s2.Authenticated()
	if _, r := b.Admit(); r != ReasonGlobal {
		t.Fatalf("over total: %q", r)
	}
	for _, s := range []*Slot{s1, s2, s3, s3} {
		s.Release()
	}
	if b.Open() != 0 || b.Unauthenticated() != 0 {
		t.Fatalf("open %d, preauth %d after release", b.Open(), b.Unauthenticated())
	}
}

func TestBudgetFor(t *testing.T) {
	tests := []struct {
		nofile         uint64
		share          float64
		total, preauth int
	}{
		{1024, 0.5, 768, 384},
		{256, 0.5, 192, 96},
		{100, 0.5, 68, 34},
		{20000, 0.25, 15000, 3750},
		{16, 0.5, 1, 1},
	}
	for _, tt := range tests {
		total, pre := BudgetFor(tt.nofile, tt.share)
		if total != tt.total || pre != tt.preauth {
			t.Errorf("BudgetFor(%d, %v) = %d, %d; want %d, %d", tt.nofile, tt.share, total, pre, tt.total, tt.preauth)
		}
	}
}

func TestBurstLog(t *testing.T) {
	tests := []struct {
		name      string
		refusals  []time.Duration // when, from the start
		end       time.Duration   // then advance to here
		wantLines []int           // counts of the lines written
	}{
		{"one", []time.Duration{0}, time.Minute, []int{1}},
		{"a burst is two lines", []time.Duration{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, time.Minute, []int{1, 9}},
		{"apart are each one", []time.Duration{0, 30 * time.Second}, time.Minute, []int{1, 1}},
		{"a steady flood logs once a window", func() []time.Duration {
			var d []time.Duration
			for i := range 300 {
				d = append(d, time.Duration(i)*100*time.Millisecond)
			}
			return d
		}(), time.Minute, []int{1, 99, 100, 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, hook := test.NewNullLogger()
			clk := newFakeClock()
			b := &BurstLog{Log: log, Window: 10 * time.Second, Clock: clk}
			var at time.Duration
			for _, d := range tt.refusals {
				clk.Advance(d - at)
				at = d
				b.Refused("refused", ReasonRate, logrus.Fields{"remote": "x"})
			}
			clk.Advance(tt.end - at)
			b.Close()
			var got []int
			for _, e := range hook.AllEntries() {
				got = append(got, e.Data["count"].(int))
			}
			if !slices.Equal(got, tt.wantLines) {
				t.Fatalf("line counts %v, want %v", got, tt.wantLines)
			}
		})
	}
}

func TestListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	var mu sync.Mutex
	var refused []string
	ln := NewListener(inner, ListenerConfig{
		PerIP:          &Keyed[netip.Addr]{Max: 2, Clock: clk},
		Budget:         &Budget{Total: 10, PreAuth: 5},
		PreAuthTimeout: 5 * time.Second,
		Clock:          clk,
		OnRefuse: func(reason string, _ netip.Addr) {
			mu.Lock()
			refused = append(refused, reason)
			mu.Unlock()
		},
	})
	defer ln.Close()
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	dial := func() {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	for range 3 {
		dial()
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The third is refused (per IP) and Accept waits for the next; marking
	// a authenticated frees its per-IP slot for a fourth.
	type res struct {
		c   net.Conn
		err error
	}
	next := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		next <- res{c, err}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(refused)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	Authenticated(a)
	dial()
	r := <-next
	if r.err != nil {
		t.Fatal(r.err)
	}
	c := r.c
	mu.Lock()
	if !slices.Equal(refused, []string{ReasonPerKey}) {
		t.Errorf("refused %v, want [per_ip]", refused)
	}
	mu.Unlock()
	clk.Advance(5 * time.Second) // b and c expire; a is authenticated
	mu.Lock()
	if !slices.Equal(refused, []string{ReasonPerKey, ReasonPreAuth, ReasonPreAuth}) {
		t.Errorf("refused %v, want per_ip, deadline x2", refused)
	}
	mu.Unlock()
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Error("expired connection still reads")
	}
	a.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := a.Read(make([]byte, 1)); err == nil || !isTimeout(err) {
		t.Errorf("authenticated connection: %v, want a timeout (still open)", err)
	}
	for _, x := range []net.Conn{a, b, c} {
		x.Close()
	}
	if got := ln.cfg.Budget.Open(); got != 0 {
		t.Errorf("budget open %d after closing all", got)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestRemoteIP(t *testing.T) {
	tests := []struct{ addr, want string }{
		{"192.0.2.7:1234", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:1234", "192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:1234", "2001:db8:1:2::"},
	}
	for _, tt := range tests {
		c := addrConn{net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tt.addr))}
		if got := remoteIP(c).String(); got != tt.want {
			t.Errorf("remoteIP(%s) = %s, want %s", tt.addr, got, tt.want)
		}
	}
}

type addrConn struct{ remote net.Addr }

func (c addrConn) RemoteAddr() net.Addr           { return c.remote }
func (addrConn) Read([]byte) (int, error)         { return 0, nil }
func (addrConn) Write([]byte) (int, error)        { return 0, nil }
func (addrConn) Close() error                     { return nil }
func (addrConn) LocalAddr() net.Addr              { return nil }
func (addrConn) SetDeadline(time.Time) error      { return nil }
func (addrConn) SetReadDeadline(time.Time) error  { return nil }
func (addrConn) SetWriteDeadline(time.Time) error { return nil }
