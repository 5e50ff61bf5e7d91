package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v4"
	"github.com/sirupsen/logrus"
)

// MaxMessage bounds a STUN message we read: a Binding request is 20 bytes
// plus a few attributes; nothing we answer needs more.
const MaxMessage = 1024

// magicCookie is the fixed second word of every STUN header (RFC 5389 §6).
const magicCookie = 0x2112A442

// CHANGE-REQUEST flags (RFC 5780 §7.2).
const (
	changeIP   = 0x04
	changePort = 0x02
)

// ServerConfig tunes a Server; the zero value is usable.
type ServerConfig struct {
	Log         logrus.FieldLogger
	MaxConns    int           // concurrent TCP connections; default 256
	ConnTimeout time.Duration // a TCP connection's whole life; default 10s
	Software    string        // SOFTWARE attribute; default none
}

// Server answers STUN Binding requests on the sockets it is handed. Handing
// it the sockets of both ports (and both addresses) lets it fill in
// OTHER-ADDRESS and honour CHANGE-REQUEST.
type Server struct {
	cfg   ServerConfig
	log   logrus.FieldLogger
	slots chan struct{}

	mu  sync.Mutex
	udp map[netip.AddrPort]net.PacketConn // by local address
	tcp map[netip.AddrPort]bool
}

// NewServer returns a Server with cfg's defaults filled in.
func NewServer(cfg ServerConfig) *Server {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 256
	}
	if cfg.ConnTimeout <= 0 {
		cfg.ConnTimeout = 10 * time.Second
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	return &Server{
		cfg: cfg, log: log, slots: make(chan struct{}, cfg.MaxConns),
		udp: map[netip.AddrPort]net.PacketConn{}, tcp: map[netip.AddrPort]bool{},
	}
}

// ServeUDP answers requests on pc until ctx is done or pc fails, then closes
// pc. Each packet is answered inline: a Binding costs microseconds, so there
// is no goroutine per packet to bound.
func (s *Server) ServeUDP(ctx context.Context, pc net.PacketConn) error {
	local := addrPortOf(pc.LocalAddr())
	s.mu.Lock()
	s.udp[local] = pc
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer func() {
		stop()
		pc.Close()
		s.mu.Lock()
		delete(s.udp, local)
		s.mu.Unlock()
	}()
	buf := make([]byte, MaxMessage+1)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("stun: read udp %s: %w", local, err)
		}
		src := addrPortOf(from)
		if n > MaxMessage || !src.IsValid() {
			continue
		}
		resp, flags, err := s.respond(buf[:n], src, local, "udp")
		if err != nil {
			s.log.WithFields(logrus.Fields{"from": src.String(), "error": err}).Debug("stun: dropped udp request")
			continue
		}
		out := pc
		if flags != 0 {
			if out = s.changedConn(local, flags); out == nil {
				continue // respond already answered 420 when no socket fits
			}
			resp = s.withOrigin(resp, addrPortOf(out.LocalAddr()))
		}
		if _, err := out.WriteTo(resp, net.UDPAddrFromAddrPort(src)); err != nil {
			s.log.WithFields(logrus.Fields{"to": src.String(), "error": err}).Debug("stun: udp write failed")
		}
	}
}

// ServeTCP accepts connections on ln until ctx is done, then closes ln and
// waits for the connections it serves.
func (s *Server) ServeTCP(ctx context.Context, ln net.Listener) error {
	local := addrPortOf(ln.Addr())
	s.mu.Lock()
	s.tcp[local] = true
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	var wg sync.WaitGroup
	defer func() {
		stop()
		ln.Close()
		wg.Wait()
		s.mu.Lock()
		delete(s.tcp, local)
		s.mu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("stun: accept %s: %w", local, err)
		}
		select {
		case s.slots <- struct{}{}:
		default:
			c.Close() // over the limit: a client retries or uses UDP
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-s.slots }()
			_ = s.ServeConn(ctx, c)
		}()
	}
}

// ServeConn answers Binding requests on one TCP connection, framed by the
// STUN header's length, until the peer closes it, ConnTimeout passes or ctx
// is done. It closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := c.SetDeadline(time.Now().Add(s.cfg.ConnTimeout)); err != nil {
		return fmt.Errorf("stun: deadline: %w", err)
	}
	src, local := addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr())
	for {
		raw, err := ReadMessage(c)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		resp, _, err := s.respond(raw, src, local, "tcp")
		if err != nil {
			return err
		}
		if _, err := c.Write(resp); err != nil {
			return fmt.Errorf("stun: write tcp: %w", err)
		}
	}
}

// ReadMessage reads one STUN message from a stream (STUN over TCP, RFC 5389
// §7.2.2): a 20-byte header whose length field gives the rest.
func ReadMessage(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 20, 20+MaxMessage)
	if _, err := io.ReadFull(r, hdr); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("stun: read header: %w", err)
		}
		return nil, err // io.EOF between messages is a clean end
	}
	if hdr[0]&0xc0 != 0 || binary.BigEndian.Uint32(hdr[4:8]) != magicCookie {
		return nil, fmt.Errorf("stun: read header: %w", ErrNotSTUN)
	}
	n := int(binary.BigEndian.Uint16(hdr[2:4]))
	if n > MaxMessage-20 || n%4 != 0 {
		return nil, fmt.Errorf("stun: read: message length %d: %w", n, ErrTooLarge)
	}
	msg := hdr[:20+n]
	if _, err := io.ReadFull(r, msg[20:]); err != nil {
		return nil, fmt.Errorf("stun: read body: %w", err)
	}
	return msg, nil
}

// Sentinel errors.
var (
	ErrNotSTUN  = errors.New("not a STUN message")
	ErrTooLarge = errors.New("STUN message too large or malformed length")
	ErrNoAnswer = errors.New("no STUN answer")
)

// respond builds the answer to one request. flags != 0 asks the caller to
// send it from the socket CHANGE-REQUEST names.
func (s *Server) respond(raw []byte, src, local netip.AddrPort, network string) ([]byte, int, error) {
	var req stun.Message
	if err := stun.Decode(raw, &req); err != nil {
		return nil, 0, fmt.Errorf("stun: decode: %w", err)
	}
	if req.Type != stun.BindingRequest {
		return nil, 0, fmt.Errorf("stun: decode: message type %v: %w", req.Type, ErrNotSTUN)
	}
	flags := 0
	if v, err := req.Get(stun.AttrChangeRequest); err == nil {
		if len(v) != 4 {
			return errorResponse(&req, stun.CodeBadRequest), 0, nil
		}
		flags = int(binary.BigEndian.Uint32(v)) & (changeIP | changePort)
	}
	if flags != 0 && (network != "udp" || s.changedConn(local, flags) == nil) {
		// RFC 5780 §6.1: a server that cannot honour CHANGE-REQUEST says so.
		return errorResponse(&req, stun.CodeUnknownAttribute), 0, nil
	}
	// Comprehension-required attributes we do not know must be refused (RFC 5389 §7.3.1).
	var unknown stun.UnknownAttributes
	for _, a := range req.Attributes {
		if a.Type.Required() && a.Type != stun.AttrChangeRequest {
			unknown = append(unknown, a.Type)
		}
	}
	if len(unknown) > 0 {
		m := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingError,
			stun.CodeUnknownAttribute, unknown)
		return m.Raw, 0, nil
	}
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: src.Addr().AsSlice(), Port: int(src.Port())},
	}
	if local.IsValid() && !local.Addr().IsUnspecified() {
		setters = append(setters, &stun.ResponseOrigin{IP: local.Addr().AsSlice(), Port: int(local.Port())})
	}
	if other, ok := s.otherAddress(local, network); ok {
		setters = append(setters, &stun.OtherAddress{IP: other.Addr().AsSlice(), Port: int(other.Port())})
	}
	if s.cfg.Software != "" {
		setters = append(setters, stun.NewSoftware(s.cfg.Software))
	}
	setters = append(setters, stun.Fingerprint)
	m, err := stun.Build(setters...)
	if err != nil {
		return nil, 0, fmt.Errorf("stun: build response: %w", err)
	}
	return m.Raw, flags, nil
}

func errorResponse(req *stun.Message, code stun.ErrorCode) []byte {
	return stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingError, code).Raw
}

// withOrigin rewrites RESPONSE-ORIGIN for an answer sent from another socket.
func (s *Server) withOrigin(raw []byte, origin netip.AddrPort) []byte {
	var m stun.Message
	if err := stun.Decode(raw, &m); err != nil {
		return raw
	}
	setters := []stun.Setter{stun.NewTransactionIDSetter(m.TransactionID), m.Type}
	for _, a := range m.Attributes {
		switch a.Type {
		case stun.AttrResponseOrigin, stun.AttrFingerprint:
		default:
			setters = append(setters, rawAttr(a))
		}
	}
	if origin.IsValid() && !origin.Addr().IsUnspecified() {
		setters = append(setters, &stun.ResponseOrigin{IP: origin.Addr().AsSlice(), Port: int(origin.Port())})
	}
	setters = append(setters, stun.Fingerprint)
	out, err := stun.Build(setters...)
	if err != nil {
		return raw
	}
	return out.Raw
}

type rawAttr stun.RawAttribute

func (a rawAttr) AddTo(m *stun.Message) error { m.Add(a.Type, a.Value); return nil }

// changedConn finds the UDP socket CHANGE-REQUEST flags ask for.
func (s *Server) changedConn(local netip.AddrPort, flags int) net.PacketConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	for la, pc := range s.udp {
		if la.Addr().Is4() != local.Addr().Is4() {
			continue
		}
		ipOK := (flags&changeIP != 0) == (la.Addr() != local.Addr())
		portOK := (flags&changePort != 0) == (la.Port() != local.Port())
		if ipOK && portOK {
			return pc
		}
	}
	return nil
}

// otherAddress is a served address differing in both address and port
// (RFC 5780 §7.4); without a second address there is none.
func (s *Server) otherAddress(local netip.AddrPort, network string) (netip.AddrPort, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	consider := func(la netip.AddrPort) bool {
		return la.Addr().Is4() == local.Addr().Is4() && !la.Addr().IsUnspecified() &&
			la.Addr() != local.Addr() && la.Port() != local.Port()
	}
	if network == "udp" {
		for la := range s.udp {
			if consider(la) {
				return la, true
			}
		}
	} else {
		for la := range s.tcp {
			if consider(la) {
				return la, true
			}
		}
	}
	return netip.AddrPort{}, false
}

func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		if a != nil {
			ap, _ = netip.ParseAddrPort(a.String())
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
