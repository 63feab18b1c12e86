package metrics

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const (
	metricsOrgA = "0f3b8f0e-1111-4c6e-9a53-000000000001"
	metricsOrgB = "0f3b8f0e-2222-4c6e-9a53-000000000002"
)

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
	m.Quota(metricsOrgA, "day", 90, 100)
	m.Meter(metricsOrgA, "egress", "day", 700, 1000, clock.Add(-time.Second))
	m.Meter(metricsOrgA, "pinned_bytes", "none", 5, -1, clock.Add(-time.Second))
	m.Quota(metricsOrgB, "month", 10, 100)

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
	m.Quota(metricsOrgA, "day", 1, 100)
	m.Quota(metricsOrgB, "day", 3, 100)
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
		"store_unavailable", "upstream_error", "upstream_timeout", "bad_request", "internal_error", "client_closed", "rate_limited"}
	if !slices.Equal(Outcomes, want) {
		t.Errorf("outcomes = %v, want %v", Outcomes, want)
	}
}

// TestNilMetrics: a nil *Metrics records nothing and does not panic.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.Request(FrontProxy, "o", OutcomeAdmitted, 200, 0)
	m.Upstream(0)
	m.Store("charge", 0, true)
	m.Quota("o", "month", 1, 2)
	m.Meter("o", "egress", "month", 1, 2, time.Time{})
	m.FailOpen()
	m.AuthLookup("hit")
	m.Revocation(0)
}

// TestAuthCacheMetrics: the cache gauges read the Authenticator's stats at
// scrape time; revalidations and change-log events count.
func TestAuthCacheMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg, 10)
	m.AuthCacheStats(func() (int, int64) { return 3, 1200 })
	m.Revalidation()
	m.Revalidation()
	m.ChangeLog("break")
	m.ChangeLog("forget")
	want := `# HELP keygate_auth_cache_bytes Heap the local credential cache holds, as it estimates it against KEYGATE_AUTH_CACHE_BYTES.
# TYPE keygate_auth_cache_bytes gauge
keygate_auth_cache_bytes 1200
# HELP keygate_auth_cache_entries Credentials held by the local cache.
# TYPE keygate_auth_cache_entries gauge
keygate_auth_cache_entries 3
# HELP keygate_auth_cache_revalidations_total Background reads of the store's change log that confirmed every cached credential at once.
# TYPE keygate_auth_cache_revalidations_total counter
keygate_auth_cache_revalidations_total 2
# HELP keygate_auth_change_log_events_total Breaks of the change log's follow and how it resumed: catch_up (from the last change seen) or forget (the cache was forgotten).
# TYPE keygate_auth_change_log_events_total counter
keygate_auth_change_log_events_total{event="break"} 1
keygate_auth_change_log_events_total{event="catch_up"} 0
keygate_auth_change_log_events_total{event="forget"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "keygate_auth_cache_bytes", "keygate_auth_cache_entries",
		"keygate_auth_cache_revalidations_total", "keygate_auth_change_log_events_total"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
