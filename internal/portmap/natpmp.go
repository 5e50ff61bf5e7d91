package portmap

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
)

// NAT-PMP opcodes and result codes (RFC 6886 §3).
const (
	pmpOpAddress = 0
	pmpOpMapTCP  = 2
	pmpReply     = 128
)

var pmpResults = map[uint16]string{
	0: "success", 1: "unsupported version", 2: "not authorized/refused",
	3: "network failure", 4: "out of resources", 5: "unsupported opcode",
}

// pmpResponse is a decoded NAT-PMP answer.
type pmpResponse struct {
	op       byte // without the reply bit
	result   uint16
	epoch    uint32
	external netip.Addr // op 0
	internal uint16     // op 1, 2
	mapped   uint16     // op 1, 2
	lifetime uint32     // op 1, 2
}

// parsePMP decodes a NAT-PMP answer. Error answers need only the common
// 8 bytes; a success needs its whole body. Bytes past the body are ignored.
func parsePMP(b []byte) (pmpResponse, error) {
	var r pmpResponse
	if len(b) < 8 {
		return r, fmt.Errorf("%w: nat-pmp: %d bytes, want at least 8", ErrMalformed, len(b))
	}
	if b[0] != 0 {
		return r, fmt.Errorf("%w: nat-pmp: version %d", ErrMalformed, b[0])
	}
	if b[1] < pmpReply {
		return r, fmt.Errorf("%w: nat-pmp: opcode %d is a request", ErrMalformed, b[1])
	}
	r.op = b[1] - pmpReply
	if r.op > 2 {
		return r, fmt.Errorf("%w: nat-pmp: unknown opcode %d", ErrMalformed, b[1])
	}
	r.result = binary.BigEndian.Uint16(b[2:4])
	r.epoch = binary.BigEndian.Uint32(b[4:8])
	if r.result != 0 {
		return r, nil
	}
	switch r.op {
	case pmpOpAddress:
		if len(b) < 12 {
			return r, fmt.Errorf("%w: nat-pmp: address answer of %d bytes, want 12", ErrMalformed, len(b))
		}
		r.external = netip.AddrFrom4([4]byte(b[8:12]))
	default:
		if len(b) < 16 {
			return r, fmt.Errorf("%w: nat-pmp: map answer of %d bytes, want 16", ErrMalformed, len(b))
		}
		r.internal = binary.BigEndian.Uint16(b[8:10])
		r.mapped = binary.BigEndian.Uint16(b[10:12])
		r.lifetime = binary.BigEndian.Uint32(b[12:16])
	}
	return r, nil
}

// pmpMapRequest encodes a TCP map request (RFC 6886 §3.3).
func pmpMapRequest(internal, suggested uint16, lifetime uint32) []byte {
	b := make([]byte, 12)
	b[1] = pmpOpMapTCP
	binary.BigEndian.PutUint16(b[4:], internal)
	binary.BigEndian.PutUint16(b[6:], suggested)
	binary.BigEndian.PutUint32(b[8:], lifetime)
	return b
}

func pmpResultError(code uint16) error {
	text, ok := pmpResults[code]
	if !ok {
		text = "unknown"
	}
	return &GatewayError{Protocol: NATPMP, Code: int(code), Text: text, unsupported: code == 1 || code == 5}
}

// natpmpProto is NAT-PMP (RFC 6886).
type natpmpProto struct {
	c   *Client
	log logrus.FieldLogger
}

func (p *natpmpProto) name() string { return NATPMP }

// ask sends req and hands check the first well-formed answer to opcode
// op; an answer with a result code fails the exchange.
func (p *natpmpProto) ask(ctx context.Context, req []byte, op byte, check func(pmpResponse) (verdict, error)) error {
	return p.c.exchange(ctx, NATPMP, p.log, req, func(b []byte) (verdict, error) {
		r, err := parsePMP(b)
		if err != nil {
			return skip, err
		}
		if r.op != op {
			return skip, fmt.Errorf("%w: nat-pmp: answer to opcode %d, asked %d", ErrMalformed, r.op, op)
		}
		if r.result != 0 {
			return fail, pmpResultError(r.result)
		}
		return check(r)
	})
}

func (p *natpmpProto) probe(ctx context.Context) (netip.Addr, error) {
	return p.externalAddr(ctx)
}

// externalAddr asks for the gateway's external address (RFC 6886 §3.2).
func (p *natpmpProto) externalAddr(ctx context.Context) (netip.Addr, error) {
	var ext netip.Addr
	err := p.ask(ctx, []byte{0, pmpOpAddress}, pmpOpAddress, func(r pmpResponse) (verdict, error) {
		ext = r.external
		return accept, nil
	})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: nat-pmp external address: %w", err)
	}
	return ext, nil
}

func (p *natpmpProto) mapPort(ctx context.Context, internal netip.AddrPort, lease time.Duration, prev *Mapping) (Mapping, error) {
	ext, err := p.externalAddr(ctx)
	if err != nil {
		return Mapping{}, err
	}
	suggested := internal.Port()
	if prev != nil && prev.External.Port() != 0 {
		suggested = prev.External.Port()
	}
	var got pmpResponse
	err = p.ask(ctx, pmpMapRequest(internal.Port(), suggested, seconds(lease)), pmpOpMapTCP, func(r pmpResponse) (verdict, error) {
		if r.internal != internal.Port() {
			return skip, fmt.Errorf("%w: nat-pmp: mapping of internal port %d, asked %d", ErrForeignMapping, r.internal, internal.Port())
		}
		if r.lifetime == 0 {
			return fail, fmt.Errorf("%w: nat-pmp: gateway granted lifetime 0 for port %d", ErrNoMapping, r.internal)
		}
		if r.mapped == 0 {
			return skip, fmt.Errorf("%w: nat-pmp: external port 0", ErrMalformed)
		}
		got = r
		return accept, nil
	})
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: nat-pmp map tcp %v: %w", internal, err)
	}
	d := time.Duration(got.lifetime) * time.Second
	return Mapping{
		Protocol: NATPMP,
		External: netip.AddrPortFrom(ext, got.mapped),
		Internal: internal,
		Lease:    d,
		Expires:  p.c.opts.Clock.Now().Add(d),
	}, nil
}

func (p *natpmpProto) unmap(ctx context.Context, m Mapping) error {
	err := p.ask(ctx, pmpMapRequest(m.Internal.Port(), 0, 0), pmpOpMapTCP, func(r pmpResponse) (verdict, error) {
		if r.internal != m.Internal.Port() {
			return skip, fmt.Errorf("%w: nat-pmp: deletion of internal port %d, asked %d", ErrForeignMapping, r.internal, m.Internal.Port())
		}
		if r.lifetime != 0 {
			return fail, fmt.Errorf("%w: nat-pmp: deletion answered lifetime %d", ErrRefused, r.lifetime)
		}
		return accept, nil
	})
	if err != nil {
		return fmt.Errorf("portmap: nat-pmp delete %v: %w", m.External, err)
	}
	return nil
}
