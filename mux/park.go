package mux

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Parking a stream's reader.
//
// An idle forwarded connection would otherwise keep one goroutine blocked
// in a stream read for as long as it stays open: 8 KiB of stack each, more
// than the rest of the connection together. Stream.Park hands that wait to
// the session instead, which learns of new bytes by watching the frames it
// reads: its connection is wrapped, below yamux, by a parkConn that follows
// the frame headers going by.
//
// A frame is in its stream's buffer only once yamux has processed it, which
// is later than the parkConn sees its bytes. yamux reads its connection
// from one goroutine, frame after frame, and asks for more bytes only when
// it has consumed, and so processed, every byte of the read before. So the
// parkConn notes the streams of the frames a read completed, and wakes the
// parked ones among them at the next read, when their bytes are there for
// certain. Park registers first and looks at the stream second, so a frame
// is either there for that look or seen by a later wake: none is missed.

// parkConn is the session's connection, read through by yamux.
type parkConn struct {
	net.Conn
	p *parked

	// Read's state, touched by yamux's receive loop alone.
	hdr  [12]byte
	hn   int    // header bytes read so far
	body uint32 // data bytes of the current frame still to come
	done []uint32
}

func (c *parkConn) Read(b []byte) (int, error) {
	c.p.wake(c.done)
	c.done = c.done[:0]
	n, err := c.Conn.Read(b)
	c.follow(b[:n])
	return n, err
}

// follow walks the frames in b, noting each stream whose frame ends in it
// with data or a flag (FIN or RST: a reader wakes for the end too).
func (c *parkConn) follow(b []byte) {
	for len(b) > 0 {
		if c.body > 0 {
			k := min(uint32(len(b)), c.body)
			c.body -= k
			b = b[k:]
			if c.body == 0 {
				c.note(binary.BigEndian.Uint32(c.hdr[4:8]))
			}
			continue
		}
		k := copy(c.hdr[c.hn:], b)
		c.hn += k
		b = b[k:]
		if c.hn < len(c.hdr) {
			return
		}
		c.hn = 0
		typ, flags := c.hdr[1], binary.BigEndian.Uint16(c.hdr[2:4])
		id, length := binary.BigEndian.Uint32(c.hdr[4:8]), binary.BigEndian.Uint32(c.hdr[8:12])
		switch {
		case typ == typeData && length > 0:
			c.body = length
		case (typ == typeData || typ == typeWindowUpdate) && flags&(flagFIN|flagRST) != 0:
			c.note(id)
		}
	}
}

func (c *parkConn) note(id uint32) {
	if n := len(c.done); n == 0 || c.done[n-1] != id {
		c.done = append(c.done, id)
	}
}

// yamux's frame types and flags (spec.md), as parkConn reads them.
const (
	typeData         = 0
	typeWindowUpdate = 1
	flagFIN          = 4
	flagRST          = 8
)

// parked holds the wakes of a session's parked streams, by stream ID.
type parked struct {
	n      atomic.Int32 // len(wakes), read without the lock
	mu     sync.Mutex
	wakes  map[uint32]func()
	closed bool
}

// add registers wake for stream id; false once the session has ended.
func (p *parked) add(id uint32, wake func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	if p.wakes == nil {
		p.wakes = map[uint32]func(){}
	}
	p.wakes[id] = wake
	p.n.Store(int32(len(p.wakes)))
	return true
}

// remove cancels stream id's wake; false when it ran or was never due.
func (p *parked) remove(id uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.wakes[id]
	delete(p.wakes, id)
	p.n.Store(int32(len(p.wakes)))
	return ok
}

// wake runs the wakes of the parked streams among ids, once each.
func (p *parked) wake(ids []uint32) {
	if len(ids) == 0 || p.n.Load() == 0 {
		return
	}
	var due []func()
	p.mu.Lock()
	for _, id := range ids {
		if w, ok := p.wakes[id]; ok {
			delete(p.wakes, id)
			due = append(due, w)
		}
	}
	p.n.Store(int32(len(p.wakes)))
	p.mu.Unlock()
	for _, w := range due {
		w()
	}
}

// close runs every wake left, as the session ends: their reads fail now.
func (p *parked) close() {
	p.mu.Lock()
	p.closed = true
	wakes := p.wakes
	p.wakes = nil
	p.n.Store(0)
	p.mu.Unlock()
	for _, w := range wakes {
		w()
	}
}

// ErrQuiet is WaitRead's answer after Kick.
var ErrQuiet = errors.New("mux: stream quiet")

// Kick ends the WaitRead waiting now, or the next one that would wait,
// with ErrQuiet: whoever watches the stream for quiet tells its reader to
// park, and the reader waits with no timer of its own.
// A read that consumes is under way when Kick cannot take rmu: the stream
// is not quiet, and Kick does nothing.
func (s *Stream) Kick() {
	if !s.rmu.TryLock() {
		return
	}
	defer s.rmu.Unlock()
	s.kmu.Lock()
	defer s.kmu.Unlock()
	s.kicked = true
	s.ys.SetReadDeadline(time.Unix(1, 0))
}

// unkick clears Kick's deadline; it reports whether there was one.
func (s *Stream) unkick() bool {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	if !s.kicked {
		return false
	}
	s.kicked = false
	s.ys.SetReadDeadline(time.Time{})
	return true
}

// Parked is the number of the session's streams whose reader is parked.
func (s *Session) Parked() int { return int(s.parked.n.Load()) }

// Park hands the wait for the stream's next bytes, or its end, to the
// session, so that the reader's goroutine may return: wake is called once,
// from the session's receive loop (it must not block), when a frame for
// the stream has arrived, when the stream is reset here, or when the
// session ends. Park returns false, registering nothing, when a read would
// not block now: the caller reads on instead. One reader parks at a time.
func (s *Stream) Park(wake func()) bool {
	id := s.ys.StreamID()
	if !s.sess.parked.add(id, wake) {
		return false
	}
	if s.readable() && s.sess.parked.remove(id) {
		return false
	}
	return true
}

// Unpark cancels Park; it reports whether the wake was still due, and so
// will never be called.
func (s *Stream) Unpark() bool { return s.sess.parked.remove(s.ys.StreamID()) }

// readable tells whether a read would return without waiting: data is
// buffered, or the stream has ended (EOF, a reset, a dead session).
func (s *Stream) readable() bool {
	s.kmu.Lock() // a passed deadline does not block the read
	defer s.kmu.Unlock()
	s.kicked = false
	s.ys.SetReadDeadline(time.Unix(1, 0))
	_, err := s.ys.Read(nil)
	s.ys.SetReadDeadline(time.Time{})
	return err == nil || !isTimeout(err)
}
