package broker

import (
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/peerport/peerport/internal/proto"
)

// TestForgedTicketsThrottled (issue 14 #7): 200 connects with forged
// tickets from one IP (20 guest sessions of 10 each, as from 20 processes)
// are throttled: past the per-IP connect rate they get code limit (which
// agents retry later), and the refusals make a bounded number of warning
// lines, not one each.
func TestForgedTicketsThrottled(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	log.SetLevel(logrus.DebugLevel)
	hook := test.NewLocal(log)
	// A clock that stands still: no token comes back while the test runs,
	// however slow the machine is.
	clock := &fakeClock{now: time.Now()}
	h := newHarness(t, "tcp", func(c *Config) { c.Log, c.Rates.Clock = log, clock })
	sharer, tk := sharerWithTicket(t, h, "web")
	defer sharer.close()

	codes := map[string]int{}
	for range 20 {
		c := h.login(t, newIdentity(t), "")
		for i := range 10 {
			forged := make([]byte, 32)
			rand.Read(forged)
			c.send(&proto.Connect{ID: uint64(i + 1), Sharer: tk.Sharer.String(), Share: tk.Share, Admit: forged, Candidates: connectorCands})
		}
		for range 10 {
			codes[expectType[*proto.ConnectReply](t, c.read()).Code]++
		}
		c.close()
	}
	if codes[proto.CodeUnauthorized] != DefaultConnectsPerMinIP || codes[proto.CodeLimit] != 200-DefaultConnectsPerMinIP {
		t.Errorf("replies %v, want %d unauthorized (the per-IP burst) and the rest limit", codes, DefaultConnectsPerMinIP)
	}
	warnings := 0
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			warnings++
		}
	}
	t.Logf("%d connects: replies %v, %d warning lines", 200, codes, warnings)
	if warnings > 4 {
		t.Errorf("%d warning lines for 200 forged connects, want at most 4 (one a burst)", warnings)
	}
	if got := metric(t, h.srv.Registry(), "peerport_broker_requests_rate_limited_total", "request", "connect", "key", "ip"); got != float64(200-DefaultConnectsPerMinIP) {
		t.Errorf("requests_rate_limited_total{connect,ip} = %v", got)
	}
}
