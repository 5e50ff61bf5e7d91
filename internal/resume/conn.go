package resume

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Defaults of Config.
const (
	DefaultMaxUnacked    = 4 << 20
	DefaultResumeTimeout = 2 * time.Minute
	DefaultKeepAlive     = 3 * time.Second
	DefaultDeadFloor     = 2 * time.Second
)

const (
	// maxBatch bounds what the writer puts on the carrier in one Write, so
	// that acks and pongs queued meanwhile wait for at most this much. It
	// is a whole number of TLS records, so that a full batch fills its
	// records: 4 maximal frames, 4 headers over 128 KiB, ended in a runt
	// record of 16 bytes, with a syscall of its own.
	maxBatch = 8 * maxRecord
	// maxRecord is the most plaintext a TLS record carries.
	maxRecord = 16 << 10
	// ackDelay lets a receiver fold several data frames into one ack, or
	// ride the ack on data it sends anyway.
	ackDelay = 10 * time.Millisecond
	// closeFlush bounds how long Close waits for the peer to answer its
	// close frame, with what was written before it delivered.
	closeFlush = 2 * time.Second
	// deadRTTs is how many smoothed round trips of silence, at least
	// DeadFloor, declare a path dead while an answer is awaited.
	deadRTTs = 4
)

// Config tunes a Conn. Zero fields take the defaults.
type Config struct {
	// MaxUnacked bounds the bytes a side keeps for resending, and what it
	// holds received but not yet read. Write blocks at the bound until the
	// peer acknowledges, attached or not: a session whose path is down
	// pauses its writers rather than losing or refusing their bytes.
	MaxUnacked int
	// ResumeTimeout is how long a session waits for a new carrier after
	// losing one; then it ends with ErrResumeTimeout.
	ResumeTimeout time.Duration
	// KeepAlive is the silence after which the dialing side pings (the
	// accepting side waits twice as long, so that on a quiet session only
	// one ping and one pong cross per interval).
	KeepAlive time.Duration
	// DeadFloor is the least silence, while an ack or a pong is awaited,
	// that declares the carrier dead; above it the bound is deadRTTs
	// smoothed round trips. A quiet session's dead path is known within
	// KeepAlive+DeadFloor (5 s by default), a busy one's within DeadFloor.
	DeadFloor time.Duration
	Log       logrus.FieldLogger
}

func (c Config) withDefaults() Config {
	if c.MaxUnacked <= 0 {
		c.MaxUnacked = DefaultMaxUnacked
	}
	if c.ResumeTimeout <= 0 {
		c.ResumeTimeout = DefaultResumeTimeout
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.DeadFloor <= 0 {
		c.DeadFloor = DefaultDeadFloor
	}
	if c.Log == nil {
		l := logrus.New()
		l.Out = io.Discard
		c.Log = l
	}
	return c
}

// Errors a session ends with, or a resume is refused with.
var (
	ErrPathDead       = errors.New("resume: path dead")
	ErrResumeTimeout  = errors.New("resume: no new path within the resume deadline")
	ErrUnknownSession = errors.New("resume: unknown session")
	ErrWrongPeer      = errors.New("resume: the session belongs to another peer")
	ErrStaleResume    = errors.New("resume: the peer's byte count does not fit what was sent")
	ErrPeerClosed     = errors.New("resume: session closed by the peer")
	ErrProtocol       = errors.New("resume: protocol violation")
)

// Close reasons on the wire; refusals map back to the sentinels above.
const (
	reasonClosed  = "closed"
	reasonUnknown = "unknown session"
	reasonWrong   = "wrong peer"
	reasonStale   = "stale resume"
)

func refusal(reason string) error {
	switch reason {
	case reasonUnknown:
		return ErrUnknownSession
	case reasonWrong:
		return ErrWrongPeer
	case reasonStale:
		return ErrStaleResume
	}
	return fmt.Errorf("%w: %s", ErrPeerClosed, reason)
}

// Conn is one end of a resumable session: a net.Conn whose bytes ride a
// carrier (an authenticated channel such as TLS) that can be replaced
// without the reader or writer noticing more than a pause. One writer
// goroutine per Conn puts frames on the current carrier (as does a Write
// onto an idle one); a Read with nothing queued takes them off, or, while
// none does, one reader goroutine per carrier. The dialing side makes a session
// with Dial and moves it with Resume; the accepting side with a Table.
type Conn struct {
	cfg      Config
	id       SessionID
	dialer   bool
	resumeMu sync.Mutex // one Resume or accept at a time
	wg       sync.WaitGroup
	timer    *time.Timer

	mu           sync.Mutex
	writing      bool          // a goroutine is writing batch to the carrier
	batch        []byte        // frames on their way, owned by whoever is writing
	readable     event         // for Read: data, an error, a deadline
	space        event         // for Write: room in the send queue, an error, a deadline
	room         event         // for the carrier reader: room in the receive queue, a new carrier
	kick         chan struct{} // for the writer goroutine: something may be due
	done         chan struct{}
	finished     bool
	closed       bool // Close was called
	readErr      error
	writeErr     error
	closeOut     bool // Close asked: send the rest, then a close frame; the peer's answer ends the session
	closeOutSent bool
	closeIn      bool // the peer's close frame was read; answer it, then end

	send     queue  // what the peer has not acknowledged; its front is byte acked
	acked    uint64 // of the stream we send
	sent     uint64 // the next byte of it to put on the carrier
	recv     queue  // received, not yet read
	received uint64
	ackedOut uint64 // the count we last acknowledged
	ackNow   bool
	ackDue   time.Time

	carrier    net.Conn // nil while detached
	in         *inbound // the carrier's read side; nil while detached
	gen        uint64   // bumps at every attach and detach; a stale carrier's writer stands down
	lost       chan struct{}
	lostClosed bool
	local      net.Addr
	remote     net.Addr
	lastRecv   time.Time
	expect     time.Time // since when an ack or pong is awaited; zero when none
	blocked    bool      // the reader waits for the application to read
	pingDue    bool
	pingOut    uint64 // the ping awaiting its pong; 0 when none
	pingAt     time.Time
	pingSeq    uint64
	pongDue    bool
	pongVal    uint64
	srtt       time.Duration
	detachedAt time.Time
	nextTick   time.Time
	rdl, wdl   time.Time

	// The read token's way back to the loop (releaseLocked, handBack).
	handTimer       *time.Timer
	handArmed       bool
	releases        uint64 // of the read token by a holder
	handSeen        uint64 // releases when handTimer was last set
	resumes, losses int
	lastPause       time.Duration
	lossErr         error
}

func newConn(cfg Config, id SessionID, dialer bool) *Conn {
	c := &Conn{cfg: cfg.withDefaults(), id: id, dialer: dialer, kick: make(chan struct{}, 1),
		done: make(chan struct{}), lost: make(chan struct{}), batch: make([]byte, 0, maxBatch+64)}
	c.send.limit, c.recv.limit = c.cfg.MaxUnacked, c.cfg.MaxUnacked+MaxData
	c.cfg.Log = c.cfg.Log.WithField("session", fmt.Sprintf("%x", id[:4]))
	c.timer = time.AfterFunc(time.Hour, c.tick)
	c.timer.Stop()
	c.handTimer = time.AfterFunc(time.Hour, c.handBack)
	c.handTimer.Stop()
	return c
}

// ID names the session.
func (c *Conn) ID() SessionID { return c.id }

// Done is closed when the session has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Lost is closed when the current carrier is lost (it went dead or failed)
// and the session waits for Resume. A carrier replaced by Resume is not
// lost. While detached after a loss, Lost returns a closed channel.
func (c *Conn) Lost() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost
}

// Err is why the session ended, nil while it runs.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.finished {
		return nil
	}
	return c.writeErr
}

// Stats is a snapshot of a session.
type Stats struct {
	Attached   bool
	Resumes    int // carriers taken over after the first
	PathLosses int // carriers lost (dead or failed)
	Written    uint64
	Acked      uint64
	Received   uint64
	Unacked    int
	RTT        time.Duration
	LastPause  time.Duration // from the last loss to the resume after it
	LastLoss   error         // why the last carrier was lost
}

func (c *Conn) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Attached: c.carrier != nil, Resumes: c.resumes, PathLosses: c.losses,
		Written: c.acked + uint64(c.send.len()), Acked: c.acked, Received: c.received,
		Unacked: c.send.len(), RTT: c.srtt, LastPause: c.lastPause, LastLoss: c.lossErr}
}

// MaxPause is how long the Conn may go without a carrier, writes blocked,
// before it ends: a mux over it must not give up on it sooner.
func (c *Conn) MaxPause() time.Duration { return c.cfg.ResumeTimeout }

// event is one kind of change of a Conn's state that goroutines wait for
// under its lock. Each kind wakes only its own waiters, not every
// goroutine of the Conn, and its channel is made only when someone waits.
type event struct {
	ch chan struct{} // nil: no one waits
}

func (e *event) signal() {
	if e.ch != nil {
		close(e.ch)
		e.ch = nil
	}
}

// wait releases mu until the event or deadline.
func (e *event) wait(mu *sync.Mutex, deadline time.Time) {
	if e.ch == nil {
		e.ch = make(chan struct{})
	}
	ch := e.ch
	mu.Unlock()
	if deadline.IsZero() {
		<-ch
	} else {
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
	mu.Lock()
}

// wakeWriter tells the writer goroutine that something may be due. One
// pending wake-up is enough: it looks at the whole state when it runs.
func (c *Conn) wakeWriter() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// signal wakes everyone waiting on the Conn's state, for the changes that
// concern them all: a carrier attached or lost, the end, a deadline.
func (c *Conn) signal() {
	c.readable.signal()
	c.space.signal()
	c.room.signal()
	c.wakeWriter()
}

func passed(deadline time.Time) bool { return !deadline.IsZero() && !time.Now().Before(deadline) }

// Read reads the session's byte stream: exactly what the peer wrote, in
// order, whatever carriers it crossed. With nothing queued it reads the
// carrier itself, holding its read token (carrier.go).
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var held *inbound // whose token this Read holds
	defer func() {
		if held != nil {
			c.releaseLocked(held)
		}
	}()
	for {
		if c.closed {
			return 0, net.ErrClosed
		}
		if c.recv.len() > 0 {
			if len(p) == 0 {
				return 0, nil
			}
			full := c.recv.len() >= c.cfg.MaxUnacked
			n := c.recv.pop(p)
			if full {
				c.room.signal() // the carrier reader may go on
			}
			return n, nil
		}
		if c.readErr != nil {
			return 0, c.readErr
		}
		if passed(c.rdl) {
			return 0, os.ErrDeadlineExceeded
		}
		switch in := c.in; {
		case in == nil:
		case in == held || in.holder == heldByNone:
			held = in
			if n := c.takeFrameLocked(in, heldByRead, c.rdl, p); n > 0 {
				return n, nil
			}
			continue
		case in.holder == heldByLoop:
			in.want = true // the loop hands the token over
			c.interruptLocked(in)
		}
		c.readable.wait(&c.mu, c.rdl)
	}
}

// Write queues p for the peer. It blocks while MaxUnacked bytes await the
// peer's acknowledgement, including while no carrier is attached.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for n < len(p) {
		switch {
		case c.closed || c.closeOut:
			return n, net.ErrClosed
		case c.writeErr != nil:
			return n, c.writeErr
		case c.closeIn:
			return n, ErrPeerClosed
		}
		space := c.cfg.MaxUnacked - c.send.len()
		if space <= 0 {
			if passed(c.wdl) {
				return n, os.ErrDeadlineExceeded
			}
			c.space.wait(&c.mu, c.wdl)
			continue
		}
		k := min(space, len(p)-n)
		// A write onto an idle carrier goes out from here, sparing a
		// request the writer goroutine's wake-up; behind others it is
		// left to the writer, which keeps a bulk sender's copying and
		// the carrier's encryption on two cores.
		idle := c.sent == c.acked+uint64(c.send.len())
		c.send.push(p[n : n+k])
		n += k
		if idle {
			c.flushLocked(true)
		} else {
			c.wakeWriter()
		}
	}
	return n, nil
}

// Close ends the session: what was written is put on the carrier, then a
// close frame, and the peer's answer (or closeFlush) ends it on both sides.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	if !c.finished && c.carrier != nil && !c.closeIn {
		c.closeOut = true
		// The peer's answer is read by the loop: a Read returns now.
		switch in := c.in; in.holder {
		case heldByRead:
			c.interruptLocked(in)
		case heldByNone:
			c.handToLoopLocked(in)
		}
		c.signal()
		done := c.done
		c.mu.Unlock()
		t := time.NewTimer(closeFlush)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
		c.mu.Lock()
	}
	c.finishLocked(net.ErrClosed, net.ErrClosed)
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// Trim lets go of the resend and receive buffers while they are empty: a
// burst grows them to MaxUnacked and they keep that size for reuse, which
// an idle session need not hold.
func (c *Conn) Trim() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.send.trim()
	c.recv.trim()
}

// Abandon ends the session at once with err, sending nothing: for a peer
// known to be gone, which no carrier will reach and nothing sent would
// reach. Reads and writes fail with err, so a mux over the Conn resets its
// streams rather than ending them as if complete.
func (c *Conn) Abandon(err error) {
	c.mu.Lock()
	c.failLocked(err)
	c.mu.Unlock()
}

// finishLocked ends the session. Errors already set stay: a peer's close
// read before keeps Read's io.EOF.
func (c *Conn) finishLocked(rerr, werr error) {
	if c.finished {
		return
	}
	c.finished = true
	if c.readErr == nil {
		c.readErr = rerr
	}
	if c.writeErr == nil {
		c.writeErr = werr
	}
	if c.carrier != nil {
		c.closeCarrierLocked()
	}
	c.gen++
	c.timer.Stop()
	c.handTimer.Stop()
	c.send = queue{limit: c.send.limit}
	close(c.done)
	c.signal()
	if werr != net.ErrClosed {
		c.cfg.Log.WithError(werr).Debug("session ended")
	}
}

func (c *Conn) failLocked(err error) { c.finishLocked(err, err) }

// attachLocked makes carrier the session's path and starts its reader.
func (c *Conn) attachLocked(carrier net.Conn) {
	now := time.Now()
	c.carrier = carrier
	c.gen++
	c.local, c.remote = carrier.LocalAddr(), carrier.RemoteAddr()
	c.lastRecv, c.expect, c.blocked = now, time.Time{}, false
	c.pingDue, c.pingOut, c.pongDue = false, 0, false
	if c.lostClosed {
		c.lost, c.lostClosed = make(chan struct{}), false
	}
	if !c.detachedAt.IsZero() {
		c.lastPause, c.detachedAt = now.Sub(c.detachedAt), time.Time{}
	}
	c.nextTick = time.Time{}
	c.schedule(now.Add(c.idle()))
	// The token lies free for a Read; the loop takes it if none comes.
	c.in = newInbound(carrier)
	c.handArmed, c.handSeen = true, c.releases
	c.handTimer.Reset(handGrace)
	c.wg.Add(1)
	go c.readLoop(c.in)
	c.signal()
}

// detachLocked drops the carrier. A lost one (dead, failed) is announced
// on Lost; one that makes way for a resume is not.
func (c *Conn) detachLocked(err error, lost bool) {
	if c.carrier == nil {
		return
	}
	c.closeCarrierLocked()
	c.gen++
	c.detachedAt = time.Now()
	if lost {
		c.losses++
		c.lossErr = err
		c.markLostLocked()
		c.cfg.Log.WithError(err).WithField("unacked", c.send.len()).Debug("carrier lost")
	}
	c.nextTick = time.Time{}
	c.schedule(c.detachedAt.Add(c.cfg.ResumeTimeout))
	c.signal()
}

// closeCarrierLocked drops the carrier and closes it in the background: a
// TLS carrier's Close writes a close_notify, which on a dead path with a
// full send buffer blocks for seconds, and nothing may wait for that.
func (c *Conn) closeCarrierLocked() {
	carrier := c.carrier
	c.carrier = nil
	c.dropInLocked()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		carrier.Close()
	}()
}

func (c *Conn) markLostLocked() {
	if c.carrier == nil && !c.lostClosed && !c.finished {
		close(c.lost)
		c.lostClosed = true
	}
}

// resumeAtLocked moves the send side to peerReceived, what the peer says
// it has: everything before it is acknowledged, everything after is sent
// again on the new carrier.
func (c *Conn) resumeAtLocked(peerReceived uint64) error {
	end := c.acked + uint64(c.send.len())
	if peerReceived < c.acked || peerReceived > end {
		return fmt.Errorf("%w: the peer has %d bytes, %d were acknowledged and %d written", ErrStaleResume, peerReceived, c.acked, end)
	}
	c.send.drop(int(peerReceived - c.acked))
	c.acked, c.sent = peerReceived, peerReceived
	c.ackedOut = c.received // our hello told the peer
	c.ackNow, c.ackDue = false, time.Time{}
	return nil
}

func (c *Conn) idle() time.Duration {
	if c.dialer {
		return c.cfg.KeepAlive
	}
	return 2 * c.cfg.KeepAlive
}

func (c *Conn) deadAfter() time.Duration { return max(c.cfg.DeadFloor, deadRTTs*c.srtt) }

// schedule makes tick run at t, unless it runs before then anyway.
func (c *Conn) schedule(t time.Time) {
	if t.IsZero() || c.finished || (!c.nextTick.IsZero() && !t.Before(c.nextTick)) {
		return
	}
	c.nextTick = t
	c.timer.Reset(time.Until(t))
}

// tick keeps the session's clocks: keepalive pings, delayed acks, the dead
// carrier, the resume deadline. It reschedules itself for the next one.
func (c *Conn) tick() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextTick = time.Time{}
	if c.finished {
		return
	}
	now := time.Now()
	if c.carrier == nil {
		if c.detachedAt.IsZero() {
			return
		}
		if dl := c.detachedAt.Add(c.cfg.ResumeTimeout); now.Before(dl) {
			c.schedule(dl)
			return
		}
		c.failLocked(fmt.Errorf("%w: no path for %v, %d written bytes never acknowledged", ErrResumeTimeout, c.cfg.ResumeTimeout, c.send.len()))
		return
	}
	var next time.Time
	soonest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if c.blocked {
		// The application does not read, so neither do we: the peer's
		// pongs and acks wait unread. Our silence must not look like a
		// dead path to the peer, nor its to us: repeat our ack instead.
		c.lastRecv, c.expect, c.ackNow = now, time.Time{}, true
		c.wakeWriter()
		soonest(now.Add(c.cfg.DeadFloor / 2))
	}
	if !c.expect.IsZero() {
		dl := c.expect.Add(c.deadAfter())
		if !now.Before(dl) {
			c.detachLocked(fmt.Errorf("%w: nothing heard for %v while an answer was due", ErrPathDead, now.Sub(c.expect).Round(time.Millisecond)), true)
			return
		}
		soonest(dl)
	}
	if c.pingOut == 0 && !c.pingDue {
		if dl := c.lastRecv.Add(c.idle()); now.Before(dl) {
			soonest(dl)
		} else {
			c.pingDue = true
			c.wakeWriter()
		}
	}
	if !c.ackDue.IsZero() {
		if now.Before(c.ackDue) {
			soonest(c.ackDue)
		} else {
			c.ackNow, c.ackDue = true, time.Time{}
			c.wakeWriter()
		}
	}
	c.schedule(next)
}

// awaitLocked notes that an answer (ack or pong) is now due.
func (c *Conn) awaitLocked(now time.Time) {
	if c.expect.IsZero() {
		c.expect = now
		c.schedule(now.Add(c.deadAfter()))
	}
}

// LocalAddr and RemoteAddr are the current carrier's, or the last one's.
func (c *Conn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.local
}

func (c *Conn) RemoteAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.remote
}

func (c *Conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wdl = t
	c.readDeadlineLocked(t)
	return nil
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadlineLocked(t)
	return nil
}

// readDeadlineLocked sets the read deadline, also on the carrier a Read
// is reading: it would not see a new deadline otherwise.
func (c *Conn) readDeadlineLocked(t time.Time) {
	c.rdl = t
	if in := c.in; in != nil && in.holder == heldByRead {
		c.carrierDeadlineLocked(in, t)
	}
	c.signal()
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wdl = t
	c.signal()
	return nil
}
