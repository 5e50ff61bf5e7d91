package agent

import (
	"net"
	"slices"
	"testing"

	"github.com/peerport/peerport/internal/proto"
)

func TestPermitIPs(t *testing.T) {
	tests := []struct {
		name  string
		cands []proto.Candidate
		want  []string
	}{
		{"none", nil, nil},
		{"host candidates are not where the connector comes from", []proto.Candidate{
			{Kind: proto.KindHost, Addr: "10.0.2.10:4000"}, {Kind: proto.KindHost, Addr: "127.0.0.1:4000"}}, nil},
		{"observed and srflx, deduplicated", []proto.Candidate{
			{Kind: proto.KindHost, Addr: "10.0.2.10:4000"},
			{Kind: proto.KindSrflx, Addr: "203.0.113.101:4000"},
			{Kind: proto.KindObserved, Addr: "203.0.113.101:51234"}}, []string{"203.0.113.101"}},
		{"mapped IPv4 is unmapped", []proto.Candidate{{Kind: proto.KindObserved, Addr: "[::ffff:198.51.100.7]:9"}}, []string{"198.51.100.7"}},
		{"both families", []proto.Candidate{
			{Kind: proto.KindSrflx, Addr: "[2001:db8::5]:7"}, {Kind: proto.KindObserved, Addr: "198.51.100.7:9"}},
			[]string{"2001:db8::5", "198.51.100.7"}},
		{"relay candidates are ignored", []proto.Candidate{{Kind: proto.KindRelay, Addr: "203.0.113.10:50000"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, ip := range permitIPs(tt.cands) {
				got = append(got, ip.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("permitIPs = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestValidPath(t *testing.T) {
	for p, ok := range map[string]bool{"": true, "auto": true, "direct": true, "relay": true, "turn": true, "broker": true, "Relay": false, "derp": false} {
		if err := ValidPath(p); (err == nil) != ok {
			t.Errorf("ValidPath(%q) = %v, want ok %v", p, err, ok)
		}
	}
}

// TestAllows: which introductions a share's policy answers, and which
// paths a connector's policy dials.
func TestAllows(t *testing.T) {
	wires := []string{"", proto.PathDirect, proto.PathRelay, proto.PathBroker}
	want := map[string][]bool{ // per policy, per wire above
		"":         {true, true, true, true},
		PathAuto:   {true, true, true, true},
		PathDirect: {true, true, false, false},
		PathRelay:  {false, false, true, true},
		PathTURN:   {false, false, true, false},
		PathBroker: {false, false, false, true},
	}
	for policy, w := range want {
		for i, wire := range wires {
			if got := allows(policy, wire); got != w[i] {
				t.Errorf("allows(%q, %q) = %v, want %v", policy, wire, got, w[i])
			}
		}
	}
	a := &Agent{}
	ps := newPaths(a)
	for _, wire := range wires {
		p := ps.byWire(wire)
		if p == nil || (wire != "" && p.wire() != wire) {
			t.Errorf("byWire(%q) = %v", wire, p)
		}
	}
	if ps.byWire("carrier-pigeon") != nil {
		t.Error("byWire knows an unknown path")
	}
}

func TestCountConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	cc := &countConn{Conn: a}
	go b.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := cc.Read(buf); err != nil {
		t.Fatal(err)
	}
	go func() { buf := make([]byte, 3); b.Read(buf) }()
	if _, err := cc.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if n := cc.n.Load(); n != 8 {
		t.Errorf("counted %d bytes, want 8", n)
	}
}

func TestAddrGone(t *testing.T) {
	tests := []struct {
		name string
		addr net.Addr
		want bool
	}{
		{"loopback is here", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, false},
		{"documentation address is not", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 77), Port: 1}, true},
		{"not TCP: not judged", &net.UnixAddr{Name: "x", Net: "unix"}, false},
	}
	for _, tc := range tests {
		if got := addrGone(tc.addr); got != tc.want {
			t.Errorf("%s: addrGone(%v) = %v", tc.name, tc.addr, got)
		}
	}
}
