package fleet

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestFleet starts two sidecars on the embedded store, reads a metric of
// each, kills one with SIGKILL and stops the other with SIGTERM.
func TestFleet(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") }))
	defer up.Close()
	f := Start(t, Build(t), 2, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_ADMIN_TOKEN": "t"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := f.Sidecars[0], f.Sidecars[1]
	if a.Data == b.Data || a.Admin == "" || a.Metrics == "" {
		t.Fatalf("listeners %+v %+v", a, b)
	}
	for _, s := range f.Sidecars {
		resp, err := http.Get("http://" + s.Data + "/x") // no credential: 401, counted by outcome
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if n, err := s.Metric(ctx, "keygate_requests_total", `outcome="no_credential"`); err != nil || n != 1 {
			t.Errorf("no_credential requests = %v, %v; want 1", n, err)
		}
	}
	a.Kill()
	if _, err := http.Get("http://" + a.Data + "/x"); err == nil {
		t.Error("a killed sidecar still answers")
	}
	if err := b.Stop(); err != nil {
		t.Errorf("SIGTERM: %v\n%s", err, b.Logs())
	}
	if !strings.Contains(b.Logs(), `"msg":"stopped"`) {
		t.Errorf("no stopped line in the log:\n%s", b.Logs())
	}
}

func TestSumMetric(t *testing.T) {
	text := `# HELP x_total X.
# TYPE x_total counter
x_total{org="a",outcome="admitted"} 3
x_total{org="b",outcome="admitted"} 4
x_total{org="b",outcome="quota_exceeded"} 5
x_total_other 100
y 1e3
`
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"x_total", nil, 12},
		{"x_total", []string{`outcome="admitted"`}, 7},
		{"x_total", []string{`org="b"`, `outcome="admitted"`}, 4},
		{"y", nil, 1000},
		{"z", nil, 0},
	} {
		got, err := SumMetric(strings.NewReader(text), tc.name, tc.labels...)
		if err != nil || got != tc.want {
			t.Errorf("SumMetric(%s, %v) = %v, %v; want %v", tc.name, tc.labels, got, err, tc.want)
		}
	}
}
