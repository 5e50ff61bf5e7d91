package portmap

import (
	"fmt"
	"net/netip"
	"os"
)

// defaultGateway reads the routing table of the calling thread's network
// namespace (/proc/thread-self, Linux 3.17+), else the process's.
func defaultGateway() (netip.Addr, error) {
	f, err := os.Open("/proc/thread-self/net/route")
	if err != nil {
		f, err = os.Open("/proc/net/route")
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: read routing table: %w: %w", ErrNoGateway, err)
	}
	defer f.Close()
	return parseProcNetRoute(f)
}
