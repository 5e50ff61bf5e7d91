package agent

// `agent ping`: like `tailscale ping`, a round trip over the peer session
// itself (a yamux ping, answered by the peer's mux), so it measures the path
// the session rides, relayed or direct, and not some other connection the
// two hosts could make. Each try re-reads the session and its path: under
// --path auto a session that starts relayed moves to direct under the
// pings, and a lost one is made again.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/peerport/peerport/internal/secure"
)

// Ping defaults, as `agent ping` uses them.
const (
	DefaultPingCount    = 5
	DefaultPingInterval = time.Second
	DefaultPingTimeout  = 5 * time.Second
	// minPingInterval keeps a typo (-i 1ns) from turning a ping into a
	// flood of frames on a session that carries someone's traffic.
	minPingInterval = 10 * time.Millisecond
	// minPeerPrefix is the shortest agent ID prefix a target may be: the
	// 12 characters status shows are plenty, fewer than 4 match by chance.
	minPeerPrefix = 4
)

// ErrNoPeer is why a ping has no session to ride: the target names no
// peer this agent has a session with. A caller may go on to the next
// agent, or make a session itself (with a ticket).
var ErrNoPeer = errors.New("no peer session")

// PingOptions bound a ping.
type PingOptions struct {
	Count    int           // tries; 0: until ctx ends
	Interval time.Duration // from the start of one try to the next; default DefaultPingInterval
	Timeout  time.Duration // per try; default DefaultPingTimeout
	// Wait is how long the first try waits for a session to the target
	// to come up; 0: the target must have one now, else ErrNoPeer.
	Wait time.Duration
}

func (o PingOptions) withDefaults() PingOptions {
	if o.Interval <= 0 {
		o.Interval = DefaultPingInterval
	}
	o.Interval = max(o.Interval, minPingInterval)
	if o.Timeout <= 0 {
		o.Timeout = DefaultPingTimeout
	}
	return o
}

// PingResult is one try: a pong and the path it came over, or why none came.
type PingResult struct {
	Seq  int    `json:"seq"` // from 1
	Peer string `json:"peer"`
	Role string `json:"role,omitempty"` // of our session with the peer: "connector" or "sharer"
	// Path is what the session rode when the pong came: "direct" or
	// "relay", RelayKind "turn" or "broker" on a relay. Addr is the
	// peer's address on a direct path, the relay's on a relayed one.
	Path      string  `json:"path,omitempty"`
	RelayKind string  `json:"relay_kind,omitempty"`
	Addr      string  `json:"addr,omitempty"`
	RTTMillis float64 `json:"rtt_ms"`
	// NAT types as the path was made, to say why a path is relayed.
	NAT     string `json:"nat,omitempty"`
	PeerNAT string `json:"peer_nat,omitempty"`
	Error   string `json:"error,omitempty"` // no pong: why
}

// OK tells whether a pong came.
func (r PingResult) OK() bool { return r.Error == "" }

// String is the line `agent ping` prints for the try.
func (r PingResult) String() string {
	if !r.OK() {
		return fmt.Sprintf("no pong from %s: %s", shortID(r.Peer), r.Error)
	}
	via := r.Path
	if r.RelayKind != "" {
		via += " " + r.RelayKind
	}
	if r.Addr != "" {
		via += " " + r.Addr
	}
	return fmt.Sprintf("pong from %s (%s) in %s", shortID(r.Peer), via, pingMillis(r.RTTMillis))
}

// fmtMillis shows a round trip with the digits that mean something: tenths
// of a millisecond on a LAN, whole ones across a continent.
func pingMillis(ms float64) string {
	switch {
	case ms < 1:
		return strconv.FormatFloat(ms, 'f', 2, 64) + "ms"
	case ms < 100:
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
}

// PingStats sums up the tries of one ping.
type PingStats struct {
	Tries, Pongs   int
	relayed        int // pongs over a relay
	min, max, sum  float64
	last           PingResult // the last pong
	firstDirectSeq int
}

// Add counts one try.
func (s *PingStats) Add(r PingResult) {
	s.Tries++
	if !r.OK() {
		return
	}
	s.Pongs++
	if s.Pongs == 1 || r.RTTMillis < s.min {
		s.min = r.RTTMillis
	}
	s.max = math.Max(s.max, r.RTTMillis)
	s.sum += r.RTTMillis
	if r.Path == PathDirect && s.firstDirectSeq == 0 {
		s.firstDirectSeq = r.Seq
	}
	if r.Path != PathDirect {
		s.relayed++
	}
	s.last = r
}

// Summary is ping(8)'s statistics line.
func (s *PingStats) Summary() string {
	loss := 0.0
	if s.Tries > 0 {
		loss = 100 * float64(s.Tries-s.Pongs) / float64(s.Tries)
	}
	line := fmt.Sprintf("%s, %s, %.0f%% lost", pingPlural(s.Tries, "try", "tries"), pingPlural(s.Pongs, "pong", "pongs"), loss)
	if s.Pongs > 0 {
		line += fmt.Sprintf("; rtt min/avg/max %s/%s/%s", pingMillis(s.min), pingMillis(s.sum/float64(s.Pongs)), pingMillis(s.max))
	}
	return line
}

// Verdict says whether a direct path was made, as the last pong found
// it, and on a relay why not.
func (s *PingStats) Verdict() string {
	switch {
	case s.Pongs == 0:
		return "no pong: the peer did not answer over the session"
	case s.last.Path == PathDirect && s.relayed > 0:
		return fmt.Sprintf("direct connection established (relayed before pong %d)", s.firstDirectSeq)
	case s.last.Path == PathDirect:
		return "direct connection established"
	}
	v := "no direct path: relayed"
	if s.last.RelayKind != "" {
		v += " via " + s.last.RelayKind
	}
	if s.last.NAT != "" || s.last.PeerNAT != "" {
		v += fmt.Sprintf(" (NAT here %s, at the peer %s; agent netcheck tells more)", pingOrUnknown(s.last.NAT), pingOrUnknown(s.last.PeerNAT))
	}
	return v
}

func pingPlural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

func pingOrUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// pingTarget is the peer a ping goes to, and the role of our session with
// it to prefer ("" : connector, then sharer).
type pingTarget struct {
	peer secure.AgentID
	role string
}

// pingTarget resolves what the user typed: a ticket (its sharer), a full
// agent ID, a share name (of a connect: its sharer; of our own share: the
// one peer connected to it), or a prefix of a peer's ID.
func (a *Agent) pingTarget(target string) (pingTarget, error) {
	target = strings.TrimSpace(target)
	if strings.HasPrefix(strings.ToLower(target), secure.TicketPrefix) && len(target) > 40 {
		t, err := secure.ParseTicket(target)
		if err != nil {
			return pingTarget{}, err
		}
		return pingTarget{peer: t.Sharer, role: roleConnector}, nil
	}
	if id, err := secure.ParseAgentID(target); err == nil {
		return pingTarget{peer: id}, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	peers := map[secure.AgentID]bool{}
	for _, f := range a.forwards {
		if f.share == target {
			peers[f.peer] = true
		}
	}
	if len(peers) > 0 {
		return onePeer(target, peers, roleConnector)
	}
	if a.shares[target] != nil {
		if len(a.shares) > 1 {
			// A sharer's session is not tied to one share: with several,
			// which peers use this one cannot be told.
			return pingTarget{}, fmt.Errorf("this agent serves %d shares, and a peer session is not tied to one: ping a peer ID (agent status lists them)", len(a.shares))
		}
		for k, ps := range a.sessions {
			if k.role == roleSharer && !ps.sess.IsClosed() {
				peers[k.peer] = true
			}
		}
		if len(peers) == 0 {
			return pingTarget{}, fmt.Errorf("%w: no peer is connected to share %q", ErrNoPeer, target)
		}
		return onePeer(target, peers, roleSharer)
	}
	if len(target) >= minPeerPrefix {
		for k := range a.sessions {
			if strings.HasPrefix(k.peer.String(), strings.ToLower(target)) {
				peers[k.peer] = true
			}
		}
		if len(peers) > 0 {
			return onePeer(target, peers, "")
		}
	}
	return pingTarget{}, fmt.Errorf("%w to %q: no peer ID, share or ticket this agent has a session for", ErrNoPeer, target)
}

func onePeer(target string, peers map[secure.AgentID]bool, role string) (pingTarget, error) {
	if len(peers) == 1 {
		for p := range peers {
			return pingTarget{peer: p, role: role}, nil
		}
	}
	var ids []string
	for p := range peers {
		ids = append(ids, p.Short())
	}
	slices.Sort(ids)
	return pingTarget{}, fmt.Errorf("%q names %d peers (%s): ping one by its ID", target, len(peers), strings.Join(ids, ", "))
}

// pingSession is the live session to t's peer, the preferred role first,
// then the newest (a sharer holds one per connecting process); nil if none.
func (a *Agent) pingSession(t pingTarget) *peerSession {
	want := t.role
	if want == "" {
		want = roleConnector
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var best *peerSession
	for k, ps := range a.sessions {
		if k.peer != t.peer || ps.sess.IsClosed() {
			continue
		}
		switch {
		case best == nil,
			k.role == want && best.key.role != want,
			k.role == best.key.role && ps.since.After(best.since):
			best = ps
		}
	}
	return best
}

// Ping pings target over this agent's session with it, o.Count times
// (0: until ctx ends), and hands each try to each as it ends. It fails
// with ErrNoPeer when there is no session to ride (within o.Wait), and
// with ctx's error when ctx ends first; a try without a pong is a result,
// not an error.
func (a *Agent) Ping(ctx context.Context, target string, o PingOptions, each func(PingResult)) error {
	o = o.withDefaults()
	t, err := a.pingTarget(target)
	if err != nil {
		return err
	}
	if err := a.awaitPingSession(ctx, t, o.Wait); err != nil {
		return err
	}
	tick := time.NewTimer(0)
	defer tick.Stop()
	next := time.Now()
	for seq := 1; o.Count == 0 || seq <= o.Count; seq++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		// Like ping(8): tries start an interval apart, and a slow one is
		// followed at once, not by a burst that catches up.
		next = next.Add(o.Interval)
		if r, ok := a.pingOnce(ctx, t, seq, o.Timeout); ok {
			each(r)
		} else {
			return ctx.Err()
		}
		tick.Reset(max(time.Until(next), 0))
		if now := time.Now(); next.Before(now) {
			next = now
		}
	}
	return nil
}

// awaitPingSession waits up to wait for a session to t to come up.
func (a *Agent) awaitPingSession(ctx context.Context, t pingTarget, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for a.pingSession(t) == nil {
		if !time.Now().Before(deadline) {
			if wait > 0 {
				return fmt.Errorf("%w to %s: none came up within %v", ErrNoPeer, t.peer.Short(), wait)
			}
			return fmt.Errorf("%w to %s (agent status lists this agent's peers)", ErrNoPeer, t.peer.Short())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-poll.C:
		}
	}
	return nil
}

type pingReply struct {
	d   time.Duration
	err error
}

// pingOnce is one try; false when ctx ended first.
func (a *Agent) pingOnce(ctx context.Context, t pingTarget, seq int, timeout time.Duration) (PingResult, bool) {
	r := PingResult{Seq: seq, Peer: t.peer.String()}
	ps := a.pingSession(t)
	if ps == nil {
		r.Error = "no peer session now (it is being made again)"
		return r, true
	}
	r.Role = ps.key.role
	// yamux's Ping has no context; it ends by itself within its write
	// timeout, or when the session ends, so this goroutine does not
	// outlive the session.
	done := make(chan pingReply, 1)
	go func() {
		d, err := ps.sess.Ping()
		done <- pingReply{d, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case p := <-done:
		ps.fillPing(&r)
		if p.err != nil {
			r.Error = p.err.Error()
			return r, true
		}
		ps.rtt.Store(int64(p.d)) // a fresher figure for status too
		r.RTTMillis = millis(p.d)
	case <-timer.C:
		ps.fillPing(&r)
		r.Error = fmt.Sprintf("none within %v", timeout)
		if !ps.rc.Stats().Attached {
			r.Error += " (the session has no path now; it waits to resume)"
		}
	case <-ctx.Done():
		return r, false
	}
	return r, true
}

// fillPing says which path the session rides now.
func (ps *peerSession) fillPing(r *PingResult) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := ps.cur.out
	r.Path, r.RelayKind, r.NAT, r.PeerNAT = out.path, out.relayKind, out.localNAT, out.peerNAT
	r.Addr = out.relay
	if r.Addr == "" && ps.cur.tls != nil {
		r.Addr = ps.cur.tls.RemoteAddr().String()
	}
}

// servePing is the admin socket's POST /ping?target=T&count=N&interval=D&timeout=D:
// one JSON PingResult per line, each as its try ends. 404 when this agent
// has no session to the target (the caller asks the next agent).
func (a *Agent) servePing(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var o PingOptions
	var err error
	if s := q.Get("count"); s != "" {
		if o.Count, err = strconv.Atoi(s); err != nil || o.Count < 0 {
			http.Error(w, "count: want a whole number, 0 for no end", http.StatusBadRequest)
			return
		}
	}
	for _, d := range []struct {
		name string
		dst  *time.Duration
	}{{"interval", &o.Interval}, {"timeout", &o.Timeout}} {
		if s := q.Get(d.name); s != "" {
			if *d.dst, err = time.ParseDuration(s); err != nil {
				http.Error(w, d.name+": "+err.Error(), http.StatusBadRequest)
				return
			}
		}
	}
	rc := http.NewResponseController(w)
	started := false
	err = a.Ping(r.Context(), q.Get("target"), o, func(res PingResult) {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			started = true
		}
		json.NewEncoder(w).Encode(res)
		rc.Flush()
	})
	switch {
	case started || err == nil || r.Context().Err() != nil:
	case errors.Is(err, ErrNoPeer):
		http.Error(w, err.Error(), http.StatusNotFound)
	default:
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
	}
}

// RequestPing pings target through the running agents of stateDir: the
// first one with a session to it pings, and each try comes to each as it
// ends. It fails with ErrNoPeer when none has one (or none runs).
func RequestPing(ctx context.Context, stateDir, target string, o PingOptions, each func(PingResult)) error {
	socks, err := filepath.Glob(filepath.Join(stateDir, RunDir, "agent-*.sock"))
	if err != nil {
		return err
	}
	q := url.Values{"target": {target}, "count": {strconv.Itoa(o.Count)}}
	if o.Interval > 0 {
		q.Set("interval", o.Interval.String())
	}
	if o.Timeout > 0 {
		q.Set("timeout", o.Timeout.String())
	}
	running := 0
	var last error
	for _, sock := range socks {
		resp, err := pingDo(ctx, sock, "/ping?"+q.Encode())
		if adminGone(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("agent at %s: %w", sock, err)
		}
		running++
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound {
				last = noPeerError(strings.TrimSpace(string(msg)))
				continue
			}
			return errors.New(strings.TrimSpace(string(msg)))
		}
		return readPings(ctx, resp.Body, each)
	}
	switch {
	case running == 0:
		return fmt.Errorf("%w: no agent running with this state dir (with a ticket, agent ping connects by itself)", ErrNoPeer)
	case running == 1 && last != nil:
		return last
	}
	return fmt.Errorf("%w to %q in any of the %d agents running with this state dir (agent status lists their peers)", ErrNoPeer, target, running)
}

// noPeerError is an agent's ErrNoPeer, as its admin socket said it.
type noPeerError string

func (e noPeerError) Error() string        { return string(e) }
func (e noPeerError) Is(target error) bool { return target == ErrNoPeer }

func readPings(ctx context.Context, body io.ReadCloser, each func(PingResult)) error {
	defer body.Close()
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		var r PingResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("ping: bad answer from the agent: %w", err)
		}
		each(r)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("ping: the agent stopped answering: %w", err)
	}
	return nil
}

// pingDo is adminDo without its whole-request timeout: a ping's answer
// streams for as long as its count says; ctx bounds it instead.
func pingDo(ctx context.Context, sock, path string) (*http.Response, error) {
	c := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+path, nil)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// PingTicket pings the sharer of spec's ticket from an agent of its own,
// run here with opts, for when no running agent has a session to it: the
// agent connects with the ticket (a forward on a throwaway loopback
// listener, which nobody is told of), waits up to o.Wait for the session,
// pings over it and stops. A ticket the broker refuses ends it with that
// refusal.
func PingTicket(ctx context.Context, opts Options, spec ConnectSpec, o PingOptions, each func(PingResult)) error {
	if spec.Ticket == nil {
		return errors.New("ping: no ticket")
	}
	if o.Wait <= 0 {
		o.Wait = time.Minute
	}
	spec.Listen, spec.Timeout = "127.0.0.1:0", o.Wait
	ready := make(chan struct{})
	listening := sync.OnceFunc(func() { close(ready) })
	opts.Connects = []ConnectSpec{spec}
	opts.Shares, opts.Reload, opts.MetricsListen, opts.KeepGoing = nil, nil, "", false
	opts.OnListen = func(ConnectSpec, net.Addr) { listening() }
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = time.Second // nothing of the user's rides this session
	}
	a, err := New(opts)
	if err != nil {
		return err
	}
	pingCtx, cancelPing := context.WithCancel(ctx)
	defer cancelPing()
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var runErr error
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		runErr = a.Run(runCtx)
		cancelPing() // a refused ticket, or the forward's timeout, ends the ping
	}()
	// The forward's own timeout says why no session came (relay needed,
	// sharer offline); the ping's wait gives it the time to.
	o.Wait += 10 * time.Second
	select {
	case <-ready:
		err = a.Ping(pingCtx, spec.Ticket.String(), o, each)
	case <-ran:
	}
	stopRun()
	<-ran
	switch {
	case runErr != nil:
		return runErr
	case err != nil && ctx.Err() == nil && pingCtx.Err() != nil:
		return errors.New("ping: the agent stopped")
	}
	return err
}
