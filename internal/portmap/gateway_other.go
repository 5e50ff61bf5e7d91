//go:build !linux

package portmap

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// defaultGateway asks the BSD/macOS route tool ("route -n get default"),
// Windows' ("route print 0.0.0.0"), and failing those guesses .1 of the /24
// of the address the system would use toward the internet (nothing is sent).
func defaultGateway() (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "route", "-n", "get", "default").Output(); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "gateway:"); ok {
				if a, err := netip.ParseAddr(strings.TrimSpace(v)); err == nil && a.Is4() {
					return a, nil
				}
			}
		}
	}
	if out, err := exec.CommandContext(ctx, "route", "print", "0.0.0.0").Output(); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 3 && f[0] == "0.0.0.0" && f[1] == "0.0.0.0" {
				if a, err := netip.ParseAddr(f[2]); err == nil && a.Is4() {
					return a, nil
				}
			}
		}
	}
	c, err := net.Dial("udp4", "192.0.2.1:9") // TEST-NET-1: never answered, and nothing is sent
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: find default gateway: %w: %w", ErrNoGateway, err)
	}
	defer c.Close()
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil || !ap.Addr().Is4() || ap.Addr().IsLoopback() {
		return netip.Addr{}, fmt.Errorf("portmap: find default gateway: no IPv4 route: %w", ErrNoGateway)
	}
	a := ap.Addr().As4()
	a[3] = 1
	return netip.AddrFrom4(a), nil
}
