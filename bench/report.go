package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

func printTable(w io.Writer, r *Report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "part\tfigure\tvalue\tbaseline (same run)\tratio\ttarget")
	for _, f := range r.Figures {
		base, ratio := "-", "-"
		if f.Baseline != 0 {
			base = fmt.Sprintf("%.4g %s (%s)", f.Baseline, f.Unit, f.BaseName)
			ratio = fmt.Sprintf("%.2fx", f.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.4g %s\t%s\t%s\t%s\n", f.Part, f.Name, f.Value, f.Unit, base, ratio, f.Target)
	}
	tw.Flush()
}

// writeResults saves the table, the machine and the JSON as markdown.
func writeResults(path string, r *Report, js []byte) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmark results\n\nLast run of `go run ./bench` (see bench/main.go for flags). Every figure is\n"+
		"beside its baseline measured in the same run; compare ratios, not absolute values.\n"+
		"Sections at the end, each kept by runs that do not write it: the NAT lab (punch, relay, wan),\n"+
		"operations (ops), and history (earlier figures kept for comparison, by hand).\n\n")
	writeFigures(&b, r, true)
	fmt.Fprintf(&b, "\n```json\n%s\n```\n", js)
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// writeFigures writes the machine, the table of figures beside their
// baselines, and the notes; withPart names each note's part too.
func writeFigures(b *strings.Builder, r *Report, withPart bool) {
	m := r.Machine
	fmt.Fprintf(b, "- date: %s\n- machine: %d CPUs, %s, kernel %s\n- go: %s\n\n", r.Date, m.CPUs, m.CPU, m.Kernel, m.Go)
	b.WriteString("| part | figure | value | baseline (same run) | ratio | target |\n|---|---|---|---|---|---|\n")
	for _, f := range r.Figures {
		base, ratio := "-", "-"
		if f.Baseline != 0 {
			base = fmt.Sprintf("%.4g %s (%s)", f.Baseline, f.Unit, f.BaseName)
			ratio = fmt.Sprintf("%.2fx", f.Ratio)
		}
		fmt.Fprintf(b, "| %s | %s | %.4g %s | %s | %s | %s |\n", f.Part, f.Name, f.Value, f.Unit, base, ratio, f.Target)
	}
	b.WriteString("\nNotes:\n\n")
	for _, f := range r.Figures {
		switch {
		case f.Note == "":
		case withPart:
			fmt.Fprintf(b, "- %s, %s: %s\n", f.Part, f.Name, f.Note)
		default:
			fmt.Fprintf(b, "- %s: %s\n", f.Name, f.Note)
		}
	}
}

// The history section of RESULTS.md keeps earlier figures for comparison,
// such as the before and after of a change, written by hand; every run
// keeps it, at the end of the file.
const (
	historyBegin = "<!-- history:begin -->"
	historyEnd   = "<!-- history:end -->"
)

// saveKeepingHistory is saveAll that keeps the history section.
func saveKeepingHistory(path string, rep *Report) error {
	old, _ := os.ReadFile(path)
	_, hist := cutSection(string(old), historyBegin, historyEnd)
	if err := saveAll(path, rep); err != nil {
		return err
	}
	if hist == "" {
		return nil
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s, _ := cutSection(string(cur), historyBegin, historyEnd)
	return os.WriteFile(path, []byte(strings.TrimRight(s, "\n")+"\n\n"+hist), 0o644)
}
