package console_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/sidecar"
)

// FuzzConsoleForms sends a signed-in operator's arbitrary form posts and
// page loads to every console route: whatever the bytes, the answer is a
// page with a status below 500, never a panic.
func FuzzConsoleForms(f *testing.F) {
	env := sidecartest.New(f, sidecar.Options{})
	env.Admin(f, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "period": "month", "max_api_requests": 100, "limits": map[string]int64{"egress": 10}}, 201, nil)
	env.Admin(f, "POST", "/admin/v1/orgs", map[string]any{"id": "acme", "name": "Acme", "plan_id": 1, "partner": true}, 201, nil)
	env.Admin(f, "POST", "/admin/v1/orgs/acme/keys", map[string]any{"name": "k", "permissions": []string{"read"}}, 201, nil)
	h := env.Sidecar.Admin

	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/console/signin", strings.NewReader("token="+sidecartest.AdminToken))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	h.ServeHTTP(rec, req)
	cookie := rec.Result().Cookies()[0]
	rec = httptest.NewRecorder()
	req = httptest.NewRequest("GET", "/console/plans", nil)
	req.AddCookie(cookie)
	h.ServeHTTP(rec, req)
	m := csrfField.FindStringSubmatch(rec.Body.String())
	if m == nil {
		f.Fatal("no CSRF token")
	}
	csrf := m[1]

	for _, s := range []struct{ method, path, body string }{
		{"POST", "plans", "id=2&name=P&period=1h&limits=egress%3D5%0Aingress%3D6&key_requests=5&key_per=1s&key_burst=9"},
		{"POST", "plans/1", "name=Free&max_api_requests=&org_requests=1&org_per=1m&org_shadow=1"},
		{"POST", "orgs", "name=X&email=a%40b.c&plan_id=1&max_api_requests=5&partner=1"},
		{"POST", "orgs/acme/keys", "name=n&permissions=read&permissions=bogus&max_api_requests=1"},
		{"POST", "orgs/acme/keys/k/limits", "max_api_requests=x&rl_requests=1&rl_per=0s"},
		{"POST", "orgs/acme/keys/k/rotate", "grace=-1h"},
		{"POST", "orgs/acme/keys/k/enabled", "enabled=false&back=key"},
		{"POST", "orgs/acme/plan", "plan_id=99"},
		{"GET", "orgs?q=%00&after=zz", ""},
		{"GET", "orgs?q=ac&after=ac%00acme", ""},
		{"GET", "orgs/acme/keys/%2F..%2F/delete", ""},
		{"POST", "orgs/acme/keys/k/delete", ""},
	} {
		f.Add(s.method, s.path, s.body)
	}
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if method != "GET" {
			method = "POST"
		}
		target := "/console/" + path
		if _, err := url.ParseRequestURI(target); err != nil || strings.ContainsAny(target, " \r\n\t#") {
			return
		}
		req := httptest.NewRequest(method, target, strings.NewReader(body+"&csrf="+csrf))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(cookie)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s %q: status %d\n%s", method, target, body, rec.Code, rec.Body)
		}
		redirect := rec.Code >= 300 && rec.Code < 400
		if ct := rec.Header().Get("Content-Type"); !redirect && !strings.HasPrefix(ct, "text/html") && !strings.HasPrefix(ct, "text/css") && !strings.HasPrefix(ct, "text/javascript") {
			t.Fatalf("%s %s: status %d with Content-Type %q", method, target, rec.Code, ct)
		}
	})
}
