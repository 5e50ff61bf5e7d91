package secure

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	first, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if first.ID().IsZero() {
		t.Fatal("created identity has a zero ID")
	}
	// The key is a secret: nobody but the owner may read it or list the dir.
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o700 {
		t.Errorf("state dir mode %v, want 0700", got)
	}
	st, err = os.Stat(filepath.Join(dir, IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode %v, want 0600", got)
	}

	second, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if second.ID() != first.ID() {
		t.Errorf("loaded ID %s, created %s", second.ID(), first.ID())
	}
	if !second.PrivateKey().Equal(first.PrivateKey()) {
		t.Error("loaded private key differs from the created one")
	}

	// The atomic write leaves no temporary file behind.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != IdentityFile {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("state dir holds %v, want only %s", names, IdentityFile)
	}

	other, err := LoadOrCreateIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if other.ID() == first.ID() {
		t.Error("two state dirs got the same identity")
	}
}

func TestLoadKeyUnusable(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	good, err := os.ReadFile(filepath.Join(mustIdentityDir(t), IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(good)

	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"garbage", []byte("not a key at all\n")},
		{"truncated pem", good[:len(good)/2]},
		{"wrong pem type", pemOf("EC PRIVATE KEY", blk.Bytes)},
		{"garbage der", pemOf("PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x00})},
		{"truncated der", pemOf("PRIVATE KEY", blk.Bytes[:len(blk.Bytes)-1])},
		{"not ed25519", pemOf("PRIVATE KEY", ecDER)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), IdentityFile)
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateIdentity(filepath.Dir(path))
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("got %v, want ErrBadKey", err)
			}
			// A broken key must never be silently replaced: that would
			// change the agent's identity behind its user's back.
			after, _ := os.ReadFile(path)
			if string(after) != string(tt.data) {
				t.Error("unusable key file was overwritten")
			}
		})
	}
}

func TestLoadKeyUnreadable(t *testing.T) {
	// A directory where the key should be is an I/O error, not a bad key.
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, IdentityFile), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateIdentity(dir)
	if err == nil || errors.Is(err, ErrBadKey) {
		t.Fatalf("got %v, want an I/O error that is not ErrBadKey", err)
	}
}

func mustIdentityDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := LoadOrCreateIdentity(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newID(t testing.TB) *Identity {
	t.Helper()
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestAgentIDText(t *testing.T) {
	id := newID(t).ID()
	s := id.String()
	if len(s) != 52 || s != strings.ToLower(s) {
		t.Fatalf("String() = %q, want 52 lowercase characters", s)
	}
	if !strings.HasPrefix(s, id.Short()) || len(id.Short()) != 12 {
		t.Errorf("Short() = %q, want the first 12 characters of %q", id.Short(), s)
	}
	for _, in := range []string{s, strings.ToUpper(s), "  " + s + "\n"} {
		got, err := ParseAgentID(in)
		if err != nil || got != id {
			t.Errorf("ParseAgentID(%q) = %v, %v; want %v", in, got, err, id)
		}
	}

	// Text marshalling makes IDs usable as JSON strings and map keys.
	type doc struct {
		ID   AgentID            `json:"id"`
		ByID map[AgentID]string `json:"by_id"`
	}
	in := doc{ID: id, ByID: map[AgentID]string{id: "x"}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"id":"`+s+`"`) {
		t.Errorf("JSON %s does not carry the text form", b)
	}
	var out doc
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.ID != id || out.ByID[id] != "x" {
		t.Errorf("JSON round trip: got %+v, want %+v", out, in)
	}
	if err := json.Unmarshal([]byte(`{"id":"nope"}`), &out); !errors.Is(err, ErrBadAgentID) {
		t.Errorf("unmarshal of a bad ID: got %v, want ErrBadAgentID", err)
	}

	if !(AgentID{}).IsZero() || id.IsZero() {
		t.Error("IsZero wrong")
	}
}

func TestParseAgentIDErrors(t *testing.T) {
	s := newID(t).ID().String()
	for name, in := range map[string]string{
		"empty":        "",
		"one short":    s[:51],
		"one long":     s + "a",
		"eight short":  s[:44],
		"digit 1":      "1" + s[1:],
		"digit 0":      s[:10] + "0" + s[11:],
		"digit 8":      s[:10] + "8" + s[11:],
		"padding":      s + "====",
		"base64":       strings.Repeat("A", 43),
		"inner space":  s[:20] + " " + s[21:],
		"hex":          strings.Repeat("ab", 32),
		"punctuation":  s[:51] + "-",
		"whitespace":   "   ",
		"long garbage": strings.Repeat("a", 1000),
	} {
		if _, err := ParseAgentID(in); !errors.Is(err, ErrBadAgentID) {
			t.Errorf("%s: ParseAgentID(%q) = %v, want ErrBadAgentID", name, in, err)
		}
	}
}

// TestConcurrentFirstStart starts several processes together on a fresh
// state dir, round after round: all of them must run under one identity,
// the one on disk. With the key written by rename, each process kept the
// key it generated and the last rename won.
func TestConcurrentFirstStart(t *testing.T) {
	const rounds, procs = 10, 6
	for round := range rounds {
		dir := filepath.Join(t.TempDir(), "state")
		var (
			cmds   []*exec.Cmd
			outs   []*bytes.Buffer
			starts []io.WriteCloser
		)
		for range procs {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childStateDir+"="+dir)
			out := new(bytes.Buffer)
			cmd.Stdout, cmd.Stderr = out, out
			in, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds, outs, starts = append(cmds, cmd), append(outs, out), append(starts, in)
		}
		for _, in := range starts {
			in.Write([]byte{1})
			in.Close()
		}
		got := map[string]int{}
		for i, cmd := range cmds {
			if err := cmd.Wait(); err != nil {
				t.Fatalf("round %d: process %d: %v: %s", round, i, err, outs[i])
			}
			got[strings.TrimSpace(outs[i].String())]++
		}
		onDisk, err := LoadOrCreateIdentity(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[onDisk.ID().String()] != procs {
			t.Fatalf("round %d: identities %v, on disk %s: want all %d processes under the one on disk", round, got, onDisk.ID(), procs)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, ".tmp-*")); len(left) > 0 {
			t.Errorf("round %d: temporary files left: %v", round, left)
		}
	}
}
