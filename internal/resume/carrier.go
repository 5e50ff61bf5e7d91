package resume

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// The carrier's read side is a token held by one goroutine at a time,
// which takes frames off it and handles them. A Read that finds nothing
// queued takes the token and reads the carrier itself: the goroutine the
// netpoller wakes for a frame is then the one waiting for it, as over a
// bare TLS conn, where a reader goroutine that wakes the Read costs a
// cross-thread wake-up (a futex) per message, half again a loopback
// round trip. While no Read wants it the carrier's reader goroutine holds
// it, so that acks, pings, the peer's close and a failing carrier are seen
// while the application does not read. It is handed over:
//   - Read to loop: when no Read has held it for handGrace (handBack), and
//     at once when Close needs the peer's answer read;
//   - loop to Read: on request, the loop's blocked read cut short by a
//     past read deadline on the carrier. crypto/tls survives that: a
//     timeout is not sticky and a partly read record stays buffered, and a
//     frame partly read stays in the inbound for the next holder.

// holder says who holds a carrier's read token.
type holder uint8

const (
	heldByNone holder = iota
	heldByLoop
	heldByRead
)

// handGrace is how long the read token may lie unused, no Read holding it,
// before the carrier's reader goroutine takes it: long against the gap
// between an application's Reads, so a reading application never has to
// win it back, short against DeadFloor and ackDelay, so what arrives
// meanwhile is acted on nearly as soon.
const handGrace = 2 * time.Millisecond

// inbound is the read side of one carrier. The frame being read is kept
// here, not on a holder's stack, so that the next holder goes on with a
// frame a deadline cut.
type inbound struct {
	carrier  net.Conn
	holder   holder
	want     bool      // a Read waits for the token the loop holds
	dl       time.Time // the read deadline last set on the carrier
	loopWake event     // for the loop: the token is its, or the carrier is gone

	hdr   [frameHeaderLen]byte
	hn    int    // header bytes in hdr
	body  []byte // the body being read, once the header is whole
	bn    int    // body bytes read
	lent  bool   // body is space lent by the receive queue, in epoch
	epoch uint64
	into  bool   // body is the buffer of the Read that holds the token
	buf   []byte // for bodies that do not go straight into the receive queue
}

func newInbound(carrier net.Conn) *inbound {
	return &inbound{carrier: carrier, buf: make([]byte, MaxData)}
}

// readLoop holds the read token of one carrier whenever no Read wants it,
// until the carrier fails or is replaced.
func (c *Conn) readLoop(in *inbound) {
	defer c.wg.Done()
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.in == in && !c.closeIn {
		switch {
		case in.holder != heldByLoop:
			in.loopWake.wait(&c.mu, time.Time{})
		case in.want:
			in.want = false
			c.releaseLocked(in)
		default:
			c.takeFrameLocked(in, heldByLoop, time.Time{}, nil)
		}
	}
}

// takeFrameLocked reads one frame off in's carrier as who, under the
// carrier read deadline dl, and acts on it. A deadline leaves the frame
// partly read for whoever reads next; any other error ends the carrier.
// A data frame that fits the buffer of the Read holding the token
// (the receive queue is empty then), goes there rather than through the
// queue, one copy less: n is its length.
func (c *Conn) takeFrameLocked(in *inbound, who holder, dl time.Time, into []byte) (n int) {
	in.holder = who
	c.carrierDeadlineLocked(in, dl)
	f, err := c.readFrameLocked(in, into)
	if in.into && err != nil {
		c.keepPartLocked(in)
	}
	if err != nil && c.in == in && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.detachLocked(fmt.Errorf("read: %w", err), true)
	}
	if c.in != in {
		// Only its own lend: the new carrier's holder may hold one.
		if in.lent {
			c.recv.release(in.epoch)
			in.lent = false
		}
		return 0
	}
	if err != nil {
		return 0
	}
	c.handleLocked(f)
	if f.Type == FrameData && in.into {
		in.into = false
		return len(f.Body)
	}
	return 0
}

// keepPartLocked moves the part of a frame's body read into a Read's
// buffer into in, for the next holder to go on with: the Read returns
// without it.
func (c *Conn) keepPartLocked(in *inbound) {
	part := in.body[:in.bn]
	in.into, in.body = false, in.buf[:len(in.body)]
	if c.in == in {
		if space, e := c.recv.space(len(in.body)); space != nil {
			in.body, in.lent, in.epoch = space, true, e
		}
	}
	copy(in.body, part)
}

// errStale: the carrier was dropped while its frame was being read.
var errStale = errors.New("resume: carrier replaced")

// readFrameLocked reads the rest of in's current frame. It holds c.mu on
// entry and return, not while reading. A data frame's body is committed
// to the receive queue before it returns; another's aliases in.buf.
func (c *Conn) readFrameLocked(in *inbound, into []byte) (Frame, error) {
	if in.hn < frameHeaderLen {
		c.mu.Unlock()
		n, err := io.ReadFull(in.carrier, in.hdr[in.hn:])
		c.mu.Lock()
		in.hn += n
		if err != nil {
			return Frame{}, err // io.EOF between frames: the carrier ended cleanly
		}
	}
	if c.in != in {
		return Frame{}, errStale
	}
	t, n := FrameType(in.hdr[0]), int(in.hdr[1])<<16|int(in.hdr[2])<<8|int(in.hdr[3])
	if in.body == nil {
		if err := checkLen(t, n); err != nil {
			return Frame{}, err
		}
		in.body = in.buf[:n]
		if t == FrameData && n <= len(into) && c.recv.len() == 0 {
			in.body, in.into = into[:n], true
		} else if t == FrameData {
			if !c.roomLocked(in) {
				in.body = nil
				return Frame{}, errStale
			}
			// The body goes straight into the receive queue: one copy
			// less than through buf, where it fits unwrapped.
			if space, e := c.recv.space(n); space != nil {
				in.body, in.lent, in.epoch = space, true, e
			}
		}
	}
	if in.bn < len(in.body) {
		c.mu.Unlock()
		k, err := io.ReadFull(in.carrier, in.body[in.bn:])
		c.mu.Lock()
		in.bn += k
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the header promised a body
			}
			return Frame{}, fmt.Errorf("resume: frame body: %w", err)
		}
	}
	if c.in != in {
		return Frame{}, errStale
	}
	f := Frame{Type: t, Body: in.body}
	switch {
	case in.into:
	case in.lent:
		c.recv.commit(in.epoch, n)
	case t == FrameData:
		c.recv.push(in.body)
	}
	in.hn, in.body, in.bn, in.lent = 0, nil, 0, false
	return f, nil
}

// releaseLocked gives up the read token of in, which the caller holds:
// another Read may take it; failing that, the loop takes it after
// handGrace, or at once when our close awaits its answer.
func (c *Conn) releaseLocked(in *inbound) {
	if c.in != in || in.holder == heldByNone {
		return
	}
	in.holder = heldByNone
	c.readable.signal()
	if c.closeOut {
		c.handToLoopLocked(in)
		return
	}
	c.releases++
	if !c.handArmed {
		c.handArmed, c.handSeen = true, c.releases
		c.handTimer.Reset(handGrace)
	}
}

// handBack gives the loop the read token if it lay unused since the last
// look. One timer serves every release: it is armed only when not already,
// so a Read per round trip does not cost a timer each.
func (c *Conn) handBack() {
	c.mu.Lock()
	defer c.mu.Unlock()
	in := c.in
	switch {
	case in == nil || in.holder != heldByNone:
		c.handArmed = false // a later release arms it again
	case c.releases != c.handSeen:
		c.handSeen = c.releases
		c.handTimer.Reset(handGrace)
	default:
		c.handArmed = false
		c.handToLoopLocked(in)
	}
}

func (c *Conn) handToLoopLocked(in *inbound) {
	in.holder = heldByLoop
	in.loopWake.signal()
}

// interruptLocked cuts short a read of in's carrier under way, or the
// next one: its holder sees a timeout.
func (c *Conn) interruptLocked(in *inbound) {
	c.carrierDeadlineLocked(in, time.Unix(1, 0))
}

// carrierDeadlineLocked sets the carrier's read deadline, when it changes:
// the steady Read, with none, costs no call.
func (c *Conn) carrierDeadlineLocked(in *inbound, t time.Time) {
	if !in.dl.Equal(t) {
		in.dl = t
		in.carrier.SetReadDeadline(t)
	}
}

// dropInLocked lets go of the read side of the carrier being dropped. A
// holder, in the midst of a read, is cut short and cleans up after itself.
func (c *Conn) dropInLocked() {
	in := c.in
	if in == nil {
		return
	}
	c.in = nil
	if in.holder == heldByNone {
		if in.lent {
			c.recv.release(in.epoch)
			in.lent = false
		}
	} else {
		in.carrier.SetReadDeadline(time.Unix(1, 0)) // a TLS Close may take seconds to end the read
	}
	in.loopWake.signal()
}

// roomLocked waits while the receive queue is full, and reports whether
// in's carrier is still the session's.
func (c *Conn) roomLocked(in *inbound) bool {
	for c.recv.len() >= c.cfg.MaxUnacked && c.in == in {
		c.blocked = true
		c.schedule(time.Now().Add(c.cfg.DeadFloor / 2))
		c.room.wait(&c.mu, time.Time{})
	}
	c.blocked = false
	return c.in == in
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
