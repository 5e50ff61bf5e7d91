package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
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

// topSection is the top of the results file: the figures of no section.
func topSection(r *Report) string {
	js, _ := json.MarshalIndent(r, "", "  ")
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmark results\n\nLast run of `go run ./bench` (see bench/main.go for flags). Every figure is\n"+
		"beside its baseline measured in the same run; compare ratios, not absolute values.\n"+
		"Sections at the end, each kept by runs that do not write it: the NAT lab (punch, relay, wan, path),\n"+
		"port mapping and IPv6 (portmap), operations (ops), the broker cluster (cluster), frp as a baseline (frp),\n"+
		"head-of-line blocking (hol), the relays' cost to the broker (relaycost), and history (earlier figures kept for comparison, by hand).\n"+
		"CPU profiles: `-cpuprofile-dir DIR` (bench/profile.go; read with `go tool pprof -top FILE`, see the frp section and docs/development.md).\n\n")
	writeFigures(&b, r, true)
	fmt.Fprintf(&b, "\n```json\n%s\n```\n", js)
	return b.String()
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

// A section of RESULTS.md holds the figures of some parts, at the end of
// the file in this order: a run that measured none of its parts keeps the
// section the file had, so a loopback run keeps the last lab figures and a
// lab run keeps the loopback ones. The figures of no section's parts are
// the top of the file, kept the same way.
type section struct {
	name  string // its markers: <!-- name:begin --> ... <!-- name:end -->
	parts []string
	title string
	about string
}

var sections = []section{
	{name: "punch", parts: []string{punchPart, relayPart, wanPart, pathPart},
		title: "Hole punching, the relay and the WAN path in the NAT lab (`go run ./bench -only punch,relay,wan`)",
		about: "Punch: cone-cone timing at 0 and 50 ms RTT, then every topology of the matrix several times\n" +
			"(success = the expected outcome; run counts in the notes). Relay: the broker's two relays (TURN,\n" +
			"and the broker relay on its own TLS port) beside the punched path on the same cone-cone lab\n" +
			"(connect time, iperf3, round trips, broker CPU per relayed GB), symmetric-cone as users meet it,\n" +
			"and a network that lets out only TCP 443 (broker on 443). WAN: the tunnel against raw TCP on the same public-cone path at 0, 20 and 50 ms RTT\n" +
			"(iperf3, round trips). Needs root and the NAT lab; see bench/punch.go, relay.go and wan.go."},
	{name: "portmap", parts: []string{portmapPart},
		title: "More direct paths: port mapping and IPv6 in the NAT lab (`go run ./bench -only portmap`)",
		about: "Issue 18: the topologies relayed without port mappings and IPv6 (symmetric-cone, cone-symmetric,\n" +
			"symmetric-symmetric with miniupnpd on every symmetric gateway, symmetric-symmetric dual-stack), with\n" +
			"cone-cone and firewall-firewall, before (--no-portmap; IPv4 only) and after (defaults): the share of\n" +
			"runs ending direct and the time to the session. Needs root and the NAT lab; see bench/portmap.go."},
	{name: "ops", parts: []string{opsPart},
		title: "Operations: broker restart, idle RSS of `agent up` (`go run ./bench -only ops`)",
		about: "Issue 6's closing-note figures, with the built binaries on 127.0.0.1; see bench/ops.go."},
	{name: "cluster", parts: []string{clusterPart},
		title: "A broker cluster over NATS (`go run ./bench -only cluster`)",
		about: "Issue 17: one broker alone beside three nodes over a real nats-server, on 127.0.0.1 (introductions\n" +
			"across nodes and on one node, memory per agent, NATS traffic, re-homing after a SIGKILL), then the\n" +
			"presence design not taken (JetStream KV with a TTL) beside the one taken (a subject per agent); see\n" +
			"bench/cluster.go and clusterstore.go."},
	{name: "frp", parts: []string{frpPart},
		title: "peerport beside frp (`PEERPORT_BENCH_FRP=DIR go run ./bench -only frp`)",
		about: "Issue 20: frp v0.70.1 (frps and frpc, two processes on 127.0.0.1, TLS forced on frps and on in frpc, tcpMux on, a plain\n" +
			"TCP proxy per target) beside a fresh pair of peerport agents on the same targets, interleaved rounds, who goes first\n" +
			"alternating. Each peerport figure has frp's as its baseline: iperf3 1 and 8 streams; CPU seconds per GB of both processes\n" +
			"(connector+sharer against frps+frpc) at 1, 2, 4, 8 and 16 streams; 1-byte round trips, also against the floor of two\n" +
			"plain relay processes (io.Copy, no TLS, no mux) and raw TCP; RSS growth per idle forwarded connection, both processes\n" +
			"summed (fresh processes). No process is profiled while measured; see bench/frp.go.\n\n" +
			"frp built from source (the module zip lacks the web assets, hence the placeholder; DIR is then PEERPORT_BENCH_FRP),\n" +
			"after `go mod download github.com/fatedier/frp@v0.70.1` in a scratch module:\n\n" +
			"    cp -r $(go env GOMODCACHE)/github.com/fatedier/frp@v0.70.1 /tmp/frpsrc && chmod -R u+w /tmp/frpsrc && cd /tmp/frpsrc &&\n" +
			"    mkdir -p web/frps/dist web/frpc/dist && echo '<html></html>' > web/frps/dist/index.html &&\n" +
			"    cp web/frps/dist/index.html web/frpc/dist/ && go build -o DIR/frps ./cmd/frps && go build -o DIR/frpc ./cmd/frpc\n\n" +
			"Profiles: with `-cpuprofile-dir DIR`, frp-8streams-frps.pprof and frp-8streams-frpc.pprof (frp's pprof endpoints during\n" +
			"one 8-stream run), frp-peerport-8streams-{sharer,connector}.pprof (a fresh pair of agents on the same load), and from the\n" +
			"throughput part throughput-{1,8}streams-{sharer,connector}.pprof (a fresh pair per stream count, that count alone).\n" +
			"Read one with `go tool pprof -top FILE` (flat CPU per function; `-cum` for time with callees), compare two with\n" +
			"`go tool pprof -top -diff_base BASE FILE`; the bench prints the GB each profiled pair carried, to put them per byte."},
	{name: "hol", parts: []string{holPart},
		title: "Head-of-line blocking across one session's streams (`go run ./bench -only hol`)",
		about: "Issue 20: through ONE peer session (one `agent connect` to one `agent share` of a small server, bench/hol.go), 50\n" +
			"concurrent request/response streams (64 bytes each way, one request per stream every 10 ms), timed alone and beside one bulk\n" +
			"stream saturating the session, upload (the requests' direction) and download (the answers'). Baseline of each: the same\n" +
			"streams alone on the same path; the same load straight to the server (raw TCP) is the reference rows."},
	{name: "memback", parts: []string{memBackPart},
		title: "Memory that comes back after bulk load (`go run ./bench -only memback`)",
		about: "Issue 20: a fresh sharer of the iperf3 server and its connector, idle with their peer session up (15 s after a first\n" +
			"iperf3 run, past the agents' own release after 10 s idle); then iperf3 -P 8 through them; then their RSS at 1, 5, 15, 30 and\n" +
			"60 s of idleness. Then the same with one idle connection left open through the session meanwhile (8 bulk streams of the hol\n" +
			"server, 4 up and 4 down): an agent with a connection open never counted as idle before. Baseline of each reading: the same\n" +
			"agent fresh. Target: within 2x of it after a minute; see bench/memback.go."},
	{name: "relaycost", parts: []string{relayCostPart},
		title: "What relaying costs the broker, in the NAT lab (`sudo go run ./bench -only relaycost`)",
		about: "Issue 20: on a cone-cone lab, connectors forced onto the direct path, the TURN relay and the broker relay (--path) take\n" +
			"turns carrying iperf3 at 1 and 8 streams: the broker process's CPU per relayed GB beside both agents' CPU per GB on the\n" +
			"direct path (what the tunnel itself costs), and the agents' own CPU per GB on each relayed path. Then per path a fresh\n" +
			"lab with N idle pairs: the broker's RSS growth per pair. Needs root and the NAT lab; see bench/relaycost.go."},
}

// history is the last section: earlier figures for comparison, such as
// the before and after of a change, written by hand and kept by every run.
var history = section{name: "history"}

func (s section) begin() string { return "<!-- " + s.name + ":begin -->" }
func (s section) end() string   { return "<!-- " + s.name + ":end -->" }

func (s section) render(r *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## %s\n\n%s\nWritten by the last run that included one of its parts.\n\n", s.begin(), s.title, s.about)
	writeFigures(&b, r, false)
	js, _ := json.MarshalIndent(r, "", "  ")
	fmt.Fprintf(&b, "\n```json\n%s\n```\n%s\n", js, s.end())
	return b.String()
}

// saveResults writes rep into the results file at path, section by
// section, keeping what rep has no figures for.
func saveResults(path string, rep *Report) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	top := string(old)
	kept := map[string]string{}
	for _, s := range append(slices.Clone(sections), history) {
		top, kept[s.name] = cutSection(top, s.begin(), s.end())
	}
	pick := func(in func(part string) bool) *Report {
		sub := *rep
		sub.Figures = nil
		for _, f := range rep.Figures {
			if in(f.Part) {
				sub.Figures = append(sub.Figures, f)
			}
		}
		return &sub
	}
	inSection := func(part string) bool {
		return slices.ContainsFunc(sections, func(s section) bool { return slices.Contains(s.parts, part) })
	}
	if r := pick(func(p string) bool { return !inSection(p) }); len(r.Figures) > 0 {
		top = topSection(r)
	}
	var b strings.Builder
	b.WriteString(strings.TrimRight(top, "\n"))
	for _, s := range append(slices.Clone(sections), history) {
		sec := kept[s.name]
		if r := pick(func(p string) bool { return slices.Contains(s.parts, p) }); len(r.Figures) > 0 {
			sec = s.render(r)
		}
		if sec != "" {
			if b.Len() > 0 {
				b.WriteString("\n\n")
			}
			b.WriteString(strings.TrimRight(sec, "\n"))
		}
	}
	b.WriteString("\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
