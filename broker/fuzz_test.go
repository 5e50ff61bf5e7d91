package broker

import (
	"bytes"
	"crypto/ed25519"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// FuzzSession feeds arbitrary bytes to a session after the TLS handshake
// (over a plain pipe, since TLS is not what is being fuzzed). The session must
// not panic, and must end once the input does.
// Fixed token and keys make the seed corpus in testdata/fuzz reproducible.
const fuzzToken = "fuzz-token-0123456789"

func fuzzServer(tb testing.TB) (*Server, secure.AgentID, secure.Ticket) {
	st, err := LoadOrCreateState(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	srv, err := New(Config{Token: fuzzToken, Cert: st.Cert, Log: log, IntroTimeout: 50 * time.Millisecond, MaxSharesPerAgent: 2, MaxPendingIntros: 2})
	if err != nil {
		tb.Fatal(err)
	}
	var self secure.AgentID
	copy(self[:], ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)).Public().(ed25519.PublicKey))
	tk := secure.Ticket{Broker: "127.0.0.1:7000", Pin: st.Pin, Sharer: self, Share: "web"}
	copy(tk.Secret[:], bytes.Repeat([]byte{9}, secure.SecretSize))
	return srv, self, tk
}

func fuzzSeeds(tb testing.TB, self secure.AgentID, tk secure.Ticket) [][]byte {
	hash, admit := tk.AdmitHash(), tk.AdmitKey()
	enc := func(ms ...proto.Message) []byte {
		var b bytes.Buffer
		for _, m := range ms {
			if err := proto.Write(&b, m); err != nil {
				tb.Fatal(err)
			}
		}
		return b.Bytes()
	}
	member := &proto.Hello{Token: fuzzToken}
	return [][]byte{
		enc(member, &proto.Ping{Nonce: 1}),
		enc(&proto.Hello{}, &proto.Register{ID: 1, Share: "web"}, &proto.Ping{Nonce: 2}),
		enc(&proto.Hello{Token: "wrong-token-0123456789"}),
		enc(member, &proto.Register{ID: 1, Share: "web", AdmitHash: hash[:], Allow: []string{self.String()}},
			&proto.Register{ID: 2, Share: "db"}, &proto.Register{ID: 3, Share: "ssh"}, &proto.Unregister{ID: 4, Share: "db"}),
		// The session introduces itself to its own share and answers.
		enc(member, &proto.Register{ID: 1, Share: "web", AdmitHash: hash[:]},
			&proto.Connect{ID: 2, Sharer: self.String(), Share: "web", Admit: admit[:], Candidates: []proto.Candidate{{Kind: "host", Addr: "192.0.2.1:1"}}},
			&proto.IntroReply{Intro: 1, Port: 80}, &proto.IntroReply{Intro: 99}),
		enc(member, &proto.Register{ID: 1, Share: "web", Allow: []string{self.String()}},
			&proto.Connect{ID: 2, Sharer: self.String(), Share: "web"}, &proto.Connect{ID: 3, Sharer: self.String(), Share: "web"},
			&proto.Connect{ID: 4, Sharer: self.String(), Share: "web"}),
		enc(member, &proto.Connect{ID: 1, Sharer: self.String(), Share: "x"}, &proto.Welcome{}),
		append(enc(member), 0, 0, 0, 4, 1, 200, '{', '}'),
		append(enc(member), 0xff, 0xff, 0xff, 0xff),
		[]byte("GET / HTTP/1.0\r\n\r\n"),
	}
}

// FuzzSession feeds arbitrary bytes to a session after the TLS handshake
// (over a plain pipe, since TLS is not what is being fuzzed). The session must
// not panic, must end once its input does, and must leave no state behind.
func FuzzSession(f *testing.F) {
	srv, self, tk := fuzzServer(f)
	for _, s := range fuzzSeeds(f, self, tk) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		agent, broker := net.Pipe()
		sess := newSession(srv, broker, broker, self, srv.log)
		done := make(chan struct{})
		go func() {
			defer close(done)
			sess.run()
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			io.Copy(io.Discard, agent)
		}()
		agent.SetWriteDeadline(time.Now().Add(5 * time.Second))
		agent.Write(data)
		agent.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second): // a hang, not a slow run
			t.Fatal("session did not end after its input did")
		}
		<-drained
		if st := srv.Stats(); st.Agents != 0 || st.Guests != 0 || st.Shares != 0 {
			t.Fatalf("session left state behind: %+v", st)
		}
	})
}
