package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/backoff"
	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/mux"
)

const (
	headerTimeout = 10 * time.Second
	targetTimeout = 10 * time.Second
	// peerWait bounds how long an accepted local connection waits for the
	// peer session to come (back) up before it is closed.
	peerWait = 30 * time.Second
	// introTryTimeout bounds one try of asking the sharer for its port,
	// so that a broker that is down is said, and tried again.
	introTryTimeout = 10 * time.Second
)

// serveStream is the sharer's side of one forwarded connection.
func (a *Agent) serveStream(ctx context.Context, ps *peerSession, st *mux.Stream) {
	st.SetReadDeadline(time.Now().Add(headerTimeout))
	h, err := mux.ReadHeader(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		ps.log.WithError(err).Warn("bad stream header")
		mux.WriteStatus(st, mux.StatusBadHeader, err.Error())
		st.Close()
		return
	}
	log := ps.log.WithField("share", h.Share)
	s := a.shareNamed(h.Share)
	if s == nil || !a.authorized(ps, s, h.Proof) {
		// One answer for both, so a connector learns nothing of shares
		// it holds no ticket for.
		log.Warn("stream refused: not authorized for this share")
		a.recent.refused(ps.key.role, h.Share, ps.key.peer.String(), "", "not authorized")
		mux.WriteStatus(st, mux.StatusDenied, "not authorized for share "+strconv.Quote(h.Share))
		st.Close()
		return
	}
	d := net.Dialer{Timeout: targetTimeout}
	target, err := d.DialContext(ctx, "tcp", s.Target)
	if err != nil {
		log.WithError(err).Warn("target unreachable; closing this connection only")
		a.recent.refused(ps.key.role, h.Share, ps.key.peer.String(), "", "target unreachable")
		mux.WriteStatus(st, mux.StatusUnreachable, err.Error())
		st.Close()
		return
	}
	if err := mux.WriteStatus(st, mux.StatusOK, ""); err != nil {
		target.Close()
		st.Close()
		return
	}
	a.pipe(st, target, a.recent.opened(ps, h.Share, ""), &a.stats, &ps.stats, s.stats)
}

// authorized checks a stream's claim to a share: a ticket proof bound to this
// TLS session, or the connector's identity on the share's allow list.
func (a *Agent) authorized(ps *peerSession, s *share, proof []byte) bool {
	if len(proof) > 0 {
		return s.ticket != nil && secure.VerifyProof(ps.state, s.ticket.ProofKey(), proof) == nil
	}
	return slices.Contains(s.Allow, ps.key.peer) || s.admitted.has(ps.key.peer)
}

// forward is a connector's local listener and everything accepted on it.
type forward struct {
	a      *Agent
	spec   ConnectSpec
	share  string
	peer   secure.AgentID
	log    logrus.FieldLogger
	stats  counters
	ctx    context.Context // ends when the forward is removed or the agent stops
	cancel context.CancelFunc

	mu         sync.Mutex
	path       string // policy; a reload may change it
	listen     string
	lastErr    string
	reconnects int
}

func newForward(a *Agent, c ConnectSpec) *forward {
	f := &forward{a: a, spec: c, share: c.Share, peer: c.Peer, path: c.Path}
	f.ctx, f.cancel = context.WithCancel(a.ctx)
	if c.Ticket != nil {
		f.share, f.peer = c.Ticket.Share, c.Ticket.Sharer
	}
	f.log = a.log.WithFields(logrus.Fields{"component": "forward", "share": f.share, "peer": f.peer.Short()})
	return f
}

// run opens the local listener and serves it: at once with an explicit
// listen address, else as soon as the sharer, through the broker, has told
// the target's port. Then it makes the first peer session. A final refusal
// (a ticket the broker does not accept), or no success within the spec's
// Timeout, ends the forward with the reason instead of leaving a listener
// that can never work.
func (f *forward) run() error {
	ctx := f.ctx
	first, cancel := ctx, context.CancelFunc(func() {})
	if f.spec.Timeout > 0 {
		first, cancel = context.WithTimeout(ctx, f.spec.Timeout)
	}
	defer cancel()
	var ln net.Listener
	if f.spec.Listen != "" {
		var err error
		if ln, err = f.openListener(f.spec.Listen); err != nil {
			return err
		}
		f.serveListener(ln)
	}
	// The sharer checks this forward's own claim (a session to it may be
	// up already, made with another forward's ticket) and says its port.
	var port uint16
	err := f.untilUp(first, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, introTryTimeout)
		defer cancel()
		rep, err := f.intro(ctx, &proto.Connect{})
		if err == nil {
			port = rep.Port
		}
		return err
	})
	// A share of this agent's own identity (the same state dir) has its
	// target on this machine: a listener on its port would get the
	// share's own connections, forwarded back to it, in a loop.
	own := f.peer == f.a.id.ID() && port != 0
	if err == nil && own && ln != nil && ln.Addr().(*net.TCPAddr).Port == int(port) {
		ln.Close()
		return fmt.Errorf("share %s: %w: listening on %s, the port of its own target; pick another --listen", f.share, ErrLoop, ln.Addr())
	}
	if err == nil && ln == nil {
		listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
		switch {
		case port == 0:
			return fmt.Errorf("share %s: the sharer did not say its port; pass --listen", f.share)
		case own:
			f.log.Infof("the share is this agent's own, on this machine: not taking %s, which it dials; listening on a free port", listen)
			listen = "127.0.0.1:0"
		}
		if ln, err = f.openListener(listen); err != nil {
			return err
		}
		f.serveListener(ln)
	}
	if err == nil {
		err = f.untilUp(first, func(ctx context.Context) error {
			_, err := f.a.session(ctx, f.peer, f.policy(), f.dialer())
			return err
		})
	}
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return f.stopped(err)
	}
	f.a.spawn(func() { f.keep(ctx) })
	return nil
}

// stopped is run's error for err: none when the forward was stopped.
func (f *forward) stopped(err error) error {
	if f.ctx.Err() != nil {
		return nil
	}
	return err
}

// openListener opens the forward's listener on addr. The default address (the
// shared port) gives way to a free port when taken.
func (f *forward) openListener(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil && f.spec.Listen == "" {
		f.log.WithError(err).Infof("%s taken; listening on a free port", addr)
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return nil, fmt.Errorf("listen for share %s: %w", f.share, err)
	}
	return ln, nil
}

// serveListener says where the forward listens and serves ln until the
// forward ends.
func (f *forward) serveListener(ln net.Listener) {
	f.announce(ln)
	f.a.spawn(func() { f.accept(f.ctx, ln) })
}

func (f *forward) announce(ln net.Listener) {
	f.mu.Lock()
	f.listen = ln.Addr().String()
	f.mu.Unlock()
	if f.a.opts.OnListen != nil {
		f.a.opts.OnListen(f.spec, ln.Addr())
	}
	f.log.WithField("listen", ln.Addr().String()).Info("forwarding")
}

// accept serves ln until ctx ends or ln is closed.
func (f *forward) accept(ctx context.Context, ln net.Listener) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				f.log.WithError(err).Error("accept failed; forward stopped")
			}
			return
		}
		// Under the agent's context, not the forward's: a drain or a
		// reload that ends the forward lets accepted connections finish,
		// also one still waiting for its session.
		f.a.pending.Add(1)
		f.a.spawn(func() { f.serve(f.a.ctx, c) })
	}
}

// untilUp calls try until it succeeds, retrying with backoff what may
// pass (sharer offline, broker down, a failed punch) and saying what it
// waits for; it gives up on what cannot pass (a ticket the broker refuses)
// and when ctx ends (ErrGaveUp at the forward's Timeout).
func (f *forward) untilUp(ctx context.Context, try func(context.Context) error) error {
	bo := backoff.Backoff{Base: 500 * time.Millisecond, Cap: 15 * time.Second}
	start := time.Now()
	var last error
	for {
		err := try(ctx)
		if err == nil {
			return nil
		}
		if f.ctx.Err() != nil {
			return err
		}
		if errors.Is(err, ErrUnauthorized) && f.refused(ctx) {
			return fmt.Errorf("share %s: %w", f.share, err)
		}
		if ctx.Err() != nil {
			if last == nil || !errors.Is(err, context.DeadlineExceeded) {
				last = err
			}
			return gaveUp(f.share, time.Since(start).Round(time.Second), last)
		}
		last = err
		f.setErr(err)
		d := bo.Next()
		f.log.WithError(err).Warnf("waiting for the sharer: %s; next try in %v", waitingFor(err), d.Round(100*time.Millisecond))
		if backoff.Sleep(ctx, d) != nil {
			if f.ctx.Err() != nil {
				return err
			}
			return gaveUp(f.share, time.Since(start).Round(time.Second), last)
		}
	}
}

func (f *forward) broker() *brokerClient { return f.a.brokerFor(f.spec.Ticket) }

// refused tells whether the broker refuses this forward's own claim. A dial
// to a sharer is shared by its forwards, so an unauthorized dial may have
// been another forward's bad ticket; only our own refusal is final.
func (f *forward) refused(ctx context.Context) bool {
	_, err := f.intro(ctx, &proto.Connect{})
	return errors.Is(err, ErrUnauthorized)
}

// keep re-makes the peer session when it is lost (path or NAT mapping gone,
// sharer restarted), with backoff, so the forward is ready before the next
// local connection rather than making it wait.
func (f *forward) keep(ctx context.Context) {
	bo := backoff.Backoff{Base: 500 * time.Millisecond, Cap: 30 * time.Second, Stable: time.Minute}
	for {
		ps, err := f.a.session(ctx, f.peer, f.policy(), f.dialer())
		if err == nil {
			bo.Connected(time.Now())
			select {
			case <-ctx.Done():
				return
			case <-ps.sess.CloseChan():
			}
			if ps.sess.Retiring() {
				// Retired here, for a session that replaced it: nothing
				// was lost, and the next round finds that one.
				continue
			}
			bo.Lost(time.Now())
			if ctx.Err() != nil || f.a.draining.Load() {
				return
			}
			f.mu.Lock()
			f.reconnects++
			f.mu.Unlock()
			f.log.Warn("peer session lost; reconnecting")
			continue
		}
		if errors.Is(err, ErrUnauthorized) || ctx.Err() != nil {
			if ctx.Err() == nil {
				f.setErr(err)
				f.log.WithError(err).Error("the broker no longer admits this forward; it stays down")
			}
			return
		}
		f.setErr(err)
		d := bo.Next()
		f.log.WithError(err).Warnf("waiting for the sharer: %s; next try in %v", waitingFor(err), d.Round(100*time.Millisecond))
		if backoff.Sleep(ctx, d) != nil {
			return
		}
	}
}

// dialer makes this forward's peer channel.
func (f *forward) dialer() dialFunc {
	return func(ctx context.Context, p path, hurry func()) (net.Conn, outcome, error) {
		c, out, _, err := p.dial(ctx, f.broker(), f.peer, f.intro, hurry)
		return c, out, err
	}
}

// intro asks the broker to introduce us to the sharer, for a punch or a
// relay; a direct one without candidates only checks the ticket and learns
// the port.
func (f *forward) intro(ctx context.Context, req *proto.Connect) (*proto.ConnectReply, error) {
	c, err := f.broker().conn(ctx)
	if err != nil {
		return nil, err
	}
	req.Sharer, req.Share = f.peer.String(), f.share
	if t := f.spec.Ticket; t != nil {
		k := t.AdmitKey()
		req.Admit = k[:]
	}
	return c.connect(ctx, req)
}

func (f *forward) policy() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.path
}

// setPath takes a reloaded path policy; it applies from the next dial.
func (f *forward) setPath(p string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p != f.path {
		f.log.WithFields(logrus.Fields{"from": f.path, "to": p}).Info("path policy changed; applies from the next connection to the sharer")
		f.path = p
	}
}

func (f *forward) setErr(err error) {
	f.mu.Lock()
	f.lastErr = err.Error()
	f.mu.Unlock()
}

// serve forwards one accepted local connection as a stream.
// The caller counted c in a.pending; it stays there until c is piped or
// closed.
func (f *forward) serve(ctx context.Context, c net.Conn) {
	defer f.a.pending.Add(-1) // after pipe has counted the stream
	log := f.log.WithField("client", c.RemoteAddr().String())
	var st *mux.Stream
	var ps *peerSession
	var err error
	// A stream opened as its session ends (the sharer retired it) gets a
	// second try, on the session that replaces it.
	for try := 0; try < 2 && st == nil; try++ {
		if ps, err = f.waitSession(ctx); err != nil {
			f.setErr(err)
			log.WithError(err).Warn("no session to the sharer; closing connection")
			f.a.recent.refused(roleConnector, f.share, f.peer.String(), c.RemoteAddr().String(), "no session to the sharer")
			c.Close()
			return
		}
		if st, err = f.open(ps); err != nil && !ps.sess.IsClosed() && !ps.sess.Retiring() {
			break
		}
	}
	if err != nil {
		f.setErr(err)
		log.WithError(err).Warn("stream refused; closing connection")
		f.a.recent.refused(roleConnector, f.share, f.peer.String(), c.RemoteAddr().String(), err.Error())
		c.Close()
		return
	}
	f.a.pipe(st, c, f.a.recent.opened(ps, f.share, c.RemoteAddr().String()), &f.a.stats, &ps.stats, &f.stats)
}

// waitSession gets the session for an accepted connection, retrying for up
// to peerWait while the sharer is away (offline, restarting, punching).
func (f *forward) waitSession(ctx context.Context) (*peerSession, error) {
	ctx, cancel := context.WithTimeout(ctx, peerWait)
	defer cancel()
	for {
		ps, err := f.a.session(ctx, f.peer, f.policy(), f.dialer())
		if err == nil || ctx.Err() != nil || (errors.Is(err, ErrUnauthorized) && f.refused(ctx)) {
			return ps, err
		}
		if backoff.Sleep(ctx, time.Second) != nil {
			return nil, err
		}
	}
}

func (f *forward) open(ps *peerSession) (*mux.Stream, error) {
	proof, err := ps.proof(f.spec.Ticket)
	if err != nil {
		return nil, err
	}
	st, err := ps.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	if err := mux.WriteHeader(st, mux.Header{Share: f.share, Proof: proof}); err != nil {
		st.Close()
		return nil, err
	}
	st.SetReadDeadline(time.Now().Add(headerTimeout + targetTimeout))
	err = mux.ReadStatus(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}
