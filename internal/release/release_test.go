package release

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// member is one archive entry as read back.
type member struct {
	mode    os.FileMode
	mtime   time.Time
	content string
}

func readTarGz(t *testing.T, file string) map[string]member {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	got := map[string]member{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, h.Size) // read whole: io.ReadAll's regrowth is slow under -race
		if _, err := io.ReadFull(tr, b); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d/%d %q/%q, want 0/0 and no names", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		got[h.Name] = member{mode: h.FileInfo().Mode(), mtime: h.ModTime, content: string(b)}
	}
}

func readZip(t *testing.T, file string) map[string]member {
	t.Helper()
	zr, err := zip.OpenReader(file)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	got := map[string]member{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, f.UncompressedSize64)
		_, err = io.ReadFull(rc, b)
		rc.Close()
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		got[f.Name] = member{mode: f.Mode(), mtime: f.Modified, content: string(b)}
	}
	return got
}

func TestArchive(t *testing.T) {
	src := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	files := []string{write("agent", "AGENT", 0o700), write("README.md", "readme", 0o600)}
	mtime := time.Date(2026, 3, 1, 12, 0, 0, 500, time.FixedZone("X", 3600))
	want := mtime.UTC().Truncate(time.Second)
	for _, tc := range []struct {
		name string
		read func(*testing.T, string) map[string]member
	}{
		{"peerport_v1_linux_amd64.tar.gz", readTarGz},
		{"peerport_v1_windows_amd64.zip", readZip},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), tc.name)
			if err := Archive(out, files, mtime); err != nil {
				t.Fatal(err)
			}
			top := strings.TrimSuffix(strings.TrimSuffix(tc.name, ".tar.gz"), ".zip")
			got := tc.read(t, out)
			wants := map[string]member{
				top + "/":          {mode: os.ModeDir | 0o755},
				top + "/agent":     {mode: 0o755, content: "AGENT"},
				top + "/README.md": {mode: 0o644, content: "readme"},
			}
			if len(got) != len(wants) {
				t.Errorf("entries %v, want %d", got, len(wants))
			}
			for name, w := range wants {
				g, ok := got[name]
				if !ok {
					t.Errorf("no entry %s in %v", name, got)
					continue
				}
				if g.mode != w.mode || g.content != w.content || !g.mtime.Equal(want) {
					t.Errorf("%s: mode %v, content %q, time %v; want %v, %q, %v", name, g.mode, g.content, g.mtime, w.mode, w.content, want)
				}
			}
			// Reproducible: the same inputs give the same bytes.
			again := filepath.Join(t.TempDir(), tc.name)
			if err := Archive(again, files, mtime); err != nil {
				t.Fatal(err)
			}
			a, _ := os.ReadFile(out)
			b, _ := os.ReadFile(again)
			if !bytes.Equal(a, b) {
				t.Error("two archives of the same files differ")
			}
		})
	}
}

func TestArchiveRefuses(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a", "agent")
	b := filepath.Join(dir, "b", "agent")
	for _, p := range []string{a, b} {
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, nil, 0o755)
	}
	for _, tc := range []struct {
		out   string
		files []string
		want  string
	}{
		{"x.tar.bz2", []string{a}, "must end in .tar.gz or .zip"},
		{".zip", []string{a}, "empty name"},
		{"x.zip", []string{a, b}, "two files named agent"},
		{"x.tar.gz", []string{filepath.Join(dir, "missing")}, "no such file"},
		{"x.tar.gz", []string{dir}, "not a regular file"},
	} {
		out := filepath.Join(dir, tc.out)
		err := Archive(out, tc.files, time.Now())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Archive(%s, %v): %v, want %q", tc.out, tc.files, err, tc.want)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("Archive(%s) failed but left the file", tc.out)
		}
		if _, serr := os.Stat(out + ".tmp"); serr == nil {
			t.Errorf("Archive(%s) left %s.tmp", tc.out, tc.out)
		}
	}
}

func TestSums(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"b.zip": "bee", "a.tar.gz": ""} {
		os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
	}
	sums := filepath.Join(dir, "SHA256SUMS")
	if err := Sums(sums, []string{filepath.Join(dir, "b.zip"), filepath.Join(dir, "a.tar.gz")}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(sums)
	// sha256("") and sha256("bee"), as sha256sum prints them.
	want := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.tar.gz\n" +
		"62cb81b5904a262ffaeed02abef36bfc540b09f964b8b0b636662f77ffce6714  b.zip\n"
	if got := string(b); got != want {
		t.Errorf("SHA256SUMS:\n%s\nwant\n%s", got, want)
	}
	names, err := CheckSums(sums)
	if err != nil || strings.Join(names, ",") != "a.tar.gz,b.zip" {
		t.Errorf("CheckSums: %v, %v", names, err)
	}
	os.WriteFile(filepath.Join(dir, "b.zip"), []byte("changed"), 0o644)
	if _, err := CheckSums(sums); err == nil || !strings.Contains(err.Error(), "SHA256SUMS:2: b.zip: sha256") {
		t.Errorf("CheckSums after a change: %v, want line 2 named", err)
	}
}
