package natlab

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// NodeInfo describes one node of a built lab.
type NodeInfo struct {
	Name      string `json:"name"`
	Role      string `json:"role"` // internet, host, or the router kind
	Behind    string `json:"behind,omitempty"`
	Namespace string `json:"namespace"`
	IP        string `json:"ip"`
	IPs       string `json:"ips,omitempty"`
	IPv6      string `json:"ipv6,omitempty"`
	LAN       string `json:"lan,omitempty"`
	PublicIP  string `json:"publicIP,omitempty"`
	Link      string `json:"link,omitempty"`
}

// PlanInfo describes the nodes topo would have, without building it.
func PlanInfo(topo Topology) ([]NodeInfo, error) {
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	p, err := planAddresses(topo)
	if err != nil {
		return nil, err
	}
	l := &Lab{topo: topo, plan: p}
	for _, pn := range p.nodes {
		l.order = append(l.order, &Node{lab: l, p: pn})
	}
	return l.Info(), nil
}

// Info describes every node, in Nodes order.
func (l *Lab) Info() []NodeInfo {
	var out []NodeInfo
	for _, n := range l.order {
		i := NodeInfo{Name: n.Name(), Namespace: n.ns, IP: n.IP().String()}
		switch n.p.kind {
		case nodeInternet:
			i.Role = "internet"
			i.LAN = n.p.lan4.Masked().String()
		case nodeRouter:
			i.Role = n.p.rkind.String()
			i.LAN = n.p.lan4.Masked().String()
		default:
			i.Role = "host"
		}
		if n.p.parent != nil && n.p.parent.kind != nodeInternet {
			i.Behind = n.p.parent.name
		}
		if ips := n.IPs(); len(ips) > 1 {
			var s []string
			for _, a := range ips[1:] {
				s = append(s, a.String())
			}
			i.IPs = strings.Join(s, ",")
		}
		if a := n.IPv6(); a.IsValid() {
			i.IPv6 = a.String()
		}
		if n.p.kind != nodeInternet {
			i.PublicIP = n.PublicIP().String()
		}
		if n.p.link != nil {
			i.Link = n.p.link.String()
		}
		out = append(out, i)
	}
	return out
}

// Describe renders the address plan as a table.
func (l *Lab) Describe() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tBEHIND\tIPv4\tIPv6\tLAN\tSEEN AS\tLINK\tNAMESPACE")
	for _, i := range l.Info() {
		ip := i.IP
		if i.IPs != "" {
			ip += "," + i.IPs
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i.Name, i.Role, dash(i.Behind), ip, dash(i.IPv6), dash(i.LAN), dash(i.PublicIP), dash(i.Link), i.Namespace)
	}
	tw.Flush()
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// String renders the config in ParseLinkConfig's syntax.
func (c LinkConfig) String() string {
	var parts []string
	if c.Delay > 0 {
		parts = append(parts, "delay="+c.Delay.String())
	}
	if c.Jitter > 0 {
		parts = append(parts, "jitter="+c.Jitter.String())
	}
	if c.Loss > 0 {
		parts = append(parts, "loss="+strconv.FormatFloat(c.Loss*100, 'g', -1, 64)+"%")
	}
	if c.Rate > 0 {
		parts = append(parts, "rate="+strconv.FormatInt(c.Rate, 10))
	}
	if c.Queue > 0 {
		parts = append(parts, "queue="+strconv.Itoa(c.Queue))
	}
	if len(parts) == 0 {
		return "plain"
	}
	return strings.Join(parts, ",")
}

// ParseLinkConfig parses "delay=40ms,jitter=5ms,loss=1%,rate=10mbit,queue=512".
// Loss is a percentage with "%" or a fraction without; rate takes a plain
// bit/s number or a kbit, mbit or gbit suffix.
func ParseLinkConfig(s string) (LinkConfig, error) {
	var c LinkConfig
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return c, fmt.Errorf("natlab: link setting %q: want key=value", kv)
		}
		var err error
		switch k {
		case "delay":
			c.Delay, err = time.ParseDuration(v)
		case "jitter":
			c.Jitter, err = time.ParseDuration(v)
		case "loss":
			if p, ok := strings.CutSuffix(v, "%"); ok {
				c.Loss, err = strconv.ParseFloat(p, 64)
				c.Loss /= 100
			} else {
				c.Loss, err = strconv.ParseFloat(v, 64)
			}
		case "rate":
			mult := int64(1)
			for suf, m := range map[string]int64{"kbit": 1e3, "mbit": 1e6, "gbit": 1e9} {
				if p, ok := strings.CutSuffix(strings.ToLower(v), suf); ok {
					v, mult = p, m
				}
			}
			var f float64
			f, err = strconv.ParseFloat(v, 64)
			c.Rate = int64(f * float64(mult))
		case "queue":
			c.Queue, err = strconv.Atoi(v)
		default:
			err = fmt.Errorf("unknown key (want delay, jitter, loss, rate, queue)")
		}
		if err != nil {
			return c, fmt.Errorf("natlab: link setting %q: %w", kv, err)
		}
	}
	if errs := c.validate("link"); len(errs) > 0 {
		return c, fmt.Errorf("natlab: %w", errs[0])
	}
	return c, nil
}
