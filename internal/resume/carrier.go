package resume

import (
	"fmt"
	"io"
	"net"
	"time"
)

// readLoop takes frames off one carrier until it fails or is replaced.
func (c *Conn) readLoop(carrier net.Conn, gen uint64) {
	defer c.wg.Done()
	buf := make([]byte, MaxData)
	for {
		f, err := ReadFrame(carrier, buf)
		c.mu.Lock()
		if c.gen != gen {
			c.mu.Unlock()
			return
		}
		if err == nil {
			c.handleLocked(f, gen)
		} else {
			c.detachLocked(fmt.Errorf("read: %w", err), true)
		}
		stop := c.gen != gen || c.finished || c.closeIn
		c.mu.Unlock()
		if stop {
			return
		}
	}
}

// handleLocked acts on one frame. One that breaks the protocol ends the
// session, where an error reading ends only the carrier.
func (c *Conn) handleLocked(f Frame, gen uint64) {
	now := time.Now()
	switch f.Type {
	case FrameData:
		for c.recv.len() >= c.cfg.MaxUnacked && c.gen == gen && !c.finished {
			c.blocked = true
			c.schedule(now.Add(c.cfg.DeadFloor / 2))
			c.waitLocked(time.Time{})
		}
		c.blocked = false
		if c.gen != gen || c.finished {
			return
		}
		now = time.Now()
		c.recv.push(f.Body)
		c.received += uint64(len(f.Body))
		if c.received-c.ackedOut >= uint64(c.cfg.MaxUnacked/8) {
			c.ackNow = true
		} else if c.ackDue.IsZero() {
			c.ackDue = now.Add(ackDelay)
			c.schedule(c.ackDue)
		}
	case FrameAck:
		v := f.Count()
		if v < c.acked || v > c.sent {
			c.failLocked(fmt.Errorf("%w: ack of %d bytes, %d acknowledged and %d sent", ErrProtocol, v, c.acked, c.sent))
			return
		}
		c.send.drop(int(v - c.acked))
		c.acked = v
	case FramePing:
		c.pongDue, c.pongVal = true, f.Count()
	case FramePong:
		if v := f.Count(); v == c.pingOut && v != 0 {
			rtt := now.Sub(c.pingAt)
			if c.srtt == 0 {
				c.srtt = rtt
			} else {
				c.srtt = (7*c.srtt + rtt) / 8
			}
			c.pingOut = 0
		}
	case FrameClose:
		if c.closeOut {
			c.finishLocked(net.ErrClosed, net.ErrClosed) // the answer to ours
			return
		}
		c.closeIn = true
		if reason := string(f.Body); reason != reasonClosed {
			c.readErr = refusal(reason)
		} else {
			c.readErr = io.EOF
		}
	}
	c.lastRecv = now
	c.expect = time.Time{}
	if c.sent > c.acked || c.pingOut != 0 {
		c.awaitLocked(now)
	}
	c.signal()
}

// writeLoop puts on the carrier what is due when no Write does it on the
// way (acks, pongs, pings, what a Write left), until the session ends.
func (c *Conn) writeLoop() {
	defer c.wg.Done()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for !c.finished && (c.writing || !c.writableLocked()) {
			c.waitLocked(time.Time{})
		}
		if c.finished {
			return
		}
		c.flushLocked()
	}
}

// flushLocked writes one batch of what is due on the current carrier,
// unless another goroutine is writing: Write calls it too, so a request
// goes out without waking the writer goroutine first. It holds c.mu on
// entry and return, not while writing.
func (c *Conn) flushLocked() {
	if c.writing || c.finished || !c.writableLocked() {
		return
	}
	c.writing = true
	carrier, gen, answer := c.carrier, c.gen, c.closeIn
	c.batch = c.batchLocked(c.batch[:0])
	c.mu.Unlock()
	_, err := carrier.Write(c.batch)
	c.mu.Lock()
	c.writing = false
	switch {
	case c.gen != gen || c.finished:
	case err != nil:
		c.detachLocked(fmt.Errorf("write: %w", err), true)
	case answer:
		c.finishLocked(io.EOF, ErrPeerClosed)
	}
	if c.writableLocked() {
		c.signal()
	}
}

func (c *Conn) writableLocked() bool {
	if c.carrier == nil {
		return false
	}
	return c.pongDue || c.ackNow || c.pingDue || c.closeIn ||
		c.sent < c.acked+uint64(c.send.len()) || (c.closeOut && !c.closeOutSent)
}

// batchLocked appends what is due to b: pong, ack, ping, data, close.
func (c *Conn) batchLocked(b []byte) []byte {
	now := time.Now()
	if c.pongDue {
		b, _ = AppendCount(b, FramePong, c.pongVal)
		c.pongDue = false
	}
	if c.ackNow || c.received > c.ackedOut {
		b, _ = AppendCount(b, FrameAck, c.received)
		c.ackedOut, c.ackNow, c.ackDue = c.received, false, time.Time{}
	}
	if c.pingDue {
		c.pingSeq++
		c.pingOut, c.pingAt, c.pingDue = c.pingSeq, now, false
		b, _ = AppendCount(b, FramePing, c.pingOut)
		c.awaitLocked(now)
	}
	end := c.acked + uint64(c.send.len())
	for room := maxBatch - len(b) - frameHeaderLen; c.sent < end && room > 0; room = maxBatch - len(b) - frameHeaderLen {
		chunk := c.send.at(int(c.sent-c.acked), min(MaxData, room))
		b, _ = AppendFrame(b, FrameData, chunk)
		c.sent += uint64(len(chunk))
		c.awaitLocked(now)
	}
	// Our close follows the last data; the peer's is answered at once.
	if (c.closeOut && !c.closeOutSent && c.sent == end) || c.closeIn {
		b, _ = AppendFrame(b, FrameClose, []byte(reasonClosed))
		c.closeOutSent = c.closeOut
	}
	return b
}
