package httpauthz_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/quota/rediscounter"
	"github.com/keygate/keygate/sidecar"
)

const testOrg = "0f3b8f0e-2222-4c6e-9a53-000000000001"

// upstream records what the data path forwards and answers at once.
type upstream struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (u *upstream) RoundTrip(r *http.Request) (*http.Response, error) {
	u.mu.Lock()
	u.reqs = append(u.reqs, r)
	u.mu.Unlock()
	return &http.Response{StatusCode: 200, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: r}, nil
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

// rules give the data path and the endpoint something to disagree on if
// either ignored them: a pin route costing 2.
const rules = `
- method: POST
  path: /pins
  permission: pin
  cost: 2
`

type env struct {
	*sidecartest.Env
	up *upstream
}

func newEnv(t *testing.T, o sidecar.Options) *env {
	t.Helper()
	r, err := gate.ParseRules([]byte(rules))
	if err != nil {
		t.Fatal(err)
	}
	up := &upstream{}
	o.Transport, o.Rules = up, r
	return &env{Env: sidecartest.New(t, o), up: up}
}

// orgWithKeys creates a plan of max requests a month, the org and two keys:
// an admin key and a read-only one; it returns their secrets.
func (e *env) orgWithKeys(t *testing.T, max int64) (admin, read string) {
	t.Helper()
	admin = e.SetupOrg(t, 1, max, nil, testOrg)
	var k struct {
		Secret string `json:"access_secret"`
	}
	e.Admin(t, "POST", "/admin/v1/orgs/"+testOrg+"/keys", map[string]any{"name": "ro", "permissions": []string{"read"}}, 201, &k)
	return admin, k.Secret
}

func (e *env) used(t *testing.T) int64 {
	t.Helper()
	return e.Snapshot(t, time.Now()).Usage[testOrg].Org
}

// answer is what a client sees of a response.
type answer struct {
	status int
	header http.Header
	body   string
}

func serve(h http.Handler, req *http.Request) answer {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return answer{rec.Code, rec.Header(), rec.Body.String()}
}

// authzRequest is nginx's subrequest for a client's method, target and
// headers: X-Original-Method and X-Original-URI, no body.
func authzRequest(method, target string, h map[string]string) *http.Request {
	req := httptest.NewRequest("GET", "/_keygate", nil)
	req.Header.Set("X-Original-Method", method)
	req.Header.Set("X-Original-URI", target)
	for k, v := range h {
		req.Header.Set(k, v)
	}
	return req
}

func dataRequest(method, target string, h map[string]string) *http.Request {
	req := httptest.NewRequest(method, target, nil)
	for k, v := range h {
		req.Header.Set(k, v)
	}
	return req
}

// TestSameAnswerAsDataPath: for each case, the endpoint refuses exactly as
// the data path does (status, body, Retry-After) or admits what the data
// path forwards, with the identity headers the upstream would get and the
// same RateLimit headers, and charges the same.
func TestSameAnswerAsDataPath(t *testing.T) {
	minted, err := keys.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name           string
		method, target string
		header         func(admin, read string) map[string]string
		want           int
		cost           int64
	}{
		{"no credential", "GET", "/v1/things", func(a, r string) map[string]string { return nil }, 401, 0},
		{"minted key", "GET", "/v1/things", func(a, r string) map[string]string { return map[string]string{"X-API-Key": minted} }, 403, 0},
		{"bearer", "GET", "/v1/things?x=1", func(a, r string) map[string]string { return map[string]string{"Authorization": "Bearer " + a} }, 200, 1},
		{"access pair", "GET", "/v1/things", func(a, r string) map[string]string { return map[string]string{"X-API-Key": a} }, 200, 1},
		{"read key writes", "DELETE", "/v1/things/1", func(a, r string) map[string]string { return map[string]string{"X-API-Key": r} }, 403, 0},
		{"rule permission", "POST", "/pins", func(a, r string) map[string]string { return map[string]string{"X-API-Key": r} }, 403, 0},
		{"rule cost", "POST", "/pins", func(a, r string) map[string]string { return map[string]string{"X-API-Key": a} }, 200, 2},
		{"rule on a non-canonical path", "POST", "/x/..//pins", func(a, r string) map[string]string { return map[string]string{"X-API-Key": a} }, 200, 2},
		{"encoded slash", "GET", "/v1%2fthings", func(a, r string) map[string]string { return map[string]string{"X-API-Key": a} }, 400, 0},
		{"NUL", "GET", "/v1/%00", func(a, r string) map[string]string { return map[string]string{"X-API-Key": a} }, 400, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got [2]answer
			var cost [2]int64
			// One instant for both: the RateLimit reset is in seconds, and
			// two clocks a second boundary apart would differ by one.
			at := time.Now()
			for i := range 2 {
				e := newEnv(t, sidecar.Options{Now: func() time.Time { return at }})
				admin, read := e.orgWithKeys(t, 1000)
				h := tc.header(admin, read)
				before := e.used(t)
				if i == 0 {
					got[i] = serve(e.Data, dataRequest(tc.method, tc.target, h))
				} else {
					got[i] = serve(e.Authz, authzRequest(tc.method, tc.target, h))
				}
				cost[i] = e.used(t) - before
				if tc.want == 200 && i == 0 && e.up.count() != 1 {
					t.Fatalf("data path forwarded %d requests", e.up.count())
				}
				if i == 1 && e.up.count() != 0 {
					t.Fatal("the endpoint forwarded a request")
				}
			}
			data, authz := got[0], got[1]
			if data.status != tc.want || authz.status != tc.want {
				t.Fatalf("data path %d %s, endpoint %d %s; want %d", data.status, data.body, authz.status, authz.body, tc.want)
			}
			if cost[0] != tc.cost || cost[1] != tc.cost {
				t.Errorf("charged: data path %d, endpoint %d; want %d", cost[0], cost[1], tc.cost)
			}
			for _, name := range []string{"Retry-After", "Ratelimit", "Ratelimit-Policy"} {
				if data.header.Get(name) != authz.header.Get(name) {
					t.Errorf("%s: data path %q, endpoint %q", name, data.header.Get(name), authz.header.Get(name))
				}
			}
			if tc.want != 200 {
				if data.body != authz.body || authz.header.Get("Content-Type") != "application/json" {
					t.Errorf("body: data path %q, endpoint %q (%s)", data.body, authz.body, authz.header.Get("Content-Type"))
				}
				for name := range authz.header {
					if guard.IsIdentityHeader(name) {
						t.Errorf("a refusal carries %s", name)
					}
				}
				return
			}
			if authz.body != "" || authz.header.Get("Ratelimit-Policy") == "" {
				t.Errorf("admitted: body %q, headers %v", authz.body, authz.header)
			}
			if authz.header.Get(gate.HeaderOrgID) != testOrg || authz.header.Get(gate.HeaderKeyName) != "k1" ||
				authz.header.Get(gate.HeaderKeyID) == "" || authz.header.Get(gate.HeaderPermissions) != "admin" {
				t.Errorf("identity headers %v", authz.header)
			}
		})
	}
}

// TestQuotaAndRetryAfter: the request after the quota is refused with 429
// and Retry-After, and each admitted decision is charged exactly once.
func TestQuotaAndRetryAfter(t *testing.T) {
	e := newEnv(t, sidecar.Options{})
	admin, _ := e.orgWithKeys(t, 3)
	h := map[string]string{"X-API-Key": admin}
	for i := range 3 {
		if a := serve(e.Authz, authzRequest("GET", "/v1/things", h)); a.status != 200 {
			t.Fatalf("request %d: %d %s", i, a.status, a.body)
		}
		if got := e.used(t); got != int64(i+1) {
			t.Fatalf("after %d decisions %d charged", i+1, got)
		}
	}
	a := serve(e.Authz, authzRequest("GET", "/v1/things", h))
	if a.status != 429 || a.header.Get("Retry-After") == "" ||
		a.body != `{"error":true,"statusCode":429,"message":"Organization quota exceeded: 3 of 3 requests used"}`+"\n" {
		t.Fatalf("after the quota: %d %v %s", a.status, a.header, a.body)
	}
	if got := e.used(t); got != 3 {
		t.Errorf("a refused decision was charged: %d", got)
	}
}

// TestStoreOutageClosed: with the failure mode closed and the counter's
// Redis gone, the endpoint answers the data path's 503 with Retry-After.
func TestStoreOutageClosed(t *testing.T) {
	srv := redistest.Start(t)
	e := newEnv(t, sidecar.Options{Counter: rediscounter.New(redistest.NewClient(t, srv.Addr())), RemoteCounter: true,
		StoreTimeout: 100 * time.Millisecond})
	admin, _ := e.orgWithKeys(t, 1000)
	if a := serve(e.Authz, authzRequest("GET", "/v1/things", map[string]string{"X-API-Key": admin})); a.status != 200 {
		t.Fatalf("before the outage: %d %s", a.status, a.body)
	}
	srv.Stop()
	a := serve(e.Authz, authzRequest("GET", "/v1/things", map[string]string{"X-API-Key": admin}))
	d := serve(e.Data, dataRequest("GET", "/v1/things", map[string]string{"X-API-Key": admin}))
	if a.status != 503 || a.header.Get("Retry-After") != "1" || a.body != d.body || d.status != 503 {
		t.Fatalf("endpoint %d %v %s; data path %d %s", a.status, a.header, a.body, d.status, d.body)
	}
}

// TestOriginalHeadersRefused: a description of the client's request that
// cannot be trusted or read is a 400 in the data path's shape, and changes
// and counts nothing.
func TestOriginalHeadersRefused(t *testing.T) {
	e := newEnv(t, sidecar.Options{RejectNonCanonical: true})
	admin, _ := e.orgWithKeys(t, 1000)
	cases := []struct {
		name string
		h    http.Header
		msg  string
	}{
		{"methods disagree", http.Header{"X-Forwarded-Method": {"GET"}, "X-Original-Method": {"DELETE"}}, "X-Forwarded-Method and X-Original-Method disagree"},
		{"targets disagree", http.Header{"X-Forwarded-Uri": {"/a"}, "X-Original-Uri": {"/b"}}, "X-Forwarded-Uri and X-Original-Uri disagree"},
		{"method twice", http.Header{"X-Forwarded-Method": {"GET", "GET"}}, "X-Forwarded-Method or X-Original-Method sent more than once"},
		{"target twice", http.Header{"X-Original-Uri": {"/a", "/a"}}, "X-Forwarded-Uri or X-Original-Uri sent more than once"},
		{"not a token", http.Header{"X-Original-Method": {"GE T"}}, "Original method is not an HTTP method token of at most 32 bytes"},
		{"long method", http.Header{"X-Original-Method": {strings.Repeat("G", 33)}}, "Original method is not an HTTP method token of at most 32 bytes"},
		{"empty target", http.Header{"X-Original-Uri": {""}}, "Original request target is empty or longer than 8192 bytes"},
		{"long target", http.Header{"X-Original-Uri": {"/" + strings.Repeat("a", 8192)}}, "Original request target is empty or longer than 8192 bytes"},
		{"space", http.Header{"X-Original-Uri": {"/a b"}}, "Original request target has a byte outside printable ASCII"},
		{"non-ASCII", http.Header{"X-Original-Uri": {"/\xc3\xa9"}}, "Original request target has a byte outside printable ASCII"},
		{"bad escape", http.Header{"X-Original-Uri": {"/a%zz"}}, "Original request target does not parse"},
		{"absolute without host", http.Header{"X-Original-Uri": {"http:///a"}}, "Original request target does not parse"},
		{"asterisk", http.Header{"X-Original-Uri": {"*"}}, "Non-canonical request path"},
		{"relative", http.Header{"X-Original-Uri": {"a/b"}}, "Non-canonical request path"},
		{"non-canonical in reject mode", http.Header{"X-Original-Uri": {"/a/../b"}}, "Non-canonical request path"},
		{"backslash", http.Header{"X-Forwarded-Uri": {"/a%5cb"}}, "Non-canonical request path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/", nil)
			req.Header = tc.h.Clone()
			req.Header.Set("X-API-Key", admin)
			a := serve(e.Authz, req)
			want := `{"error":true,"statusCode":400,"message":"` + tc.msg + `"}` + "\n"
			if a.status != 400 || a.body != want {
				t.Errorf("%d %s, want 400 %s", a.status, a.body, want)
			}
		})
	}
	if got := e.used(t); got != 0 {
		t.Errorf("refused descriptions were charged %d", got)
	}
}

// TestOriginalForms: the headers Traefik and nginx send, the absolute form,
// and Envoy's way (the check request is the client's own method and path).
func TestOriginalForms(t *testing.T) {
	e := newEnv(t, sidecar.Options{})
	_, read := e.orgWithKeys(t, 1000)
	for _, tc := range []struct {
		name   string
		method string
		target string
		h      http.Header
		want   int
	}{
		{"traefik read", "GET", "/", http.Header{"X-Forwarded-Method": {"GET"}, "X-Forwarded-Uri": {"/v1/a?b=c"}}, 200},
		{"traefik write", "GET", "/", http.Header{"X-Forwarded-Method": {"PUT"}, "X-Forwarded-Uri": {"/v1/a"}}, 403},
		{"both spellings agree", "GET", "/", http.Header{"X-Forwarded-Method": {"PUT"}, "X-Original-Method": {"PUT"}}, 403},
		{"absolute form", "GET", "/", http.Header{"X-Original-Method": {"GET"}, "X-Original-Uri": {"HTTPS://api.example.com/v1/a?x"}}, 200},
		{"absolute form without path", "GET", "/", http.Header{"X-Original-Uri": {"http://api.example.com"}}, 200},
		{"envoy read", "GET", "/v1/a?b", nil, 200},
		{"envoy write", "POST", "/v1/a", nil, 403},
		{"method only", "POST", "/v1/a", http.Header{"X-Original-Method": {"GET"}}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.target, nil)
			for k, v := range tc.h {
				req.Header[k] = v
			}
			req.Header.Set("X-API-Key", read)
			if a := serve(e.Authz, req); a.status != tc.want {
				t.Errorf("%d %s, want %d", a.status, a.body, tc.want)
			}
		})
	}
}

// TestFailLimitTrustsForwardedForOnlyFromTrustedProxies: behind nginx every
// check comes from nginx's address. With nginx trusted, the client named by
// X-Forwarded-For is limited alone; without, the header is ignored and
// the limit applies to the peer.
func TestFailLimitTrustsForwardedForOnlyFromTrustedProxies(t *testing.T) {
	limit, err := guard.ParseFailLimit("3/1m")
	if err != nil {
		t.Fatal(err)
	}
	for _, trusted := range []bool{true, false} {
		var tp guard.TrustedProxies
		if trusted {
			if tp, err = guard.ParseTrustedProxies("192.0.2.1"); err != nil {
				t.Fatal(err)
			}
		}
		e := newEnv(t, sidecar.Options{FailLimit: limit, TrustedProxies: tp})
		e.orgWithKeys(t, 1000)
		check := func(client string) int {
			minted, _ := keys.NewSecret()
			req := authzRequest("GET", "/v1/a", map[string]string{"X-API-Key": minted, "X-Forwarded-For": client})
			req.RemoteAddr = "192.0.2.1:40000"
			return serve(e.Authz, req).status
		}
		for range 3 {
			if s := check("198.51.100.7"); s != 403 {
				t.Fatalf("trusted=%v: failure %d", trusted, s)
			}
		}
		if s := check("198.51.100.7"); s != 429 {
			t.Errorf("trusted=%v: the sprayer gets %d, want 429", trusted, s)
		}
		want := 403 // another client behind the trusted proxy is not limited
		if !trusted {
			want = 429 // the header is not believed: the peer is limited
		}
		if s := check("198.51.100.8"); s != want {
			t.Errorf("trusted=%v: another client gets %d, want %d", trusted, s, want)
		}
	}
}

// TestSignedRequest: a signed request is verified over the original method,
// path as sent and query, not the check's own, and is accepted once.
func TestSignedRequest(t *testing.T) {
	sealer, err := keys.NewSealer([]byte(strings.Repeat("s", 32)), nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, sidecar.Options{Sealer: sealer})
	e.orgWithKeys(t, 1000)
	var k struct {
		AccessKey string `json:"access_key"`
		Secret    string `json:"access_secret"`
	}
	e.Admin(t, "POST", "/admin/v1/orgs/"+testOrg+"/keys", map[string]any{"name": "signer", "permissions": []string{"write"}}, 201, &k)
	signed := func(method, target string) *http.Request {
		client := httptest.NewRequest(method, target, nil)
		if err := gate.Sign(client, k.AccessKey, k.Secret, time.Now()); err != nil {
			t.Fatal(err)
		}
		return authzRequest(method, client.URL.RequestURI(), map[string]string{
			gate.HeaderAccessKey: client.Header.Get(gate.HeaderAccessKey), gate.HeaderAccessSignature: client.Header.Get(gate.HeaderAccessSignature)})
	}
	req := signed("PUT", "/v1/a%20b?x=1&y=2")
	if a := serve(e.Authz, req); a.status != 200 || a.header.Get(gate.HeaderKeyName) != "signer" {
		t.Fatalf("signed: %d %s", a.status, a.body)
	}
	if a := serve(e.Authz, req); a.status != 401 || !strings.Contains(a.body, "Request signature already used") {
		t.Errorf("replayed: %d %s", a.status, a.body)
	}
	other := signed("PUT", "/v1/a?x=1")
	other.Header.Set("X-Original-URI", strings.Replace(other.Header.Get("X-Original-URI"), "/v1/a", "/v1/b", 1))
	if a := serve(e.Authz, other); a.status != 403 || !strings.Contains(a.body, "Invalid request signature") {
		t.Errorf("signature of another path: %d %s", a.status, a.body)
	}
}
