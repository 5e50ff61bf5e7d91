package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/pion/stun/v4"
)

// binding is what one Binding transaction learnt.
type binding struct {
	mapped netip.AddrPort // XOR-MAPPED-ADDRESS
	other  netip.AddrPort // OTHER-ADDRESS, if the server has one
	rtt    time.Duration
}

func newRequest(flags int) *stun.Message {
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
	if flags != 0 {
		var v [4]byte
		binary.BigEndian.PutUint32(v[:], uint32(flags))
		setters = append(setters, rawAttr{Type: stun.AttrChangeRequest, Value: v[:]})
	}
	setters = append(setters, stun.Fingerprint)
	return stun.MustBuild(setters...)
}

// parseResponse checks raw answers req and reads its addresses.
func parseResponse(raw []byte, req *stun.Message) (binding, error) {
	var m stun.Message
	if err := stun.Decode(raw, &m); err != nil {
		return binding{}, fmt.Errorf("decode response: %w", err)
	}
	if m.TransactionID != req.TransactionID {
		return binding{}, errors.New("decode response: transaction id mismatch")
	}
	if m.Type == stun.BindingError {
		var code stun.ErrorCodeAttribute
		if err := code.GetFrom(&m); err == nil {
			return binding{}, fmt.Errorf("server answered error %d %s: %w", code.Code, code.Reason, errServerRefused)
		}
		return binding{}, fmt.Errorf("server answered an error: %w", errServerRefused)
	}
	if m.Type != stun.BindingSuccess {
		return binding{}, fmt.Errorf("decode response: unexpected type %v", m.Type)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(&m); err != nil {
		return binding{}, fmt.Errorf("decode response: XOR-MAPPED-ADDRESS: %w", err)
	}
	var b binding
	b.mapped = toAddrPort(xa.IP, xa.Port)
	var oa stun.OtherAddress
	if err := oa.GetFrom(&m); err == nil {
		b.other = toAddrPort(oa.IP, oa.Port)
	}
	return b, nil
}

var errServerRefused = errors.New("STUN server refused the request")

func toAddrPort(ip net.IP, port int) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

// dialReuse dials server from local with SO_REUSEADDR+SO_REUSEPORT.
func dialReuse(ctx context.Context, exec Exec, local netip.AddrPort, server string) (net.Conn, error) {
	d := net.Dialer{Control: ReusePort}
	if local.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(local)
	}
	var c net.Conn
	err := exec.Run(func() (err error) {
		c, err = d.DialContext(ctx, "tcp", server)
		return err
	})
	return c, err
}

// bindTCP runs one Binding transaction on an open stream.
func bindTCP(ctx context.Context, c net.Conn) (binding, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := newRequest(0)
	start := time.Now()
	if _, err := c.Write(req.Raw); err != nil {
		return binding{}, fmt.Errorf("stun: write: %w", err)
	}
	raw, err := ReadMessage(c)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return binding{}, fmt.Errorf("stun: read: %w", err)
	}
	b, err := parseResponse(raw, req)
	if err != nil {
		return binding{}, fmt.Errorf("stun: %w", err)
	}
	b.rtt = time.Since(start)
	return b, nil
}

// MappedAddrTCP learns the server-reflexive address of local (a port that is
// also listening and dialing with SO_REUSEPORT, e.g. a punch socket): it
// dials server ("host:port") from local, runs one Binding and closes. The NAT
// keeps the mapping for the punch that follows, and an endpoint-independent
// NAT gives that punch the same public address. The socket is created on
// the calling goroutine (in the NAT lab: wrap the call in Node.Do).
func MappedAddrTCP(ctx context.Context, local netip.AddrPort, server string) (netip.AddrPort, error) {
	c, err := dialReuse(ctx, nil, local, server)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun: mapped address from %s via %s: %w", local, server, err)
	}
	defer c.Close()
	b, err := bindTCP(ctx, c)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stun: mapped address from %s via %s: %w", local, server, err)
	}
	return b.mapped, nil
}

// udpClient runs concurrent Binding transactions on one UDP socket, so the
// mapping and filtering tests share the socket's mapping.
type udpClient struct {
	pc   net.PacketConn
	mu   sync.Mutex
	wait map[[stun.TransactionIDSize]byte]chan []byte
	done chan struct{}
}

func newUDPClient(pc net.PacketConn) *udpClient {
	u := &udpClient{pc: pc, wait: map[[stun.TransactionIDSize]byte]chan []byte{}, done: make(chan struct{})}
	go u.read()
	return u
}

func (u *udpClient) read() {
	defer close(u.done)
	buf := make([]byte, MaxMessage)
	for {
		n, _, err := u.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if n < 20 {
			continue
		}
		var id [stun.TransactionIDSize]byte
		copy(id[:], buf[8:20])
		u.mu.Lock()
		ch := u.wait[id]
		u.mu.Unlock()
		if ch != nil {
			select {
			case ch <- append([]byte(nil), buf[:n]...):
			default:
			}
		}
	}
}

func (u *udpClient) close() {
	u.pc.Close()
	<-u.done
}

// udpRTO are the retransmission times of one transaction, from its start:
// RFC 5389's 500 ms doubling is too slow for an interactive check, so start
// lower; the last entry is the end.
var udpRTO = []time.Duration{0, 250 * time.Millisecond, 750 * time.Millisecond, 1500 * time.Millisecond}

// do runs one transaction to server, asking for CHANGE-REQUEST flags.
func (u *udpClient) do(ctx context.Context, server netip.AddrPort, flags int) (binding, error) {
	req := newRequest(flags)
	ch := make(chan []byte, 4)
	u.mu.Lock()
	u.wait[req.TransactionID] = ch
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		delete(u.wait, req.TransactionID)
		u.mu.Unlock()
	}()
	start := time.Now()
	to := net.UDPAddrFromAddrPort(server)
	for i := 0; i+1 < len(udpRTO); i++ {
		sent := time.Now()
		if _, err := u.pc.WriteTo(req.Raw, to); err != nil {
			return binding{}, fmt.Errorf("stun: send to %s: %w", server, err)
		}
		t := time.NewTimer(time.Until(start.Add(udpRTO[i+1])))
		select {
		case <-ctx.Done():
			t.Stop()
			return binding{}, fmt.Errorf("stun: udp to %s: %w", server, ctx.Err())
		case raw := <-ch:
			t.Stop()
			b, err := parseResponse(raw, req)
			if err != nil {
				return binding{}, fmt.Errorf("stun: udp to %s: %w", server, err)
			}
			b.rtt = time.Since(sent) // a late answer to an earlier send only overstates it
			return b, nil
		case <-t.C:
		}
	}
	return binding{}, fmt.Errorf("stun: udp to %s: %w", server, ErrNoAnswer)
}

// withDefaultPort adds port to a host without one.
func withDefaultPort(hostport string, port int) string {
	if _, _, err := net.SplitHostPort(hostport); err == nil {
		return hostport
	}
	return net.JoinHostPort(hostport, strconv.Itoa(port))
}
