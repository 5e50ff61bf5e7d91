//go:build linux

// Package labcli is the "natlab" command: bring a lab topology up by hand
// (the process stays in the foreground and owns the lab and its WAN links
// until Ctrl-C), run commands on its hosts, and tear it down.
//
// A running lab is recorded in /run/peerport-natlab/<name>.json so that
// "exec" and "down" in other shells can find it.
package labcli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/peerport/peerport/internal/natlab"
)

const stateDir = "/run/peerport-natlab"

// state is what "up" records for "exec" and "down".
type state struct {
	PID      int               `json:"pid"`
	Prefix   string            `json:"prefix"`
	Topology string            `json:"topology"`
	Nodes    []natlab.NodeInfo `json:"nodes"`
}

// Command returns the root command.
func Command() *cobra.Command {
	var name string
	root := &cobra.Command{
		Use:   "natlab",
		Short: "Real NATs in network namespaces, for reproducing peerport's lab tests by hand",
		Long: "natlab builds the NAT lab topologies the tests use.\n\n" +
			"  natlab up cone-cone            # stays in the foreground; Ctrl-C tears down\n" +
			"  natlab exec a -- curl ...      # in another shell: run a command on host a\n" +
			"  natlab down                    # stop a lab left running\n\n" +
			"Topologies: " + strings.Join(natlab.PresetNames(), ", "),
		SilenceUsage: true,
	}
	root.PersistentFlags().StringVar(&name, "name", "default", "lab name, to run several labs at once")
	root.AddCommand(upCmd(&name), execCmd(&name), downCmd(&name), listCmd(), showCmd(&name))
	return root
}

func statePath(name string) string { return filepath.Join(stateDir, name+".json") }

func loadState(name string) (*state, error) {
	b, err := os.ReadFile(statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab %q is up; start one with: natlab up TOPOLOGY", name)
	}
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", statePath(name), err)
	}
	return &s, nil
}

func upCmd(name *string) *cobra.Command {
	var links []string
	var v6 bool
	c := &cobra.Command{
		Use:   "up TOPOLOGY",
		Short: "Build a topology and keep it (and its WAN links) up until Ctrl-C",
		Example: "  natlab up cone-symmetric\n" +
			"  natlab up cone-cone --link gw-a:delay=40ms,jitter=5ms,loss=1%,rate=20mbit\n" +
			"  natlab up zoo --name big",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			topo, err := natlab.Preset(args[0])
			if err != nil {
				return err
			}
			topo.IPv6 = topo.IPv6 || v6
			for _, l := range links {
				node, spec, ok := strings.Cut(l, ":")
				if !ok {
					return fmt.Errorf("--link %q: want NODE:delay=...,loss=...", l)
				}
				cfg, err := natlab.ParseLinkConfig(spec)
				if err != nil {
					return err
				}
				if topo, err = topo.WithLink(node, cfg); err != nil {
					return err
				}
			}
			if s, err := loadState(*name); err == nil && syscall.Kill(s.PID, 0) == nil {
				return fmt.Errorf("lab %q is already up (pid %d); use --name or: natlab down --name %s", *name, s.PID, *name)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			start := time.Now()
			lab, err := natlab.Build(ctx, topo)
			if err != nil {
				return err
			}
			defer func() {
				if err := lab.Close(); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), err)
				}
				os.Remove(statePath(*name))
				fmt.Fprintln(cmd.OutOrStdout(), "natlab: torn down")
			}()
			s := state{PID: os.Getpid(), Prefix: lab.Prefix(), Topology: topo.Name, Nodes: lab.Info()}
			b, _ := json.MarshalIndent(s, "", "  ")
			if err := os.MkdirAll(stateDir, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(statePath(*name), b, 0o644); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "natlab: %q up in %v (lab %q, pid %d)\n\n%s\n", topo.Name, time.Since(start).Round(time.Millisecond), *name, os.Getpid(), lab.Describe())
			fmt.Fprintf(out, "Run commands with: natlab exec%s HOST -- CMD ARGS...   Ctrl-C (or natlab down%s) tears down.\n", nameFlag(*name), nameFlag(*name))
			<-ctx.Done()
			return nil
		},
	}
	c.Flags().StringArrayVar(&links, "link", nil, "NODE:SPEC, put a WAN link on NODE's uplink (repeatable); SPEC like delay=40ms,jitter=5ms,loss=1%,rate=20mbit")
	c.Flags().BoolVar(&v6, "ipv6", false, "make the topology dual-stack")
	return c
}

func nameFlag(name string) string {
	if name == "default" {
		return ""
	}
	return " --name " + name
}

func execCmd(name *string) *cobra.Command {
	c := &cobra.Command{
		Use:   "exec NODE [--] CMD [ARGS...]",
		Short: "Run a command in a node's namespace (host, router or inet)",
		Example: "  natlab exec a -- ip addr\n" +
			"  natlab exec gw-a -- conntrack -L\n" +
			"  natlab exec broker -- iperf3 -s",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := loadState(*name)
			if err != nil {
				return err
			}
			ns := ""
			for _, n := range s.Nodes {
				if n.Name == args[0] {
					ns = n.Namespace
				}
			}
			if ns == "" {
				return fmt.Errorf("lab %q has no node %q", *name, args[0])
			}
			argv := args[1:]
			if argv[0] == "--" {
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return errors.New("exec: no command given")
			}
			ip, err := exec.LookPath("ip")
			if err != nil {
				return err
			}
			return syscall.Exec(ip, append([]string{"ip", "netns", "exec", ns}, argv...), os.Environ())
		},
	}
	c.Flags().SetInterspersed(false) // flags after NODE belong to CMD
	return c
}

func downCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Tear down a running lab (and any lab left behind by a dead process)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			s, err := loadState(*name)
			if err == nil && syscall.Kill(s.PID, 0) == nil {
				if err := syscall.Kill(s.PID, syscall.SIGTERM); err != nil {
					return fmt.Errorf("stop pid %d: %w", s.PID, err)
				}
				for i := 0; i < 300 && syscall.Kill(s.PID, 0) == nil; i++ {
					time.Sleep(50 * time.Millisecond)
				}
			}
			if err == nil {
				os.Remove(statePath(*name))
			}
			if err := natlab.CleanStale(ctx); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "natlab: down")
			return nil
		},
	}
}

func listCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the topologies",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			w := cmd.OutOrStdout()
			fmt.Fprintln(w, "Pair topologies A-B: hosts a and b, each placed as")
			fmt.Fprintln(w, "  public     on the internet")
			fmt.Fprintln(w, "  cone       behind cone NAT gw-X (masquerade; new inbound dropped)")
			fmt.Fprintln(w, "  symmetric  behind symmetric NAT gw-X (masquerade fully-random)")
			fmt.Fprintln(w, "  firewall   behind stateful firewall gw-X (public address, no NAT)")
			fmt.Fprintln(w, "  double     behind cone NAT gw-X behind carrier cone NAT cgn-X")
			fmt.Fprintln(w, "  and a public host broker (203.0.113.10 and .11).")
			fmt.Fprintln(w, "Others:")
			fmt.Fprintln(w, "  shared     a and b on one LAN behind one cone NAT gw (no hairpinning), broker")
			fmt.Fprintln(w, "  ipv6       firewall-firewall, dual-stack")
			fmt.Fprintln(w, "  zoo        one of everything, dual-stack (see natlab up zoo)")
			fmt.Fprintln(w)
			fmt.Fprintln(w, strings.Join(natlab.PresetNames(), "\n"))
		},
	}
}

func showCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "Print the address plan of a running lab as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := loadState(*name)
			if err != nil {
				return err
			}
			b, _ := json.MarshalIndent(s, "", "  ")
			_, err = io.WriteString(cmd.OutOrStdout(), string(b)+"\n")
			return err
		},
	}
}
