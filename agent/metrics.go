package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Agent metrics are read from the same counters status shows, at scrape
// time, from one snapshot per scrape: nothing on the forwarding path does
// extra work for them. They live in a registry of the agent's own, never
// the global one.
//
// Beside the totals there are series per share, per connect and per peer
// session. Their labels stay bounded: share names and connect listen
// addresses come from the agent's own configuration; a peer is its 12
// character short ID, and only live sessions have series (at most
// maxSessions); path is "direct", "relay" or, for a connect without a
// session, "none"; relay_kind "turn", "broker" or empty; role "sharer" or
// "connector". Path and relay_kind label only the *_path gauges: a
// session moves between paths whole, and its byte counters must not start
// a new series when it does; join on (peer, role) or (share, peer,
// listen) to see them by path.

func (a *Agent) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c := &statusCollector{a: a}
	gauge := func(name, help string, f func(AgentStatus) float64) { c.add(name, help, prometheus.GaugeValue, f) }
	counter := func(name, help string, f func(AgentStatus) float64) { c.add(name, help, prometheus.CounterValue, f) }
	gauge("peer_sessions", "Peer sessions up.", func(s AgentStatus) float64 { return float64(len(s.Peers)) })
	gauge("brokers_connected", "Control sessions up.", func(s AgentStatus) float64 {
		n := 0
		for _, b := range s.Brokers {
			if b.Connected {
				n++
			}
		}
		return float64(n)
	})
	gauge("shares", "Shares declared.", func(s AgentStatus) float64 { return float64(len(s.Shares)) })
	gauge("forwards", "Forwards (connects) declared.", func(s AgentStatus) float64 { return float64(len(s.Connects)) })
	gauge("reconnects", "Peer sessions re-made after one was lost, summed over forwards.", func(s AgentStatus) float64 {
		n := 0
		for _, c := range s.Connects {
			n += c.Reconnects
		}
		return float64(n)
	})
	gauge("connections_open", "Forwarded TCP connections open now.", func(AgentStatus) float64 { return float64(a.stats.streams.Load()) })
	counter("connections_total", "Forwarded TCP connections since start.", func(AgentStatus) float64 { return float64(a.stats.total.Load()) })
	counter("received_bytes_total", "Bytes received from peers.", func(AgentStatus) float64 { return float64(a.stats.bytesIn.Load()) })
	counter("sent_bytes_total", "Bytes sent to peers.", func(AgentStatus) float64 { return float64(a.stats.bytesOut.Load()) })
	counter("session_resumes_total", "Peer sessions moved onto a new path, their connections kept.", func(AgentStatus) float64 { return float64(a.resumes.Load()) })
	counter("path_migrations_total", "Of the resumes, moves between direct and relayed paths.", func(AgentStatus) float64 { return float64(a.migrations.Load()) })
	c.addSeries(buildInfo(), prometheus.GaugeValue, mergeKeep)
	c.shareSeries()
	c.connectSeries()
	c.peerSeries()
	reg.MustRegister(c)
	return reg
}

// metricSample is one series of a labelled metric: its label values, in the
// order of the metric's labels, and its value.
type metricSample struct {
	labels []string
	value  float64
}

// mergeFunc combines two samples of one scrape with the same labels: two
// connects with one share, peer and listen (both not listening yet), two
// sessions with one peer (a sharer keeps one per connecting process).
type mergeFunc func(a, b float64) float64

func mergeSum(a, b float64) float64  { return a + b }
func mergeKeep(a, _ float64) float64 { return a }

// seriesMetric is a labelled metric read from the snapshot.
type seriesMetric struct {
	desc   *prometheus.Desc
	kind   prometheus.ValueType
	merge  mergeFunc
	values func(AgentStatus) []metricSample
}

type seriesDef struct {
	name, help string
	labels     []string
	values     func(AgentStatus) []metricSample
}

func (c *statusCollector) addSeries(d seriesDef, kind prometheus.ValueType, m mergeFunc) {
	desc := prometheus.NewDesc(prometheus.BuildFQName("peerport", "agent", d.name), d.help, d.labels, nil)
	c.series = append(c.series, seriesMetric{desc, kind, m, d.values})
}

func buildInfo() seriesDef {
	return seriesDef{"build_info", "Always 1, labelled with the agent's version and the Go version it was built with.",
		[]string{"version", "goversion"}, func(AgentStatus) []metricSample {
			return []metricSample{{[]string{Version, runtime.Version()}, 1}}
		}}
}

// shareSeries: per share, label share.
func (c *statusCollector) shareSeries() {
	labels := []string{"share"}
	each := func(name, help string, kind prometheus.ValueType, f func(ShareStatus) int64) {
		c.addSeries(seriesDef{name, help, labels, func(st AgentStatus) []metricSample {
			out := make([]metricSample, 0, len(st.Shares))
			for _, s := range st.Shares {
				out = append(out, metricSample{[]string{s.Name}, float64(f(s))})
			}
			return out
		}}, kind, mergeSum)
	}
	each("share_connections_open", "Connections open now to the share.", prometheus.GaugeValue, func(s ShareStatus) int64 { return s.Streams })
	each("share_connections_total", "Connections to the share since start.", prometheus.CounterValue, func(s ShareStatus) int64 { return s.Total })
	each("share_received_bytes_total", "Bytes the share received from connectors.", prometheus.CounterValue, func(s ShareStatus) int64 { return s.BytesIn })
	each("share_sent_bytes_total", "Bytes the share sent to connectors.", prometheus.CounterValue, func(s ShareStatus) int64 { return s.BytesOut })
}

// connectSeries: per connect, labels share, peer (the sharer's short ID)
// and listen.
func (c *statusCollector) connectSeries() {
	labels := []string{"share", "peer", "listen"}
	id := func(cs ConnectStatus) []string { return []string{cs.Share, shortID(cs.Peer), cs.Listen} }
	each := func(name, help string, kind prometheus.ValueType, m mergeFunc, f func(ConnectStatus) (float64, bool)) {
		c.addSeries(seriesDef{name, help, labels, func(st AgentStatus) []metricSample {
			out := make([]metricSample, 0, len(st.Connects))
			for _, cs := range st.Connects {
				if v, ok := f(cs); ok {
					out = append(out, metricSample{id(cs), v})
				}
			}
			return out
		}}, kind, m)
	}
	count := func(f func(ConnectStatus) int64) func(ConnectStatus) (float64, bool) {
		return func(cs ConnectStatus) (float64, bool) { return float64(f(cs)), true }
	}
	each("connect_connections_open", "Connections open now through the connect.", prometheus.GaugeValue, mergeSum, count(func(cs ConnectStatus) int64 { return cs.Streams }))
	each("connect_connections_total", "Connections through the connect since start.", prometheus.CounterValue, mergeSum, count(func(cs ConnectStatus) int64 { return cs.Total }))
	each("connect_received_bytes_total", "Bytes the connect received from the sharer.", prometheus.CounterValue, mergeSum, count(func(cs ConnectStatus) int64 { return cs.BytesIn }))
	each("connect_sent_bytes_total", "Bytes the connect sent to the sharer.", prometheus.CounterValue, mergeSum, count(func(cs ConnectStatus) int64 { return cs.BytesOut }))
	each("connect_reconnects_total", "Peer sessions the connect re-made after one was lost.", prometheus.CounterValue, mergeSum, count(func(cs ConnectStatus) int64 { return int64(cs.Reconnects) }))
	each("connect_rtt_seconds", "Round trip of the peer session the connect rides; absent while it has none.", prometheus.GaugeValue, mergeKeep,
		func(cs ConnectStatus) (float64, bool) { return cs.RTTMillis / 1000, cs.Path != "" })
	c.addSeries(seriesDef{"connect_path", "1 for the path the connect's peer session rides: direct, relay, or none while it has no session.",
		append(labels, "path"), func(st AgentStatus) []metricSample {
			out := make([]metricSample, 0, len(st.Connects))
			for _, cs := range st.Connects {
				path := cs.Path
				if path == "" {
					path = "none"
				}
				out = append(out, metricSample{append(id(cs), path), 1})
			}
			return out
		}}, prometheus.GaugeValue, mergeKeep)
}

// peerSeries: per peer session, labels peer (short ID) and role; a peer
// with several sessions (one per connecting process, at a sharer) has
// them summed, and the worst round trip.
func (c *statusCollector) peerSeries() {
	labels := []string{"peer", "role"}
	each := func(name, help string, kind prometheus.ValueType, m mergeFunc, f func(PeerStatus) float64) {
		c.addSeries(seriesDef{name, help, labels, func(st AgentStatus) []metricSample {
			out := make([]metricSample, 0, len(st.Peers))
			for _, p := range st.Peers {
				out = append(out, metricSample{[]string{shortID(p.Peer), p.Role}, f(p)})
			}
			return out
		}}, kind, m)
	}
	each("peer_rtt_seconds", "Round trip of the peer session: a mux ping at its start, every 15 s and at each agent ping.", prometheus.GaugeValue, math.Max,
		func(p PeerStatus) float64 { return p.RTTMillis / 1000 })
	each("peer_streams", "Streams open on the peer session.", prometheus.GaugeValue, mergeSum, func(p PeerStatus) float64 { return float64(p.Streams) })
	each("peer_received_bytes_total", "Bytes received on the peer session; a new session starts again at 0.", prometheus.CounterValue, mergeSum,
		func(p PeerStatus) float64 { return float64(p.BytesIn) })
	each("peer_sent_bytes_total", "Bytes sent on the peer session; a new session starts again at 0.", prometheus.CounterValue, mergeSum,
		func(p PeerStatus) float64 { return float64(p.BytesOut) })
	each("peer_paused", "1 while the peer session has no path and its connections wait for it to resume.", prometheus.GaugeValue, mergeSum,
		func(p PeerStatus) float64 {
			if p.Paused {
				return 1
			}
			return 0
		})
	c.addSeries(seriesDef{"peer_path", "Peer sessions on each path (1 for most peers): direct, or relay with its relay_kind.",
		append(labels, "path", "relay_kind"), func(st AgentStatus) []metricSample {
			out := make([]metricSample, 0, len(st.Peers))
			for _, p := range st.Peers {
				out = append(out, metricSample{[]string{shortID(p.Peer), p.Role, p.Path, p.RelayKind}, 1})
			}
			return out
		}}, prometheus.GaugeValue, mergeSum)
}

// statusCollector turns one Status snapshot per scrape into metrics.
type statusCollector struct {
	a       *Agent
	metrics []statusMetric
	series  []seriesMetric
}

type statusMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(AgentStatus) float64
}

func (c *statusCollector) add(name, help string, kind prometheus.ValueType, f func(AgentStatus) float64) {
	desc := prometheus.NewDesc(prometheus.BuildFQName("peerport", "agent", name), help, nil, nil)
	c.metrics = append(c.metrics, statusMetric{desc, kind, f})
}

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
	for _, m := range c.series {
		ch <- m.desc
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.Status()
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(st))
	}
	for _, m := range c.series {
		for _, s := range m.samples(st) {
			ch <- prometheus.MustNewConstMetric(m.desc, m.kind, s.value, s.labels...)
		}
	}
}

// samples are m's series in st, each label set once: one may come twice
// in a snapshot (see mergeFunc), and the registry refuses a whole scrape with
// a duplicate series.
func (m seriesMetric) samples(st AgentStatus) []metricSample {
	all := m.values(st)
	out := all[:0:0]
	at := make(map[string]int, len(all))
	for _, s := range all {
		k := strings.Join(s.labels, "\xff")
		if i, ok := at[k]; ok {
			out[i].value = m.merge(out[i].value, s.value)
			continue
		}
		at[k] = len(out)
		out = append(out, s)
	}
	return out
}

// serveMetrics serves /metrics and /healthz on addr until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry(), promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	a.log.WithField("listen", ln.Addr().String()).Info("metrics listening")
	a.spawn(func() {
		<-ctx.Done()
		srv.Close()
	})
	a.spawn(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.WithError(err).Warn("metrics server stopped")
		}
	})
	return nil
}
