package broker

import (
	"testing"
	"time"

	"github.com/peerport/peerport/internal/secure"
)

func TestCodeSlots(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var ids [3]secure.AgentID
	for i := range ids {
		ids[i][0] = byte(i + 1)
	}
	a, again, b := &session{id: ids[0]}, &session{id: ids[0]}, &session{id: ids[1]}
	var slots codeSlots

	s1, err := slots.open(a, "web", 0, time.Minute, now)
	if err != nil || s1 == 0 || s1 >= 100 {
		t.Fatalf("first slot %d, %v: want a short number", s1, err)
	}
	if got := slots.lookup(s1, now); got == nil || got.sess != a || got.share != "web" {
		t.Fatalf("lookup(%d) = %+v", s1, got)
	}
	// The same identity, reconnected, gets its number back; another
	// identity asking for it gets another.
	if s, _ := slots.open(again, "web", s1, time.Minute, now); s != s1 {
		t.Errorf("the same agent asking again for %d got %d", s1, s)
	}
	if s, _ := slots.open(b, "web", s1, time.Minute, now); s == s1 {
		t.Errorf("another agent took slot %d", s1)
	}
	// Expiry.
	if slots.lookup(s1, now.Add(time.Minute)) != nil {
		t.Error("an expired slot is still open")
	}
	// Close only by the holder; leave frees all.
	s2, _ := slots.open(a, "web", 0, time.Minute, now)
	slots.close(b, s2)
	if slots.lookup(s2, now) == nil {
		t.Error("another session closed a slot")
	}
	slots.close(a, s2)
	if slots.lookup(s2, now) != nil {
		t.Error("closed slot still open")
	}
	for range MaxCodesPerSession {
		if _, err := slots.open(a, "web", 0, time.Minute, now); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := slots.open(a, "web", 0, time.Minute, now); err == nil {
		t.Errorf("%d+1 codes on one session", MaxCodesPerSession)
	}
	slots.leave(a)
	for _, c := range slots.bySlot {
		if c.sess == a {
			t.Fatal("leave kept a slot")
		}
	}
}

// TestCodeSlotsGrow: numbers get longer only as slots fill up.
func TestCodeSlotsGrow(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var slots codeSlots
	highest := uint32(0)
	for i := range 300 {
		var id secure.AgentID
		id[0], id[1] = byte(i), byte(i>>8)
		s, err := slots.open(&session{id: id}, "web", 0, time.Minute, now)
		if err != nil {
			t.Fatal(err)
		}
		if i < 25 && s >= 100 {
			t.Fatalf("slot %d with %d open", s, i)
		}
		highest = max(highest, s)
	}
	if highest >= 10000 {
		t.Errorf("slot %d with 300 open", highest)
	}
}
