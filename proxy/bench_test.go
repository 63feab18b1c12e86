package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/sidecar"
)

const benchOrg = "0f3b8f0e-1111-4c6e-9a53-000000000001"

// benchUpstream is an upstream that answers every request at once with
// "ok\n" and, when usage is set, an X-Keygate-Usage header.
type benchUpstream struct{ usage string }

func (t benchUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	h := http.Header{"Content-Type": {"text/plain"}}
	if t.usage != "" {
		h.Set("X-Keygate-Usage", t.usage)
	}
	return &http.Response{
		StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(strings.NewReader("ok\n")), ContentLength: 3, Request: r,
	}, nil
}

// BenchmarkServeHTTP measures the data path on a cache hit with the
// in-memory counter and an upstream that answers at once, with and without
// metrics: the difference is what metrics cost per request.
func BenchmarkServeHTTP(b *testing.B) {
	for _, bc := range []struct {
		name    string
		metrics func() *metrics.Metrics
		// failLimit is KEYGATE_AUTH_FAIL_LIMIT (the default is on: every
		// request then finds its client address and proves its key).
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
			e := sidecartest.New(b, sidecar.Options{Transport: benchUpstream{}, Metrics: bc.metrics(), FailLimit: limit})
			h := e.Data
			secret := e.SetupOrg(b, 1, 1<<62, map[string]int64{"egress": 1 << 40}, benchOrg)
			if got := sidecartest.Get(h, secret); got != 200 { // warm the auth cache
				b.Fatalf("status %d", got)
			}
			req := httptest.NewRequest("GET", "/v1/things", nil)
			req.Header.Set("Authorization", "Bearer "+secret)
			w := &metricsDiscardWriter{h: http.Header{}}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
			}
			b.StopTimer()
			if w.code != 200 {
				b.Fatalf("status %d", w.code)
			}
			e.Book.Flush(context.Background())
		})
	}
}

// metricsDiscardWriter is a ResponseWriter that allocates nothing per request.
type metricsDiscardWriter struct {
	h    http.Header
	code int
}

func (w *metricsDiscardWriter) Header() http.Header         { return w.h }
func (w *metricsDiscardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *metricsDiscardWriter) WriteHeader(code int)        { w.code = code }
