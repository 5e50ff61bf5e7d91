package portmap

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
)

// fakePMP is a PCP and NAT-PMP gateway on 127.0.0.1: every request is handed
// to answer, whose datagrams are sent back in order. It records requests.
type fakePMP struct {
	pc     net.PacketConn
	answer func(req []byte) [][]byte
	mu     sync.Mutex
	reqs   [][]byte
	wg     sync.WaitGroup
}

func newFakePMP(t *testing.T, answer func(req []byte) [][]byte) *fakePMP {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePMP{pc: pc, answer: answer}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() { pc.Close(); f.wg.Wait() })
	return f
}

func (f *fakePMP) port() uint16 { return uint16(f.pc.LocalAddr().(*net.UDPAddr).Port) }

func (f *fakePMP) serve() {
	defer f.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := f.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		req := append([]byte(nil), buf[:n]...)
		f.mu.Lock()
		f.reqs = append(f.reqs, req)
		answer := f.answer
		f.mu.Unlock()
		for _, a := range answer(req) {
			_, _ = f.pc.WriteTo(a, from)
		}
	}
}

func (f *fakePMP) setAnswer(a func([]byte) [][]byte) {
	f.mu.Lock()
	f.answer = a
	f.mu.Unlock()
}

func (f *fakePMP) requests() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.reqs...)
}

// encodePCP is the gateway side of parsePCP.
func encodePCP(r pcpResponse) []byte {
	n := pcpHeaderLen
	if r.op == pcpOpMap {
		n += pcpMapDataLen
	}
	b := make([]byte, n)
	b[0] = pcpVersion
	b[1] = r.op | pcpReplyBit
	b[3] = r.result
	binary.BigEndian.PutUint32(b[4:], r.lifetime)
	binary.BigEndian.PutUint32(b[8:], r.epoch)
	if r.op == pcpOpMap {
		d := b[pcpHeaderLen:]
		copy(d[0:12], r.nonce[:])
		d[12] = r.proto
		binary.BigEndian.PutUint16(d[16:], r.internal)
		binary.BigEndian.PutUint16(d[18:], r.external.Port())
		a := addr16(r.external.Addr())
		copy(d[20:36], a[:])
	}
	return b
}

// parsePCPRequest is the gateway side of pcpRequest.marshal.
func parsePCPRequest(b []byte) (pcpRequest, bool) {
	if len(b) < pcpHeaderLen || b[0] != pcpVersion {
		return pcpRequest{}, false
	}
	r := pcpRequest{op: b[1], lifetime: binary.BigEndian.Uint32(b[4:8]), client: netip.AddrFrom16([16]byte(b[8:24])).Unmap()}
	if r.op == pcpOpMap {
		if len(b) < pcpHeaderLen+pcpMapDataLen {
			return pcpRequest{}, false
		}
		d := b[pcpHeaderLen:]
		copy(r.nonce[:], d[0:12])
		r.proto = d[12]
		r.internal = binary.BigEndian.Uint16(d[16:18])
		r.suggested = netip.AddrPortFrom(netip.AddrFrom16([16]byte(d[20:36])).Unmap(), binary.BigEndian.Uint16(d[18:20]))
	}
	return r, true
}

// pcpGrant answers a MAP request as a gateway that grants it on extIP at the
// suggested port (or the internal one) for lifetime seconds (the request's
// when 0 is passed... and a delete with lifetime 0).
func pcpGrant(req pcpRequest, extIP netip.Addr, lifetime uint32) pcpResponse {
	port := req.suggested.Port()
	if port == 0 {
		port = req.internal
	}
	if req.lifetime == 0 {
		lifetime = 0
	}
	return pcpResponse{op: pcpOpMap, lifetime: lifetime, epoch: 1, nonce: req.nonce, proto: req.proto, internal: req.internal, external: netip.AddrPortFrom(extIP, port)}
}

// encodePMPAddress and encodePMPMap are the gateway side of parsePMP.
func encodePMPAddress(result uint16, ext netip.Addr) []byte {
	b := make([]byte, 12)
	b[1] = pmpReply + pmpOpAddress
	binary.BigEndian.PutUint16(b[2:], result)
	binary.BigEndian.PutUint32(b[4:], 7)
	a := ext.As4()
	copy(b[8:], a[:])
	return b
}

func encodePMPMap(result, internal, external uint16, lifetime uint32) []byte {
	b := make([]byte, 16)
	b[1] = pmpReply + pmpOpMapTCP
	binary.BigEndian.PutUint16(b[2:], result)
	binary.BigEndian.PutUint32(b[4:], 7)
	binary.BigEndian.PutUint16(b[8:], internal)
	binary.BigEndian.PutUint16(b[10:], external)
	binary.BigEndian.PutUint32(b[12:], lifetime)
	return b
}

// firstPCPMap returns the first PCP MAP request among reqs.
func firstPCPMap(reqs [][]byte) pcpRequest {
	for _, b := range reqs {
		if r, ok := parsePCPRequest(b); ok && r.op == pcpOpMap {
			return r
		}
	}
	return pcpRequest{}
}
