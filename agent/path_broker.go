package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/internal/proto"
	"github.com/peerport/peerport/internal/secure"
)

// The broker relay path: the one that always works where the control
// channel does. After a PathBroker introduction both agents open a TLS
// connection to the broker's own port (ALPN secure.ALPNRelay, through the
// same proxy as the control channel), bind it with the introduction's token,
// and once the broker has both it copies bytes between them. The TLS peer
// channel runs inside, so the broker sees only its ciphertext.
//
// Each agent binds on the broker node its control session is with, except
// that a cluster broker may name, in ConnectReply.RelayAddr, another node
// whose relay holds the token (the sharer's): the connector goes there. It
// dials that node as it would any of the URL's addresses, with the same pin
// or CA verification (BrokerURL.At), so a host that does not hold the
// broker's key, or a certificate for its own name, is refused by TLS.

// relayBindTimeout bounds the wait for the broker to pair us with the peer;
// the broker gives up on its side after 20 s.
const relayBindTimeout = 25 * time.Second

// errNoRelayToken: a broker relay introduction was answered without a token.
var errNoRelayToken = errors.New("the broker answered a relay introduction without a relay token")

// brokerPath is the broker relay.
type brokerPath struct{ a *Agent }

func (brokerPath) wire() string { return proto.PathBroker }

// dial is the connector's side: introduce, then bind to the broker relay
// with the token the broker answered with.
func (p brokerPath) dial(ctx context.Context, b *brokerClient, sharer secure.AgentID, intro introFunc, _ func()) (net.Conn, outcome, *proto.ConnectReply, error) {
	out := outcome{path: PathRelay, relayKind: RelayBroker, relay: b.nodeAddr()}
	local := natInfo(b.natReport())
	rep, err := intro(ctx, &proto.Connect{Path: proto.PathBroker, NAT: local, RTTMillis: b.rttMillis()})
	if err != nil {
		return nil, out, nil, fmt.Errorf("broker relay to %s: %w", sharer.Short(), err)
	}
	out.localNAT, out.peerNAT = natType(local), natType(rep.NAT)
	if len(rep.RelayToken) == 0 {
		return nil, out, rep, fmt.Errorf("broker relay to %s: %w", sharer.Short(), errNoRelayToken)
	}
	if rep.RelayAddr != "" {
		if err := checkRelayAddr(rep.RelayAddr); err != nil {
			return nil, out, rep, fmt.Errorf("broker relay to %s: %w", sharer.Short(), err)
		}
		out.relay = rep.RelayAddr
	}
	conn, err := b.bindRelay(ctx, out.relay, rep.RelayToken)
	if err != nil {
		return nil, out, rep, fmt.Errorf("broker relay to %s: %w", sharer.Short(), err)
	}
	cc := &countConn{Conn: conn}
	out.relayed = &cc.n
	return cc, out, rep, nil
}

// answer is the sharer's side: accept the introduction and bind to the
// broker relay with its token, then serve the peer channel that comes
// through.
func (p brokerPath) answer(ctx context.Context, b *brokerClient, in *proto.Intro, connector secure.AgentID, rep *proto.IntroReply) {
	if len(in.RelayToken) == 0 {
		rep.Code, rep.Message = proto.CodeBadRequest, "sharer: "+errNoRelayToken.Error()
		return
	}
	local := natInfo(b.natReport())
	rep.NAT = local
	log := p.a.log.WithFields(logrus.Fields{"component": "relay", "peer": connector.Short(), "share": in.Share, "relay_kind": RelayBroker})
	token, node := in.RelayToken, b.nodeAddr() // the node the introduction came from
	p.a.spawn(func() {
		conn, err := b.bindRelay(ctx, node, token)
		if err != nil {
			if ctx.Err() == nil {
				log.WithError(err).Warn("the broker relay did not pair us with the connector")
			}
			return
		}
		cc := &countConn{Conn: conn}
		p.a.servePeer(ctx, cc, connector, in.ConnectorInstance, outcome{path: PathRelay, relayKind: RelayBroker, relay: node, relayed: &cc.n,
			localNAT: natType(local), peerNAT: natType(in.NAT)})
	})
}

// errBadRelayAddr: a broker named a relay node that is not one host:port.
var errBadRelayAddr = errors.New("the broker named a relay node that is not host:port")

// checkRelayAddr checks a ConnectReply's RelayAddr is one host:port, the
// form of one address of a broker URL, before it is dialed.
func checkRelayAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	n, perr := strconv.Atoi(port)
	if err != nil || host == "" || strings.ContainsAny(addr, ", ") || perr != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%w: %q", errBadRelayAddr, addr)
	}
	return nil
}

// bindRelay opens a broker relay connection to the node at addr and binds
// it with token; it returns once the broker has paired it with the other
// agent's.
func (b *brokerClient) bindRelay(ctx context.Context, addr string, token []byte) (net.Conn, error) {
	conn, err := b.agent.dialer.dial(ctx, b.url.At(addr), secure.ALPNRelay)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(relayBindTimeout))
	if err := proto.Write(conn, &proto.RelayBind{Token: token}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("bind: %w", err)
	}
	m, err := proto.Read(conn, 0)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("bind: %w", err)
	}
	switch m := m.(type) {
	case *proto.Result:
		if err := remoteErr(m.Code, m.Message); err != nil {
			conn.Close()
			return nil, fmt.Errorf("bind: %w", err)
		}
	case *proto.Error:
		conn.Close()
		return nil, fmt.Errorf("bind: %w", remoteErr(m.Code, m.Message))
	default:
		conn.Close()
		return nil, fmt.Errorf("bind: unexpected %T", m)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}
