package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
)

const (
	dashboardFile = "keygate-quota.json"
	rulesFile     = "../prometheus/keygate-rules.yml"
)

// TestDashboardIsGenerated: the file is what the generator writes.
func TestDashboardIsGenerated(t *testing.T) {
	d, err := quotaDashboard()
	if err != nil {
		t.Fatal(err)
	}
	want, err := marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run `cd deploy && go run ./grafana > grafana/%s`", dashboardFile, dashboardFile)
	}
}

// decodeDashboard decodes the file strictly: an unknown field, a wrong type
// or a missing required field anywhere fails.
func decodeDashboard(t *testing.T) dashboard.Dashboard {
	t.Helper()
	plugins.RegisterDefaultPlugins()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard.Dashboard
	if err := d.UnmarshalJSONStrict(raw); err != nil {
		t.Fatalf("strict decoding of %s: %v", dashboardFile, err)
	}
	return d
}

// dashboardQuery is a PromQL expression of the dashboard and where it is.
type dashboardQuery struct{ where, expr string }

// dashboardQueries returns every Prometheus query of the decoded dashboard;
// a target of another kind, or a panel off the datasource variable, fails.
func dashboardQueries(t *testing.T, d dashboard.Dashboard) []dashboardQuery {
	t.Helper()
	var out []dashboardQuery
	for _, p := range d.Panels {
		if p.Panel == nil {
			continue
		}
		title := ""
		if p.Panel.Title != nil {
			title = *p.Panel.Title
		}
		if ds := p.Panel.Datasource; ds == nil || ds.Uid == nil || *ds.Uid != "${datasource}" {
			t.Errorf("panel %q: data source is not ${datasource}", title)
		}
		if len(p.Panel.Targets) == 0 {
			t.Errorf("panel %q has no query", title)
		}
		for _, target := range p.Panel.Targets {
			q, ok := target.(*prometheus.Dataquery)
			if !ok {
				t.Fatalf("panel %q: target %T is not a Prometheus query", title, target)
			}
			out = append(out, dashboardQuery{where: fmt.Sprintf("panel %q", title), expr: q.Expr})
		}
	}
	return out
}

// TestDashboardDecodesStrictly checks the structure an operator relies on:
// the datasource and org variables, and the panels the issue asks for.
func TestDashboardDecodesStrictly(t *testing.T) {
	d := decodeDashboard(t)
	vars := map[string]dashboard.VariableModel{}
	if d.Templating.List != nil {
		for _, v := range d.Templating.List {
			vars[v.Name] = v
		}
	}
	if v, ok := vars["datasource"]; !ok || v.Type != dashboard.VariableTypeDatasource {
		t.Errorf("no datasource variable: %+v", v)
	}
	if v, ok := vars["org"]; !ok || v.Type != dashboard.VariableTypeQuery || v.Multi == nil || !*v.Multi {
		t.Errorf("no multi-value org query variable: %+v", v)
	}
	all := ""
	for _, q := range dashboardQueries(t, d) {
		all += q.expr + "\n"
	}
	for _, want := range []string{
		"org_meter:keygate_quota_usage:ratio", "predict_linear(", "deriv1h",
		`outcome="no_credential"`, `outcome="quota_exceeded"`, `outcome="store_unavailable"`,
		`outcome="upstream_error"`, `outcome="upstream_timeout"`, `outcome=~"invalid_credential|forbidden"`,
		`outcome="client_closed"`, `outcome="rate_limited"`,
		"keygate_upstream_duration_seconds", "keygate:request_added_seconds:mean5m",
		"keygate_store_duration_seconds", "keygate_store_errors_total", "keygate_fail_open_admits_total",
		"keygate_revocation_lag_seconds_bucket",
		"keygate_auth_cache_entries", "keygate_auth_cache_bytes", "keygate_auth_cache_revalidations_total",
		"keygate_auth_change_log_events_total",
		"keygate_quota_lease_outstanding_units", "keygate_quota_lease_lost_units_total",
		"keygate_rate_lease_outstanding_slots", "keygate_rate_lease_renewals_total",
		"keygate_rate_lease_returned_slots_total", "keygate_rate_lease_lost_slots_total",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no dashboard query uses %s", want)
		}
	}
}

// grafanaVars stands in for Grafana's template variables so that the
// queries parse as Prometheus receives them.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "1m",
	"$__interval", "1m",
	"$__range", "1h",
	"${org:regex}", ".*",
	"$org", ".*",
	"$topn", "10",
)

// metricNames parses expr and returns the metric names it selects.
func metricNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			if name == "" {
				for _, m := range vs.LabelMatchers {
					if m.Name == "__name__" {
						name = m.Value
					}
				}
			}
			names = append(names, name)
		}
		return nil
	})
	return names, nil
}

func TestMetricNames(t *testing.T) {
	got, err := metricNames(`sum by (org) (rate(keygate_requests_total{org=~"$org"}[$__rate_interval])) / on () group_left {__name__="keygate_build_info"} + a:b:c offset 1h`)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"keygate_requests_total", "keygate_build_info", "a:b:c"}; !slices.Equal(got, want) {
		t.Errorf("metricNames = %v, want %v", got, want)
	}
	if _, err := metricNames(`rate(keygate_requests_total[5m]`); err == nil {
		t.Error("an unbalanced expression parsed")
	}
}

// ruleFile is the part of a Prometheus rule file the test reads.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// TestQueriesUseExportedMetrics parses every PromQL expression of the
// dashboard and of the rules file and checks that each metric it names is
// exported by a live keygate, or is a recording rule of the rules file.
func TestQueriesUseExportedMetrics(t *testing.T) {
	d := decodeDashboard(t)
	queries := dashboardQueries(t, d)
	for _, v := range d.Templating.List {
		if v.Type == dashboard.VariableTypeQuery && v.Query != nil && v.Query.String != nil {
			m := regexp.MustCompile(`^label_values\((\w+),\s*\w+\)$`).FindStringSubmatch(*v.Query.String)
			if m == nil {
				t.Errorf("variable %s: unexpected query %q", v.Name, *v.Query.String)
				continue
			}
			queries = append(queries, dashboardQuery{where: "variable " + v.Name, expr: m[1]})
		}
	}

	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	recorded := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
			name := r.Record + r.Alert
			queries = append(queries, dashboardQuery{where: "rule " + name, expr: r.Expr})
		}
	}

	live := liveMetricNames(t)
	used := map[string]bool{}
	for _, q := range queries {
		names, err := metricNames(q.expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", q.where, q.expr, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", q.where, q.expr)
		}
		for _, n := range names {
			used[n] = true
			switch {
			case n == "ALERTS" || n == "ALERTS_FOR_STATE":
			case strings.Contains(n, ":"):
				if !recorded[n] {
					t.Errorf("%s: %s is no recording rule of %s", q.where, n, rulesFile)
				}
			case !live[n]:
				t.Errorf("%s: %s is not exported by keygate's /metrics", q.where, n)
			}
		}
	}
	// Every recording rule is used by the dashboard or by another rule.
	for r := range recorded {
		if !used[r] {
			t.Errorf("recording rule %s is used nowhere", r)
		}
	}
	t.Logf("%d queries checked against %d exported names", len(queries), len(live))
}

// liveMetricNames builds and runs keygate (embedded store, loopback ports),
// drives a little traffic so every labelled series exists, and returns the
// sample names of its /metrics (with _bucket, _sum and _count of
// histograms and summaries).
func liveMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs keygate")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "keygate")
	build := exec.Command(goBin, "build", "-o", bin, "./cmd/keygate")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building keygate: %v\n%s", err, out)
	}

	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Keygate-Usage", "pinned_bytes=+1024")
		_, _ = io.WriteString(w, "ok\n")
	}))
	defer up.Close()
	data, admin, metrics := freeAddr(t), freeAddr(t), freeAddr(t)
	const token = "dashboard-test-token"
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KEYGATE_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"KEYGATE_UPSTREAM_URL="+up.URL,
		"KEYGATE_LISTEN_ADDR="+data,
		"KEYGATE_ADMIN_ADDR="+admin,
		"KEYGATE_METRICS_ADDR="+metrics,
		"KEYGATE_ADMIN_TOKEN="+token,
		"KEYGATE_LOG_LEVEL=warn",
	)
	var logs lockedBuffer
	cmd := exec.Command(bin, "serve")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	client := &http.Client{Timeout: 5 * time.Second}
	do := func(method, url, auth string, body any) (int, []byte) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequestWithContext(context.Background(), method, url, rd)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s, _ := do("GET", "http://"+metrics+"/healthz", "", nil); s == 200 {
			break
		}
		select {
		case <-exited:
			t.Fatalf("keygate exited:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("keygate not up after 20s:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	mustAdmin := func(path string, body any, out any) {
		t.Helper()
		s, b := do("POST", "http://"+admin+path, token, body)
		if s != 201 {
			t.Fatalf("POST %s: %d %s", path, s, b)
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatal(err)
			}
		}
	}
	mustAdmin("/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "price": "0.00", "period": "month",
		"max_api_requests": 2, "limits": map[string]int64{"egress": 1 << 20, "pinned_bytes": 1 << 30}}, nil)
	var org struct {
		ID string `json:"id"`
	}
	mustAdmin("/admin/v1/orgs", map[string]any{"name": "Acme", "email": "ops@example.com", "plan_id": 1}, &org)
	var key struct {
		Secret string `json:"access_secret"`
	}
	mustAdmin("/admin/v1/orgs/"+org.ID+"/keys", map[string]any{"name": "k1", "permissions": []string{"admin"}}, &key)
	for _, secret := range []string{key.Secret, key.Secret, key.Secret, ""} {
		do("GET", "http://"+data+"/v1/things", secret, nil)
	}

	var text string
	for {
		_, b := do("GET", "http://"+metrics+"/metrics", "", nil)
		text = string(b)
		if strings.Contains(text, `meter="pinned_bytes"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no meter usage on /metrics:\n%s\nlogs:\n%s", text, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	names := map[string]bool{}
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
			switch f[3] {
			case "histogram":
				names[f[2]+"_bucket"], names[f[2]+"_sum"], names[f[2]+"_count"] = true, true, true
			case "summary":
				names[f[2]+"_sum"], names[f[2]+"_count"] = true, true
			}
		}
	}
	keygate := []string{}
	for n := range names {
		if strings.HasPrefix(n, "keygate_") {
			keygate = append(keygate, n)
		}
	}
	sort.Strings(keygate)
	if !slices.Contains(keygate, "keygate_quota_usage") || !slices.Contains(keygate, "keygate_requests_total") {
		t.Fatalf("live /metrics lacks keygate's series: %v", keygate)
	}
	return names
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
