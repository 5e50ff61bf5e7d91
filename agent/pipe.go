package agent

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/peerport/peerport/mux"
)

// Buffers are taken from these pools only while bytes move, so an idle
// forwarded connection holds none. Sizes are whole frames (mux.MaxPayload):
// a write of a full buffer to a stream makes only full frames.
var (
	// toPeer reads the local connection: several frames per read syscall
	// when the sender is ahead of us.
	toPeer = bufPool(4 * mux.MaxPayload)
	// toLocal takes what one stream Read returns, at most one frame.
	toLocal = bufPool(mux.MaxPayload)
)

func bufPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, size); return &b }}
}

// pipe copies both ways between a stream and a local TCP connection until
// both directions ended, carrying a half-close across (a stream's Close is a
// half-close: it sends FIN and keeps reading), and counts bytes as they
// pass into each set of counters; "in" is what came from the peer. It
// returns at once: each direction runs in a goroutine of its own, started
// here with a small stack (the caller's grew while dialing), and while the
// connection is idle neither holds a buffer.
func (a *Agent) pipe(st *mux.Stream, c net.Conn, cs ...*counters) {
	for _, k := range cs {
		k.streams.Add(1)
		k.total.Add(1)
	}
	var running atomic.Int32
	running.Store(2)
	ended := func() {
		if running.Add(-1) > 0 {
			return
		}
		c.Close()
		for _, k := range cs {
			k.streams.Add(-1)
		}
	}
	a.spawn(func() { // local -> peer
		defer ended()
		err := (&copier{cs: cs, bufs: toPeer, wait: readWaiter(c)}).copy(st, c)
		st.Close() // FIN to the peer, also after an error: it then sees EOF
		if err != nil {
			c.Close()
		}
	})
	a.spawn(func() { // peer -> local
		defer ended()
		if err := (&copier{cs: cs, in: true, bufs: toLocal, wait: st.WaitRead}).copy(c, st); err != nil {
			c.Close()
			st.Close()
		} else if tc, ok := c.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
	})
}

// A copier moves one direction of a pipe and keeps the counters current
// during long transfers, so status shows bytes moving rather than only at
// the end.
type copier struct {
	cs   []*counters
	in   bool
	bufs *sync.Pool
	// wait blocks until src has something to read (or the error a read
	// would return), taking nothing; nil when src cannot wait that way,
	// and then a buffer is held across the blocking read.
	wait func() error
}

func (k *copier) copy(dst io.Writer, src io.Reader) error {
	full := false
	for {
		// After a full read more is likely queued: read on without waiting.
		if k.wait != nil && !full {
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
		full = n == len(*bp)
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

// readWaiter returns a wait for c's readability, or nil when c has no file
// descriptor to wait on.
func readWaiter(c net.Conn) func() error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return waitReadable(rc)
}
