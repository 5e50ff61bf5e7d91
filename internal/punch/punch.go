package punch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peerport/peerport/internal/backoff"
	"github.com/peerport/peerport/internal/nat"
)

// Sentinel errors.
var (
	// ErrRelayNeeded: a NAT on the path maps each destination to a new port,
	// so the peer cannot be reached at any address we know; use a relay.
	ErrRelayNeeded = errors.New("relay needed: destination-dependent NAT mapping")
	// ErrNoCandidates: nothing usable to dial.
	ErrNoCandidates = errors.New("no usable remote candidates")
	// ErrDeadline: no connection came up (and was agreed on) in time.
	ErrDeadline = errors.New("hole punch deadline passed")
)

// Selection marker and its acknowledgement (see the package doc).
var (
	markSelect = []byte{'P', 'P', 'H', 1}
	markAck    = []byte{'P', 'P', 'H', 2}
)

// Limits.
const (
	maxCandidates = 16 // remote candidates dialed; the rest are dropped
	maxConns      = 32 // connections held at once before one is chosen
)

// Config is one punch attempt.
type Config struct {
	// Listener is a listener from Listen whose port is the punch port (the
	// one MappedAddrTCP learnt the mapping of). Punch closes it. When nil,
	// Punch listens on LocalAddr (zero: every address, a free port).
	Listener  net.Listener
	LocalAddr netip.AddrPort

	Remote    []Candidate // the peer's candidates; see Order
	Initiator bool        // the connector: picks the connection and sends the marker

	Timeout        time.Duration   // overall; default 10s
	AttemptTimeout time.Duration   // one dial; default 1.5s (the first SYN and one retransmit)
	Backoff        backoff.Backoff // between attempts on one candidate; default Base 100ms, Cap 1s
	StartAt        time.Time       // SYNs leave at StartAt (the broker's timed start); zero: now

	// NAT discovery of this side and of the peer: a destination-dependent
	// TCP mapping on either leaves only the candidates no NAT stands in
	// front of (IPv6, port mappings), and Punch returns ErrRelayNeeded at
	// once when there are none and the peer cannot reach us either.
	LocalNAT, PeerNAT *nat.Report
	// Reachable says that the peer was offered a way in to Listener that
	// needs no punching, a port mapping: Punch then waits for the peer's
	// connection even when it has nothing to dial itself.
	Reachable bool

	Tracer Tracer
	Exec   nat.Exec // creates sockets (see nat.Exec); nil: here
}

// Result describes a punch.
type Result struct {
	Local     netip.AddrPort `json:"local,omitzero"`
	Remote    netip.AddrPort `json:"remote,omitzero"`
	Candidate Candidate      `json:"candidate,omitzero"` // the remote candidate that won (zero if it came from elsewhere)
	Via       string         `json:"via,omitempty"`      // "dial" or "accept"
	Attempts  int            `json:"attempts"`           // dial attempts, all candidates
	Elapsed   time.Duration  `json:"-"`
	PunchMS   int64          `json:"punch_ms"`
}

// arrival is a connection that came up.
type arrival struct {
	c    net.Conn
	cand Candidate
	via  string
}

type puncher struct {
	cfg      Config
	tr       *tracer
	local    netip.AddrPort
	cands    []Candidate
	attempts atomic.Int64
	arrive   chan arrival
}

// Punch connects to the peer: it listens on the punch port and dials every
// remote candidate from it, retrying until Timeout, and returns the one
// connection both sides agreed on. Errors: ErrRelayNeeded (at once),
// ErrNoCandidates, ErrDeadline, or ctx's error.
func Punch(ctx context.Context, cfg Config) (net.Conn, *Result, error) {
	start := time.Now()
	res := &Result{}
	tr := &tracer{fn: cfg.Tracer}
	finish := func(err error) (net.Conn, *Result, error) {
		res.Elapsed = time.Since(start)
		res.PunchMS = res.Elapsed.Milliseconds()
		tr.emit(Event{Type: EventFailed, Err: err})
		if cfg.Listener != nil {
			cfg.Listener.Close()
		}
		return nil, res, fmt.Errorf("punch: %w", err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 1500 * time.Millisecond
	}
	if cfg.Backoff.Base <= 0 {
		cfg.Backoff.Base = 100 * time.Millisecond
	}
	if cfg.Backoff.Cap <= 0 {
		cfg.Backoff.Cap = time.Second
	}
	ln := cfg.Listener
	if ln == nil {
		addr := ":0"
		if cfg.LocalAddr.IsValid() {
			addr = cfg.LocalAddr.String()
		} else if cfg.LocalAddr.Port() != 0 {
			addr = fmt.Sprintf(":%d", cfg.LocalAddr.Port())
		}
		var err error
		if ln, err = Listen(ctx, cfg.Exec, addr); err != nil {
			return finish(err)
		}
		cfg.Listener = ln
	}
	p := &puncher{cfg: cfg, tr: tr, local: addrPortOf(ln.Addr()), arrive: make(chan arrival, maxConns)}
	p.cands = p.dialable(Order(cfg.Remote))
	if cfg.LocalNAT.DestinationDependent() || cfg.PeerNAT.DestinationDependent() {
		// The NAT reports are IPv4's. IPv6 has no NAT mapping ports (at most
		// a stateful firewall, which simultaneous open passes): its
		// candidates are still worth a try, and so are port mappings, which
		// admit anyone; the other IPv4 ones are not. Nor is
		// loopback, which only helps two agents on one machine: they
		// would have been relayed before, and would now wait out a punch
		// for every remote peer.
		p.cands = slices.DeleteFunc(p.cands, func(c Candidate) bool { return c.Kind != Mapped && !BeyondNAT(c.Addr.Addr()) })
		if len(p.cands) == 0 && !cfg.Reachable {
			return finish(ErrRelayNeeded)
		}
	}
	if len(p.cands) == 0 && !cfg.Reachable {
		return finish(ErrNoCandidates)
	}
	for _, c := range p.cands {
		tr.emit(Event{Type: EventCandidate, Candidate: c})
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { p.accept(ctx, ln) })
	if d := time.Until(cfg.StartAt); d > 0 {
		if err := backoff.Sleep(ctx, d); err != nil {
			cancel()
			ln.Close()
			wg.Wait()
			p.drain(nil)
			res.Attempts = int(p.attempts.Load())
			return finish(p.ctxErr(ctx, err))
		}
	}
	for _, c := range p.cands {
		wg.Go(func() { p.dial(ctx, c) })
	}
	var kept *arrival
	var err error
	if cfg.Initiator {
		kept, err = p.initiate(ctx)
	} else {
		kept, err = p.respond(ctx)
	}
	cancel()
	ln.Close()
	wg.Wait()
	p.drain(kept)
	res.Attempts = int(p.attempts.Load())
	if err != nil {
		return finish(p.ctxErr(ctx, err))
	}
	res.Local, res.Remote = addrPortOf(kept.c.LocalAddr()), addrPortOf(kept.c.RemoteAddr())
	res.Candidate, res.Via = kept.cand, kept.via
	res.Elapsed = time.Since(start)
	res.PunchMS = res.Elapsed.Milliseconds()
	tr.emit(Event{Type: EventChosen, Candidate: kept.cand, Local: res.Local, Remote: res.Remote, Via: kept.via})
	return kept.c, res, nil
}

// BeyondNAT says whether ip is reached on a path no IPv4 NAT maps: a
// non-loopback IPv6 address. Behind a destination-dependent NAT only these
// candidates are punched.
func BeyondNAT(ip netip.Addr) bool { return ip.Is6() && !ip.Is4In6() && !ip.IsLoopback() }

// ctxErr turns our own deadline into ErrDeadline and keeps the caller's
// cancellation as it is.
func (p *puncher) ctxErr(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ErrDeadline
	}
	return err
}

// dialable keeps the candidates the listener's address family can reach.
func (p *puncher) dialable(cands []Candidate) []Candidate {
	la := p.local.Addr()
	v4only := la.Is4()
	v6only := la.Is6() && !la.IsUnspecified()
	var out []Candidate
	for _, c := range cands {
		if (v4only && !c.Addr.Addr().Is4()) || (v6only && c.Addr.Addr().Is4()) {
			continue
		}
		out = append(out, c)
		if len(out) == maxCandidates {
			break
		}
	}
	return out
}

// match names the candidate a connection's remote address is, if any.
func (p *puncher) match(remote netip.AddrPort) Candidate {
	for _, c := range p.cands {
		if c.Addr == remote {
			return c
		}
	}
	return Candidate{Addr: remote, Kind: "unknown"}
}

func (p *puncher) deliver(ctx context.Context, a arrival) {
	p.tr.emit(Event{Type: EventConnected, Candidate: a.cand,
		Local: addrPortOf(a.c.LocalAddr()), Remote: addrPortOf(a.c.RemoteAddr()), Via: a.via})
	select {
	case p.arrive <- a:
	case <-ctx.Done():
		a.c.Close()
	}
}

func (p *puncher) accept(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed when the punch ends
		}
		p.deliver(ctx, arrival{c: c, cand: p.match(addrPortOf(c.RemoteAddr())), via: "accept"})
	}
}

func (p *puncher) dial(ctx context.Context, cand Candidate) {
	b := p.cfg.Backoff // each loop owns its copy
	for attempt := 1; ; attempt++ {
		p.attempts.Add(1)
		p.tr.emit(Event{Type: EventSYN, Candidate: cand, Attempt: attempt})
		actx, cancel := context.WithTimeout(ctx, p.cfg.AttemptTimeout)
		c, err := Dial(actx, p.cfg.Exec, p.local, cand.Addr)
		cancel()
		if err == nil {
			p.deliver(ctx, arrival{c: c, cand: cand, via: "dial"})
			return
		}
		if ctx.Err() != nil {
			return
		}
		wait := b.Next()
		p.tr.emit(Event{Type: EventAttemptFailed, Candidate: cand, Attempt: attempt, Backoff: wait, Err: err})
		if backoff.Sleep(ctx, wait) != nil {
			return
		}
	}
}

// best picks the arrival to try first: the best-ranked candidate, then the
// earliest. Arrivals from unknown addresses come last.
func best(as []arrival) int {
	bi := 0
	for i := range as {
		if rankOf(as[i]) < rankOf(as[bi]) {
			bi = i
		}
	}
	return bi
}

func rankOf(a arrival) int {
	if a.cand.Kind == "unknown" {
		return 99
	}
	return Rank(a.cand)
}

// initiate takes connections as they come up, offers the best one with the
// selection marker and keeps the first the responder acknowledges.
func (p *puncher) initiate(ctx context.Context) (*arrival, error) {
	var pending []arrival
	defer func() {
		for _, a := range pending {
			a.c.Close()
		}
	}()
	for {
		if len(pending) == 0 {
			select {
			case a := <-p.arrive:
				pending = append(pending, a)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		// Connections that came up together compete by rank.
		for more := true; more; {
			select {
			case a := <-p.arrive:
				pending = append(pending, a)
			default:
				more = false
			}
		}
		i := best(pending)
		a := pending[i]
		pending = slices.Delete(pending, i, i+1)
		if err := offer(ctx, a.c); err != nil {
			a.c.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		return &a, nil
	}
}

// offer sends the selection marker and waits for its acknowledgement.
func offer(ctx context.Context, c net.Conn) error {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(markSelect); err != nil {
		return fmt.Errorf("send selection: %w", err)
	}
	got := make([]byte, len(markAck))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read selection ack: %w", err)
	}
	if !bytes.Equal(got, markAck) {
		return errors.New("read selection ack: bad marker")
	}
	return c.SetDeadline(time.Time{})
}

// respond reads every connection that comes up for the selection marker and
// keeps the first that carries it.
func (p *puncher) respond(ctx context.Context) (*arrival, error) {
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	selected := make(chan arrival, 1)
	var mu sync.Mutex
	var held []arrival
	defer func() {
		cancel()
		mu.Lock()
		for _, a := range held {
			a.c.Close() // unblocks the readers; the kept one has finished
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		select {
		case a := <-p.arrive:
			mu.Lock()
			if len(held) >= maxConns {
				mu.Unlock()
				a.c.Close()
				continue
			}
			held = append(held, a)
			mu.Unlock()
			wg.Go(func() {
				if err := awaitSelect(rctx, a.c); err != nil {
					return
				}
				select {
				case selected <- a:
				default: // another was selected first
				}
			})
		case a := <-selected:
			mu.Lock()
			held = slices.DeleteFunc(held, func(h arrival) bool { return h.c == a.c })
			mu.Unlock()
			return &a, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// awaitSelect reads the selection marker and acknowledges it.
func awaitSelect(ctx context.Context, c net.Conn) error {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	got := make([]byte, len(markSelect))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, markSelect) {
		return errors.New("bad selection marker")
	}
	if _, err := c.Write(markAck); err != nil {
		return err
	}
	if !stop() {
		return ctx.Err() // the deadline may be set: this conn is being torn down
	}
	return c.SetDeadline(time.Time{})
}

// drain closes every connection still queued except the kept one.
func (p *puncher) drain(kept *arrival) {
	for {
		select {
		case a := <-p.arrive:
			if kept == nil || a.c != kept.c {
				a.c.Close()
			}
		default:
			return
		}
	}
}
