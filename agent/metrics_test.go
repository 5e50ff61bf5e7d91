package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// metricsAgent is the options of an agent serving metrics on a free
// loopback port, and a function that scrapes it once it listens.
func metricsAgent(t *testing.T) (Options, func() map[string]float64) {
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.InfoLevel)
	scrape := func() map[string]float64 {
		t.Helper()
		var addr string
		for _, e := range hook.AllEntries() {
			if e.Message == "metrics listening" {
				addr, _ = e.Data["listen"].(string)
			}
		}
		if addr == "" {
			t.Fatal("the agent never said where its metrics listen")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("scrape: %s\n%s", resp.Status, b)
		}
		return parseMetrics(t, resp.Body)
	}
	return Options{Log: log, MetricsListen: "127.0.0.1:0"}, scrape
}

// parseMetrics reads the text format into series -> value, a series
// written as Prometheus writes it: name{label="value",...}.
func parseMetrics(t *testing.T, r io.Reader) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// series names one series as the text format writes it: labels sorted.
func metricSeries(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	var pairs []string
	for i := 0; i < len(labels); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	slices.Sort(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// TestMetricsPerShareAndConnect: a sharer and a connector over loopback,
// both scraped: build info, the share's and the connect's series with the
// connections counted, open ones while open, the path and RTT of the
// session, the peer sessions by peer and role, and bytes that grow by what
// flows.
func TestMetricsPerShareAndConnect(t *testing.T) {
	leakCheck(t)
	so, scrapeSharer := metricsAgent(t)
	co, scrapeConn := metricsAgent(t)
	w := newLoopWorld(t, so, co)
	sharerID, connID := w.sharer.ID().Short(), w.conn.ID().Short()
	shareL := []string{"share", "echo"}
	connL := []string{"listen", w.listen, "peer", sharerID, "share", "echo"}
	build := metricSeries("peerport_agent_build_info", "goversion", runtime.Version(), "version", Version)

	// One connection (newLoopWorld's) has come and gone; a second one is open.
	c, err := net.DialTimeout("tcp", w.listen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip := func(n int) {
		t.Helper()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		msg := strings.Repeat("x", n)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	roundTrip(1)
	// The first connection's end is counted once its pipe ended both ways,
	// on each side a moment after the application closed.
	open := metricSeries("peerport_agent_share_connections_open", shareL...)
	connOpen := metricSeries("peerport_agent_connect_connections_open", connL...)
	eventually(t, "one open connection on each side", func() bool {
		return scrapeSharer()[open] == 1 && scrapeConn()[connOpen] == 1
	})
	s0, c0 := scrapeSharer(), scrapeConn()
	for _, tc := range []struct {
		who    string
		m      map[string]float64
		series string
		want   float64
	}{
		{"sharer", s0, build, 1},
		{"connector", c0, build, 1},
		{"sharer", s0, metricSeries("peerport_agent_share_connections_total", shareL...), 2},
		{"sharer", s0, open, 1},
		{"connector", c0, metricSeries("peerport_agent_connect_connections_total", connL...), 2},
		{"connector", c0, connOpen, 1},
		{"connector", c0, metricSeries("peerport_agent_connect_reconnects_total", connL...), 0},
		{"connector", c0, metricSeries("peerport_agent_connect_path", append(connL, "path", "direct")...), 1},
		{"connector", c0, metricSeries("peerport_agent_peer_path", "path", "direct", "peer", sharerID, "relay_kind", "", "role", "connector"), 1},
		{"sharer", s0, metricSeries("peerport_agent_peer_path", "path", "direct", "peer", connID, "relay_kind", "", "role", "sharer"), 1},
		{"connector", c0, metricSeries("peerport_agent_peer_streams", "peer", sharerID, "role", "connector"), 1},
		{"sharer", s0, metricSeries("peerport_agent_peer_paused", "peer", connID, "role", "sharer"), 0},
	} {
		if got, ok := tc.m[tc.series]; !ok || got != tc.want {
			t.Errorf("%s: %s = %v (present %v), want %v", tc.who, tc.series, got, ok, tc.want)
		}
	}
	for _, s := range []string{metricSeries("peerport_agent_connect_rtt_seconds", connL...), metricSeries("peerport_agent_peer_rtt_seconds", "peer", sharerID, "role", "connector")} {
		if v, ok := c0[s]; !ok || v <= 0 {
			t.Errorf("connector: %s = %v (present %v), want a round trip", s, v, ok)
		}
	}
	if _, ok := s0[metricSeries("peerport_agent_connect_path", append(connL, "path", "direct")...)]; ok {
		t.Error("the sharer has a connect's series")
	}

	// What flows shows in the byte counters of share, connect and peer.
	const n = 256 << 10
	roundTrip(n)
	grew := func(who string, before map[string]float64, scrape func() map[string]float64, names ...string) {
		t.Helper()
		eventually(t, who+" byte counters to grow by what flowed", func() bool {
			after := scrape()
			for _, s := range names {
				if after[s]-before[s] < n {
					return false
				}
			}
			return true
		})
	}
	grew("sharer", s0, scrapeSharer,
		metricSeries("peerport_agent_share_received_bytes_total", shareL...), metricSeries("peerport_agent_share_sent_bytes_total", shareL...),
		metricSeries("peerport_agent_peer_received_bytes_total", "peer", connID, "role", "sharer"),
		metricSeries("peerport_agent_peer_sent_bytes_total", "peer", connID, "role", "sharer"),
		"peerport_agent_received_bytes_total", "peerport_agent_sent_bytes_total")
	grew("connector", c0, scrapeConn,
		metricSeries("peerport_agent_connect_received_bytes_total", connL...), metricSeries("peerport_agent_connect_sent_bytes_total", connL...),
		metricSeries("peerport_agent_peer_received_bytes_total", "peer", sharerID, "role", "connector"),
		metricSeries("peerport_agent_peer_sent_bytes_total", "peer", sharerID, "role", "connector"))

	c.Close()
	eventually(t, "the open connection's end in the metrics", func() bool {
		return scrapeSharer()[metricSeries("peerport_agent_share_connections_open", shareL...)] == 0 &&
			scrapeConn()[metricSeries("peerport_agent_connect_connections_open", connL...)] == 0
	})
}

// TestMetricsMergeDuplicates: two samples with one label set (two
// connects to one share not listening yet, two sessions of one peer) make
// one series, or the registry would refuse the whole scrape.
func TestMetricsMergeDuplicates(t *testing.T) {
	c := &statusCollector{}
	c.addSeries(seriesDef{"x", "x", []string{"k"}, func(AgentStatus) []metricSample {
		return []metricSample{{[]string{"a"}, 1}, {[]string{"b"}, 5}, {[]string{"a"}, 2}, {[]string{"b"}, 7}}
	}}, prometheus.GaugeValue, mergeSum)
	c.addSeries(seriesDef{"rtt", "rtt", []string{"k"}, func(AgentStatus) []metricSample {
		return []metricSample{{[]string{"a"}, 0.002}, {[]string{"a"}, 0.009}, {[]string{"a"}, 0.001}}
	}}, prometheus.GaugeValue, math.Max)
	for i, want := range [][]metricSample{{{[]string{"a"}, 3}, {[]string{"b"}, 12}}, {{[]string{"a"}, 0.009}}} {
		if got := c.series[i].samples(AgentStatus{}); !reflect.DeepEqual(got, want) {
			t.Errorf("series %d: %v, want %v", i, got, want)
		}
	}
}
