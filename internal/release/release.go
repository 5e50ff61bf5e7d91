// Package release packs peerport's release archives for scripts/release:
// one peerport_VERSION_OS_ARCH.tar.gz per target (.zip for Windows) holding
// the agent and broker binaries, README.md and LICENSE under one top-level
// directory of the same name, and a SHA256SUMS file in sha256sum's format
// over them. Archives are reproducible: every entry has the same owner (0),
// mode 0755 or 0644, and one modification time, so the same binaries give
// the same bytes and the same sums.
//
// Layout (peerport_v1.2.0_linux_amd64.tar.gz):
//
//	peerport_v1.2.0_linux_amd64/
//	peerport_v1.2.0_linux_amd64/agent        0755
//	peerport_v1.2.0_linux_amd64/broker       0755
//	peerport_v1.2.0_linux_amd64/README.md    0644
//	peerport_v1.2.0_linux_amd64/LICENSE      0644
//
// SHA256SUMS, one line per archive, checked with `sha256sum -c SHA256SUMS`
// (`shasum -a 256 -c` on macOS):
//
//	<64 hex digits><two spaces><archive file name>
package release

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Targets are the GOOS/GOARCH pairs a release is built for; scripts/release
// keeps the same list.
var Targets = []string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64", "windows/amd64"}

// ArchiveName is the file name of a target's archive, e.g.
// peerport_v1.2.0_windows_amd64.zip.
func ArchiveName(version, goos, goarch string) string {
	ext := ".tar.gz"
	if goos == "windows" {
		ext = ".zip"
	}
	return fmt.Sprintf("peerport_%s_%s_%s%s", version, goos, goarch, ext)
}

// Archive writes out, a .tar.gz or .zip by its name, holding files (paths on
// disk) by their base names under a directory named as out without its
// extension. Files with any execute bit are stored 0755, others 0644; every
// entry carries mtime.
func Archive(out string, files []string, mtime time.Time) (err error) {
	base := filepath.Base(out)
	var top, kind string
	switch {
	case strings.HasSuffix(base, ".tar.gz"):
		top, kind = strings.TrimSuffix(base, ".tar.gz"), "tar.gz"
	case strings.HasSuffix(base, ".zip"):
		top, kind = strings.TrimSuffix(base, ".zip"), "zip"
	default:
		return fmt.Errorf("archive %s: name must end in .tar.gz or .zip", out)
	}
	if top == "" {
		return fmt.Errorf("archive %s: empty name", out)
	}
	seen := map[string]bool{}
	for _, f := range files {
		b := filepath.Base(f)
		if seen[b] {
			return fmt.Errorf("archive %s: two files named %s", out, b)
		}
		seen[b] = true
	}
	mtime = mtime.UTC().Truncate(time.Second)
	tmp := out + ".tmp"
	w, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer func() {
		if err != nil {
			w.Close()
			os.Remove(tmp)
		}
	}()
	if kind == "zip" {
		err = writeZip(w, top, files, mtime)
	} else {
		err = writeTarGz(w, top, files, mtime)
	}
	if err != nil {
		return fmt.Errorf("archive %s: %w", out, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("archive %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("archive %s: %w", out, err)
	}
	return nil
}

// entry is one file to pack: its name in the archive, mode and contents.
type entry struct {
	name string
	mode os.FileMode
	f    *os.File
	size int64
}

func open(top, file string) (entry, error) {
	f, err := os.Open(file)
	if err != nil {
		return entry{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return entry{}, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return entry{}, fmt.Errorf("%s: not a regular file", file)
	}
	mode := os.FileMode(0o644)
	if fi.Mode()&0o111 != 0 {
		mode = 0o755
	}
	return entry{name: path.Join(top, filepath.Base(file)), mode: mode, f: f, size: fi.Size()}, nil
}

func writeTarGz(w io.Writer, top string, files []string, mtime time.Time) error {
	gz := gzip.NewWriter(w) // no name, zero time: the same bytes every run
	tw := tar.NewWriter(gz)
	hdr := func(name string, mode os.FileMode, size int64, typ byte) *tar.Header {
		return &tar.Header{Typeflag: typ, Name: name, Mode: int64(mode), Size: size, ModTime: mtime, Format: tar.FormatUSTAR}
	}
	if err := tw.WriteHeader(hdr(top+"/", 0o755, 0, tar.TypeDir)); err != nil {
		return err
	}
	for _, file := range files {
		e, err := open(top, file)
		if err != nil {
			return err
		}
		err = tw.WriteHeader(hdr(e.name, e.mode, e.size, tar.TypeReg))
		if err == nil {
			_, err = io.Copy(tw, e.f)
		}
		e.f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

func writeZip(w io.Writer, top string, files []string, mtime time.Time) error {
	zw := zip.NewWriter(w)
	dir := &zip.FileHeader{Name: top + "/", Modified: mtime}
	dir.SetMode(os.ModeDir | 0o755)
	if _, err := zw.CreateHeader(dir); err != nil {
		return err
	}
	for _, file := range files {
		e, err := open(top, file)
		if err != nil {
			return err
		}
		h := &zip.FileHeader{Name: e.name, Method: zip.Deflate, Modified: mtime}
		h.SetMode(e.mode)
		fw, err := zw.CreateHeader(h)
		if err == nil {
			_, err = io.Copy(fw, e.f)
		}
		e.f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	}
	return zw.Close()
}

// Sums writes out in sha256sum's format: one line per file, sorted by base
// name, naming each by its base name (so the check runs in out's directory).
func Sums(out string, files []string) error {
	sorted := append([]string(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return filepath.Base(sorted[i]) < filepath.Base(sorted[j]) })
	var b strings.Builder
	for _, file := range sorted {
		sum, err := sumFile(file)
		if err != nil {
			return fmt.Errorf("sums: %w", err)
		}
		fmt.Fprintf(&b, "%s  %s\n", sum, filepath.Base(file))
	}
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("sums: %w", err)
	}
	return nil
}

func sumFile(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// CheckSums verifies a SHA256SUMS file against the files beside it and
// returns the names it lists.
func CheckSums(sums string) ([]string, error) {
	b, err := os.ReadFile(sums)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(sums)
	var names []string
	var errs []error
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		want, name, ok := strings.Cut(line, "  ")
		if !ok || len(want) != 64 || name == "" || strings.ContainsAny(name, `/\`) {
			errs = append(errs, fmt.Errorf("%s:%d: not \"<sha256>  <name>\": %q", sums, i+1, line))
			continue
		}
		names = append(names, name)
		got, err := sumFile(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", sums, i+1, err))
		} else if got != want {
			errs = append(errs, fmt.Errorf("%s:%d: %s: sha256 %s, file has %s", sums, i+1, name, want, got))
		}
	}
	return names, errors.Join(errs...)
}
