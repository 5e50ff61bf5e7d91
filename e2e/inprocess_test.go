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
// this process, forwards data, shuts everything down by cancelling the
// context, and checks that no goroutine is left behind.
func TestInProcessNoLeaks(t *testing.T) {
	target := echoServer(t) // closed by t.Cleanup, after the leak check
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	log := logrus.New()
	log.SetOutput(io.Discard)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	br, err := broker.Start(ctx, broker.Options{Listen: "127.0.0.1:0", PublicAddr: "127.0.0.1", StateDir: t.TempDir(), Log: log})
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
	_, sharerDone := newAgent(agent.Options{Broker: &br.URL, Shares: []agent.ShareSpec{{Name: "echo", Target: target}},
		OnTicket: func(_ string, t secure.Ticket) { tickets <- t }})
	tk := <-tickets
	addrs := make(chan net.Addr, 1)
	_, connDone := newAgent(agent.Options{Connects: []agent.ConnectSpec{{Ticket: &tk, Listen: "127.0.0.1:0"}},
		OnListen: func(_ agent.ConnectSpec, a net.Addr) { addrs <- a }})
	addr := (<-addrs).String()
	for range 3 {
		echoCheck(t, addr, 1<<20)
	}
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
