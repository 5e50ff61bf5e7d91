package main

import (
	"github.com/spf13/cobra"

	"github.com/peerport/peerport/internal/config"
)

// metricsFlag is --metrics-listen, for the commands that run an agent. Its
// value is normalized as metrics_listen in agent.yaml is, as it is parsed:
// PORT means 127.0.0.1:PORT, so metrics are not exposed by accident.
func (g *globals) metricsFlag(c *cobra.Command) {
	c.Flags().Var(listenFlag{&g.metricsListen}, "metrics-listen",
		"serve Prometheus /metrics and /healthz on ADDR, PORT meaning 127.0.0.1:PORT (agent up: overrides metrics_listen); default off")
}

// listenFlag is a flag holding a listen address, PORT or HOST:PORT.
type listenFlag struct{ addr *string }

func (f listenFlag) String() string {
	if f.addr == nil {
		return ""
	}
	return *f.addr
}

func (f listenFlag) Set(s string) error {
	addr, err := config.NormalizeListen(s)
	if err != nil {
		return err // it names the value and what is wrong with it
	}
	*f.addr = addr
	return nil
}

func (listenFlag) Type() string { return "ADDR" }
