package nat

// Exec runs fn where sockets are to be created. Sockets belong for life to
// the network namespace of the thread that made them, so tests in the NAT lab
// pass a lab host's Node.Do; nil runs fn in place.
type Exec func(fn func() error) error

// Run calls fn through e.
func (e Exec) Run(fn func() error) error {
	if e == nil {
		return fn()
	}
	return e(fn)
}
