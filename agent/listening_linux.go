package agent

import (
	"bufio"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// tcpListening tells, from the kernel's socket tables, whether a TCP
// listener on this host takes connections to target; known is false where
// it cannot tell (a name, another host's address). Unlike a test dial it
// leaves the target alone: a server must not see connections nobody made.
func tcpListening(target string) (listening, known bool) {
	ap, err := netip.ParseAddrPort(target)
	if err != nil || !isLocal(ap.Addr()) {
		return false, false
	}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			return false, false
		}
		found := listensIn(bufio.NewScanner(f), ap)
		f.Close()
		if found {
			return true, true
		}
	}
	return false, true
}

// listensIn scans a /proc/net/tcp table for a listener that takes
// connections to ap: on its address, or on the unspecified one.
func listensIn(sc *bufio.Scanner, ap netip.AddrPort) bool {
	const listen = "0A"
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != listen {
			continue
		}
		local, ok := parseProcAddr(f[1])
		if !ok || local.Port() != ap.Port() {
			continue
		}
		a := local.Addr().Unmap()
		if a == ap.Addr().Unmap() || a.IsUnspecified() {
			return true
		}
	}
	return false
}

// parseProcAddr reads "0100007F:1F90": the address as the kernel stores
// it, 32-bit words in host order (little-endian here), and the port.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	b, err := hex.DecodeString(hexIP)
	port, perr := strconv.ParseUint(hexPort, 16, 16)
	if !ok || err != nil || perr != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a, uint16(port)), true
}

// isLocal: a loopback address or one of this host's.
func isLocal(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a.Unmap() {
				return true
			}
		}
	}
	return false
}
