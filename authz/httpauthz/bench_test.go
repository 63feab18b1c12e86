package httpauthz_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/sidecar"
)

// BenchmarkServeHTTP measures one decision through the HTTP authorization
// endpoint, with the same sidecar, key, counter and cases as the proxy's
// BenchmarkServeHTTP (proxy/bench_test.go): a cache hit on the in-memory
// counter, the check nginx sends (X-Original-Method and X-Original-URI),
// and nothing forwarded. The difference between the two is the cost of
// forwarding; what they share is the decision.
func BenchmarkServeHTTP(b *testing.B) {
	for _, bc := range []struct {
		name      string
		metrics   func() *metrics.Metrics
		failLimit string
	}{
		{"metrics=off", func() *metrics.Metrics { return nil }, "off"},
		{"metrics=on", func() *metrics.Metrics { return metrics.NewMetrics(prometheus.NewRegistry(), 1000) }, "off"},
		{"metrics=on,faillimit=20/10s", func() *metrics.Metrics { return metrics.NewMetrics(prometheus.NewRegistry(), 1000) }, "20/10s"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			limit, err := guard.ParseFailLimit(bc.failLimit)
			if err != nil {
				b.Fatal(err)
			}
			e := sidecartest.New(b, sidecar.Options{Transport: &upstream{}, Metrics: bc.metrics(), FailLimit: limit})
			secret := e.SetupOrg(b, 1, 1<<62, map[string]int64{"egress": 1 << 40}, testOrg)
			req := httptest.NewRequest("GET", "/authz", nil)
			req.Header.Set("Authorization", "Bearer "+secret)
			req.Header.Set("X-Original-Method", "GET")
			req.Header.Set("X-Original-URI", "/v1/things")
			w := &discardWriter{h: http.Header{}}
			e.Authz.ServeHTTP(w, req) // warm the auth cache
			if w.code != 200 {
				b.Fatalf("status %d", w.code)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				clear(w.h)
				e.Authz.ServeHTTP(w, req)
			}
			b.StopTimer()
			if w.code != 200 || w.h.Get(gate.HeaderOrgID) != testOrg {
				b.Fatalf("status %d, headers %v", w.code, w.h)
			}
		})
	}
}

// discardWriter is a ResponseWriter that allocates nothing per request.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
