package agent

import (
	"bytes"
	"fmt"
	"os"

	"github.com/peerport/peerport/internal/config"
	"github.com/peerport/peerport/internal/resume"
	"github.com/peerport/peerport/internal/secure"
)

// OptionsFromConfig turns a validated agent.yaml into Options; identity,
// state dir and logger are the caller's to fill.
func OptionsFromConfig(c *config.Agent) (Options, error) {
	o := Options{MetricsListen: c.MetricsListen, Portmap: c.Portmap == nil || *c.Portmap, Resume: resume.Config{
		KeepAlive: c.Resume.KeepAlive, DeadFloor: c.Resume.DeadAfter, ResumeTimeout: c.Resume.Timeout, MaxUnacked: c.Resume.BufferKiB << 10,
	}}
	if r := c.Relay; r.URL != "" {
		secret := []byte(r.Secret)
		if r.SecretFile != "" {
			b, err := os.ReadFile(r.SecretFile)
			if err != nil {
				return o, fmt.Errorf("relay.secret_file: %w", err)
			}
			if secret = bytes.TrimSpace(b); len(secret) == 0 {
				return o, fmt.Errorf("relay.secret_file %s: empty", r.SecretFile)
			}
		}
		o.TURN = &TURNServer{URL: r.URL, Secret: secret}
	}
	if c.Broker != "" {
		u, err := secure.ParseBrokerURL(c.Broker)
		if err != nil {
			return o, fmt.Errorf("broker: %w", err)
		}
		o.Broker = &u
	}
	for i, s := range c.Shares {
		spec := ShareSpec{Name: s.Name, Target: s.Target, Path: s.Path}
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
		spec := ConnectSpec{Share: c.Share, Listen: c.Listen, Path: c.Path, Timeout: c.Timeout}
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
