package portmap

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

var (
	loopback = netip.MustParseAddr("127.0.0.1")
	extIP    = netip.MustParseAddr("203.0.113.7")
)

// loopOptions points a Client at fake gateways on loopback.
func loopOptions(t *testing.T, pmpPort, ssdpPort uint16, protos ...string) (Options, *logLines) {
	log, lines := testLog(t)
	return Options{Gateway: loopback, Protocols: protos, Log: log, Timeout: 1500 * time.Millisecond, pmpPort: pmpPort, ssdpPort: ssdpPort}, lines
}

// TestPCP runs MAP against a fake PCP gateway answering well, badly and for
// someone else: only a well-formed answer with our nonce, protocol and port
// and a lifetime is used; garbage and foreign answers are logged and waited
// past; result codes and lifetime 0 end the attempt with the right sentinel.
func TestPCP(t *testing.T) {
	good := func(req pcpRequest) []byte { return encodePCP(pcpGrant(req, extIP, 3600)) }
	tests := []struct {
		name    string
		answer  func(req pcpRequest) [][]byte
		wantErr []error // nil: success
		wantLog string
	}{
		{"good", func(r pcpRequest) [][]byte { return [][]byte{good(r)} }, nil, ""},
		{"garbage first", func(r pcpRequest) [][]byte {
			return [][]byte{[]byte("garbage!"), {2, 0x81}, good(r)[:40], good(r)}
		}, nil, "ignored an answer"},
		{"only garbage", func(pcpRequest) [][]byte { return [][]byte{[]byte("\x02\x81\x00\x00garbagegarbagegarbage!!")} }, []error{ErrNoMapping, ErrMalformed}, "ignored an answer"},
		{"lifetime 0", func(r pcpRequest) [][]byte {
			g := pcpGrant(r, extIP, 3600)
			g.lifetime = 0
			return [][]byte{encodePCP(g)}
		}, []error{ErrNoMapping}, "lifetime 0"},
		{"wrong nonce", func(r pcpRequest) [][]byte {
			g := pcpGrant(r, extIP, 3600)
			g.nonce[0] ^= 1
			return [][]byte{encodePCP(g)}
		}, []error{ErrNoMapping, ErrForeignMapping}, "nonce"},
		{"wrong internal port", func(r pcpRequest) [][]byte {
			g := pcpGrant(r, extIP, 3600)
			g.internal++
			return [][]byte{encodePCP(g)}
		}, []error{ErrForeignMapping}, "internal port"},
		{"wrong nonce then good", func(r pcpRequest) [][]byte {
			g := pcpGrant(r, extIP, 3600)
			g.nonce[0] ^= 1
			return [][]byte{encodePCP(g), good(r)}
		}, nil, "nonce"},
		{"not authorized", func(r pcpRequest) [][]byte {
			g := pcpGrant(r, extIP, 0)
			g.result = 2
			return [][]byte{encodePCP(g)}
		}, []error{ErrNoMapping, ErrRefused}, ""},
		{"nat-pmp server", func(pcpRequest) [][]byte { return [][]byte{{0, 128 + 1, 0, 1, 0, 0, 0, 9}} }, []error{ErrNoMapping, ErrUnsupported}, ""},
		{"silence", func(pcpRequest) [][]byte { return nil }, []error{ErrNoGateway}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakePMP(t, func(b []byte) [][]byte {
				req, ok := parsePCPRequest(b)
				if ok && req.op == pcpOpAnnounce {
					return [][]byte{encodePCP(pcpResponse{op: pcpOpAnnounce})}
				}
				if !ok || req.op != pcpOpMap {
					return nil
				}
				if req.lifetime == 0 { // deletes always work
					return [][]byte{encodePCP(pcpGrant(req, extIP, 0))}
				}
				return tt.answer(req)
			})
			opts, lines := loopOptions(t, f.port(), 0, PCP)
			c, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			lease, err := c.Map(context.Background(), 4242)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				m := lease.Current()
				if m.Protocol != PCP || m.External != netip.AddrPortFrom(extIP, 4242) || m.Internal != netip.AddrPortFrom(loopback, 4242) || m.Lease != time.Hour {
					t.Errorf("mapping %v", m)
				}
				req := firstPCPMap(f.requests())
				if req.client != loopback || req.proto != protoTCP || req.internal != 4242 || req.lifetime != 7200 {
					t.Errorf("request %+v", req)
				}
				if err := lease.Close(); err != nil {
					t.Fatal(err)
				}
				reqs := f.requests()
				del, _ := parsePCPRequest(reqs[len(reqs)-1])
				if del.lifetime != 0 || del.nonce != req.nonce {
					t.Errorf("Close sent %+v, want a delete with the mapping's nonce", del)
				}
			} else {
				if err == nil {
					lease.Close()
					t.Fatalf("mapped %v, want an error", lease.Current())
				}
				for _, want := range tt.wantErr {
					if !errors.Is(err, want) {
						t.Errorf("error %v\nis not %v", err, want)
					}
				}
			}
			if tt.wantLog != "" && !lines.has(tt.wantLog) {
				t.Errorf("no log line with %q:\n%s", tt.wantLog, lines)
			}
		})
	}
}

// TestNATPMP is TestPCP for NAT-PMP: the external address comes from its
// own request; an answer for another internal port is refused.
func TestNATPMP(t *testing.T) {
	type answers struct{ addr, mapping [][]byte }
	okAddr := [][]byte{encodePMPAddress(0, extIP)}
	tests := []struct {
		name    string
		answer  func(internal, suggested uint16, lifetime uint32) answers
		wantErr []error
		wantLog string
	}{
		{"good", func(i, s uint16, l uint32) answers {
			return answers{okAddr, [][]byte{encodePMPMap(0, i, s+1, l)}}
		}, nil, ""},
		{"garbage first", func(i, s uint16, l uint32) answers {
			return answers{[][]byte{{1, 2, 3}, append(okAddr[0][:0:0], okAddr[0][:10]...), okAddr[0]},
				[][]byte{[]byte("\x00\x82"), {0, 2, 0, 0}, encodePMPMap(0, i, s+1, l)}}
		}, nil, "ignored an answer"},
		{"lifetime 0", func(i, s uint16, l uint32) answers {
			return answers{okAddr, [][]byte{encodePMPMap(0, i, s, 0)}}
		}, []error{ErrNoMapping}, "lifetime 0"},
		{"wrong internal port", func(i, s uint16, l uint32) answers {
			return answers{okAddr, [][]byte{encodePMPMap(0, i+1, s, l)}}
		}, []error{ErrNoMapping, ErrForeignMapping}, "internal port"},
		{"refused", func(i, s uint16, l uint32) answers {
			return answers{okAddr, [][]byte{encodePMPMap(2, i, 0, 0)[:8]}}
		}, []error{ErrNoMapping, ErrRefused}, ""},
		{"address refused", func(i, s uint16, l uint32) answers {
			return answers{[][]byte{encodePMPAddress(3, netip.IPv4Unspecified())}, nil}
		}, []error{ErrNoMapping, ErrRefused}, ""},
		{"private external address", func(i, s uint16, l uint32) answers {
			return answers{[][]byte{encodePMPAddress(0, netip.MustParseAddr("10.1.2.3"))}, [][]byte{encodePMPMap(0, i, s+1, l)}}
		}, nil, ""},
		{"silence", func(uint16, uint16, uint32) answers { return answers{} }, []error{ErrNoGateway}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakePMP(t, func(b []byte) [][]byte {
				switch {
				case len(b) == 2 && b[0] == 0 && b[1] == 0:
					return tt.answer(0, 0, 0).addr
				case len(b) == 12 && b[0] == 0 && b[1] == pmpOpMapTCP:
					i, s, l := binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]), binary.BigEndian.Uint32(b[8:])
					if l == 0 {
						return [][]byte{encodePMPMap(0, i, 0, 0)}
					}
					return tt.answer(i, s, l).mapping
				}
				return nil
			})
			opts, lines := loopOptions(t, f.port(), 0, NATPMP)
			c, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			lease, err := c.Map(context.Background(), 4242)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				m := lease.Current()
				if m.Protocol != NATPMP || m.External.Port() != 4243 || m.Internal != netip.AddrPortFrom(loopback, 4242) || m.Lease != 2*time.Hour {
					t.Errorf("mapping %v", m)
				}
				if err := lease.Close(); err != nil {
					t.Fatal(err)
				}
				reqs := f.requests()
				del := reqs[len(reqs)-1]
				if binary.BigEndian.Uint16(del[4:]) != 4242 || binary.BigEndian.Uint32(del[8:]) != 0 || binary.BigEndian.Uint16(del[6:]) != 0 {
					t.Errorf("Close sent % x, want a delete of port 4242", del)
				}
			} else {
				if err == nil {
					lease.Close()
					t.Fatalf("mapped %v, want an error", lease.Current())
				}
				for _, want := range tt.wantErr {
					if !errors.Is(err, want) {
						t.Errorf("error %v\nis not %v", err, want)
					}
				}
			}
			if tt.wantLog != "" && !lines.has(tt.wantLog) {
				t.Errorf("no log line with %q:\n%s", tt.wantLog, lines)
			}
		})
	}
}

// TestPCPRoundTrip checks the encoders of the tests against the decoders of
// the package, and the request encoder against RFC 6887's layout.
func TestPCPRoundTrip(t *testing.T) {
	req := pcpRequest{op: pcpOpMap, lifetime: 99, client: netip.MustParseAddr("10.0.1.10"), nonce: [12]byte{1, 2, 3}, proto: protoTCP, internal: 80,
		suggested: netip.AddrPortFrom(netip.Addr{}, 8080)}
	b := req.marshal()
	if len(b) != 60 || b[0] != 2 || b[1] != 1 || binary.BigEndian.Uint32(b[4:8]) != 99 ||
		string(b[8:24]) != "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x0a\x00\x01\x0a" ||
		string(b[40:60]) != "\x00\x50\x1f\x90\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\x00\x00\x00\x00" {
		t.Fatalf("MAP request % x", b)
	}
	back, ok := parsePCPRequest(b)
	if !ok || back.nonce != req.nonce || back.internal != 80 || back.suggested.Port() != 8080 || back.client != req.client {
		t.Fatalf("request round trip %+v", back)
	}
	want := pcpGrant(req, extIP, 1200)
	got, err := parsePCP(encodePCP(want))
	if err != nil || got != want {
		t.Fatalf("response round trip: %+v, %v; want %+v", got, err, want)
	}
	withOption := append(encodePCP(want), 1, 0, 0, 5, 'a', 'b', 'c', 'd', 'e', 0, 0, 0)
	if _, err := parsePCP(withOption); err != nil {
		t.Errorf("answer with an option: %v", err)
	}
	if _, err := parsePCP(append(encodePCP(want), 1, 0, 0, 9, 0, 0, 0, 0)); !errors.Is(err, ErrMalformed) {
		t.Errorf("option overrunning the message: %v", err)
	}
	pr, err := parsePMP(encodePMPMap(0, 1, 2, 3))
	if err != nil || pr.internal != 1 || pr.mapped != 2 || pr.lifetime != 3 || pr.op != pmpOpMapTCP {
		t.Errorf("nat-pmp round trip %+v, %v", pr, err)
	}
	if got := pmpMapRequest(1, 2, 3); string(got) != "\x00\x02\x00\x00\x00\x01\x00\x02\x00\x00\x00\x03" {
		t.Errorf("nat-pmp request % x", got)
	}
}
