package resume

// queue is a FIFO of bytes over one backing array that is reused rather
// than reallocated: the front is dropped by moving an offset, and the live
// bytes are moved down only when the array would otherwise have to grow.
// The send side keeps unacknowledged bytes in one, the receive side what
// the application has not read yet; both under the Conn's lock.
type queue struct {
	buf  []byte
	head int
}

func (q *queue) len() int { return len(q.buf) - q.head }

// push appends p.
func (q *queue) push(p []byte) {
	if len(q.buf)+len(p) > cap(q.buf) && q.head > 0 {
		n := copy(q.buf, q.buf[q.head:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, p...)
}

// at returns the bytes from offset off (0 is the front), at most n.
func (q *queue) at(off, n int) []byte {
	b := q.buf[q.head+off:]
	if len(b) > n {
		b = b[:n]
	}
	return b
}

// drop removes n bytes from the front.
func (q *queue) drop(n int) {
	q.head += n
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
}

// pop moves up to len(p) bytes from the front into p.
func (q *queue) pop(p []byte) int {
	n := copy(p, q.buf[q.head:])
	q.drop(n)
	return n
}

// trim drops the backing array while the queue is empty.
func (q *queue) trim() {
	if q.len() == 0 {
		q.buf, q.head = nil, 0
	}
}
