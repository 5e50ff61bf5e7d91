package config

import (
	"net/url"
	"regexp"
)

// BrokerCluster is broker.yaml's cluster: section: the NATS servers that tie
// broker nodes together (docs/cluster.md).
type BrokerCluster struct {
	NATS  []string `yaml:"nats"`  // nats:// or tls:// URLs; empty: no cluster
	Node  string   `yaml:"node"`  // this node's name; empty: the hostname
	Creds string   `yaml:"creds"` // a NATS credentials file; optional
}

var nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// validate reports the problems of the cluster: section.
func (c BrokerCluster) validate(p *problems) {
	if len(c.NATS) == 0 && (c.Node != "" || c.Creds != "") {
		p.add("cluster.nats", nil, "needs the NATS servers' URLs (nats://HOST:4222) to join a cluster")
	}
	for _, s := range c.NATS {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
			p.add("cluster.nats", nil, "%s: want nats://HOST:PORT or tls://HOST:PORT", quote(redactURL(s)))
		}
	}
	if c.Node != "" && !nodeNameRE.MatchString(c.Node) {
		p.add("cluster.node", nil, "%s: use 1-63 of A-Z a-z 0-9 . _ - starting with a letter or digit", quote(c.Node))
	}
}

// redactURL hides a password for an error message.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "(not a URL)"
}
