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
		t, n, err := readHeader(carrier)
		body, lent, epoch := buf[:n], false, uint64(0)
		if err == nil && t == FrameData {
			c.mu.Lock()
			ok := c.roomLocked(gen)
			if ok {
				// The body goes straight into the receive queue: one
				// copy less than through buf, where it fits unwrapped.
				if space, e := c.recv.space(n); space != nil {
					body, lent, epoch = space, true, e
				}
			}
			c.mu.Unlock()
			if !ok {
				return
			}
		}
		if err == nil {
			err = readBody(carrier, body)
		}
		c.mu.Lock()
		if c.gen != gen {
			if lent { // only its own: the new carrier's reader may hold one
				c.recv.release(epoch)
			}
			c.mu.Unlock()
			return
		}
		if err == nil {
			switch {
			case lent:
				c.recv.commit(epoch, n)
			case t == FrameData:
				c.recv.push(body)
			}
			c.handleLocked(Frame{Type: t, Body: body})
		} else {
			if lent {
				c.recv.release(epoch)
			}
			c.detachLocked(fmt.Errorf("read: %w", err), true)
		}
		stop := c.gen != gen || c.finished || c.closeIn
		c.mu.Unlock()
		if stop {
			return
		}
	}
}

// roomLocked waits while the receive queue is full, and reports whether
// the carrier of gen is still the session's.
func (c *Conn) roomLocked(gen uint64) bool {
	for c.recv.len() >= c.cfg.MaxUnacked && c.gen == gen && !c.finished {
		c.blocked = true
		c.schedule(time.Now().Add(c.cfg.DeadFloor / 2))
		c.room.wait(&c.mu, time.Time{})
	}
	c.blocked = false
	return c.gen == gen && !c.finished
}

// handleLocked acts on one frame; a data frame's body is in the receive
// queue already. One that breaks the protocol ends the session, where an
// error reading ends only the carrier.
func (c *Conn) handleLocked(f Frame) {
	now := time.Now()
	switch f.Type {
	case FrameData:
		c.received += uint64(len(f.Body))
		c.readable.signal()
		if c.received-c.ackedOut >= uint64(c.cfg.MaxUnacked/8) {
			c.ackNow = true
			c.wakeWriter()
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
		if v > c.acked {
			c.send.drop(int(v - c.acked))
			c.acked = v
			c.space.signal()
		}
	case FramePing:
		c.pongDue, c.pongVal = true, f.Count()
		c.wakeWriter()
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
		c.signal()
	}
	c.lastRecv = now
	c.expect = time.Time{}
	if c.sent > c.acked || c.pingOut != 0 {
		c.awaitLocked(now)
	}
}

// writeLoop puts on the carrier what is due when no Write does it on the
// way (acks, pongs, pings, what a Write left), until the session ends.
func (c *Conn) writeLoop() {
	defer c.wg.Done()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for !c.finished && (c.writing || !c.writableLocked()) {
			c.mu.Unlock()
			<-c.kick
			c.mu.Lock()
		}
		if c.finished {
			return
		}
		c.flushLocked(false)
	}
}

// flushLocked writes one batch of what is due on the current carrier,
// unless another goroutine is writing: Write calls it too, so a request
// goes out without waking the writer goroutine first. It holds c.mu on
// entry and return, not while writing. fromWrite: see batchLocked.
func (c *Conn) flushLocked(fromWrite bool) {
	if c.writing || c.finished || !c.writableLocked() {
		return
	}
	c.writing = true
	carrier, gen, answer := c.carrier, c.gen, c.closeIn
	c.batch = c.batchLocked(c.batch[:0], fromWrite)
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
		c.wakeWriter()
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
//
// Our frame headers must not cost a record that TLS alone would not have
// written: 64 KiB of data fill 4 records, but with its headers a batch of
// it is 8 bytes longer, and a 5th record, with a syscall and a segment,
// would carry just those. So a batch for Write (trimRunt), whose caller
// in a bulk transfer is about to write more, leaves such a runt's bytes
// queued: the writer goroutine, woken as this batch is out, sends them
// at once, with what was written meanwhile. A batch of the writer's own
// is sent whole: nothing would follow it to take the runt along.
func (c *Conn) batchLocked(b []byte, trimRunt bool) []byte {
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
	last, data := -1, 0 // where the last data frame begins; data bytes in b
	for room := maxBatch - len(b) - frameHeaderLen; c.sent < end && room > 0; room = maxBatch - len(b) - frameHeaderLen {
		chunk := c.send.at(int(c.sent-c.acked), min(MaxData, room))
		last = len(b)
		b, _ = AppendFrame(b, FrameData, chunk)
		c.sent += uint64(len(chunk))
		data += len(chunk)
		c.awaitLocked(now)
	}
	if runt := len(b) % maxRecord; trimRunt && last >= 0 && len(b) > maxRecord && runt <= len(b)-data {
		if body := len(b) - last - frameHeaderLen; body > runt {
			b = b[:len(b)-runt]
			body -= runt
			b[last+1], b[last+2], b[last+3] = byte(body>>16), byte(body>>8), byte(body)
			c.sent -= uint64(runt)
		}
	}
	// Our close follows the last data; the peer's is answered at once.
	if (c.closeOut && !c.closeOutSent && c.sent == end) || c.closeIn {
		b, _ = AppendFrame(b, FrameClose, []byte(reasonClosed))
		c.closeOutSent = c.closeOut
	}
	return b
}
