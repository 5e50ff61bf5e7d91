package agent

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/secure"
)

// loopWorld is a broker, a sharer of an echo service and a connector with
// its ticket, all in this process on loopback, the connector's session up.
type loopWorld struct {
	sharer, conn *Agent
	ticket       secure.Ticket
	listen       string // the connector's forward
}

// newLoopWorld starts it; sharer and conn are the agents' options beyond
// broker, share and connect.
func newLoopWorld(t *testing.T, sharer, conn Options) *loopWorld {
	t.Helper()
	br := startTestBroker(t, t.TempDir())
	w := &loopWorld{}
	tickets := make(chan secure.Ticket, 1)
	sharer.Broker = &br.URL
	sharer.Shares = []ShareSpec{{Name: "echo", Target: echoTarget(t)}}
	sharer.OnTicket = func(_ string, tk secure.Ticket) { tickets <- tk }
	w.sharer = startTestAgent(t, sharer)
	w.ticket = waitTicket(t, tickets, "the share never registered")
	listening := make(chan net.Addr, 1)
	conn.Connects = []ConnectSpec{{Ticket: &w.ticket, Listen: "127.0.0.1:0"}}
	conn.OnListen = func(_ ConnectSpec, a net.Addr) { listening <- a }
	w.conn = startTestAgent(t, conn)
	select {
	case a := <-listening:
		w.listen = a.String()
	case <-time.After(15 * time.Second):
		t.Fatal("connector not listening within 15 s")
	}
	echoOnce(t, w.listen, "the session is up")
	return w
}

// pings runs a.Ping and returns its tries.
func pings(t *testing.T, a *Agent, target string, o PingOptions) ([]PingResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []PingResult
	err := a.Ping(ctx, target, o, func(r PingResult) { got = append(got, r) })
	return got, err
}

// TestPingLoopback: both ends ping over the session they hold, by every
// kind of target, directly and through the admin socket; each try is a
// pong over the direct path with its round trip and the peer's address.
func TestPingLoopback(t *testing.T) {
	leakCheck(t)
	w := newLoopWorld(t, Options{}, Options{})
	fast := PingOptions{Count: 2, Interval: 20 * time.Millisecond}
	tests := []struct {
		name   string
		from   *Agent
		target string
		peer   *Agent
		role   string
	}{
		{"connector by ticket", w.conn, w.ticket.String(), w.sharer, roleConnector},
		{"connector by share", w.conn, "echo", w.sharer, roleConnector},
		{"connector by peer ID", w.conn, w.sharer.ID().String(), w.sharer, roleConnector},
		{"connector by short ID", w.conn, w.sharer.ID().Short(), w.sharer, roleConnector},
		{"sharer by peer ID", w.sharer, w.conn.ID().String(), w.conn, roleSharer},
		{"sharer by its share", w.sharer, "echo", w.conn, roleSharer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pings(t, tc.from, tc.target, fast)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != fast.Count {
				t.Fatalf("%d tries, want %d: %+v", len(got), fast.Count, got)
			}
			var st PingStats
			for i, r := range got {
				st.Add(r)
				if !r.OK() || r.Seq != i+1 || r.Peer != tc.peer.ID().String() || r.Role != tc.role ||
					r.Path != PathDirect || r.RTTMillis <= 0 || r.Addr == "" {
					t.Errorf("try %d: %+v; want a pong over the direct path from %s as %s", i+1, r, tc.peer.ID().Short(), tc.role)
				}
				if line := r.String(); !strings.HasPrefix(line, "pong from "+tc.peer.ID().Short()+" (direct 127.0.0.1:") {
					t.Errorf("line %q", line)
				}
			}
			if v := st.Verdict(); v != "direct connection established" {
				t.Errorf("verdict %q", v)
			}
		})
	}
	t.Run("admin socket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var got []PingResult
		if err := RequestPing(ctx, w.conn.opts.StateDir, "echo", fast, func(r PingResult) { got = append(got, r) }); err != nil {
			t.Fatal(err)
		}
		if len(got) != fast.Count || !got[0].OK() || got[0].Path != PathDirect || got[0].Peer != w.sharer.ID().String() {
			t.Errorf("through the admin socket: %+v; want %d pongs over the direct path", got, fast.Count)
		}
	})
}

// TestPingUnknownTarget: a target the agent has no session for fails at
// once with ErrNoPeer, in process and through the admin socket (where it
// is what sends `agent ping` on to the next agent, or to a ticket's own
// session); a broken ticket says what is wrong with it instead.
func TestPingUnknownTarget(t *testing.T) {
	leakCheck(t)
	br := startTestBroker(t, t.TempDir())
	a := startTestAgent(t, Options{Broker: &br.URL, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t)}}})
	stranger := newIdentity(t).ID()
	other, err := secure.NewTicket(br.URL.Addr, br.URL.Pin, stranger, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"nosuch", stranger.String(), stranger.Short(), other.String(), "echo"} {
		if _, err := pings(t, a, target, PingOptions{Count: 1}); !errors.Is(err, ErrNoPeer) {
			t.Errorf("ping %.20s: %v, want ErrNoPeer", target, err)
		}
		err := RequestPing(t.Context(), a.opts.StateDir, target, PingOptions{Count: 1}, func(PingResult) { t.Error("a try") })
		if !errors.Is(err, ErrNoPeer) {
			t.Errorf("ping %.20s through the admin socket: %v, want ErrNoPeer", target, err)
		}
	}
	if err := RequestPing(t.Context(), t.TempDir(), "echo", PingOptions{Count: 1}, func(PingResult) {}); !errors.Is(err, ErrNoPeer) {
		t.Errorf("ping with no agent running: %v, want ErrNoPeer", err)
	}
	broken := []byte(other.String())
	broken[60] = 'x'
	if other.String()[60] == 'x' { // a damage, never the same letter
		broken[60] = 'y'
	}
	if _, err := pings(t, a, string(broken), PingOptions{Count: 1}); err == nil || errors.Is(err, ErrNoPeer) || !errors.Is(err, secure.ErrBadTicket) {
		t.Errorf("ping of a damaged ticket: %v, want ErrBadTicket", err)
	}
}

// TestPingCount: Count bounds the tries exactly, spaced by Interval; with
// no count the ping goes on until its context ends, and no try is handed
// over after that.
func TestPingCount(t *testing.T) {
	leakCheck(t)
	w := newLoopWorld(t, Options{}, Options{})
	for _, n := range []int{1, 4} {
		start := time.Now()
		got, err := pings(t, w.conn, "echo", PingOptions{Count: n, Interval: 30 * time.Millisecond})
		if err != nil || len(got) != n {
			t.Fatalf("count %d: %d tries, %v", n, len(got), err)
		}
		if d := time.Since(start); d < time.Duration(n-1)*30*time.Millisecond {
			t.Errorf("count %d at 30ms intervals took %v: tries not spaced", n, d)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	err := w.conn.Ping(ctx, "echo", PingOptions{Interval: 10 * time.Millisecond}, func(PingResult) {
		if n++; n == 3 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || n != 3 {
		t.Errorf("ping without a count, cancelled at the 3rd try: %d tries, %v", n, err)
	}
}

// TestPingTicket: with a ticket and no session anywhere, PingTicket runs
// an agent of its own that connects and pings over the session it made; a
// ticket the broker refuses ends it with the refusal, not with pings.
func TestPingTicket(t *testing.T) {
	leakCheck(t)
	w := newLoopWorld(t, Options{}, Options{})
	opts := func() Options {
		return Options{Identity: newIdentity(t), StateDir: t.TempDir(), Log: quietLog(), Candidates: w.conn.opts.Candidates}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []PingResult
	err := PingTicket(ctx, opts(), ConnectSpec{Ticket: &w.ticket}, PingOptions{Count: 3, Interval: 20 * time.Millisecond, Wait: 15 * time.Second},
		func(r PingResult) { got = append(got, r) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || !got[2].OK() || got[2].Peer != w.sharer.ID().String() || got[2].Role != roleConnector {
		t.Errorf("tries %+v: want 3, the last a pong from the sharer", got)
	}
	forged := w.ticket
	forged.Secret[0] ^= 1
	err = PingTicket(ctx, opts(), ConnectSpec{Ticket: &forged}, PingOptions{Count: 3, Wait: 15 * time.Second}, func(r PingResult) {
		t.Errorf("a try with a forged ticket: %+v", r)
	})
	if !errors.Is(err, ErrUnauthorized) {
		t.Errorf("forged ticket: %v, want ErrUnauthorized", err)
	}
}

// TestPingLines: what `agent ping` prints per try and at the end.
func TestPingLines(t *testing.T) {
	peer := "7c53kky36dthxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	direct := PingResult{Seq: 3, Peer: peer, Path: PathDirect, Addr: "203.0.113.7:41000", RTTMillis: 1.23}
	relay := PingResult{Seq: 1, Peer: peer, Path: PathRelay, RelayKind: RelayTURN, Addr: "203.0.113.10:49152", RTTMillis: 0.456, NAT: "symmetric", PeerNAT: "cone"}
	lost := PingResult{Seq: 2, Peer: peer, Error: "none within 5s"}
	for _, tc := range []struct {
		r    PingResult
		want string
	}{
		{direct, "pong from 7c53kky36dth (direct 203.0.113.7:41000) in 1.2ms"},
		{relay, "pong from 7c53kky36dth (relay turn 203.0.113.10:49152) in 0.46ms"},
		{PingResult{Peer: peer, Path: PathDirect, Addr: "a:1", RTTMillis: 123.4}, "pong from 7c53kky36dth (direct a:1) in 123ms"},
		{lost, "no pong from 7c53kky36dth: none within 5s"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("line %q, want %q", got, tc.want)
		}
	}
	for _, tc := range []struct {
		tries            []PingResult
		verdict, summary string
	}{
		{nil, "no pong: the peer did not answer over the session", "0 tries, 0 pongs, 0% lost"},
		{[]PingResult{relay, lost, direct}, "direct connection established (relayed before pong 3)", "3 tries, 2 pongs, 33% lost; rtt min/avg/max 0.46ms/0.84ms/1.2ms"},
		{[]PingResult{relay}, "no direct path: relayed via turn (NAT here symmetric, at the peer cone; agent netcheck tells more)", "1 try, 1 pong, 0% lost; rtt min/avg/max 0.46ms/0.46ms/0.46ms"},
	} {
		var st PingStats
		for _, r := range tc.tries {
			st.Add(r)
		}
		if v, s := st.Verdict(), st.Summary(); v != tc.verdict || s != tc.summary {
			t.Errorf("verdict %q, summary %q; want %q, %q", v, s, tc.verdict, tc.summary)
		}
	}
}
