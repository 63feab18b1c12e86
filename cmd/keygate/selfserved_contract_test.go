package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// callChunked sends body with no Content-Length (chunked), so the server
// finds out its size only by reading it.
func callChunked(t *testing.T, method, url string, hdr map[string]string, body string) (int, string) {
	t.Helper()
	chunked := io.MultiReader(strings.NewReader(body)) // a reader net/http cannot size
	if req, err := http.NewRequest(method, url, chunked); err != nil || req.ContentLength != 0 {
		t.Fatalf("the request announced its length (%v)", err)
	}
	status, _, b := callReader(t, method, url, hdr, chunked)
	return status, strings.TrimSpace(string(b))
}

// TestOversizedChunkedBodies: a body over 1 MiB whose size is not announced
// is refused with 413 in the route's own envelope, and nothing changes.
func TestOversizedChunkedBodies(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL})
	g.seedPlans()
	org := g.createOrg(map[string]any{"name": "P", "plan_id": 1, "partner": true})
	k := g.createKey(org, "admin", "admin")
	data := "http://" + g.l.Data
	big := strings.Repeat("x", 1<<20+10)
	mp, mpType := multipartBody(t, form{{"apikey", k.AccessSecret}, {"access_level", "basic"}, {"comment", big}})
	ue, ueType := urlencodedBody(form{{"apikey", k.AccessSecret}, {"access_level", "basic"}, {"comment", big}})
	tooLarge := "Request body larger than 1048576 bytes"
	v0 := `{"code":413,"msg":"` + tooLarge + `"}`
	user := `{"status":"error","error_id":"user/request_too_large","message":"` + tooLarge + `"}`
	ts := "?ts=" + strconv.FormatInt(time.Now().Unix(), 10)
	cases := []struct {
		name, method, path, body, contentType, want string
	}{
		{"seed 000 create key", "POST", "/api/v0/key", `{"name":"` + big + `","permissions":["read"]}`, "application/json", v0},
		{"seed 000 delete key", "DELETE", "/api/v0/key", `{"name":"` + big + `"}`, "application/json", v0},
		{"seed 001 create", "POST", "/api/v0/partner/user/create" + ts, `{"uuid":"u1","name":"` + big + `"}`, "application/json", v0},
		{"seed 001 key", "POST", "/api/v0/partner/user/key" + ts, `{"uuid":"u1","name":"` + big + `","permissions":["read"]}`, "application/json", v0},
		{"seed 003 create_apikey, multipart", "POST", "/user/create_apikey", mp, mpType, user},
		{"seed 003 create_apikey, urlencoded", "POST", "/user/create_apikey", ue, ueType, user},
	}
	before := g.keyNames(org)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{"Content-Type": tc.contentType, "X-Access-Key": k.AccessKey, "X-Access-Secret": k.AccessSecret}
			if status, raw := callChunked(t, tc.method, data+tc.path, hdr, tc.body); status != 413 || raw != tc.want {
				t.Errorf("got %d %.200s, want 413 %s", status, raw, tc.want)
			}
		})
	}
	if after := g.keyNames(org); !slices.Equal(before, after) {
		t.Errorf("keys changed: %v → %v", before, after)
	}
	if subs := g.subOrgs(org); len(subs) != 0 {
		t.Errorf("sub-accounts created: %v", subs)
	}
}

// TestSelfServedDeletesReachOtherSidecars: a key deleted through the
// partner route or /user/delete_apikey on one sidecar is refused by another
// sharing the Redis within a second, although its cache would keep it a
// minute.
func TestSelfServedDeletesReachOtherSidecars(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	srv := redistest.Start(t)
	env := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_AUTH_CACHE_TTL": "1m"}
	a := startGate(t, env)
	b := startGate(t, env)
	a.seedPlans()
	partnerOrg := a.createOrg(map[string]any{"name": "P", "plan_id": 1, "partner": true, "username": "p", "password": "pw"})
	p := a.partner(a.createKey(partnerOrg, "admin", "admin"))
	p.ok(t, "POST", "create", "", `{"uuid":"sub-1","name":"Sub","email":"sub@example.com"}`)
	status, m, raw := p.do(t, "POST", "key", "", `{"uuid":"sub-1","name":"k","permissions":["read"]}`)
	if status != 200 {
		t.Fatalf("partner key: %d %s", status, raw)
	}
	subSecret := m["data"].(map[string]any)["access_secret"].(string)
	status, m, raw = postForm(t, "http://"+a.l.Data+"/user/create_apikey", true, form{{"username", "p"}, {"password", "pw"}, {"access_level", "basic"}}, nil)
	if status != 200 {
		t.Fatalf("create_apikey: %d %s", status, raw)
	}
	userSecret := m["data"].(map[string]any)["new_key"].(string)

	revokedOnB := func(t *testing.T, secret string, del func()) {
		t.Helper()
		if status, _, body := call(t, "GET", "http://"+b.l.Data+"/", apiKey(secret), ""); status != 200 {
			t.Fatalf("B before delete: %d %s", status, body)
		}
		del()
		if status, _, _ := call(t, "GET", "http://"+a.l.Data+"/", apiKey(secret), ""); status != 403 {
			t.Errorf("A still admits the key it deleted: %d", status)
		}
		pollUntil(t, time.Second, func() string {
			if status, _, _ := call(t, "GET", "http://"+b.l.Data+"/", apiKey(secret), ""); status != 403 {
				return "B still admits the deleted key (cache TTL 1m)"
			}
			return ""
		})
	}
	t.Run("partner delete", func(t *testing.T) {
		revokedOnB(t, subSecret, func() { p.ok(t, "DELETE", "key", "", `{"uuid":"sub-1","name":"k"}`) })
	})
	t.Run("user/delete_apikey", func(t *testing.T) {
		revokedOnB(t, userSecret, func() {
			status, m, raw := postForm(t, "http://"+a.l.Data+"/user/delete_apikey", true,
				form{{"apikey", p.hdr["X-Access-Secret"]}, {"delete_key", userSecret}}, nil)
			if status != 200 || m["status"] != "success" {
				t.Fatalf("delete_apikey: %d %s", status, raw)
			}
		})
	})
}
