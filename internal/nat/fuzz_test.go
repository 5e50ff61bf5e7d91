package nat

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/pion/stun/v4"
)

// FuzzServe feeds bytes to the server's decoder path: TCP framing, then the
// Binding answer. Nothing may panic, and every answer must be a STUN
// message for the same transaction.
func FuzzServe(f *testing.F) {
	f.Add(newRequest(0).Raw)
	f.Add(newRequest(changeIP | changePort).Raw)
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	s := NewServer(ServerConfig{})
	src := netip.MustParseAddrPort("203.0.113.7:4000")
	local := netip.MustParseAddrPort("[2001:db8::10]:3478")
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, network := range []string{"udp", "tcp"} {
			raw := data
			if network == "tcp" {
				var err error
				if raw, err = ReadMessage(bytes.NewReader(data)); err != nil {
					continue
				}
			}
			if len(raw) > MaxMessage {
				continue // ServeUDP drops these before decoding
			}
			resp, _, err := s.respond(raw, src, local, network)
			if err != nil {
				continue
			}
			var req, m stun.Message
			if err := stun.Decode(raw, &req); err != nil {
				t.Fatalf("answered an undecodable request: %v", err)
			}
			if err := stun.Decode(resp, &m); err != nil {
				t.Fatalf("answer does not decode: %v", err)
			}
			if m.TransactionID != req.TransactionID {
				t.Fatal("answer for another transaction")
			}
		}
	})
}

// FuzzParseResponse feeds bytes to the client's decoder of answers.
func FuzzParseResponse(f *testing.F) {
	req := newRequest(0)
	s := NewServer(ServerConfig{})
	ok, _, _ := s.respond(req.Raw, netip.MustParseAddrPort("203.0.113.7:4000"), netip.MustParseAddrPort("203.0.113.10:3478"), "udp")
	f.Add(ok)
	f.Add(errorResponse(req, stun.CodeUnknownAttribute))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) >= 20 {
			copy(data[8:20], req.TransactionID[:]) // let the fuzzer past the id check
		}
		_, _ = parseResponse(data, req)
	})
}
