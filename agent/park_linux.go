package agent

import (
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// A parker holds the local sides of idle forwarded connections in one
// epoll set, so that a quiet connection needs no goroutine of its own
// waiting for it. The epoll descriptor itself sits in the Go runtime's
// poller, so waiting for any of them takes one goroutine and no thread.
// Registrations are one-shot and level-triggered: a connection is
// reported once, whether bytes, EOF or an error are waiting, and again
// only after it is parked anew (EPOLL_CTL_MOD then sees what is already
// queued, so nothing that arrives in between is missed).
type parker struct {
	spawn func(func()) // the agent's, so the loop is waited for on stop

	once sync.Once
	err  error
	epfd *os.File // in the runtime's poller, for the loop
	fd   int      // its number, for epoll_ctl while it is open
	rc   syscall.RawConn

	mu     sync.Mutex
	closed bool
	next   uint64
	parked map[uint64]*pipe
}

// available starts the parker on first use and tells whether it runs.
func (k *parker) available() bool {
	k.once.Do(k.start)
	return k.err == nil
}

func (k *parker) start() {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err == nil {
		err = unix.SetNonblock(fd, true)
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		k.err = fmt.Errorf("epoll: %w", err)
		return
	}
	k.fd = fd
	k.epfd = os.NewFile(uintptr(fd), "parker-epoll")
	if k.rc, k.err = k.epfd.SyscallConn(); k.err != nil {
		k.epfd.Close()
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		k.epfd.Close()
		k.err = errParkerClosed
		return
	}
	k.parked = map[uint64]*pipe{}
	k.spawn(k.loop)
}

// park registers rc's descriptor for p: p.unpark runs once it is readable.
// attached says it was registered before (then it is re-armed). The
// caller holds p.mu.
func (k *parker) park(rc syscall.RawConn, p *pipe, attached bool) (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.closed:
		return 0, errParkerClosed
	case k.err != nil:
		return 0, k.err
	}
	k.next++
	id := k.next
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	op := unix.EPOLL_CTL_ADD
	if attached {
		op = unix.EPOLL_CTL_MOD
	}
	var cerr error
	// Control keeps the descriptor open (and its number ours) meanwhile.
	if err := rc.Control(func(fd uintptr) { cerr = unix.EpollCtl(k.fd, op, int(fd), &ev) }); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("epoll_ctl: %w", cerr)
	}
	k.parked[id] = p
	return id, nil
}

// cancel forgets a registration whose connection is being closed (closing
// it removes it from the epoll set).
func (k *parker) cancel(id uint64) {
	k.mu.Lock()
	delete(k.parked, id)
	k.mu.Unlock()
}

func (k *parker) loop() {
	events := make([]unix.EpollEvent, 128)
	for {
		var woke []*pipe
		err := k.rc.Read(func(fd uintptr) bool {
			n, _ := unix.EpollWait(int(fd), events, 0)
			if n <= 0 {
				return false // wait until the runtime's poller says we have events
			}
			k.mu.Lock()
			for _, ev := range events[:n] {
				id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
				if p, ok := k.parked[id]; ok {
					delete(k.parked, id)
					woke = append(woke, p)
				}
			}
			k.mu.Unlock()
			return true
		})
		for _, p := range woke {
			p.unpark()
		}
		if err != nil {
			return // closed: the agent stops
		}
	}
}

// count is the number of connections parked now.
func (k *parker) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.parked)
}

// close ends every parked connection and the loop.
func (k *parker) close() {
	k.once.Do(func() { k.err = errParkerClosed })
	k.mu.Lock()
	k.closed = true
	parked := make([]*pipe, 0, len(k.parked))
	for _, p := range k.parked {
		parked = append(parked, p)
	}
	k.mu.Unlock()
	for _, p := range parked {
		p.abort()
	}
	if k.epfd != nil {
		k.epfd.Close()
	}
}
