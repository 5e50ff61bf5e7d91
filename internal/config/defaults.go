package config

import (
	"strings"
	"time"

	"github.com/peerport/peerport/internal/resume"
)

// Defaults of the fields whose zero value is not usable.
const (
	DefaultLogLevel  = "info"
	DefaultLogFormat = "text"

	// DefaultDashboard is the agent's status page unless told otherwise,
	// where ngrok has its own; DashboardOff turns the page off.
	DefaultDashboard = "127.0.0.1:4040"
	DashboardOff     = "off"

	DefaultBrokerListen      = ":7000"
	DefaultMaxAgents         = 100_000
	DefaultMaxSharesPerAgent = 64
	DefaultMaxPendingIntros  = 64
	DefaultMaxMessageBytes   = 64 << 10
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultIdleTimeout       = 90 * time.Second
	DefaultIntroTimeout      = 10 * time.Second
	DefaultRegistrationGrace = time.Minute

	// Admission and rate limits; the broker package has the same defaults.
	DefaultPreAuthTimeout        = 10 * time.Second
	DefaultMaxPreAuthPerIP       = 32
	DefaultAcceptsPerSecondPerIP = 20
	DefaultAcceptBurstPerIP      = 64
	DefaultPreAuthPercent        = 50
	DefaultLoginsPerMinPerIP     = 120
	DefaultLoginsPerMinPerAgent  = 30
	DefaultRegistersPerMinPerIP  = 600
	DefaultRegistersPerMinPerAg  = 300
	DefaultConnectsPerMinPerIP   = 120
	DefaultConnectsPerMinPerAg   = 60
)

// SetDefaults fills the unset fields of l.
func (l *Log) SetDefaults() {
	setString(&l.Level, DefaultLogLevel)
	setString(&l.Format, DefaultLogFormat)
}

// SetDefaults fills every unset field and normalizes addresses that parse
// (PORT -> 127.0.0.1:PORT); ones that do not are left for Validate to report.
func (c *Agent) SetDefaults() {
	c.Log.SetDefaults()
	if l, err := NormalizeListen(c.MetricsListen); err == nil {
		c.MetricsListen = l
	}
	setString(&c.Path, PathAuto)
	if strings.EqualFold(c.Dashboard, "false") || strings.EqualFold(c.Dashboard, DashboardOff) {
		c.Dashboard = DashboardOff // YAML's false, read into a string
	} else if l, err := NormalizeListen(c.Dashboard); err == nil {
		c.Dashboard = l
	}
	c.Resume.SetDefaults()
	// A bad default is reported once, at path, not again at every entry.
	inherit := func(p *string) {
		if validPathValue(c.Path) {
			setString(p, c.Path)
		}
	}
	for i := range c.Shares {
		if t, err := NormalizeTarget(c.Shares[i].Target); err == nil {
			c.Shares[i].Target = t
		}
		inherit(&c.Shares[i].Path)
	}
	for i := range c.Connects {
		if l, err := NormalizeListen(c.Connects[i].Listen); err == nil {
			c.Connects[i].Listen = l
		}
		inherit(&c.Connects[i].Path)
	}
}

// SetDefaults fills every unset field; a bare port in Listen becomes ":PORT",
// since a broker serves the public.
func (c *Broker) SetDefaults() {
	setString(&c.Listen, DefaultBrokerListen)
	if l, err := normalizeBrokerListen(c.Listen); err == nil {
		c.Listen = l
	}
	if l, err := NormalizeListen(c.MetricsListen); err == nil {
		c.MetricsListen = l
	}
	c.Log.SetDefaults()
	c.Limits.SetDefaults()
	c.TURN.SetDefaults()
	c.ACME.SetDefaults()
}

// SetDefaults fills the unset (zero) limits.
func (l *BrokerLimits) SetDefaults() {
	setInt(&l.MaxAgents, DefaultMaxAgents)
	setInt(&l.MaxSharesPerAgent, DefaultMaxSharesPerAgent)
	setInt(&l.MaxPendingIntros, DefaultMaxPendingIntros)
	setInt(&l.MaxMessageBytes, DefaultMaxMessageBytes)
	setDuration(&l.HandshakeTimeout, DefaultHandshakeTimeout)
	setDuration(&l.IdleTimeout, DefaultIdleTimeout)
	setDuration(&l.IntroTimeout, DefaultIntroTimeout)
	setDuration(&l.RegistrationGrace, DefaultRegistrationGrace)
	setDuration(&l.PreAuthTimeout, DefaultPreAuthTimeout)
	setInt(&l.MaxPreAuthPerIP, DefaultMaxPreAuthPerIP)
	setInt(&l.AcceptsPerSecondPerIP, DefaultAcceptsPerSecondPerIP)
	setInt(&l.AcceptBurstPerIP, DefaultAcceptBurstPerIP)
	setInt(&l.PreAuthPercent, DefaultPreAuthPercent)
	setInt(&l.LoginsPerMinPerIP, DefaultLoginsPerMinPerIP)
	setInt(&l.LoginsPerMinPerAgent, DefaultLoginsPerMinPerAgent)
	setInt(&l.RegistersPerMinPerIP, DefaultRegistersPerMinPerIP)
	setInt(&l.RegistersPerMinPerAg, DefaultRegistersPerMinPerAg)
	setInt(&l.ConnectsPerMinPerIP, DefaultConnectsPerMinPerIP)
	setInt(&l.ConnectsPerMinPerAg, DefaultConnectsPerMinPerAg)
}

// SetDefaults fills the unset fields of r with the resumable layer's own
// defaults.
func (r *Resume) SetDefaults() {
	setDuration(&r.KeepAlive, resume.DefaultKeepAlive)
	setDuration(&r.DeadAfter, resume.DefaultDeadFloor)
	setDuration(&r.Timeout, resume.DefaultResumeTimeout)
	setInt(&r.BufferKiB, resume.DefaultMaxUnacked>>10)
}

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

func setDuration(p *time.Duration, v time.Duration) {
	if *p == 0 {
		*p = v
	}
}
