package agent

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
	"github.com/peerport/peerport/internal/shortcode"
)

// Short codes (package shortcode): a share may offer a code such as
// 7-tidal-orbit, good for a few minutes and a number of uses. A connector
// logged in to the same broker redeems it in an exchange through the
// broker; the sharer then admits the connector's identity to the share,
// and the connector connects by identity as with --allow.

// CodeSpec asks a share to offer a short code.
type CodeSpec struct {
	TTL  time.Duration // default DefaultCodeTTL; the broker caps it at an hour
	Uses int           // successful redemptions before the code is spent; default 1
}

// DefaultCodeTTL is how long a code is good for by default.
const DefaultCodeTTL = 10 * time.Minute

// burntMsg tells a connector what a wrong code did.
const burntMsg = "it is burnt now; ask the sharer for a new one"

// claimTimeout bounds how long a claim may wait between its two steps
// before it counts as a wrong guess.
const claimTimeout = 30 * time.Second

// Errors a connector redeeming a code branches on.
var (
	// ErrWrongCode: the sharer took the code for a wrong one, and burnt it.
	ErrWrongCode = errors.New("wrong code")
	// ErrNoSuchCode: the broker has no open code of that number: it
	// expired, was used up or burnt, or was never given out.
	ErrNoSuchCode = errors.New("no such code")
)

// codeBook holds the codes this agent's shares offer, by slot.
type codeBook struct {
	a  *Agent
	mu sync.Mutex
	// byShare: the share's current offer; it stays, done, once the code
	// is spent, so that a reconnect does not offer a new one.
	byShare map[string]*codeOffer
	// failed counts the sessions in a row whose code could not be opened.
	// A broker too old to know codes ends the session at the request, so
	// trying on every reconnect would keep the share off the broker.
	failed map[string]int
}

// maxCodeFailures is when a share stops asking for a code.
const maxCodeFailures = 2

// codeOffer is one code given out for a share.
type codeOffer struct {
	share   string
	code    shortcode.Code
	expires time.Time
	uses    int
	done    string // why it ended: "used", "burnt", "expired"; "" while open
	timer   *time.Timer
	claim   *codeClaim // the exchange under way; one at a time
}

type codeClaim struct {
	ex        *shortcode.Sharer
	connector string
	timer     *time.Timer
}

// admitted are the agents codes admitted to one share, kept across
// reloads like its counters.
type admitted struct {
	mu  sync.Mutex
	ids []secure.AgentID
}

func (ad *admitted) add(id secure.AgentID) {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	if !slices.Contains(ad.ids, id) && len(ad.ids) < proto.MaxAllow/2 {
		ad.ids = append(ad.ids, id)
	}
}

func (ad *admitted) has(id secure.AgentID) bool {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	return slices.Contains(ad.ids, id)
}

func (ad *admitted) list() []secure.AgentID {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	return slices.Clone(ad.ids)
}

// open opens share s's code on a new control session. A code given out
// before keeps its number when the broker grants it again (it does unless
// another agent took the slot meanwhile), else it gets a new one, which is
// announced again.
func (k *codeBook) open(ctx context.Context, c *controlConn, s *share) error {
	if s.Code == nil {
		return nil
	}
	k.mu.Lock()
	o := k.byShare[s.Name]
	if o != nil && o.done != "" {
		k.mu.Unlock()
		return nil
	}
	var want uint32
	ttl := s.Code.TTL
	if ttl <= 0 {
		ttl = DefaultCodeTTL
	}
	if o != nil {
		want, ttl = o.code.Slot, time.Until(o.expires)
	}
	k.mu.Unlock()
	secs := uint32(max(ttl.Round(time.Second), time.Second) / time.Second)
	rep, err := c.openCode(ctx, &proto.CodeOpen{Share: s.Name, Slot: want, TTLSeconds: min(secs, proto.MaxCodeTTL)})
	if err != nil {
		k.mu.Lock()
		k.failed[s.Name]++
		if k.failed[s.Name] >= maxCodeFailures {
			k.byShare[s.Name] = &codeOffer{share: s.Name, done: "failed"}
			err = fmt.Errorf("%w; no more tries (a broker of an older version offers no codes)", err)
		}
		k.mu.Unlock()
		return fmt.Errorf("open a code for share %s: %w", s.Name, err)
	}
	k.mu.Lock()
	delete(k.failed, s.Name)
	k.mu.Unlock()
	if o != nil && rep.Slot == want {
		return nil
	}
	code, err := shortcode.New(rep.Slot)
	if err != nil {
		return err
	}
	uses := s.Code.Uses
	if uses <= 0 {
		uses = 1
	}
	n := &codeOffer{share: s.Name, code: code, expires: time.Now().Add(time.Duration(rep.TTLSeconds) * time.Second), uses: uses}
	k.mu.Lock()
	if o != nil {
		o.timer.Stop()
		n.uses = o.uses
	}
	n.timer = time.AfterFunc(time.Until(n.expires), func() { k.end(n, "expired") })
	k.byShare[s.Name] = n
	k.mu.Unlock()
	log := k.a.log.WithFields(logrus.Fields{"share": s.Name, "expires": n.expires.Format(time.TimeOnly)})
	if o != nil {
		log.Warnf("the code's number was taken while the broker was away: the share's code is now %s (the old one no longer works)", code)
	}
	if k.a.opts.OnCode != nil {
		k.a.opts.OnCode(s.Name, code.String())
	}
	log.Infof("code %s opened: valid for %v, %d use(s)", code, time.Until(n.expires).Round(time.Second), n.uses)
	return nil
}

// end closes o for why, at the broker too, unless it ended already.
func (k *codeBook) end(o *codeOffer, why string) {
	k.mu.Lock()
	if o.done != "" {
		k.mu.Unlock()
		return
	}
	o.done = why
	o.timer.Stop()
	if o.claim != nil {
		o.claim.timer.Stop()
		o.claim = nil
	}
	k.mu.Unlock()
	log := k.a.log.WithFields(logrus.Fields{"share": o.share, "code": o.code.String()})
	switch why {
	case "burnt":
		log.Warn("a wrong code was tried: the code is burnt; share the ticket or start with --code again for a new one")
	case "expired":
		log.Info("code expired")
	default:
		log.Infof("code %s", why)
	}
	if s := k.a.shareNamed(o.share); s != nil && s.broker != nil {
		k.a.spawn(func() { s.broker.closeCode(k.a.ctx, o.code.Slot) })
	}
}

// live is the open code of share, if any, for status.
func (k *codeBook) live(share string) (string, time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if o := k.byShare[share]; o != nil && o.done == "" {
		return o.code.String(), o.expires
	}
	return "", time.Time{}
}

// pass answers one step of a claim the broker passed on.
func (k *codeBook) pass(ctx context.Context, c *controlConn, m *proto.CodePass) *proto.CodePassReply {
	rep := &proto.CodePassReply{Pass: m.Pass}
	fail := func(code, msg string) *proto.CodePassReply {
		rep.Code, rep.Message = code, msg
		return rep
	}
	k.mu.Lock()
	var o *codeOffer
	for _, x := range k.byShare {
		if x.code.Slot == m.Slot && x.done == "" {
			o = x
		}
	}
	if o == nil {
		k.mu.Unlock()
		return fail(proto.CodeNotFound, "no such code: it expired, was used up, or was never given out")
	}
	log := k.a.log.WithFields(logrus.Fields{"share": o.share, "peer": shortID(m.Connector), "step": m.Step})
	switch {
	case m.Step == 1 && o.claim != nil:
		k.mu.Unlock()
		return fail(proto.CodeLimit, "someone else is redeeming this code right now; try again in a minute")
	case m.Step == 1:
		ex := shortcode.NewSharer(o.code, shortcode.Offer{Sharer: k.a.id.ID().String(), Share: o.share})
		answer, err := ex.Answer(m.Msg)
		if err != nil {
			k.mu.Unlock()
			log.WithError(err).Warn("code claim: a bad first message")
			k.end(o, "burnt")
			return fail(proto.CodeWrongCode, burntMsg)
		}
		o.claim = &codeClaim{ex: ex, connector: m.Connector}
		o.claim.timer = time.AfterFunc(claimTimeout, func() { k.end(o, "burnt") })
		k.mu.Unlock()
		rep.Msg = answer
		return rep
	case o.claim == nil || o.claim.connector != m.Connector:
		k.mu.Unlock()
		log.Warn("code claim: a second step without its first")
		k.end(o, "burnt")
		return fail(proto.CodeWrongCode, burntMsg)
	}
	cl := o.claim
	who, err := cl.ex.Check(m.Msg)
	k.mu.Unlock()
	id, perr := secure.ParseAgentID(who)
	switch {
	case err != nil:
		log.WithError(err).Warn("code claim: wrong code")
		k.end(o, "burnt")
		return fail(proto.CodeWrongCode, burntMsg)
	case who != m.Connector || perr != nil:
		// The proof names another agent than the one the broker saw: a
		// broker (or a node of it) playing games.
		log.WithField("proof", shortID(who)).Warn("code claim: the proof names another agent than the broker's claimant")
		k.end(o, "burnt")
		return fail(proto.CodeRefused, "the code's proof names another agent than the claimant")
	}
	s := k.a.shareNamed(o.share)
	if s == nil {
		k.end(o, "withdrawn")
		return fail(proto.CodeNotFound, "the share is gone")
	}
	s.admitted.add(id)
	// The broker checks the connector's Connect against the registration:
	// it must name the new agent before the connector hears yes.
	if err := c.register(ctx, s); err != nil {
		log.WithError(err).Warn("code claim: register the admitted agent")
		return fail(proto.CodeInternal, "the sharer could not update its share at the broker; try again")
	}
	k.mu.Lock()
	cl.timer.Stop()
	o.claim = nil
	o.uses--
	spent := o.uses <= 0
	k.mu.Unlock()
	log.WithField("agent", id.String()).Info("agent admitted to the share by its code")
	if spent {
		k.end(o, "used")
	}
	return rep
}

// stop ends every code's timers, when the agent stops.
func (k *codeBook) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, o := range k.byShare {
		if o.timer != nil {
			o.timer.Stop()
		}
		if o.claim != nil {
			o.claim.timer.Stop()
		}
	}
}

func (c *controlConn) openCode(ctx context.Context, m *proto.CodeOpen) (*proto.CodeOpened, error) {
	m.ID = c.nextID.Add(1)
	rep, err := requestAs[*proto.CodeOpened](ctx, c, m.ID, m)
	if err != nil {
		return nil, err
	}
	return rep, remoteErr(rep.Code, rep.Message)
}

// closeCode frees a code's slot at the broker, if a session is up: one
// that is not frees it anyway.
func (b *brokerClient) closeCode(ctx context.Context, slot uint32) {
	c := b.current()
	if c == nil {
		return
	}
	id := c.nextID.Add(1)
	if _, err := c.request(ctx, id, &proto.CodeClose{ID: id, Slot: slot}); err != nil {
		c.log.WithError(err).Debug("close code slot")
	}
}

// RedeemCode runs a code's exchange with the sharer through the broker of
// u, as id, and returns the sharer and the share it leads to; the sharer
// has then admitted id to it. A wrong code is ErrWrongCode (and is burnt),
// an unknown or expired one ErrNoSuchCode.
func RedeemCode(ctx context.Context, id *secure.Identity, u secure.BrokerURL, code string, proxyURL *url.URL, log logrus.FieldLogger) (secure.AgentID, string, error) {
	var none secure.AgentID
	cd, err := shortcode.Parse(code)
	if err != nil {
		return none, "", err
	}
	c, err := dialAny(ctx, newBrokerDialer(id, proxyURL), u, log)
	if err != nil {
		return none, "", err
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() {
		defer close(served)
		c.serve(sctx)
	}()
	defer func() { cancel(); <-served }()

	ex, a, err := shortcode.NewConnector(cd, id.ID().String())
	if err != nil {
		return none, "", err
	}
	answer, err := claimStep(ctx, c, cd.Slot, 1, a)
	if err != nil {
		return none, "", err
	}
	offer, proof, err := ex.Open(answer)
	if err != nil {
		// Say so to the sharer, which burns the code now rather than at
		// its claim timeout; its answer does not matter.
		claimStep(ctx, c, cd.Slot, 2, []byte{0})
		if errors.Is(err, shortcode.ErrWrongCode) {
			return none, "", fmt.Errorf("%w: %s", ErrWrongCode, burntMsg)
		}
		return none, "", err
	}
	sharer, err := secure.ParseAgentID(offer.Sharer)
	if err != nil {
		return none, "", fmt.Errorf("code %s: the sharer's identity: %w", cd, err)
	}
	if _, err := claimStep(ctx, c, cd.Slot, 2, proof); err != nil {
		return none, "", err
	}
	return sharer, offer.Share, nil
}

func claimStep(ctx context.Context, c *controlConn, slot uint32, step uint8, msg []byte) ([]byte, error) {
	id := c.nextID.Add(1)
	rep, err := requestAs[*proto.CodeClaimReply](ctx, c, id, &proto.CodeClaim{ID: id, Slot: slot, Step: step, Msg: msg})
	if err != nil {
		return nil, fmt.Errorf("redeem code: %w", err)
	}
	switch rep.Code {
	case "":
		return rep.Msg, nil
	case proto.CodeWrongCode:
		return nil, fmt.Errorf("%w: %s", ErrWrongCode, rep.Message)
	case proto.CodeNotFound:
		return nil, fmt.Errorf("%w: %s", ErrNoSuchCode, rep.Message)
	}
	return nil, fmt.Errorf("redeem code: %w", remoteErr(rep.Code, rep.Message))
}
