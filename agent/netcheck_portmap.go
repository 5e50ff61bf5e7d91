package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/sirupsen/logrus"
)

// PortmapReport is the "portmap" object of `agent netcheck --json`: what
// this host's gateway answered to the port mapping protocols (PCP, NAT-PMP,
// UPnP IGD), asked without mapping anything.
type PortmapReport struct {
	Gateway string `json:"gateway,omitempty"`
	// Protocol is the first protocol that answered, the one a mapping
	// would most likely use; Answered every one that did.
	Protocol string   `json:"protocol,omitempty"`
	Answered []string `json:"answered"`
	// External is the external address the gateway reported.
	External string `json:"external,omitempty"`
	// Errors says, per protocol that did not answer, why.
	Errors map[string]string `json:"errors,omitempty"`
	// Why says why the gateway was not asked at all.
	Why string `json:"why,omitempty"`
}

// netcheckPortmap asks the gateway what it serves, unless opts turn port
// mapping off.
func netcheckPortmap(ctx context.Context, opts Options, log logrus.FieldLogger) PortmapReport {
	m, why := newPortMapper(ctx, opts, log)
	if m == nil {
		return PortmapReport{Why: why}
	}
	res := m.refresh(ctx, mapTimeout) // a person waits for netcheck anyway: give a slow gateway time
	r := PortmapReport{Gateway: m.client.Gateway().String(), Protocol: res.Protocol, Answered: res.Answered}
	if res.External.IsValid() {
		r.External = res.External.String()
	}
	for name, err := range res.Errors {
		if r.Errors == nil {
			r.Errors = map[string]string{}
		}
		r.Errors[name] = err.Error()
	}
	return r
}

// summary is the report's line in the human form.
func (r PortmapReport) summary() string {
	switch {
	case r.Why != "":
		return "not asked: " + r.Why
	case r.Protocol == "":
		return fmt.Sprintf("gateway %s answers none of PCP, NAT-PMP, UPnP IGD", r.Gateway)
	}
	ext := ""
	if r.External != "" {
		if ip, err := netip.ParseAddr(r.External); err == nil && ip.IsPrivate() {
			ext = ", external " + r.External + " (private: another NAT is in front of it)"
		} else {
			ext = ", external " + r.External
		}
	}
	return fmt.Sprintf("%s (gateway %s answers %s%s): direct paths even behind a symmetric NAT", r.Protocol, r.Gateway, strings.Join(r.Answered, ", "), ext)
}
