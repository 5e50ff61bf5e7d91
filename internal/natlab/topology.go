package natlab

import (
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Kind is what a router does to the traffic it forwards.
type Kind int

const (
	// Cone is a NAT with endpoint-independent mapping (nftables masquerade,
	// port kept when free) that drops new inbound connections.
	Cone Kind = iota + 1
	// Symmetric is a NAT that picks a new random port per destination
	// (masquerade random,fully-random) and drops new inbound connections.
	Symmetric
	// Firewall forwards without translation and drops new inbound connections.
	Firewall
)

func (k Kind) String() string {
	switch k {
	case Cone:
		return "cone"
	case Symmetric:
		return "symmetric"
	case Firewall:
		return "firewall"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// IsNAT reports whether the router translates IPv4 addresses.
func (k Kind) IsNAT() bool { return k == Cone || k == Symmetric }

// Topology declares a lab. Hosts and routers sit on the internet (Behind == "")
// or on the LAN of a router.
type Topology struct {
	Name    string
	IPv6    bool // dual-stack: every segment also gets an IPv6 /64
	Routers []RouterSpec
	Hosts   []HostSpec
}

// RouterSpec declares a NAT or firewall.
type RouterSpec struct {
	Name   string
	Kind   Kind
	Behind string      // "" for the internet, else the name of another router
	Link   *LinkConfig // if set, the router's uplink is an impaired userspace link
	Egress *Egress     // if set, what the router lets out of its LAN (see Egress); nil: everything
}

// HostSpec declares an end host.
type HostSpec struct {
	Name     string
	Behind   string      // "" for a public host on the internet, else a router name
	ExtraIPs int         // additional IPv4 addresses from the same segment (e.g. a STUN server's second address)
	Link     *LinkConfig // if set, the host's uplink is an impaired userspace link
}

// LinkConfig describes a userspace WAN link. Delay and jitter apply to each
// direction, so a round trip grows by 2*Delay. Loss drops that share of the
// frames in each direction. Rate caps each direction in bits per second
// (0: no cap). Queue bounds the frames waiting in each direction (0: 1024);
// frames beyond it are dropped, as are frames that would wait more than
// MaxQueueDelay (0: 500ms) for the rate cap.
type LinkConfig struct {
	Delay         time.Duration
	Jitter        time.Duration
	Loss          float64
	Rate          int64
	Queue         int
	MaxQueueDelay time.Duration
}

// InternetName is the reserved name of the root segment's namespace.
const InternetName = "inet"

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,19}$`)

// Validate reports every problem in the topology at once.
func (t Topology) Validate() error {
	var errs []error
	seen := map[string]string{InternetName: "reserved"}
	check := func(path, name string) {
		if !nameRE.MatchString(name) {
			errs = append(errs, fmt.Errorf("%s.name: %q must match %s", path, name, nameRE))
			return
		}
		if what, ok := seen[name]; ok {
			errs = append(errs, fmt.Errorf("%s.name: %q already used (%s)", path, name, what))
			return
		}
		seen[name] = path
	}
	routers := map[string]RouterSpec{}
	for i, r := range t.Routers {
		p := fmt.Sprintf("routers[%d]", i)
		check(p, r.Name)
		routers[r.Name] = r
		if r.Kind < Cone || r.Kind > Firewall {
			errs = append(errs, fmt.Errorf("%s.kind: unknown kind %d", p, int(r.Kind)))
		}
		errs = append(errs, r.Link.validate(p+".link")...)
	}
	for i, r := range t.Routers {
		p := fmt.Sprintf("routers[%d].behind", i)
		if r.Behind == "" {
			continue
		}
		if _, ok := routers[r.Behind]; !ok {
			errs = append(errs, fmt.Errorf("%s: no router named %q", p, r.Behind))
			continue
		}
		// Walk up; a cycle never reaches the internet.
		cur, steps := r, 0
		for cur.Behind != "" && steps <= len(t.Routers) {
			cur = routers[cur.Behind]
			steps++
		}
		if steps > len(t.Routers) {
			errs = append(errs, fmt.Errorf("%s: routers form a cycle", p))
		}
	}
	for i, h := range t.Hosts {
		p := fmt.Sprintf("hosts[%d]", i)
		check(p, h.Name)
		if h.Behind != "" {
			if _, ok := routers[h.Behind]; !ok {
				errs = append(errs, fmt.Errorf("%s.behind: no router named %q", p, h.Behind))
			}
		}
		if h.ExtraIPs < 0 || h.ExtraIPs > 8 {
			errs = append(errs, fmt.Errorf("%s.extraIPs: %d out of range 0..8", p, h.ExtraIPs))
		}
		errs = append(errs, h.Link.validate(p+".link")...)
	}
	for i, r := range t.Routers {
		errs = append(errs, r.Egress.validate(fmt.Sprintf("routers[%d].egress", i), r.Name, t.Hosts)...)
	}
	if len(errs) == 0 {
		if _, err := planAddresses(t); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("natlab: invalid topology %q: %w", t.Name, err)
	}
	return nil
}

func (c *LinkConfig) validate(path string) []error {
	if c == nil {
		return nil
	}
	var errs []error
	if c.Delay < 0 || c.Delay > 10*time.Second {
		errs = append(errs, fmt.Errorf("%s.delay: %v out of range 0..10s", path, c.Delay))
	}
	if c.Jitter < 0 || c.Jitter > 10*time.Second {
		errs = append(errs, fmt.Errorf("%s.jitter: %v out of range 0..10s", path, c.Jitter))
	}
	if c.Loss < 0 || c.Loss > 1 {
		errs = append(errs, fmt.Errorf("%s.loss: %v out of range 0..1", path, c.Loss))
	}
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("%s.rate: %d must not be negative", path, c.Rate))
	}
	if c.Rate > 0 && c.Rate < 64000 {
		errs = append(errs, fmt.Errorf("%s.rate: %d bit/s too small (min 64000)", path, c.Rate))
	}
	if c.Queue < 0 || c.Queue > 1<<16 {
		errs = append(errs, fmt.Errorf("%s.queue: %d out of range 0..65536", path, c.Queue))
	}
	if c.MaxQueueDelay < 0 {
		errs = append(errs, fmt.Errorf("%s.maxQueueDelay: %v must not be negative", path, c.MaxQueueDelay))
	}
	return errs
}
