package e2e

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/peerport/peerport/internal/testutil"
)

// ptyRun runs the agent with a pseudo-terminal as its stdin and stdout, as
// a person's shell would, and its stderr in a buffer. The terminal is wide
// enough for a whole ticket on one line.
type ptyRun struct {
	t      *testing.T
	cmd    *exec.Cmd
	term   *os.File // our side of the terminal
	screen *testutil.Buffer
	stderr *testutil.Buffer
	done   chan struct{}
	err    error
}

func startInPty(t *testing.T, args ...string) *ptyRun {
	t.Helper()
	master, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pty here: %v", err)
	}
	if err := pty.Setsize(master, &pty.Winsize{Rows: 50, Cols: 320}); err != nil {
		t.Fatal(err)
	}
	r := &ptyRun{t: t, term: master, screen: &testutil.Buffer{}, stderr: &testutil.Buffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(bins.agent, args...)
	// TERM=linux: a terminal without REP, so a run of one character is
	// written out rather than repeated by a control the test would strip.
	r.cmd.Env = append(os.Environ(), "PEERPORT_HOME="+t.TempDir(), loopbackOnly, "TERM=linux")
	r.cmd.Stdin, r.cmd.Stdout, r.cmd.Stderr = tty, tty, r.stderr
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close() // the child holds it now; EIO on master once it exits
	copied := make(chan struct{})
	go func() {
		io.Copy(r.screen, master)
		close(copied)
	}()
	go func() {
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-r.done:
			case <-time.After(10 * time.Second):
				r.cmd.Process.Kill()
				<-r.done
			}
		}
		master.Close()
		<-copied
		if t.Failed() {
			t.Logf("--- screen, plain:\n%s\n--- stderr:\n%s", plainScreen(r.screen.String()), r.stderr.String())
		}
	})
	return r
}

// escapes matches the terminal controls a renderer writes: CSI, OSC, DCS
// and two-byte escapes.
var escapes = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1bP[^\x1b]*\x1b\\|\x1b[()][0-9A-Za-z]|\x1b[@-_=>78]`)

// plainScreen is what was written with the controls taken out. A control
// becomes a space, as a cursor move between words leaves one on screen,
// and runs of spaces become one, so lines compare as words.
func plainScreen(s string) string {
	s = escapes.ReplaceAllString(s, " ")
	s = strings.NewReplacer("\r", "", "\t", " ").Replace(s)
	return regexp.MustCompile(` +`).ReplaceAllString(s, " ")
}

// redrawShows asks for a full redraw (Ctrl-L) until what was drawn since
// shows every one of want.
func (r *ptyRun) redrawShows(d time.Duration, want ...string) string {
	r.t.Helper()
	deadline := time.Now().Add(d)
	for {
		mark := len(r.screen.String())
		r.term.Write([]byte{0x0c})
		time.Sleep(300 * time.Millisecond)
		s := plainScreen(r.screen.String()[mark:])
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s, w)
		}
		if ok {
			return s
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("after %v the redrawn screen lacks one of %q:\n%s", d, want, s)
		}
	}
}

// TestConsoleShare: `agent share` on a terminal shows the console: the
// command to run on the other machine, then, with a real connector and
// bytes flowing, the peer on a direct path and the connection in the
// recent list; q stops it the way Ctrl-C stops a share without one.
func TestConsoleShare(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	sh := startInPty(t, "--state-dir", w.sharerDir, "share", echoServer(t), "--name", "web")
	var ticket string
	eventually(t, 30*time.Second, "the share's ticket in status", func() bool {
		st := status(t, w.sharerDir)
		if len(st.Agents) == 1 && len(st.Agents[0].Shares) == 1 && len(st.Agents[0].Brokers) == 1 && st.Agents[0].Brokers[0].Connected {
			ticket = st.Agents[0].Shares[0].Ticket
		}
		return ticket != ""
	})
	sh.redrawShows(30*time.Second, "agent connect "+ticket, "On the other machine, run:", "waiting for a connector")

	_, addr := w.connect(ticket)
	echoCheck(t, addr, 1<<20)
	st := status(t, w.connDir)
	peer := st.Agents[0].ID[:12]
	screen := sh.redrawShows(30*time.Second, "Peers", peer+" direct", "Connections", "closed")
	if strings.Contains(screen, "level=") || strings.Contains(screen, "time=") {
		t.Errorf("log lines in their stderr format drawn over the console:\n%s", screen)
	}

	sh.term.Write([]byte("q"))
	select {
	case <-sh.done:
	case <-time.After(30 * time.Second):
		t.Fatal("share still running 30s after q")
	}
	if sh.err != nil {
		t.Errorf("share after q: %v, want a clean exit", sh.err)
	}
	if !strings.Contains(sh.stderr.String(), "stopped; share") {
		t.Errorf("stderr after the console: want the stop logged there again:\n%s", sh.stderr.String())
	}
	if strings.Contains(sh.stderr.String(), "peer session up") {
		t.Errorf("stderr has the log lines the console showed:\n%s", sh.stderr.String())
	}
}

// linesOf runs the agent with stdout a pipe until it printed its first
// line, stops it, and returns every byte it wrote to stdout and what it
// wrote to stderr.
func linesOf(t *testing.T, env []string, args ...string) (stdout []byte, stderr string) {
	t.Helper()
	cmd := exec.Command(bins.agent, args...)
	cmd.Env = append(append(os.Environ(), "PEERPORT_HOME="+t.TempDir(), loopbackOnly), env...)
	errb := &testutil.Buffer{}
	cmd.Stderr = errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(out)
		got <- b
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(errb.String(), "sharing ") && !strings.Contains(errb.String(), "forwarding") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no first line in 30s; stderr:\n%s", errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	b := <-got
	cmd.Wait()
	return b, errb.String()
}

var ticketLine = regexp.MustCompile(`^pp1[a-z0-9]+\n$`)

// TestConsoleLinesWhenPiped: with stdout a pipe, share and connect write
// exactly what they always did: the ticket, or the listen address, and a
// newline, and not one byte more; --qr adds its code on stderr only.
func TestConsoleLinesWhenPiped(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	target := echoServer(t)
	for _, tc := range []struct {
		name string
		args []string
		qr   bool
	}{
		{"share", nil, false},
		{"share --qr", []string{"--qr"}, true},
		{"share in a terminal's env", []string{"--name", "t"}, false},
	} {
		out, stderr := linesOf(t, []string{"TERM=xterm-256color"}, append([]string{"--state-dir", w.sharerDir, "share", target}, tc.args...)...)
		if !ticketLine.Match(out) {
			t.Errorf("%s: stdout %q, want the ticket line alone", tc.name, out)
		}
		if hasQR := strings.Contains(stderr, "█") || strings.Contains(stderr, "▀"); hasQR != tc.qr {
			t.Errorf("%s: QR code on stderr: %v, want %v:\n%s", tc.name, hasQR, tc.qr, stderr)
		}
	}
	_, ticket := w.share(target, "--name", "c")
	out, _ := linesOf(t, nil, "--state-dir", w.connDir, "connect", ticket, "--listen", "127.0.0.1:0")
	if !regexp.MustCompile(`^127\.0\.0\.1:[0-9]+\n$`).Match(out) {
		t.Errorf("connect: stdout %q, want the listen address line alone", out)
	}
}

// TestConsoleNoUI: --no-ui on a terminal is the piped behaviour: the
// terminal gets the ticket line and nothing else (logs go to stderr).
func TestConsoleNoUI(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	sh := startInPty(t, "--state-dir", w.sharerDir, "share", echoServer(t), "--no-ui")
	eventually(t, 30*time.Second, "the share online", func() bool { return strings.Contains(sh.stderr.String(), "sharing ") })
	sh.cmd.Process.Signal(syscall.SIGTERM)
	<-sh.done
	time.Sleep(100 * time.Millisecond) // the last bytes through the pty
	got := []byte(sh.screen.String())
	if !regexp.MustCompile(`^pp1[a-z0-9]+\r\n$`).Match(got) || bytes.Contains(got, []byte{0x1b}) {
		t.Errorf("terminal got %q, want the ticket line alone", got)
	}
}

// TestConsoleWatchPiped: status --watch with stdout a pipe prints the
// plain view (no terminal controls) each second, or with --json one status
// document a line, until interrupted.
func TestConsoleWatchPiped(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.share(echoServer(t), "--name", "web")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "share web -> "},
		{[]string{"--json"}, `"name":"web"`},
	} {
		cmd := exec.Command(bins.agent, append([]string{"--state-dir", w.sharerDir, "status", "--watch"}, tc.args...)...)
		cmd.Env = append(os.Environ(), "PEERPORT_HOME="+t.TempDir())
		out := &testutil.Buffer{}
		cmd.Stdout = out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "two rounds of status", func() bool {
			return strings.Count(plainScreen(out.String()), tc.want) >= 2
		})
		cmd.Process.Signal(syscall.SIGINT)
		if err := cmd.Wait(); err != nil {
			t.Errorf("status --watch %v after SIGINT: %v", tc.args, err)
		}
		s := out.String()
		if strings.Contains(s, "\x1b") || !strings.Contains(plainScreen(s), tc.want) {
			t.Errorf("status --watch %v wrote:\n%s", tc.args, s)
		}
	}
}
