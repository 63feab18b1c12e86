package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/quota/memcounter"
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
		h.Set(headerUsage, t.usage)
	}
	return &http.Response{
		StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(strings.NewReader("ok\n")), ContentLength: 3, Request: r,
	}, nil
}

const metricsAdminToken = "test-token"

// newMetricsTestHandler builds a Handler on the in-memory store and counter whose
// upstream is tr.
func newMetricsTestHandler(tb testing.TB, m *Metrics, tr http.RoundTripper) *Handler {
	tb.Helper()
	st := memstore.New()
	auth := keys.NewAuthenticator(st, keys.AuthOptions{OnLookup: m.AuthLookup, OnRevocation: m.Revocation})
	return New(Options{
		Upstream:  &url.URL{Scheme: "http", Host: "upstream.invalid"},
		Store:     st,
		Auth:      auth,
		Counter:   memcounter.New(),
		Transport: tr,
		Metrics:   m,
	})
}

// metricsAdmin calls the operator API in-process and decodes the answer.
func metricsAdmin(tb testing.TB, h *Handler, method, path string, body any, want int, out any) {
	tb.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		tb.Fatal(err)
	}
	req := httptest.NewRequest(method, path, strings.NewReader(string(b)))
	req.Header.Set("Authorization", "Bearer "+metricsAdminToken)
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.AdminHandler(metricsAdminToken).ServeHTTP(rec, req)
	if rec.Code != want {
		tb.Fatalf("%s %s: status %d, want %d: %s", method, path, rec.Code, want, rec.Body)
	}
	if out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			tb.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

// metricsSetupOrg creates plan planID (if it is new) allowing max requests a month
// with limits, the organization orgID, and an admin key; it returns the
// key's secret.
func metricsSetupOrg(tb testing.TB, h *Handler, planID int64, max int64, limits map[string]int64, orgID string) string {
	tb.Helper()
	var plans []keys.Plan
	metricsAdmin(tb, h, "GET", "/admin/v1/plans", nil, 200, &plans)
	if !slices.ContainsFunc(plans, func(p keys.Plan) bool { return p.ID == planID }) {
		metricsAdmin(tb, h, "POST", "/admin/v1/plans", map[string]any{"id": planID, "name": "plan", "price": "0.00",
			"period": "month", "max_api_requests": max, "limits": limits}, 201, nil)
	}
	metricsAdmin(tb, h, "POST", "/admin/v1/orgs", map[string]any{"id": orgID, "name": "Acme", "email": "ops@example.com", "plan_id": planID}, 201, nil)
	var k struct {
		Secret string `json:"access_secret"`
	}
	metricsAdmin(tb, h, "POST", "/admin/v1/orgs/"+orgID+"/keys", map[string]any{"name": "k1", "permissions": []string{"admin"}}, 201, &k)
	return k.Secret
}

func metricsGet(h http.Handler, secret string) int {
	req := httptest.NewRequest("GET", "/v1/things", nil)
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code
}

const (
	metricsOrgA = "0f3b8f0e-1111-4c6e-9a53-000000000001"
	metricsOrgB = "0f3b8f0e-2222-4c6e-9a53-000000000002"
)

// TestMetricsGolden drives one request of each data-path outcome keygate
// can produce in-process and compares the series with golden text.
func TestMetricsGolden(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg, 1000)
	h := newMetricsTestHandler(t, m, metricsUpstream{usage: "pinned_bytes=+100, pinned_count=+1"})
	secret := metricsSetupOrg(t, h, 1, 3, map[string]int64{"egress": 1000, "pinned_bytes": 5000}, metricsOrgA)

	want := []int{401, 403, 200, 200, 200, 429}
	for i, secret := range []string{"", "not-a-valid-secret", secret, secret, secret, secret} {
		if got := metricsGet(h, secret); got != want[i] {
			t.Fatalf("request %d: status %d, want %d", i, got, want[i])
		}
	}
	h.FlushUsage(context.Background())

	golden := `
# HELP keygate_requests_total Requests handled, by organization, outcome and status class.
# TYPE keygate_requests_total counter
keygate_requests_total{org="0f3b8f0e-1111-4c6e-9a53-000000000001",outcome="admitted",status_class="2xx"} 3
keygate_requests_total{org="0f3b8f0e-1111-4c6e-9a53-000000000001",outcome="quota_exceeded",status_class="4xx"} 1
keygate_requests_total{org="none",outcome="invalid_credential",status_class="4xx"} 1
keygate_requests_total{org="none",outcome="no_credential",status_class="4xx"} 1
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
	m := NewMetrics(reg, 1)
	h := newMetricsTestHandler(t, m, metricsUpstream{})
	sa := metricsSetupOrg(t, h, 1, 100, nil, metricsOrgA)
	sb := metricsSetupOrg(t, h, 1, 100, nil, metricsOrgB)
	for _, s := range []string{sa, sb, sb} {
		if got := metricsGet(h, s); got != 200 {
			t.Fatalf("status %d", got)
		}
	}
	golden := `
# HELP keygate_requests_total Requests handled, by organization, outcome and status class.
# TYPE keygate_requests_total counter
keygate_requests_total{org="0f3b8f0e-1111-4c6e-9a53-000000000001",outcome="admitted",status_class="2xx"} 1
keygate_requests_total{org="other",outcome="admitted",status_class="2xx"} 2
# HELP keygate_quota_usage_ratio Share of the organization's request quota used in the current window (0 to 1).
# TYPE keygate_quota_usage_ratio gauge
keygate_quota_usage_ratio{org="0f3b8f0e-1111-4c6e-9a53-000000000001"} 0.01
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(golden), "keygate_requests_total", "keygate_quota_usage_ratio"); err != nil {
		t.Error(err)
	}
}

// TestQuotaGaugesResetWithTheWindow: a usage gauge set in a window that
// has since ended reads 0 (the counter has reset; this sidecar has not seen
// the new value yet), as does the org's ratio; limits, never-resetting
// meters and series of the current window keep their values. A series of a
// period the organization no longer has reads 0 too.
func TestQuotaGaugesResetWithTheWindow(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg, 10)
	clock := time.Date(2026, 3, 31, 23, 59, 30, 0, time.UTC)
	m.now = func() time.Time { return clock }
	m.quota(metricsOrgA, "day", 90, 100)
	m.meter(metricsOrgA, "egress", "day", 700, 1000, clock.Add(-time.Second))
	m.meter(metricsOrgA, "pinned_bytes", "none", 5, -1, clock.Add(-time.Second))
	m.quota(metricsOrgB, "month", 10, 100)

	compare := func(step, want string) {
		t.Helper()
		head := `
# HELP keygate_quota_usage Usage of a meter by an organization in the current window of its period, as last seen by this sidecar.
# TYPE keygate_quota_usage gauge
`
		ratio := `
# HELP keygate_quota_usage_ratio Share of the organization's request quota used in the current window (0 to 1).
# TYPE keygate_quota_usage_ratio gauge
`
		usage, ratios, _ := strings.Cut(want, "--\n")
		if err := testutil.GatherAndCompare(reg, strings.NewReader(head+usage+ratio+ratios), "keygate_quota_usage", "keygate_quota_usage_ratio"); err != nil {
			t.Errorf("%s: %v", step, err)
		}
	}
	a, b := `{meter="%s",org="`+metricsOrgA+`",period="%s"}`, `{meter="requests",org="`+metricsOrgB+`",period="month"}`
	series := func(format string, args ...any) string { return fmt.Sprintf(format, args...) }
	compare("same day", "keygate_quota_usage"+series(a, "egress", "day")+" 700\n"+
		"keygate_quota_usage"+series(a, "pinned_bytes", "none")+" 5\n"+
		"keygate_quota_usage"+series(a, "requests", "day")+" 90\n"+
		"keygate_quota_usage"+b+" 10\n--\n"+
		`keygate_quota_usage_ratio{org="`+metricsOrgA+`"} 0.9`+"\n"+
		`keygate_quota_usage_ratio{org="`+metricsOrgB+`"} 0.1`+"\n")

	clock = clock.Add(time.Minute) // April 1st: a new day and a new month
	compare("next day", "keygate_quota_usage"+series(a, "egress", "day")+" 0\n"+
		"keygate_quota_usage"+series(a, "pinned_bytes", "none")+" 5\n"+
		"keygate_quota_usage"+series(a, "requests", "day")+" 0\n"+
		"keygate_quota_usage"+b+" 0\n--\n"+
		`keygate_quota_usage_ratio{org="`+metricsOrgA+`"} 0`+"\n"+
		`keygate_quota_usage_ratio{org="`+metricsOrgB+`"} 0`+"\n")
	if got := testutil.ToFloat64(m.quotaLimit.WithLabelValues(metricsOrgA, "requests", "day")); got != 100 {
		t.Errorf("limit after the reset = %v, want 100", got)
	}

	// The new window's first charge; org B moves to a daily plan.
	m.quota(metricsOrgA, "day", 1, 100)
	m.quota(metricsOrgB, "day", 3, 100)
	compare("new window", "keygate_quota_usage"+series(a, "egress", "day")+" 0\n"+
		"keygate_quota_usage"+series(a, "pinned_bytes", "none")+" 5\n"+
		"keygate_quota_usage"+series(a, "requests", "day")+" 1\n"+
		"keygate_quota_usage"+b+" 0\n"+
		`keygate_quota_usage{meter="requests",org="`+metricsOrgB+`",period="day"} 3`+"\n--\n"+
		`keygate_quota_usage_ratio{org="`+metricsOrgA+`"} 0.01`+"\n"+
		`keygate_quota_usage_ratio{org="`+metricsOrgB+`"} 0.03`+"\n")

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestOutcomesMatchIssue keeps the outcome label values those the
// dashboard and the alert rules select on.
func TestOutcomesMatchIssue(t *testing.T) {
	want := []string{"admitted", "no_credential", "invalid_credential", "forbidden", "quota_exceeded",
		"store_unavailable", "upstream_error", "upstream_timeout", "bad_request", "internal_error", "client_closed"}
	if !slices.Equal(outcomes, want) {
		t.Errorf("outcomes = %v, want %v", outcomes, want)
	}
}

// TestNilMetrics: a nil *Metrics records nothing and does not panic.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.request("o", outcomeAdmitted, 200, 0)
	m.upstream(0)
	m.store("charge", 0, true)
	m.quota("o", "month", 1, 2)
	m.meter("o", "egress", "month", 1, 2, time.Time{})
	m.failOpen()
	m.AuthLookup("hit")
	m.Revocation(0)
	h := newMetricsTestHandler(t, nil, metricsUpstream{})
	s := metricsSetupOrg(t, h, 1, 10, nil, metricsOrgA)
	if got := metricsGet(h, s); got != 200 {
		t.Fatalf("status %d", got)
	}
}

// BenchmarkServeHTTP measures the data path on a cache hit with the
// in-memory counter and an upstream that answers at once, with and without
// metrics: the difference is what metrics cost per request.
func BenchmarkServeHTTP(b *testing.B) {
	for _, bc := range []struct {
		name    string
		metrics func() *Metrics
	}{
		{"metrics=off", func() *Metrics { return nil }},
		{"metrics=on", func() *Metrics { return NewMetrics(prometheus.NewRegistry(), 1000) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := newMetricsTestHandler(b, bc.metrics(), metricsUpstream{})
			secret := metricsSetupOrg(b, h, 1, 1<<62, map[string]int64{"egress": 1 << 40}, metricsOrgA)
			if got := metricsGet(h, secret); got != 200 { // warm the auth cache
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
			h.FlushUsage(context.Background())
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
