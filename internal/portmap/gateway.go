package portmap

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultGateway returns the IPv4 default gateway of this machine's network
// namespace (of the calling OS thread, on Linux): from the routing table on
// Linux, and elsewhere by asking the system's route tool, else guessing .1
// of our own /24 (see gateway_other.go). No default route is ErrNoGateway.
func DefaultGateway() (netip.Addr, error) { return defaultGateway() }

// rtfGateway is RTF_GATEWAY of /proc/net/route's Flags column.
const rtfGateway = 0x2

// parseProcNetRoute picks the default route with the lowest metric from a
// Linux /proc/net/route table:
//
//	Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
//	eth0  00000000    0101000A 0003 0 0 0 00000000 0 0 0
//
// Addresses are hexadecimal in host (little-endian) byte order.
func parseProcNetRoute(r io.Reader) (netip.Addr, error) {
	sc := bufio.NewScanner(r)
	best, bestMetric := netip.Addr{}, uint64(1<<64-1)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue // header
		}
		f := strings.Fields(sc.Text())
		if len(f) < 8 || f[1] != "00000000" || f[7] != "00000000" {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil || flags&rtfGateway == 0 {
			continue
		}
		gw, err := hex.DecodeString(f[2])
		if err != nil || len(gw) != 4 {
			continue
		}
		metric, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			continue
		}
		var a [4]byte
		binary.LittleEndian.PutUint32(a[:], binary.BigEndian.Uint32(gw))
		if addr := netip.AddrFrom4(a); metric < bestMetric && !addr.IsUnspecified() {
			best, bestMetric = addr, metric
		}
	}
	if err := sc.Err(); err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: read routing table: %w", err)
	}
	if !best.IsValid() {
		return netip.Addr{}, fmt.Errorf("portmap: no IPv4 default route: %w", ErrNoGateway)
	}
	return best, nil
}
