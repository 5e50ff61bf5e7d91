package portmap

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

// The decoders of everything a gateway sends us. None may panic; what they
// accept must be self-consistent. Seed corpora are in testdata/fuzz.

func FuzzPCP(f *testing.F) {
	req := pcpRequest{op: pcpOpMap, lifetime: 7200, client: loopback, nonce: [12]byte{9}, proto: protoTCP, internal: 80}
	f.Add(encodePCP(pcpGrant(req, extIP, 7200)))
	f.Add(encodePCP(pcpResponse{op: pcpOpAnnounce}))
	f.Add(append(encodePCP(pcpGrant(req, extIP, 1)), 1, 0, 0, 4, 1, 2, 3, 4))
	f.Add([]byte{0, 129, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePCP(b)
		if err != nil {
			return
		}
		if len(b) < pcpHeaderLen || len(b) > pcpMaxLen || len(b)%4 != 0 {
			t.Fatalf("accepted %d bytes", len(b))
		}
		if r.op == pcpOpMap && r.result == 0 {
			if !r.external.Addr().IsValid() {
				t.Fatal("successful MAP without an external address")
			}
			// Re-encoding what was decoded decodes the same.
			back, err := parsePCP(encodePCP(r))
			if err != nil || back != r {
				t.Fatalf("round trip %+v -> %+v, %v", r, back, err)
			}
		}
	})
}

func FuzzNATPMP(f *testing.F) {
	f.Add(encodePMPAddress(0, extIP))
	f.Add(encodePMPMap(0, 80, 8080, 7200))
	f.Add(encodePMPMap(2, 80, 0, 0)[:8])
	f.Add([]byte{0, 2, 0, 0, 0, 80, 0, 80, 0, 0, 28, 32})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePMP(b)
		if err != nil {
			return
		}
		if r.op > 2 || len(b) < 8 {
			t.Fatalf("accepted op %d, %d bytes", r.op, len(b))
		}
		if r.result == 0 && r.op == pmpOpAddress && !r.external.Is4() {
			t.Fatal("address answer without an IPv4 address")
		}
		if r.result == 0 && r.op == pmpOpMapTCP {
			back, err := parsePMP(encodePMPMap(0, r.internal, r.mapped, r.lifetime))
			if err != nil || back.internal != r.internal || back.mapped != r.mapped || back.lifetime != r.lifetime {
				t.Fatalf("round trip %+v -> %+v, %v", r, back, err)
			}
		}
	})
}

func FuzzSSDP(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://10.0.1.1:2189/rootDesc.xml\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nLocation: http://[::1]:80/\r\n\r\n"))
	f.Add([]byte("NOTIFY * HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, _, err := parseSSDP(b)
		if err != nil {
			return
		}
		if u.Scheme != "http" || u.Host == "" {
			t.Fatalf("accepted LOCATION %v", u)
		}
		// onGateway must not panic on whatever host it holds.
		p := &upnpProto{c: &Client{gw: netip.MustParseAddr("10.0.1.1")}}
		_ = p.onGateway(u)
	})
}

func FuzzRoute(f *testing.F) {
	f.Add([]byte("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth0\t00000000\t0101000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"))
	f.Add([]byte("x\neth0 00000000 zz 3 0 0 0 00000000\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := parseProcNetRoute(bytes.NewReader(b))
		if err == nil && (!a.Is4() || a.IsUnspecified() || !strings.Contains(string(b), "00000000")) {
			t.Fatalf("gateway %v", a)
		}
	})
}
