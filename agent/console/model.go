package console

import (
	"context"
	"time"

	tea "charm.land/bubbletea/v2"

	"github.com/peerport/peerport/agent"
)

// snapMsg is one snapshot of the agents shown.
type snapMsg struct {
	agents []agent.AgentStatus
	err    error
	at     time.Time
}

// doneMsg says the agent's run returned.
type doneMsg struct{}

// rateKey names a peer session across snapshots.
type rateKey struct{ agent, peer, role string }

// sample is a peer's byte counts at one snapshot.
type sample struct {
	in, out int64
	at      time.Time
}

// rate is a peer's bytes per second over the last interval.
type rate struct{ in, out float64 }

// model is the console's state: the last snapshot and what was derived
// from the ones before (rates), the terminal's size, and where stopping is.
type model struct {
	o         Options
	ctx       context.Context // the agent's run; ends at the first q or Ctrl-C
	stop      func()
	watchOnly bool // no run to wait for: quit at once

	agents []agent.AgentStatus
	err    error
	at     time.Time
	prev   map[rateKey]sample
	rates  map[rateKey]rate

	code          string
	showQR        bool
	qr            map[string]string // ticket -> its rendering
	width, height int
	stopping      bool
	finished      bool // the run returned
	aborted       bool
}

func newModel(o Options) *model {
	return &model{o: o, ctx: context.Background(), stop: func() {}, code: o.Code, showQR: o.QR,
		prev: map[rateKey]sample{}, rates: map[rateKey]rate{}, qr: map[string]string{}}
}

func (m *model) Init() tea.Cmd { return m.fetch }

// fetch takes a snapshot; it runs in a command's goroutine, off the
// event loop, as a query of other agents' sockets may take a moment.
func (m *model) fetch() tea.Msg {
	agents, err := m.o.Source(m.ctx)
	return snapMsg{agents: agents, err: err, at: time.Now()}
}

func (m *model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case snapMsg:
		m.observe(msg)
		if m.ctx.Err() != nil {
			m.stopping = true // a signal, or q
			if m.watchOnly {
				return m, tea.Quit
			}
		}
		return m, tea.Tick(m.o.Interval, func(time.Time) tea.Msg { return m.fetch() })
	case doneMsg:
		m.finished = true
		return m, tea.Quit
	case codeMsg:
		m.code = string(msg)
	case printMsg:
		return m, tea.Println(string(msg))
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tea.KeyPressMsg:
		switch msg.String() {
		case "ctrl+c", "q":
			switch {
			case m.watchOnly:
				m.stop()
				return m, tea.Quit
			case !m.stopping:
				// The agent drains as it does on SIGINT; the view
				// stays until it is done.
				m.stopping = true
				m.stop()
			case msg.String() == "ctrl+c":
				m.aborted = true
				return m, tea.Quit
			}
		case "r":
			m.showQR = !m.showQR
		case "ctrl+l":
			return m, tea.ClearScreen
		}
	}
	return m, nil
}

// observe takes a snapshot, computing each peer's rates from the bytes
// that passed since the one before.
func (m *model) observe(s snapMsg) {
	m.err, m.at = s.err, s.at
	if s.err != nil {
		return
	}
	m.agents = s.agents
	seen := map[rateKey]bool{}
	for _, a := range s.agents {
		for _, p := range a.Peers {
			k := rateKey{a.ID, p.Peer, p.Role}
			seen[k] = true
			cur := sample{in: p.BytesIn, out: p.BytesOut, at: s.at}
			if old, ok := m.prev[k]; ok {
				m.rates[k] = rateBetween(old, cur)
			}
			m.prev[k] = cur
		}
	}
	for k := range m.prev {
		if !seen[k] {
			delete(m.prev, k)
			delete(m.rates, k)
		}
	}
}

// rateBetween is the rate from a to b; counters that went back (a session
// made anew) give none rather than a negative one.
func rateBetween(a, b sample) rate {
	dt := b.at.Sub(a.at).Seconds()
	if dt <= 0 || b.in < a.in || b.out < a.out {
		return rate{}
	}
	return rate{in: float64(b.in-a.in) / dt, out: float64(b.out-a.out) / dt}
}

func (m *model) View() tea.View {
	return tea.NewView(render(m.frame(), m.width, m.height))
}

// frame is what the view shows now, for render.
func (m *model) frame() frame {
	f := frame{kind: m.o.Kind, agents: m.agents, err: m.err, rates: m.rates, code: m.code,
		stopping: m.stopping, finished: m.finished, stateDir: m.o.StateDir, now: m.at}
	if m.o.Logs != nil {
		f.logs = m.o.Logs.Last(maxEvents)
	}
	if m.showQR {
		if t := firstTicket(m.agents); t != "" {
			if _, ok := m.qr[t]; !ok {
				m.qr[t] = QR(t)
			}
			f.qr = m.qr[t]
		}
	}
	return f
}

func firstTicket(agents []agent.AgentStatus) string {
	for _, a := range agents {
		for _, s := range a.Shares {
			if s.Ticket != "" {
				return s.Ticket
			}
		}
	}
	return ""
}
