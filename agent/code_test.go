package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/shortcode"
	"github.com/peerport/peerport/internal/testutil"
)

// codeSharer runs a sharer of an echo target offering a code with spec on
// broker u, and returns it with its first code.
func codeSharer(t *testing.T, u secure.BrokerURL, spec CodeSpec) (*Agent, string) {
	t.Helper()
	codes := make(chan string, 4)
	a := startTestAgent(t, Options{Broker: &u, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t), Code: &spec}},
		OnCode: func(_, c string) { codes <- c }})
	select {
	case c := <-codes:
		return a, c
	case <-time.After(10 * time.Second):
		t.Fatal("no code within 10 s")
		return nil, ""
	}
}

func redeem(t *testing.T, u secure.BrokerURL, id *secure.Identity, code string) (secure.AgentID, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return RedeemCode(ctx, id, u, code, nil, quietLog())
}

// connectByID runs a connector as id to peer's share and echoes through it.
func connectByID(t *testing.T, u secure.BrokerURL, id *secure.Identity, peer secure.AgentID, share string) {
	t.Helper()
	listening := make(chan net.Addr, 1)
	startTestAgent(t, Options{Identity: id, Broker: &u, Connects: []ConnectSpec{{Peer: peer, Share: share, Listen: "127.0.0.1:0"}},
		OnListen: func(_ ConnectSpec, a net.Addr) { listening <- a }})
	select {
	case a := <-listening:
		echoOnce(t, a.String(), "through a short code")
	case <-time.After(15 * time.Second):
		t.Fatal("connector not listening within 15 s")
	}
}

func otherWords(code string) string {
	c, _ := shortcode.Parse(code)
	c.Words[1]++
	return c.String()
}

// TestCode: a code through a real broker admits the connector, which then
// reaches the share by identity; a wrong code fails as such and burns the
// code; an expired or spent code is no such code.
func TestCode(t *testing.T) {
	leakCheck(t)
	b := startTestBroker(t, t.TempDir())
	u := b.URL

	t.Run("right", func(t *testing.T) {
		sharer, code := codeSharer(t, u, CodeSpec{TTL: time.Minute})
		id := newIdentity(t)
		peer, share, err := redeem(t, u, id, code)
		if err != nil {
			t.Fatalf("redeem %s: %v", code, err)
		}
		if peer != sharer.ID() || share != "echo" {
			t.Fatalf("code led to %s/%s, want %s/echo", peer.Short(), share, sharer.ID().Short())
		}
		connectByID(t, u, id, peer, share)
		ss := sharer.Status().Shares[0]
		if !slices.Equal(ss.Admitted, []string{id.ID().String()}) || ss.Code != "" {
			t.Fatalf("share status after one use: admitted %v, code %q", ss.Admitted, ss.Code)
		}
		if _, _, err := redeem(t, u, newIdentity(t), code); !errors.Is(err, ErrNoSuchCode) {
			t.Fatalf("a used code: %v, want ErrNoSuchCode", err)
		}
	})

	t.Run("wrong burns", func(t *testing.T) {
		sharer, code := codeSharer(t, u, CodeSpec{TTL: time.Minute, Uses: 5})
		if _, _, err := redeem(t, u, newIdentity(t), otherWords(code)); !errors.Is(err, ErrWrongCode) || !strings.Contains(err.Error(), "burnt") {
			t.Fatalf("wrong code: %v, want ErrWrongCode saying it is burnt", err)
		}
		if _, _, err := redeem(t, u, newIdentity(t), code); !errors.Is(err, ErrNoSuchCode) {
			t.Fatalf("the right code after a wrong one: %v, want ErrNoSuchCode", err)
		}
		if ss := sharer.Status().Shares[0]; len(ss.Admitted) != 0 || ss.Code != "" {
			t.Fatalf("after a wrong guess: admitted %v, code %q", ss.Admitted, ss.Code)
		}
	})

	t.Run("expired", func(t *testing.T) {
		_, code := codeSharer(t, u, CodeSpec{TTL: time.Second})
		time.Sleep(1500 * time.Millisecond)
		if _, _, err := redeem(t, u, newIdentity(t), code); !errors.Is(err, ErrNoSuchCode) {
			t.Fatalf("expired code: %v, want ErrNoSuchCode", err)
		}
	})

	t.Run("uses", func(t *testing.T) {
		sharer, code := codeSharer(t, u, CodeSpec{TTL: time.Minute, Uses: 2})
		a, c := newIdentity(t), newIdentity(t)
		for _, id := range []*secure.Identity{a, c} {
			if _, _, err := redeem(t, u, id, code); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := redeem(t, u, newIdentity(t), code); !errors.Is(err, ErrNoSuchCode) {
			t.Fatalf("a third use of a two-use code: %v", err)
		}
		connectByID(t, u, c, sharer.ID(), "echo")
	})

	t.Run("not by identity without a code", func(t *testing.T) {
		sharer, _ := codeSharer(t, u, CodeSpec{TTL: time.Minute})
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		listening := make(chan net.Addr, 1)
		stranger := startTestAgent(t, Options{Broker: &u, Connects: []ConnectSpec{{Peer: sharer.ID(), Share: "echo", Listen: "127.0.0.1:0", Timeout: 5 * time.Second}}, KeepGoing: true,
			OnListen: func(_ ConnectSpec, a net.Addr) { listening <- a }})
		<-listening // Status may be read once Run has begun
		lastErr := func() string {
			if cs := stranger.Status().Connects; len(cs) > 0 {
				return cs[0].LastError
			}
			return ""
		}
		for ctx.Err() == nil && lastErr() == "" {
			time.Sleep(50 * time.Millisecond)
		}
		if e := lastErr(); !strings.Contains(e, "unauthorized") && !strings.Contains(e, "not valid") {
			t.Fatalf("a connector the code did not admit: %q", e)
		}
	})
}

// fakeBroker is a broker played by the test: it serves the control
// protocol to one sharer well enough to register a share and hand out
// code slots, passes the claims it is asked to, records every message,
// and can make claims of its own. Whatever it does, only a connector that
// knew the code may end up admitted.
type fakeBroker struct {
	t    *testing.T
	ln   net.Listener
	url  secure.BrokerURL
	mu   sync.Mutex
	conn *tls.Conn // the sharer's session
	seen []proto.Message
	regs [][]string // every Register's allow list
	// answers to our passes
	replies chan *proto.CodePassReply
	opened  chan uint32
	wg      sync.WaitGroup
}

func startFakeBroker(t *testing.T) *fakeBroker {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := secure.SelfSignedCert(key, "fake-broker")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", secure.ControlServerConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeBroker{t: t, ln: ln, replies: make(chan *proto.CodePassReply, 8), opened: make(chan uint32, 8)}
	f.url = secure.BrokerURL{Token: "tok", Addr: ln.Addr().String(), Pin: secure.PinOf(cert.Leaf)}
	f.wg.Go(f.serve)
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		if f.conn != nil {
			f.conn.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *fakeBroker) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Go(func() { f.session(c.(*tls.Conn)) })
	}
}

func (f *fakeBroker) session(c *tls.Conn) {
	defer c.Close()
	if err := c.Handshake(); err != nil {
		return
	}
	id, err := secure.PeerID(c.ConnectionState())
	if err != nil {
		return
	}
	if _, err := proto.Read(c, 0); err != nil { // the Hello
		return
	}
	proto.Write(c, &proto.Welcome{AgentID: id.String(), Observed: c.RemoteAddr().String()})
	f.mu.Lock()
	f.conn = c
	f.mu.Unlock()
	for {
		m, err := proto.Read(c, 0)
		if err != nil {
			return
		}
		f.mu.Lock()
		f.seen = append(f.seen, m)
		f.mu.Unlock()
		switch m := m.(type) {
		case *proto.Ping:
			f.send(&proto.Pong{Nonce: m.Nonce})
		case *proto.Register:
			f.mu.Lock()
			f.regs = append(f.regs, m.Allow)
			f.mu.Unlock()
			f.send(&proto.Result{ID: m.ID})
		case *proto.CodeOpen:
			f.send(&proto.CodeOpened{ID: m.ID, Slot: 7, TTLSeconds: m.TTLSeconds})
			f.opened <- 7
		case *proto.CodeClose:
			f.send(&proto.Result{ID: m.ID})
		case *proto.CodePassReply:
			f.replies <- m
		}
	}
}

func (f *fakeBroker) send(m proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	proto.Write(f.conn, m)
}

// pass hands the sharer one claim step as the broker would, and returns its
// answer.
func (f *fakeBroker) pass(step uint8, connector string, msg []byte) *proto.CodePassReply {
	f.t.Helper()
	f.send(&proto.CodePass{Pass: uint64(time.Now().UnixNano()), Slot: 7, Step: step, Connector: connector, Msg: msg})
	select {
	case r := <-f.replies:
		return r
	case <-time.After(10 * time.Second):
		f.t.Fatal("the sharer did not answer a pass within 10 s")
		return nil
	}
}

// TestCodeBrokerInTheMiddle: the test plays the broker. It sees every
// message of an honest redemption, replays them, splices runs, swaps the
// claimant, and guesses. None of it gets an agent of its choosing
// admitted, and none of what it saw holds the code or the ticket.
func TestCodeBrokerInTheMiddle(t *testing.T) {
	leakCheck(t)
	fb := startFakeBroker(t)
	codes := make(chan string, 8)
	tickets := make(chan secure.Ticket, 1)
	sharer := startTestAgent(t, Options{Broker: &fb.url, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t), Code: &CodeSpec{TTL: time.Minute, Uses: 3}}},
		OnCode: func(_, c string) { codes <- c }, OnTicket: func(_ string, tk secure.Ticket) { tickets <- tk }})
	code, _ := shortcode.Parse(<-codes)
	ticket := <-tickets

	honest := newIdentity(t)
	mallory := newIdentity(t)
	admitted := func() []string { return sharer.Status().Shares[0].Admitted }

	// An honest redemption, passed along faithfully, recorded.
	ex, a, _ := shortcode.NewConnector(code, honest.ID().String())
	r1 := fb.pass(1, honest.ID().String(), a)
	if r1.Code != "" {
		t.Fatalf("step 1: %s %s", r1.Code, r1.Message)
	}
	offer, proof, err := ex.Open(r1.Msg)
	if err != nil || offer.Sharer != sharer.ID().String() || offer.Share != "echo" {
		t.Fatalf("offer %+v, %v", offer, err)
	}
	if r2 := fb.pass(2, honest.ID().String(), proof); r2.Code != "" {
		t.Fatalf("step 2: %s %s", r2.Code, r2.Message)
	}
	if got := admitted(); !slices.Equal(got, []string{honest.ID().String()}) {
		t.Fatalf("admitted %v after the honest run", got)
	}

	// What the broker saw holds neither the code nor the ticket's secrets.
	var seen bytes.Buffer
	fb.mu.Lock()
	for _, m := range append(fb.seen, &proto.CodePass{Msg: a}, &proto.CodePass{Msg: proof}) {
		b, _ := proto.Encode(m)
		seen.Write(b)
	}
	fb.mu.Unlock()
	pk := ticket.ProofKey()
	for what, secret := range map[string][]byte{"code": []byte(code.String()), "word": []byte("-" + strings.Split(code.String(), "-")[2]),
		"ticket secret": ticket.Secret[:], "proof key": pk[:]} {
		if bytes.Contains(seen.Bytes(), secret) {
			t.Errorf("the broker saw the %s", what)
		}
	}

	// Replay: the honest first step again, then the recorded proof, now
	// for mallory. The sharer's new answer changes the keys.
	if r := fb.pass(1, mallory.ID().String(), a); r.Code != "" {
		t.Fatalf("replayed step 1: %s", r.Code)
	}
	if r := fb.pass(2, mallory.ID().String(), proof); r.Code != proto.CodeWrongCode {
		t.Fatalf("replayed proof: %q %s, want wrong_code", r.Code, r.Message)
	}
	if got := admitted(); slices.Contains(got, mallory.ID().String()) {
		t.Fatal("a replayed proof admitted mallory")
	}
	// The replay burnt the code, with uses left.
	if r := fb.pass(1, honest.ID().String(), a); r.Code != proto.CodeNotFound {
		t.Fatalf("a burnt code answered %q", r.Code)
	}

	// A second sharer's code: the broker guesses, as itself.
	codes2 := make(chan string, 2)
	fb2 := startFakeBroker(t)
	sharer2 := startTestAgent(t, Options{Broker: &fb2.url, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t), Code: &CodeSpec{TTL: time.Minute, Uses: 3}}},
		OnCode: func(_, c string) { codes2 <- c }})
	code2, _ := shortcode.Parse(<-codes2)
	guess := code2
	guess.Words[0]++
	gx, ga, _ := shortcode.NewConnector(guess, mallory.ID().String())
	r := fb2.pass(1, mallory.ID().String(), ga)
	if _, _, err := gx.Open(r.Msg); !errors.Is(err, shortcode.ErrWrongCode) {
		t.Fatalf("a guess opened the sharer's offer: %v", err)
	}
	if r := fb2.pass(2, mallory.ID().String(), []byte("a guess")); r.Code != proto.CodeWrongCode {
		t.Fatalf("a guess's proof: %q", r.Code)
	}

	// A third: the honest connector's run, with mallory named as the
	// claimant in step 2 (the broker lying about who asks).
	codes3 := make(chan string, 2)
	fb3 := startFakeBroker(t)
	sharer3 := startTestAgent(t, Options{Broker: &fb3.url, Shares: []ShareSpec{{Name: "echo", Target: echoTarget(t), Code: &CodeSpec{TTL: time.Minute, Uses: 3}}},
		OnCode: func(_, c string) { codes3 <- c }})
	code3, _ := shortcode.Parse(<-codes3)
	hx, ha, _ := shortcode.NewConnector(code3, honest.ID().String())
	r = fb3.pass(1, mallory.ID().String(), ha)
	_, hproof, err := hx.Open(r.Msg)
	if err != nil {
		t.Fatal(err)
	}
	if r := fb3.pass(2, mallory.ID().String(), hproof); r.Code == "" {
		t.Fatal("the sharer took a proof naming another agent than the claimant")
	}

	for _, s := range []*Agent{sharer, sharer2, sharer3} {
		if slices.Contains(s.Status().Shares[0].Admitted, mallory.ID().String()) {
			t.Fatal("mallory admitted")
		}
	}
	for _, f := range []*fakeBroker{fb, fb2, fb3} {
		f.mu.Lock()
		for _, allow := range f.regs {
			if slices.Contains(allow, mallory.ID().String()) {
				t.Error("a registration named mallory")
			}
		}
		f.mu.Unlock()
	}
}

// TestCodeAcrossCluster: a code opened on one node of a cluster is
// redeemed by a connector logged in to another, which then reaches the
// share; a second sharer on the other node gets another number.
func TestCodeAcrossCluster(t *testing.T) {
	natsURL := testutil.NATS(t)
	leakCheck(t)
	dirs := []string{t.TempDir(), t.TempDir()}
	n1 := startClusterNode(t, natsURL, "n1", dirs[0])
	if err := os.CopyFS(dirs[1], os.DirFS(dirs[0])); err != nil {
		t.Fatal(err)
	}
	n2 := startClusterNode(t, natsURL, "n2", dirs[1])

	sharer, code := codeSharer(t, n1.URL, CodeSpec{TTL: time.Minute, Uses: 2})
	_, code2 := codeSharer(t, n2.URL, CodeSpec{TTL: time.Minute})
	c1, _ := shortcode.Parse(code)
	c2, _ := shortcode.Parse(code2)
	if c1.Slot == c2.Slot {
		t.Fatalf("two nodes gave out slot %d", c1.Slot)
	}
	if _, _, err := redeem(t, n2.URL, newIdentity(t), otherWords(code2)); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("a wrong code on the same node: %v", err)
	}
	id := newIdentity(t)
	peer, share, err := redeem(t, n2.URL, id, code)
	if err != nil {
		t.Fatalf("redeem on node 2 a code of node 1: %v", err)
	}
	if peer != sharer.ID() || share != "echo" {
		t.Fatalf("code led to %s/%s", peer.Short(), share)
	}
	connectByID(t, n2.URL, id, peer, share)
	if _, _, err := redeem(t, n2.URL, newIdentity(t), otherWords(code)); !errors.Is(err, ErrWrongCode) {
		t.Fatalf("a wrong code across nodes: %v", err)
	}
	if _, _, err := redeem(t, n1.URL, newIdentity(t), code); !errors.Is(err, ErrNoSuchCode) {
		t.Fatalf("a code burnt through another node: %v", err)
	}
}
