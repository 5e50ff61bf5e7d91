package main

import (
	"github.com/spf13/cobra"

	"github.com/peerport/peerport/internal/config"
)

// dashboardFlag adds --dashboard and --no-dashboard to a command that runs
// an agent. The values stay in the command's flag set: dashboardAddr reads
// them back, so globals need no field for them.
func (g *globals) dashboardFlag(c *cobra.Command) {
	f := c.Flags()
	f.String("dashboard", config.DefaultDashboard, "serve the local status page on this loopback address (a taken port falls back to a free one; the URL is logged)")
	f.Bool("no-dashboard", false, "do not serve the local status page")
}

// dashboardAddr is the dashboard's listen address for agent.Options, ""
// when off: the flags, else fromConfig (agent.yaml's dashboard: "" for the
// default, "off"), else the default.
func dashboardAddr(cmd *cobra.Command, fromConfig string) string {
	f := cmd.Flags()
	if off, _ := f.GetBool("no-dashboard"); off {
		return ""
	}
	addr, _ := f.GetString("dashboard")
	if !f.Changed("dashboard") && fromConfig != "" {
		addr = fromConfig
	}
	if addr == config.DashboardOff {
		return ""
	}
	if n, err := config.NormalizeListen(addr); err == nil {
		addr = n // PORT means 127.0.0.1:PORT, as in agent.yaml
	}
	return addr
}
