package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// Tests of DESIGN.md's public contract not covered by the seed and quota
// tests: streaming, connection reuse, health endpoints, route rules, the
// IETF rate-limit headers, per-key allocation on change, and a store
// outage for a key this sidecar never verified.

// TestSSEStreamed: the first event of a server-sent event stream reaches the
// client while the upstream is still sending.
func TestSSEStreamed(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "data: one\n\n")
		_ = http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	}))
	defer up.Close()
	defer unblock()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+g.l.Data+"/events", nil)
	req.Header.Set("X-API-Key", ks["k"].AccessSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	rd := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() {
		line, _ := rd.ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		if line != "data: one\n" {
			t.Fatalf("first line %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first event did not reach the client while the upstream was still streaming")
	}
	unblock()
	rest, err := io.ReadAll(rd)
	if err != nil || string(rest) != "\ndata: two\n\n" {
		t.Fatalf("rest of stream %q, %v", rest, err)
	}
}

// TestUpstreamConnectionReuse: sequential requests through keygate share
// upstream connections instead of dialing one each.
func TestUpstreamConnectionReuse(t *testing.T) {
	var dials atomic.Int64
	up := httptest.NewUnstartedServer(&recorder{})
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dials.Add(1)
		}
	}
	up.Start()
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read", "write"}})
	hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}
	const n = 50
	for i := range n {
		method, body := "GET", ""
		if i%2 == 1 {
			method, body = "POST", `{"i":1}`
		}
		if status, _, b := call(t, method, "http://"+g.l.Data+"/x", hdr, body); status != 200 {
			t.Fatalf("request %d: %d %s", i, status, b)
		}
	}
	if d := dials.Load(); d > 2 {
		t.Errorf("%d sequential requests opened %d upstream connections, want them reused (at most 2)", n, d)
	}
}

// TestHealthAndReady: /healthz says the process is alive, /readyz says the
// store answers, and follows Redis going away and coming back.
func TestHealthAndReady(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	srv := redistest.Start(t)
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_REDIS_TIMEOUT": "100ms"})
	m := "http://" + g.l.Metrics
	get := func(path string) int {
		t.Helper()
		status, _, _ := call(t, "GET", m+path, nil, "")
		return status
	}
	if s := get("/healthz"); s != 200 {
		t.Errorf("/healthz: %d", s)
	}
	if s := get("/readyz"); s != 200 {
		t.Errorf("/readyz with Redis up: %d", s)
	}
	srv.Stop()
	if s := get("/readyz"); s != 503 {
		t.Errorf("/readyz with Redis down: %d, want 503", s)
	}
	if s := get("/healthz"); s != 200 {
		t.Errorf("/healthz with Redis down: %d, want 200 (the process is alive)", s)
	}
	srv.Restart()
	pollUntil(t, 5*time.Second, func() string {
		if s := get("/readyz"); s != 200 {
			return "/readyz after Redis came back: " + strconv.Itoa(s)
		}
		return ""
	})
}

// rateLimit parses the IETF headers of a response: policy name, q, w, r, t
// (-1 when a parameter is absent). It fails on any other syntax.
func rateLimit(t *testing.T, h http.Header) (name string, q, w, r, tt int64) {
	t.Helper()
	// RateLimit-Policy lists every policy that applies; RateLimit names
	// the one closest to refusing, which must be among them.
	policyRE := regexp.MustCompile(`^"([a-z-]+)";q=(\d+)(?:;w=(\d+))?$`)
	stateRE := regexp.MustCompile(`^"([a-z-]+)";r=(\d+)(?:;t=(\d+))?$`)
	sm := stateRE.FindStringSubmatch(h.Get("RateLimit"))
	var pm []string
	for _, item := range strings.Split(h.Get("RateLimit-Policy"), ", ") {
		m := policyRE.FindStringSubmatch(item)
		if m == nil {
			pm = nil
			break
		}
		if sm != nil && m[1] == sm[1] {
			pm = m
		}
	}
	if pm == nil || sm == nil || pm[1] != sm[1] {
		t.Fatalf("RateLimit-Policy %q / RateLimit %q: want `\"name\";q=N;w=S` and `\"name\";r=N;t=S`", h.Get("RateLimit-Policy"), h.Get("RateLimit"))
	}
	num := func(s string) int64 {
		if s == "" {
			return -1
		}
		n, _ := strconv.ParseInt(s, 10, 64)
		return n
	}
	return pm[1], num(pm[2]), num(pm[3]), num(sm[2]), num(sm[3])
}

// TestRouteRulesCostsAndHeaders: a routes file sets permission and cost on
// the data path; self-served routes cost nothing; the rate-limit headers
// list every quota and report the tighter one in the draft's syntax.
func TestRouteRulesCostsAndHeaders(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		rec := &recorder{}
		up := httptest.NewServer(rec)
		defer up.Close()
		routes := filepath.Join(t.TempDir(), "routes.yaml")
		if err := os.WriteFile(routes, []byte(`
- method: POST
  path: /pins/*
  permission: pin
  cost: 5
- path: /free
  cost: 0
`), 0o600); err != nil {
			t.Fatal(err)
		}
		g := startGate(t, mergeEnv(withUpstream(env, up.URL), map[string]string{"KEYGATE_ROUTES_FILE": routes}))
		org, ks := g.setupOrg(1, 20, "2s", map[string][]string{"writer": {"read", "write"}, "pinner": {"read", "pin"}})
		var capped newKey
		g.admin("POST", "/admin/v1/orgs/"+org+"/keys", map[string]any{"name": "capped", "permissions": []string{"read"}, "max_api_requests": 3}, 201, &capped)
		data := "http://" + g.l.Data
		as := func(k newKey) map[string]string { return map[string]string{"X-API-Key": k.AccessSecret} }
		accountUsage := func() int64 {
			t.Helper()
			status, _, b := call(t, "GET", data+"/api/v1/account", as(ks["pinner"]), "")
			var a struct {
				RequestCost int64 `json:"request_cost"`
				OrgQuota    struct {
					CurrentUsage int64 `json:"current_usage"`
				} `json:"organization_quota"`
			}
			if status != 200 || json.Unmarshal(b, &a) != nil || a.RequestCost != 0 {
				t.Fatalf("account: %d %s", status, b)
			}
			return a.OrgQuota.CurrentUsage
		}

		// The 2s window may turn during the test; wait for a fresh one so
		// every count below is in one window.
		for time.Now().UnixMilli()%2000 > 400 {
			time.Sleep(20 * time.Millisecond)
		}

		// The pin route needs pin, not the default write.
		status, _, b := call(t, "POST", data+"/pins/abc", as(ks["writer"]), "x")
		if status != 403 || !strings.Contains(string(b), `\"pin\"`) {
			t.Errorf("write key on pin route: %d %s", status, b)
		}
		before := rec.count()
		status, h, b := call(t, "POST", data+"/pins/abc", as(ks["pinner"]), "x")
		if status != 200 || rec.count() != before+1 {
			t.Fatalf("pin key on pin route: %d %s", status, b)
		}
		if name, q, w, r, tt := rateLimit(t, h); name != "org" || q != 20 || w != 2 || r != 15 || tt < 1 || tt > 2 {
			t.Errorf("after a cost-5 request: %q q=%d w=%d r=%d t=%d, want \"org\" q=20 w=2 r=15 t in 1..2", name, q, w, r, tt)
		}
		if u := accountUsage(); u != 5 {
			t.Errorf("org usage after one cost-5 request and the account route: %d, want 5", u)
		}
		// A cost-0 route is admitted and counts nothing.
		if status, h, b := call(t, "GET", data+"/free", as(ks["pinner"]), ""); status != 200 {
			t.Errorf("free route: %d %s", status, b)
		} else if _, _, _, r, _ := rateLimit(t, h); r != 15 {
			t.Errorf("free route: remaining %d, want 15", r)
		}
		// The capped key's 3 are tighter than the org's remaining 15.
		status, h, _ = call(t, "GET", data+"/x", as(capped), "")
		if name, q, _, r, _ := rateLimit(t, h); status != 200 || name != "key" || q != 3 || r != 2 {
			t.Errorf("capped key: %d %q q=%d r=%d, want 200 \"key\" q=3 r=2", status, name, q, r)
		}
		// Cost 5 twice more: 6+5 = 11 fits, 16+5 = 21 does not.
		for i, want := range []int{200, 200, 429} {
			status, h, b := call(t, "POST", data+"/pins/abc", as(ks["pinner"]), "x")
			if status != want {
				t.Fatalf("pin request %d: %d %s, want %d", i+2, status, b, want)
			}
			if status == 429 && (h.Get("Retry-After") == "" || !strings.Contains(string(b), "Organization quota exceeded: 16 of 20")) {
				t.Errorf("429: Retry-After %q body %s", h.Get("Retry-After"), b)
			}
		}
		// The refused cost-5 request counted nothing: a cost-1 one still fits.
		if u := accountUsage(); u != 16 {
			t.Errorf("org usage: %d, want 16", u)
		}
		if status, _, b := call(t, "GET", data+"/x", as(ks["pinner"]), ""); status != 200 {
			t.Errorf("cost-1 request after the refusal: %d %s", status, b)
		}
	})
}

// TestOpenModeNeverVerifiedKey: in open mode a store outage admits only keys
// this sidecar verified before; a key it never saw gets 503 with
// Retry-After, never 401/403.
func TestOpenModeNeverVerifiedKey(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	srv := redistest.Start(t)
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(),
		"KEYGATE_REDIS_TIMEOUT": "300ms", "KEYGATE_FAILURE_MODE": "open"})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"seen": {"read"}, "unseen": {"read"}})
	data := "http://" + g.l.Data
	if status, _, b := call(t, "GET", data+"/", map[string]string{"X-API-Key": ks["seen"].AccessSecret}, ""); status != 200 {
		t.Fatalf("before outage: %d %s", status, b)
	}
	srv.Stop()
	before := rec.count()
	for name, hdr := range map[string]map[string]string{
		"api key": {"X-API-Key": ks["unseen"].AccessSecret},
		"pair":    {"X-Access-Key": ks["unseen"].AccessKey, "X-Access-Secret": ks["unseen"].AccessSecret},
	} {
		status, h, b := call(t, "GET", data+"/", hdr, "")
		if status != 503 || h.Get("Retry-After") == "" ||
			strings.TrimSpace(string(b)) != `{"error":true,"statusCode":503,"message":"Key store unavailable, retry shortly"}` {
			t.Errorf("%s, never verified, store down: %d Retry-After %q %s", name, status, h.Get("Retry-After"), b)
		}
	}
	if rec.count() != before {
		t.Errorf("an unverified key reached the upstream")
	}
	if status, _, b := call(t, "GET", data+"/", map[string]string{"X-API-Key": ks["seen"].AccessSecret}, ""); status != 200 {
		t.Errorf("verified key in open mode during outage: %d %s", status, b)
	}
}

// TestAdminKeyMaxChange: changing a key's maximum keeps the sum of per-key
// maxima within the org's quota, and the account route follows.
func TestAdminKeyMaxChange(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		up := httptest.NewServer(&recorder{})
		defer up.Close()
		g := startGate(t, withUpstream(env, up.URL))
		org, ks := g.setupOrg(1, 100, "month", map[string][]string{"a": {"read"}, "b": {"read"}})
		base := "/admin/v1/orgs/" + org + "/keys/"
		adminURL := "http://" + g.l.Admin
		auth := map[string]string{"Authorization": "Bearer " + testAdminToken}
		g.admin("PATCH", base+"a", map[string]any{"max_api_requests": 60}, 200, nil)
		for _, tc := range []struct {
			name, path, body string
			status           int
			msg              string
		}{
			{"over-allocate", base + "b", `{"max_api_requests":41}`, 409, "Per-key quotas would exceed the organization quota"},
			{"negative", base + "b", `{"max_api_requests":-1}`, 400, "invalid max_api_requests: must be null or at least 0"},
			{"unknown key", base + "nope", `{"max_api_requests":1}`, 404, "Not found"},
			{"unknown org", "/admin/v1/orgs/nope/keys/b", `{"max_api_requests":1}`, 404, "Not found"},
			{"wrong type", base + "b", `{"max_api_requests":"ten"}`, 400, `field "max_api_requests" must be a number`},
		} {
			status, _, b := call(t, "PATCH", adminURL+tc.path, auth, tc.body)
			var e struct {
				StatusCode int    `json:"statusCode"`
				Message    string `json:"message"`
			}
			_ = json.Unmarshal(b, &e)
			if status != tc.status || e.Message != tc.msg {
				t.Errorf("%s: %d %s, want %d %q", tc.name, status, b, tc.status, tc.msg)
			}
		}
		// Exactly the rest fits; then lowering a frees room for the other.
		g.admin("PATCH", base+"b", map[string]any{"max_api_requests": 40}, 200, nil)
		g.admin("PATCH", base+"a", map[string]any{"max_api_requests": 10}, 200, nil)
		g.admin("PATCH", base+"b", map[string]any{"max_api_requests": 90}, 200, nil)
		status, _, b := call(t, "GET", "http://"+g.l.Data+"/api/v1/account", map[string]string{"X-API-Key": ks["b"].AccessSecret}, "")
		var a struct {
			APIKey struct {
				Max *int64 `json:"max_api_requests"`
			} `json:"api_key"`
			OrgQuota struct {
				Allocated int64  `json:"allocated_api_key_quota"`
				Available *int64 `json:"available_api_key_quota"`
			} `json:"organization_quota"`
		}
		if status != 200 || json.Unmarshal(b, &a) != nil || a.APIKey.Max == nil || *a.APIKey.Max != 90 ||
			a.OrgQuota.Allocated != 100 || a.OrgQuota.Available == nil || *a.OrgQuota.Available != 0 {
			t.Errorf("account after changes: %d %s", status, b)
		}

		// Every operator request leaves one audit line; never the token, a
		// password or a secret.
		const password = "hunter2-operator-password"
		g.admin("POST", "/admin/v1/orgs", map[string]any{"name": "Login", "plan_id": 1, "username": "login", "password": password}, 201, nil)
		if err := g.stop(); err != nil {
			t.Fatal(err)
		}
		var sawRefusal bool
		for line := range strings.SplitSeq(g.logs.String(), "\n") {
			var l struct {
				Logger, Msg, Method, Path string
				Status                    int
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Logger == "admin" && l.Method == "PATCH" && l.Path == base+"b" && l.Status == 409 {
				sawRefusal = true
			}
		}
		if !sawRefusal {
			t.Errorf("no audit line for the refused PATCH %s", base+"b")
		}
		for _, secret := range []string{testAdminToken, password, ks["a"].AccessSecret, ks["b"].AccessSecret} {
			if strings.Contains(g.logs.String(), secret) {
				t.Errorf("the log contains %q", secret)
			}
		}
	})
}
