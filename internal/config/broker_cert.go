package config

import (
	"net"
	"net/mail"
	"net/url"
	"os"
	"strings"
)

// BrokerACME is broker.yaml's acme: section: a certificate the broker gets
// and renews by itself from an ACME CA, proving the name with TLS-ALPN-01 on
// its listen port (deploy it on 443) or HTTP-01 on HTTPListen. The broker
// URL then has no pin: agents verify the certificate for Domain.
type BrokerACME struct {
	Domain string `yaml:"domain"` // the certificate's name and the URL's host; empty: no ACME
	Email  string `yaml:"email"`  // contact for the CA's expiry notices; optional
	// Directory is the CA's ACME directory URL (https); empty: Let's
	// Encrypt's production directory.
	Directory string `yaml:"directory"`
	// HTTPListen also answers HTTP-01 challenges there, HOST:PORT or a bare
	// port (":PORT"), normally :80; empty: TLS-ALPN-01 only.
	HTTPListen string `yaml:"http_listen"`
}

// BrokerTLS is broker.yaml's tls: section: the operator's own certificate,
// instead of the self-signed, pinned one. It must be valid for the public
// address's host; the files are re-read when they change.
type BrokerTLS struct {
	CertFile string `yaml:"cert_file"` // PEM: the certificate, then its intermediates
	KeyFile  string `yaml:"key_file"`  // PEM: its private key
}

// SetDefaults normalizes the acme: section: the domain in lowercase without
// a final dot, a bare HTTP-01 port as ":PORT".
func (a *BrokerACME) SetDefaults() {
	a.Domain = strings.ToLower(strings.TrimSuffix(a.Domain, "."))
	if a.HTTPListen != "" {
		if l, err := normalizeBrokerListen(a.HTTPListen); err == nil {
			a.HTTPListen = l
		}
	}
}

// validateCert reports the problems of the acme: and tls: sections of c.
func (c *Broker) validateCert(p *problems) {
	a, t := c.ACME, c.TLS
	if a.Domain != "" && (t.CertFile != "" || t.KeyFile != "") {
		p.add("tls", nil, "set either acme (a certificate the broker gets) or tls (your own), not both")
	}
	if a.Domain == "" {
		for _, f := range []struct{ path, v string }{{"acme.email", a.Email}, {"acme.directory", a.Directory}, {"acme.http_listen", a.HTTPListen}} {
			if f.v != "" {
				p.add(f.path, nil, "needs acme.domain, the name to get a certificate for")
			}
		}
	} else if !dnsName(a.Domain) {
		p.add("acme.domain", nil, "%s is not a DNS name such as broker.example.com", quote(a.Domain))
	}
	if a.Email != "" {
		if m, err := mail.ParseAddress(a.Email); err != nil || m.Address != a.Email {
			p.add("acme.email", nil, "%s is not an email address", quote(a.Email))
		}
	}
	if a.Directory != "" {
		if u, err := url.Parse(a.Directory); err != nil || u.Scheme != "https" || u.Host == "" {
			p.add("acme.directory", nil, "%s: want the CA's https:// directory URL", quote(a.Directory))
		}
	}
	if a.HTTPListen != "" {
		switch _, _, err := splitAddr(a.HTTPListen, "", 0, true); {
		case err != nil:
			p.addErr("acme.http_listen", err)
		case clash(c.Listen, a.HTTPListen):
			p.add("acme.http_listen", nil, "address %s clashes with listen", quote(a.HTTPListen))
		case c.MetricsListen != "" && clash(c.MetricsListen, a.HTTPListen):
			p.add("acme.http_listen", nil, "address %s clashes with metrics_listen", quote(a.HTTPListen))
		case c.TURN.Listen != "" && clash(c.TURN.Listen, a.HTTPListen):
			p.add("acme.http_listen", nil, "address %s clashes with turn.listen", quote(a.HTTPListen))
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		p.add("tls.key_file", nil, "required with cert_file")
	case t.KeyFile != "" && t.CertFile == "":
		p.add("tls.cert_file", nil, "required with key_file")
	}
	for _, f := range []struct{ path, v string }{{"tls.cert_file", t.CertFile}, {"tls.key_file", t.KeyFile}} {
		if f.v == "" {
			continue
		}
		if fi, err := os.Stat(f.v); err != nil {
			p.add(f.path, err, "%s: cannot read: %s", quote(f.v), causeText(err))
		} else if !fi.Mode().IsRegular() {
			p.add(f.path, nil, "%s is not a regular file", quote(f.v))
		}
	}
}

// dnsName reports whether s is a DNS name a CA issues for: two or more
// labels of letters, digits and inner hyphens, no IP address, no wildcard.
func dnsName(s string) bool {
	if len(s) > 253 || net.ParseIP(s) != nil {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
