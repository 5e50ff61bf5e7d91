package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/punch"
	"github.com/peerport/peerport/internal/resume"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/mux"
)

// rogue is a malicious broker: it speaks the control protocol honestly
// enough for agents to log in, then lies (candidates pointing at itself) and
// tries to use what it sees (admit hashes, admit keys, candidates).
type rogue struct {
	t   *testing.T
	ln  net.Listener
	id  *secure.Identity // its key, as broker and as a would-be peer
	url secure.BrokerURL

	mu         sync.Mutex
	impostor   func(net.Conn)    // when set, Connects are answered by punching to the connector and handing it the conn
	admitHash  map[string][]byte // share -> what the sharer registered
	sharer     *tls.Conn
	introReply chan *proto.IntroReply
	writeMu    sync.Mutex
}

func newRogue(t *testing.T) *rogue {
	id, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rogue{t: t, ln: ln, id: id, admitHash: map[string][]byte{}, introReply: make(chan *proto.IntroReply, 4),
		url: secure.BrokerURL{Token: "rogue-token", Addr: ln.Addr().String(), Pin: secure.PinOf(cert.Leaf)}}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); r.mu.Lock(); r.closeSharer(); r.mu.Unlock(); wg.Wait() })
	cfg := secure.ControlServerConfig(cert)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); r.serve(tls.Server(c, cfg)) }()
		}
	}()
	return r
}

func (r *rogue) closeSharer() {
	if r.sharer != nil {
		r.sharer.Close()
	}
}

func (r *rogue) send(c *tls.Conn, m proto.Message) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	proto.Write(c, m)
}

func (r *rogue) serve(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if err := c.Handshake(); err != nil {
		return
	}
	if m, err := proto.Read(c, 0); err != nil {
		return
	} else if _, ok := m.(*proto.Hello); !ok {
		return
	}
	peer, _ := secure.PeerID(c.ConnectionState())
	r.send(c, &proto.Welcome{AgentID: peer.String(), Observed: c.RemoteAddr().String()})
	for {
		m, err := proto.Read(c, 0)
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *proto.Register:
			r.mu.Lock()
			r.admitHash[m.Share] = m.AdmitHash
			r.sharer = c
			r.mu.Unlock()
			r.send(c, &proto.Result{ID: m.ID})
		case *proto.Connect:
			r.mu.Lock()
			serve := r.impostor
			r.mu.Unlock()
			if serve == nil || len(m.Candidates) == 0 {
				r.send(c, &proto.ConnectReply{ID: m.ID, Port: 9})
				continue
			}
			ln, cands := punchSocket(r.t)
			r.send(c, &proto.ConnectReply{ID: m.ID, Candidates: cands, Port: 9})
			go func() {
				conn, _, err := punch.Punch(context.Background(), punch.Config{Listener: ln, Remote: toPunch(m.Candidates), Timeout: 5 * time.Second})
				if err == nil {
					serve(conn)
				}
			}()
		case *proto.IntroReply:
			r.introReply <- m
		case *proto.Ping:
			r.send(c, &proto.Pong{Nonce: m.Nonce})
		}
	}
}

// TestBrokerSwapsSharerKey: a broker that points the connector at a peer of
// its own fails the connector's pin check; nothing is forwarded to it.
func TestBrokerSwapsSharerKey(t *testing.T) {
	t.Parallel()
	r := newRogue(t)
	var handshakes, streams atomic.Int32
	peerCfg, _ := secure.PeerServerConfig(r.id)
	r.mu.Lock()
	r.impostor = func(c net.Conn) {
		defer c.Close()
		tc := tls.Server(c, peerCfg)
		if tc.Handshake() != nil {
			return
		}
		handshakes.Add(1)
		if s, err := mux.Server(tc, nil); err == nil {
			if _, err := s.Accept(); err == nil {
				streams.Add(1)
			}
		}
	}
	r.mu.Unlock()

	sharer, _ := secure.NewIdentity() // the sharer the ticket names; the rogue cannot hold its key
	tk, err := secure.NewTicket(r.url.Addr, r.url.Pin, sharer.ID(), "web")
	if err != nil {
		t.Fatal(err)
	}
	conn := start(t, "connector", bins.agent, "--state-dir", t.TempDir(), "connect", tk.String(), "--listen", "127.0.0.1:0")
	addr := conn.firstLine()
	eventually(t, 20*time.Second, "the connector to refuse the impostor's key", func() bool {
		return contains(conn.stderr.String(), "does not match pin")
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("secret"))
	c.SetReadDeadline(time.Now().Add(45 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes through a forward whose only peer is an impostor", n)
	}
	c.Close()
	if streams.Load() != 0 {
		t.Fatalf("the impostor got %d streams", streams.Load())
	}
}

var ticketRE = regexp.MustCompile(`ticket: (pp1[a-z0-9]+)`)

// TestBrokerCannotOpenShare: a broker that introduces itself to a sharer
// and dials it with everything it has seen (the admit hash, the admit key a
// connector showed it, the share's name) is refused on every stream, and
// the target never sees a connection; a real ticket holder on the same kind
// of path gets through, so the refusals are not an accident of the setup.
// Also: a valid proof for share x opens x, never y.
func TestBrokerCannotOpenShare(t *testing.T) {
	t.Parallel()
	r := newRogue(t)
	var accepts atomic.Int32
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			c.Close()
		}
	}()
	cfgFile := t.TempDir() + "/agent.yaml"
	writeFile(t, cfgFile, "broker: "+r.url.String()+"\nshares:\n  - name: x\n    target: "+target.Addr().String()+
		"\n  - name: y\n    target: "+target.Addr().String()+"\n")
	sharerDir := t.TempDir()
	sh := start(t, "sharer", bins.agent, "--state-dir", sharerDir, "up", "-c", cfgFile)
	var tickets map[string]secure.Ticket
	eventually(t, 20*time.Second, "both shares online", func() bool {
		tickets = map[string]secure.Ticket{}
		for _, m := range ticketRE.FindAllStringSubmatch(sh.stderr.String(), -1) {
			if tk, err := secure.ParseTicket(m[1]); err == nil {
				tickets[tk.Share] = tk
			}
		}
		return len(tickets) == 2
	})
	tx := tickets["x"]
	admitKey := tx.AdmitKey()
	r.mu.Lock()
	seenHash := r.admitHash["x"]
	r.mu.Unlock()
	if h := sha256.Sum256(admitKey[:]); string(h[:]) != string(seenHash) {
		t.Fatal("the broker did not see the admit hash the sharer registers; the test setup is wrong")
	}

	// dial introduces id to the sharer through the rogue and opens a session.
	dial := func(id *secure.Identity) (*tls.Conn, func(mux.Header) error) {
		r.mu.Lock()
		sc := r.sharer
		r.mu.Unlock()
		ln, cands := punchSocket(t)
		r.send(sc, &proto.Intro{Intro: 1, Connector: id.ID().String(), Share: "x", Candidates: cands})
		var rep *proto.IntroReply
		select {
		case rep = <-r.introReply:
		case <-time.After(10 * time.Second):
			t.Fatal("sharer did not answer the introduction")
		}
		cfg, _ := secure.PeerClientConfig(id, tx.Sharer)
		raw, _, err := punch.Punch(context.Background(), punch.Config{Listener: ln, Remote: toPunch(rep.Candidates), Initiator: true, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("punch to the sharer's candidates %v: %v", rep.Candidates, err)
		}
		c := tls.Client(raw, cfg)
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		rc, err := resume.Dial(context.Background(), c, resume.Config{})
		if err != nil {
			t.Fatal(err)
		}
		s, err := mux.Client(rc, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(); rc.Close() })
		return c, func(h mux.Header) error {
			st, err := s.OpenStream()
			if err != nil {
				return err
			}
			defer st.Close()
			if err := mux.WriteHeader(st, h); err != nil {
				return err
			}
			st.SetReadDeadline(time.Now().Add(10 * time.Second))
			return mux.ReadStatus(st)
		}
	}
	denied := func(err error) bool {
		var se *mux.StatusError
		return errors.As(err, &se) && se.Status == mux.StatusDenied
	}

	// The broker, as itself, with what it has seen.
	c, open := dial(r.id)
	cs := c.ConnectionState()
	withAdmitKey, _ := secure.Proof(cs, admitKey)
	var hash32 [32]byte
	copy(hash32[:], seenHash)
	withHash, _ := secure.Proof(cs, hash32)
	for name, h := range map[string]mux.Header{
		"no proof":             {Share: "x"},
		"proof from admit key": {Share: "x", Proof: withAdmitKey},
		"proof from hash":      {Share: "x", Proof: withHash},
		"admit key as proof":   {Share: "x", Proof: admitKey[:]},
	} {
		if err := open(h); !denied(err) {
			t.Errorf("broker stream with %s: %v, want denied", name, err)
		}
	}
	if n := accepts.Load(); n != 0 {
		t.Fatalf("target saw %d connections from the broker's streams", n)
	}

	// A real holder of ticket x: x opens, y does not.
	holder, _ := secure.NewIdentity()
	c, open = dial(holder)
	proofX, _ := secure.Proof(c.ConnectionState(), tx.ProofKey())
	if err := open(mux.Header{Share: "y", Proof: proofX}); !denied(err) {
		t.Errorf("ticket x on share y: %v, want denied", err)
	}
	if err := open(mux.Header{Share: "x", Proof: proofX}); err != nil {
		t.Fatalf("ticket x on share x: %v; the positive control failed", err)
	}
	eventually(t, 10*time.Second, "the target to see the ticket holder", func() bool { return accepts.Load() == 1 })
}

// punchSocket opens a punch port on loopback and its one candidate.
func punchSocket(t testing.TB) (net.Listener, []proto.Candidate) {
	ln, err := punch.Listen(context.Background(), nil, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln, []proto.Candidate{{Kind: proto.KindHost, Addr: ln.Addr().String()}}
}

func toPunch(cs []proto.Candidate) []punch.Candidate {
	var out []punch.Candidate
	for _, c := range cs {
		if ap, err := netip.ParseAddrPort(c.Addr); err == nil {
			out = append(out, punch.Candidate{Kind: punch.Kind(c.Kind), Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())})
		}
	}
	return out
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := writeFileMode(path, s); err != nil {
		t.Fatal(err)
	}
}
