package console

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/peerport/peerport/agent"
)

const (
	maxConns  = 8 // connection lines shown, at most
	maxEvents = 6 // log lines shown, at most
)

// frame is everything one rendering shows.
type frame struct {
	kind     Kind
	agents   []agent.AgentStatus
	err      error
	rates    map[rateKey]rate
	code     string
	qr       string
	logs     []string // newest first
	stopping bool
	finished bool
	stateDir string
	now      time.Time
	plain    bool // no keys to offer
}

// Colours are the 16 basic ones, which every colour terminal has and
// which read on dark and light backgrounds alike; the renderer drops them
// where the terminal has none (NO_COLOR, TERM=dumb).
var (
	stTitle = lipgloss.NewStyle().Bold(true)
	stFaint = lipgloss.NewStyle().Faint(true)
	stCmd   = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("6"))
	stGood  = lipgloss.NewStyle().Foreground(lipgloss.Color("2"))
	stWarn  = lipgloss.NewStyle().Foreground(lipgloss.Color("3"))
	stBad   = lipgloss.NewStyle().Foreground(lipgloss.Color("1"))
	stPlain = lipgloss.NewStyle()
)

// Plain renders snapshots as text without colours or terminal controls,
// for `agent status --watch` when stdout is not a terminal. It keeps the
// snapshot before, for rates.
type Plain struct{ m *model }

// NewPlain returns a Plain for agents of kind; stateDir names them in the
// Watch header.
func NewPlain(kind Kind, stateDir string) *Plain {
	return &Plain{newModel(Options{Kind: kind, StateDir: stateDir})}
}

// Render takes a snapshot taken at and renders it.
func (p *Plain) Render(agents []agent.AgentStatus, at time.Time) string {
	p.m.observe(snapMsg{agents: agents, at: at})
	f := p.m.frame()
	f.plain = true
	return ansi.Strip(render(f, 0, 0))
}

// render lays f out in width x height cells; 0 means unbounded. What does
// not fit goes in this order: log lines, connections; a QR code asked for
// goes before them, unless it cannot fit at all.
func render(f frame, width, height int) string {
	head := header(f)
	peers := peerLines(f)
	conns := connLines(f)
	events := eventLines(f)
	var foot []string
	if !f.plain {
		// The blank line under the footer is the one the renderer
		// clears as it leaves, so the last frame stays whole.
		foot = append(footer(f), "")
	}
	var qr []string
	if f.qr != "" {
		qr = append(strings.Split(strings.TrimRight(f.qr, "\n"), "\n"), "")
	}
	if height > 0 {
		room := height - len(head) - len(peers) - len(foot)
		if len(qr) > room {
			qr = nil // the whole ticket is above the view
		}
		room -= len(qr)
		events = fit(events, room-len(conns))
		conns = fit(conns, room-len(events))
	}
	var lines []string
	for _, part := range [][]string{head, qr, peers, conns, events, foot} {
		lines = append(lines, part...)
	}
	if width > 0 {
		for i, l := range lines {
			lines[i] = ansi.Truncate(l, width, "…")
		}
	}
	return strings.Join(lines, "\n")
}

// fit cuts a section (a title, its lines, a blank) to n lines: none at
// all rather than a title alone.
func fit(section []string, n int) []string {
	if len(section) <= n {
		return section
	}
	if n < 3 {
		return nil
	}
	return append(section[:n-1:n-1], "")
}

func header(f frame) []string {
	var out []string
	switch f.kind {
	case Watch:
		n := len(f.agents)
		what := fmt.Sprintf("%d agents", n)
		if n == 1 {
			what = "1 agent"
		}
		out = append(out, stTitle.Render("peerport")+"  "+stFaint.Render("agent status --watch · "+what+" in "+f.stateDir))
		if f.err != nil {
			out = append(out, stBad.Render("  "+f.err.Error()))
		}
		if f.now.IsZero() && f.err == nil {
			out = append(out, "  "+stFaint.Render("asking the agents..."))
		} else if n == 0 && f.err == nil {
			out = append(out, "  no agent running with this state dir (agent up, share or connect starts one)")
		}
		for _, a := range f.agents {
			out = append(out, "", agentLine(a, f.now))
			out = append(out, brokerLines(a)...)
			for _, s := range a.Shares {
				out = append(out, fmt.Sprintf("  share    %s -> %s  %s", s.Name, s.Target, stFaint.Render(openTotal(s.Streams, s.Total))))
			}
			for _, c := range a.Connects {
				out = append(out, connectLine(c))
			}
		}
		return append(out, "")
	case Connect:
		for _, a := range f.agents {
			for _, c := range a.Connects {
				out = append(out, stTitle.Render("peerport")+"  "+fmt.Sprintf("forwarding share %q of %s", c.Share, short(c.Peer)))
				out = append(out, brokerLines(a)...)
				out = append(out, "")
				if c.Listen == "" {
					out = append(out, "  "+stWarn.Render("reaching the sharer..."))
				} else {
					out = append(out, "Use it here:", "  "+stCmd.Render(c.Listen)+"   "+stFaint.Render("e.g. "+tryHint(c.Listen)))
				}
				if c.LastError != "" && c.Path == "" {
					out = append(out, "  "+stBad.Render(c.LastError))
				}
			}
		}
	default:
		for _, a := range f.agents {
			for _, s := range a.Shares {
				out = append(out, stTitle.Render("peerport")+"  "+fmt.Sprintf("sharing %s as %q", s.Target, s.Name))
				out = append(out, brokerLines(a)...)
				out = append(out, "", "On the other machine, run:")
				if s.Ticket == "" {
					out = append(out, "  "+stWarn.Render("(the ticket comes once the broker has the share)"))
				} else {
					out = append(out, "  "+stCmd.Render("agent connect "+s.Ticket))
				}
				code := f.code
				if s.Code != "" {
					code = s.Code
				}
				if code != "" {
					out = append(out, "  "+stCmd.Render("agent connect "+code)+"   "+stFaint.Render("(short code)"))
				}
			}
		}
	}
	if len(out) == 0 {
		out = append(out, stTitle.Render("peerport")+"  "+stFaint.Render("starting..."))
	}
	return append(out, "")
}

// tryHint is a command that reaches a local listener: curl for the
// ports web servers use, nc for the rest.
func tryHint(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "127.0.0.1" || host == "::1" {
		host = "localhost"
	}
	switch port {
	case "80", "3000", "4000", "5000", "5173", "8000", "8080", "8081", "8888", "9000":
		return "curl http://" + net.JoinHostPort(host, port) + "/"
	case "443", "8443":
		return "curl https://" + net.JoinHostPort(host, port) + "/"
	case "22":
		return "ssh -p 22 " + host
	}
	return "nc " + host + " " + port
}

func agentLine(a agent.AgentStatus, now time.Time) string {
	up := ""
	if !a.Started.IsZero() && !now.IsZero() {
		up = ", up " + human(now.Sub(a.Started))
	}
	return stTitle.Render("agent "+short(a.ID)) + stFaint.Render(fmt.Sprintf("  pid %d, %s%s", a.PID, a.Version, up))
}

func brokerLines(a agent.AgentStatus) []string {
	var out []string
	for _, b := range a.Brokers {
		if b.Connected {
			out = append(out, stFaint.Render(fmt.Sprintf("  broker   %s  connected, rtt %s", b.Addr, ms(b.RTTMillis))))
		} else {
			why := "connecting"
			if b.LastError != "" {
				why = "disconnected: " + b.LastError
			}
			out = append(out, "  broker   "+b.Addr+"  "+stBad.Render(why))
		}
	}
	return out
}

func connectLine(c agent.ConnectStatus) string {
	s := fmt.Sprintf("  connect  %s -> %s of %s  %s", orDots(c.Listen), c.Share, short(c.Peer), stFaint.Render(openTotal(c.Streams, c.Total)))
	if c.LastError != "" && c.Path == "" {
		s += "  " + stBad.Render(c.LastError)
	}
	return s
}

// cell is one table cell: its text, and the style it is shown in.
type cell struct {
	s  string
	st lipgloss.Style
}

func c(s string) cell                     { return cell{s, stPlain} }
func cs(s string, st lipgloss.Style) cell { return cell{s, st} }

// table aligns rows in columns two spaces apart; padding comes before
// styling, so that widths count only what shows.
func table(rows [][]cell) []string {
	var widths []int
	for _, r := range rows {
		for i, x := range r {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], lipgloss.Width(x.s))
		}
	}
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		var b strings.Builder
		b.WriteString("  ")
		for i, x := range r {
			s := x.s
			if i < len(r)-1 {
				s += strings.Repeat(" ", widths[i]-lipgloss.Width(x.s)+2)
			}
			b.WriteString(x.st.Render(s))
		}
		out = append(out, strings.TrimRight(b.String(), " "))
	}
	return out
}

func peerLines(f frame) []string {
	out := []string{stTitle.Render("Peers")}
	rows := [][]cell{{cs("peer", stFaint), cs("path", stFaint), cs("rtt", stFaint), cs("in", stFaint), cs("out", stFaint), cs("conns", stFaint)}}
	many := len(f.agents) > 1
	if many {
		rows[0] = append([]cell{cs("agent", stFaint)}, rows[0]...)
	}
	for _, a := range f.agents {
		for _, p := range a.Peers {
			r := f.rates[rateKey{a.ID, p.Peer, p.Role}]
			row := []cell{c(short(p.Peer)), pathCell(p), c(ms(p.RTTMillis)), c(perSecond(r.in)), c(perSecond(r.out)),
				c(strconv.Itoa(p.Streams))}
			if many {
				row = append([]cell{c(short(a.ID))}, row...)
			}
			rows = append(rows, row)
		}
	}
	if len(rows) == 1 {
		wait := "none yet: waiting for a connector"
		switch f.kind {
		case Connect:
			wait = "none yet: reaching the sharer"
		case Watch:
			wait = "none"
		}
		return append(out, "  "+stFaint.Render(wait), "")
	}
	return append(append(out, table(rows)...), "")
}

// pathCell says how a peer is reached: direct, or which relay, and
// whether the session waits for a path.
func pathCell(p agent.PeerStatus) cell {
	s := p.Path
	if p.Path == "relay" && p.RelayKind != "" {
		s += " (" + p.RelayKind + ")"
	}
	switch {
	case p.Paused:
		return cs(s+", paused", stBad)
	case p.Path == "direct":
		return cs(s, stGood)
	default:
		return cs(s, stWarn)
	}
}

func connLines(f frame) []string {
	var evs []agent.ConnEvent
	for _, a := range f.agents {
		evs = append(evs, a.Recent...)
	}
	if len(evs) == 0 {
		return nil
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Opened.After(evs[j].Opened) })
	evs = evs[:min(len(evs), maxConns)]
	rows := make([][]cell, 0, len(evs))
	for _, e := range evs {
		end := cs(e.End, stFaint)
		switch {
		case e.Open:
			end = cs("open", stGood)
		case e.End == "closed":
		default:
			end = cs(e.End, stBad)
		}
		who := short(e.Peer)
		if e.Client != "" {
			who = e.Client
		}
		rows = append(rows, []cell{cs(e.Opened.Local().Format("15:04:05"), stFaint), c(who), c(e.Share),
			c(human(time.Duration(e.DurationMS) * time.Millisecond)), c("in " + bytesHuman(e.BytesIn)), c("out " + bytesHuman(e.BytesOut)), end})
	}
	out := []string{stTitle.Render("Connections") + stFaint.Render("  newest first")}
	return append(append(out, table(rows)...), "")
}

func eventLines(f frame) []string {
	if len(f.logs) == 0 {
		return nil
	}
	out := []string{stTitle.Render("Log")}
	for _, l := range f.logs[:min(len(f.logs), maxEvents)] {
		st := stFaint
		switch {
		case strings.Contains(l, " ERR "):
			st = stBad
		case strings.Contains(l, " WARN "):
			st = stWarn
		}
		out = append(out, "  "+st.Render(l))
	}
	return append(out, "")
}

func footer(f frame) []string {
	if f.finished {
		return []string{stFaint.Render("stopped")}
	}
	if !f.stopping {
		if f.kind == Share {
			return []string{stFaint.Render("q quit · r QR code · ctrl+l redraw")}
		}
		return []string{stFaint.Render("q quit · ctrl+l redraw")}
	}
	var open int64
	for _, a := range f.agents {
		for _, s := range a.Shares {
			open += s.Streams
		}
		for _, c := range a.Connects {
			open += c.Streams
		}
	}
	if open == 0 {
		return []string{stWarn.Render("stopping...")}
	}
	return []string{stWarn.Render(fmt.Sprintf("stopping: %d open connection(s) may finish; Ctrl-C again stops at once", open))}
}

func openTotal(open, total int64) string { return fmt.Sprintf("%d open, %d total", open, total) }

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func orDots(s string) string {
	if s == "" {
		return "..."
	}
	return s
}

func ms(v float64) string {
	if v <= 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " ms"
}

// bytesHuman counts in SI units, as rates are usually read.
func bytesHuman(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n), 0
	for v >= unit && u < 4 {
		v /= unit
		u++
	}
	return fmt.Sprintf("%.1f %cB", v, "kMGT"[u-1])
}

func perSecond(v float64) string {
	if v < 1 {
		return "0 B/s"
	}
	return bytesHuman(int64(v)) + "/s"
}

func human(d time.Duration) string {
	switch {
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}
