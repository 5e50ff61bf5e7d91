package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/relay"
)

// fuzzTURNSecret is fixed so the seed corpus is reproducible.
const fuzzTURNSecret = "fuzz-turn-secret-0123456789"

// fuzzRelay is a broker with its embedded TURN relay on loopback and one
// agent online (a member session over a pipe), so credentials made for it
// pass auth. Its Dial refuses everything: a fuzzed Connect never leaves the
// process.
type fuzzRelay struct {
	addr       string
	user, pass string
}

func newFuzzRelay(tb testing.TB) *fuzzRelay {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	st, err := LoadOrCreateState(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	port := ln.Addr().(*net.TCPAddr).Port
	srv, err := New(Config{Token: fuzzToken, Cert: st.Cert, Log: log,
		Relay: &RelayIssuer{URL: turnURL("127.0.0.1", port), Secret: []byte(fuzzTURNSecret)}})
	if err != nil {
		tb.Fatal(err)
	}
	rl, err := NewRelay(srv, RelayConfig{
		RelayIP: netip.MustParseAddr("127.0.0.1"),
		// A narrow range: many allocations on one relay fail instead of
		// taking loopback ports by the thousand.
		PortMin: 47000, PortMax: 47063,
		MaxAllocationsPerAgent: 1 << 20, // the fuzzer allocates freely; quotas have their own tests
		Dial: func(context.Context, netip.AddrPort, netip.AddrPort) (net.Conn, error) {
			return nil, errors.New("fuzz: no dialing")
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rl.Serve(ctx, ln)
	}()

	// The agent the credentials name logs in and stays.
	_, self, _ := fuzzServer(tb)
	agent, brk := net.Pipe()
	sess := newSession(srv, brk, brk, self, log)
	sessDone := make(chan struct{})
	go func() {
		defer close(sessDone)
		sess.run()
	}()
	go io.Copy(io.Discard, agent)
	if err := proto.Write(agent, &proto.Hello{Token: fuzzToken}); err != nil {
		tb.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !srv.memberOnline(self); {
		if time.Now().After(deadline) {
			tb.Fatal("fuzz agent did not come online")
		}
		time.Sleep(time.Millisecond)
	}
	tb.Cleanup(func() {
		agent.Close()
		<-sessDone
		cancel()
		<-done
	})
	user, pass := relay.Credentials([]byte(fuzzTURNSecret), self.String(), time.Now().Add(24*time.Hour))
	return &fuzzRelay{addr: ln.Addr().String(), user: user, pass: pass}
}

// Modes of FuzzTURNConn, the first byte of an input.
const (
	fuzzRaw    = iota // the rest is written as it is
	fuzzSigned        // each STUN message in the rest is signed with a valid credential first
)

// fuzzTURNRequest is a STUN request for the seeds, unsigned.
func fuzzTURNRequest(tb testing.TB, setters ...stun.Setter) []byte {
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID}, setters...)...)
	if err != nil {
		tb.Fatal(err)
	}
	return m.Raw
}

// FuzzTURNConn feeds arbitrary bytes as a client's TCP stream to the
// broker's TURN server (RFC 5766 over TCP with RFC 6062 allocations). In
// signed mode the harness first gets a nonce, then signs every framed STUN
// message with a valid credential, so the fuzzer reaches Allocate, Refresh,
// CreatePermission, Connect and ConnectionBind past authentication. The
// server must not panic, and once the client half-closes it must close the
// connection (having answered or not) within a deadline.
func FuzzTURNConn(f *testing.F) {
	fr := newFuzzRelay(f)
	tcp := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{6, 0, 0, 0}}
	peer := &stun.XORMappedAddress{IP: net.IPv4(192, 0, 2, 1), Port: 80}
	// For IPv4 the XOR uses only the magic cookie: any transaction ID will do.
	pm := new(stun.Message)
	if err := peer.AddToAs(pm, stun.AttrXORPeerAddress); err != nil {
		f.Fatal(err)
	}
	xorPeer := stun.RawAttribute{Type: stun.AttrXORPeerAddress, Value: pm.Attributes[0].Value}
	allocate := stun.NewType(stun.MethodAllocate, stun.ClassRequest)
	seeds := [][]byte{
		append([]byte{fuzzRaw}, fuzzTURNRequest(f, stun.BindingRequest)...),
		append([]byte{fuzzRaw}, fuzzTURNRequest(f, allocate, tcp)...),
		append([]byte{fuzzRaw}, "GET / HTTP/1.1\r\n\r\n"...),
		{fuzzRaw, 0x40, 0x00, 0x00, 0x10, 1, 2, 3}, // ChannelData, truncated
		append([]byte{fuzzSigned}, fuzzTURNRequest(f, allocate, tcp)...),
		append(append([]byte{fuzzSigned}, fuzzTURNRequest(f, allocate, tcp)...),
			fuzzTURNRequest(f, stun.NewType(stun.MethodCreatePermission, stun.ClassRequest), xorPeer)...),
		append(append([]byte{fuzzSigned}, fuzzTURNRequest(f, allocate, tcp)...),
			fuzzTURNRequest(f, stun.NewType(stun.MethodConnect, stun.ClassRequest), xorPeer)...),
		append([]byte{fuzzSigned}, fuzzTURNRequest(f, stun.NewType(stun.MethodConnectionBind, stun.ClassRequest),
			stun.RawAttribute{Type: stun.AttrConnectionID, Value: []byte{0, 0, 0, 1}})...),
		append(append([]byte{fuzzSigned}, fuzzTURNRequest(f, allocate, tcp)...),
			fuzzTURNRequest(f, stun.NewType(stun.MethodRefresh, stun.ClassRequest), stun.RawAttribute{Type: stun.AttrLifetime, Value: []byte{0, 0, 0, 0}})...),
		append([]byte{fuzzSigned}, fuzzTURNRequest(f, allocate, stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}})...),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		mode, data := data[0]%2, data[1:]
		c, err := net.DialTimeout("tcp", fr.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		if mode == fuzzSigned {
			data = fr.sign(t, c, r, data)
		}
		drained := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, r)
			drained <- err
		}()
		if _, err := c.Write(data); err != nil && !isClosed(err) {
			t.Fatalf("write: %v", err)
		}
		c.(*net.TCPConn).CloseWrite()
		if err := <-drained; err != nil && !isClosed(err) {
			t.Fatalf("the TURN server kept a half-closed connection open: %v", err)
		}
	})
}

// isClosed reports whether err is the server ending the connection, not a
// timeout.
func isClosed(err error) bool {
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// sign asks for a nonce with an unsigned Allocate and returns the STUN
// messages framed in data signed with fr's credential under it. Bytes after
// the last whole message are kept as they are.
func (fr *fuzzRelay) sign(t *testing.T, c net.Conn, r *bufio.Reader, data []byte) []byte {
	probe := fuzzTURNRequest(t, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
		stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{6, 0, 0, 0}})
	if _, err := c.Write(probe); err != nil {
		t.Fatal(err)
	}
	raw, err := readSTUN(r)
	if err != nil {
		t.Fatalf("no answer to an unsigned Allocate: %v", err)
	}
	var resp stun.Message
	if err := stun.Decode(raw, &resp); err != nil {
		t.Fatalf("answer does not decode: %v", err)
	}
	var nonce stun.Nonce
	var realm stun.Realm
	if nonce.GetFrom(&resp) != nil || realm.GetFrom(&resp) != nil {
		t.Fatalf("401 without nonce or realm: %v", &resp)
	}
	key := stun.NewLongTermIntegrity(fr.user, realm.String(), fr.pass)
	var out bytes.Buffer
	for len(data) >= 20 {
		n := 20 + int(binary.BigEndian.Uint16(data[2:4]))
		if n > len(data) {
			break
		}
		var m stun.Message
		if err := stun.Decode(append([]byte(nil), data[:n]...), &m); err != nil {
			out.Write(data[:n])
		} else {
			var signed stun.Message
			signed.Type, signed.TransactionID = m.Type, m.TransactionID
			signed.WriteHeader()
			for _, a := range m.Attributes {
				switch a.Type {
				case stun.AttrUsername, stun.AttrRealm, stun.AttrNonce, stun.AttrMessageIntegrity, stun.AttrFingerprint:
				default:
					signed.Add(a.Type, a.Value)
				}
			}
			for _, s := range []stun.Setter{stun.NewUsername(fr.user), realm, nonce, key, stun.Fingerprint} {
				if err := s.AddTo(&signed); err != nil {
					t.Fatal(err)
				}
			}
			out.Write(signed.Raw)
		}
		data = data[n:]
	}
	out.Write(data)
	return out.Bytes()
}

// readSTUN reads one STUN message framed by its header's length.
func readSTUN(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 20)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[2:4]))
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}
