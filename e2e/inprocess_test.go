package e2e

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/broker"
	"github.com/peerport/peerport/internal/secure"
)

// TestInProcessNoLeaks runs broker, sharer and connector as libraries in
// this process, forwards data over each kind of path, shuts everything down
// by cancelling the context, and checks that no goroutine is left behind.
func TestInProcessNoLeaks(t *testing.T) {
	tests := []struct {
		name        string
		path        string // the share's path policy
		noTURN      bool
		wantPath    string
		wantRelayBy string
	}{
		{"direct", agent.PathAuto, false, agent.PathDirect, ""},
		// With the TURN relay off, a relayed share can only meet through
		// the broker relay on the broker's own port.
		{"broker relay", agent.PathRelay, true, agent.PathRelay, agent.RelayBroker},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inProcess(t, broker.Options{NoTURN: tt.noTURN}, tt.path, func(a *agent.Agent, addr string) {
				for range 3 {
					echoCheck(t, addr, 1<<20)
				}
				peers := a.Status().Peers
				if len(peers) != 1 || peers[0].Path != tt.wantPath || peers[0].RelayKind != tt.wantRelayBy {
					t.Errorf("connector's peers %+v, want one on path %q relay_kind %q", peers, tt.wantPath, tt.wantRelayBy)
				}
			})
		})
	}
}

// inProcess runs a broker with bo, a sharer of an echo server under path
// policy, and a connector, calls check with the connector and its listen
// address, then stops them all and checks nothing is left running.
func inProcess(t *testing.T, bo broker.Options, path string, check func(a *agent.Agent, addr string)) {
	target := echoServer(t) // closed by t.Cleanup, after the leak check
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	log := logrus.New()
	log.SetOutput(io.Discard)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bo.Listen, bo.PublicAddr, bo.StateDir, bo.Log = "127.0.0.1:0", "127.0.0.1", t.TempDir(), log
	br, err := broker.Start(ctx, bo)
	if err != nil {
		t.Fatal(err)
	}
	newAgent := func(o agent.Options) (*agent.Agent, chan error) {
		id, err := secure.NewIdentity()
		if err != nil {
			t.Fatal(err)
		}
		o.Identity, o.StateDir, o.Log = id, t.TempDir(), log
		o.Candidates = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		a, err := agent.New(o)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		return a, done
	}
	tickets := make(chan secure.Ticket, 1)
	_, sharerDone := newAgent(agent.Options{Broker: &br.URL, Shares: []agent.ShareSpec{{Name: "echo", Target: target, Path: path}},
		OnTicket: func(_ string, t secure.Ticket) { tickets <- t }})
	tk := <-tickets
	addrs := make(chan net.Addr, 1)
	conn, connDone := newAgent(agent.Options{Connects: []agent.ConnectSpec{{Ticket: &tk, Listen: "127.0.0.1:0"}},
		OnListen: func(_ agent.ConnectSpec, a net.Addr) { addrs <- a }})
	check(conn, (<-addrs).String())
	cancel()
	for _, done := range []chan error{sharerDone, connDone} {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("agent did not stop within 15s of cancel")
		}
	}
	<-br.Done
}
