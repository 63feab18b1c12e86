package main

// Observability with the real tools (issue 7): promtool lints a live
// /metrics and checks and unit-tests the alert rules, and Debian's
// prometheus scrapes a running keygate. Without promtool or prometheus on
// PATH these tests skip, unless KEYGATE_TEST_PROMETHEUS=require (set by make
// test and CI), in which case they fail.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// prometheusTool returns the path of promtool or prometheus.
func prometheusTool(t *testing.T, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("KEYGATE_TEST_PROMETHEUS") == "require" {
			t.Fatalf("%s not found on PATH and KEYGATE_TEST_PROMETHEUS=require: apt-get install prometheus", name)
		}
		t.Skipf("%s not found on PATH (apt-get install prometheus; set KEYGATE_TEST_PROMETHEUS=require to fail instead)", name)
	}
	return bin
}

// rulesDir is deploy/prometheus of this repository.
func rulesDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "deploy", "prometheus"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// meteredUpstream answers every request and reports upstream meters.
func meteredUpstream() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Keygate-Usage", "pinned_bytes=+1024, pinned_count=+1")
		_, _ = io.WriteString(w, "hello from upstream\n")
	})
}

// meteredOrg creates a plan (id planID, max requests a month, limits) and an
// organization on it with one admin key, and returns the org id and the
// key's secret.
func (g *gate) meteredOrg(planID, max int64, limits map[string]int64) (string, string) {
	g.t.Helper()
	return g.meteredOrgKeyMax(planID, max, limits, nil)
}

// meteredOrgKeyMax is meteredOrg with the key's own request quota (nil:
// none).
func (g *gate) meteredOrgKeyMax(planID, max int64, limits map[string]int64, keyMax *int64) (string, string) {
	g.t.Helper()
	g.admin("POST", "/admin/v1/plans", map[string]any{"id": planID, "name": "plan " + strconv.FormatInt(planID, 10),
		"price": "0.00", "period": "month", "max_api_requests": max, "limits": limits}, 201, nil)
	var org struct {
		ID string `json:"id"`
	}
	g.admin("POST", "/admin/v1/orgs", map[string]any{"name": "Acme", "email": "ops@example.com", "plan_id": planID}, 201, &org)
	var k newKey
	g.admin("POST", "/admin/v1/orgs/"+org.ID+"/keys", map[string]any{"name": "k1", "permissions": []string{"admin"}, "max_api_requests": keyMax}, 201, &k)
	return org.ID, k.AccessSecret
}

// driveGET sends n GET requests with secret and counts the answers by status.
func (g *gate) driveGET(secret string, n int) map[int]int {
	g.t.Helper()
	out := map[int]int{}
	hdr := map[string]string{}
	if secret != "" {
		hdr["Authorization"] = "Bearer " + secret
	}
	for range n {
		status, _, _ := call(g.t, "GET", "http://"+g.l.Data+"/v1/things", hdr, "")
		out[status]++
	}
	return out
}

// scrapeMetrics returns the text of the sidecar's /metrics.
func (g *gate) scrapeMetrics() string {
	g.t.Helper()
	status, _, body := call(g.t, "GET", "http://"+g.l.Metrics+"/metrics", nil, "")
	if status != 200 {
		g.t.Fatalf("/metrics: status %d", status)
	}
	return string(body)
}

// TestMetricsPromtoolClean lints a live /metrics, with every kind of
// series present, with promtool check metrics.
func TestMetricsPromtoolClean(t *testing.T) {
	promtool := prometheusTool(t, "promtool")
	up := httptest.NewServer(meteredUpstream())
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL})
	_, secret := g.meteredOrg(1, 2, map[string]int64{"egress": 1 << 20, "pinned_bytes": 1 << 30})
	got := g.driveGET(secret, 3)
	if got[200] != 2 || got[429] != 1 {
		t.Fatalf("statuses %v, want two 200 and one 429", got)
	}
	g.driveGET("", 1)
	g.driveGET("kg_not-a-real-secret", 1)

	// The usage of meters is flushed every second.
	var text string
	deadline := time.Now().Add(10 * time.Second)
	for {
		text = g.scrapeMetrics()
		if strings.Contains(text, `meter="pinned_bytes"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no meter usage on /metrics after 10s:\n%s", text)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, name := range []string{"keygate_requests_total", "keygate_request_duration_seconds", "keygate_upstream_duration_seconds",
		"keygate_store_duration_seconds", "keygate_store_errors_total", "keygate_quota_usage", "keygate_quota_limit",
		"keygate_quota_usage_ratio", "keygate_fail_open_admits_total", "keygate_auth_cache_lookups_total",
		"keygate_revocations_received_total", "keygate_revocation_lag_seconds", "keygate_build_info",
		"keygate_quota_lease_outstanding_units", "keygate_quota_lease_renewals_total", "keygate_quota_lease_returned_units_total",
		"keygate_quota_lease_lost_units_total", "keygate_rate_lease_outstanding_slots", "keygate_rate_lease_renewals_total",
		"keygate_rate_lease_returned_slots_total", "keygate_rate_lease_lost_slots_total"} {
		if !strings.Contains(text, "\n# TYPE "+name+" ") {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestPrometheusRules runs promtool check rules and promtool test rules on
// deploy/prometheus.
func TestPrometheusRules(t *testing.T) {
	promtool := prometheusTool(t, "promtool")
	dir := rulesDir(t)
	for _, args := range [][]string{
		{"check", "rules", "keygate-rules.yml"},
		{"test", "rules", "keygate-rules.test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestRealPrometheusScrape runs Debian's prometheus against a keygate on
// Redis with the rules loaded, drives traffic for two organizations and
// checks what Prometheus recorded.
func TestRealPrometheusScrape(t *testing.T) {
	bin := prometheusTool(t, "prometheus")
	srv := redistest.Start(t)
	up := httptest.NewServer(meteredUpstream())
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL()})

	// Org A runs out of its own quota (usage = limit); org B's key runs out
	// of the key's quota while the org has room, so its usage series (3) is
	// the admitted count and not its limit (10).
	orgA, secretA := g.meteredOrg(1, 5, nil)
	keyMax := int64(3)
	orgB, secretB := g.meteredOrgKeyMax(2, 10, nil, &keyMax)
	gotA, gotB := g.driveGET(secretA, 7), g.driveGET(secretB, 6)
	if gotA[200] != 5 || gotA[429] != 2 || gotB[200] != 3 || gotB[429] != 3 {
		t.Fatalf("statuses: org A %v, org B %v", gotA, gotB)
	}
	// Refused requests add nothing, and unauthenticated ones are org="none".
	g.driveGET("", 2)

	prom := startPrometheus(t, bin, g.l.Metrics, filepath.Join(rulesDir(t), "keygate-rules.yml"))
	type want struct {
		query string
		byOrg map[string]float64
	}
	wants := []want{
		{`keygate_quota_usage{meter="requests"}`, map[string]float64{orgA: 5, orgB: 3}},
		{`keygate_quota_limit{meter="requests"}`, map[string]float64{orgA: 5, orgB: 10}},
		{`sum by (org) (keygate_requests_total{outcome="admitted"})`, map[string]float64{orgA: 5, orgB: 3}},
		{`sum by (org) (keygate_requests_total{outcome="quota_exceeded",status_class="4xx"})`, map[string]float64{orgA: 2, orgB: 3}},
		{`sum by (org) (keygate_requests_total{status_class="4xx"})`, map[string]float64{orgA: 2, orgB: 3, "none": 2}},
		// The recording rules and the alert evaluate on the scraped data.
		{`org_meter:keygate_quota_usage:ratio{meter="requests"}`, map[string]float64{orgA: 1, orgB: 0.3}},
		{`ALERTS{alertname="KeygateOrgQuotaExhausted",meter="requests"}`, map[string]float64{orgA: 1}},
	}
	deadline := time.Now().Add(45 * time.Second)
	for _, w := range wants {
		for {
			got, err := prom.query(w.query)
			if err == nil && equalByOrg(got, w.byOrg) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s = %v (err %v), want %v\nprometheus log:\n%s", w.query, got, err, w.byOrg, prom.log())
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
}

func equalByOrg(got, want map[string]float64) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			return false
		}
	}
	return true
}

// promServer is a prometheus process owned by one test.
type promServer struct {
	addr string
	mu   sync.Mutex
	out  bytes.Buffer
}

func (p *promServer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *promServer) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// startPrometheus runs prometheus on a loopback port, scraping target every
// second with rules loaded, and kills it when the test ends.
func startPrometheus(t *testing.T, bin, target, rules string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: keygate
    static_configs:
      - targets: [%q]
`, rules, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &promServer{addr: "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))}
	cmd := exec.Command(bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr,
		"--log.level=warn",
	)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = p, p
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("prometheus (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", p.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30s:\n%s", p.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// query runs an instant query and returns the value of each series by its
// org label.
func (p *promServer) query(q string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+p.addr+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, r.Error)
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		v, _ := s.Value[1].(string)
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v", q, s.Value[1])
		}
		out[s.Metric["org"]] = f
	}
	return out, nil
}
