// Command broker introduces peerport agents to each other. Its first line on
// stdout is the broker URL agents log in with; logs go to stderr.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/peerport/peerport/broker"
	"github.com/peerport/peerport/internal/config"
	"github.com/peerport/peerport/internal/logging"
	"github.com/peerport/peerport/internal/statedir"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "broker: "+err.Error())
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var file, listen, publicAddr, stateDir, metricsListen, logLevel, logFormat, turnListen string
	var noTURN, noSTUN bool
	var clusterNATS []string
	var clusterNode, clusterCreds string
	var stunListen []string
	var certFile, keyFile, acmeDomain, acmeEmail, acmeDirectory, acmeHTTP string
	c := &cobra.Command{
		Use:   "broker",
		Short: "Introduce peerport agents to each other",
		Long: "Runs a peerport broker. The first line on stdout is its URL,\n" +
			"pp://TOKEN@HOST:PORT#PIN, which agents log in with (agent login URL).\n" +
			"Key, pin and token are created in the state dir on first start and kept after.\n" +
			"With a certificate from a CA (--acme-domain, or --cert-file/--key-file) the URL\n" +
			"has no #PIN: agents verify the certificate for its host with their system roots.",
		Example: "  broker                                  # on :7000, state in ~/.config/peerport/broker\n" +
			"  broker --public-addr broker.example.com --listen :443\n" +
			"  broker --public-addr 203.0.113.10,2001:db8::10    # dual-stack: the URL names both\n" +
			"  broker --acme-domain broker.example.com --listen :443   # a certificate from Let's Encrypt\n" +
			"  broker -c broker.yaml --metrics-listen 9102",
		Version:       version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := &config.Broker{}
			if file != "" {
				var err error
				if cfg, err = config.LoadBroker(file); err != nil {
					return err
				}
			} else {
				cfg.SetDefaults()
			}
			f := cmd.Flags()
			if f.Changed("listen") {
				cfg.Listen = listen
			}
			if f.Changed("public-addr") {
				cfg.PublicAddr = publicAddr
			}
			if f.Changed("state-dir") {
				cfg.StateDir = stateDir
			}
			if f.Changed("metrics-listen") {
				cfg.MetricsListen = metricsListen
			}
			if f.Changed("turn-listen") {
				cfg.TURN.Listen = turnListen
			}
			if f.Changed("no-turn") {
				cfg.TURN.Off = noTURN
			}
			if f.Changed("stun-listen") {
				cfg.STUN.Listen = stunListen
			}
			if f.Changed("no-stun") {
				cfg.STUN.Off = noSTUN
			}
			if f.Changed("cluster") {
				cfg.Cluster.NATS = clusterNATS
			}
			for _, fl := range []struct {
				name string
				dst  *string
				v    string
			}{
				{"cert-file", &cfg.TLS.CertFile, certFile}, {"key-file", &cfg.TLS.KeyFile, keyFile},
				{"acme-domain", &cfg.ACME.Domain, acmeDomain}, {"acme-email", &cfg.ACME.Email, acmeEmail},
				{"acme-directory", &cfg.ACME.Directory, acmeDirectory}, {"acme-http", &cfg.ACME.HTTPListen, acmeHTTP},
				{"cluster-node", &cfg.Cluster.Node, clusterNode}, {"cluster-creds", &cfg.Cluster.Creds, clusterCreds},
			} {
				if f.Changed(fl.name) {
					*fl.dst = fl.v
				}
			}
			if f.Changed("log-level") || cfg.Log.Level == "" {
				cfg.Log.Level = logLevel
			}
			if f.Changed("log-format") || cfg.Log.Format == "" {
				cfg.Log.Format = logFormat
			}
			// Flags are normalized as the file's keys are: "--listen 7000"
			// means ":7000", "--metrics-listen 9102" 127.0.0.1:9102.
			cfg.SetDefaults()
			if err := cfg.Validate(); err != nil {
				return err
			}
			log, err := logging.New(os.Stderr, cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			for _, w := range cfg.Warnings {
				log.Warn(w)
			}
			lim := cfg.Limits
			o := broker.Options{
				STUNListen: cfg.STUN.Listen, NoSTUN: cfg.STUN.Off,
				Listen: cfg.Listen, PublicAddr: cfg.PublicAddr,
				StateDir: brokerDir(cfg.StateDir), MetricsListen: cfg.MetricsListen,
				Log: log.WithField("component", "broker"), Version: version,
				Limits: func(b *broker.Config) {
					b.MaxAgents, b.MaxSharesPerAgent, b.MaxPendingIntros = lim.MaxAgents, lim.MaxSharesPerAgent, lim.MaxPendingIntros
					b.MaxMessageSize = lim.MaxMessageBytes
					b.HandshakeTimeout, b.IdleTimeout, b.IntroTimeout = lim.HandshakeTimeout, lim.IdleTimeout, lim.IntroTimeout
					b.RegistrationGrace = lim.RegistrationGrace
					b.Conns = broker.ConnLimits{PreAuthTimeout: lim.PreAuthTimeout, MaxPreAuthPerIP: lim.MaxPreAuthPerIP,
						AcceptRatePerIP: float64(lim.AcceptsPerSecondPerIP), AcceptBurst: lim.AcceptBurstPerIP,
						MaxConns: lim.MaxConns, PreAuthShare: float64(lim.PreAuthPercent) / 100}
					b.Rates = broker.RateLimits{LoginsPerIP: float64(lim.LoginsPerMinPerIP), LoginsPerAgent: float64(lim.LoginsPerMinPerAgent),
						RegistersPerIP: float64(lim.RegistersPerMinPerIP), RegistersPerAgent: float64(lim.RegistersPerMinPerAg),
						ConnectsPerIP: float64(lim.ConnectsPerMinPerIP), ConnectsPerAgent: float64(lim.ConnectsPerMinPerAg)}
				},
			}
			o.TLS = broker.TLSOptions{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, ACME: broker.ACMEOptions{
				Domain: cfg.ACME.Domain, Email: cfg.ACME.Email, Directory: cfg.ACME.Directory, HTTPListen: cfg.ACME.HTTPListen}}
			if c := cfg.Cluster; len(c.NATS) > 0 {
				o.Cluster = &broker.ClusterOptions{NATS: c.NATS, Node: c.Node, Creds: c.Creds}
			}
			if err := turnOptions(&o, cfg.TURN); err != nil {
				return err
			}
			r, err := broker.Start(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.URL.String())
			fields := logrus.Fields{"addr": r.Addr.String()}
			if r.TURNURL != "" {
				fields["turn"] = r.TURNURL
			}
			log.WithFields(fields).Info("broker running; agents log in with the URL on stdout")
			<-r.Done
			return r.Err()
		},
	}
	f := c.Flags()
	f.StringVarP(&file, "config", "c", "", "broker.yaml")
	f.StringVar(&listen, "listen", ":7000", "control listen address")
	f.StringVar(&publicAddr, "public-addr", "", "host (or host:port) advertised in the broker URL; a dual-stack broker's IPv4 and IPv6 address joined by a comma (203.0.113.10,2001:db8::10)")
	f.StringVar(&metricsListen, "metrics-listen", "", "serve Prometheus /metrics and /healthz here (PORT means 127.0.0.1:PORT); default off")
	f.StringVar(&turnListen, "turn-listen", "", "TURN relay listen address (default: the control listener's host, port 3480)")
	f.BoolVar(&noTURN, "no-turn", false, "run no TURN relay (relay introductions then fail, unless broker.yaml names an external one)")
	f.StringVar(&certFile, "cert-file", "", "your own certificate (PEM, with intermediates) for --public-addr's host, instead of the self-signed one; re-read when it changes")
	f.StringVar(&keyFile, "key-file", "", "the private key of --cert-file (PEM)")
	f.StringVar(&acmeDomain, "acme-domain", "", "get and renew a certificate for this name over ACME (TLS-ALPN-01 on --listen, reached on port 443); it is the URL's host, and asking accepts the CA's terms")
	f.StringVar(&acmeEmail, "acme-email", "", "contact address for the ACME CA's expiry notices")
	f.StringVar(&acmeDirectory, "acme-directory", "", "the ACME CA's directory URL (default Let's Encrypt's production directory)")
	f.StringVar(&acmeHTTP, "acme-http", "", "also answer ACME HTTP-01 challenges on this address (e.g. :80)")
	f.StringVar(&stateDir, "state-dir", "", "state directory for key and token (default $PEERPORT_HOME/broker or ~/.config/peerport/broker)")
	f.StringVar(&logLevel, "log-level", "info", "trace, debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	f.StringSliceVar(&stunListen, "stun-listen", nil, "STUN server addresses, each on UDP and TCP (default: ports 3478 and 3479 of --listen's host, or free ports if taken)")
	f.StringSliceVar(&clusterNATS, "cluster", nil, "join a broker cluster through these NATS servers (nats://HOST:4222,...); every node shares one state dir's identity")
	f.StringVar(&clusterNode, "cluster-node", "", "this node's name in the cluster (default: the hostname)")
	f.StringVar(&clusterCreds, "cluster-creds", "", "a NATS credentials file for --cluster")
	f.BoolVar(&noSTUN, "no-stun", false, "run no STUN server (agents then cannot tell their NAT type from this broker)")
	c.SetVersionTemplate("broker {{.Version}}\n")
	c.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "broker", version) },
	})
	for name, values := range map[string][]string{"log-level": logging.Levels, "log-format": logging.Formats} {
		c.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
	}
	return c
}

// turnOptions sets o's relay from the turn: section (validated).
func turnOptions(o *broker.Options, t config.BrokerTURN) error {
	o.TURNListen, o.NoTURN, o.TURNCredentialTTL = t.Listen, t.Off, t.CredentialTTL
	if t.External.URL != "" {
		secret, err := t.External.LoadSecret()
		if err != nil {
			return err
		}
		o.ExternalTURN = &broker.ExternalTURN{URL: t.External.URL, Secret: secret}
		return nil
	}
	lo, hi, err := config.ParsePortRange(t.RelayPorts)
	if err != nil {
		return err
	}
	allow, err := t.AllowPrefixes()
	if err != nil {
		return err
	}
	o.TURN = broker.RelayConfig{
		PortMin: lo, PortMax: hi, AllowPeers: allow,
		MaxAllocationsPerAgent: t.MaxAllocationsPerAgent, MaxPermissionsPerAllocation: t.MaxPermissionsPerAllocation,
		Bandwidth: t.Bandwidth,
	}
	if o.TURN.RelayIP, o.TURN.RelayIP6, err = t.RelayIPs(); err != nil {
		return fmt.Errorf("turn.relay_ip: %w", err)
	}
	return nil
}

// brokerDir is --state-dir as given, else the broker/ subdirectory of the
// default state dir (where `agent share`'s embedded broker keeps its key too).
func brokerDir(flag string) string {
	if flag != "" {
		return flag
	}
	return statedir.Broker(statedir.Default())
}
