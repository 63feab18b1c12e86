package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// eachStore runs f once on the embedded store and once on a private Redis.
//
// On Redis the store deadline is 2 s, not the default 250 ms: these tests
// are about what is answered, and a loaded 2-core CI machine running the
// race detector can take longer than 250 ms for a call now and then (a
// 503 that says nothing about the behaviour under test). The deadline's
// own behaviour has its tests (fault_test.go).
func eachStore(t *testing.T, f func(t *testing.T, env map[string]string)) {
	t.Run("memory", func(t *testing.T) { f(t, map[string]string{}) })
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		f(t, map[string]string{"KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_REDIS_TIMEOUT": "2s"})
	})
}

func withUpstream(env map[string]string, url string) map[string]string {
	out := map[string]string{"KEYGATE_UPSTREAM_URL": url}
	for k, v := range env {
		out[k] = v
	}
	return out
}

func TestCredentialFormsAndHeaders(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		rec := &recorder{}
		up := httptest.NewServer(rec)
		defer up.Close()
		g := startGate(t, withUpstream(env, up.URL))
		org, ks := g.setupOrg(1, 1000, "month", map[string][]string{"rw": {"read", "write"}})
		k := ks["rw"]
		data := "http://" + g.l.Data

		forms := map[string]map[string]string{
			"bearer":  {"Authorization": "Bearer " + k.AccessSecret},
			"api-key": {"X-API-Key": k.AccessSecret},
			"pair":    {"X-Access-Key": k.AccessKey, "X-Access-Secret": k.AccessSecret},
		}
		for name, hdr := range forms {
			t.Run(name, func(t *testing.T) {
				hdr["X-Keygate-Org-Id"] = "spoofed-org"
				hdr["X-Keygate-Permissions"] = "admin"
				hdr["X-Keygate-Anything"] = "spoofed"
				hdr["X-Forwarded-For"] = "203.0.113.7"
				hdr["Host"] = "api.example.com"
				status, h, body := call(t, "GET", data+"/v1/things?x=1", hdr, "")
				if status != 200 || string(body) != "hello from upstream\n" {
					t.Fatalf("status %d body %q", status, body)
				}
				if h.Get("RateLimit-Policy") == "" || h.Get("RateLimit") == "" {
					t.Errorf("missing RateLimit headers: %v", h)
				}
				got := rec.last(t)
				want := map[string]string{
					"X-Keygate-Org-Id":      org,
					"X-Keygate-Key-Id":      k.UID,
					"X-Keygate-Key-Name":    "rw",
					"X-Keygate-Permissions": "read,write",
					"X-Keygate-Anything":    "",
					"X-Api-Key":             "",
					"X-Access-Key":          "",
					"X-Access-Secret":       "",
					"Authorization":         "",
					"X-Forwarded-Host":      "api.example.com",
				}
				for hk, hv := range want {
					if g := got.Header.Get(hk); g != hv {
						t.Errorf("upstream header %s = %q, want %q", hk, g, hv)
					}
				}
				// The peer (127.0.0.1) is no trusted proxy here: what it
				// claims of the client is replaced, not appended to (issue 12;
				// the trusted case is proxy's TestForwardedForFromUntrustedPeersIsReplaced).
				if xff := got.Header.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "127.0.0.1" {
					t.Errorf("X-Forwarded-For = %q, want the peer's address alone", xff)
				}
				if got.URL.Path != "/v1/things" || got.URL.RawQuery != "x=1" || got.Host != "api.example.com" {
					t.Errorf("upstream got %s %s host %s", got.URL.Path, got.URL.RawQuery, got.Host)
				}
			})
		}

		t.Run("backend's own Authorization kept next to X-API-Key", func(t *testing.T) {
			status, _, _ := call(t, "GET", data+"/", map[string]string{"X-API-Key": k.AccessSecret, "Authorization": "Bearer backend-jwt"}, "")
			if status != 200 {
				t.Fatalf("status %d", status)
			}
			if a := rec.last(t).Header.Get("Authorization"); a != "Bearer backend-jwt" {
				t.Errorf("Authorization = %q, want the backend's token", a)
			}
		})

		if strings.Contains(g.logs.String(), k.AccessSecret) {
			t.Errorf("log output contains a secret")
		}
	})
}

func TestErrorBodies(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		rec := &recorder{}
		up := httptest.NewServer(rec)
		defer up.Close()
		g := startGate(t, withUpstream(env, up.URL))
		org, ks := g.setupOrg(1, 1000, "month", map[string][]string{"reader": {"read"}, "gone": {"admin"}})
		g.admin("DELETE", "/admin/v1/orgs/"+org+"/keys/gone", nil, 204, nil)
		data := "http://" + g.l.Data
		reader := ks["reader"].AccessSecret
		truncated := reader[:len(reader)-1]
		flipped := reader[:len(reader)-2] + string(reader[len(reader)-2]^1) + string(reader[len(reader)-1])

		cases := []struct {
			name   string
			method string
			hdr    map[string]string
			status int
			body   string
		}{
			{"no credential", "GET", nil, 401, `{"statusCode":401,"statusMessage":"Valid API key required"}`},
			{"basic auth is no credential", "GET", map[string]string{"Authorization": "Basic dXNlcjpwYXNz"}, 401, `{"statusCode":401,"statusMessage":"Valid API key required"}`},
			{"garbage", "GET", map[string]string{"X-API-Key": "nope"}, 403, `{"error":true,"statusCode":403,"message":"Invalid API key"}`},
			{"truncated", "GET", map[string]string{"X-API-Key": truncated}, 403, `{"error":true,"statusCode":403,"message":"Invalid API key"}`},
			{"bad checksum", "GET", map[string]string{"Authorization": "Bearer " + flipped}, 403, `{"error":true,"statusCode":403,"message":"Invalid API key"}`},
			{"deleted", "GET", map[string]string{"X-API-Key": ks["gone"].AccessSecret}, 403, `{"error":true,"statusCode":403,"message":"Invalid API key"}`},
			{"pair with wrong access key", "GET", map[string]string{"X-Access-Key": ks["gone"].AccessKey, "X-Access-Secret": reader}, 403, `{"error":true,"statusCode":403,"message":"Invalid API key"}`},
			{"permission", "POST", map[string]string{"X-API-Key": reader}, 403, `{"error":true,"statusCode":403,"message":"API key lacks the \"write\" permission"}`},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				before := rec.count()
				status, h, body := call(t, tc.method, data+"/x", tc.hdr, "")
				if status != tc.status || strings.TrimSpace(string(body)) != tc.body {
					t.Errorf("got %d %s, want %d %s", status, body, tc.status, tc.body)
				}
				if h.Get("Content-Type") != "application/json" {
					t.Errorf("Content-Type %q", h.Get("Content-Type"))
				}
				if rec.count() != before {
					t.Errorf("refused request reached the upstream")
				}
			})
		}
		if strings.Contains(g.logs.String(), reader) {
			t.Errorf("log output contains a secret")
		}
	})
}

func TestUpstreamErrors(t *testing.T) {
	// An address nobody listens on: bind, note, close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": dead})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	status, _, body := call(t, "GET", "http://"+g.l.Data+"/", map[string]string{"X-API-Key": ks["k"].AccessSecret}, "")
	if status != 502 || strings.TrimSpace(string(body)) != `{"error":true,"statusCode":502,"message":"Upstream unreachable"}` {
		t.Errorf("dead upstream: %d %s", status, body)
	}

	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	g2 := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": slow.URL, "KEYGATE_UPSTREAM_TIMEOUT": "200ms"})
	_, ks2 := g2.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	status, _, body = call(t, "GET", "http://"+g2.l.Data+"/", map[string]string{"X-API-Key": ks2["k"].AccessSecret}, "")
	if status != 504 || strings.TrimSpace(string(body)) != `{"error":true,"statusCode":504,"message":"Upstream did not answer in time"}` {
		t.Errorf("slow upstream: %d %s", status, body)
	}
}

func TestStoreDownClosedAndOpen(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	srv := redistest.Start(t)
	env := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_REDIS_TIMEOUT": "100ms"}
	closed := startGate(t, mergeEnv(env, map[string]string{"KEYGATE_FAILURE_MODE": "closed"}))
	open := startGate(t, mergeEnv(env, map[string]string{"KEYGATE_FAILURE_MODE": "open"}))
	_, ks := closed.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}
	for _, g := range []*gate{closed, open} {
		if status, _, body := call(t, "GET", "http://"+g.l.Data+"/", hdr, ""); status != 200 {
			t.Fatalf("before outage: %d %s", status, body)
		}
	}
	srv.Stop()
	// With quota leases, the closed sidecar first admits from the block it
	// holds (a few units, each counted), then answers 503.
	var (
		status int
		h      http.Header
		body   []byte
	)
	fromBlock := 0
	for range 20 {
		if status, h, body = call(t, "GET", "http://"+closed.l.Data+"/", hdr, ""); status != 200 {
			break
		}
		fromBlock++
	}
	if fromBlock > 8 {
		t.Errorf("closed mode admitted %d requests during the outage, more than the block it held", fromBlock)
	}
	if status != 503 || h.Get("Retry-After") == "" || strings.TrimSpace(string(body)) != `{"error":true,"statusCode":503,"message":"Key store unavailable, retry shortly"}` {
		t.Errorf("closed mode during outage: %d %v %s", status, h, body)
	}
	if status, _, body := call(t, "GET", "http://"+open.l.Data+"/", hdr, ""); status != 200 {
		t.Errorf("open mode during outage, key verified before: %d %s", status, body)
	}
	srv.Restart() // an empty Redis: it ran without persistence
	_, ks = closed.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	hdr = map[string]string{"X-API-Key": ks["k"].AccessSecret}
	if status, _, body := call(t, "GET", "http://"+closed.l.Data+"/", hdr, ""); status != 200 {
		t.Errorf("closed mode after recovery: %d %s", status, body)
	}
}

func mergeEnv(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func TestRevocationReachesOtherSidecar(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	srv := redistest.Start(t)
	env := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_AUTH_CACHE_TTL": "1m"}
	a := startGate(t, env)
	b := startGate(t, env)
	org, ks := a.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}
	for _, g := range []*gate{a, b} {
		if status, _, body := call(t, "GET", "http://"+g.l.Data+"/", hdr, ""); status != 200 {
			t.Fatalf("before delete: %d %s", status, body)
		}
	}
	a.admin("DELETE", "/admin/v1/orgs/"+org+"/keys/k", nil, 204, nil)
	if status, _, _ := call(t, "GET", "http://"+a.l.Data+"/", hdr, ""); status != 403 {
		t.Errorf("deleting sidecar still admits the key: %d", status)
	}
	deadline := time.Now().Add(time.Second)
	for {
		status, _, _ := call(t, "GET", "http://"+b.l.Data+"/", hdr, "")
		if status == 403 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("other sidecar still admits the deleted key after 1s (cache TTL 1m): %d", status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAdminAPIBadInput(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL})
	org, _ := g.setupOrg(1, 100, "month", map[string][]string{"k": {"read"}})
	adminURL := "http://" + g.l.Admin
	auth := map[string]string{"Authorization": "Bearer " + testAdminToken}
	big := `{"name":"` + strings.Repeat("a", 2<<20) + `"}`
	cases := []struct {
		name, method, path, body string
		hdr                      map[string]string
		status                   int
		msg                      string
	}{
		{"no token", "GET", "/admin/v1/plans", "", nil, 401, "Valid admin token required"},
		{"wrong token", "GET", "/admin/v1/plans", "", map[string]string{"Authorization": "Bearer nope"}, 401, "Valid admin token required"},
		{"malformed json", "POST", "/admin/v1/orgs", `{"name":`, auth, 400, "malformed JSON in request body"},
		{"wrong type", "POST", "/admin/v1/orgs", `{"name":"a","plan_id":"one"}`, auth, 400, `field "plan_id" must be a number`},
		{"unknown field", "POST", "/admin/v1/orgs", `{"name":"a","plan_id":1,"color":"red"}`, auth, 400, `unknown field "color"`},
		{"missing name", "POST", "/admin/v1/orgs", `{"plan_id":1}`, auth, 400, "invalid name: must not be empty"},
		{"unknown plan", "POST", "/admin/v1/orgs", `{"name":"a","plan_id":99}`, auth, 404, "plan 99 does not exist"},
		{"unknown org", "POST", "/admin/v1/orgs/nope/keys", `{"name":"k2","permissions":["read"]}`, auth, 404, "Not found"},
		{"unknown permission", "POST", "/admin/v1/orgs/" + org + "/keys", `{"name":"k2","permissions":["fly"]}`, auth, 400, `invalid permissions: unknown permission "fly" (want one of admin, read, write, pin, unpin)`},
		{"duplicate key", "POST", "/admin/v1/orgs/" + org + "/keys", `{"name":"k","permissions":["read"]}`, auth, 409, `a key named "k" already exists`},
		{"over-allocated", "POST", "/admin/v1/orgs/" + org + "/keys", `{"name":"k3","permissions":["read"],"max_api_requests":101}`, auth, 409, "Per-key quotas would exceed the organization quota"},
		{"duplicate plan", "POST", "/admin/v1/plans", `{"id":1,"name":"x","period":"month"}`, auth, 409, "plan 1 already exists"},
		{"bad period", "POST", "/admin/v1/plans", `{"id":2,"name":"x","period":"fortnight"}`, auth, 400, `invalid period: period "fortnight": want month, day, hour, none or a duration such as 30s`},
		{"too big", "POST", "/admin/v1/orgs", big, auth, 413, "Request body larger than 1048576 bytes"},
		{"delete unknown key", "DELETE", "/admin/v1/orgs/" + org + "/keys/nope", "", auth, 404, "Not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := call(t, tc.method, adminURL+tc.path, tc.hdr, tc.body)
			var e struct {
				Error      bool   `json:"error"`
				StatusCode int    `json:"statusCode"`
				Message    string `json:"message"`
			}
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if status != tc.status || e.StatusCode != tc.status || e.Message != tc.msg {
				t.Errorf("got %d %+v, want %d %q", status, e, tc.status, tc.msg)
			}
		})
	}
	// Nothing changed: still one org with one key.
	var keysList []map[string]any
	g.admin("GET", "/admin/v1/orgs/"+org+"/keys", nil, 200, &keysList)
	if len(keysList) != 1 {
		t.Errorf("bad input changed the key list: %v", keysList)
	}
	var orgs []map[string]any
	g.admin("GET", "/admin/v1/orgs", nil, 200, &orgs)
	if len(orgs) != 1 {
		t.Errorf("bad input changed the org list: %d orgs", len(orgs))
	}
	for _, k := range keysList {
		if _, ok := k["access_secret"]; ok {
			t.Errorf("key list shows a secret: %v", k)
		}
	}
}
