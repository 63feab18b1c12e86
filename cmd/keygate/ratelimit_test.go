package main

import (
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// TestOrgRateLimitAcrossSidecars: an organization rate limit of 10 a
// minute with a burst of 10, shared by two sidecars, admits exactly 10 of 60
// concurrent requests; the refused ones get 429 with Retry-After, reach no
// upstream and count against nothing.
func TestOrgRateLimitAcrossSidecars(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	srv := redistest.Start(t)
	// Closed and with a generous store deadline: on a loaded machine a
	// charge past the default 250ms would be admitted uncounted (open mode),
	// which is not what this test is about.
	env := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_LOG_LEVEL": "warn",
		"KEYGATE_FAILURE_MODE": "closed", "KEYGATE_REDIS_TIMEOUT": "5s"}
	a := startGate(t, env)
	b := startGate(t, env)
	a.admin("POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "rated", "period": "month", "max_api_requests": 1000,
		"org_rate_limit": map[string]any{"requests": 10, "per": "1m", "burst": 10}}, 201, nil)
	var org struct {
		ID string `json:"id"`
	}
	a.admin("POST", "/admin/v1/orgs", map[string]any{"name": "Acme", "plan_id": 1}, 201, &org)
	secrets := make([]string, 3)
	for i := range secrets {
		var k newKey
		a.admin("POST", "/admin/v1/orgs/"+org.ID+"/keys", map[string]any{"name": "k" + strconv.Itoa(i), "permissions": []string{"read"}}, 201, &k)
		secrets[i] = k.AccessSecret
	}
	var mu sync.Mutex
	statuses := map[int]int{}
	var retryAfter []string
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := []*gate{a, b}[i%2]
			status, h, body := call(t, "GET", "http://"+g.l.Data+"/x", apiKey(secrets[i%3]), "")
			mu.Lock()
			defer mu.Unlock()
			statuses[status]++
			if status == 429 {
				retryAfter = append(retryAfter, h.Get("Retry-After"))
				var e dataErrorBody
				if err := json.Unmarshal(body, &e); err != nil || !strings.HasPrefix(e.Message, "Rate limit exceeded") {
					t.Errorf("429 body %s", body)
				}
			}
		}()
	}
	wg.Wait()
	if statuses[200] != 10 || statuses[429] != 50 {
		t.Errorf("60 concurrent requests: %v, want 10 admitted and 50 refused", statuses)
	}
	for _, ra := range retryAfter {
		if n, err := strconv.Atoi(ra); err != nil || n < 1 || n > 60 {
			t.Errorf("Retry-After %q, want whole seconds until one request passes", ra)
			break
		}
	}
	if n := rec.count(); n != 10 {
		t.Errorf("the upstream received %d requests, want 10", n)
	}
	// With leases (the default) the other sidecar's unspent quota block
	// counts in the usage until it goes back, within a second of its last
	// use (docs/quota-leases.md): never below what was admitted, then exact.
	deadline := time.Now().Add(3 * time.Second)
	for {
		var o struct {
			Usage struct {
				CurrentUsage int64 `json:"current_usage"`
			} `json:"usage"`
		}
		a.admin("GET", "/admin/v1/orgs/"+org.ID, nil, 200, &o)
		if o.Usage.CurrentUsage < 10 {
			t.Fatalf("quota usage %d after 10 admitted requests", o.Usage.CurrentUsage)
		}
		if o.Usage.CurrentUsage == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quota usage %d 3s after 10 admitted requests, want 10 (refusals count nothing)", o.Usage.CurrentUsage)
		}
		time.Sleep(50 * time.Millisecond) // the give-back has no signal a client sees
	}
}

// TestShadowRateLimitNeverRefuses: a shadow key limit reports what it
// would do — headers, metrics — without refusing; the quota still applies.
func TestShadowRateLimitNeverRefuses(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL})
	g.admin("POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "p", "period": "month", "max_api_requests": 1000}, 201, nil)
	var org struct {
		ID string `json:"id"`
	}
	g.admin("POST", "/admin/v1/orgs", map[string]any{"name": "Acme", "plan_id": 1}, 201, &org)
	var k newKey
	g.admin("POST", "/admin/v1/orgs/"+org.ID+"/keys", map[string]any{"name": "k", "permissions": []string{"read"},
		"rate_limit": map[string]any{"requests": 2, "per": "1h", "shadow": true}}, 201, &k)
	for i := range 5 {
		status, h, body := call(t, "GET", "http://"+g.l.Data+"/x", apiKey(k.AccessSecret), "")
		if status != 200 {
			t.Fatalf("request %d under a shadow limit: %d %s", i, status, body)
		}
		if p := h.Get("RateLimit-Policy"); !strings.Contains(p, `"key-rate";q=2;w=3600`) || !strings.Contains(p, `"org";q=1000`) {
			t.Errorf("RateLimit-Policy %q", p)
		}
		if s := h.Get("RateLimit"); !strings.HasPrefix(s, `"org";`) {
			t.Errorf("RateLimit %q: a shadow limit is never the one reported as closest", s)
		}
	}
	_, _, metrics := call(t, "GET", "http://"+g.l.Metrics+"/metrics", nil, "")
	if !strings.Contains(string(metrics), `keygate_rate_limit_would_limit_total{policy="key-rate"} 3`) {
		t.Errorf("metrics lack 3 would-limit requests of key-rate")
	}
	// Enforced, the same limit refuses at once: it was not advanced by the
	// requests it would have refused.
	g.admin("PATCH", "/admin/v1/orgs/"+org.ID+"/keys/k", map[string]any{"rate_limit": map[string]any{"requests": 2, "per": "1h"}}, 200, nil)
	if status, _, body := call(t, "GET", "http://"+g.l.Data+"/x", apiKey(k.AccessSecret), ""); status != 429 {
		t.Errorf("enforced limit after 2 admitted: %d %s", status, body)
	}
}
