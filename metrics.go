package wstotcp

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyserver/caddy/v2"

	"github.com/wstotcp/caddy-ws-to-tcp/internal/relay"
	"github.com/wstotcp/caddy-ws-to-tcp/internal/wsframe"
)

// Metrics, on Caddy's registry (served by the admin endpoint's /metrics and
// by the `metrics` handler). Every config load has a new registry, so the
// collectors are package-level and registered into each: a tunnel opened
// before a reload is counted by the same collectors after it, and nothing
// is reset or counted twice. Labels take bounded values only: never a
// client address, user or connection id.
//
// Bytes and messages are not counted on the relay's hot path: the tunnels
// count them in their own atomics already (for logs and the admin API), and
// a collector adds those of the open tunnels, at scrape time, to the totals
// of the ended ones.
var (
	connectionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ws_to_tcp", Name: "connections_total",
		Help: "WebSocket-to-TCP tunnels ended, by outcome: client (the client closed), upstream (the upstream closed), " +
			"server (closed by Caddy: admin, reload, stop, heartbeat or idle timeout), error (protocol error, invalid data, " +
			"message too big, upstream failure, client vanished or too slow, internal error); " +
			"and by transport: http/1.1, h2 (HTTP/2) or h3 (HTTP/3).",
	}, []string{"outcome", "transport"})

	dialSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "ws_to_tcp", Name: "upstream_dial_seconds",
		Help:    "Time taken by successful upstream dials (TCP connect, and the TLS handshake for tls/ upstreams).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})

	upstreamHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "ws_to_tcp", Name: "upstream_healthy",
		Help: "1 when the configured upstream is healthy, 0 when it is down (by its active or passive health checks).",
	}, []string{"upstream"})

	rejectionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ws_to_tcp", Name: "rejections_total",
		Help: "WebSocket handshakes refused before the upgrade, by reason.",
	}, []string{"reason"})

	live = liveCollector{
		active: prometheus.NewDesc("caddy_ws_to_tcp_connections_active",
			"WebSocket-to-TCP tunnels open now, including those of unloaded configurations, by transport: "+
				"http/1.1, h2 (HTTP/2) or h3 (HTTP/3).",
			[]string{"transport"}, nil),
		bytes: prometheus.NewDesc("caddy_ws_to_tcp_bytes_total",
			"Bytes relayed: in = client to upstream, out = upstream to client (before base64 encoding).",
			[]string{"direction"}, nil),
		messages: prometheus.NewDesc("caddy_ws_to_tcp_messages_total",
			"WebSocket data messages relayed: in = from the client, out = to the client.",
			[]string{"direction"}, nil),
	}

	collectors = []prometheus.Collector{connectionsTotal, dialSeconds, upstreamHealthy, rejectionsTotal, live}
)

// Outcomes of connectionsTotal.
const (
	outcomeError = "error"
	outcomeOther = "other"
)

// endedCounters are connectionsTotal's counters, looked up once: a
// lookup by label values costs an allocation per ended tunnel.
var endedCounters = map[[2]string]prometheus.Counter{}

func init() {
	// The outcomes show from the start, at 0.
	for _, o := range []string{relay.ByClient, relay.ByUpstream, relay.ByServer, outcomeError} {
		for _, tr := range transports {
			endedCounters[[2]string{o, tr}] = connectionsTotal.WithLabelValues(o, tr)
		}
	}
}

// endedCounter is connectionsTotal's counter for an outcome and a
// transport.
func endedCounter(outcome, transport string) prometheus.Counter {
	if c, ok := endedCounters[[2]string{outcome, transport}]; ok {
		return c
	}
	return connectionsTotal.WithLabelValues(outcome, transport)
}

// outcome classifies how a tunnel ended, for connectionsTotal: an error
// close code whoever sent it, else who closed.
func outcome(code int, closedBy string) string {
	switch code {
	case wsframe.CloseProtocolError, wsframe.CloseAbnormal, wsframe.CloseInvalidPayload, wsframe.CloseMessageTooBig, wsframe.CloseInternalError, wsframe.CloseBadGateway:
		return outcomeError
	}
	switch closedBy {
	case relay.ByClient, relay.ByUpstream, relay.ByServer:
		return closedBy
	}
	return outcomeOther
}

// observeDial records the duration of a successful upstream dial.
func observeDial(d time.Duration) { dialSeconds.Observe(d.Seconds()) }

// liveCollector reports what the tunnel registry knows: open tunnels, and
// bytes and messages of ended and open tunnels together.
type liveCollector struct {
	active, bytes, messages *prometheus.Desc
}

func (c liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.active
	ch <- c.bytes
	ch <- c.messages
}

func (c liveCollector) Collect(ch chan<- prometheus.Metric) {
	var active [len(transports)]int
	tunnels.Lock()
	sum := tunnels.ended
	for _, t := range tunnels.m {
		sum.add(t)
		for i, tr := range transports {
			if t.transport == tr {
				active[i]++
			}
		}
	}
	tunnels.Unlock()
	for i, tr := range transports {
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(active[i]), tr)
	}
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(sum.bytesIn), "in")
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(sum.bytesOut), "out")
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.CounterValue, float64(sum.msgsIn), "in")
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.CounterValue, float64(sum.msgsOut), "out")
}

// provisionMetrics registers the collectors on this configuration's
// registry (a second handler of the same configuration finds them there
// already). caddy_ws_to_tcp_upstream_healthy follows the shared upstream
// states (health.go): a series per configured upstream address, from the
// first configuration that has it until the last one is unloaded.
func (h *Handler) provisionMetrics(ctx caddy.Context) error {
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		for _, c := range collectors {
			var already prometheus.AlreadyRegisteredError
			if err := reg.Register(c); err != nil && !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}
