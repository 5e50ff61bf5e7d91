package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	neturl "net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// The broker cluster (DESIGN §8, issue 17): broker nodes tied together by
// NATS. A node subscribes to one subject per agent identity it holds a
// session of and one per share registered with it, so NATS itself knows
// where every agent is: an introduction for a sharer on another node is a
// request on that sharer's subject, answered by the node that holds it, and
// a request nobody holds fails at once (no responders) instead of waiting.
// There is no registry to keep in step, and a node's death takes its
// subscriptions with it. Every message is sealed (seal.go).

// Subjects. Share names are hex-encoded: they may hold dots, which NATS
// would read as subject tokens.
const (
	subjectPrefix = "peerport.v1."
	nodesSubject  = subjectPrefix + "nodes"
)

func agentSubject(id secure.AgentID) string { return subjectPrefix + "agent." + id.String() }

func shareSubject(id secure.AgentID, share string) string {
	return subjectPrefix + "share." + id.String() + "." + hex.EncodeToString([]byte(share))
}

// codeSubject is a short code's slot: numbers are the cluster's, so a
// claim on any node reaches the node whose sharer holds it.
func codeSubject(slot uint32) string {
	return subjectPrefix + "code." + strconv.FormatUint(uint64(slot), 10)
}

// ErrClusterIdentity refuses a node whose broker identity (token, key, TURN
// secret) is not its cluster's.
var ErrClusterIdentity = errors.New("broker identity differs from the cluster's")

// errClusterDown: NATS is unreachable from this node.
var errClusterDown = errors.New("the broker cluster is unreachable from this node")

// ClusterOptions join a broker node to a cluster.
type ClusterOptions struct {
	NATS  []string // nats:// or tls:// URLs of the NATS servers
	Node  string   // this node's name in logs and metrics; default the hostname
	Creds string   // a NATS credentials file; optional
}

const (
	clusterBeat      = 10 * time.Second // a node says it is alive this often
	clusterNodeGone  = 35 * time.Second // unheard for this long: gone
	clusterJoinWait  = 5 * time.Second  // the first connection to NATS, at start
	clusterHelloWait = time.Second      // answers to the join's hello
	// maxClusterHandlers bounds the requests from other nodes being served
	// at once; each may wait IntroTimeout on a sharer.
	maxClusterHandlers = 4096
)

// cluster is a node's link to the others.
type cluster struct {
	srv      *Server
	nc       *nats.Conn
	seal     *sealer
	node     string
	instance string // tells two processes of one node name apart
	addr     string // this node's public control address: its broker relay
	log      logrus.FieldLogger

	msgs     chan *nats.Msg
	handlers chan struct{} // one token per request being served
	wg       sync.WaitGroup
	stop     chan struct{}

	mu    sync.Mutex
	subs  map[string]*clusterSub
	nodes map[string]time.Time // other nodes, by name: last heard
	rtt   atomic.Int64         // nanoseconds to the NATS server
	// failed is set when the cluster refused this node (another
	// identity): it then serves its own agents only.
	failed atomic.Pointer[error]
}

type clusterSub struct {
	sub  *nats.Subscription
	refs int
}

// nodeHello is the one unsealed message: it must be readable by a node of
// another identity, to refuse it. Its fingerprint reveals nothing of the key.
type nodeHello struct {
	Node        string `json:"node"`
	Instance    string `json:"instance"`
	Fingerprint string `json:"fp"`
	Addr        string `json:"addr"`
	Version     string `json:"version,omitempty"`
}

// clusterMsg is a request between nodes; clusterReply its answer.
type clusterMsg struct {
	Node     string         `json:"node"`
	Intro    *introRequest  `json:"intro,omitempty"`
	Presence *presenceQuery `json:"presence,omitempty"`
	Claim    *claimRequest  `json:"claim,omitempty"`
	// CodeProbe asks whether the node holds the slot of the subject.
	CodeProbe bool `json:"code_probe,omitempty"`
}

// claimRequest is one step of a code claim, passed to the slot's node.
type claimRequest struct {
	Connector string          `json:"connector"`
	Claim     proto.CodeClaim `json:"claim"`
}

type clusterReply struct {
	Node    string                `json:"node"`
	Held    holding               `json:"held"`
	Reply   *proto.ConnectReply   `json:"reply,omitempty"`
	Online  bool                  `json:"online,omitempty"`
	Knows   bool                  `json:"knows,omitempty"`
	Claim   *proto.CodeClaimReply `json:"claim,omitempty"`
	Refused string                `json:"refused,omitempty"` // the request could not be read
}

// presenceQuery asks whether Agent (and its Instance, when named) is online,
// and whether its node introduced it to Asker.
type presenceQuery struct {
	Asker    string `json:"asker"`
	Agent    string `json:"agent"`
	Instance string `json:"instance,omitempty"`
}

// joinCluster connects to NATS and checks this node's identity against the
// cluster's. When NATS cannot be reached within clusterJoinWait the node
// starts alone and joins when it can; a node of another identity is refused
// at start (ErrClusterIdentity), or, found later, cut off from the cluster.
func joinCluster(ctx context.Context, srv *Server, o ClusterOptions, seal *sealer, addr string, log logrus.FieldLogger) (*cluster, error) {
	if len(o.NATS) == 0 {
		return nil, errors.New("cluster: no NATS URL")
	}
	if o.Node == "" {
		o.Node, _ = os.Hostname()
	}
	var inst [8]byte
	rand.Read(inst[:])
	cl := &cluster{
		srv: srv, seal: seal, node: o.Node, instance: hex.EncodeToString(inst[:]), addr: addr,
		log:      log.WithField("node", o.Node),
		msgs:     make(chan *nats.Msg, 8192),
		handlers: make(chan struct{}, maxClusterHandlers),
		stop:     make(chan struct{}),
		subs:     map[string]*clusterSub{},
		nodes:    map[string]time.Time{},
	}
	connected := make(chan struct{}, 1)
	opts := []nats.Option{
		nats.Name("peerport broker " + o.Node),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		// A NATS host gone without a FIN is noticed in seconds, not the
		// client's default four minutes.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.RetryOnFailedConnect(true),
		nats.ConnectHandler(func(*nats.Conn) { connected <- struct{}{} }),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			cl.log.WithField("nats", nc.ConnectedUrlRedacted()).Info("cluster: connected to NATS again")
			go cl.check(ctx)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				cl.log.WithError(err).Warn("cluster: NATS connection lost; serving this node's agents only until it is back")
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			cl.log.WithError(err).Warn("cluster: NATS")
		}),
	}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	nc, err := nats.Connect(strings.Join(o.NATS, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	cl.nc = nc
	if _, err := nc.Subscribe(nodesSubject, cl.onHello); err != nil {
		nc.Close()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	t := time.NewTimer(clusterJoinWait)
	defer t.Stop()
	select {
	case <-connected:
		if err := cl.hello(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		cl.log.WithFields(logrus.Fields{"nats": nc.ConnectedUrlRedacted(), "nodes": cl.nodeCount()}).Info("cluster joined")
	case <-t.C:
		cl.log.WithField("nats", redactNATS(o.NATS)).Warn("cluster: NATS unreachable; serving this node's agents only until it is reachable")
		go func() {
			select {
			case <-connected:
				cl.log.WithField("nats", nc.ConnectedUrlRedacted()).Info("cluster: connected to NATS")
				cl.check(ctx)
			case <-cl.stop:
			}
		}()
	case <-ctx.Done():
		nc.Close()
		return nil, ctx.Err()
	}
	cl.wg.Go(cl.dispatch)
	cl.wg.Go(cl.beat)
	return cl, nil
}

// check runs the identity check after a (re)connection; a node refused
// by the cluster closes its link and says so in its health.
func (cl *cluster) check(ctx context.Context) {
	err := cl.hello(ctx)
	if err == nil || ctx.Err() != nil {
		return
	}
	cl.failed.Store(&err)
	cl.log.WithError(err).Error("cluster: this node is cut off from the cluster; it serves its own agents only")
	cl.nc.Close()
}

// hello asks every node for its identity and refuses this one when any
// differs, or when another process already runs under this node's name.
func (cl *cluster) hello(ctx context.Context) error {
	inbox := cl.nc.NewRespInbox()
	sub, err := cl.nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	defer sub.Unsubscribe()
	b, _ := json.Marshal(cl.helloMsg())
	if err := cl.nc.PublishRequest(nodesSubject, inbox, b); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, clusterHelloWait)
	defer cancel()
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil // every node that is there has answered
		}
		var h nodeHello
		if json.Unmarshal(m.Data, &h) != nil {
			continue
		}
		if err := cl.compare(h); err != nil {
			return err
		}
		cl.mu.Lock()
		cl.nodes[h.Node] = time.Now()
		cl.mu.Unlock()
	}
}

func (cl *cluster) helloMsg() nodeHello {
	return nodeHello{Node: cl.node, Instance: cl.instance, Fingerprint: cl.seal.fp, Addr: cl.addr, Version: cl.srv.cfg.Version}
}

func (cl *cluster) compare(h nodeHello) error {
	switch {
	case h.Fingerprint != cl.seal.fp:
		return fmt.Errorf("cluster: node %q: %w (its token, key or TURN secret is not this node's): give every node a copy of one state dir", h.Node, ErrClusterIdentity)
	case h.Node == cl.node && h.Instance != cl.instance:
		return fmt.Errorf("cluster: another broker is already node %q: give each node its own name (--cluster-node)", h.Node)
	}
	return nil
}

// onHello answers a joining node and notes who is alive.
func (cl *cluster) onHello(m *nats.Msg) {
	var h nodeHello
	if json.Unmarshal(m.Data, &h) != nil || h.Instance == cl.instance {
		return
	}
	if err := cl.compare(h); err != nil {
		cl.log.WithError(err).Warn("cluster: a node of another identity is on this NATS; its messages are refused")
	} else {
		cl.mu.Lock()
		_, known := cl.nodes[h.Node]
		cl.nodes[h.Node] = time.Now()
		cl.mu.Unlock()
		if !known {
			cl.log.WithFields(logrus.Fields{"peer_node": h.Node, "addr": h.Addr}).Info("cluster: node joined")
		}
	}
	if m.Reply != "" {
		b, _ := json.Marshal(cl.helloMsg())
		m.Respond(b)
	}
}

// beat tells the others this node is alive, forgets the silent ones and
// measures the round trip to NATS.
func (cl *cluster) beat() {
	t := time.NewTicker(clusterBeat)
	defer t.Stop()
	for {
		select {
		case <-cl.stop:
			return
		case <-t.C:
		}
		if !cl.nc.IsConnected() {
			continue
		}
		b, _ := json.Marshal(cl.helloMsg())
		cl.nc.Publish(nodesSubject, b)
		if d, err := cl.nc.RTT(); err == nil {
			cl.rtt.Store(int64(d))
		}
		cl.mu.Lock()
		for n, at := range cl.nodes {
			if time.Since(at) > clusterNodeGone {
				delete(cl.nodes, n)
				cl.log.WithField("peer_node", n).Warn("cluster: node gone silent")
			}
		}
		cl.mu.Unlock()
	}
}

// nodeCount is the nodes alive, this one included.
func (cl *cluster) nodeCount() int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return len(cl.nodes) + 1
}

func (cl *cluster) connected() bool { return cl.failed.Load() == nil && cl.nc.IsConnected() }

// health is the node's cluster state in one line, for /healthz.
func (cl *cluster) health() string {
	if p := cl.failed.Load(); p != nil {
		return "cluster: refused: " + (*p).Error()
	}
	if !cl.nc.IsConnected() {
		return "cluster: NATS unreachable; serving this node's agents only"
	}
	return fmt.Sprintf("cluster: connected, %d nodes", cl.nodeCount())
}

// hold subscribes this node to subject, once however many of its sessions
// hold it; release undoes one hold.
func (cl *cluster) hold(subject string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if s := cl.subs[subject]; s != nil {
		s.refs++
		return
	}
	sub, err := cl.nc.ChanSubscribe(subject, cl.msgs)
	if err != nil {
		cl.log.WithError(err).WithField("subject", subject).Warn("cluster: subscribe failed; other nodes cannot reach this agent here")
		return
	}
	cl.subs[subject] = &clusterSub{sub: sub, refs: 1}
}

func (cl *cluster) release(subject string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	s := cl.subs[subject]
	if s == nil {
		return
	}
	if s.refs--; s.refs <= 0 {
		s.sub.Unsubscribe()
		delete(cl.subs, subject)
	}
}

// dispatch serves requests from other nodes, each in its own goroutine
// (an introduction waits on its sharer), up to maxClusterHandlers at once.
func (cl *cluster) dispatch() {
	for {
		select {
		case <-cl.stop:
			return
		case m := <-cl.msgs:
			select {
			case cl.handlers <- struct{}{}:
				cl.wg.Go(func() {
					defer func() { <-cl.handlers }()
					cl.serve(m)
				})
			default:
				cl.respond(m, nil, &clusterReply{Node: cl.node, Reply: failReply(proto.CodeLimit, "broker node %s is busy; retry later", cl.node)})
			}
		}
	}
}

// serve answers one request from another node.
func (cl *cluster) serve(m *nats.Msg) {
	body, nonce, err := cl.seal.open(m.Data, m.Subject)
	if err != nil {
		cl.srv.metrics.clusterRefused.Inc()
		cl.srv.limits.refusals.Refused("cluster messages refused", "sealed", logrus.Fields{"subject": m.Subject, "error": err.Error()})
		return // no answer: a forger learns nothing
	}
	var req clusterMsg
	rep := &clusterReply{Node: cl.node}
	if err := json.Unmarshal(body, &req); err != nil {
		rep.Refused = "bad request: " + err.Error()
		cl.respond(m, nonce, rep)
		return
	}
	log := cl.log.WithField("from_node", req.Node)
	switch {
	case req.Intro != nil:
		in := req.Intro
		if err := in.parse(); err != nil || m.Subject != agentSubject(in.sharer) && m.Subject != shareSubject(in.sharer, in.Connect.Share) {
			rep.Refused = "bad introduction"
			break
		}
		ilog := log.WithFields(logrus.Fields{"agent": in.connector.Short(), "sharer": in.sharer.Short(), "share": in.Connect.Share})
		// deliver's own IntroTimeout bounds the wait; only a stopping
		// node cuts it short.
		rep.Reply, rep.Held = cl.srv.deliver(in, cl.stop, ilog)
		if rep.Reply == nil {
			rep.Reply = failReply(proto.CodeTimeout, "broker node %s is stopping", cl.node)
		} else if len(rep.Reply.RelayToken) > 0 {
			rep.Reply.RelayAddr = cl.addr // the relay that holds the token is this node's
		}
	case req.Presence != nil:
		rep.Online, rep.Knows = cl.srv.presenceHere(req.Presence)
	case req.Claim != nil:
		c := req.Claim
		if _, err := secure.ParseAgentID(c.Connector); err != nil || m.Subject != codeSubject(c.Claim.Slot) {
			rep.Refused = "bad code claim"
			break
		}
		var held bool
		if rep.Claim, held = cl.srv.passHere(c.Connector, &c.Claim, cl.stop, log.WithField("slot", c.Claim.Slot)); !held {
			rep.Claim = nil // not ours (any more): a node that holds it may answer
		} else if rep.Claim == nil {
			rep.Claim = &proto.CodeClaimReply{Code: proto.CodeTimeout, Message: "broker node " + cl.node + " is stopping"}
		}
	case req.CodeProbe:
		if slot, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, subjectPrefix+"code."), 10, 32); err == nil {
			cl.srv.mu.Lock()
			if cl.srv.codes.lookup(uint32(slot), cl.srv.cfg.Now()) != nil {
				rep.Held = holdsShare
			}
			cl.srv.mu.Unlock()
		}
	default:
		rep.Refused = "empty request"
	}
	cl.respond(m, nonce, rep)
}

func (cl *cluster) respond(m *nats.Msg, nonce []byte, rep *clusterReply) {
	if m.Reply == "" || nonce == nil {
		return
	}
	b, _ := json.Marshal(rep)
	sealed, _ := cl.seal.seal(b, replyAAD(nonce))
	m.Respond(sealed)
}

// request sends a sealed request on subject and opens its answer;
// errNobody when no node holds the subject.
func (cl *cluster) request(ctx context.Context, subject string, req *clusterMsg, timeout time.Duration) (*clusterReply, error) {
	if !cl.connected() {
		return nil, errClusterDown
	}
	req.Node = cl.node
	b, _ := json.Marshal(req)
	sealed, nonce := cl.seal.seal(b, subject)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	m, err := cl.nc.RequestWithContext(ctx, subject, sealed)
	cl.srv.metrics.clusterRequest.Observe(time.Since(start).Seconds())
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, errNobody
	case err != nil && !cl.connected():
		return nil, errClusterDown
	case err != nil:
		return nil, fmt.Errorf("cluster request: %w", err)
	}
	body, _, err := cl.seal.open(m.Data, replyAAD(nonce))
	if err != nil {
		cl.srv.metrics.clusterRefused.Inc()
		return nil, err
	}
	var rep clusterReply
	if err := json.Unmarshal(body, &rep); err != nil {
		return nil, fmt.Errorf("cluster reply: %w", err)
	}
	if rep.Refused != "" {
		return nil, fmt.Errorf("cluster: node %s refused the request: %s", rep.Node, rep.Refused)
	}
	return &rep, nil
}

// errNobody: no node holds the subject of a request.
var errNobody = errors.New("no node holds it")

// introduce asks the node that holds the share, or failing that one that
// holds the sharer's identity, to introduce req's connector. held is what
// the answering node holds (holdsNone: no node holds the sharer).
func (cl *cluster) introduce(ctx context.Context, req *introRequest, log logrus.FieldLogger) (*proto.ConnectReply, holding, error) {
	timeout := cl.srv.cfg.IntroTimeout + 2*time.Second
	for _, subject := range []string{shareSubject(req.sharer, req.Connect.Share), agentSubject(req.sharer)} {
		rep, err := cl.request(ctx, subject, &clusterMsg{Intro: req}, timeout)
		if errors.Is(err, errNobody) {
			continue
		}
		if err != nil {
			log.WithError(err).Warn("introduction through the cluster failed")
			return nil, holdsNone, err
		}
		if rep.Reply == nil {
			return nil, holdsNone, fmt.Errorf("cluster: node %s sent no answer", rep.Node)
		}
		log.WithFields(logrus.Fields{"sharer_node": rep.Node, "code": rep.Reply.Code}).Debug("introduction answered by another node")
		return rep.Reply, rep.Held, nil
	}
	return nil, holdsNone, nil
}

// codeHeldElsewhere tells whether another node holds slot. A cluster that
// cannot be asked holds nothing: the node then hands out numbers alone.
func (cl *cluster) codeHeldElsewhere(slot uint32) bool {
	rep, err := cl.request(context.Background(), codeSubject(slot), &clusterMsg{CodeProbe: true}, 2*time.Second)
	return err == nil && rep.Held == holdsShare
}

// presence asks the cluster whether q.Agent is online on another node, and
// whether that node introduced it to q.Asker. No node: not online.
func (cl *cluster) presence(ctx context.Context, q *presenceQuery, id secure.AgentID) (online, knows bool, err error) {
	rep, err := cl.request(ctx, agentSubject(id), &clusterMsg{Presence: q}, 5*time.Second)
	if errors.Is(err, errNobody) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	return rep.Online, rep.Knows, nil
}

// clusterFailure is the connector's answer when the cluster could not be
// asked: retried by agents, never final.
func clusterFailure(err error) *proto.ConnectReply {
	if errors.Is(err, errClusterDown) {
		return failReply(proto.CodeClusterUnavailable, "the sharer is not on this broker node, and the other nodes cannot be reached from it; retry later")
	}
	return failReply(proto.CodeClusterUnavailable, "the broker cluster did not answer: %v", err)
}

// close leaves the cluster: no more requests, subscriptions gone.
func (cl *cluster) close() {
	select {
	case <-cl.stop:
		return
	default:
	}
	close(cl.stop)
	cl.nc.Close()
	cl.wg.Wait()
}

// subjects lists the subjects this node holds, for tests.
func (cl *cluster) subjects() []string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	out := make([]string, 0, len(cl.subs))
	for s := range cl.subs {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// redactNATS hides the passwords of NATS URLs, for logs.
func redactNATS(urls []string) []string {
	out := make([]string, len(urls))
	for i, s := range urls {
		u, err := neturl.Parse(s)
		if err != nil {
			out[i] = "(unparsable URL)"
			continue
		}
		out[i] = u.Redacted()
	}
	return out
}
