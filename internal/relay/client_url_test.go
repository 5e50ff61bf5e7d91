package relay

import (
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string // a part of the error
	}{
		{in: "turn:turn.example.com:3478?transport=tcp", want: "turn.example.com:3478"},
		{in: "turn:turn.example.com:443", want: "turn.example.com:443"},
		{in: "turn:turn.example.com", want: "turn.example.com:3478"},
		{in: "turn:203.0.113.7?transport=tcp", want: "203.0.113.7:3478"},
		{in: "TURN:203.0.113.7:5000?transport=TCP", want: "203.0.113.7:5000"},
		{in: "turn:[2001:db8::1]:3478?transport=tcp", want: "[2001:db8::1]:3478"},
		{in: "turn:[2001:db8::1]", want: "[2001:db8::1]:3478"},
		{in: "turn://203.0.113.7:3478", want: "203.0.113.7:3478"},
		{in: " turn:203.0.113.7:3478 ", want: "203.0.113.7:3478"},

		{in: "turn:203.0.113.7:3478?transport=udp", wantErr: "transport=udp"},
		{in: "turn:203.0.113.7:3478?transport=sctp", wantErr: "want transport=tcp"},
		{in: "turn:203.0.113.7:3478?transport=tcp&transport=tcp", wantErr: "2 times"},
		{in: "turn:203.0.113.7:3478?foo=bar", wantErr: `unknown parameter "foo"`},
		{in: "turns:203.0.113.7:5349?transport=tcp", wantErr: "turns:"},
		{in: "stun:203.0.113.7:3478", wantErr: "STUN URL"},
		{in: "stuns:203.0.113.7:3478", wantErr: "STUN URL"},
		{in: "http://203.0.113.7:3478", wantErr: `unknown scheme "http"`},
		{in: "203.0.113.7:3478", wantErr: "unknown scheme"},
		{in: "", wantErr: "want turn:"},
		{in: "turn:", wantErr: "no host"},
		{in: "turn::3478", wantErr: "no host"},
		{in: "turn:203.0.113.7:", wantErr: "empty port"},
		{in: "turn:203.0.113.7:0", wantErr: "1 to 65535"},
		{in: "turn:203.0.113.7:65536", wantErr: "1 to 65535"},
		{in: "turn:203.0.113.7:-1", wantErr: "1 to 65535"},
		{in: "turn:203.0.113.7:http", wantErr: "1 to 65535"},
		{in: "turn:2001:db8::1:3478", wantErr: "in brackets"},
		{in: "turn:[2001:db8::1", wantErr: "unclosed"},
		{in: "turn:[2001:db8::1]x", wantErr: "junk"},
		{in: "turn:[2001:db8::1]:", wantErr: "empty port"},
		{in: "turn:[turn.example.com]:3478", wantErr: "not an IPv6"},
		{in: "turn:[203.0.113.7]:3478", wantErr: "not an IPv6"},
		{in: "turn:user:pass@203.0.113.7:3478", wantErr: "user info"},
		{in: "turn:user@203.0.113.7:3478", wantErr: "user info"},
		{in: "turn:a b:3478", wantErr: "bad host"},
		{in: "turn:203.0.113.7:3478?%zz", wantErr: "bad parameters"},
	}
	for _, tt := range tests {
		got, err := ParseURL(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseURL(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
