package natlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxCapture bounds the stdout and stderr kept per process.
const maxCapture = 1 << 20

// Proc is a program running in a lab namespace. Its stdout is kept line by
// line (for ReadLine and Expect) and its stderr as text, both bounded.
type Proc struct {
	node  *Node
	label string
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu       sync.Mutex
	lines    []string
	outBytes int
	stderr   strings.Builder
	next     int           // ReadLine cursor
	notify   chan struct{} // closed and replaced when a line arrives or stdout ends
	outDone  bool

	readers sync.WaitGroup
	pipes   []*os.File // our read ends, closed when the readers are stuck
	done    chan struct{}
	waitErr error
}

// Command describes a program to start on a node.
type Command struct {
	Path string   // program (looked up in PATH inside the namespace)
	Args []string // arguments, without the program name
	Env  []string // KEY=value added to the lab process's environment
	Dir  string   // working directory ("" for the current one)
}

// Start starts a program in the node's namespace; see StartCommand.
func (n *Node) Start(ctx context.Context, name string, args ...string) (*Proc, error) {
	return n.StartCommand(ctx, Command{Path: name, Args: args})
}

// StartCommand starts a program in the node's namespace (through
// "ip netns exec", so it also sees the namespace's /sys). It runs in its own
// process group; the lab stops it at Close, and the kernel kills it if the
// lab's process dies. Cancelling ctx stops it too.
func (n *Node) StartCommand(ctx context.Context, c Command) (*Proc, error) {
	name := c.Path
	argv := append([]string{"netns", "exec", n.ns, name}, c.Args...)
	cmd := exec.Command("ip", argv...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.SysProcAttr = groupAttr()
	p := &Proc{node: n, label: n.Name() + ":" + filepath.Base(name), cmd: cmd, notify: make(chan struct{}), done: make(chan struct{})}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("natlab: start %s: %w", p, err)
	}
	p.stdin = stdin
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("natlab: start %s: %w", p, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("natlab: start %s: %w", p, err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	if err := n.lab.track(p); err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, err
	}
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		n.lab.untrack(p)
		return nil, fmt.Errorf("natlab: start %s: %w", p, err)
	}
	p.pipes = []*os.File{outR, errR}
	p.readers.Add(2)
	go p.readStdout(outR)
	go p.readStderr(errR)
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if ctx.Done() != nil {
		go func() {
			select {
			case <-ctx.Done():
				_ = p.Stop()
			case <-p.done:
			}
		}()
	}
	return p, nil
}

func (l *Lab) untrack(p *Proc) {
	l.mu.Lock()
	delete(l.procs, p)
	l.mu.Unlock()
}

func (p *Proc) readStdout(r io.Reader) {
	defer p.readers.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.mu.Lock()
		if p.outBytes < maxCapture {
			p.lines = append(p.lines, sc.Text())
			p.outBytes += len(sc.Text()) + 1
		}
		close(p.notify)
		p.notify = make(chan struct{})
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r) // after an overlong line, drain
	p.mu.Lock()
	p.outDone = true
	close(p.notify)
	p.notify = make(chan struct{})
	p.mu.Unlock()
}

func (p *Proc) readStderr(r io.Reader) {
	defer p.readers.Done()
	buf := make([]byte, 4096)
	for {
		k, err := r.Read(buf)
		if k > 0 {
			p.mu.Lock()
			if p.stderr.Len() < maxCapture {
				p.stderr.Write(buf[:k])
			}
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// String names the process as node:program.
func (p *Proc) String() string { return p.label }

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stdin returns the process's standard input.
func (p *Proc) Stdin() io.WriteCloser { return p.stdin }

// Stdout returns everything the process printed so far.
func (p *Proc) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.lines) == 0 {
		return ""
	}
	return strings.Join(p.lines, "\n") + "\n"
}

// Stderr returns everything the process wrote to stderr so far.
func (p *Proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// ReadLine returns the next stdout line not yet returned, waiting for it.
// It returns io.EOF once stdout is closed and every line was read.
func (p *Proc) ReadLine(ctx context.Context) (string, error) {
	for {
		p.mu.Lock()
		if p.next < len(p.lines) {
			l := p.lines[p.next]
			p.next++
			p.mu.Unlock()
			return l, nil
		}
		if p.outDone {
			p.mu.Unlock()
			return "", io.EOF
		}
		ch := p.notify
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return "", fmt.Errorf("natlab: %s: waiting for a line: %w", p, ctx.Err())
		}
	}
}

// Expect reads lines (see ReadLine) until one contains substr and returns it.
func (p *Proc) Expect(ctx context.Context, substr string) (string, error) {
	for {
		l, err := p.ReadLine(ctx)
		if err != nil {
			return "", fmt.Errorf("natlab: %s: expecting %q: %w (stderr: %s)", p, substr, err, strings.TrimSpace(p.Stderr()))
		}
		if strings.Contains(l, substr) {
			return l, nil
		}
	}
}

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Wait waits for the process to exit and for its output to be read, and
// returns its exit error.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("natlab: %s: wait: %w", p, ctx.Err())
	}
	p.finishReaders()
	p.node.lab.untrack(p)
	return p.waitErr
}

// finishReaders waits for the output readers, which end when every holder
// of the pipes (also grandchildren) is gone; stuck ones are cut off.
func (p *Proc) finishReaders() {
	ch := make(chan struct{})
	go func() {
		p.readers.Wait()
		close(ch)
	}()
	select {
	case <-ch:
	case <-time.After(2 * time.Second):
		for _, f := range p.pipes {
			_ = f.Close()
		}
		<-ch
	}
	for _, f := range p.pipes {
		_ = f.Close()
	}
}

// Signal sends sig to the process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	return signalGroup(p.cmd.Process, sig)
}

// Stop ends the process group: SIGTERM, then SIGKILL after 3s. It returns
// nil when the process exited by those signals or cleanly, and is idempotent.
func (p *Proc) Stop() error {
	select {
	case <-p.done:
	default:
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			_ = p.Signal(syscall.SIGKILL)
			<-p.done
		}
	}
	// Leftovers of the group (children that ignored SIGTERM).
	_ = p.Signal(syscall.SIGKILL)
	p.finishReaders()
	p.node.lab.untrack(p)
	err := p.waitErr
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return nil
		}
	}
	return err
}
