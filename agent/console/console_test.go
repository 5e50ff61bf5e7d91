package console

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/testutil"
)

const (
	sharerID = "7c53kky36dthq4xw2m5nfz8r1b"
	peerID   = "k3j4h5g6f7d8abcdefghijklmn"
	ticket   = "pp1aaaabbbbccccddddeeeeffffgggghhhh"
)

var t0 = time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)

func sharer(peers []agent.PeerStatus, recent []agent.ConnEvent) agent.AgentStatus {
	return agent.AgentStatus{ID: sharerID, PID: 42, Version: "dev", Started: t0.Add(-time.Minute),
		Brokers: []agent.BrokerStatus{{Addr: "127.0.0.1:7000", Connected: true, RTTMillis: 0.4}},
		Shares:  []agent.ShareStatus{{Name: "8080", Target: "127.0.0.1:8080", Ticket: ticket, Streams: 1, Total: 3}},
		Peers:   peers, Recent: recent}
}

// view runs the model over snapshots taken one second apart, as the
// console would, and returns its last rendering without colours.
func view(t *testing.T, o Options, snaps ...[]agent.AgentStatus) string {
	t.Helper()
	o.Source = func(context.Context) ([]agent.AgentStatus, error) { return nil, nil }
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	m := newModel(o)
	m.Update(tea.WindowSizeMsg{Width: 200, Height: 80})
	for i, s := range snaps {
		m.Update(snapMsg{agents: s, at: t0.Add(time.Duration(i) * time.Second)})
	}
	return ansi.Strip(m.View().Content)
}

func TestView(t *testing.T) {
	direct := agent.PeerStatus{Peer: peerID, Role: "sharer", Path: "direct", RTTMillis: 1.25, Streams: 2}
	later := direct
	later.BytesIn, later.BytesOut = 3_000_000, 2_000 // 3 MB in, 2 kB out over one second
	turn := agent.PeerStatus{Peer: peerID, Role: "sharer", Path: "relay", RelayKind: "turn", Streams: 1}
	conn := agent.AgentStatus{ID: peerID, Brokers: []agent.BrokerStatus{{Addr: "127.0.0.1:7000", Connected: true}},
		Connects: []agent.ConnectStatus{{Share: "8080", Peer: sharerID, Listen: "127.0.0.1:8080", Path: "direct"}},
		Peers:    []agent.PeerStatus{{Peer: sharerID, Role: "connector", Path: "direct"}}}
	recent := []agent.ConnEvent{
		{Opened: t0.Add(-time.Second), Peer: peerID, Share: "8080", Open: true, DurationMS: 1000, BytesIn: 1500},
		{Opened: t0.Add(-time.Minute), Peer: peerID, Share: "8080", DurationMS: 120, End: "closed", BytesOut: 999},
		{Opened: t0.Add(-2 * time.Minute), Peer: peerID, Share: "8080", End: "refused: target unreachable"},
	}
	for _, tc := range []struct {
		name  string
		o     Options
		snaps [][]agent.AgentStatus
		want  []string
		not   []string
	}{
		{"share waiting", Options{Kind: Share}, [][]agent.AgentStatus{{sharer(nil, nil)}},
			[]string{`sharing 127.0.0.1:8080 as "8080"`, "On the other machine, run:", "agent connect " + ticket,
				"none yet: waiting for a connector", "broker   127.0.0.1:7000  connected, rtt 0.4 ms", "q quit"},
			[]string{"short code", "Connections"}},
		{"share with code", Options{Kind: Share, Code: "7-tidal-orbit"}, [][]agent.AgentStatus{{sharer(nil, nil)}},
			[]string{"agent connect " + ticket, "agent connect 7-tidal-orbit   (short code)"}, nil},
		{"direct peer, rates from deltas", Options{Kind: Share},
			[][]agent.AgentStatus{{sharer([]agent.PeerStatus{direct}, nil)}, {sharer([]agent.PeerStatus{later}, nil)}},
			[]string{"peer          path    rtt     in        out       conns", "k3j4h5g6f7d8  direct  1.2 ms  3.0 MB/s  2.0 kB/s  2"}, nil},
		{"first snapshot has no rate yet", Options{Kind: Share}, [][]agent.AgentStatus{{sharer([]agent.PeerStatus{later}, nil)}},
			[]string{"direct  1.2 ms  0 B/s  0 B/s  2"}, nil},
		{"relayed peer", Options{Kind: Share}, [][]agent.AgentStatus{{sharer([]agent.PeerStatus{turn}, nil)}},
			[]string{"relay (turn)"}, []string{"direct"}},
		{"recent connections, newest first", Options{Kind: Share}, [][]agent.AgentStatus{{sharer([]agent.PeerStatus{direct}, recent)}},
			[]string{"Connections  newest first",
				"11:59:59  k3j4h5g6f7d8  8080  1.0s   in 1.5 kB  out 0 B    open",
				"11:59:00  k3j4h5g6f7d8  8080  120ms  in 0 B     out 999 B  closed",
				"refused: target unreachable"}, nil},
		{"connect", Options{Kind: Connect}, [][]agent.AgentStatus{{conn}},
			[]string{`forwarding share "8080" of 7c53kky36dth`, "Use it here:", "127.0.0.1:8080   e.g. curl http://localhost:8080/", "7c53kky36dth  direct"}, nil},
		{"watch, two agents", Options{Kind: Watch, StateDir: "/state"}, [][]agent.AgentStatus{{sharer([]agent.PeerStatus{direct}, nil), conn}},
			[]string{"agent status --watch · 2 agents in /state", "share    8080 -> 127.0.0.1:8080  1 open, 3 total",
				"connect  127.0.0.1:8080 -> 8080 of 7c53kky36dth", "agent         peer          path", "7c53kky36dth  k3j4h5g6f7d8  direct"}, nil},
		{"watch, none", Options{Kind: Watch, StateDir: "/state"}, [][]agent.AgentStatus{{}},
			[]string{"0 agents in /state", "no agent running with this state dir"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := view(t, tc.o, tc.snaps...)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("view lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(got, w) {
					t.Errorf("view has %q:\n%s", w, got)
				}
			}
		})
	}
}

// TestRateCounterReset: a session made anew starts its counters again;
// the drop is no negative rate.
func TestRateCounterReset(t *testing.T) {
	a := sample{in: 5000, out: 5000, at: t0}
	if r := rateBetween(a, sample{in: 10, out: 10, at: t0.Add(time.Second)}); r != (rate{}) {
		t.Errorf("rate after a reset: %+v, want none", r)
	}
	if r := rateBetween(a, sample{in: 7000, out: 5500, at: t0.Add(2 * time.Second)}); r.in != 1000 || r.out != 250 {
		t.Errorf("rate: %+v, want 1000 B/s in, 250 B/s out", r)
	}
}

// TestFitsHeight: a short terminal loses the log first, then connections;
// the header and peers stay, and no line is wider than the terminal.
func TestFitsHeight(t *testing.T) {
	var recent []agent.ConnEvent
	for i := range 20 {
		recent = append(recent, agent.ConnEvent{Opened: t0.Add(-time.Duration(i) * time.Second), Peer: peerID, Share: "8080", End: "closed"})
	}
	f := frame{kind: Share, agents: []agent.AgentStatus{sharer(nil, recent)}, logs: []string{"12:00:00 INFO hello"}}
	full := ansi.Strip(render(f, 0, 0))
	if !strings.Contains(full, "Log") || strings.Count(full, "closed") != maxConns {
		t.Fatalf("unbounded: want the log and %d connections:\n%s", maxConns, full)
	}
	short := ansi.Strip(render(f, 40, 14))
	if strings.Contains(short, "hello") || !strings.Contains(short, "agent connect") || !strings.Contains(short, "Peers") {
		t.Errorf("14 lines: want header and peers, no log:\n%s", short)
	}
	if n := strings.Count(short, "\n") + 1; n > 14 {
		t.Errorf("%d lines in a 14-line terminal:\n%s", n, short)
	}
	for _, l := range strings.Split(short, "\n") {
		if ansi.StringWidth(l) > 40 {
			t.Errorf("line wider than 40: %q", l)
		}
	}
}

// TestLogs: while a console holds them, log lines go to its pane (short,
// bounded to the newest MaxLogLines) and not to the output; released,
// they go to the output in the logger's own format again.
func TestLogs(t *testing.T) {
	var out strings.Builder
	log := logrus.New()
	log.SetOutput(&out)
	log.SetFormatter(&logrus.JSONFormatter{})
	logs, restore := Attach(log)
	log.Info("before")
	logs.hold()
	for i := range MaxLogLines + 5 {
		log.WithFields(logrus.Fields{"agent": "me", "peer": "k3j4", "why": "a b"}).Warnf("line %d", i)
	}
	logs.release()
	log.Info("after")
	restore()
	log.Info("restored")

	got := logs.Last(1000)
	if len(got) != MaxLogLines {
		t.Fatalf("%d lines kept, want %d", len(got), MaxLogLines)
	}
	if want := fmt.Sprintf("WARN line %d peer=k3j4 why=\"a b\"", MaxLogLines+4); !strings.HasSuffix(got[0], want) || strings.Contains(got[0], "agent=") {
		t.Errorf("newest line %q, want it to end %q, without the agent's own ID", got[0], want)
	}
	if !strings.HasSuffix(got[len(got)-1], "line 5 peer=k3j4 why=\"a b\"") {
		t.Errorf("oldest kept %q, want line 5", got[len(got)-1])
	}
	s := out.String()
	if strings.Contains(s, "line ") || strings.Count(s, `"level":"info"`) != 3 {
		t.Errorf("output: want only before, after and restored, as JSON:\n%s", s)
	}
}

// TestStopping: the first q stops the agent and the view stays, saying
// so, until the run returns; a second Ctrl-C aborts. Watching, q quits.
func TestStopping(t *testing.T) {
	m := newModel(Options{Kind: Share, Source: func(context.Context) ([]agent.AgentStatus, error) { return nil, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m.ctx, m.stop = ctx, cancel
	if _, cmd := m.Update(tea.KeyPressMsg{Code: 'q', Text: "q"}); cmd != nil || ctx.Err() == nil || !m.stopping {
		t.Fatalf("after q: stopping %v, agent context %v, cmd %v; want the agent stopped and the view kept", m.stopping, ctx.Err(), cmd)
	}
	if s := ansi.Strip(m.View().Content); !strings.Contains(s, "stopping") {
		t.Errorf("view while stopping:\n%s", s)
	}
	if _, cmd := m.Update(tea.KeyPressMsg{Code: 'c', Mod: tea.ModCtrl}); cmd == nil || !m.aborted {
		t.Errorf("second ctrl+c: aborted %v; want it, and a quit", m.aborted)
	}

	w := newModel(Options{Kind: Watch})
	w.watchOnly = true
	if _, cmd := w.Update(tea.KeyPressMsg{Code: 'q', Text: "q"}); cmd == nil || w.aborted {
		t.Errorf("watch: q should quit, not abort")
	}
}

// TestRunHeadless runs a whole console with a fake terminal (no input,
// output to a buffer): it draws the share, stops the run at the end of
// ctx and returns the run's error.
func TestRunHeadless(t *testing.T) {
	var out testutil.Buffer
	st := sharer([]agent.PeerStatus{{Peer: peerID, Role: "sharer", Path: "direct"}}, nil)
	c := New(Options{Kind: Share, Interval: 10 * time.Millisecond, Out: &out, In: strings.NewReader(""),
		Env: []string{"TERM=xterm-256color"}, Width: 100, Height: 30,
		Source: func(context.Context) ([]agent.AgentStatus, error) { return []agent.AgentStatus{st}, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	boom := errors.New("run ended")
	started := make(chan struct{})
	go func() {
		<-started
		time.Sleep(200 * time.Millisecond)
		cancel()
	}()
	err := c.Run(ctx, func(ctx context.Context) error {
		close(started)
		c.Print("agent connect " + ticket)
		<-ctx.Done()
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Run: %v, want the run's error", err)
	}
	s := ansi.Strip(out.String())
	for _, w := range []string{"agent connect " + ticket, "direct"} {
		if !strings.Contains(s, w) {
			t.Errorf("screen lacks %q:\n%s", w, s)
		}
	}
}
