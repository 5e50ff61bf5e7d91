package agent

import (
	"sync"
	"time"
)

// maxRecent bounds the connections status remembers: enough for a console's
// log of the last few minutes, small enough that a burst of connections
// costs a fixed few kilobytes.
const maxRecent = 50

// ConnEvent is one forwarded connection, open or ended, as status lists it
// in AgentStatus.Recent.
type ConnEvent struct {
	Opened time.Time `json:"opened"`
	// Role is the role of the peer session it rode, as PeerStatus.Role:
	// "sharer" when a peer connected to one of our shares, "connector"
	// when a local application connected through one of our forwards.
	Role   string `json:"role"`
	Share  string `json:"share"`
	Peer   string `json:"peer"`
	Client string `json:"client,omitempty"` // the local application's address, at a connector
	Path   string `json:"path,omitempty"`   // the session's path when it opened: "direct" or "relay"
	Open   bool   `json:"open"`
	// DurationMS is how long it lasted, or has lasted so far while open.
	DurationMS int64 `json:"duration_ms"`
	BytesIn    int64 `json:"bytes_in"`
	BytesOut   int64 `json:"bytes_out"`
	// End says how it ended: "closed" (both sides finished), "reset (where:
	// why)" when it was cut, "refused: why" when it never carried a byte.
	// Empty while open.
	End string `json:"end,omitempty"`
}

// recentConns is a ring of the last maxRecent connections. It is touched
// when a connection opens and ends, never per byte: each connection's
// bytes land in its own counters, which the pipe adds to as it adds to the
// share's and the session's.
type recentConns struct {
	mu   sync.Mutex
	ring [maxRecent]*connRecord
	next int // where the next one goes
}

// connRecord is one connection's place in the ring; the pipe that carries
// it holds it, and may outlive its place when newer ones push it out.
type connRecord struct {
	r     *recentConns
	stats counters
	ev    ConnEvent // under r.mu, but for its byte counts
	ended time.Time // under r.mu
	cut   string    // under r.mu: why the pipe failed, first reason only
}

// opened records a connection about to be piped over ps.
func (r *recentConns) opened(ps *peerSession, share, client string) *connRecord {
	return r.add(ConnEvent{Opened: time.Now(), Role: ps.key.role, Share: share, Peer: ps.key.peer.String(),
		Client: client, Path: ps.path(), Open: true})
}

// refused records a connection that ended before it carried anything.
func (r *recentConns) refused(role, share, peer, client, why string) {
	c := r.add(ConnEvent{Opened: time.Now(), Role: role, Share: share, Peer: peer, Client: client, End: "refused: " + why})
	r.mu.Lock()
	c.ended = c.ev.Opened
	r.mu.Unlock()
}

func (r *recentConns) add(ev ConnEvent) *connRecord {
	c := &connRecord{r: r, ev: ev}
	r.mu.Lock()
	r.ring[r.next] = c
	r.next = (r.next + 1) % maxRecent
	r.mu.Unlock()
	return c
}

// failed notes why the pipe was cut; the first reason is the one kept, as
// the pipe resets once. A nil record (a pipe in a test) notes nothing.
func (c *connRecord) failed(where string, err error) {
	if c == nil {
		return
	}
	why := where
	if err != nil {
		why += ": " + err.Error()
	}
	c.r.mu.Lock()
	if c.cut == "" {
		c.cut = why
	}
	c.r.mu.Unlock()
}

// end marks the connection ended, as the pipe's last direction finishes.
func (c *connRecord) end() {
	if c == nil {
		return
	}
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	c.ended, c.ev.Open = time.Now(), false
	c.ev.End = "closed"
	if c.cut != "" {
		c.ev.End = "reset (" + c.cut + ")"
	}
}

// snapshot lists the ring, newest first.
func (r *recentConns) snapshot(now time.Time) []ConnEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ConnEvent
	for i := 1; i <= maxRecent; i++ {
		c := r.ring[(r.next-i+maxRecent)%maxRecent]
		if c == nil {
			break
		}
		ev := c.ev
		ev.BytesIn, ev.BytesOut = c.stats.bytesIn.Load(), c.stats.bytesOut.Load()
		end := now
		if !c.ended.IsZero() {
			end = c.ended
		}
		ev.DurationMS = end.Sub(ev.Opened).Milliseconds()
		out = append(out, ev)
	}
	return out
}
