package punch

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/peerport/peerport/internal/nat"
)

// Listen listens on local ("host:port"; ":0" for every address and a free
// port) with SO_REUSEADDR + SO_REUSEPORT, so the same port can dial out.
func Listen(ctx context.Context, exec nat.Exec, local string) (net.Listener, error) {
	lc := net.ListenConfig{Control: nat.ReusePort}
	var ln net.Listener
	err := exec.Run(func() (err error) {
		ln, err = lc.Listen(ctx, "tcp", local)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("punch: listen %s: %w", local, err)
	}
	return ln, nil
}

// Dial connects to remote from local (an address listening via Listen) with
// SO_REUSEADDR + SO_REUSEPORT. An unspecified local address leaves the source
// address to the routing table but keeps the port.
func Dial(ctx context.Context, exec nat.Exec, local, remote netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Control: nat.ReusePort}
	la := &net.TCPAddr{Port: int(local.Port())}
	if !local.Addr().IsUnspecified() {
		la.IP = local.Addr().AsSlice()
	}
	d.LocalAddr = la
	var c net.Conn
	err := exec.Run(func() (err error) {
		c, err = d.DialContext(ctx, "tcp", remote.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("punch: dial %s from port %d: %w", remote, local.Port(), err)
	}
	return c, nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
