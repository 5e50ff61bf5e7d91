package broker

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/shortcode"
)

// Short codes: the broker hands out numbered slots to sharers and passes
// the messages of a claim between the claimant and the slot's sharer. It
// never sees a code's words, so it can route a claim but not make one
// that works (package shortcode).

const (
	// DefaultCodeTTL is how long a slot stays open when the sharer asks
	// for no other time.
	DefaultCodeTTL = 10 * time.Minute
	// MaxCodesPerSession bounds the slots one control session holds.
	MaxCodesPerSession = 8
)

// errSlotsFull: no slot is free.
var errSlotsFull = errors.New("no free code slot")

// codeSlots are the open slots, guarded by Server.mu.
type codeSlots struct {
	bySlot map[uint32]*codeSlot
	// freed are the slots closed since the last releaseCodes: the cluster
	// must hear, outside Server.mu.
	freed []uint32
}

type codeSlot struct {
	sess    *session
	share   string
	expires time.Time
}

// open gives s a slot for share until now+ttl: want when it is free or held
// by s's own identity (a code given out before s's agent reconnected),
// else a random free one. Numbers stay short while few are open, and are
// random so that a stale code rarely lands on someone else's slot.
func (t *codeSlots) open(s *session, share string, want uint32, ttl time.Duration, now time.Time) (uint32, error) {
	if t.bySlot == nil {
		t.bySlot = make(map[uint32]*codeSlot)
	}
	t.expire(now)
	held := 0
	for _, c := range t.bySlot {
		if c.sess == s {
			held++
		}
	}
	if held >= MaxCodesPerSession {
		return 0, fmt.Errorf("this session holds %d codes, the limit", held)
	}
	slot := want
	if c, taken := t.bySlot[want]; want == 0 || want > shortcode.MaxSlot || (taken && c.sess.id != s.id) {
		var err error
		if slot, err = t.free(); err != nil {
			return 0, err
		}
	} else if taken {
		t.drop(slot) // an older session of the same agent: the new one holds it
	}
	t.bySlot[slot] = &codeSlot{sess: s, share: share, expires: now.Add(ttl)}
	return slot, nil
}

func (t *codeSlots) free() (uint32, error) {
	n := len(t.bySlot)
	for span := uint32(100); span <= shortcode.MaxSlot+1; span *= 10 {
		if n >= int(span)/4 && span <= shortcode.MaxSlot {
			continue // crowded: a longer number
		}
		for range 32 {
			slot := 1 + rand.Uint32N(span-1)
			if _, taken := t.bySlot[slot]; !taken {
				return slot, nil
			}
		}
	}
	for slot := uint32(1); slot <= shortcode.MaxSlot; slot++ {
		if _, taken := t.bySlot[slot]; !taken {
			return slot, nil
		}
	}
	return 0, errSlotsFull
}

// lookup returns slot's holder while it is open.
func (t *codeSlots) lookup(slot uint32, now time.Time) *codeSlot {
	c := t.bySlot[slot]
	if c != nil && !now.Before(c.expires) {
		t.drop(slot)
		return nil
	}
	return c
}

// close frees slot if s holds it.
func (t *codeSlots) close(s *session, slot uint32) {
	if c := t.bySlot[slot]; c != nil && c.sess == s {
		t.drop(slot)
	}
}

// leave frees every slot of s.
func (t *codeSlots) leave(s *session) {
	for slot, c := range t.bySlot {
		if c.sess == s {
			t.drop(slot)
		}
	}
}

func (t *codeSlots) expire(now time.Time) {
	for slot, c := range t.bySlot {
		if !now.Before(c.expires) {
			t.drop(slot)
		}
	}
}

func (t *codeSlots) drop(slot uint32) {
	delete(t.bySlot, slot)
	t.freed = append(t.freed, slot)
}

// releaseCodes tells the cluster of the slots this node no longer holds.
func (srv *Server) releaseCodes() {
	srv.mu.Lock()
	freed := srv.codes.freed
	srv.codes.freed = nil
	srv.mu.Unlock()
	if cl := srv.cluster.Load(); cl != nil {
		for _, slot := range freed {
			cl.release(codeSubject(slot))
		}
	}
}

func (s *session) codeOpen(m *proto.CodeOpen) *proto.CodeOpened {
	rep := &proto.CodeOpened{ID: m.ID}
	if s.guest {
		rep.Code, rep.Message = proto.CodeUnauthorized, guestRefusal
		return rep
	}
	ttl := time.Duration(m.TTLSeconds) * time.Second
	if ttl <= 0 {
		ttl = DefaultCodeTTL
	}
	srv := s.srv
	want := m.Slot
	for try := 0; ; try++ {
		srv.mu.Lock()
		var err error
		if s.shares[m.Share] == nil {
			err = fmt.Errorf("share %q is not registered on this session", m.Share)
			rep.Code = proto.CodeBadRequest
		} else if rep.Slot, err = srv.codes.open(s, m.Share, want, ttl, srv.cfg.Now()); err != nil {
			rep.Code = proto.CodeLimit
		}
		srv.mu.Unlock()
		srv.releaseCodes()
		if err != nil {
			rep.Message = err.Error()
			return rep
		}
		cl := srv.cluster.Load()
		if cl == nil {
			break
		}
		// A number is the cluster's, not the node's: one another node
		// holds is taken. A race of two nodes for one number between
		// this probe and the hold is left to chance; the claim then
		// reaches one of them, and a wrong guess burns only one code.
		if try < 8 && cl.codeHeldElsewhere(rep.Slot) {
			srv.mu.Lock()
			srv.codes.close(s, rep.Slot)
			srv.mu.Unlock()
			srv.releaseCodes()
			want = 0
			continue
		}
		cl.hold(codeSubject(rep.Slot))
		break
	}
	rep.TTLSeconds = uint32(ttl / time.Second)
	s.log.WithFields(logrus.Fields{"share": m.Share, "slot": rep.Slot, "ttl": ttl}).Info("code slot opened")
	return rep
}

func (s *session) codeClose(m *proto.CodeClose) *proto.Result {
	s.srv.mu.Lock()
	s.srv.codes.close(s, m.Slot)
	s.srv.mu.Unlock()
	s.srv.releaseCodes()
	return &proto.Result{ID: m.ID}
}

// codeClaim passes one step of a claim to the slot's sharer and its answer
// back, in its own goroutine like an introduction. Only members claim: the
// broker token is then a first bar to guessing, and rate limits apply per
// agent.
func (s *session) codeClaim(m *proto.CodeClaim) bool {
	fail := func(code, msg string) bool {
		s.srv.metrics.codeClaims.WithLabelValues(claimResult(code)).Inc()
		return s.send(&proto.CodeClaimReply{ID: m.ID, Code: code, Message: msg}) == nil
	}
	if s.guest {
		return fail(proto.CodeUnauthorized, "a short code works with the broker you are logged in to: run agent login first")
	}
	if ok, msg := s.srv.allowRequest(reqConnect, s.raw.RemoteAddr(), s.id); !ok {
		return fail(proto.CodeLimit, msg)
	}
	select {
	case s.pending <- struct{}{}:
	default:
		return fail(proto.CodeLimit, "too many requests in flight on this session; retry later")
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.pending }()
		rep := s.srv.passClaim(s, m)
		if rep == nil {
			return // the claimant is gone
		}
		s.srv.metrics.codeClaims.WithLabelValues(claimResult(rep.Code)).Inc()
		s.send(rep)
	}()
	return true
}

// passClaim finds the slot's sharer, on this node or through the cluster,
// and returns its answer for c, or nil when c is gone.
func (srv *Server) passClaim(c *session, m *proto.CodeClaim) *proto.CodeClaimReply {
	log := c.log.WithField("slot", m.Slot)
	rep, held := srv.passHere(c.id.String(), m, c.done, log)
	if cl := srv.cluster.Load(); !held && cl != nil {
		ctx, cancel := untilClosed(c.done)
		r, err := cl.request(ctx, codeSubject(m.Slot), &clusterMsg{Claim: &claimRequest{Connector: c.id.String(), Claim: *m}}, srv.cfg.IntroTimeout+2*time.Second)
		cancel()
		switch {
		case c.closed():
			return nil
		case errors.Is(err, errNobody):
		case err != nil:
			log.WithError(err).Warn("code claim through the cluster failed")
			rep = &proto.CodeClaimReply{Code: proto.CodeClusterUnavailable, Message: "the code is not on this broker node, and the cluster did not answer; retry later"}
		case r.Claim != nil:
			rep = r.Claim
		}
	}
	if rep == nil {
		return nil
	}
	if rep.Code == proto.CodeNotFound && !held {
		log.Info("code claim: no such slot")
	}
	rep.ID = m.ID
	return rep
}

// passHere passes a claim to the sharer holding its slot on this node.
// held is false when no session here holds the slot: the answer is then
// "no such code", which the cluster may still better.
func (srv *Server) passHere(connector string, m *proto.CodeClaim, gone <-chan struct{}, log logrus.FieldLogger) (*proto.CodeClaimReply, bool) {
	rep := &proto.CodeClaimReply{}
	srv.mu.Lock()
	slot := srv.codes.lookup(m.Slot, srv.cfg.Now())
	if slot == nil {
		srv.mu.Unlock()
		srv.releaseCodes()
		rep.Code, rep.Message = proto.CodeNotFound, "no such code: it expired, was used up, or was never given out"
		return rep, false
	}
	sharer := slot.sess
	srv.nextIntro++
	id := srv.nextIntro
	ch := make(chan *proto.CodePassReply, 1)
	sharer.passes[id] = ch
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(sharer.passes, id)
		srv.mu.Unlock()
	}()
	if err := sharer.send(&proto.CodePass{Pass: id, Slot: m.Slot, Step: m.Step, Connector: connector, Msg: m.Msg}); err != nil {
		rep.Code, rep.Message = proto.CodeNotFound, "the sharer went offline"
		return rep, true
	}
	t := time.NewTimer(srv.cfg.IntroTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		rep.Msg, rep.Code, rep.Message = r.Msg, r.Code, r.Message
		if r.Code == proto.CodeWrongCode {
			// Burnt: the sharer closes it too, but a guesser must not get
			// a second try through a lost or late close.
			srv.mu.Lock()
			srv.codes.close(sharer, m.Slot)
			srv.mu.Unlock()
			srv.releaseCodes()
		}
		log.WithFields(logrus.Fields{"step": m.Step, "code": r.Code}).Info("code claim answered")
		return rep, true
	case <-sharer.done:
		rep.Code, rep.Message = proto.CodeNotFound, "the sharer went offline"
	case <-t.C:
		rep.Code, rep.Message = proto.CodeTimeout, fmt.Sprintf("the sharer did not answer within %v", srv.cfg.IntroTimeout)
	case <-gone:
		return nil, true
	}
	log.WithField("code", rep.Code).Info("code claim failed")
	return rep, true
}

func (s *session) codePassReply(m *proto.CodePassReply) {
	s.srv.mu.Lock()
	ch, ok := s.passes[m.Pass]
	delete(s.passes, m.Pass)
	s.srv.mu.Unlock()
	if ok {
		ch <- m // buffered, and the entry is gone: never blocks
	}
}

// claimResult is a claim step's metric label: "answered" or the failure.
func claimResult(code string) string {
	if code == "" {
		return "answered"
	}
	return metricCode(code)
}
