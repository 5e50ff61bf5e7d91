package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/statedir"
)

func pingCmd(g *globals) *cobra.Command {
	var count int
	var interval, timeout, connectTimeout time.Duration
	var asJSON, untilDirect bool
	var path string
	c := &cobra.Command{
		Use:   "ping TARGET",
		Short: "Ping a peer over its peer session: which path answers (direct or relay), and the round trip",
		Long: "Ping a peer over the peer session a running agent of this state dir holds with it,\n" +
			"one line per try: the path the session rode (direct, or relay with its kind) and the\n" +
			"round trip; then whether a direct path was made. TARGET is a peer's agent ID (or the\n" +
			"start of it, as agent status shows it), a share name (of a connect: its sharer; of\n" +
			"an own share: the peer connected to it), or a ticket. With a ticket and no running\n" +
			"agent holding a session to its sharer, ping connects with the ticket itself for the\n" +
			"pings. Exits 1 when no pong came.",
		Example: "  agent ping 7c53kky36dth             # a peer of a running agent (agent status lists them)\n" +
			"  agent ping web -c 10                # the sharer of the running connect to share web\n" +
			"  agent ping pp1... --until-direct    # a ticket; stops at the first pong over a direct path",
		Args: exactlyOne,
		RunE: func(cmd *cobra.Command, args []string) error {
			target := strings.TrimSpace(args[0])
			if count < 0 {
				return fmt.Errorf("-c %d: want a count, or 0 to ping until interrupted", count)
			}
			if interval <= 0 || timeout <= 0 {
				return errors.New("--interval and --timeout must be positive")
			}
			ctx, stop := context.WithCancel(cmd.Context())
			defer stop()
			out := cmd.OutOrStdout()
			var st agent.PingStats
			peer := target
			each := func(r agent.PingResult) {
				st.Add(r)
				peer = r.Peer
				if asJSON {
					json.NewEncoder(out).Encode(r)
				} else {
					fmt.Fprintln(out, r)
				}
				if untilDirect && r.OK() && r.Path == agent.PathDirect {
					stop()
				}
			}
			o := agent.PingOptions{Count: count, Interval: interval, Timeout: timeout}
			dir := statedir.Resolve(g.stateDir)
			err := agent.RequestPing(ctx, dir, target, o, each)
			if errors.Is(err, agent.ErrNoPeer) && strings.HasPrefix(strings.ToLower(target), secure.TicketPrefix) {
				o.Wait = connectTimeout
				err = g.pingTicket(ctx, cmd, target, path, o, each)
			}
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			summary := cmd.OutOrStdout()
			if asJSON {
				summary = cmd.ErrOrStderr() // stdout holds JSON lines only
			}
			fmt.Fprintf(summary, "--- %s: %s\n%s\n", shortPeer(peer), st.Summary(), st.Verdict())
			if st.Pongs == 0 {
				return fmt.Errorf("no pong from %s", shortPeer(peer))
			}
			return nil
		},
	}
	f := c.Flags()
	f.IntVarP(&count, "count", "c", agent.DefaultPingCount, "stop after this many tries; 0: until interrupted")
	f.DurationVarP(&interval, "interval", "i", agent.DefaultPingInterval, "from the start of one try to the next")
	f.DurationVar(&timeout, "timeout", agent.DefaultPingTimeout, "how long one try waits for its pong")
	f.BoolVar(&untilDirect, "until-direct", false, "stop at the first pong over a direct path")
	f.BoolVar(&asJSON, "json", false, "print each try as a JSON line (the summary goes to stderr)")
	// For a ticket that ping connects with itself.
	f.DurationVar(&connectTimeout, "connect-timeout", 30*time.Second, "with a ticket no running agent has a session for: how long to wait for the session ping makes")
	f.StringVar(&path, "path", agent.PathAuto, "with a ticket no running agent has a session for: "+pathUsage)
	var cands []string
	if env := os.Getenv("PEERPORT_CANDIDATES"); env != "" {
		cands = strings.Split(env, ",")
	}
	f.StringSliceVar(&g.candidates, "candidates", cands, "with a ticket ping connects with: offer only local addresses in these CIDR prefixes (default: all; env PEERPORT_CANDIDATES)")
	f.BoolVar(&g.noPortmap, "no-portmap", false, "with a ticket ping connects with: no port mappings (PCP, NAT-PMP, UPnP IGD)")
	g.proxyFlag(c)
	complete(c, "path", agent.PathPolicies())
	return c
}

// pingTicket connects with the ticket for the pings, when no running
// agent has a session to its sharer.
func (g *globals) pingTicket(ctx context.Context, cmd *cobra.Command, ticket, path string, o agent.PingOptions, each func(agent.PingResult)) error {
	t, err := secure.ParseTicket(ticket)
	if err != nil {
		return err
	}
	if err := agent.ValidPath(path); err != nil {
		return fmt.Errorf("--path: %w", err)
	}
	dir, log, id, err := g.setup()
	if err != nil {
		return err
	}
	if t.Sharer == id.ID() {
		return errors.New("this ticket is a share of this agent's own identity: ping the peers connected to it (agent status lists them)")
	}
	// The agent runs for the pings only: its progress is noise beside
	// them, unless asked for; what goes wrong still shows.
	if !cmd.Flags().Changed("log-level") {
		log.SetLevel(logrus.WarnLevel)
	}
	u, err := agent.LoadBroker(dir)
	if err != nil {
		log.WithError(err).Warn("ignoring saved broker URL")
		u = nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "no running agent has a session to %s: connecting with the ticket\n", t.Sharer.Short())
	return agent.PingTicket(ctx, agent.Options{Identity: id, StateDir: dir, Broker: u, Log: log,
		Candidates: g.offer, Proxy: g.proxyURL, Portmap: !g.noPortmap}, agent.ConnectSpec{Ticket: &t, Path: path}, o, each)
}

func shortPeer(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
