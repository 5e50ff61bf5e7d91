package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSaveResultsKeepsSections: a run writes the sections of the parts it
// measured and keeps every other one, in the file's fixed order.
func TestSaveResultsKeepsSections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "RESULTS.md")
	save := func(parts ...string) string {
		t.Helper()
		r := &Report{}
		for _, p := range parts {
			r.Figures = append(r.Figures, Figure{Part: p, Name: "figure of " + p, Value: 1})
		}
		if err := saveResults(path, r); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	save("throughput", punchPart)
	if err := os.WriteFile(path, []byte(strings.TrimRight(save(opsPart), "\n")+"\n\n"+history.begin()+"\nby hand\n"+history.end()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := save(clusterPart)
	sec := func(name string) string {
		for _, s := range sections {
			if s.name == name {
				return s.begin()
			}
		}
		t.Fatalf("no section %q", name)
		return ""
	}
	want := []string{"figure of throughput", sec("punch"), "figure of " + punchPart, sec("ops"), "figure of " + opsPart,
		sec("cluster"), "figure of " + clusterPart, history.begin(), "by hand"}
	at := 0
	for _, w := range want {
		i := strings.Index(got[at:], w)
		if i < 0 {
			t.Fatalf("results lack %q after offset %d, or have it out of order:\n%s", w, at, got)
		}
		at += i + len(w)
	}
	got = save(frpPart, holPart, relayCostPart)
	for _, name := range []string{"frp", "hol", "relaycost"} {
		if !strings.Contains(got, sec(name)) {
			t.Errorf("no section %s:\n%s", name, got)
		}
	}
	if !strings.Contains(got, "figure of "+clusterPart) || !strings.Contains(got, "figure of "+opsPart) {
		t.Errorf("a run of frp, hol and relaycost must keep the other sections:\n%s", got)
	}
	got = save("latency")
	if strings.Contains(got, "figure of throughput") || !strings.Contains(got, "figure of latency") || !strings.Contains(got, "figure of "+clusterPart) || !strings.Contains(got, "by hand") ||
		!strings.Contains(got, "figure of "+holPart) {
		t.Errorf("a loopback run must replace the top and keep the sections:\n%s", got)
	}
}
