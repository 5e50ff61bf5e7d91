package resume

// queue is a FIFO of bytes in a ring over one backing array. The array is
// reused rather than reallocated, and grows only when the live bytes do
// not fit: a bulk sender keeps its send queue near MaxUnacked, and moving
// the live bytes down to make room, as a flat buffer must, would copy
// megabytes for every ack. The send side keeps unacknowledged bytes in
// one, the receive side what the application has not read yet; both under
// the Conn's lock.
type queue struct {
	buf   []byte // len(buf) is the ring's size
	head  int    // where the front is in buf
	n     int    // live bytes, from head on, wrapping at len(buf)
	lent  bool   // space was handed out and is not committed yet
	epoch uint64 // bumps when a lent array is given up
	limit int    // the most it holds, if known: it grows no larger
}

// minQueue is the least a queue grows to, so that a trickle of small
// writes does not reallocate at every step.
const minQueue = 4 << 10

func (q *queue) len() int { return q.n }

// push appends p.
func (q *queue) push(p []byte) {
	q.reclaim()
	if q.n+len(p) > len(q.buf) {
		q.grow(q.n + len(p))
	}
	tail := q.head + q.n
	if tail >= len(q.buf) {
		tail -= len(q.buf)
	}
	k := copy(q.buf[tail:], p)
	copy(q.buf, p[k:])
	q.n += len(p)
}

// grow moves the live bytes to the front of a new array of at least need
// bytes, doubling so that a queue growing to its bound copies it about
// once, but not beyond that bound.
func (q *queue) grow(need int) {
	size := max(2*len(q.buf), minQueue)
	for size < need {
		size *= 2
	}
	if q.limit > 0 {
		size = max(min(size, q.limit), need)
	}
	b := make([]byte, size)
	q.copyOut(b, 0)
	q.buf, q.head = b, 0
}

// copyOut copies the live bytes from offset off into p, as many as fit.
func (q *queue) copyOut(p []byte, off int) int {
	first := q.at(off, len(p))
	k := copy(p, first)
	if k < len(p) && off+k < q.n {
		k += copy(p[k:], q.at(off+k, len(p)-k))
	}
	return k
}

// at returns the contiguous bytes from offset off (0 is the front), at
// most n: fewer where the ring wraps.
func (q *queue) at(off, n int) []byte {
	n = min(n, q.n-off)
	i := q.head + off
	if i >= len(q.buf) {
		i -= len(q.buf)
	}
	return q.buf[i : i+min(n, len(q.buf)-i)]
}

// drop removes n bytes from the front.
func (q *queue) drop(n int) {
	q.n -= n
	q.head += n
	if q.head >= len(q.buf) {
		q.head -= len(q.buf)
	}
	if q.n == 0 && !q.lent {
		q.head = 0 // the next bytes go in contiguously
	}
}

// pop moves up to len(p) bytes from the front into p.
func (q *queue) pop(p []byte) int {
	n := q.copyOut(p, 0)
	q.drop(n)
	return n
}

// trim drops the backing array while the queue is empty.
func (q *queue) trim() {
	if q.n == 0 && !q.lent {
		q.buf, q.head = nil, 0
	}
}

// space returns n free bytes right after the live ones, to be filled
// without the lock and then committed: the carrier reader reads a frame
// body straight into the receive queue rather than through a buffer of
// its own. It returns nil where the free bytes wrap before n. While the
// space is lent the array is neither moved nor reused, so pops leave the
// tail where it is; should anyone push or ask for space meanwhile (only
// the reader of a replaced carrier can still hold a lend by then), the
// array is left to the holder and its commit is void.
func (q *queue) space(n int) ([]byte, uint64) {
	q.reclaim()
	if q.n+n > len(q.buf) {
		q.grow(q.n + n)
	}
	tail, free := q.head+q.n, len(q.buf)-q.head-q.n
	if tail >= len(q.buf) {
		tail -= len(q.buf)
		free = q.head - tail
	}
	if free < n {
		return nil, 0
	}
	q.lent = true
	return q.buf[tail : tail+n], q.epoch
}

// commit makes the first k bytes of the space lent in epoch live.
func (q *queue) commit(epoch uint64, k int) {
	if q.lent && epoch == q.epoch {
		q.lent = false
		q.n += k
	}
}

// release ends the lend of epoch with nothing committed.
func (q *queue) release(epoch uint64) {
	if q.lent && epoch == q.epoch {
		q.lent = false
		if q.n == 0 {
			q.head = 0
		}
	}
}

// reclaim gives up a lent array: its holder may still write into it.
func (q *queue) reclaim() {
	if !q.lent {
		return
	}
	b := make([]byte, len(q.buf))
	q.copyOut(b, 0)
	q.buf, q.head, q.lent = b, 0, false
	q.epoch++
}
