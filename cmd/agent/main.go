// Command agent shares local TCP ports and connects to the shares of other
// agents, peer to peer. See README.md for the commands.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/agent/console"
	"github.com/peerport/peerport/broker"
	"github.com/peerport/peerport/internal/config"
	"github.com/peerport/peerport/internal/logging"
	"github.com/peerport/peerport/internal/proxy"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/shortcode"
	"github.com/peerport/peerport/internal/statedir"
)

var version = "dev"

func main() {
	agent.Version = version
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(agent.DefaultProcs)
	}
	stopProfile := cpuProfile()
	ctx, stop := stopOnSignal()
	err := newRoot().ExecuteContext(ctx)
	stop()
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent: "+err.Error())
		os.Exit(1)
	}
}

// stopOnSignal returns a context that ends at the first SIGINT or SIGTERM,
// so that the agent drains; a second one exits at once.
func stopOnSignal() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-sigs:
		case <-ctx.Done():
			return
		}
		cancel()
		if _, ok := <-sigs; ok {
			fmt.Fprintln(os.Stderr, "agent: stopped at once; open connections were cut")
			os.Exit(130)
		}
	}()
	return ctx, func() { signal.Stop(sigs); close(sigs); cancel() }
}

// cpuProfile writes a CPU profile to $PEERPORT_CPUPROFILE until the agent
// exits; a hidden switch for the benchmarks (bench/), not a user feature.
func cpuProfile() func() {
	path := os.Getenv("PEERPORT_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent: cpu profile:", err)
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// globals are the flags every subcommand takes, before or after its name.
type globals struct {
	stateDir, logLevel, logFormat string
	drain                         time.Duration
	candidates                    []string
	offer                         []netip.Prefix // --candidates, parsed by setup
	proxy                         string
	proxyURL                      *url.URL // --proxy, parsed by setup
	noPortmap                     bool
	metricsListen                 string // --metrics-listen, normalized by its flag (metrics.go)
}

// prefixes parses --candidates.
func (g *globals) prefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range g.candidates {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("--candidates %q: want CIDR prefixes such as 192.168.0.0/16", s)
		}
		out = append(out, p)
	}
	return out, nil
}

func (g *globals) setup() (string, *logrus.Logger, *secure.Identity, error) {
	log, err := logging.New(os.Stderr, g.logLevel, g.logFormat)
	if err != nil {
		return "", nil, nil, err
	}
	if g.offer, err = g.prefixes(); err != nil {
		return "", nil, nil, err
	}
	if g.proxy != "" {
		if g.proxyURL, err = proxy.ParseURL(g.proxy); err != nil {
			return "", nil, nil, fmt.Errorf("--proxy: %w", err)
		}
	}
	dir := statedir.Resolve(g.stateDir)
	id, err := secure.LoadOrCreateIdentity(dir)
	if err != nil {
		return "", nil, nil, fmt.Errorf("identity in %s: %w", dir, err)
	}
	return dir, log, id, nil
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "agent",
		Short:         "Share a TCP port with a teammate, peer to peer, or connect to one",
		Example:       "  agent share 8080            # on your machine: prints a ticket\n  agent connect <ticket>      # on your teammate's: curl localhost:8080 works",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("agent {{.Version}}\n")
	pf := root.PersistentFlags()
	pf.StringVar(&g.stateDir, "state-dir", "", "state directory (default $PEERPORT_HOME or ~/.config/peerport)")
	pf.StringVar(&g.logLevel, "log-level", "info", "trace, debug, info, warn or error")
	pf.StringVar(&g.logFormat, "log-format", "text", "text or json")
	complete(root, "log-level", logging.Levels)
	complete(root, "log-format", logging.Formats)
	root.AddCommand(loginCmd(g), shareCmd(g), connectCmd(g), upCmd(g), reloadCmd(g), statusCmd(g), netcheckCmd(g), idCmd(g), pingCmd(g), versionCmd())
	return root
}

// runFlags are the flags of the commands that run an agent.
func (g *globals) runFlags(c *cobra.Command) {
	f := c.Flags()
	f.DurationVar(&g.drain, "drain-timeout", agent.DefaultDrainTimeout, "on SIGTERM/SIGINT, how long open connections may finish")
	var cands []string
	if env := os.Getenv("PEERPORT_CANDIDATES"); env != "" {
		cands = strings.Split(env, ",")
	}
	f.StringSliceVar(&g.candidates, "candidates", cands, "offer peers only local addresses in these CIDR prefixes (default: all; env PEERPORT_CANDIDATES)")
	f.BoolVar(&g.noPortmap, "no-portmap", false, "do not ask the gateway for port mappings (PCP, NAT-PMP, UPnP IGD)")
	g.proxyFlag(c)
	g.metricsFlag(c)
	g.dashboardFlag(c)
}

// proxyFlag is for the commands that reach a broker.
func (g *globals) proxyFlag(c *cobra.Command) {
	c.Flags().StringVar(&g.proxy, "proxy", "", "HTTP CONNECT proxy to reach the broker through, http://[user:pass@]host:port (default: HTTPS_PROXY, ALL_PROXY, NO_PROXY)")
}

// complete offers values for flag name of c and its subcommands.
func complete(c *cobra.Command, name string, values []string) {
	c.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
}

// exactlyOne accepts one argument and shows the usage line otherwise.
func exactlyOne(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: %s (see %s --help)", cmd.UseLine(), cmd.CommandPath())
	}
	return nil
}

func loginCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:     "login BROKER_URL",
		Short:   "Check a broker URL and save it in the state dir",
		Example: "  agent login 'pp://TOKEN@broker.example.com:7000#PIN'   # the URL the broker printed",
		Args:    exactlyOne,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, log, id, err := g.setup()
			if err != nil {
				return err
			}
			u, err := secure.ParseBrokerURL(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			if err := agent.Login(ctx, id, u, g.proxyURL, log); err != nil {
				return fmt.Errorf("login: %w", err)
			}
			if err := agent.SaveBroker(dir, u); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "logged in to %s; saved in %s\n", u.Addr, dir)
			return nil
		},
	}
	g.proxyFlag(c)
	return c
}

func shareCmd(g *globals) *cobra.Command {
	var name, brokerURL, embedListen, publicAddr, path string
	var allow []string
	var newTicket bool
	var code agent.CodeSpec
	var withCode bool
	c := &cobra.Command{
		Use:   "share TARGET",
		Short: "Share PORT or HOST:PORT; prints a ticket as the first line of stdout",
		Long: "Share a TCP target. The first line on stdout is the ticket, nothing else;\n" +
			"progress goes to stderr. With no broker configured (no --broker, no `agent login`),\n" +
			"an embedded broker runs inside this process and the ticket points at it.\n" +
			"The ticket stays the same when the share is started again with the same state dir\n" +
			"and name (the embedded broker keeps its port); --new-ticket replaces it.\n" +
			"With --code the share also offers a short code such as 7-tidal-orbit, printed as the\n" +
			"first line instead of the ticket, for a teammate logged in to the same broker.",
		Example: "  agent share 8080                       # prints a ticket; give it to your teammate\n" +
			"  agent share db.internal:5432 --name db\n" +
			"  agent share 22 --allow 7c53kky36dth...   # an agent by ID, no ticket needed\n" +
			"  agent share 8080 --new-ticket           # the old ticket stops working\n" +
			"  agent share 8080 --code                 # prints 7-tidal-orbit: agent connect 7-tidal-orbit",
		Args: exactlyOne,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, log, id, err := g.setup()
			if err != nil {
				return err
			}
			target, err := config.NormalizeTarget(args[0])
			if err != nil {
				return err
			}
			if name == "" {
				_, name, _ = net.SplitHostPort(target)
			}
			spec := agent.ShareSpec{Name: name, Target: target, Path: path}
			for _, s := range allow {
				a, err := secure.ParseAgentID(s)
				if err != nil {
					return fmt.Errorf("--allow %q: %w", s, err)
				}
				spec.Allow = append(spec.Allow, a)
			}
			if newTicket {
				if err := agent.ForgetTicket(dir, name); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			ui := startUI(cmd, g, log, console.Share)
			u, embedded, err := chooseBroker(ctx, dir, brokerURL, embedListen, publicAddr, log)
			if err != nil {
				return err
			}
			// A console also offers a code, where the teammate can log in
			// to the broker (not an embedded one), unless --code=false.
			if withCode || (ui.console() && !embedded && !cmd.Flags().Changed("code")) {
				spec.Code = &code
			}
			out := ui.stdout(cmd.OutOrStdout())
			a, err := agent.New(agent.Options{
				Identity: id, StateDir: dir, Broker: u, Shares: []agent.ShareSpec{spec}, KeepTickets: true,
				Log: log, DrainTimeout: g.drain, Candidates: g.offer, Proxy: g.proxyURL, Portmap: !g.noPortmap, MetricsListen: g.metricsListen,
				Dashboard: dashboardAddr(cmd, ""),
				OnTicket: func(_ string, t secure.Ticket) {
					if withCode {
						log.Infof("sharing %s as %q; ticket: %s", target, name, t)
						ui.qr(t)
						return
					}
					fmt.Fprintln(out, t.String())
					ui.qr(t)
					log.Infof("sharing %s as %q; give the ticket above to your teammate: agent connect <ticket>", target, name)
				},
				OnCode: func(_, c string) {
					if withCode {
						fmt.Fprintln(out, c)
					}
					log.Infof("short code %s: your teammate, logged in to the same broker, runs: agent connect %s", c, c)
				},
			})
			if err != nil {
				return err
			}
			if err := ui.run(ctx, a); err != nil {
				return err
			}
			log.Infof("stopped; share %q no longer served (the same ticket works when it runs again)", name)
			return nil
		},
	}
	g.runFlags(c)
	uiFlags(c, true)
	f := c.Flags()
	f.StringVar(&name, "name", "", "share name (default: the target's port)")
	f.StringVar(&brokerURL, "broker", "", "broker URL (default: the one saved by agent login, else an embedded broker)")
	f.StringArrayVar(&allow, "allow", nil, "agent ID that may connect by identity, without a ticket (repeatable)")
	f.StringVar(&embedListen, "embedded-listen", ":0", "listen address of the embedded broker")
	f.StringVar(&publicAddr, "public-addr", "", "host the embedded broker advertises in tickets (default: this host's first address)")
	f.StringVar(&path, "path", agent.PathAuto, pathUsage)
	f.BoolVar(&newTicket, "new-ticket", false, "make a new ticket for this share; the old one stops working")
	f.BoolVar(&withCode, "code", false, "also offer a short code (like 7-tidal-orbit) and print it as the first line instead of the ticket; the console offers one anyway with a logged-in broker (--code=false: not)")
	f.DurationVar(&code.TTL, "code-ttl", agent.DefaultCodeTTL, "how long the short code is good for (at most 1h)")
	f.IntVar(&code.Uses, "code-uses", 1, "how many teammates the short code admits; a wrong code burns it at once")
	complete(c, "path", agent.PathPolicies())
	c.RegisterFlagCompletionFunc("name", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return agent.KeptTickets(statedir.Resolve(g.stateDir)), cobra.ShellCompDirectiveNoFileComp
	})
	return c
}

// chooseBroker picks --broker, else the saved login, else starts an embedded
// broker in this process (embedded says so).
func chooseBroker(ctx context.Context, dir, flag, embedListen, publicAddr string, log *logrus.Logger) (u *secure.BrokerURL, embedded bool, err error) {
	if flag != "" {
		u, err := secure.ParseBrokerURL(flag)
		if err != nil {
			return nil, false, fmt.Errorf("--broker: %w", err)
		}
		return &u, false, nil
	}
	if u, err = agent.LoadBroker(dir); err != nil || u != nil {
		return u, false, err
	}
	// The relay takes a free port like the control listener, so two
	// `agent share` on one machine each run their own.
	host, _, err := net.SplitHostPort(embedListen)
	if err != nil {
		return nil, false, fmt.Errorf("--embedded-listen: %w", err)
	}
	r, err := broker.Start(ctx, broker.Options{
		Listen: embedListen, PublicAddr: publicAddr, StateDir: statedir.Broker(dir),
		Log: quieter(log).WithField("component", "embedded-broker"), Version: version,
		TURNListen: net.JoinHostPort(host, "0"),
		// A restarted share keeps its ticket, which names this port.
		KeepPort: true,
	})
	if err != nil {
		return nil, false, fmt.Errorf("embedded broker: %w", err)
	}
	log.WithField("addr", r.URL.Addr).Info("no broker configured: running an embedded broker")
	return &r.URL, true, nil
}

// quieter is log for what runs inside the agent on its behalf (the
// embedded broker): its warnings, and its chatter only when debugging.
func quieter(log *logrus.Logger) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(log.Out)
	l.SetFormatter(log.Formatter)
	l.SetLevel(min(log.GetLevel(), logrus.WarnLevel))
	if log.GetLevel() >= logrus.DebugLevel {
		l.SetLevel(log.GetLevel())
	}
	return l
}

const pathUsage = "how peer channels are made: auto (punch, else a relay, moving to direct when it comes up), direct, relay (either relay), turn or broker (that relay only)"

func connectCmd(g *globals) *cobra.Command {
	var listen, path string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "connect TICKET|CODE",
		Short: "Forward a local port to a share; prints the local address as the first line of stdout",
		Example: "  agent connect pp1...                    # listens on 127.0.0.1:<shared port>\n" +
			"  agent connect 7-tidal-orbit             # a short code, with the broker you are logged in to\n" +
			"  agent connect pp1... --listen 127.0.0.1:15432\n" +
			"  agent connect pp1... --timeout 0         # keep trying until the share is there",
		Args: exactlyOne,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, log, id, err := g.setup()
			if err != nil {
				return err
			}
			if listen, err = config.NormalizeListen(listen); err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			u, err := agent.LoadBroker(dir)
			if err != nil {
				log.WithError(err).Warn("ignoring saved broker URL")
				u = nil
			}
			spec, err := connectSpec(cmd.Context(), args[0], id, u, g.proxyURL, log)
			if err != nil {
				return err
			}
			spec.Listen, spec.Path, spec.Timeout = listen, path, timeout
			ui := startUI(cmd, g, log, console.Connect)
			out := ui.stdout(cmd.OutOrStdout())
			a, err := agent.New(agent.Options{
				Identity: id, StateDir: dir, Broker: u, Log: log, DrainTimeout: g.drain, Candidates: g.offer, Proxy: g.proxyURL,
				Portmap: !g.noPortmap, Connects: []agent.ConnectSpec{spec}, MetricsListen: g.metricsListen,
				Dashboard: dashboardAddr(cmd, ""),
				OnListen:  func(_ agent.ConnectSpec, addr net.Addr) { fmt.Fprintln(out, addr.String()) },
			})
			if err != nil {
				return err
			}
			if err := ui.run(cmd.Context(), a); err != nil {
				return err
			}
			log.Info("stopped")
			return nil
		},
	}
	g.runFlags(c)
	uiFlags(c, false)
	complete(c, "path", agent.PathPolicies())
	c.Flags().StringVar(&listen, "listen", "", "local address (default 127.0.0.1:<shared port>, or a free port if taken)")
	c.Flags().StringVar(&path, "path", agent.PathAuto, pathUsage)
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up, with the reason, if the share cannot be reached for the first time within this long; 0: keep trying (once it has worked, it always keeps trying)")
	return c
}

// connectSpec is what connect's argument leads to: a ticket, or a short
// code redeemed now with the logged-in broker.
func connectSpec(ctx context.Context, arg string, id *secure.Identity, u *secure.BrokerURL, proxyURL *url.URL, log *logrus.Logger) (agent.ConnectSpec, error) {
	if !shortcode.Looks(arg) {
		t, err := secure.ParseTicket(arg)
		return agent.ConnectSpec{Ticket: &t}, err
	}
	if u == nil {
		return agent.ConnectSpec{}, fmt.Errorf("a short code works with the broker you are logged in to: run agent login BROKER_URL first, or connect with the ticket")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	peer, share, err := agent.RedeemCode(ctx, id, *u, arg, proxyURL, log)
	if err != nil {
		return agent.ConnectSpec{}, fmt.Errorf("code %s: %w", strings.TrimSpace(arg), err)
	}
	log.WithFields(logrus.Fields{"peer": peer.Short(), "share": share}).Info("code accepted by the sharer")
	return agent.ConnectSpec{Peer: peer, Share: share}, nil
}

func upCmd(g *globals) *cobra.Command {
	var file string
	var printTickets bool
	c := &cobra.Command{
		Use:   "up",
		Short: "Run the shares and connects of a YAML file, for good (SIGHUP or agent reload re-reads it)",
		Example: "  agent up                                # agent.yaml in this directory\n" +
			"  agent up -c /etc/peerport/agent.yaml --tickets",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadAgent(file)
			if err != nil {
				return err
			}
			if g.stateDir == "" {
				g.stateDir = cfg.StateDir
			}
			if !cmd.Flags().Changed("log-level") && cfg.Log.Level != "" {
				g.logLevel = cfg.Log.Level
			}
			if !cmd.Flags().Changed("log-format") && cfg.Log.Format != "" {
				g.logFormat = cfg.Log.Format
			}
			if !cmd.Flags().Changed("proxy") && cfg.Proxy != "" {
				g.proxy = cfg.Proxy
			}
			dir, log, id, err := g.setup()
			if err != nil {
				return err
			}
			for _, w := range cfg.Warnings {
				log.Warn(w)
			}
			load := func(cfg *config.Agent) (agent.Options, error) {
				o, err := agent.OptionsFromConfig(cfg)
				if err == nil && o.Broker == nil {
					o.Broker, err = agent.LoadBroker(dir)
				}
				return o, err
			}
			opts, err := load(cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			opts.Identity, opts.StateDir, opts.Log = id, dir, log
			opts.KeepTickets, opts.KeepGoing, opts.DrainTimeout, opts.Candidates = true, true, g.drain, g.offer
			opts.Proxy = g.proxyURL // a reload keeps it: the proxy changes with a restart
			opts.Portmap = opts.Portmap && !g.noPortmap
			if g.metricsListen != "" {
				opts.MetricsListen = g.metricsListen // the flag over metrics_listen
			}
			opts.Dashboard = dashboardAddr(cmd, cfg.Dashboard) // a reload keeps it, as the proxy
			opts.Reload = func() (agent.Options, error) {
				cfg, err := config.LoadAgent(file)
				if err != nil {
					return agent.Options{}, err
				}
				for _, w := range cfg.Warnings {
					log.Warn(w)
				}
				return load(cfg)
			}
			opts.OnTicket = func(name string, t secure.Ticket) {
				log.WithField("share", name).Infof("share online; ticket: %s", t)
				if printTickets {
					fmt.Fprintf(out, "%s %s\n", name, t)
				}
			}
			a, err := agent.New(opts)
			if err != nil {
				return err
			}
			// SIGHUP reloads on Unix only; Windows never sends it, there
			// `agent reload` (the admin socket) is the way.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			ctx := cmd.Context()
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						a.Reload() // a refusal is logged; the running config stays
					}
				}
			}()
			return a.Run(ctx)
		},
	}
	g.runFlags(c)
	c.Flags().StringVarP(&file, "config", "c", "agent.yaml", "config file")
	c.Flags().BoolVar(&printTickets, "tickets", false, "print \"NAME TICKET\" on stdout for each share as it comes online")
	return c
}

func reloadCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "reload",
		Short:   "Make the running agent up of this state dir re-read its config file",
		Example: "  agent reload",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			n, err := agent.RequestReload(ctx, statedir.Resolve(g.stateDir))
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("no agent running with this state dir")
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "reloaded %d agent(s)\n", n)
			return nil
		},
	}
}

func statusCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:     "status",
		Short:   "Show every running agent of this state dir: peers, path, RTT, streams, bytes",
		Example: "  agent status\n  agent status --json | jq '.agents[].peers[] | {peer, path, rtt_ms}'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if watch, _ := cmd.Flags().GetBool("watch"); watch {
				return watchStatus(cmd, g, asJSON)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := agent.QueryStatus(ctx, statedir.Resolve(g.stateDir))
			if err != nil {
				return err
			}
			if asJSON {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON (a stable schema: docs/reference.md)")
	watchFlag(c)
	return c
}

func printStatus(w io.Writer, st agent.Status) {
	if len(st.Agents) == 0 {
		fmt.Fprintln(w, "no agent running with this state dir")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	for _, a := range st.Agents {
		fmt.Fprintf(tw, "agent %s (pid %d, %s, up %s)\n", a.ID, a.PID, a.Version, time.Since(a.Started).Round(time.Second))
		for _, b := range a.Brokers {
			state := "connected"
			if !b.Connected {
				state = "DISCONNECTED " + b.LastError
			}
			fmt.Fprintf(tw, "  broker\t%s\t%s\trtt %.1fms\n", b.Addr, state, b.RTTMillis)
		}
		for _, s := range a.Shares {
			fmt.Fprintf(tw, "  share\t%s\t-> %s\t%d open, %d total\tin %d B, out %d B\n", s.Name, s.Target, s.Streams, s.Total, s.BytesIn, s.BytesOut)
		}
		for _, c := range a.Connects {
			fmt.Fprintf(tw, "  connect\t%s -> %s\t%s\t%d open, %d total\tin %d B, out %d B\t%s\n", c.Listen, c.Share, c.Peer[:12], c.Streams, c.Total, c.BytesIn, c.BytesOut, c.LastError)
		}
		for _, p := range a.Peers {
			path := p.Path
			if p.RelayKind != "" {
				path += " (" + p.RelayKind + ")"
			}
			if p.Relay != "" {
				path += " via " + p.Relay
			}
			fmt.Fprintf(tw, "  peer\t%s\t%s\t%s %s\trtt %.1fms\t%d streams\tin %d B, out %d B\n", p.Peer[:12], p.Role, path, p.Remote, p.RTTMillis, p.Streams, p.BytesIn, p.BytesOut)
		}
	}
}

func netcheckCmd(g *globals) *cobra.Command {
	var asJSON bool
	var brokerURL string
	c := &cobra.Command{
		Use:     "netcheck",
		Short:   "Show the NAT behaviour seen from here, and whether a direct path is likely",
		Example: "  agent netcheck\n  agent netcheck --json --broker 'pp://TOKEN@broker.example.com:7000#PIN'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, log, id, err := g.setup()
			if err != nil {
				return err
			}
			var u *secure.BrokerURL
			if brokerURL != "" {
				v, err := secure.ParseBrokerURL(brokerURL)
				if err != nil {
					return fmt.Errorf("--broker: %w", err)
				}
				u = &v
			} else if u, err = agent.LoadBroker(dir); err != nil {
				return err
			}
			if u == nil {
				return fmt.Errorf("netcheck needs a broker: run agent login BROKER_URL, or pass --broker")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			r, err := agent.Netcheck(ctx, id, *u, agent.NetcheckOptions{Proxy: g.proxyURL, Portmap: !g.noPortmap, Candidates: g.offer}, log)
			if err != nil {
				return err
			}
			if asJSON {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(r)
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.String())
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.Flags().StringVar(&brokerURL, "broker", "", "broker URL (default: the one saved by agent login)")
	c.Flags().BoolVar(&g.noPortmap, "no-portmap", false, "do not ask the gateway about port mapping (PCP, NAT-PMP, UPnP IGD)")
	g.proxyFlag(c)
	return c
}

func idCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "id",
		Short:   "Print this agent's identity",
		Example: "  agent id        # give it to a sharer for --allow, or for allow: in agent.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, _, id, err := g.setup()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id.ID())
			return nil
		},
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version",
		Example: "  agent version\n  agent --version",
		Args:    cobra.NoArgs,
		Run:     func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "agent", version) },
	}
}
