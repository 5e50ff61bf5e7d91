package e2e

import (
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/secure"
)

func TestWrongTokenRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	u, err := secure.ParseBrokerURL(w.brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Token = "not-the-token"
	_, stderr, err := run(t, bins.agent, "--state-dir", t.TempDir(), "login", u.String())
	if err == nil || !strings.Contains(stderr, "wrong broker token") {
		t.Fatalf("login with a wrong token: err %v, stderr %q; want a refusal naming the token", err, stderr)
	}
	p := start(t, "sharer", bins.agent, "--state-dir", t.TempDir(), "share", "8080", "--broker", u.String())
	if err := p.wait(30 * time.Second); err == nil {
		t.Fatal("share with a wrong token exited 0")
	}
	if s := p.stderr.String(); !strings.Contains(s, "wrong broker token") || strings.Count(strings.TrimSpace(s), "\n") > 20 {
		t.Fatalf("stderr %q: want the wrong-token error", s)
	}
}

func TestWrongPinRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	u, _ := secure.ParseBrokerURL(w.brokerURL)
	u.Pin[0] ^= 1
	_, stderr, err := run(t, bins.agent, "--state-dir", t.TempDir(), "login", u.String())
	if err == nil || !strings.Contains(stderr, "does not match pin") {
		t.Fatalf("login with a wrong pin: err %v, stderr %q", err, stderr)
	}
	p := start(t, "sharer", bins.agent, "--state-dir", t.TempDir(), "share", "8080", "--broker", u.String())
	if err := p.wait(30 * time.Second); err == nil || !strings.Contains(p.stderr.String(), "does not match pin") {
		t.Fatalf("share with a wrong pin: err %v; want a final error naming the pin", err)
	}
}

func TestBadTicketsRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, ticket := w.share(echoServer(t))
	tampered := []byte(ticket)
	i := len(tampered) / 2
	tampered[i] = map[bool]byte{true: 'b', false: 'a'}[tampered[i] == 'a']
	tests := []struct{ name, ticket, want string }{
		{"tampered", string(tampered), "malformed ticket"},
		{"truncated", ticket[:len(ticket)-5], "malformed ticket"},
		{"garbage", "hello", "malformed ticket"},
		{"future version", "pp9" + ticket[3:], "unsupported ticket version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := run(t, bins.agent, "--state-dir", t.TempDir(), "connect", tc.ticket)
			if err == nil || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("err %v, stderr %q; want one line with %q", err, stderr, tc.want)
			}
		})
	}
}

// TestTicketForOtherShare: a ticket re-pointed at another share of the same
// sharer (valid checksum, same secret) is refused.
func TestTicketForOtherShare(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, ticket := w.share(echoServer(t), "--name", "x")
	tk, err := secure.ParseTicket(ticket)
	if err != nil {
		t.Fatal(err)
	}
	w.share(echoServer(t), "--name", "y") // y exists, with a ticket of its own
	tk.Share = "y"                        // x's secret, y's name, a valid checksum
	p := start(t, "connector", bins.agent, "--state-dir", w.connDir, "connect", tk.String(), "--listen", "127.0.0.1:0")
	if err := p.wait(30 * time.Second); err == nil {
		t.Fatal("connect with a ticket re-pointed at share y exited 0")
	}
	if s := p.stderr.String(); !strings.Contains(s, "not valid") {
		t.Fatalf("stderr %q: want the broker's refusal", s)
	}
}

// TestGarbageOnControlPort: bytes that are not TLS, and TLS without our
// protocol, do not disturb the broker or the sessions it holds.
func TestGarbageOnControlPort(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, ticket := w.share(echoServer(t))
	u, _ := secure.ParseBrokerURL(w.brokerURL)
	payloads := [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		make([]byte, 1<<16),
		[]byte{0x16, 0x03, 0x01, 0xff, 0xff, 0x01},
	}
	for _, p := range payloads {
		c, err := net.Dial("tcp", u.Addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(p)
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		c.Read(make([]byte, 1024))
		c.Close()
	}
	// TLS with no client certificate.
	c, err := tls.Dial("tcp", u.Addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err == nil {
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	}
	_, addr := w.connect(ticket)
	echoCheck(t, addr, 1<<20)
}

func TestStateFilesPrivate(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	for _, f := range []string{secure.IdentityFile, "broker.url"} {
		fi, err := os.Stat(filepath.Join(w.sharerDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
}

// TestConfigErrors: a bad agent.yaml is refused with one line per problem,
// each naming file, line and field; nothing starts.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct{ name, yaml, want string }{
		{"unknown key", "shares:\n  - name: web\n    targett: 8080\n", `agent.yaml:3:5: shares[0]: unknown field "targett"; did you mean "target"?`},
		{"wrong type", "shares:\n  - name: [web]\n    target: 8080\n", "agent.yaml:2:11: shares[0].name: cannot decode !!seq into string"},
		{"tab", "shares:\n\t- name: web\n", "agent.yaml:2:1: tab character in indentation; hint: YAML indents with spaces; line 2 has a tab at column 1"},
		{"empty", "# nothing yet\n", "agent.yaml: nothing to run: add a share or a connect (see config.example.yaml)"},
		{"placeholder broker", "broker: pp://REPLACE-WITH-TOKEN@broker.example.com:7000#oIwob8Nt-IZh7fcNNYHpyN76ZY_eOs2qmZjBL9ySFaY\nshares:\n  - name: web\n    target: 8080\n",
			"agent.yaml:1: broker: still the example's placeholder; replace it with the URL your broker printed"},
		{"bad port", "connects:\n  - peer: " + strings.Repeat("a", 52) + "\n    share: web\n    listen: 127.0.0.1:70000\n", "agent.yaml:4: connects[0].listen:"},
		{"missing target", "shares:\n  - name: web\n", "agent.yaml:2: shares[0].target:"},
		{"duplicate names", "shares:\n  - name: web\n    target: 1\n  - name: web\n    target: 2\n", "agent.yaml:4: shares[1].name:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "agent.yaml")
			writeFile(t, path, tc.yaml)
			_, stderr, err := run(t, bins.agent, "--state-dir", t.TempDir(), "up", "-c", path)
			if err == nil || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "goroutine ") {
				t.Fatalf("err %v, stderr:\n%s\nwant a line containing %q", err, stderr, tc.want)
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		path := filepath.Join(dir, "locked.yaml")
		writeFile(t, path, "shares: []\n")
		os.Chmod(path, 0)
		// Root reads anything: run as nobody to see the refusal.
		cmd := exec.Command(bins.agent, "--state-dir", "/nonexistent", "up", "-c", path)
		if !asNobody(cmd) {
			t.Skip("needs Unix users")
		}
		out, err := cmd.CombinedOutput()
		if os.Geteuid() != 0 {
			t.Skip("needs root to run the binary as another user")
		}
		if err == nil || !strings.Contains(string(out), "locked.yaml: cannot read") {
			t.Fatalf("err %v, output %q; want one line saying the file cannot be read", err, out)
		}
	})
	t.Run("world-readable secrets warn", func(t *testing.T) {
		w := newWorld(t)
		path := filepath.Join(t.TempDir(), "agent.yaml")
		writeFile(t, path, "broker: "+w.brokerURL+"\nshares:\n  - name: web\n    target: "+echoServer(t)+"\n")
		os.Chmod(path, 0o644)
		p := start(t, "sharer", bins.agent, "--state-dir", w.sharerDir, "up", "-c", path, "--tickets")
		p.firstLine() // it runs
		if s := p.stderr.String(); !strings.Contains(s, "level=warning") || !strings.Contains(s, "chmod 600") {
			t.Fatalf("stderr %q: want a warning about the file's mode", s)
		}
	})
}
