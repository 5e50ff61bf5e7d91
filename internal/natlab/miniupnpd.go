package natlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// MiniUPnPdConfig configures the real miniupnpd (Debian package
// miniupnpd-nftables) started on a NAT router with StartMiniUPnPd. The zero
// value serves UPnP IGD, NAT-PMP and PCP to the router's LAN.
type MiniUPnPdConfig struct {
	// HTTPPort is the UPnP HTTP port on the router's LAN address; 0: 2189.
	HTTPPort int
	// NoUPnP turns UPnP IGD off; NoNATPMP turns NAT-PMP and PCP off.
	NoUPnP, NoNATPMP bool
	// MinLifetime and MaxLifetime bound the PCP lifetimes granted; 0:
	// miniupnpd's own (120 s and 86400 s).
	MinLifetime, MaxLifetime time.Duration
}

// MiniUPnPdPath finds the miniupnpd binary: on PATH, else where Debian puts
// it (/usr/sbin, off a non-root PATH).
func MiniUPnPdPath() (string, error) {
	if bin, err := lookPath("miniupnpd"); err == nil {
		return bin, nil
	}
	const debian = "/usr/sbin/miniupnpd"
	if _, err := os.Stat(debian); err != nil {
		return "", errors.New("miniupnpd not installed; apt-get install miniupnpd-nftables")
	}
	return debian, nil
}

// RequireMiniUPnPd is Require for a test that also runs miniupnpd: it
// skips without it, or fails when PEERPORT_LAB=required.
func RequireMiniUPnPd(t testing.TB) {
	t.Helper()
	Require(t)
	if _, err := MiniUPnPdPath(); err != nil {
		if os.Getenv(EnvRequired) == "required" {
			t.Fatalf("%v (%s=required)", err, EnvRequired)
		}
		t.Skip(err)
	}
}

// DefaultMiniUPnPdHTTPPort is the UPnP HTTP port when HTTPPort is 0.
const DefaultMiniUPnPdHTTPPort = 2189

// MiniUPnPd is a running miniupnpd. The lab stops it at Close, like every Proc.
type MiniUPnPd struct {
	// Proc is the miniupnpd process; its stdout is miniupnpd's log (stderr
	// joined in).
	Proc *Proc
	// External is the external address miniupnpd learnt over STUN: the
	// router's own WAN address.
	External netip.Addr
	// HTTP is the UPnP HTTP address (router's LAN address, HTTPPort).
	HTTP   netip.AddrPort
	router *Node
}

// Redirect is one port forwarding in miniupnpd's nftables table.
type Redirect struct {
	Proto        string // "tcp" or "udp"
	ExternalPort uint16
	Internal     netip.AddrPort
}

// miniupnpdTable is the table StartMiniUPnPd creates for miniupnpd: Debian's
// miniupnpd-nftables creates none (its nft_init.sh sources a
// miniupnpd_functions.sh the package does not ship), so we do, with the
// chains miniupnpd 2.3 fills and accepting policies: the lab's own table
// decides what passes.
const miniupnpdTable = `table inet miniupnpd {
	chain forward {
		type filter hook forward priority filter; policy accept;
		jump miniupnpd
	}
	chain miniupnpd {
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		jump postrouting_miniupnpd
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
}
`

// StartMiniUPnPd starts the real miniupnpd on a NAT router, serving its LAN,
// in the foreground (-d), and returns once it accepts HTTP and has enabled
// port forwarding. Beforehand it
//
//   - creates table inet miniupnpd (see miniupnpdTable);
//   - lets the router forward new inbound connections that a miniupnpd
//     redirect translated (ct status dnat) past the lab's inbound drop;
//   - starts a STUN server on the lab's internet router (203.0.113.1) and
//     points miniupnpd at it: miniupnpd refuses to forward on a reserved WAN
//     address, which every lab address is (203.0.113.0/24 is TEST-NET-3),
//     unless STUN says it is the public address and no NAT or filter is in
//     the way. The server ignores CHANGE-REQUEST (it answers every request
//     from the one address asked), since miniupnpd counts a missing answer
//     as a restrictive NAT;
//   - exempts the router's own traffic from its NAT (a symmetric NAT's
//     fully-random masquerade would renumber miniupnpd's STUN source ports,
//     which it takes for a symmetric NAT above it). SetNAT drops that
//     exemption along with the old NAT table.
//
// The STUN server stops and the config directory goes when miniupnpd exits.
func (n *Node) StartMiniUPnPd(ctx context.Context, cfg MiniUPnPdConfig) (*MiniUPnPd, error) {
	if n.p.kind != nodeRouter || !n.p.rkind.IsNAT() {
		return nil, fmt.Errorf("natlab: start miniupnpd on %s: not a NAT router", n)
	}
	bin, err := MiniUPnPdPath()
	if err != nil {
		return nil, fmt.Errorf("natlab: start miniupnpd on %s: %w", n, err)
	}
	port := cfg.HTTPPort
	if port == 0 {
		port = DefaultMiniUPnPdHTTPPort
	}
	wan := n.IP()
	rules := miniupnpdTable +
		"insert rule inet natlab forward iifname \"wan0\" ct status dnat accept\n" +
		"insert rule ip " + natTable + " postrouting oifname \"wan0\" ip saddr " + wan.String() + " accept\n"
	if _, err := nsExec(ctx, n.ns, rules, "nft", "-f", "-"); err != nil {
		return nil, fmt.Errorf("natlab: start miniupnpd on %s: nft: %w", n, err)
	}
	inet := n.lab.Internet()
	pc, err := inet.ListenPacket("udp4", netip.AddrPortFrom(inet.IP(), 0).String())
	if err != nil {
		return nil, fmt.Errorf("natlab: start miniupnpd on %s: stun server: %w", n, err)
	}
	stunAddr := netip.MustParseAddrPort(pc.LocalAddr().String())
	go serveSTUN(pc)
	dir, err := os.MkdirTemp("", "natlab-miniupnpd-")
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("natlab: start miniupnpd on %s: %w", n, err)
	}
	conf := cfg.render(n, port, stunAddr, dir)
	path := filepath.Join(dir, "miniupnpd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		pc.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("natlab: start miniupnpd on %s: %w", n, err)
	}
	// miniupnpd -d logs to stderr; joined into stdout, Expect sees it.
	p, err := n.StartCommand(ctx, Command{Path: "sh", Args: []string{"-c", `exec "$0" "$@" 2>&1`, bin, "-d", "-f", path, "-P", filepath.Join(dir, "miniupnpd.pid")}})
	if err != nil {
		pc.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	go func() {
		_ = p.Wait(context.Background())
		pc.Close()
		os.RemoveAll(dir)
	}()
	m := &MiniUPnPd{Proc: p, HTTP: netip.AddrPortFrom(n.LANIP(), uint16(port)), router: n}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := m.waitReady(wctx, wan); err != nil {
		_ = p.Stop()
		return nil, fmt.Errorf("natlab: start miniupnpd on %s: %w; its log:\n%s", n, err, p.Stdout())
	}
	return m, nil
}

// waitReady reads miniupnpd's log until STUN enabled forwarding, then waits
// for its HTTP port.
func (m *MiniUPnPd) waitReady(ctx context.Context, wan netip.Addr) error {
	for {
		line, err := m.Proc.ReadLine(ctx)
		if err != nil {
			return fmt.Errorf("waiting for \"Port forwarding is now enabled\": %w", err)
		}
		if strings.Contains(line, "Port forwarding is now disabled") || strings.Contains(line, "EXITING") {
			return fmt.Errorf("miniupnpd: %s", line)
		}
		if strings.Contains(line, "Port forwarding is now enabled") {
			break
		}
	}
	m.External = wan
	for {
		c, err := m.router.DialWith(ctx, &net.Dialer{Timeout: time.Second}, "tcp", m.HTTP.String())
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for HTTP on %v: %w", m.HTTP, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop stops miniupnpd (also done by the lab's Close).
func (m *MiniUPnPd) Stop() error { return m.Proc.Stop() }

var redirectRE = regexp.MustCompile(`\b(tcp|udp)?\s*dport (\d+)\b.*\bdnat (?:ip )?to ([0-9.]+):(\d+)`)

// Redirects lists the port forwardings in miniupnpd's nat chain.
func (m *MiniUPnPd) Redirects(ctx context.Context) ([]Redirect, error) {
	out, err := nsExec(ctx, m.router.ns, "", "nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd")
	if err != nil {
		return nil, fmt.Errorf("natlab: list miniupnpd redirects on %s: %w", m.router, err)
	}
	var rs []Redirect
	for _, line := range strings.Split(string(out), "\n") {
		f := redirectRE.FindStringSubmatch(line)
		if f == nil {
			continue
		}
		eport, _ := strconv.ParseUint(f[2], 10, 16)
		ip, err1 := netip.ParseAddr(f[3])
		iport, err2 := strconv.ParseUint(f[4], 10, 16)
		if err1 != nil || err2 != nil {
			continue
		}
		proto := f[1]
		if proto == "" {
			proto = "tcp"
			if strings.Contains(line, " 0x11 ") || strings.Contains(line, "udp") {
				proto = "udp"
			}
		}
		rs = append(rs, Redirect{Proto: proto, ExternalPort: uint16(eport), Internal: netip.AddrPortFrom(ip, uint16(iport))})
	}
	return rs, nil
}

// RulesText returns miniupnpd's whole nftables table as nft prints it.
func (m *MiniUPnPd) RulesText(ctx context.Context) (string, error) {
	out, err := nsExec(ctx, m.router.ns, "", "nft", "list", "table", "inet", "miniupnpd")
	if err != nil {
		return "", fmt.Errorf("natlab: list table inet miniupnpd on %s: %w", m.router, err)
	}
	return string(out), nil
}

func (cfg MiniUPnPdConfig) render(n *Node, port int, stunAddr netip.AddrPort, dir string) string {
	yesNo := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	var uuid [16]byte
	_, _ = rand.Read(uuid[:])
	u := hex.EncodeToString(uuid[:])
	lan := n.p.lan4
	var b strings.Builder
	fmt.Fprintf(&b, "ext_ifname=wan0\nlistening_ip=lan0\nhttp_port=%d\n", port)
	fmt.Fprintf(&b, "enable_upnp=%s\nenable_natpmp=%s\n", yesNo(!cfg.NoUPnP), yesNo(!cfg.NoNATPMP))
	fmt.Fprintf(&b, "ext_perform_stun=yes\next_stun_host=%s\next_stun_port=%d\n", stunAddr.Addr(), stunAddr.Port())
	b.WriteString("upnp_table_name=miniupnpd\nupnp_nat_table_name=miniupnpd\nupnp_forward_chain=miniupnpd\n" +
		"upnp_nat_chain=prerouting_miniupnpd\nupnp_nat_postrouting_chain=postrouting_miniupnpd\n")
	b.WriteString("secure_mode=yes\nsystem_uptime=yes\nnotify_interval=60\nclean_ruleset_interval=600\n")
	fmt.Fprintf(&b, "uuid=%s-%s-%s-%s-%s\n", u[0:8], u[8:12], u[12:16], u[16:20], u[20:32])
	fmt.Fprintf(&b, "lease_file=%s\n", filepath.Join(dir, "upnp.leases"))
	if cfg.MinLifetime > 0 {
		fmt.Fprintf(&b, "min_lifetime=%d\n", int(cfg.MinLifetime/time.Second))
	}
	if cfg.MaxLifetime > 0 {
		fmt.Fprintf(&b, "max_lifetime=%d\n", int(cfg.MaxLifetime/time.Second))
	}
	fmt.Fprintf(&b, "allow 1024-65535 %s 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n", lan.Masked())
	return b.String()
}

// serveSTUN answers STUN Binding requests on pc with the source address as
// XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS) until pc is closed. It ignores
// CHANGE-REQUEST: see StartMiniUPnPd.
func serveSTUN(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		var req stun.Message
		req.Raw = append([]byte(nil), buf[:n]...)
		if req.Decode() != nil || req.Type != stun.BindingRequest {
			continue
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: ua.IP, Port: ua.Port}, &stun.MappedAddress{IP: ua.IP, Port: ua.Port})
		if err != nil {
			continue
		}
		_, _ = pc.WriteTo(resp.Raw, from)
	}
}
