package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
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

// BenchmarkLoopback compares keygate's data path with a bare
// httputil.ReverseProxy in front of the same upstream, over real loopback
// connections from one in-process client, sequentially and with 32
// requests in flight. The figure that matters is the ratio of the two.
func BenchmarkLoopback(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true,"items":[1,2,3]}`+"\n")
	}))
	b.Cleanup(up.Close)
	upURL, _ := url.Parse(up.URL)

	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 512
	bare := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(upURL); pr.SetXForwarded() }, Transport: t, BufferPool: benchPool{}})
	b.Cleanup(bare.Close)

	e := sidecartest.New(b, sidecar.Options{Upstream: upURL, Metrics: metrics.NewMetrics(prometheus.NewRegistry(), 1000)})
	secret := e.SetupOrg(b, 1, 1<<62, nil, benchOrg)
	kg := httptest.NewServer(e.Data)
	b.Cleanup(kg.Close)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	get := func(b *testing.B, base string) {
		req, _ := http.NewRequest("GET", base+"/v1/things", nil)
		req.Header.Set("X-API-Key", secret)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	for _, target := range []struct{ name, url string }{{"bare", bare.URL}, {"keygate", kg.URL}} {
		b.Run(target.name+"/conns=1", func(b *testing.B) {
			get(b, target.url)
			b.ReportAllocs()
			for b.Loop() {
				get(b, target.url)
			}
		})
		b.Run(target.name+"/conns=32", func(b *testing.B) {
			get(b, target.url)
			b.ReportAllocs()
			b.SetParallelism(16) // 16 × GOMAXPROCS(2) = 32 in flight
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					get(b, target.url)
				}
			})
		})
	}
}

// benchPool gives the bare proxy the copy-buffer pool keygate has.
type benchPool struct{}

var benchBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (benchPool) Get() []byte  { return *benchBuffers.Get().(*[]byte) }
func (benchPool) Put(b []byte) { benchBuffers.Put(&b) }
