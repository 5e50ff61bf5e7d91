package broker

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/limit"
	"github.com/peerport/peerport/internal/relay"
)

// turnGuard sits between a TURN client's TCP connection and pion. It follows
// the stream's STUN framing (RFC 5389 §7.2.2), so:
//
//   - bytes that are neither close the connection at once (pion would wait
//     for ever for the rest of a "frame" a bogus length announced);
//   - the first success response pion writes to an authenticated request
//     (anything but Binding) marks the connection authenticated, which ends
//     its pre-authentication deadline (limit.Authenticated);
//   - pion answers an Allocate for UDP, which the relay does not offer, with
//     508 (the generator's error looks like a capacity problem to it); the
//     guard rewrites that answer to 442 Unsupported Transport Protocol, as
//     RFC 5766 §6.2 asks, signed with the same long-term credential.
//
// After a ConnectionBind request the connection carries a peer's raw bytes
// (RFC 6062 §5.4), and the guard stops parsing.
type turnGuard struct {
	net.Conn
	key       func(username string) []byte // the long-term key, to re-sign a rewritten answer
	onAuth    func()
	onGarbage func()

	mu      sync.Mutex
	buf     []byte // the current message's bytes so far
	raw     bool   // after ConnectionBind: no more parsing
	authed  bool
	udpReqs map[[stun.TransactionIDSize]byte]string // UDP Allocates in flight: username
}

// maxTURNMessage bounds a STUN message on the TURN port; pion reads at most
// 1600 bytes at a time, and no request of ours comes near it.
const maxTURNMessage = 2048

// maxUDPReqs bounds the UDP Allocates remembered per connection.
const maxUDPReqs = 8

// stunMagicCookie is the fixed word of every STUN header (RFC 5389 §6).
const stunMagicCookie = 0x2112A442

var errTURNGarbage = errors.New("relay: not a STUN or ChannelData frame")

func (g *turnGuard) Read(p []byte) (int, error) {
	n, err := g.Conn.Read(p)
	if n > 0 {
		if ferr := g.feed(p[:n]); ferr != nil {
			g.Conn.Close()
			if g.onGarbage != nil {
				g.onGarbage()
			}
			return 0, ferr
		}
	}
	return n, err
}

// feed follows the framing of b. Only STUN messages can be valid: the
// relay makes TCP allocations only, which have no channels (RFC 6062 §4),
// so ChannelData is garbage too.
func (g *turnGuard) feed(b []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for len(b) > 0 && !g.raw {
		need := 8 // type, length, magic cookie
		if len(g.buf) >= 8 {
			need = 20 + int(binary.BigEndian.Uint16(g.buf[2:4]))
		}
		k := min(need-len(g.buf), len(b))
		g.buf = append(g.buf, b[:k]...)
		b = b[k:]
		if len(g.buf) < need {
			continue
		}
		if need == 8 {
			ln := int(binary.BigEndian.Uint16(g.buf[2:4]))
			if g.buf[0]&0xc0 != 0 || binary.BigEndian.Uint32(g.buf[4:8]) != stunMagicCookie || ln%4 != 0 || 20+ln > maxTURNMessage {
				return errTURNGarbage
			}
			continue
		}
		if err := g.message(g.buf); err != nil {
			return err
		}
		g.buf = g.buf[:0]
	}
	return nil
}

// message looks at one whole STUN message from the client.
func (g *turnGuard) message(raw []byte) error {
	if len(raw) < 20 || binary.BigEndian.Uint32(raw[4:8]) != stunMagicCookie {
		return errTURNGarbage
	}
	m := &stun.Message{Raw: append([]byte(nil), raw...)}
	if err := m.Decode(); err != nil {
		return errTURNGarbage
	}
	if m.Type.Class != stun.ClassRequest {
		return nil
	}
	switch m.Type.Method {
	case stun.MethodConnectionBind:
		g.raw = true
	case stun.MethodAllocate:
		v, err := m.Get(stun.AttrRequestedTransport)
		if err != nil || len(v) < 1 || v[0] != 17 { // 17: UDP
			return nil
		}
		var user stun.Username
		if user.GetFrom(m) != nil {
			return nil
		}
		if g.udpReqs == nil {
			g.udpReqs = make(map[[stun.TransactionIDSize]byte]string)
		}
		if len(g.udpReqs) < maxUDPReqs {
			g.udpReqs[m.TransactionID] = user.String()
		}
	}
	return nil
}

func (g *turnGuard) Write(p []byte) (int, error) {
	out := g.outgoing(p)
	if _, err := g.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// outgoing notes authentication from pion's answers and rewrites the 508
// of a UDP Allocate; anything else goes out as it is.
func (g *turnGuard) outgoing(p []byte) []byte {
	if len(p) < 20 || p[0]&0xc0 != 0 || binary.BigEndian.Uint32(p[4:8]) != stunMagicCookie {
		return p
	}
	var t stun.MessageType
	t.ReadValue(binary.BigEndian.Uint16(p[0:2]))
	g.mu.Lock()
	if t.Class == stun.ClassSuccessResponse && t.Method != stun.MethodBinding && !g.authed {
		g.authed = true
		g.mu.Unlock()
		if g.onAuth != nil {
			g.onAuth()
		}
		return p
	}
	if t.Method != stun.MethodAllocate || t.Class != stun.ClassErrorResponse || len(g.udpReqs) == 0 {
		g.mu.Unlock()
		return p
	}
	var tid [stun.TransactionIDSize]byte
	copy(tid[:], p[8:20])
	user, ok := g.udpReqs[tid]
	delete(g.udpReqs, tid)
	g.mu.Unlock()
	if !ok {
		return p
	}
	m := &stun.Message{Raw: append([]byte(nil), p...)}
	var code stun.ErrorCodeAttribute
	if m.Decode() != nil || code.GetFrom(m) != nil || code.Code != stun.CodeInsufficientCapacity || !m.Contains(stun.AttrMessageIntegrity) {
		return p
	}
	out, err := stun.Build(&stun.Message{TransactionID: tid}, stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse),
		&stun.ErrorCodeAttribute{Code: stun.CodeUnsupportedTransProto, Reason: []byte("Unsupported Transport Protocol: TCP allocations only (RFC 6062)")},
		stun.MessageIntegrity(g.key(user)))
	if err != nil {
		return p
	}
	return out.Raw
}

// turnKey is the long-term credential key of a relay username.
func (r *Relay) turnKey(user string) []byte {
	return turn.GenerateAuthKey(user, TURNRealm, relay.Password(r.secret, user))
}

// guard wraps one accepted TURN connection.
func (r *Relay) guard(c net.Conn) net.Conn {
	lim := r.srv.limits
	return &turnGuard{Conn: c, key: r.turnKey,
		onAuth: func() { limit.Authenticated(c) },
		onGarbage: func() {
			ip := ""
			if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
				ip = ta.AddrPort().Addr().Unmap().String()
			}
			lim.connRefused.WithLabelValues("turn", limit.ReasonGarbage).Inc()
			lim.refusals.Refused("connections closed: not STUN", limit.ReasonGarbage, logrus.Fields{"listener": "turn", "remote_ip": ip})
		}}
}
