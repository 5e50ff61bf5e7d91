package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/agent/console"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/statedir"
)

// uiFlags adds the console's flags to share (withQR) and connect.
func uiFlags(c *cobra.Command, withQR bool) {
	c.Flags().Bool("no-ui", false, "no live console on a terminal: print the first line and log to stderr, as when stdout is not a terminal")
	if withQR {
		c.Flags().Bool("qr", false, "show a QR code of the ticket: in the console, or on stderr after the ticket line")
	}
}

// ui is how a share or connect shows itself: the live console when stdout
// is a terminal, else lines, exactly as scripts read them.
type ui struct {
	kind    console.Kind
	qrCode  bool
	errOut  io.Writer
	logs    *console.Logs // nil: lines
	restore func()
	con     *console.Console // set by run, before the agent starts
}

// startUI decides console or lines for cmd. With a console the logger
// writes through it from now on, before anything copies its output (the
// embedded broker's logger does).
func startUI(cmd *cobra.Command, g *globals, log *logrus.Logger, kind console.Kind) *ui {
	noUI, _ := cmd.Flags().GetBool("no-ui")
	qr, _ := cmd.Flags().GetBool("qr")
	x := &ui{kind: kind, qrCode: qr, errOut: cmd.ErrOrStderr()}
	if noUI || g.logFormat == "json" || !console.Fits(cmd.OutOrStdout(), os.Environ()) {
		return x
	}
	x.logs, x.restore = console.Attach(log)
	return x
}

// console tells whether the live console shows, not lines.
func (x *ui) console() bool { return x.logs != nil }

// stdout is where the command prints its first line (the ticket, the
// code, the listen address): out itself for lines; with a console, above
// the view, where it stays whole in the scrollback.
func (x *ui) stdout(out io.Writer) io.Writer {
	if x.logs == nil {
		return out
	}
	return uiOut{x, out}
}

type uiOut struct {
	x   *ui
	out io.Writer
}

func (w uiOut) Write(p []byte) (int, error) {
	if w.x.con == nil {
		return w.out.Write(p)
	}
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.x.con.Print(l)
	}
	return len(p), nil
}

// qr prints the ticket's QR code on stderr after the ticket line, for
// --qr without a console (the console shows it itself).
func (x *ui) qr(t secure.Ticket) {
	if x.qrCode && x.logs == nil {
		fmt.Fprint(x.errOut, console.QR(t.String()))
	}
}

// run runs a, under the console when there is one. A second Ctrl-C in
// the console stops at once, as a second SIGINT does without one.
func (x *ui) run(ctx context.Context, a *agent.Agent) error {
	if x.logs == nil {
		return a.Run(ctx)
	}
	x.con = console.New(console.Options{Kind: x.kind, Source: console.Local(a), QR: x.qrCode, Logs: x.logs})
	err := x.con.Run(ctx, a.Run)
	x.restore()
	if errors.Is(err, console.ErrAborted) {
		fmt.Fprintln(x.errOut, "agent: "+err.Error())
		os.Exit(130)
	}
	return err
}

// watchFlag adds status --watch.
func watchFlag(c *cobra.Command) {
	c.Flags().Bool("watch", false, "refresh every second until Ctrl-C or q: a live view on a terminal; else the plain view (with --json, one JSON line) each second")
}

// watchStatus is status --watch: the console's view of every agent of the
// state dir on a terminal; elsewhere the same view, plain, or a JSON line
// (--json), every second, until interrupted.
func watchStatus(cmd *cobra.Command, g *globals, asJSON bool) error {
	dir := statedir.Resolve(g.stateDir)
	src := console.StateDir(dir)
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	if !asJSON && console.Fits(out, os.Environ()) {
		c := console.New(console.Options{Kind: console.Watch, Source: src, Interval: time.Second, StateDir: dir})
		return c.Run(ctx, nil)
	}
	plain := console.NewPlain(console.Watch, dir)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		agents, err := src(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		var b bytes.Buffer
		if asJSON {
			json.NewEncoder(&b).Encode(agent.Status{Agents: append([]agent.AgentStatus{}, agents...)})
		} else {
			now := time.Now()
			fmt.Fprintf(&b, "--- %s\n%s\n\n", now.Format("15:04:05"), plain.Render(agents, now))
		}
		if _, err := out.Write(b.Bytes()); err != nil {
			return nil // the reader went away (| head)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
