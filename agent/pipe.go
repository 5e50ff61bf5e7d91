package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/peerport/peerport/mux"
)

// Buffers are taken from these pools only while bytes move, so an idle
// forwarded connection holds none. Sizes are whole frames (mux.MaxPayload):
// a write of a full buffer to a stream makes only full frames.
var (
	// toPeerBufs reads the local connection: several frames per read
	// syscall when the sender is ahead of us.
	toPeerBufs = bufPool(4 * mux.MaxPayload)
	// toLocalBufs takes what one stream Read returns, at most one frame.
	toLocalBufs = bufPool(mux.MaxPayload)
)

func bufPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, size); return &b }}
}

// parkAfter is how long either side of a connection stays quiet before
// its goroutine gives way (quietWatch.after shortens it in tests).
const parkAfter = time.Second

var (
	// errQuiet ends a copy whose source stayed quiet.
	errQuiet = errors.New("quiet")
	// errParkerClosed: the agent is stopping.
	errParkerClosed = errors.New("agent stopping")
	// errCut: the pipe failed already (the other direction saw why).
	errCut = errors.New("connection cut")
)

// A pipe copies both ways between a stream and a local TCP connection until
// both directions ended, and counts bytes as they pass into each set of
// counters; "in" is what came from the peer.
//
// How a connection ends is carried across as it happened. A graceful end
// of one direction (EOF: the application's FIN, or the peer's half-close)
// is a half-close on the other side, and the other direction goes on. Any
// other end is abnormal and ends both directions on both sides at once:
// a read or write error on the local connection (ECONNRESET, say) resets
// the stream, so the peer resets its local connection too; a reset stream,
// a dead session or a stopping agent resets the local connection (SO_LINGER
// 0, an RST), so an application never takes a cut transfer for a complete
// one. fail does that once, whichever direction or event comes first, and
// ended counts each direction's end once, so the counters cannot drift.
//
// An idle forwarded connection costs as little as we can make it: no
// buffer in either direction, and no goroutine. Once quiet for parkAfter,
// the local side waits in the agent's parker (one epoll set for all of
// them, on Linux) and the stream in its session (mux Stream.Park); each
// gets a fresh goroutine, with a small stack, when it has something to
// read.
type pipe struct {
	a       *Agent
	st      *mux.Stream
	c       net.Conn
	rc      syscall.RawConn // nil when c has no descriptor to park
	cs      []*counters
	running atomic.Int32 // directions not ended
	failed  sync.Once
	cut     atomic.Bool // fail ran
	// writing is held by toLocal while it writes to c; see settle.
	writing chan struct{}
	// unwatch stops the watch on the session's death, which nothing else
	// reports while the stream is half-closed and the local side idle.
	unwatch func() bool
	// rec is its line in status's recent connections; nil: none.
	rec *connRecord

	mu           sync.Mutex
	parked       bool   // local -> peer waits in the parker
	parkID       uint64 // its registration there
	attached     bool   // c was added to the parker's set
	streamParked bool   // peer -> local waits in the session

	// reading: toLocal read since quietWatch last looked.
	reading atomic.Bool
}

// pipe starts forwarding between st and c and returns.
func (a *Agent) pipe(st *mux.Stream, c net.Conn, rec *connRecord, cs ...*counters) {
	if rec != nil {
		cs = append(cs, &rec.stats)
	}
	p := &pipe{a: a, st: st, c: c, rec: rec, cs: cs, writing: make(chan struct{}, 1)}
	if sc, ok := c.(syscall.Conn); ok {
		p.rc, _ = sc.SyscallConn()
	}
	for _, k := range cs {
		k.streams.Add(1)
		k.total.Add(1)
	}
	// Until the pipe ends cleanly, closing c resets it: when this agent is
	// killed the kernel closes c, and with the default linger that is a FIN,
	// which the application behind c would take for a complete transfer.
	// (A FIN it sends by CloseWrite is not affected: linger acts on close.)
	p.linger(0)
	p.running.Store(2)
	p.unwatch = st.OnSessionEnd(func() { p.fail("peer session ended", nil) })
	a.spawn(p.toPeer)
	a.spawn(p.toLocal)
}

// toLocal copies peer -> local, waiting on the stream without a buffer.
// The peer's FIN becomes the local connection's; anything else fails the
// pipe. Once the stream is quiet for parkAfter (quietWatch), the wait is
// handed to the session (mux Stream.Park), which starts toLocal anew when
// the peer sends more: an idle connection then has no goroutine at all.
func (p *pipe) toLocal() {
	p.a.quiet.add(p)
	defer p.a.quiet.remove(p)
	in := copier{cs: p.cs, in: true, bufs: toLocalBufs, wait: func() error {
		err := p.st.WaitRead()
		switch {
		case err == mux.ErrQuiet:
			return errQuiet
		case err == nil:
			p.reading.Store(true)
		}
		return err
	}}
	err := in.copy(localWriter{p}, p.st)
	for err == errQuiet {
		if p.parkStream() {
			return
		}
		err = in.copy(localWriter{p}, p.st)
	}
	defer p.ended()
	if err != nil {
		p.fail("peer -> local", err)
		return
	}
	if tc, ok := p.c.(interface{ CloseWrite() error }); ok {
		if err := tc.CloseWrite(); err != nil {
			p.fail("half-close of the local connection", err) // gone already
		}
	}
}

// parkStream parks the quiet stream; false when it has something to read
// already, and toLocal reads on.
func (p *pipe) parkStream() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut.Load() {
		return false // the read fails at once, and toLocal ends
	}
	p.streamParked = p.st.Park(p.unparkStream)
	return p.streamParked
}

// unparkStream is the session's call when the parked stream has more (or
// ended): toLocal runs again.
func (p *pipe) unparkStream() { p.wake(&p.streamParked, p.toLocal) }

// wake runs a parked direction again, in a goroutine of its own, unless
// reset ended it meanwhile (and cleared *parked).
func (p *pipe) wake(parked *bool, direction func()) {
	p.mu.Lock()
	ok := *parked
	*parked = false
	p.mu.Unlock()
	if ok {
		p.a.spawn(direction)
	}
}

// toPeer copies local -> peer until the local side ends, or parks it once
// quiet; the parker starts toPeer again when there is more. It waits for
// readability without a buffer even while active: blocking in Read with a
// (small) buffer instead saved about 10 µs of a 220 µs round trip on
// loopback but left 3-4 KiB more RSS per idle connection (bench memory).
func (p *pipe) toPeer() {
	out := copier{cs: p.cs, bufs: toPeerBufs}
	canPark := p.rc != nil && p.a.parker.available()
	if p.rc != nil {
		out.wait = waitReadable(p.rc)
	}
	if canPark && out.wait != nil {
		wait := out.wait
		out.wait = func() error {
			p.c.SetReadDeadline(time.Now().Add(p.a.quiet.period()))
			err := wait()
			p.c.SetReadDeadline(time.Time{})
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return errQuiet
			}
			return err
		}
	}
	err := out.copy(p.st, p.c)
	if err == errQuiet {
		switch perr := p.park(); {
		case perr == nil:
			return
		case errors.Is(perr, errParkerClosed):
			err = perr // the agent stops: so does this connection
		default: // wait here, as long as it takes
			p.a.log.WithError(perr).Debug("cannot park an idle connection; it keeps its goroutine")
			out.wait = waitReadable(p.rc)
			err = out.copy(p.st, p.c)
		}
	}
	// The local EOF is a FIN to the peer; the stream reads on until the
	// peer's own end (toLocal), so no reset timer is armed.
	if err == nil && p.settle() {
		err = errCut
	}
	if err == nil {
		if err = p.st.CloseWrite(); err != nil {
			err = fmt.Errorf("half-close of the stream: %w", err)
		}
	}
	if err != nil {
		p.fail("local -> peer", err)
	}
	p.ended()
}

// localWriter is toLocal's writes to the local connection: a write that
// fails fails the pipe before it lets settle go on.
type localWriter struct{ p *pipe }

func (w localWriter) Write(b []byte) (int, error) {
	w.p.writing <- struct{}{}
	defer func() { <-w.p.writing }()
	n, err := w.p.c.Write(b)
	if err != nil {
		w.p.fail("peer -> local", err)
	}
	return n, err
}

// settleWait bounds settle's wait (a write blocked on a slow reader is no
// reset being reported).
const settleWait = 500 * time.Millisecond

// settle tells, after a local EOF, whether that EOF was a reset in fact.
// The kernel reports a reset once, to whichever call on the socket comes
// first; when that was toLocal's write, the read sees a plain EOF, and the
// FIN it would send could reach the peer before the reset. So the EOF
// waits for a write in flight to finish (and fail the pipe, if it does).
// A reset after the application's FIN (it closed, then data reached it)
// comes after the FIN, as it does on the wire: FIN, then RST.
func (p *pipe) settle() (cut bool) {
	select {
	case p.writing <- struct{}{}:
		<-p.writing
	case <-time.After(settleWait):
	}
	return p.cut.Load()
}

// park hands the quiet local side to the parker.
func (p *pipe) park() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, err := p.a.parker.park(p.rc, p, p.attached)
	if err != nil {
		return err
	}
	p.parked, p.parkID, p.attached = true, id, true
	return nil
}

// unpark is the parker's call when the local side has something to read
// (data, EOF or an error): toPeer runs again.
func (p *pipe) unpark() { p.wake(&p.parked, p.toPeer) }

// abort ends the pipe as the agent stops: the connection is cut, and both
// ends learn it was.
func (p *pipe) abort() { p.fail("agent stopping", nil) }

// fail ends the pipe abnormally, once: the stream is reset (the peer
// resets its local connection on reading that) and so is the local
// connection, which wakes whichever direction waits on either; a parked
// local -> peer direction has no goroutine to wake, so it ends here. A
// second caller (the other direction, woken by the same death) waits for
// the first to finish, so that its end cannot close the connection with a
// FIN before the RST is set up.
func (p *pipe) fail(why string, err error) {
	p.failed.Do(func() {
		p.cut.Store(true)
		p.rec.failed(why, err)
		p.a.log.WithError(err).WithFields(logrus.Fields{"where": why, "stream": p.st.StreamID()}).Debug("forwarded connection cut: resetting both ends")
		p.reset()
	})
}

func (p *pipe) reset() {
	p.linger(0) // first: whatever closes c from now on sends an RST (set already, unless ended ran)
	p.st.Reset()
	p.c.Close()
	p.mu.Lock()
	wasParked := p.parked
	p.parked = false
	// A wake that ran already finds streamParked and starts toLocal,
	// which ends the direction; else it ends here.
	streamParked := p.streamParked && p.st.Unpark()
	p.streamParked = p.streamParked && !streamParked
	if wasParked {
		p.a.parker.cancel(p.parkID)
	}
	p.mu.Unlock()
	// A parked direction has no goroutine to see the end: it ends here.
	if wasParked {
		p.ended()
	}
	if streamParked {
		p.ended()
	}
}

// linger sets SO_LINGER on a TCP local connection: 0 makes close a reset,
// -1 is the default.
func (p *pipe) linger(sec int) {
	if l, ok := p.c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(sec)
	}
}

// ended is called once per direction; the last one closes up.
func (p *pipe) ended() {
	if p.running.Add(-1) > 0 {
		return
	}
	p.unwatch()
	if !p.cut.Load() {
		// Both FINs have passed: the default linger lets the kernel deliver
		// what is still unacknowledged (linger 0 would drop it).
		p.linger(-1)
	}
	p.c.Close()
	for _, k := range p.cs {
		k.streams.Add(-1)
	}
	if p.a.stats.streams.Load() == 0 {
		p.a.release.idle()
	}
	p.rec.end()
}

// A copier moves one direction of a pipe and keeps the counters current
// during long transfers, so status shows bytes moving rather than only at
// the end.
type copier struct {
	cs   []*counters
	in   bool
	bufs *sync.Pool
	// wait blocks until src has something to read (or returns the error a
	// read would, or errQuiet), taking nothing; nil when src cannot wait
	// that way, and then a buffer is held across the blocking read.
	wait func() error
}

func (k *copier) copy(dst io.Writer, src io.Reader) error {
	for {
		if k.wait != nil {
			if err := k.wait(); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
		}
		bp := k.bufs.Get().(*[]byte)
		n, rerr := src.Read(*bp)
		var werr error
		if n > 0 {
			_, werr = dst.Write((*bp)[:n])
			k.count(n)
		}
		k.bufs.Put(bp)
		switch {
		case werr != nil:
			return werr
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			return rerr
		}
	}
}

func (k *copier) count(n int) {
	for _, c := range k.cs {
		if k.in {
			c.bytesIn.Add(int64(n))
		} else {
			c.bytesOut.Add(int64(n))
		}
	}
}
