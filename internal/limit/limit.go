// Package limit owns the broker's admission limits: per-key (source IP,
// agent) rates and concurrent counts, a global connection budget kept below
// the process's file descriptor limit with room reserved for connections
// that have authenticated, a listener that applies them with a
// pre-authentication deadline, and a logger that writes one line per burst
// of refusals instead of one per refusal.
//
// Nothing here keeps global state or reads the wall clock directly: clocks
// are injected (Clock), so tests drive time.
package limit

import (
	"sync"
	"time"
)

// Clock is the time source of the package's types.
type Clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// RealClock is the wall clock.
var RealClock Clock = realClock{}

// Reasons for a refusal, the "reason" label of the broker's refusal metrics.
const (
	ReasonRate    = "rate"     // the key's rate is exhausted
	ReasonPerKey  = "per_ip"   // the key holds its maximum of concurrent slots
	ReasonGlobal  = "global"   // the global pre-authentication budget is spent
	ReasonPreAuth = "deadline" // closed: no authentication within the deadline
	ReasonGarbage = "garbage"  // closed: bytes that are not the protocol
)

// Keyed limits, per key, a rate (a token bucket: Rate per second, Burst at
// most) and a count of concurrent slots (Max). Zero Rate means no rate
// limit, zero Max no concurrency limit. It is safe for concurrent use.
type Keyed[K comparable] struct {
	Rate  float64
	Burst int
	Max   int
	Clock Clock

	mu      sync.Mutex
	entries map[K]*entry
	sweep   time.Time
}

type entry struct {
	tokens float64
	last   time.Time
	n      int // slots held
}

// maxIdle is how long an unused entry is kept; past it, its bucket is full
// again for any sane rate, so forgetting it changes nothing.
const maxIdle = time.Minute

// Allow takes one token of key's rate, without a slot.
func (k *Keyed[K]) Allow(key K) bool {
	_, reason := k.acquire(key, false)
	return reason == ""
}

// Acquire takes a token and a slot of key; release gives the slot back
// (once, however often it is called). On refusal, reason says why.
func (k *Keyed[K]) Acquire(key K) (release func(), reason string) {
	return k.acquire(key, true)
}

func (k *Keyed[K]) acquire(key K, slot bool) (func(), string) {
	clk := k.Clock
	if clk == nil {
		clk = RealClock
	}
	now := clk.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.entries == nil {
		k.entries = make(map[K]*entry)
	}
	if now.Sub(k.sweep) > maxIdle {
		k.sweep = now
		for key, e := range k.entries {
			if e.n == 0 && now.Sub(e.last) > maxIdle {
				delete(k.entries, key)
			}
		}
	}
	e := k.entries[key]
	if e == nil {
		e = &entry{tokens: float64(k.Burst), last: now}
		k.entries[key] = e
	}
	if slot && k.Max > 0 && e.n >= k.Max {
		return nil, ReasonPerKey
	}
	if k.Rate > 0 {
		if d := now.Sub(e.last); d > 0 {
			e.tokens = min(float64(max(k.Burst, 1)), e.tokens+d.Seconds()*k.Rate)
		}
		e.last = now
		if e.tokens < 1 {
			return nil, ReasonRate
		}
		e.tokens--
	} else {
		e.last = now
	}
	if !slot {
		return nil, ""
	}
	e.n++
	var once sync.Once
	return func() {
		once.Do(func() {
			k.mu.Lock()
			defer k.mu.Unlock()
			e.n--
		})
	}, ""
}

// Held is the number of slots key holds now.
func (k *Keyed[K]) Held(key K) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e := k.entries[key]; e != nil {
		return e.n
	}
	return 0
}

// Budget is the global connection budget, shared by every listener:
// at most Total connections, of which at most PreAuth not yet
// authenticated. Total-PreAuth is kept for connections that have
// authenticated, so a flood of connections that never do cannot lock out
// the agents that do. Zero fields mean no limit.
type Budget struct {
	Total   int
	PreAuth int

	mu      sync.Mutex
	open    int
	preauth int
}

// Slot is one connection's share of a Budget.
type Slot struct {
	b      *Budget
	mu     sync.Mutex
	authed bool
	done   bool
}

// Admit takes a pre-authentication slot, or says why not.
func (b *Budget) Admit() (*Slot, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if (b.Total > 0 && b.open >= b.Total) || (b.PreAuth > 0 && b.preauth >= b.PreAuth) {
		return nil, ReasonGlobal
	}
	b.open++
	b.preauth++
	return &Slot{b: b}, ""
}

// Open and Unauthenticated are the counts now, for gauges.
func (b *Budget) Open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

func (b *Budget) Unauthenticated() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.preauth
}

// Authenticated moves s out of the pre-authentication share.
func (s *Slot) Authenticated() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.authed || s.done {
		return
	}
	s.authed = true
	s.b.mu.Lock()
	s.b.preauth--
	s.b.mu.Unlock()
}

// Release gives s back; later calls do nothing.
func (s *Slot) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	s.done = true
	s.b.mu.Lock()
	s.b.open--
	if !s.authed {
		s.b.preauth--
	}
	s.b.mu.Unlock()
}

// BudgetFor derives the sizes of a Budget from the process's file descriptor limit: the
// descriptors not set aside for files, relay ports and outbound dials
// (a quarter, at least 32), of which preauthShare (0-1) may be taken by
// connections not yet authenticated.
func BudgetFor(nofile uint64, preauthShare float64) (total, preauth int) {
	spare := max(nofile/4, 32)
	if nofile <= spare {
		return 1, 1
	}
	total = int(min(nofile-spare, 1<<30))
	preauth = max(int(float64(total)*preauthShare), 1)
	return total, preauth
}
