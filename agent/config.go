package agent

import (
	"fmt"

	"github.com/peerport/peerport/internal/config"
	"github.com/peerport/peerport/internal/secure"
)

// OptionsFromConfig turns a validated agent.yaml into Options; identity,
// state dir and logger are the caller's to fill.
func OptionsFromConfig(c *config.Agent) (Options, error) {
	o := Options{MetricsListen: c.MetricsListen}
	if c.Broker != "" {
		u, err := secure.ParseBrokerURL(c.Broker)
		if err != nil {
			return o, fmt.Errorf("broker: %w", err)
		}
		o.Broker = &u
	}
	for i, s := range c.Shares {
		spec := ShareSpec{Name: s.Name, Target: s.Target}
		for _, a := range s.Allow {
			id, err := secure.ParseAgentID(a)
			if err != nil {
				return o, fmt.Errorf("shares[%d].allow: %w", i, err)
			}
			spec.Allow = append(spec.Allow, id)
		}
		o.Shares = append(o.Shares, spec)
	}
	for i, c := range c.Connects {
		spec := ConnectSpec{Share: c.Share, Listen: c.Listen}
		if c.Ticket != "" {
			t, err := secure.ParseTicket(c.Ticket)
			if err != nil {
				return o, fmt.Errorf("connects[%d].ticket: %w", i, err)
			}
			spec.Ticket = &t
		} else {
			id, err := secure.ParseAgentID(c.Peer)
			if err != nil {
				return o, fmt.Errorf("connects[%d].peer: %w", i, err)
			}
			spec.Peer = id
		}
		o.Connects = append(o.Connects, spec)
	}
	return o, nil
}
