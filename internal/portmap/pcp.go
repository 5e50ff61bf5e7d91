package portmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
)

// PCP constants (RFC 6887 §7, §11, §19.4).
const (
	pcpVersion    = 2
	pcpOpAnnounce = 0
	pcpOpMap      = 1
	pcpReplyBit   = 0x80
	pcpHeaderLen  = 24
	pcpMapDataLen = 36
	pcpMaxLen     = 1100
	protoTCP      = 6
)

var pcpResults = map[byte]string{
	0: "SUCCESS", 1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST",
	4: "UNSUPP_OPCODE", 5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", 7: "NETWORK_FAILURE",
	8: "NO_RESOURCES", 9: "UNSUPP_PROTOCOL", 10: "USER_EX_QUOTA", 11: "CANNOT_PROVIDE_EXTERNAL",
	12: "ADDRESS_MISMATCH", 13: "EXCESSIVE_REMOTE_PEERS",
}

// pcpRequest is a PCP request: ANNOUNCE, or MAP when op is pcpOpMap.
type pcpRequest struct {
	op        byte
	lifetime  uint32
	client    netip.Addr
	nonce     [12]byte
	proto     byte
	internal  uint16
	suggested netip.AddrPort // zero Addr: any IPv4 address
}

// addr16 is a's 16-byte PCP form: IPv4 as ::ffff:a.b.c.d, the zero Addr as
// ::ffff:0.0.0.0 (RFC 6887 §11.1: "any" IPv4 external address).
func addr16(a netip.Addr) [16]byte {
	if !a.IsValid() {
		a = netip.IPv4Unspecified()
	}
	if a.Is4() {
		return netip.AddrFrom16(netip.AddrFrom4(a.As4()).As16()).As16()
	}
	return a.As16()
}

func (r pcpRequest) marshal() []byte {
	n := pcpHeaderLen
	if r.op == pcpOpMap {
		n += pcpMapDataLen
	}
	b := make([]byte, n)
	b[0] = pcpVersion
	b[1] = r.op
	binary.BigEndian.PutUint32(b[4:], r.lifetime)
	c := addr16(r.client)
	copy(b[8:24], c[:])
	if r.op == pcpOpMap {
		d := b[pcpHeaderLen:]
		copy(d[0:12], r.nonce[:])
		d[12] = r.proto
		binary.BigEndian.PutUint16(d[16:], r.internal)
		binary.BigEndian.PutUint16(d[18:], r.suggested.Port())
		s := addr16(r.suggested.Addr())
		copy(d[20:36], s[:])
	}
	return b
}

// pcpResponse is a decoded PCP answer. The MAP fields are set only for a
// successful MAP answer.
type pcpResponse struct {
	op       byte // without the reply bit
	result   byte
	lifetime uint32
	epoch    uint32
	nonce    [12]byte
	proto    byte
	internal uint16
	external netip.AddrPort
}

// errPCPIsPMP marks a NAT-PMP server's answer to our PCP request: it speaks
// NAT-PMP only (RFC 6887 §9).
var errPCPIsPMP = &GatewayError{Protocol: PCP, Code: 1, Text: "gateway answered as a NAT-PMP server: UNSUPP_VERSION", unsupported: true}

// parsePCP decodes a PCP answer, options included (each must fit the
// message; their content is not needed and not kept).
func parsePCP(b []byte) (pcpResponse, error) {
	var r pcpResponse
	if len(b) >= 2 && b[0] == 0 && b[1] >= pmpReply {
		return r, errPCPIsPMP
	}
	if len(b) < pcpHeaderLen {
		return r, fmt.Errorf("%w: pcp: %d bytes, want at least %d", ErrMalformed, len(b), pcpHeaderLen)
	}
	if len(b) > pcpMaxLen || len(b)%4 != 0 {
		return r, fmt.Errorf("%w: pcp: length %d is not a multiple of 4 up to %d", ErrMalformed, len(b), pcpMaxLen)
	}
	if b[0] != pcpVersion {
		return r, fmt.Errorf("%w: pcp: version %d", ErrMalformed, b[0])
	}
	if b[1]&pcpReplyBit == 0 {
		return r, fmt.Errorf("%w: pcp: a request, not an answer", ErrMalformed)
	}
	r.op = b[1] &^ pcpReplyBit
	r.result = b[3]
	r.lifetime = binary.BigEndian.Uint32(b[4:8])
	r.epoch = binary.BigEndian.Uint32(b[8:12])
	rest := b[pcpHeaderLen:]
	switch r.op {
	case pcpOpAnnounce:
	case pcpOpMap:
		if len(rest) < pcpMapDataLen {
			if r.result != 0 {
				return r, nil // an error answer need not copy the opcode data
			}
			return r, fmt.Errorf("%w: pcp: MAP answer of %d bytes, want %d", ErrMalformed, len(b), pcpHeaderLen+pcpMapDataLen)
		}
		copy(r.nonce[:], rest[0:12])
		r.proto = rest[12]
		r.internal = binary.BigEndian.Uint16(rest[16:18])
		ip := netip.AddrFrom16([16]byte(rest[20:36])).Unmap()
		r.external = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(rest[18:20]))
		rest = rest[pcpMapDataLen:]
	default:
		return r, fmt.Errorf("%w: pcp: unknown opcode %d", ErrMalformed, r.op)
	}
	for len(rest) > 0 {
		if len(rest) < 4 {
			return r, fmt.Errorf("%w: pcp: %d stray bytes after the options", ErrMalformed, len(rest))
		}
		n := int(binary.BigEndian.Uint16(rest[2:4]))
		padded := 4 + (n+3)&^3
		if padded > len(rest) {
			return r, fmt.Errorf("%w: pcp: option %d of %d bytes overruns the message", ErrMalformed, rest[0], n)
		}
		rest = rest[padded:]
	}
	return r, nil
}

func pcpResultError(code byte) error {
	text, ok := pcpResults[code]
	if !ok {
		text = "unknown"
	}
	return &GatewayError{Protocol: PCP, Code: int(code), Text: text, unsupported: code == 1 || code == 4 || code == 9}
}

// pcpProto is PCP (RFC 6887), MAP of one TCP port and ANNOUNCE to probe.
type pcpProto struct {
	c   *Client
	log logrus.FieldLogger
}

func (p *pcpProto) name() string { return PCP }

func (p *pcpProto) probe(ctx context.Context) (netip.Addr, error) {
	local, err := p.c.LocalAddr(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	req := pcpRequest{op: pcpOpAnnounce, client: local}
	err = p.c.exchange(ctx, PCP, p.log, req.marshal(), func(b []byte) (verdict, error) {
		r, err := parsePCP(b)
		if err != nil {
			if err == errPCPIsPMP {
				return fail, err
			}
			return skip, err
		}
		if r.op != pcpOpAnnounce {
			return skip, fmt.Errorf("%w: pcp: answer to opcode %d, asked ANNOUNCE", ErrMalformed, r.op)
		}
		if r.result != 0 {
			return fail, pcpResultError(r.result)
		}
		return accept, nil
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: pcp announce: %w", err)
	}
	return netip.Addr{}, nil
}

// request sends a MAP for req and returns the checked answer: it must carry
// our nonce, protocol and internal port, or it is someone else's.
func (p *pcpProto) request(ctx context.Context, req pcpRequest) (pcpResponse, error) {
	var got pcpResponse
	err := p.c.exchange(ctx, PCP, p.log, req.marshal(), func(b []byte) (verdict, error) {
		r, err := parsePCP(b)
		if err != nil {
			if err == errPCPIsPMP {
				return fail, err
			}
			return skip, err
		}
		if r.op != pcpOpMap {
			return skip, fmt.Errorf("%w: pcp: answer to opcode %d, asked MAP", ErrMalformed, r.op)
		}
		if r.result != 0 {
			// Error answers that copy the opcode data must be for us too;
			// short ones cannot be told apart and are taken as ours.
			if r.nonce != ([12]byte{}) && r.nonce != req.nonce {
				return skip, fmt.Errorf("%w: pcp: error answer with another nonce", ErrForeignMapping)
			}
			return fail, pcpResultError(r.result)
		}
		switch {
		case r.nonce != req.nonce:
			return skip, fmt.Errorf("%w: pcp: answer with nonce %x, ours is %x", ErrForeignMapping, r.nonce, req.nonce)
		case r.proto != req.proto:
			return skip, fmt.Errorf("%w: pcp: answer for protocol %d, asked %d", ErrForeignMapping, r.proto, req.proto)
		case r.internal != req.internal:
			return skip, fmt.Errorf("%w: pcp: answer for internal port %d, asked %d", ErrForeignMapping, r.internal, req.internal)
		}
		got = r
		return accept, nil
	})
	return got, err
}

func (p *pcpProto) mapPort(ctx context.Context, internal netip.AddrPort, lease time.Duration, prev *Mapping) (Mapping, error) {
	req := pcpRequest{op: pcpOpMap, lifetime: seconds(lease), client: internal.Addr(), proto: protoTCP, internal: internal.Port(),
		suggested: netip.AddrPortFrom(netip.Addr{}, internal.Port())}
	if prev != nil && prev.nonce != ([12]byte{}) {
		req.nonce = prev.nonce
		req.suggested = prev.External
	} else if _, err := rand.Read(req.nonce[:]); err != nil {
		return Mapping{}, fmt.Errorf("portmap: pcp nonce: %w", err)
	}
	r, err := p.request(ctx, req)
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: pcp map tcp %v: %w", internal, err)
	}
	if r.lifetime == 0 {
		err := fmt.Errorf("portmap: pcp map tcp %v: gateway granted lifetime 0: %w", internal, ErrNoMapping)
		p.log.WithField("error", err).Warn("portmap: ignored an answer")
		return Mapping{}, err
	}
	if r.external.Port() == 0 {
		return Mapping{}, fmt.Errorf("portmap: pcp map tcp %v: external port 0: %w", internal, ErrMalformed)
	}
	d := time.Duration(r.lifetime) * time.Second
	return Mapping{
		Protocol: PCP,
		External: r.external,
		Internal: internal,
		Lease:    d,
		Expires:  p.c.opts.Clock.Now().Add(d),
		nonce:    req.nonce,
	}, nil
}

func (p *pcpProto) unmap(ctx context.Context, m Mapping) error {
	req := pcpRequest{op: pcpOpMap, lifetime: 0, client: m.Internal.Addr(), nonce: m.nonce, proto: protoTCP, internal: m.Internal.Port(), suggested: m.External}
	r, err := p.request(ctx, req)
	if err != nil {
		return fmt.Errorf("portmap: pcp delete %v: %w", m.External, err)
	}
	if r.lifetime != 0 {
		return fmt.Errorf("portmap: pcp delete %v: answered lifetime %d: %w", m.External, r.lifetime, ErrRefused)
	}
	return nil
}
