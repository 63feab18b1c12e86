package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/nginxtest"
	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
)

// nginxRecipe is deploy/authz/nginx.conf with its three addresses replaced:
// keygate's authorization listener and the backend (nginx's own port is
// replaced by nginxtest.Start).
func nginxRecipe(t *testing.T, authz, backend string) string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/authz/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	for from, to := range map[string]string{"server 127.0.0.1:8001;": "server " + authz + ";", "server 127.0.0.1:8080;": "server " + backend + ";"} {
		if !strings.Contains(conf, from) {
			t.Fatalf("deploy/authz/nginx.conf has no %q", from)
		}
		conf = strings.ReplaceAll(conf, from, to)
	}
	return conf
}

// TestNginxAuthRequest runs the nginx recipe (deploy/authz/nginx.conf) with
// Debian's real nginx in front of a backend, and keygate as its
// authorization service only (no KEYGATE_UPSTREAM_URL), on a real Redis in
// closed failure mode. What the client gets and what the backend receives:
// no key 401, a minted key 403, a good key 200 with the identity headers
// and without the credential, the request after the quota 429 with
// Retry-After and not forwarded, each forwarded request charged once, a rate
// limit's 429 and the store outage's 503 with Retry-After, and 503 when
// keygate itself is gone.
func TestNginxAuthRequest(t *testing.T) {
	nginxtest.Binary(t)
	rec := &recorder{}
	backend := httptest.NewServer(rec)
	defer backend.Close()
	srv := redistest.Start(t)
	g := startGate(t, map[string]string{"KEYGATE_AUTHZ_ADDR": "127.0.0.1:0", "KEYGATE_REDIS_URL": srv.URL(),
		"KEYGATE_FAILURE_MODE": "closed", "KEYGATE_REDIS_TIMEOUT": "100ms", "KEYGATE_TRUSTED_PROXIES": "127.0.0.1"})
	ngx := nginxtest.Start(t, nginxRecipe(t, g.l.Authz, strings.TrimPrefix(backend.URL, "http://")), 8000)
	base := "http://" + ngx.Addr
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nginx error log:\n%s", ngx.ErrorLog())
		}
	})

	org, ks := g.setupOrg(1, 3, "month", map[string][]string{"owner": {"admin"}, "reader": {"read"}})
	good := ks["owner"].AccessSecret
	usage := func() int64 {
		var view struct {
			Usage struct {
				CurrentUsage int64 `json:"current_usage"`
			} `json:"usage"`
		}
		g.admin("GET", "/admin/v1/orgs/"+org, nil, 200, &view)
		return view.Usage.CurrentUsage
	}
	// get sends a client request through nginx and checks what came back
	// and whether the backend saw it.
	get := func(method, path string, hdr map[string]string, status int, forwarded bool) (http.Header, string) {
		t.Helper()
		before := rec.count()
		got, h, body := call(t, method, base+path, hdr, "")
		if got != status {
			t.Fatalf("%s %s: %d %s, want %d", method, path, got, body, status)
		}
		if n := rec.count() - before; n != map[bool]int{true: 1}[forwarded] {
			t.Fatalf("%s %s: the backend received %d requests, forwarded=%v", method, path, n, forwarded)
		}
		if status >= 400 && h.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: refusal with Content-Type %q", method, path, h.Get("Content-Type"))
		}
		return h, string(body)
	}

	if _, body := get("GET", "/v1/things", nil, 401, false); body != `{"statusCode":401,"statusMessage":"Valid API key required"}`+"\n" {
		t.Errorf("no key: %s", body)
	}
	minted, err := keys.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	// The data path answers a minted (well-formed, unknown) key 403
	// Invalid API key; so does nginx with the recipe.
	get("GET", "/v1/things", apiKey(minted), 403, false)
	get("DELETE", "/v1/things/1", apiKey(ks["reader"].AccessSecret), 403, false)

	// Admitted: the identity reaches the backend, the credential and the
	// client's own X-Keygate-* do not, and the client sees the quota.
	h, _ := get("GET", "/v1/things?page=2", map[string]string{"X-API-Key": good, "X-Keygate-Org-Id": "forged"}, 200, true)
	up := rec.last(t)
	if up.Header.Get("X-Keygate-Org-Id") != org || up.Header.Get("X-Keygate-Key-Name") != "owner" ||
		up.Header.Get("X-Keygate-Key-Id") != ks["owner"].UID || up.Header.Get("X-Keygate-Permissions") != "admin" {
		t.Errorf("the backend got identity headers %v", up.Header)
	}
	if up.Header.Get("X-Api-Key") != "" || up.URL.RequestURI() != "/v1/things?page=2" {
		t.Errorf("the backend got %s with X-API-Key %q", up.URL.RequestURI(), up.Header.Get("X-Api-Key"))
	}
	if h.Get("Ratelimit") != `"org";r=2;t=`+strings.TrimPrefix(h.Get("Ratelimit"), `"org";r=2;t=`) || !strings.HasPrefix(h.Get("Ratelimit-Policy"), `"org";q=3`) {
		t.Errorf("RateLimit %q, RateLimit-Policy %q", h.Get("Ratelimit"), h.Get("Ratelimit-Policy"))
	}
	// A bearer token is consumed: Authorization does not reach the backend.
	get("GET", "/v1/things", map[string]string{"Authorization": "Bearer " + good}, 200, true)
	if a := rec.last(t).Header.Get("Authorization"); a != "" {
		t.Errorf("the backend got Authorization %q", a)
	}
	get("POST", "/v1/things", map[string]string{"X-API-Key": good, "Authorization": "Basic dTpw"}, 200, true)
	if a := rec.last(t).Header.Get("Authorization"); a != "Basic dTpw" {
		t.Errorf("the backend's own Authorization became %q", a)
	}
	if n := usage(); n != 3 {
		t.Errorf("usage %d after 3 forwarded requests", n)
	}
	// The quota is spent: the next request is refused and not forwarded.
	h, body := get("GET", "/v1/things", apiKey(good), 429, false)
	if ra, err := strconv.Atoi(h.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("quota 429: Retry-After %q, body %s", h.Get("Retry-After"), body)
	}
	if n := usage(); n != 3 {
		t.Errorf("usage %d after the refusal, want 3", n)
	}

	// The checks are counted and logged as the authz_http front's, with the
	// client's method and path.
	m := g.scrapeMetrics()
	for _, series := range []string{
		`keygate_requests_total{front="authz_http",org="` + org + `",outcome="admitted",status_class="2xx"} 3`,
		`keygate_requests_total{front="authz_http",org="` + org + `",outcome="quota_exceeded",status_class="4xx"} 1`,
		`keygate_requests_total{front="authz_http",org="none",outcome="no_credential",status_class="4xx"} 1`,
	} {
		if !strings.Contains(m, series+"\n") {
			t.Errorf("metrics lack %s", series)
		}
	}

	// Without KEYGATE_UPSTREAM_URL the data listener serves the self-served
	// routes, and refuses the rest without deciding or counting.
	if status, _, body := call(t, "GET", "http://"+g.l.Data+"/api/v1/account", apiKey(good), ""); status != 200 {
		t.Errorf("self-served route without an upstream: %d %s", status, body)
	}
	if status, _, body := call(t, "GET", "http://"+g.l.Data+"/v1/things", apiKey(good), ""); status != 404 ||
		!strings.Contains(string(body), "No data path") {
		t.Errorf("data path without an upstream: %d %s", status, body)
	}
	if n := usage(); n != 3 {
		t.Errorf("usage %d after the data listener's answers, want 3", n)
	}

	// A rate limit's 429.
	g.admin("POST", "/admin/v1/plans", map[string]any{"id": 2, "name": "big", "price": "0.00", "period": "month", "max_api_requests": 1000}, 201, nil)
	limited := g.createOrg(map[string]any{"name": "Limited", "plan_id": 2, "rate_limit": map[string]any{"requests": 1, "per": "1h"}})
	lk := g.createKey(limited, "k", "read")
	get("GET", "/v1/things", apiKey(lk.AccessSecret), 200, true)
	h, body = get("GET", "/v1/things", apiKey(lk.AccessSecret), 429, false)
	if ra, err := strconv.Atoi(h.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("rate limit 429: Retry-After %q, body %s", h.Get("Retry-After"), body)
	}

	// The store is gone (closed mode): 503 with Retry-After, not forwarded.
	srv.Stop()
	h, body = get("GET", "/v1/things", apiKey(lk.AccessSecret), 503, false)
	if h.Get("Retry-After") != "1" {
		t.Errorf("store outage 503: Retry-After %q, body %s", h.Get("Retry-After"), body)
	}
	// keygate itself is gone: nginx answers 503 with Retry-After.
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	h, body = get("GET", "/v1/things", apiKey(lk.AccessSecret), 503, false)
	if h.Get("Retry-After") != "1" || !strings.Contains(body, "Authorization service unavailable") {
		t.Errorf("keygate gone: Retry-After %q, body %s", h.Get("Retry-After"), body)
	}
	// Stopped, keygate has flushed its access log.
	var sawDelete bool
	for _, line := range strings.Split(g.logs.String(), "\n") {
		if strings.Contains(line, `"logger":"access"`) && strings.Contains(line, `"front":"authz_http"`) &&
			strings.Contains(line, `"method":"DELETE"`) && strings.Contains(line, `"path":"/v1/things/1"`) && strings.Contains(line, `"status":403`) {
			sawDelete = true
		}
		if strings.Contains(line, "page=2") {
			t.Errorf("the access log has a query: %s", line)
		}
	}
	if !sawDelete {
		t.Errorf("no access log line for the refused DELETE through nginx:\n%s", g.logs)
	}
}
