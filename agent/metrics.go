package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Agent metrics are read from the same counters status shows, at scrape
// time, from one snapshot per scrape: nothing on the forwarding path does
// extra work for them. They live in a registry of the agent's own, never
// the global one.

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
	reg.MustRegister(c)
	return reg
}

// statusCollector turns one Status snapshot per scrape into metrics.
type statusCollector struct {
	a       *Agent
	metrics []statusMetric
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
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.Status()
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(st))
	}
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
