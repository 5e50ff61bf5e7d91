package deploy

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/peerport/peerport/internal/config"
)

const installSh = "../install.sh"

// fakeBinaries writes stand-ins for agent and broker, so the test needs no
// build (and no Go toolchain check) and can tell the copies apart.
func fakeBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []string{"agent", "broker"} {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\necho fake "+b+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// install runs install.sh with args and a HOME of its own, and returns its
// output and exit error.
func install(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("install.sh is for Unix")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	cmd := exec.Command("bash", append([]string{installSh}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "PREFIX=")
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// tree lists the regular files under root with their modes.
func tree(t *testing.T, root string) map[string]fs.FileMode {
	t.Helper()
	files := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[filepath.ToSlash(rel)] = fi.Mode().Perm()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInstallService(t *testing.T) {
	bins := fakeBinaries(t)
	tests := []struct {
		service  string
		exec     string // the unit's ExecStart
		checkDoc func(t *testing.T, name string, data []byte)
	}{
		{"agent", "ExecStart=/opt/peerport/bin/agent up -c /etc/peerport/agent.yaml", func(t *testing.T, name string, data []byte) {
			// The starter is the example: it must not run until its
			// placeholders are replaced, so a service made from it fails
			// at once, saying which line to edit, instead of looking healthy.
			_, err := config.ParseAgent(name, data)
			if err == nil || !strings.Contains(err.Error(), "broker: still the example's placeholder") {
				t.Errorf("starter agent.yaml: %v; want a refusal of the placeholder broker", err)
			}
		}},
		{"broker", "ExecStart=/opt/peerport/bin/broker -c /etc/peerport/broker.yaml --state-dir /var/lib/peerport-broker", func(t *testing.T, name string, data []byte) {
			b, err := config.ParseBroker(name, data)
			if err != nil {
				t.Fatalf("starter broker.yaml: %v", err)
			}
			var def config.Broker
			def.SetDefaults()
			if !reflect.DeepEqual(*b, def) {
				t.Errorf("starter broker.yaml is not the defaults: %+v", *b)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			root := t.TempDir()
			out, err := install(t, "--service", tt.service, "--root", root, "--prefix", "/opt/peerport", "--binaries", bins)
			if err != nil {
				t.Fatalf("install.sh: %v\n%s", err, out)
			}
			t.Log(out)
			unit := "etc/systemd/system/peerport-" + tt.service + ".service"
			conf := "etc/peerport/" + tt.service + ".yaml"
			want := map[string]fs.FileMode{
				"opt/peerport/bin/agent":  0o755,
				"opt/peerport/bin/broker": 0o755,
				unit:                      0o644,
				conf:                      0o640,
			}
			if got := tree(t, root); !reflect.DeepEqual(got, want) {
				t.Errorf("files under the root:\n got  %v\n want %v", got, want)
			}
			if fi, err := os.Stat(filepath.Join(root, "etc/peerport")); err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("/etc/peerport: %v, %v", fi, err)
			}
			if b := read(t, filepath.Join(root, "opt/peerport/bin/agent")); b != read(t, filepath.Join(bins, "agent")) {
				t.Errorf("agent binary is not the one given: %q", b)
			}

			u := read(t, filepath.Join(root, unit))
			if !slices.Contains(strings.Split(u, "\n"), tt.exec) {
				t.Errorf("unit has no line %q:\n%s", tt.exec, u)
			}
			if strings.Contains(u, "/usr/local/bin") {
				t.Error("unit still names /usr/local/bin after --prefix /opt/peerport")
			}
			orig := read(t, filepath.Join("systemd", "peerport-"+tt.service+".service"))
			if strings.ReplaceAll(orig, "/usr/local/bin/", "/opt/peerport/bin/") != u {
				t.Error("unit differs from deploy/systemd beyond the binary path")
			}

			c := read(t, filepath.Join(root, conf))
			if strings.Contains(c, "\n---") || strings.Contains(c, "TWO YAML documents") {
				t.Errorf("starter %s holds more than its document:\n%s", conf, c)
			}
			tt.checkDoc(t, conf, []byte(c))

			// --root leaves the machine alone and says what it would do.
			for _, s := range []string{
				"would run: useradd --system",
				"would run: chown root:peerport " + filepath.Join(root, conf),
				"would run: systemctl daemon-reload",
				"systemctl enable --now peerport-" + tt.service + ".service",
			} {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q", s)
				}
			}

			// Again, after the operator edited the config: it is kept, the
			// unit and binaries are replaced.
			edited := []byte("# mine\n")
			if err := os.WriteFile(filepath.Join(root, conf), edited, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, unit), []byte("stale"), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err = install(t, "--service", tt.service, "--root", root, "--prefix", "/opt/peerport", "--binaries", bins)
			if err != nil {
				t.Fatalf("install.sh again: %v\n%s", err, out)
			}
			if got := read(t, filepath.Join(root, conf)); got != string(edited) {
				t.Errorf("second install changed the edited config: %q", got)
			}
			if !strings.Contains(out, "kept the existing") {
				t.Errorf("second install does not say it kept the config:\n%s", out)
			}
			if read(t, filepath.Join(root, unit)) != u {
				t.Error("second install did not replace the unit")
			}
		})
	}
}

// The form of the lead's brief: --prefix inside the root too. DESTDIR-style,
// the files land under root+prefix and the unit names prefix.
func TestInstallServicePrefixUnderRoot(t *testing.T) {
	root := t.TempDir()
	prefix := filepath.Join(root, "usr")
	out, err := install(t, "--service", "agent", "--root", root, "--prefix", prefix, "--binaries", fakeBinaries(t))
	if err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, prefix, "bin", "agent")); err != nil {
		t.Error(err)
	}
	u := read(t, filepath.Join(root, "etc/systemd/system/peerport-agent.service"))
	if !strings.Contains(u, "ExecStart="+prefix+"/bin/agent up") {
		t.Errorf("unit does not name %s/bin/agent:\n%s", prefix, u)
	}
}

func TestInstallErrors(t *testing.T) {
	bins := fakeBinaries(t)
	empty := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown service", []string{"--service", "relay", "--root", "ROOT"}, `--service takes agent or broker, not "relay"`},
		{"root without service", []string{"--root", "ROOT", "--binaries", bins}, "--root goes with --service"},
		{"relative prefix", []string{"--service", "agent", "--root", "ROOT", "--prefix", "usr"}, "--prefix must be an absolute path"},
		{"missing value", []string{"--service"}, "--service needs a value"},
		{"empty value", []string{"--prefix="}, "--prefix needs a value"},
		{"unknown option", []string{"--sevrice", "agent"}, "unknown argument: --sevrice"},
		{"binaries missing", []string{"--service", "agent", "--root", "ROOT", "--binaries", empty}, "no executable agent in it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			args := slices.Clone(tt.args)
			for i, a := range args {
				if a == "ROOT" {
					args[i] = root
				}
			}
			out, err := install(t, args...)
			if err == nil {
				t.Fatalf("install.sh %v succeeded:\n%s", args, out)
			}
			if !strings.Contains(out, "install.sh: ") || !strings.Contains(out, tt.want) {
				t.Errorf("output lacks %q:\n%s", tt.want, out)
			}
			if got := tree(t, root); len(got) != 0 {
				t.Errorf("a failed install left files: %v", got)
			}
		})
	}
}

func TestInstallServiceNeedsRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root")
	}
	out, err := install(t, "--service", "agent", "--binaries", fakeBinaries(t))
	if err == nil || !strings.Contains(out, "run it as root") {
		t.Errorf("install.sh --service as a user: %v\n%s", err, out)
	}
}

// TestUnitsVerify runs systemd-analyze verify on both units, with the
// binaries they name pointed at stand-ins.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze")
	}
	bins := fakeBinaries(t)
	dir := t.TempDir()
	var units []string
	for _, name := range []string{"peerport-agent.service", "peerport-broker.service"} {
		u := strings.ReplaceAll(read(t, filepath.Join("systemd", name)), "/usr/local/bin/", bins+"/")
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(u), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, units...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil || out.Len() > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out.String())
	}
}
