package broker

import (
	"testing"
	"time"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// ask sends a Presence and returns the code of the broker's answer.
func (c *client) ask(id uint64, agent, instance string) string {
	c.t.Helper()
	c.send(&proto.Presence{ID: id, Agent: agent, Instance: instance})
	r := expectType[*proto.Result](c.t, c.read())
	if r.ID != id {
		c.t.Fatalf("presence %d answered as %d", id, r.ID)
	}
	return r.Code
}

func TestPresence(t *testing.T) {
	forKinds(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, nil)
		sharer, tk := sharerWithTicket(t, h, "web")
		defer sharer.close()
		connID := newIdentity(t)
		conn, m := h.hello(t, connID, "")
		expectType[*proto.Welcome](t, m)
		defer conn.close()
		// The connector's process names itself, as an agent does.
		connInst, _ := h.handshake(t, connID, h.state.Pin)
		connInst.send(&proto.Hello{Version: "test", Instance: "proc-1"})
		expectType[*proto.Welcome](t, connInst.read())
		defer connInst.close()
		outsider := h.login(t, newIdentity(t), "")
		defer outsider.close()
		sharerID := tk.Sharer.String()

		// Before an introduction nobody learns anything.
		if code := conn.ask(1, sharerID, ""); code != proto.CodeRefused {
			t.Errorf("before the introduction: %q, want refused", code)
		}

		admit := tk.AdmitKey()
		conn.send(&proto.Connect{ID: 2, Sharer: sharerID, Share: "web", Admit: admit[:], Candidates: connectorCands})
		in := expectType[*proto.Intro](t, sharer.read())
		sharer.send(&proto.IntroReply{Intro: in.Intro, Candidates: sharerCands})
		expectType[*proto.ConnectReply](t, conn.read())

		connector := connID.ID().String()
		for _, c := range []struct {
			name            string
			who             *client
			agent, instance string
			want            string
		}{
			{"connector asks about the sharer", conn, sharerID, "", ""},
			{"sharer asks about the connector", sharer, connector, "", ""},
			{"sharer asks about the connector's process", sharer, connector, "proc-1", ""},
			{"sharer asks about a process that is not online", sharer, connector, "proc-2", proto.CodeNotFound},
			{"an agent never introduced to the sharer", outsider, sharerID, "", proto.CodeRefused},
			{"not an agent ID", conn, "nonsense", "", proto.CodeBadRequest},
		} {
			if code := c.who.ask(3, c.agent, c.instance); code != c.want {
				t.Errorf("%s: %q, want %q", c.name, code, c.want)
			}
		}

		// The process's session ends: it is offline, the agent's other
		// session keeps the agent online.
		connInst.close()
		waitFor(t, "process offline", func() bool { return sharer.ask(4, connector, "proc-1") == proto.CodeNotFound })
		if code := sharer.ask(5, connector, ""); code != "" {
			t.Errorf("agent with one session left: %q, want online", code)
		}
		sharer.close()
		waitFor(t, "sharer offline", func() bool { return conn.ask(6, sharerID, "") == proto.CodeNotFound })
		if code := outsider.ask(7, sharerID, ""); code != proto.CodeRefused {
			t.Errorf("outsider after the sharer left: %q, want refused", code)
		}
	})
}

// The broker remembers at most maxMet pairs, and forgets the stale ones
// first.
func TestPresenceMetBound(t *testing.T) {
	p := newPresence()
	now := time.Unix(1_000_000, 0)
	id := func(i int) secure.AgentID {
		var a secure.AgentID
		a[0], a[1], a[2] = byte(i), byte(i>>8), byte(i>>16)
		return a
	}
	self := id(1 << 20)
	old := now.Add(-metFor - time.Hour)
	p.meet(self, id(0), old)
	for i := 1; i < maxMet; i++ {
		p.meet(self, id(i), now)
	}
	if len(p.met) != maxMet || !p.knows(self, id(0), old) {
		t.Fatalf("%d pairs, want %d", len(p.met), maxMet)
	}
	if p.knows(id(0), self, now) {
		t.Error("a pair met longer than metFor ago is still known")
	}
	// Full: the stale pair goes, and the oldest down to fifteen sixteenths,
	// so the next maxMet/16 new pairs need no sweep.
	p.met[pair(self, id(1))] = now.Add(-time.Hour)
	later := now.Add(time.Minute)
	p.meet(id(maxMet), self, later)
	if want := maxMet - maxMet/16 + 1; len(p.met) != want || !p.knows(self, id(maxMet), later) {
		t.Errorf("after meeting one more: %d pairs, want %d", len(p.met), want)
	}
	if _, ok := p.met[pair(self, id(0))]; ok {
		t.Error("the stale pair was kept")
	}
	if p.knows(self, id(1), later) {
		t.Error("the oldest pair was kept")
	}
}
