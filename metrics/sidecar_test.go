package metrics_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/metrics"
	"github.com/keygate/keygate/sidecar"
)

const (
	metricsOrgA = "0f3b8f0e-1111-4c6e-9a53-000000000001"
	metricsOrgB = "0f3b8f0e-2222-4c6e-9a53-000000000002"
)

// metricsUpstream is an upstream that answers every request at once with
// "ok\n" and, when usage is set, an X-Keygate-Usage header.
type metricsUpstream struct{ usage string }

func (t metricsUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
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

// newMetricsTestEnv wires a sidecar on the in-memory store and counter
// whose upstream is tr.
func newMetricsTestEnv(tb testing.TB, m *metrics.Metrics, tr http.RoundTripper) *sidecartest.Env {
	tb.Helper()
	return sidecartest.New(tb, sidecar.Options{Transport: tr, Metrics: m})
}

// TestMetricsGolden drives one request of each data-path outcome keygate
// can produce in-process and compares the series with golden text.
func TestMetricsGolden(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.NewMetrics(reg, 1000)
	e := newMetricsTestEnv(t, m, metricsUpstream{usage: "pinned_bytes=+100, pinned_count=+1"})
	secret := e.SetupOrg(t, 1, 3, map[string]int64{"egress": 1000, "pinned_bytes": 5000}, metricsOrgA)

	want := []int{401, 403, 200, 200, 200, 429}
	for i, secret := range []string{"", "not-a-valid-secret", secret, secret, secret, secret} {
		if got := sidecartest.Get(e.Data, secret); got != want[i] {
			t.Fatalf("request %d: status %d, want %d", i, got, want[i])
		}
	}
	e.Book.Flush(context.Background())

	golden := `
# HELP keygate_requests_total Requests handled, by front, organization, outcome and status class.
# TYPE keygate_requests_total counter
keygate_requests_total{front="proxy",org="0f3b8f0e-1111-4c6e-9a53-000000000001",outcome="admitted",status_class="2xx"} 3
keygate_requests_total{front="proxy",org="0f3b8f0e-1111-4c6e-9a53-000000000001",outcome="quota_exceeded",status_class="4xx"} 1
keygate_requests_total{front="proxy",org="none",outcome="invalid_credential",status_class="4xx"} 1
keygate_requests_total{front="proxy",org="none",outcome="no_credential",status_class="4xx"} 1
# HELP keygate_quota_usage Usage of a meter by an organization in the current window of its period, as last seen by this sidecar.
# TYPE keygate_quota_usage gauge
keygate_quota_usage{meter="egress",org="0f3b8f0e-1111-4c6e-9a53-000000000001",period="month"} 9
keygate_quota_usage{meter="pinned_bytes",org="0f3b8f0e-1111-4c6e-9a53-000000000001",period="none"} 300
keygate_quota_usage{meter="pinned_count",org="0f3b8f0e-1111-4c6e-9a53-000000000001",period="none"} 3
keygate_quota_usage{meter="requests",org="0f3b8f0e-1111-4c6e-9a53-000000000001",period="month"} 3
# HELP keygate_quota_limit Limit of a meter for an organization per window of its period.
# TYPE keygate_quota_limit gauge
keygate_quota_limit{meter="egress",org="0f3b8f0e-1111-4c6e-9a53-000000000001",period="month"} 1000
keygate_quota_limit{meter="pinned_bytes",org="0f3b8f0e-1111-4c6e-9a53-000000000001",period="none"} 5000
keygate_quota_limit{meter="requests",org="0f3b8f0e-1111-4c6e-9a53-000000000001",period="month"} 3
# HELP keygate_quota_usage_ratio Share of the organization's request quota used in the current window (0 to 1).
# TYPE keygate_quota_usage_ratio gauge
keygate_quota_usage_ratio{org="0f3b8f0e-1111-4c6e-9a53-000000000001"} 1
# HELP keygate_store_errors_total Store calls that failed because the store was unreachable or too slow, by operation.
# TYPE keygate_store_errors_total counter
keygate_store_errors_total{op="add_usage"} 0
keygate_store_errors_total{op="authenticate"} 0
keygate_store_errors_total{op="charge"} 0
# HELP keygate_auth_cache_lookups_total Credential lookups by result: hit (local cache), miss (store read), stale (cache used during a store outage).
# TYPE keygate_auth_cache_lookups_total counter
keygate_auth_cache_lookups_total{result="hit"} 3
keygate_auth_cache_lookups_total{result="miss"} 1
keygate_auth_cache_lookups_total{result="stale"} 0
# HELP keygate_fail_open_admits_total Requests admitted without being counted because the store was unreachable (KEYGATE_FAILURE_MODE=open).
# TYPE keygate_fail_open_admits_total counter
keygate_fail_open_admits_total 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(golden),
		"keygate_requests_total", "keygate_quota_usage", "keygate_quota_limit", "keygate_quota_usage_ratio",
		"keygate_store_errors_total", "keygate_auth_cache_lookups_total", "keygate_fail_open_admits_total"); err != nil {
		t.Error(err)
	}
	// Each request and each charge is timed; the three admitted requests
	// went upstream.
	for name, want := range map[string]int{"keygate_request_duration_seconds": 1, "keygate_upstream_duration_seconds": 1,
		"keygate_store_duration_seconds": 3, "keygate_build_info": 1, "keygate_revocation_lag_seconds": 1} {
		if got, err := testutil.GatherAndCount(reg, name); err != nil || got != want {
			t.Errorf("%s: %d series (err %v), want %d", name, got, err, want)
		}
	}
	// Lint as promtool check metrics does.
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestOrgLabelCap folds organizations past the cap into "other" and keeps
// no usage gauge for them.
func TestOrgLabelCap(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := metrics.NewMetrics(reg, 1)
	e := newMetricsTestEnv(t, m, metricsUpstream{})
	sa := e.SetupOrg(t, 1, 100, nil, metricsOrgA)
	sb := e.SetupOrg(t, 1, 100, nil, metricsOrgB)
	for _, s := range []string{sa, sb, sb} {
		if got := sidecartest.Get(e.Data, s); got != 200 {
			t.Fatalf("status %d", got)
		}
	}
	golden := `
# HELP keygate_requests_total Requests handled, by front, organization, outcome and status class.
# TYPE keygate_requests_total counter
keygate_requests_total{front="proxy",org="0f3b8f0e-1111-4c6e-9a53-000000000001",outcome="admitted",status_class="2xx"} 1
keygate_requests_total{front="proxy",org="other",outcome="admitted",status_class="2xx"} 2
# HELP keygate_quota_usage_ratio Share of the organization's request quota used in the current window (0 to 1).
# TYPE keygate_quota_usage_ratio gauge
keygate_quota_usage_ratio{org="0f3b8f0e-1111-4c6e-9a53-000000000001"} 0.01
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(golden), "keygate_requests_total", "keygate_quota_usage_ratio"); err != nil {
		t.Error(err)
	}
}

// TestNilMetricsDataPath: a sidecar without metrics serves as usual.
func TestNilMetricsDataPath(t *testing.T) {
	e := newMetricsTestEnv(t, nil, metricsUpstream{})
	s := e.SetupOrg(t, 1, 10, nil, metricsOrgA)
	if got := sidecartest.Get(e.Data, s); got != 200 {
		t.Fatalf("status %d", got)
	}
}
