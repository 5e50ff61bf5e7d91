// Package console is the live view people get when `agent share`, `agent
// connect` or `agent status --watch` write to a terminal: what to run on
// the other machine, each peer's path, RTT, rates and open connections, the
// last connections and the agent's recent log lines, refreshed from status
// snapshots about twice a second.
//
// Scripts never see it: the commands keep their one-line stdout when stdout
// is not a terminal, and the caller decides that (cmd/agent). The view is a
// pure function of the snapshots (view.go), so tests render it without a
// terminal; Run puts it on one with Bubble Tea, inline rather than on the
// alternate screen, so that what was printed above it (the ticket, whole,
// for copy and paste) and its last frame stay in the scrollback.
package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	tea "charm.land/bubbletea/v2"
	"golang.org/x/term"

	"github.com/peerport/peerport/agent"
)

// Kind is what the console watches.
type Kind int

const (
	// Share is `agent share`: the header says what to run on the other machine.
	Share Kind = iota
	// Connect is `agent connect`: the header says where to connect here.
	Connect
	// Watch is `agent status --watch`: every agent running with a state dir.
	Watch
)

// DefaultInterval is how often the console takes a snapshot.
const DefaultInterval = 500 * time.Millisecond

// ErrAborted is Run's error when a second Ctrl-C asked to stop at once,
// while the agent was still draining: the caller should exit now, and the
// agent's run is left to the process's exit.
var ErrAborted = errors.New("stopped at once; open connections were cut")

// Source takes a snapshot of the agents shown.
type Source func(ctx context.Context) ([]agent.AgentStatus, error)

// Local is the Source of an agent running in this process.
func Local(a *agent.Agent) Source {
	return func(context.Context) ([]agent.AgentStatus, error) { return []agent.AgentStatus{a.Status()}, nil }
}

// StateDir is the Source of every agent running with stateDir, asked over
// their admin sockets.
func StateDir(stateDir string) Source {
	return func(ctx context.Context) ([]agent.AgentStatus, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := agent.QueryStatus(ctx, stateDir)
		if err != nil {
			return nil, fmt.Errorf("query the agents of %s: %w", stateDir, err)
		}
		return st.Agents, nil
	}
}

// Options configure a console.
type Options struct {
	Kind   Kind
	Source Source
	// Interval between snapshots; 0: DefaultInterval.
	Interval time.Duration
	// Code is the share's short code, shown beside the ticket; empty: none.
	// A code that comes later is given with (*Console).SetCode.
	Code string
	// QR shows a QR code of the ticket (the r key toggles it).
	QR bool
	// Logs, when set, is the pane of log lines under the view.
	Logs *Logs
	// StateDir names the state dir in the Watch header.
	StateDir string

	// In and Out are the terminal; nil: stdin and stdout. When In is not a
	// terminal the console takes no keys, and Ctrl-C reaches the process as
	// a signal instead.
	In  io.Reader
	Out io.Writer
	// Env is the terminal's environment (TERM, NO_COLOR...); nil: os.Environ().
	Env []string
	// Width and Height are the terminal's size when Out is no terminal
	// to ask (a test's buffer).
	Width, Height int
}

// Console is one live view on a terminal.
type Console struct {
	o Options
	m *model
	p *tea.Program
	// off is set when the terminal would not take the view: Print
	// writes plain lines then, and what it printed before is printed again.
	off     atomic.Bool
	mu      sync.Mutex
	printed []string
}

// New prepares a console; Run shows it.
func New(o Options) *Console {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	opts := []tea.ProgramOption{
		// The process's own signal handling (drain, then stop at once)
		// stays in charge; in raw mode Ctrl-C comes as a key anyway.
		tea.WithoutSignalHandler(),
		tea.WithFPS(20),
	}
	if o.Out != nil {
		opts = append(opts, tea.WithOutput(o.Out))
	}
	in := o.In
	if in == nil {
		in = os.Stdin
	}
	if f, ok := in.(*os.File); ok && !IsTerminal(f) {
		in = nil // keys would be read from /dev/tty otherwise, behind a redirected stdin's back
	}
	opts = append(opts, tea.WithInput(in))
	if o.Env != nil {
		opts = append(opts, tea.WithEnvironment(o.Env))
	}
	if o.Width > 0 && o.Height > 0 {
		opts = append(opts, tea.WithWindowSize(o.Width, o.Height))
	}
	c := &Console{o: o, m: newModel(o)}
	c.p = tea.NewProgram(c.m, opts...)
	return c
}

// codeMsg brings a short code that came after the console started.
type codeMsg string

// printMsg is a line to print above the view, into the scrollback.
type printMsg string

// SetCode shows code as the share's short code. Safe from any goroutine;
// a no-op once the console has ended.
func (c *Console) SetCode(code string) { c.p.Send(codeMsg(code)) }

// Print puts line above the view, where it stays in the terminal's
// scrollback whole (a ticket longer than the terminal is wide still copies
// as one line). Safe from any goroutine; a no-op once the console ended.
func (c *Console) Print(line string) {
	if c.off.Load() {
		fmt.Fprintln(c.out(), line)
		return
	}
	c.mu.Lock()
	c.printed = append(c.printed, line)
	c.mu.Unlock()
	c.p.Send(printMsg(line))
}

func (c *Console) out() io.Writer {
	if c.o.Out != nil {
		return c.o.Out
	}
	return os.Stdout
}

// Run shows the console while run runs the agent. The first q or Ctrl-C
// (or ctx ending) cancels run's context, so the agent drains as it does
// without a console, and the console stays until run returns, saying so;
// a second Ctrl-C returns ErrAborted at once. Run returns run's error.
// With run nil (Watch) the console ends at the first q or Ctrl-C, or with
// ctx.
func (c *Console) Run(ctx context.Context, run func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.m.ctx, c.m.stop, c.m.watchOnly = ctx, cancel, run == nil
	if c.o.Logs != nil {
		c.o.Logs.hold()
		defer c.o.Logs.release()
	}
	finished := make(chan struct{})
	var runErr error
	if run != nil {
		go func() {
			defer close(finished)
			runErr = run(ctx)
		}()
	} else {
		close(finished)
	}
	ended := make(chan struct{})
	if run != nil {
		go func() {
			select {
			case <-finished:
				c.p.Send(doneMsg{})
			case <-ended:
			}
		}()
	}
	_, err := c.p.Run()
	close(ended)
	if c.m.aborted {
		return ErrAborted
	}
	if err != nil && !errors.Is(err, tea.ErrProgramKilled) {
		// The terminal would not have us: the agent goes on without a
		// view, its log lines back where they went before.
		c.off.Store(true)
		if c.o.Logs != nil {
			c.o.Logs.release()
			c.o.Logs.writeLine(fmt.Sprintf("no console (%v); running without one", err))
		}
		c.mu.Lock()
		for _, l := range c.printed {
			fmt.Fprintln(c.out(), l)
		}
		c.mu.Unlock()
	}
	<-finished
	return runErr
}

// IsTerminal says whether f is a terminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// Fits says whether out can take a console: a terminal that can move its
// cursor (not TERM=dumb, as in an editor's shell buffer). Everything else
// gets lines, as scripts expect.
func Fits(out io.Writer, env []string) bool {
	f, ok := out.(*os.File)
	if !ok || !IsTerminal(f) {
		return false
	}
	for _, kv := range env {
		if kv == "TERM=dumb" {
			return false
		}
	}
	return true
}
