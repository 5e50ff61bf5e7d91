package portmap

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
	"github.com/sirupsen/logrus"
	"golang.org/x/net/html/charset"
)

// maxHTTPBody bounds a description or SOAP answer we read.
const maxHTTPBody = 1 << 20

// igd is the part of a WAN connection service we use; goupnp's
// WANIPConnection2, WANIPConnection1 and WANPPPConnection1 clients all have
// it.
type igd interface {
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
	AddPortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string, intPort uint16, intClient string, enabled bool, desc string, lease uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string) error
	GetSpecificPortMappingEntryCtx(ctx context.Context, remoteHost string, extPort uint16, proto string) (intPort uint16, intClient string, enabled bool, desc string, lease uint32, err error)
}

// igdService is one WAN connection service of the gateway.
type igdService struct {
	kind string // "WANIPConnection:2", ...
	igd
}

// UPnP error codes we act on (IGD WANIPConnection:2 §2.4.16).
const (
	upnpConflict      = 718 // ConflictInMappingEntry
	upnpOnlyPermanent = 725 // OnlyPermanentLeasesSupported
)

// upnpProto is UPnP IGD: SSDP discovery on the gateway, then SOAP.
type upnpProto struct {
	c    *Client
	log  logrus.FieldLogger
	http *http.Client

	mu       sync.Mutex
	services []igdService // cached after discovery; dropped when a call fails
}

func newUPnP(c *Client, log logrus.FieldLogger) *upnpProto {
	tr := &http.Transport{
		Proxy:             nil, // the gateway is on our LAN; never via a proxy
		DialContext:       c.opts.Dial,
		DisableKeepAlives: true, // a request now and then: no idle connections left behind
	}
	return &upnpProto{c: c, log: log, http: &http.Client{
		Transport: limitBody{tr},
		Timeout:   c.opts.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("portmap: upnp: redirect refused")
		},
	}}
}

// limitBody bounds every answer body to maxHTTPBody.
type limitBody struct{ rt http.RoundTripper }

func (l limitBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, maxHTTPBody), resp.Body}
	return resp, nil
}

func (u *upnpProto) name() string { return UPnP }

// serviceList discovers the gateway's WAN connection services, or returns
// those found before.
func (u *upnpProto) serviceList(ctx context.Context) ([]igdService, error) {
	u.mu.Lock()
	s := u.services
	u.mu.Unlock()
	if s != nil {
		return s, nil
	}
	loc, err := u.discover(ctx)
	if err != nil {
		return nil, err
	}
	root, err := u.describe(ctx, loc)
	if err != nil {
		return nil, err
	}
	s, err = u.servicesOf(root, loc)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	u.services = s
	u.mu.Unlock()
	return s, nil
}

func (u *upnpProto) forget() {
	u.mu.Lock()
	u.services = nil
	u.mu.Unlock()
}

// describe fetches and decodes the root device description (what
// goupnp.DeviceByURLCtx does, with our HTTP client).
func (u *upnpProto) describe(ctx context.Context, loc *url.URL) (*goupnp.RootDevice, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("portmap: upnp: description %s: %w", loc.Redacted(), err)
	}
	resp, err := u.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("portmap: upnp: description: %w: %w", ErrNoGateway, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("portmap: upnp: description %s: %w: HTTP %s", loc.Redacted(), ErrMalformed, resp.Status)
	}
	root := new(goupnp.RootDevice)
	dec := xml.NewDecoder(resp.Body)
	dec.DefaultSpace = goupnp.DeviceXMLNamespace
	dec.CharsetReader = charset.NewReaderLabel
	if err := dec.Decode(root); err != nil {
		return nil, fmt.Errorf("portmap: upnp: description %s: %w: %w", loc.Redacted(), ErrMalformed, err)
	}
	base := loc
	if root.URLBaseStr != "" {
		if base, err = url.Parse(root.URLBaseStr); err != nil {
			return nil, fmt.Errorf("portmap: upnp: URLBase %q: %w: %w", root.URLBaseStr, ErrMalformed, err)
		}
	}
	root.SetURLBase(base)
	return root, nil
}

// servicesOf returns the WAN connection services of root, newest kind first,
// whose control URL is on the gateway; each sends its SOAP with our client.
func (u *upnpProto) servicesOf(root *goupnp.RootDevice, loc *url.URL) ([]igdService, error) {
	var out []igdService
	add := func(kind string, sc *goupnp.ServiceClient, c igd) {
		if err := u.onGateway(&sc.SOAPClient.EndpointURL); err != nil {
			u.log.WithField("error", err).Warn("portmap: ignored a UPnP service")
			return
		}
		sc.SOAPClient.HTTPClient = *u.http
		out = append(out, igdService{kind: kind, igd: c})
	}
	if cs, err := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc); err == nil {
		for _, c := range cs {
			add("WANIPConnection:2", &c.ServiceClient, c)
		}
	}
	if cs, err := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc); err == nil {
		for _, c := range cs {
			add("WANIPConnection:1", &c.ServiceClient, c)
		}
	}
	if cs, err := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc); err == nil {
		for _, c := range cs {
			add("WANPPPConnection:1", &c.ServiceClient, c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("portmap: upnp: %s has no WAN connection service on the gateway: %w", loc.Redacted(), ErrUnsupported)
	}
	return out, nil
}

// externalIP asks s for the external address. An empty or unparsable one is
// reported as unspecified: gateways that are "not connected" say so (and
// miniupnpd without a public address), yet may still map.
func (u *upnpProto) externalIP(ctx context.Context, s igdService) (netip.Addr, error) {
	str, err := s.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: upnp %s GetExternalIPAddress: %w", s.kind, soapErr(err))
	}
	a, perr := netip.ParseAddr(strings.TrimSpace(str))
	if perr != nil {
		u.log.WithFields(logrus.Fields{"service": s.kind, "address": str}).Info("portmap: UPnP gateway reports no usable external address")
		return netip.IPv4Unspecified(), nil
	}
	return a.Unmap(), nil
}

// We do not ask GetStatusInfo: a gateway may call itself not Connected
// (miniupnpd whose WAN address is private; libminiupnpc's UPNP_GetValidIGD
// then returns 2) and still map. What counts is that mapping works.

func (u *upnpProto) probe(ctx context.Context) (netip.Addr, error) {
	ss, err := u.serviceList(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	var errs []error
	for _, s := range ss {
		a, err := u.externalIP(ctx, s)
		if err == nil {
			return a, nil
		}
		errs = append(errs, err)
	}
	u.forget()
	return netip.Addr{}, errors.Join(errs...)
}

func (u *upnpProto) mapPort(ctx context.Context, internal netip.AddrPort, lease time.Duration, prev *Mapping) (Mapping, error) {
	ss, err := u.serviceList(ctx)
	if err != nil {
		return Mapping{}, err
	}
	want := internal.Port()
	if prev != nil && prev.External.Port() != 0 {
		want = prev.External.Port()
	}
	var errs []error
	for _, s := range ss {
		m, err := u.mapWith(ctx, s, internal, want, lease)
		if err == nil {
			return m, nil
		}
		errs = append(errs, err)
		if errors.Is(err, ErrForeignMapping) || ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() == nil {
		u.forget() // rediscover next time: the gateway may have restarted
	}
	return Mapping{}, fmt.Errorf("portmap: upnp map tcp %v: %w", internal, errors.Join(errs...))
}

// mapWith maps internal on s, at external port want if free, else at a port
// the gateway picks (IGDv2 AddAnyPortMapping) or a random one, and checks
// the gateway's table says the mapping is ours.
func (u *upnpProto) mapWith(ctx context.Context, s igdService, internal netip.AddrPort, want uint16, lease time.Duration) (Mapping, error) {
	ext, err := u.externalIP(ctx, s)
	if err != nil {
		return Mapping{}, err
	}
	client := internal.Addr().String()
	secs := seconds(lease)
	add := func(port uint16) error {
		err := s.AddPortMappingCtx(ctx, "", port, "TCP", internal.Port(), client, true, u.c.opts.Description, secs)
		if upnpCode(err) == upnpOnlyPermanent {
			// IGDv1 gateways may only take permanent mappings: we still
			// "renew" them, and delete them on Close.
			secs = 0
			err = s.AddPortMappingCtx(ctx, "", port, "TCP", internal.Port(), client, true, u.c.opts.Description, 0)
		}
		return err
	}
	port := want
	err = add(port)
	for try := 0; upnpCode(err) == upnpConflict && try < 3; try++ {
		if v2, ok := s.igd.(*internetgateway2.WANIPConnection2); ok && try == 0 {
			var got uint16
			got, err = v2.AddAnyPortMappingCtx(ctx, "", port, "TCP", internal.Port(), client, true, u.c.opts.Description, secs)
			if err == nil {
				port = got
				break
			}
			continue
		}
		port = uint16(1024 + rand.IntN(65535-1024))
		err = add(port)
	}
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: upnp %s AddPortMapping %d: %w", s.kind, port, soapErr(err))
	}
	granted := time.Duration(secs) * time.Second
	iport, iclient, _, _, elease, err := s.GetSpecificPortMappingEntryCtx(ctx, "", port, "TCP")
	switch {
	case err != nil:
		// Not every gateway implements it; the add succeeded for us.
		u.log.WithFields(logrus.Fields{"service": s.kind, "error": err}).Debug("portmap: GetSpecificPortMappingEntry failed; trusting AddPortMapping")
	default:
		a, perr := netip.ParseAddr(strings.TrimSpace(iclient))
		if perr != nil || a.Unmap() != internal.Addr() || iport != internal.Port() {
			err := fmt.Errorf("portmap: upnp %s: external port %d maps to %s:%d, not to us (%v): %w", s.kind, port, iclient, iport, internal, ErrForeignMapping)
			u.log.WithField("error", err).Warn("portmap: refused a UPnP mapping for another host")
			return Mapping{}, err
		}
		if elease > 0 {
			granted = time.Duration(elease) * time.Second
		}
	}
	if granted == 0 {
		granted = lease // permanent: renewed on our schedule anyway
	}
	return Mapping{
		Protocol: UPnP,
		External: netip.AddrPortFrom(ext, port),
		Internal: internal,
		Lease:    granted,
		Expires:  u.c.opts.Clock.Now().Add(granted),
	}, nil
}

func (u *upnpProto) unmap(ctx context.Context, m Mapping) error {
	ss, err := u.serviceList(ctx)
	if err != nil {
		return fmt.Errorf("portmap: upnp delete %v: %w", m.External, err)
	}
	var errs []error
	for _, s := range ss {
		err := s.DeletePortMappingCtx(ctx, "", m.External.Port(), "TCP")
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", s.kind, soapErr(err)))
	}
	return fmt.Errorf("portmap: upnp delete %v: %w", m.External, errors.Join(errs...))
}

// upnpCode returns the UPnP error code of a SOAP fault, or 0.
func upnpCode(err error) int {
	var f *soap.SOAPFaultError
	if errors.As(err, &f) {
		return f.Detail.UPnPError.Errorcode
	}
	return 0
}

// soapErr makes a SOAP fault a GatewayError (so it wraps ErrRefused) and
// marks transport failures as the gateway not answering.
func soapErr(err error) error {
	var f *soap.SOAPFaultError
	if errors.As(err, &f) {
		code := f.Detail.UPnPError.Errorcode
		return &GatewayError{Protocol: UPnP, Code: code, Text: strings.TrimSpace(f.Detail.UPnPError.ErrorDescription), unsupported: code == 401}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "performing SOAP HTTP request") {
		return fmt.Errorf("%w: %w", ErrNoGateway, err)
	}
	return fmt.Errorf("%w: %w", ErrMalformed, err)
}
