package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/peerport/peerport/agent"
	"github.com/peerport/peerport/internal/testutil"
)

// bins holds the binaries built once for the package: ours, and a real
// nats-server (the module go.mod already requires) for the cluster tests.
var bins struct {
	dir                 string
	agent, broker, nats string
}

// e2eParallel is how many tests run at once unless -parallel says: they
// mostly wait on agent processes and the network, and the default (one per
// core) would run a 10-minute suite one or two tests at a time.
const e2eParallel = "4"

func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", e2eParallel)
	}
	dir, err := os.MkdirTemp("", "peerport-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.dir = dir
	os.Chmod(dir, 0o755) // tests run a binary as another user too
	bins.agent, bins.broker, bins.nats = filepath.Join(dir, "agent"), filepath.Join(dir, "broker"), filepath.Join(dir, "nats-server")
	for _, build := range []*exec.Cmd{
		exec.Command("go", "build", "-race", "-o", dir+"/", "../cmd/agent", "../cmd/broker"),
		exec.Command("go", "build", "-o", bins.nats, "github.com/nats-io/nats-server/v2"),
	} {
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build binaries:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// loopbackOnly keeps agents in loopback tests from offering this machine's
// interface addresses as candidates: every byte stays on 127.0.0.0/8.
const loopbackOnly = "PEERPORT_CANDIDATES=127.0.0.0/8,::1/128"

// proc is a running binary; its stderr is kept for the test log.
type proc struct {
	t      testing.TB
	name   string
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line
	stderr *testutil.Buffer
	done   chan struct{}
	err    error
}

// start runs bin with args; it is stopped (SIGTERM, then SIGKILL) at cleanup.
func start(t testing.TB, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, cmd: exec.Command(bin, args...), lines: make(chan string, 64),
		stderr: &testutil.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "PEERPORT_HOME="+t.TempDir(), loopbackOnly)
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // nobody reads further lines
			}
		}
		p.err = p.cmd.Wait()
		close(p.lines)
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- %s stderr:\n%s", name, p.stderr.String())
		}
	})
	return p
}

// firstLine waits for the first stdout line.
func (p *proc) firstLine() string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("%s exited before printing a line: %v\nstderr:\n%s", p.name, p.err, p.stderr.String())
		}
		return l
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s printed no line in 30s\nstderr:\n%s", p.name, p.stderr.String())
	}
	return ""
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// wait waits for the process to exit by itself.
func (p *proc) wait(d time.Duration) error {
	p.t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.t.Fatalf("%s still running after %v\nstderr:\n%s", p.name, d, p.stderr.String())
	}
	return nil
}

// run runs bin to completion and returns stdout, stderr and its error.
func run(t testing.TB, bin string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "PEERPORT_HOME="+t.TempDir(), loopbackOnly)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// world is a broker with a logged-in sharer state dir and a connector state dir.
type world struct {
	t         testing.TB
	broker    *proc
	brokerURL string
	sharerDir string
	connDir   string
}

func newWorld(t testing.TB) *world { return newWorldWith(t) }

// newWorldWith is newWorld with more broker arguments.
func newWorldWith(t testing.TB, brokerArgs ...string) *world {
	w := &world{t: t, sharerDir: t.TempDir(), connDir: t.TempDir()}
	args := append([]string{"--listen", "127.0.0.1:0", "--state-dir", t.TempDir(), "--public-addr", "127.0.0.1"}, brokerArgs...)
	w.broker = start(t, "broker", bins.broker, args...)
	w.brokerURL = w.broker.firstLine()
	if _, stderr, err := run(t, bins.agent, "--state-dir", w.sharerDir, "login", w.brokerURL); err != nil {
		t.Fatalf("login: %v\n%s", err, stderr)
	}
	return w
}

// share runs `agent share` and returns the process and its ticket.
func (w *world) share(target string, args ...string) (*proc, string) {
	p := start(w.t, "sharer", bins.agent, append([]string{"--state-dir", w.sharerDir, "share", target}, args...)...)
	return p, p.firstLine()
}

// connect runs `agent connect` and returns the process and its local address.
func (w *world) connect(ticket string) (*proc, string) {
	p := start(w.t, "connector", bins.agent, "--state-dir", w.connDir, "connect", ticket, "--listen", "127.0.0.1:0")
	return p, p.firstLine()
}

// echoServer echoes every connection and half-closes when the client does.
func echoServer(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveEcho(t, ln)
}

// serveEcho echoes every connection ln accepts, half-closing when the
// client does, until the test ends; then it closes what is still open.
func serveEcho(t testing.TB, ln net.Listener) string {
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		open   = map[net.Conn]bool{}
		closed bool
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			open[c] = true
			wg.Add(1)
			mu.Unlock()
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				mu.Lock()
				delete(open, c)
				mu.Unlock()
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// echoCheck sends n random bytes through addr and checks they come back intact.
func echoCheck(t testing.TB, addr string, n int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	echoOver(t, c, n)
}

// echoOver sends n random bytes over c, reads the echo, and checks it.
func echoOver(t testing.TB, c net.Conn, n int) {
	t.Helper()
	if err := tryEcho(c, n, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// tryEcho is echoOver that returns what went wrong.
func tryEcho(c net.Conn, n int, d time.Duration) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.MultiWriter(c, sent), rand.Reader, int64(n))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got := sha256.New()
	m, err := io.Copy(got, c)
	if err != nil {
		return fmt.Errorf("read echo: %w after %d bytes", err, m)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if m != int64(n) || !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("echo of %d bytes came back as %d bytes, sha256 equal: %v", n, m, bytes.Equal(sent.Sum(nil), got.Sum(nil)))
	}
	return nil
}

// status runs `agent status --json` for a state dir.
func status(t testing.TB, dir string) agent.Status {
	t.Helper()
	out, stderr, err := run(t, bins.agent, "--state-dir", dir, "status", "--json")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, stderr)
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return st
}

// eventually retries cond for up to d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func writeFileMode(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }
