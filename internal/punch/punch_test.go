package punch

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/peerport/peerport/internal/backoff"
	"github.com/peerport/peerport/internal/nat"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func cand(s string, k Kind) Candidate { return Candidate{Addr: netip.MustParseAddrPort(s), Kind: k} }

func TestOrder(t *testing.T) {
	tests := []struct {
		name string
		in   []Candidate
		want []Candidate
	}{
		{"lan before public before ipv6",
			[]Candidate{cand("[2001:db8::5]:7", Host), cand("203.0.113.100:7", Srflx), cand("10.0.1.10:7", Host)},
			[]Candidate{cand("10.0.1.10:7", Host), cand("203.0.113.100:7", Srflx), cand("[2001:db8::5]:7", Host)}},
		{"ula between lan and public v4",
			[]Candidate{cand("198.51.100.18:7", Host), cand("[fd00::1]:7", Host), cand("192.168.1.2:7", Host)},
			[]Candidate{cand("192.168.1.2:7", Host), cand("[fd00::1]:7", Host), cand("198.51.100.18:7", Host)}},
		{"ties keep order, duplicates keep the first kind",
			[]Candidate{cand("203.0.113.7:7", Srflx), cand("198.51.100.18:7", Host), cand("203.0.113.7:7", Host)},
			[]Candidate{cand("203.0.113.7:7", Srflx), cand("198.51.100.18:7", Host)}},
		{"mapped v4 is v4",
			[]Candidate{cand("[::ffff:10.0.0.1]:7", Host), cand("203.0.113.7:7", Srflx)},
			[]Candidate{cand("10.0.0.1:7", Host), cand("203.0.113.7:7", Srflx)}},
		{"unusable dropped",
			[]Candidate{cand("0.0.0.0:7", Host), cand("10.0.0.1:0", Host), cand("[fe80::1]:7", Host),
				cand("169.254.1.1:7", Host), cand("224.0.0.1:7", Host), cand("[::]:7", Host), cand("127.0.0.1:7", Host)},
			[]Candidate{cand("127.0.0.1:7", Host)}},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Order(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("Order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBest(t *testing.T) {
	mk := func(c Candidate) arrival { return arrival{cand: c} }
	tests := []struct {
		name string
		in   []arrival
		want int
	}{
		{"lan wins over earlier public", []arrival{mk(cand("203.0.113.1:1", Srflx)), mk(cand("10.0.0.2:1", Host))}, 1},
		{"earliest among equals", []arrival{mk(cand("203.0.113.1:1", Srflx)), mk(cand("203.0.113.2:1", Host))}, 0},
		{"unknown last", []arrival{mk(Candidate{Addr: netip.MustParseAddrPort("10.0.0.9:1"), Kind: "unknown"}), mk(cand("[2001:db8::1]:1", Host))}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := best(tt.in); got != tt.want {
				t.Errorf("best = %d, want %d", got, tt.want)
			}
		})
	}
}

// recorder collects trace events.
type recorder struct {
	mu sync.Mutex
	ev []Event
}

func (r *recorder) trace(e Event) { r.mu.Lock(); r.ev = append(r.ev, e); r.mu.Unlock() }

func (r *recorder) types() []EventType {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []EventType
	for _, e := range r.ev {
		out = append(out, e.Type)
	}
	return out
}

func listen(t *testing.T, addr string) (net.Listener, uint16) {
	t.Helper()
	ln, err := Listen(t.Context(), nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln, addrPortOf(ln.Addr()).Port()
}

type outcome struct {
	c   net.Conn
	res *Result
	err error
	tr  *recorder
}

// punchPair runs both sides at once and returns initiator, responder.
func punchPair(t *testing.T, ci, cr Config) (outcome, outcome) {
	t.Helper()
	var wg sync.WaitGroup
	var oi, or outcome
	oi.tr, or.tr = &recorder{}, &recorder{}
	ci.Initiator, ci.Tracer, cr.Tracer = true, oi.tr.trace, or.tr.trace
	wg.Go(func() { oi.c, oi.res, oi.err = Punch(t.Context(), ci) })
	wg.Go(func() { or.c, or.res, or.err = Punch(t.Context(), cr) })
	wg.Wait()
	t.Cleanup(func() {
		for _, o := range []outcome{oi, or} {
			if o.c != nil {
				o.c.Close()
			}
		}
	})
	return oi, or
}

// exchange moves data both ways over the kept pair.
func exchange(t *testing.T, a, b net.Conn) {
	t.Helper()
	for _, d := range [][2]net.Conn{{a, b}, {b, a}} {
		msg := []byte("hello over " + d[0].LocalAddr().String())
		go d[0].Write(msg) //nolint:errcheck // the read below checks it
		got := make([]byte, len(msg))
		_ = d[1].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(d[1], got); err != nil || string(got) != string(msg) {
			t.Fatalf("exchange: got %q, %v; want %q", got, err, msg)
		}
	}
}

func mirrored(t *testing.T, oi, or outcome) {
	t.Helper()
	if oi.err != nil || or.err != nil {
		t.Fatalf("punch: initiator %v, responder %v", oi.err, or.err)
	}
	if oi.res.Local != or.res.Remote || oi.res.Remote != or.res.Local {
		t.Fatalf("sides kept different connections: initiator %s->%s, responder %s->%s",
			oi.res.Local, oi.res.Remote, or.res.Local, or.res.Remote)
	}
	exchange(t, oi.c, or.c)
}

func TestPunchLoopback(t *testing.T) {
	lnA, pa := listen(t, ":0") // dual-stack: dials of IPv4 share the port
	lnB, pb := listen(t, "127.0.0.1:0")
	oi, or := punchPair(t,
		Config{Listener: lnA, Remote: []Candidate{cand("127.0.0.1:"+itoa(pb), Host)}, Timeout: 5 * time.Second},
		Config{Listener: lnB, Remote: []Candidate{cand("127.0.0.1:"+itoa(pa), Host)}, Timeout: 5 * time.Second},
	)
	mirrored(t, oi, or)
	for _, o := range []outcome{oi, or} {
		types := o.tr.types()
		if types[0] != EventCandidate || types[len(types)-1] != EventChosen ||
			!slices.Contains(types, EventConnected) || !slices.Contains(types, EventSYN) {
			t.Errorf("trace %v: want candidate, syn.., connected.., chosen", types)
		}
		if i, j := slices.Index(types, EventSYN), slices.Index(types, EventChosen); i > j {
			t.Errorf("trace %v: chosen before syn", types)
		}
		if o.res.Attempts < 1 || o.res.Via == "" {
			t.Errorf("result %+v: want attempts and via", o.res)
		}
	}
}

// TestPairChoiceBothDirections gives each side two addresses of the other,
// so up to four distinct connections come up, by dial and by accept; both
// must keep the same one.
func TestPairChoiceBothDirections(t *testing.T) {
	for i := range 5 {
		lnA, pa := listen(t, "0.0.0.0:0")
		lnB, pb := listen(t, "0.0.0.0:0")
		oi, or := punchPair(t,
			Config{Listener: lnA, Timeout: 5 * time.Second,
				Remote: []Candidate{cand("127.0.0.1:"+itoa(pb), Host), cand("127.0.0.2:"+itoa(pb), Host)}},
			Config{Listener: lnB, Timeout: 5 * time.Second,
				Remote: []Candidate{cand("127.0.0.2:"+itoa(pa), Host), cand("127.0.0.1:"+itoa(pa), Host)}},
		)
		mirrored(t, oi, or)
		t.Logf("run %d: initiator kept %s->%s via %s", i, oi.res.Local, oi.res.Remote, oi.res.Via)
		oi.c.Close()
		or.c.Close()
	}
}

// TestBackoff dials a closed port: each attempt is refused and the wait
// before the next grows per internal/backoff (jitter pinned to its ceiling).
func TestBackoff(t *testing.T) {
	closed, port := listen(t, "127.0.0.1:0")
	closed.Close()
	tr := &recorder{}
	_, res, err := Punch(t.Context(), Config{
		LocalAddr: netip.MustParseAddrPort("127.0.0.1:0"),
		Remote:    []Candidate{cand("127.0.0.1:"+itoa(port), Host)},
		Timeout:   400 * time.Millisecond, Initiator: true, Tracer: tr.trace,
		Backoff: backoff.Backoff{Base: 10 * time.Millisecond, Cap: 40 * time.Millisecond, Rand: func() float64 { return 1 }},
	})
	if !errors.Is(err, ErrDeadline) {
		t.Fatalf("err = %v, want ErrDeadline", err)
	}
	var waits []time.Duration
	for _, e := range tr.ev {
		if e.Type == EventAttemptFailed {
			waits = append(waits, e.Backoff)
			if e.Attempt != len(waits) {
				t.Errorf("attempt %d reported as %d", len(waits), e.Attempt)
			}
		}
	}
	want := []time.Duration{10, 20, 40, 40}
	if len(waits) < len(want) {
		t.Fatalf("waits %v: want at least %d failed attempts", waits, len(want))
	}
	for i, w := range want {
		if waits[i] != w*time.Millisecond {
			t.Errorf("wait %d = %v, want %v", i, waits[i], w*time.Millisecond)
		}
	}
	if res.Attempts < len(waits) {
		t.Errorf("attempts %d < failed attempts %d", res.Attempts, len(waits))
	}
	if last := tr.ev[len(tr.ev)-1]; last.Type != EventFailed || !errors.Is(last.Err, ErrDeadline) {
		t.Errorf("last event %+v: want failed with ErrDeadline", last)
	}
}

func TestRelayNeededAtOnce(t *testing.T) {
	sym := &nat.Report{TCP: nat.Mapping{Behavior: nat.MappingDestinationDependent}}
	cone := &nat.Report{TCP: nat.Mapping{Behavior: nat.MappingEndpointIndependent}}
	tests := []struct {
		name        string
		local, peer *nat.Report
	}{{"local symmetric", sym, cone}, {"peer symmetric", cone, sym}, {"peer only", nil, sym}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, _ := listen(t, ":0")
			tr := &recorder{}
			_, _, err := Punch(t.Context(), Config{Listener: ln, LocalNAT: tt.local, PeerNAT: tt.peer,
				Remote: []Candidate{cand("127.0.0.1:9", Host), cand("[::1]:9", Host)}, Tracer: tr.trace})
			if !errors.Is(err, ErrRelayNeeded) {
				t.Fatalf("err = %v, want ErrRelayNeeded", err)
			}
			if got := tr.types(); !slices.Equal(got, []EventType{EventFailed}) {
				t.Errorf("trace %v, want [failed]", got)
			}
			// The listener was handed over: it must be closed.
			if _, err := ln.Accept(); err == nil {
				t.Error("listener still open")
			}
		})
	}
}

func TestBeyondNAT(t *testing.T) {
	for addr, want := range map[string]bool{
		"2001:db8::1": true, "fd00::1": true, "198.51.100.1": false, "10.0.0.1": false,
		"::1": false, "127.0.0.1": false, "::ffff:198.51.100.1": false,
	} {
		if got := BeyondNAT(netip.MustParseAddr(addr)); got != want {
			t.Errorf("BeyondNAT(%s) = %v, want %v", addr, got, want)
		}
	}
}

// TestMappedBehindSymmetric: behind a destination-dependent NAT holding a
// port mapping, the side with the mapping dials nothing that could work
// but waits, Reachable; the peer dials the mapping, and only it.
func TestMappedBehindSymmetric(t *testing.T) {
	sym := &nat.Report{TCP: nat.Mapping{Behavior: nat.MappingDestinationDependent}}
	for _, initiator := range []string{"mapped side", "other side"} {
		t.Run(initiator, func(t *testing.T) {
			lnA, pa := listen(t, "0.0.0.0:0") // behind the symmetric NAT, mapped (at 127.0.0.2)
			lnB, pb := listen(t, "127.0.0.1:0")
			a := Config{Listener: lnA, LocalNAT: sym, Reachable: true, Timeout: 5 * time.Second,
				Remote: []Candidate{cand("127.0.0.1:"+itoa(pb), Srflx)}}
			b := Config{Listener: lnB, PeerNAT: sym, Timeout: 5 * time.Second,
				Remote: []Candidate{cand("127.0.0.1:"+itoa(pa), Srflx), cand("127.0.0.2:"+itoa(pa), Mapped)}}
			var oi, or outcome
			if initiator == "mapped side" {
				oi, or = punchPair(t, a, b)
			} else {
				oi, or = punchPair(t, b, a)
			}
			mirrored(t, oi, or)
			for _, o := range []outcome{oi, or} {
				for _, e := range o.tr.ev {
					if e.Type == EventCandidate && e.Candidate.Kind != Mapped {
						t.Errorf("tried %s behind a destination-dependent NAT", e.Candidate)
					}
				}
			}
		})
	}
}

func TestNoCandidates(t *testing.T) {
	_, _, err := Punch(t.Context(), Config{LocalAddr: netip.MustParseAddrPort("127.0.0.1:0"),
		Remote: []Candidate{cand("[::1]:7", Host), cand("0.0.0.0:1", Host)}})
	if !errors.Is(err, ErrNoCandidates) {
		t.Fatalf("err = %v, want ErrNoCandidates", err)
	}
}

// TestResponderIgnoresStrangers: a connection that never sends the marker
// (a scanner, a stale dial) is not kept.
func TestResponderIgnoresStrangers(t *testing.T) {
	lnA, pa := listen(t, "127.0.0.1:0")
	lnB, pb := listen(t, "127.0.0.1:0")
	stranger, err := net.Dial("tcp", "127.0.0.1:"+itoa(pb))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	oi, or := punchPair(t,
		Config{Listener: lnA, Remote: []Candidate{cand("127.0.0.1:"+itoa(pb), Host)}, Timeout: 5 * time.Second},
		Config{Listener: lnB, Remote: []Candidate{cand("127.0.0.1:"+itoa(pa), Host)}, Timeout: 5 * time.Second},
	)
	mirrored(t, oi, or)
	if or.res.Remote == addrPortOf(stranger.LocalAddr()) {
		t.Fatal("responder kept the stranger")
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
