package portmap

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
)

// Search targets of an Internet Gateway Device, newest first.
var igdTargets = []string{
	"urn:schemas-upnp-org:device:InternetGatewayDevice:2",
	"urn:schemas-upnp-org:device:InternetGatewayDevice:1",
}

// mSearch is a unicast M-SEARCH (UDA 1.1 §1.3.2) for st to host. MX is
// there for gateways that demand it even of unicast searches (miniupnpd
// built with UPNP_STRICT); it lets them delay their answer up to a second.
func mSearch(host netip.AddrPort, st string) []byte {
	return []byte("M-SEARCH * HTTP/1.1\r\n" +
		"HOST: " + host.String() + "\r\n" +
		"MAN: \"ssdp:discover\"\r\n" +
		"MX: 1\r\n" +
		"ST: " + st + "\r\n\r\n")
}

// parseSSDP decodes an answer to an M-SEARCH: an HTTP/1.1 200 over UDP with
// the description's address in LOCATION. It returns that URL and the ST.
func parseSSDP(b []byte) (*url.URL, string, error) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		return nil, "", fmt.Errorf("%w: ssdp: %w", ErrMalformed, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("%w: ssdp: status %q", ErrMalformed, resp.Status)
	}
	loc := resp.Header.Get("Location")
	u, err := url.Parse(strings.TrimSpace(loc))
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, "", fmt.Errorf("%w: ssdp: LOCATION %q is not an http URL", ErrMalformed, loc)
	}
	return u, resp.Header.Get("St"), nil
}

// discover sends unicast M-SEARCHes to the gateway (never multicast) and
// returns the description URL of the first IGD that answers from the
// gateway's address with a LOCATION on the gateway itself. It retransmits
// every 500 ms until ctx ends.
func (u *upnpProto) discover(ctx context.Context) (*url.URL, error) {
	pc, err := u.c.opts.ListenPacket(ctx, "udp4", ":0")
	if err != nil {
		return nil, fmt.Errorf("portmap: upnp: ssdp socket: %w", err)
	}
	defer pc.Close()
	stop := context.AfterFunc(ctx, func() { _ = pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	dst := netip.AddrPortFrom(u.c.gw, u.c.opts.ssdpPort)
	buf := make([]byte, 2048)
	var lastSkip error
	for {
		for _, st := range igdTargets {
			if _, err := pc.WriteTo(mSearch(dst, st), net.UDPAddrFromAddrPort(dst)); err != nil {
				return nil, fmt.Errorf("portmap: upnp: send M-SEARCH to %v: %w: %w", dst, ErrNoGateway, err)
			}
		}
		if ctx.Err() == nil {
			_ = pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		}
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if ctx.Err() != nil {
					return nil, noAnswer(UPnP+" ssdp", lastSkip, ctx.Err())
				}
				break // retransmit (timeout, or ICMP unreachable)
			}
			src, _ := netip.ParseAddrPort(from.String())
			if src.Addr().Unmap() != u.c.gw {
				lastSkip = fmt.Errorf("%w: ssdp answer from %v, not the gateway", ErrForeignMapping, from)
				u.log.WithField("from", from.String()).Warn("portmap: ignored an SSDP answer from another host")
				continue
			}
			loc, st, err := parseSSDP(buf[:n])
			if err == nil && !strings.Contains(st, "InternetGatewayDevice") {
				err = fmt.Errorf("%w: ssdp: ST %q is not an Internet Gateway Device", ErrMalformed, st)
			}
			if err == nil {
				err = u.onGateway(loc)
			}
			if err != nil {
				lastSkip = err
				u.log.WithFields(logrus.Fields{"error": err}).Warn("portmap: ignored an SSDP answer")
				continue
			}
			return loc, nil
		}
	}
}

// onGateway refuses URLs that point anywhere but the gateway: a description
// or control URL elsewhere would have us send requests to another host.
func (u *upnpProto) onGateway(loc *url.URL) error {
	a, err := netip.ParseAddr(loc.Hostname())
	if err != nil || a.Unmap() != u.c.gw {
		return fmt.Errorf("%w: upnp: URL %q is not on the gateway %v", ErrForeignMapping, loc.Redacted(), u.c.gw)
	}
	return nil
}
