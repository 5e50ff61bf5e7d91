//go:build unix

package config

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestLoadAgentSecretsMode(t *testing.T) {
	c := newCreds(t)
	dir := t.TempDir()
	withBroker := c.expand("broker: {BROKER}\nshares: [{name: web, target: 80}]\n")
	withTicket := c.expand("connects:\n  - ticket: {TICKET}\n")
	noSecrets := "shares:\n  - name: web\n    target: 8080\n"
	tests := []struct {
		name string
		yaml string
		mode os.FileMode
		gid  int      // chown the file to this group (root only); -1: leave
		want []string // substrings of the one warning; nil: no warning
	}{
		{"private", withBroker, 0o600, -1, nil},
		{"read-only private", withBroker, 0o400, -1, nil},
		{"world-readable broker token", withBroker, 0o644, -1, []string{"mode 0644 lets every user read the broker token in it", "chmod 600"}},
		{"world-writable", withBroker, 0o602, -1, []string{"mode 0602 lets every user change the broker token"}},
		{"world-readable ticket", withTicket, 0o644, -1, []string{"every user read tickets in it"}},
		{"world-readable, no secrets", noSecrets, 0o644, -1, nil},
		{"group of our own", withBroker, 0o640, os.Getegid(), nil},
		{"foreign group", withBroker, 0o640, 54321, []string{"mode 0640 lets group gid 54321 read the broker token"}},
		{"foreign group and world", withTicket, 0o664, 54321, []string{"mode 0664 lets every user and group gid 54321 read and change tickets"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.gid >= 0 && tt.gid != os.Getegid() && os.Geteuid() != 0 {
				t.Skip("changing a file's group to one we are not in needs root")
			}
			p := filepath.Join(dir, "agent"+string(rune('a'+i))+".yaml")
			if err := os.WriteFile(p, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			if tt.gid >= 0 {
				if err := os.Chown(p, -1, tt.gid); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			a, err := LoadAgent(p)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if len(a.Warnings) != 0 {
					t.Errorf("warnings %q, want none", a.Warnings)
				}
				return
			}
			if len(a.Warnings) != 1 {
				t.Fatalf("warnings %q, want one", a.Warnings)
			}
			w := a.Warnings[0]
			t.Log(w)
			if !strings.HasPrefix(w, p+": ") {
				t.Errorf("warning %q does not start with the file name", w)
			}
			for _, s := range tt.want {
				if !strings.Contains(w, s) {
					t.Errorf("warning %q lacks %q", w, s)
				}
			}
			if strings.Contains(w, c.broker) || strings.Contains(w, c.ticket) {
				t.Errorf("warning %q quotes the secret", w)
			}
		})
	}
}

// TestLoadUnreadable: a file that exists but may not be read is one error
// naming owner, group and mode. Root reads everything, so as root the load
// runs in a copy of the test binary as nobody.
func TestLoadUnreadable(t *testing.T) {
	dir, err := os.MkdirTemp("", "peerport-config-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(p, []byte("log: {level: info}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o000); err != nil {
		t.Fatal(err)
	}

	var msg string
	if os.Geteuid() != 0 {
		_, err := LoadAgent(p)
		if err == nil {
			t.Fatal("loaded a mode 000 file")
		}
		msg = err.Error()
	} else {
		msg = loadAsNobody(t, dir, p)
	}
	t.Log(msg)
	want := p + ": cannot read: permission denied (owner "
	if !strings.HasPrefix(msg, want) || !strings.Contains(msg, "mode 0000)") || !strings.Contains(msg, "chown/chmod") {
		t.Errorf("error %q, want %q... with the mode and a fix", msg, want)
	}
	if strings.Count(msg, "\n") != 0 {
		t.Errorf("error %q is more than one line", msg)
	}
}

// loadAsNobody runs LoadAgent(path) in a copy of the test binary as uid and
// gid 65534 and returns what it printed.
func loadAsNobody(t *testing.T, dir, path string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "config.test")
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{loadHelperEnv + "=" + path}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("load as nobody: %v: %s", err, out)
	}
	return string(out)
}
