package release

import (
	"bytes"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestReleaseScript runs scripts/release into a temporary dist: it is the
// check that agent and broker cross-build for every target with CGO off
// (a Linux-only call outside a build tag fails here, not on a teammate's
// Mac), and that each archive holds binaries of the right format and
// architecture, stamped with the version, listed in a valid SHA256SUMS.
//
// On a cold build cache it compiles the standard library and every
// dependency once per target: about 3.5 minutes on a 2-core machine (CI),
// about 10 s warm. Skipped with -short.
func TestReleaseScript(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds five targets")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("scripts/release needs bash")
	}
	const version = "v0.0.0-test"
	dist := t.TempDir()
	start := time.Now()
	cmd := exec.Command("bash", "scripts/release", version)
	cmd.Dir = filepath.Join("..", "..")
	// No VCS stamp (the tree under test may be dirty or owned by another
	// user); everything else is the script's own settings.
	cmd.Env = append(os.Environ(), "DIST="+dist, "GOFLAGS=-buildvcs=false")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/release: %v\n%s", err, out)
	}
	t.Logf("scripts/release in %v:\n%s", time.Since(start).Round(time.Second), out)

	var want []string
	for _, target := range Targets {
		goos, goarch, _ := strings.Cut(target, "/")
		want = append(want, ArchiveName(version, goos, goarch))
	}
	names, err := CheckSums(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Error(err)
	}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("SHA256SUMS lists %v, want %v", names, want)
	}
	ents, _ := os.ReadDir(dist)
	if len(ents) != len(want)+1 {
		t.Errorf("dist holds %d files, want %d archives and SHA256SUMS", len(ents), len(want))
	}
	if sha, err := exec.LookPath("sha256sum"); err == nil {
		c := exec.Command(sha, "-c", "SHA256SUMS")
		c.Dir = dist
		if out, err := c.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c SHA256SUMS: %v\n%s", err, out)
		}
	}

	readme, _ := os.ReadFile(filepath.Join("..", "..", "README.md"))
	for _, target := range Targets {
		goos, goarch, _ := strings.Cut(target, "/")
		t.Run(goos+"_"+goarch, func(t *testing.T) {
			t.Parallel() // reading back 30 MB is slow under -race
			name := ArchiveName(version, goos, goarch)
			top := strings.TrimSuffix(strings.TrimSuffix(name, ".tar.gz"), ".zip")
			var got map[string]member
			if goos == "windows" {
				got = readZip(t, filepath.Join(dist, name))
			} else {
				got = readTarGz(t, filepath.Join(dist, name))
			}
			exe := ""
			if goos == "windows" {
				exe = ".exe"
			}
			if len(got) != 5 {
				t.Errorf("%d entries, want %s/ and agent, broker, README.md, LICENSE", len(got), top)
			}
			if m := got[top+"/README.md"]; m.content != string(readme) {
				t.Errorf("README.md in the archive is not the repository's")
			}
			if _, ok := got[top+"/LICENSE"]; !ok {
				t.Error("no LICENSE")
			}
			for _, cmd := range []string{"agent", "broker"} {
				m, ok := got[top+"/"+cmd+exe]
				if !ok {
					t.Errorf("no %s%s", cmd, exe)
					continue
				}
				if m.mode != 0o755 {
					t.Errorf("%s: mode %v, want 0755", cmd, m.mode)
				}
				if err := checkFormat([]byte(m.content), goos, goarch); err != nil {
					t.Errorf("%s%s: %v", cmd, exe, err)
				}
				if !strings.Contains(m.content, version) {
					t.Errorf("%s%s: version %s not stamped", cmd, exe, version)
				}
				if goos == runtime.GOOS && goarch == runtime.GOARCH {
					checkRuns(t, cmd, exe, m.content, version)
				}
			}
		})
	}
}

// checkFormat tells whether b is an executable for goos/goarch.
func checkFormat(b []byte, goos, goarch string) error {
	r := bytes.NewReader(b)
	switch goos {
	case "linux":
		f, err := elf.NewFile(r)
		if err != nil {
			return fmt.Errorf("not ELF: %w", err)
		}
		want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[goarch]
		if f.Machine != want || f.Type != elf.ET_EXEC {
			return fmt.Errorf("ELF %v %v, want %v executable", f.Machine, f.Type, want)
		}
	case "darwin":
		f, err := macho.NewFile(r)
		if err != nil {
			return fmt.Errorf("not Mach-O: %w", err)
		}
		want := map[string]macho.Cpu{"amd64": macho.CpuAmd64, "arm64": macho.CpuArm64}[goarch]
		if f.Cpu != want || f.Type != macho.TypeExec {
			return fmt.Errorf("Mach-O %v %v, want %v executable", f.Cpu, f.Type, want)
		}
	case "windows":
		f, err := pe.NewFile(r)
		if err != nil {
			return fmt.Errorf("not PE: %w", err)
		}
		if f.Machine != pe.IMAGE_FILE_MACHINE_AMD64 || f.Characteristics&pe.IMAGE_FILE_EXECUTABLE_IMAGE == 0 {
			return fmt.Errorf("PE machine %#x characteristics %#x, want an amd64 executable", f.Machine, f.Characteristics)
		}
	default:
		return fmt.Errorf("no check for %s", goos)
	}
	return nil
}

// checkRuns runs this machine's binary: `CMD version` must print the
// version the script stamped.
func checkRuns(t *testing.T, cmd, exe, content, version string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), cmd+exe)
	if err := os.WriteFile(bin, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if got, want := strings.TrimSpace(string(out)), cmd+" "+version; err != nil || got != want {
		t.Errorf("%s version: %v, %q; want %q", cmd, err, got, want)
	}
}
