package portmap

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
)

// maxDatagram bounds an answer we read (PCP's limit is 1100 bytes).
const maxDatagram = 1100

// Retransmission of NAT-PMP and PCP requests (RFC 6886 §3.1, RFC 6887
// §8.1.1): 250 ms, doubling; the context ends it.
const (
	firstRTO = 250 * time.Millisecond
	maxRTO   = 4 * time.Second
)

// verdict is what an answer check says of one datagram.
type verdict int

const (
	skip   verdict = iota // not our answer (garbage, stale, foreign): keep waiting
	accept                // our answer
	fail                  // our answer, and it is an error (a result code): stop
)

// exchange sends req to the gateway's port over a fresh connected UDP socket
// and retransmits until check accepts an answer, check fails, or ctx ends.
// Datagrams check skips are logged and waited past; when nothing acceptable
// came, the error wraps ErrNoGateway and names the last skipped answer.
func (c *Client) exchange(ctx context.Context, proto string, log logrus.FieldLogger, req []byte, check func([]byte) (verdict, error)) error {
	addr := netip.AddrPortFrom(c.gw, c.opts.pmpPort)
	conn, err := c.opts.Dial(ctx, "udp4", addr.String())
	if err != nil {
		return fmt.Errorf("portmap: %s: dial %v: %w: %w", proto, addr, ErrNoGateway, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, maxDatagram+1)
	var lastSkip, netErr error
	for rto := firstRTO; ; rto = min(2*rto, maxRTO) {
		if _, err := conn.Write(req); err != nil {
			// ICMP port unreachable from an earlier send shows up here:
			// the gateway does not serve this port.
			if ctx.Err() != nil {
				return noAnswer(proto, lastSkip, ctx.Err())
			}
			return fmt.Errorf("portmap: %s: send to %v: %w: %w", proto, addr, ErrNoGateway, err)
		}
		deadline := time.Now().Add(rto)
		if ctx.Err() == nil {
			_ = conn.SetReadDeadline(deadline)
		}
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					return noAnswer(proto, lastSkip, errors.Join(ctx.Err(), netErr))
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // retransmit
				}
				// A refused read (ICMP unreachable) means no server here;
				// wait out the rest of this round before trying again.
				netErr = err
				select {
				case <-ctx.Done():
				case <-time.After(time.Until(deadline)):
				}
				break
			}
			v, err := check(buf[:n])
			switch v {
			case accept:
				return nil
			case fail:
				log.WithField("error", err).Info("portmap: gateway answered with an error")
				return err
			}
			lastSkip = err
			log.WithFields(logrus.Fields{"error": err, "bytes": n}).Warn("portmap: ignored an answer")
		}
	}
}
