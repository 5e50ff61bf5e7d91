package nat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs a Server on addrs until the test ends.
func serve(t *testing.T, addrs []string) *Listeners {
	t.Helper()
	ls, err := Listen(t.Context(), addrs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := NewServer(ServerConfig{ConnTimeout: 5 * time.Second}).Serve(ctx, ls); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ls
}

// serveTwoAddrs runs the RFC 5780 layout on loopback: 127.0.0.1 and
// 127.0.0.2 (all of 127/8 is local), each on the same two ports.
func serveTwoAddrs(t *testing.T) *Listeners {
	t.Helper()
	for range 20 {
		p1, p2 := freePort(t), freePort(t)
		var addrs []string
		for _, h := range []string{"127.0.0.1", "127.0.0.2"} {
			for _, p := range []int{p1, p2} {
				addrs = append(addrs, net.JoinHostPort(h, strconv.Itoa(p)))
			}
		}
		ls, err := Listen(t.Context(), addrs)
		if err != nil {
			continue // a port was taken meanwhile
		}
		ls.Close()
		return serve(t, addrs)
	}
	t.Fatal("no free port pair")
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestDiscoverLoopback(t *testing.T) {
	ls := serveTwoAddrs(t)
	r, err := Discover(t.Context(), Options{Server: ls.Addrs()[0], Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", r)
	if r.Type != TypePublic || r.Verdict != VerdictDirect || r.PublicIP != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("type %q verdict %q public %v; want public, direct, 127.0.0.1", r.Type, r.Verdict, r.PublicIP)
	}
	for name, m := range map[string]Mapping{"tcp": r.TCP, "udp": r.UDP} {
		if m.Behavior != MappingNone || !m.PortPreserved || m.Error != "" {
			t.Errorf("%s: %+v; want no translation, port preserved", name, m)
		}
		if !strings.HasPrefix(m.Alternate, "127.0.0.2:") {
			t.Errorf("%s: alternate %q, want OTHER-ADDRESS on 127.0.0.2", name, m.Alternate)
		}
	}
	if r.UDP.Filtering != FilteringEndpointIndependent {
		t.Errorf("udp filtering %q, want endpoint-independent (loopback filters nothing)", r.UDP.Filtering)
	}
	if r.RTT <= 0 {
		t.Errorf("rtt %v", r.RTT)
	}
	js, err := json.Marshal(r)
	if err != nil || !bytes.Contains(js, []byte(`"verdict":"direct likely"`)) || !bytes.Contains(js, []byte(`"mapping":"none"`)) {
		t.Errorf("json %s, %v", js, err)
	}
}

// TestDiscoverOneAddress: without a second address there is no
// OTHER-ADDRESS and CHANGE-REQUEST of the address is refused, so the
// alternate port is used and filtering is unknown.
func TestDiscoverOneAddress(t *testing.T) {
	var p1, p2 int
	var ls *Listeners
	for range 20 {
		p1, p2 = freePort(t), freePort(t)
		if p1 == p2 {
			continue
		}
		l, err := Listen(t.Context(), []string{"127.0.0.1:" + strconv.Itoa(p1), "127.0.0.1:" + strconv.Itoa(p2)})
		if err == nil {
			l.Close()
			ls = serve(t, []string{"127.0.0.1:" + strconv.Itoa(p1), "127.0.0.1:" + strconv.Itoa(p2)})
			break
		}
	}
	if ls == nil {
		t.Fatal("no free ports")
	}
	r, err := Discover(t.Context(), Options{Server: ls.Addrs()[0], Alternate: ls.Addrs()[1]})
	if err != nil {
		t.Fatal(err)
	}
	if r.TCP.Alternate != ls.Addrs()[1] || r.TCP.Behavior != MappingNone || r.UDP.Filtering != Unknown {
		t.Errorf("report %+v", r)
	}
}

// TestListenPortZero: one free port serves TCP and UDP alike.
func TestListenPortZero(t *testing.T) {
	ls := serve(t, []string{"127.0.0.1:0"})
	if u, tc := ls.UDP[0].LocalAddr().String(), ls.TCP[0].Addr().String(); u != tc {
		t.Fatalf("udp %s, tcp %s", u, tc)
	}
	r, err := Discover(t.Context(), Options{Server: ls.Addrs()[0]})
	if err != nil || !r.UDP.Mapped.IsValid() || !r.TCP.Mapped.IsValid() {
		t.Fatalf("%v: %+v", err, r)
	}
}

func TestDiscoverNoServer(t *testing.T) {
	port := freePort(t)
	r, err := Discover(t.Context(), Options{Server: "127.0.0.1:" + strconv.Itoa(port), Timeout: 2 * time.Second})
	if err == nil {
		t.Fatalf("want an error, got %+v", r)
	}
	if _, err := Discover(t.Context(), Options{}); err == nil {
		t.Fatal("no server: want an error")
	}
}

func TestMappedAddrTCP(t *testing.T) {
	ls := serveTwoAddrs(t)
	// The punch socket: listening with reuse-port, and asking from its port.
	lc := net.ListenConfig{Control: ReusePort}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	local := ln.Addr().(*net.TCPAddr).AddrPort()
	got, err := MappedAddrTCP(t.Context(), local, ls.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	if got != local {
		t.Errorf("mapped %v, want %v", got, local)
	}
}

// roundTrip writes b on a fresh TCP connection and reads what comes back
// until the server closes or a second passes.
func roundTrip(t *testing.T, addr string, chunks ...[]byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, ch := range chunks {
		if _, err := c.Write(ch); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // so the server sees separate segments
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	out, _ := io.ReadAll(c)
	return out
}

func TestServeTCPFraming(t *testing.T) {
	ls := serve(t, []string{"127.0.0.1:0"})
	addr := ls.Addrs()[0]
	r1, r2 := newRequest(0), newRequest(0)
	both := append(append([]byte(nil), r1.Raw...), r2.Raw...)
	tests := []struct {
		name   string
		chunks [][]byte
		want   int // responses
	}{
		{"two in one segment", [][]byte{both}, 2},
		{"one split", [][]byte{r1.Raw[:7], r1.Raw[7:]}, 1},
		{"garbage closes", [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n")}, 0},
		{"oversized closes", [][]byte{{0x00, 0x01, 0xff, 0xfc, 0x21, 0x12, 0xa4, 0x42}}, 0},
		{"request then garbage", [][]byte{r1.Raw, make([]byte, 20)}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := roundTrip(t, addr, tt.chunks...)
			n := 0
			for len(out) > 0 {
				raw, err := ReadMessage(bytes.NewReader(out))
				if err != nil {
					t.Fatalf("response %d: %v", n, err)
				}
				var m stun.Message
				if err := stun.Decode(raw, &m); err != nil || m.Type != stun.BindingSuccess {
					t.Fatalf("response %d: %v %v", n, m.Type, err)
				}
				out = out[len(raw):]
				n++
			}
			if n != tt.want {
				t.Errorf("%d responses, want %d", n, tt.want)
			}
		})
	}
}

func TestServeUDPErrors(t *testing.T) {
	ls := serve(t, []string{"127.0.0.1:0"})
	srv := ls.UDP[0].LocalAddr().(*net.UDPAddr).AddrPort()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := newUDPClient(pc)
	defer u.close()
	// Garbage first: the server must keep answering.
	if _, err := pc.WriteTo([]byte("junk"), net.UDPAddrFromAddrPort(srv)); err != nil {
		t.Fatal(err)
	}
	if _, err := u.do(t.Context(), srv, 0); err != nil {
		t.Fatalf("binding after junk: %v", err)
	}
	if _, err := u.do(t.Context(), srv, changePort); !errors.Is(err, errServerRefused) {
		t.Fatalf("change port on a single socket: %v, want a refusal", err)
	}
}

func TestRespond(t *testing.T) {
	s := NewServer(ServerConfig{})
	src, local := netip.MustParseAddrPort("203.0.113.7:4000"), netip.MustParseAddrPort("203.0.113.10:3478")
	tests := []struct {
		name string
		req  []stun.Setter
		want stun.MessageType
		code stun.ErrorCode
	}{
		{"binding", []stun.Setter{stun.BindingRequest}, stun.BindingSuccess, 0},
		{"unknown required attribute", []stun.Setter{stun.BindingRequest, rawAttr{Type: 0x0777, Value: []byte{1, 2, 3, 4}}}, stun.BindingError, stun.CodeUnknownAttribute},
		{"unknown optional attribute", []stun.Setter{stun.BindingRequest, rawAttr{Type: 0x8777, Value: []byte{1, 2, 3, 4}}}, stun.BindingSuccess, 0},
		{"change request, no alternate", []stun.Setter{stun.BindingRequest, rawAttr{Type: stun.AttrChangeRequest, Value: []byte{0, 0, 0, 6}}}, stun.BindingError, stun.CodeUnknownAttribute},
		{"bad change request", []stun.Setter{stun.BindingRequest, rawAttr{Type: stun.AttrChangeRequest, Value: []byte{6}}}, stun.BindingError, stun.CodeBadRequest},
		{"not a request", []stun.Setter{stun.BindingSuccess}, stun.MessageType{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := stun.MustBuild(append([]stun.Setter{stun.TransactionID}, tt.req...)...)
			raw, _, err := s.respond(req.Raw, src, local, "udp")
			if tt.want == (stun.MessageType{}) {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			var m stun.Message
			if err != nil || stun.Decode(raw, &m) != nil || m.Type != tt.want || m.TransactionID != req.TransactionID {
				t.Fatalf("response %v, %v; want %v", m.Type, err, tt.want)
			}
			if tt.code != 0 {
				var ec stun.ErrorCodeAttribute
				if err := ec.GetFrom(&m); err != nil || ec.Code != tt.code {
					t.Errorf("error code %v, %v; want %v", ec.Code, err, tt.code)
				}
				return
			}
			var xa stun.XORMappedAddress
			if err := xa.GetFrom(&m); err != nil || toAddrPort(xa.IP, xa.Port) != src {
				t.Errorf("mapped %v, %v; want %v", xa, err, src)
			}
			var ro stun.ResponseOrigin
			if err := ro.GetFrom(&m); err != nil || toAddrPort(ro.IP, ro.Port) != local {
				t.Errorf("origin %v, %v; want %v", ro, err, local)
			}
		})
	}
}

func TestServerConnLimit(t *testing.T) {
	ls, err := Listen(t.Context(), []string{"127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = NewServer(ServerConfig{MaxConns: 1}).Serve(ctx, ls) })
	defer func() { cancel(); wg.Wait() }()
	hold, err := net.Dial("tcp", ls.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	if _, err := bindTCP(t.Context(), hold); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	if _, err := MappedAddrTCP(t.Context(), netip.AddrPort{}, ls.Addrs()[0]); err == nil {
		t.Fatal("second connection over the limit: want it closed")
	}
	hold.Close()
	var lastErr error
	for range 50 { // the slot frees when the server notices the close
		if _, lastErr = MappedAddrTCP(t.Context(), netip.AddrPort{}, ls.Addrs()[0]); lastErr == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("after the first closed: %v", lastErr)
}

func TestDefaultAddrs(t *testing.T) {
	if got := DefaultAddrs("203.0.113.10"); strings.Join(got, ",") != "203.0.113.10:3478,203.0.113.10:3479" {
		t.Errorf("specific host: %v", got)
	}
	if got := DefaultAddrs(""); len(got) != 2 && len(got) != 4 {
		t.Errorf("wildcard: %v", got)
	}
}
