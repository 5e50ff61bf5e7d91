package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/resume"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/testutil"
)

// sharerUnderTest is a sharer agent taking peer carriers as the broker's
// introductions would hand them over, without a broker.
type sharerUnderTest struct {
	a      *Agent
	ctx    context.Context
	cancel context.CancelFunc
}

func newSharerUnderTest(t *testing.T, rcfg resume.Config) *sharerUnderTest {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	a, err := New(Options{Identity: newIdentity(t), Log: log, Resume: rcfg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.ctx = ctx
	s := &sharerUnderTest{a: a, ctx: ctx, cancel: cancel}
	t.Cleanup(func() {
		a.closeSessions()
		cancel()
		a.wg.Wait()
		a.resumable.Close()
	})
	return s
}

// carrier is a TLS peer channel from connector to the sharer, which
// serves it as introduced to connector's instance.
func (s *sharerUnderTest) carrier(t *testing.T, connector *secure.Identity, instance string) (*secure.Conn, net.Conn) {
	t.Helper()
	c1, c2 := testutil.TCPPair(t)
	s.a.spawn(func() { s.a.servePeer(s.ctx, c2, connector.ID(), instance, outcome{path: "direct"}) })
	cfg, err := secure.PeerClientConfig(connector, s.a.id.ID())
	if err != nil {
		t.Fatal(err)
	}
	c := secure.Client(c1, cfg)
	if err := c.HandshakeContext(s.ctx); err != nil {
		t.Fatal(err)
	}
	return c, c1
}

func (s *sharerUnderTest) sessions() int {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	return len(s.a.sessions)
}

func newIdentity(t *testing.T) *secure.Identity {
	t.Helper()
	id, err := secure.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestResumeBoundToPeer: a sharer resumes a session only for the agent
// instance TLS proves started it, and not once it has given the session
// up; a refused resume leaves the session to its owner.
func TestResumeBoundToPeer(t *testing.T) {
	s := newSharerUnderTest(t, resume.Config{ResumeTimeout: time.Second})
	conn, other := newIdentity(t), newIdentity(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	first, _ := s.carrier(t, conn, "laptop")
	rc, err := resume.Dial(ctx, first, resume.Config{ResumeTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	tests := []struct {
		name     string
		id       *secure.Identity
		instance string
	}{
		{"another agent", other, "laptop"},
		{"another instance of the same agent", conn, "desktop"},
	}
	for _, tc := range tests {
		c, _ := s.carrier(t, tc.id, tc.instance)
		if err := rc.Resume(ctx, c); !errors.Is(err, resume.ErrWrongPeer) {
			t.Errorf("%s resuming the session: %v, want ErrWrongPeer", tc.name, err)
		}
	}
	if s.sessions() != 1 {
		t.Fatalf("%d sessions on the sharer after the refusals, want 1", s.sessions())
	}
	// Its owner still may; the session lives on.
	c, raw := s.carrier(t, conn, "laptop")
	if err := rc.Resume(ctx, c); err != nil {
		t.Fatalf("the owner's resume after the refusals: %v", err)
	}
	if st := rc.Stats(); !st.Attached || st.Resumes != 1 {
		t.Fatalf("after the owner's resume: %+v", st)
	}

	// The path dies and the sharer's resume deadline (1 s) passes: the
	// sharer forgets the session, and a late resume is refused.
	raw.Close()
	eventually(t, "the sharer forgets the session", func() bool { return s.sessions() == 0 })
	late, _ := s.carrier(t, conn, "laptop")
	if err := rc.Resume(ctx, late); !errors.Is(err, resume.ErrUnknownSession) {
		t.Errorf("resume after the sharer gave the session up: %v, want ErrUnknownSession", err)
	}
	if _, err := rc.Write([]byte("x")); err == nil {
		t.Error("write on a session the sharer refused to resume succeeded")
	}
}
