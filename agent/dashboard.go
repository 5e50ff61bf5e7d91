package agent

import (
	"context"

	"github.com/peerport/peerport/internal/dashboard"
)

// DefaultDashboard is where the CLI serves the dashboard unless told
// otherwise; a taken port falls back to a free one on the same host.
const DefaultDashboard = "127.0.0.1:4040"

// serveDashboard serves the local status page on addr until ctx ends. The
// page reads the same snapshot as `agent status --json`, so it shows the
// tickets; the dashboard package keeps it to loopback and token holders.
func (a *Agent) serveDashboard(ctx context.Context, addr string) error {
	log := a.log.WithField("component", "dashboard")
	d, err := dashboard.Listen(ctx, dashboard.Config{
		Addr:   addr,
		Status: func() any { return a.Status() },
		Ticket: a.shareTicket,
		Log:    log,
	})
	if err != nil {
		return err
	}
	url := d.URL()
	a.dashURL.Store(&url)
	log.WithField("listen", d.Addr().String()).Infof("dashboard: %s", url)
	a.spawn(func() {
		if err := d.Serve(ctx); err != nil {
			log.WithError(err).Warn("dashboard stopped")
		}
	})
	return nil
}

// dashboardURL is the page's address with its token, "" when off.
func (a *Agent) dashboardURL() string {
	if u := a.dashURL.Load(); u != nil {
		return *u
	}
	return ""
}

// shareTicket is the ticket of share name as declared now.
func (a *Agent) shareTicket(name string) (string, bool) {
	s := a.shareNamed(name)
	if s == nil || s.ticket == nil {
		return "", false
	}
	return s.ticket.String(), true
}
