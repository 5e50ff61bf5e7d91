package proto

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Limits on message contents, beyond the frame limit.
const (
	MaxCandidates = 32
	MaxAllow      = 256
	maxString     = 512
)

// Error codes, carried in Error and Result, on which agents branch.
const (
	CodeUnauthorized = "unauthorized" // bad token or ticket: final, do not retry
	CodeNotFound     = "not_found"    // sharer offline or share unknown
	CodeRefused      = "refused"      // the sharer declined
	CodeBadRequest   = "bad_request"
	CodeLimit        = "limit" // a broker limit was hit; retry later
	CodeTimeout      = "timeout"
	CodeInternal     = "internal"
	CodeNoRelay      = "no_relay" // a relay introduction, but the broker offers no relay
	// CodeClusterUnavailable: the sharer is not on the agent's broker node and
	// the other nodes of its cluster cannot be asked; retry later.
	CodeClusterUnavailable = "cluster_unavailable"
	// CodeNotRegistered: the sharer is online but no session of it holds
	// the share yet, as in the seconds after a broker restart before its
	// agents register again. Transient: retry, unlike a refused ticket.
	CodeNotRegistered = "not_registered"
)

// Final tells whether an answer with this code is final: retrying cannot
// help until the user changes something (a token, a ticket). Every other
// code, and any code this version does not know, may pass.
func Final(code string) bool { return code == CodeUnauthorized }

// Paths of a Connect: how the peer channel of this introduction is made.
const (
	PathDirect = "direct" // hole punching; also what an empty Path means
	PathRelay  = "relay"  // the sharer allocates on TURN, the connector dials the relayed address
	// PathBroker: both agents dial the broker's own TLS port (ALPN
	// secure.ALPNRelay), each binds its connection with the introduction's
	// RelayToken, and the broker pairs the two and copies the bytes between
	// them. It needs nothing but the port the control channel uses.
	PathBroker = "broker"
)

// RelayTokenSize is the size of a broker relay token.
const RelayTokenSize = 32

// TURN is a short-lived TURN credential (TURN REST style: the username is
// "expiry:agentid", the password an HMAC of it under the server's secret)
// and where it is good.
type TURN struct {
	URL      string `json:"url"` // turn:host:port?transport=tcp
	Username string `json:"username"`
	Password string `json:"password"`
}

// Candidate is an address at which an agent may be reached.
type Candidate struct {
	Kind string `json:"kind"` // host, srflx, observed, relay
	Addr string `json:"addr"` // ip:port
}

// Candidate kinds.
const (
	KindHost     = "host"
	KindSrflx    = "srflx"
	KindObserved = "observed" // the source address the broker saw
	KindRelay    = "relay"
)

// Hello opens a control session. Sharers authenticate with the broker token;
// a connector holding only a ticket sends none and may only Connect with an
// admit key.
type Hello struct {
	Token   string `json:"token,omitempty"`
	Version string `json:"version,omitempty"` // agent software version, for logs
	// Instance tells apart the processes of one identity (one state dir):
	// random, fixed for the life of the process, kept across reconnects.
	Instance string `json:"instance,omitempty"`
}

// Welcome accepts a Hello.
type Welcome struct {
	AgentID  string   `json:"agent_id"`      // as the broker saw it in TLS
	Observed string   `json:"observed_addr"` // the agent's source address
	Version  string   `json:"version,omitempty"`
	STUN     []string `json:"stun,omitempty"` // the broker's STUN servers, host:port; an unspecified host means the broker's own
	// TURN is the TURN relay the broker sends sharers to (turn:HOST:PORT?transport=tcp,
	// no credentials), so netcheck can tell whether it is reachable; empty: none.
	TURN string `json:"turn,omitempty"`
}

// NAT is what an agent's discovery found out about its NAT (see package
// nat), passed along so each side knows both and can give up on punching at
// once when either maps each destination to a new port.
type NAT struct {
	Type    string `json:"type"`              // public, cone, symmetric, unknown
	Mapping string `json:"mapping,omitempty"` // TCP mapping: none, endpoint-independent, destination-dependent
	Verdict string `json:"verdict,omitempty"` // direct likely, relay needed
}

// Error is fatal: the sender closes the connection after it.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Register announces a share. AdmitHash is the SHA-256 of the admit key of
// the share's ticket, or empty for a share reachable only by Allow.
type Register struct {
	ID        uint64   `json:"id"`
	Share     string   `json:"share"`
	AdmitHash []byte   `json:"admit_hash,omitempty"`
	Allow     []string `json:"allow,omitempty"`
}

// Unregister withdraws a share.
type Unregister struct {
	ID    uint64 `json:"id"`
	Share string `json:"share"`
}

// Result answers a request by ID; Code is empty on success.
type Result struct {
	ID      uint64 `json:"id"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// Connect asks to be introduced to a sharer's share. Admit is the ticket's
// admit key, or empty when the connector is allowed by identity.
type Connect struct {
	ID         uint64      `json:"id"`
	Sharer     string      `json:"sharer"`
	Share      string      `json:"share"`
	Admit      []byte      `json:"admit,omitempty"`
	Candidates []Candidate `json:"candidates,omitempty"`
	NAT        *NAT        `json:"nat,omitempty"`
	RTTMillis  float64     `json:"rtt_ms,omitempty"` // the connector's control RTT: times the sharer's start
	Path       string      `json:"path,omitempty"`   // PathDirect (or empty) or PathRelay
}

// Intro tells a sharer that Connector wants Share, with its candidates.
type Intro struct {
	Intro     uint64 `json:"intro"`
	Connector string `json:"connector"`
	// ConnectorInstance is the Hello.Instance of the connector's process:
	// the sharer keeps a session per process, so two connect processes of
	// one identity do not replace each other's.
	ConnectorInstance string      `json:"connector_instance,omitempty"`
	Share             string      `json:"share"`
	Candidates        []Candidate `json:"candidates,omitempty"`
	NAT               *NAT        `json:"nat,omitempty"`
	RTTMillis         float64     `json:"rtt_ms,omitempty"` // copied from Connect
	Path              string      `json:"path,omitempty"`   // copied from Connect
	// TURN is the sharer's credential for a relay introduction, when the
	// broker runs or knows the relay; the sharer may use its own instead.
	TURN *TURN `json:"turn,omitempty"`
	// RelayToken, on a PathBroker introduction, is what the sharer binds its
	// relay connection with; the connector gets the same in ConnectReply.
	RelayToken []byte `json:"relay_token,omitempty"`
}

// IntroReply is the sharer's answer to an Intro.
type IntroReply struct {
	Intro      uint64      `json:"intro"`
	Candidates []Candidate `json:"candidates,omitempty"`
	Port       uint16      `json:"port,omitempty"` // the target's port: the connector's default listen port
	NAT        *NAT        `json:"nat,omitempty"`
	// Path, on a direct introduction, is PathRelay when the share takes
	// relayed connections only: the connector should ask for a relay.
	Path    string `json:"path,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// ConnectReply answers Connect with the sharer's candidates, or an error.
type ConnectReply struct {
	ID         uint64      `json:"id"`
	Candidates []Candidate `json:"candidates,omitempty"`
	Port       uint16      `json:"port,omitempty"`        // copied from IntroReply
	NAT        *NAT        `json:"nat,omitempty"`         // copied from IntroReply
	Path       string      `json:"path,omitempty"`        // copied from IntroReply
	RelayToken []byte      `json:"relay_token,omitempty"` // on PathBroker: see Intro
	// RelayAddr is, on PathBroker, the host:port of the broker node whose
	// relay holds RelayToken: in a cluster the sharer's node, which may not
	// be the connector's. Empty: the connector's own broker.
	RelayAddr string `json:"relay_addr,omitempty"`
	Code      string `json:"code,omitempty"`
	Message   string `json:"message,omitempty"`
}

// RelayBind is the first message on a broker relay connection: it names the
// introduction the connection belongs to. The broker answers with a Result
// once the other agent's connection is bound too (or an Error), and from
// then on copies bytes between the two.
type RelayBind struct {
	Token []byte `json:"token"`
}

// Presence asks whether Agent (its process Instance, when not empty) is
// online at the broker. The broker answers with a Result: success while it
// is, CodeNotFound once it is not, CodeRefused when the broker never
// introduced the two agents. A peer session without a path asks, to tell a
// peer that is gone from one that is moving (DESIGN §3).
type Presence struct {
	ID       uint64 `json:"id"`
	Agent    string `json:"agent"`
	Instance string `json:"instance,omitempty"`
}

// Ping asks for a Pong with the same nonce; it measures RTT and keeps NAT
// mappings of the control connection alive.
type Ping struct {
	Nonce uint64 `json:"nonce"`
}

// Pong answers Ping.
type Pong struct {
	Nonce uint64 `json:"nonce"`
}

// Outcome tells the broker how a punch after its introduction went, so
// operators can see which NAT pairings connect. Values outside the known
// sets are refused, which keeps metric labels bounded.
type Outcome struct {
	Result  string `json:"result"` // direct, relay_needed, failed
	NAT     string `json:"nat"`    // this side's type
	PeerNAT string `json:"peer_nat"`
	PunchMS int64  `json:"punch_ms,omitempty"`
}

// Outcome results.
const (
	OutcomeDirect      = "direct"
	OutcomeRelayNeeded = "relay_needed"
	OutcomeFailed      = "failed"
)

var (
	outcomeResults = []string{OutcomeDirect, OutcomeRelayNeeded, OutcomeFailed}
	natTypes       = []string{"public", "cone", "symmetric", "unknown"}
)

func (m *Outcome) validate() error {
	if !slices.Contains(outcomeResults, m.Result) || !slices.Contains(natTypes, m.NAT) || !slices.Contains(natTypes, m.PeerNAT) {
		return fmt.Errorf("outcome %q with NAT types %q/%q: unknown value", m.Result, m.NAT, m.PeerNAT)
	}
	return nil
}

func (*Outcome) Type() Type      { return TypeOutcome }
func (*Hello) Type() Type        { return TypeHello }
func (*Welcome) Type() Type      { return TypeWelcome }
func (*Error) Type() Type        { return TypeError }
func (*Register) Type() Type     { return TypeRegister }
func (*Unregister) Type() Type   { return TypeUnregister }
func (*Result) Type() Type       { return TypeResult }
func (*Connect) Type() Type      { return TypeConnect }
func (*Intro) Type() Type        { return TypeIntro }
func (*IntroReply) Type() Type   { return TypeIntroReply }
func (*ConnectReply) Type() Type { return TypeConnectReply }
func (*Ping) Type() Type         { return TypePing }
func (*Pong) Type() Type         { return TypePong }
func (*RelayBind) Type() Type    { return TypeRelayBind }
func (*Presence) Type() Type     { return TypePresence }

func (m *Hello) validate() error { return strs(m.Token, m.Version, m.Instance) }
func (m *Welcome) validate() error {
	if len(m.STUN) > MaxCandidates {
		return fmt.Errorf("welcome: %d STUN servers, limit %d", len(m.STUN), MaxCandidates)
	}
	return strs(append([]string{m.AgentID, m.Observed, m.Version, m.TURN}, m.STUN...)...)
}

func (n *NAT) validate() error {
	if n == nil {
		return nil
	}
	return strs(n.Type, n.Mapping, n.Verdict)
}
func (m *Error) validate() error {
	if m.Code == "" {
		return errors.New("error without code")
	}
	return strs(m.Code, m.Message)
}
func (m *Register) validate() error {
	if m.Share == "" {
		return errors.New("register: empty share")
	}
	if len(m.AdmitHash) != 0 && len(m.AdmitHash) != 32 {
		return fmt.Errorf("register: admit_hash of %d bytes, want 32", len(m.AdmitHash))
	}
	if len(m.Allow) > MaxAllow {
		return fmt.Errorf("register: %d allowed agents, limit %d", len(m.Allow), MaxAllow)
	}
	return strs(append([]string{m.Share}, m.Allow...)...)
}
func (m *Unregister) validate() error { return strs(m.Share) }
func (m *Result) validate() error     { return strs(m.Code, m.Message) }
func (m *Connect) validate() error {
	if m.Sharer == "" || m.Share == "" {
		return errors.New("connect: empty sharer or share")
	}
	if len(m.Admit) != 0 && len(m.Admit) != 32 {
		return fmt.Errorf("connect: admit of %d bytes, want 32", len(m.Admit))
	}
	return firstErr(strs(m.Sharer, m.Share), candidates(m.Candidates), m.NAT.validate(), path(m.Path))
}
func (m *Intro) validate() error {
	return firstErr(strs(m.Connector, m.ConnectorInstance, m.Share), candidates(m.Candidates), m.NAT.validate(), path(m.Path), m.TURN.validate(),
		relayToken(m.RelayToken, true))
}

func (m *RelayBind) validate() error { return relayToken(m.Token, false) }
func (m *Presence) validate() error {
	if m.Agent == "" {
		return errors.New("presence: empty agent")
	}
	return strs(m.Agent, m.Instance)
}

// relayToken checks a token's size; optional ones may be absent.
func relayToken(t []byte, optional bool) error {
	if len(t) == RelayTokenSize || (optional && len(t) == 0) {
		return nil
	}
	return fmt.Errorf("relay token of %d bytes, want %d", len(t), RelayTokenSize)
}

func (t *TURN) validate() error {
	if t == nil {
		return nil
	}
	if t.URL == "" || t.Username == "" {
		return errors.New("turn: empty url or username")
	}
	return strs(t.URL, t.Username, t.Password)
}

func path(p string) error {
	switch p {
	case "", PathDirect, PathRelay, PathBroker:
		return nil
	}
	return fmt.Errorf("path %q: want %s, %s or %s", p, PathDirect, PathRelay, PathBroker)
}
func (m *IntroReply) validate() error {
	return firstErr(strs(m.Code, m.Message), candidates(m.Candidates), m.NAT.validate(), path(m.Path))
}
func (m *ConnectReply) validate() error {
	return firstErr(strs(m.Code, m.Message), candidates(m.Candidates), m.NAT.validate(), path(m.Path), relayToken(m.RelayToken, true))
}
func (*Ping) validate() error { return nil }
func (*Pong) validate() error { return nil }

func strs(ss ...string) error {
	for _, s := range ss {
		if len(s) > maxString {
			return fmt.Errorf("string of %d bytes, limit %d", len(s), maxString)
		}
	}
	return nil
}

func candidates(cs []Candidate) error {
	if len(cs) > MaxCandidates {
		return fmt.Errorf("%d candidates, limit %d", len(cs), MaxCandidates)
	}
	for _, c := range cs {
		if _, err := netip.ParseAddrPort(c.Addr); err != nil {
			return fmt.Errorf("candidate %q: %v", c.Addr, err)
		}
		if err := strs(c.Kind); err != nil {
			return err
		}
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Short codes (package shortcode): a sharer opens a numbered slot at the
// broker for one of its shares; a connector claims the slot, and the
// broker passes the claim's messages to the sharer and its answers back.
// The broker routes by slot and sees every message, but the exchange is a
// PAKE over the code's words, which it never sees.

// Code limits.
const (
	MaxCodeTTL     = 3600 // seconds
	MaxCodeMessage = 4096 // bytes of one exchange message
)

// CodeWrongCode is the code of a claim the sharer refused because the
// exchange failed: the code is burnt. Final for the claimant.
const CodeWrongCode = "wrong_code"

// CodeOpen asks for a slot for Share, open for TTLSeconds. Slot asks for
// that number again (the slot of a code given out before a reconnect); 0
// takes any free one.
type CodeOpen struct {
	ID         uint64 `json:"id"`
	Share      string `json:"share"`
	Slot       uint32 `json:"slot,omitempty"`
	TTLSeconds uint32 `json:"ttl_s"`
}

// CodeOpened answers CodeOpen with the slot and how long it stays open.
type CodeOpened struct {
	ID         uint64 `json:"id"`
	Slot       uint32 `json:"slot,omitempty"`
	TTLSeconds uint32 `json:"ttl_s,omitempty"`
	Code       string `json:"code,omitempty"`
	Message    string `json:"message,omitempty"`
}

// CodeClose frees a slot: its code was used up, burnt or withdrawn. The
// broker answers with a Result.
type CodeClose struct {
	ID   uint64 `json:"id"`
	Slot uint32 `json:"slot"`
}

// CodeClaim is one step of a connector's exchange for the code of Slot.
type CodeClaim struct {
	ID   uint64 `json:"id"`
	Slot uint32 `json:"slot"`
	Step uint8  `json:"step"` // 1 or 2
	Msg  []byte `json:"msg"`
}

// CodeClaimReply is the sharer's answer to a CodeClaim, or the broker's
// refusal.
type CodeClaimReply struct {
	ID      uint64 `json:"id"`
	Msg     []byte `json:"msg,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// CodePass hands a claim's step to the sharer holding Slot; Connector is
// the claimant as the broker authenticated it.
type CodePass struct {
	Pass      uint64 `json:"pass"`
	Slot      uint32 `json:"slot"`
	Step      uint8  `json:"step"`
	Connector string `json:"connector"`
	Msg       []byte `json:"msg"`
}

// CodePassReply is the sharer's answer to a CodePass.
type CodePassReply struct {
	Pass    uint64 `json:"pass"`
	Msg     []byte `json:"msg,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

func (*CodeOpen) Type() Type       { return TypeCodeOpen }
func (*CodeOpened) Type() Type     { return TypeCodeOpened }
func (*CodeClose) Type() Type      { return TypeCodeClose }
func (*CodeClaim) Type() Type      { return TypeCodeClaim }
func (*CodeClaimReply) Type() Type { return TypeCodeClaimReply }
func (*CodePass) Type() Type       { return TypeCodePass }
func (*CodePassReply) Type() Type  { return TypeCodePassReply }

func (m *CodeOpen) validate() error {
	if m.Share == "" {
		return errors.New("code open: empty share")
	}
	if m.TTLSeconds > MaxCodeTTL {
		return fmt.Errorf("code open: ttl %d s, limit %d", m.TTLSeconds, MaxCodeTTL)
	}
	return strs(m.Share)
}
func (m *CodeOpened) validate() error { return strs(m.Code, m.Message) }
func (*CodeClose) validate() error    { return nil }
func (m *CodeClaim) validate() error {
	if m.Step != 1 && m.Step != 2 {
		return fmt.Errorf("code claim: step %d, want 1 or 2", m.Step)
	}
	return codeMsg(m.Msg, false)
}
func (m *CodeClaimReply) validate() error {
	return firstErr(strs(m.Code, m.Message), codeMsg(m.Msg, true))
}
func (m *CodePass) validate() error {
	if m.Step != 1 && m.Step != 2 {
		return fmt.Errorf("code pass: step %d, want 1 or 2", m.Step)
	}
	return firstErr(strs(m.Connector), codeMsg(m.Msg, false))
}
func (m *CodePassReply) validate() error {
	return firstErr(strs(m.Code, m.Message), codeMsg(m.Msg, true))
}

func codeMsg(b []byte, optional bool) error {
	switch {
	case len(b) == 0 && !optional:
		return errors.New("code exchange: empty message")
	case len(b) > MaxCodeMessage:
		return fmt.Errorf("code exchange: message of %d bytes, limit %d", len(b), MaxCodeMessage)
	}
	return nil
}
