package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
)

// Default STUN ports: the primary (IANA's) and the alternate for RFC 5780
// mapping tests.
const (
	DefaultPort    = 3478
	DefaultAltPort = 3479
)

// Listeners are the sockets a STUN server answers on: UDP and TCP on each
// address.
type Listeners struct {
	UDP []net.PacketConn
	TCP []net.Listener
}

// Listen opens TCP and UDP on every address ("host:port"; port 0 picks one
// free port for both). On error it closes what it opened.
func Listen(ctx context.Context, addrs []string) (*Listeners, error) {
	ls := &Listeners{}
	var lc net.ListenConfig
	for _, a := range addrs {
		ln, err := lc.Listen(ctx, "tcp", a)
		if err != nil {
			ls.Close()
			return nil, fmt.Errorf("stun: listen tcp %s: %w", a, err)
		}
		ls.TCP = append(ls.TCP, ln)
		// Port 0: UDP takes the port TCP got, so one address serves both.
		host, _, _ := net.SplitHostPort(a)
		ua := net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		pc, err := lc.ListenPacket(ctx, "udp", ua)
		if err != nil {
			ls.Close()
			return nil, fmt.Errorf("stun: listen udp %s: %w", ua, err)
		}
		ls.UDP = append(ls.UDP, pc)
	}
	return ls, nil
}

// Addrs lists the bound addresses (one per UDP+TCP pair) for logs.
func (l *Listeners) Addrs() []string {
	out := make([]string, 0, len(l.TCP))
	for _, ln := range l.TCP {
		out = append(out, ln.Addr().String())
	}
	return out
}

// Close closes every socket.
func (l *Listeners) Close() error {
	var errs []error
	for _, pc := range l.UDP {
		errs = append(errs, pc.Close())
	}
	for _, ln := range l.TCP {
		errs = append(errs, ln.Close())
	}
	return errors.Join(errs...)
}

// Serve answers on every socket of l until ctx is done and returns when all
// of them have stopped; the first failure is returned.
func (s *Server) Serve(ctx context.Context, l *Listeners) error {
	// Every socket is known before the first answer, so OTHER-ADDRESS and
	// CHANGE-REQUEST see them all from the start.
	s.mu.Lock()
	for _, pc := range l.UDP {
		s.udp[addrPortOf(pc.LocalAddr())] = pc
	}
	for _, ln := range l.TCP {
		s.tcp[addrPortOf(ln.Addr())] = true
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	errc := make(chan error, len(l.UDP)+len(l.TCP))
	for _, pc := range l.UDP {
		wg.Go(func() { errc <- s.ServeUDP(ctx, pc) })
	}
	for _, ln := range l.TCP {
		wg.Go(func() { errc <- s.ServeTCP(ctx, ln) })
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// DefaultAddrs returns where a STUN server listens next to a service on
// host: both default ports on host when it is specific; with a wildcard host,
// both ports on each of the first two global unicast IPv4 addresses when the
// machine has two (so RFC 5780 tests can change address), else on the
// wildcard.
func DefaultAddrs(host string) []string {
	ports := []string{strconv.Itoa(DefaultPort), strconv.Itoa(DefaultAltPort)}
	hosts := []string{host}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		if ips := GlobalIPv4s(); len(ips) >= 2 {
			hosts = []string{ips[0].String(), ips[1].String()}
		}
	}
	var out []string
	for _, h := range hosts {
		for _, p := range ports {
			out = append(out, net.JoinHostPort(h, p))
		}
	}
	return out
}

// GlobalIPv4s lists the global unicast IPv4 addresses of up, non-loopback
// interfaces. It looks at the interfaces only: no packet is sent to find out.
func GlobalIPv4s() []netip.Addr {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && n.IP.To4() != nil && ip.IsGlobalUnicast() {
					out = append(out, ip)
				}
			}
		}
	}
	return out
}
