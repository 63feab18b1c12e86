package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/sidecar"
)

// Hostile input on the data path (issue 12), through a whole sidecar on
// real loopback connections: what the upstream saw and what was charged.

const hostileOrg = "0f3b8f0e-3333-4c6e-9a53-000000000003"

// seen records what the upstream received.
type seen struct {
	mu       sync.Mutex
	requests []*http.Request
}

func (s *seen) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, r.Clone(context.Background()))
	s.mu.Unlock()
	_, _ = io.Copy(io.Discard, r.Body)
	_, _ = io.WriteString(w, "ok\n")
}

func (s *seen) take() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.requests
	s.requests = nil
	return out
}

// countingStore counts the key lookups that reach the store.
type countingStore struct {
	keys.Store
	lookups atomic.Int64
}

func (s *countingStore) KeyByHash(ctx context.Context, h keys.SecretHash) (keys.Key, error) {
	s.lookups.Add(1)
	return s.Store.KeyByHash(ctx, h)
}

type hostileEnv struct {
	*sidecartest.Env
	up    *seen
	base  string
	store *countingStore
}

const hostileRules = `
- method: POST
  path: /api/v0/pin/*
  permission: pin
  cost: 5
- method: GET
  path: /export
  permission: pin
- method: GET
  path: /public/*
  cost: 0
`

func newHostileEnv(t *testing.T, o sidecar.Options) *hostileEnv {
	t.Helper()
	up := &seen{}
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)
	u, _ := url.Parse(upSrv.URL + "/base")
	rules, err := gate.ParseRules([]byte(hostileRules))
	if err != nil {
		t.Fatal(err)
	}
	st := &countingStore{Store: memstore.New()}
	o.Upstream, o.Rules, o.Store = u, rules, st
	o.Auth = keys.NewAuthenticator(st, keys.AuthOptions{Unknown: guard.NewUnknownSecrets(0)})
	e := &hostileEnv{Env: sidecartest.New(t, o), up: up, store: st}
	front := httptest.NewServer(e.Data)
	t.Cleanup(front.Close)
	e.base = strings.TrimPrefix(front.URL, "http://")
	return e
}

// key creates an org (once) and a key with perms; it returns the secret.
func (e *hostileEnv) key(t *testing.T, name string, perms ...string) string {
	t.Helper()
	var orgs []struct{ ID string }
	e.Admin(t, "GET", "/admin/v1/orgs", nil, 200, &orgs)
	if len(orgs) == 0 {
		e.Admin(t, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "p", "period": "month", "max_api_requests": 1000}, 201, nil)
		e.Admin(t, "POST", "/admin/v1/orgs", map[string]any{"id": hostileOrg, "name": "Acme", "plan_id": 1}, 201, nil)
	}
	var k struct {
		Secret string `json:"access_secret"`
	}
	e.Admin(t, "POST", "/admin/v1/orgs/"+hostileOrg+"/keys", map[string]any{"name": name, "permissions": perms}, 201, &k)
	return k.Secret
}

// used is the org's request usage.
func (e *hostileEnv) used(t *testing.T) int64 {
	t.Helper()
	var o struct {
		Usage struct {
			CurrentUsage int64 `json:"current_usage"`
		} `json:"usage"`
	}
	e.Admin(t, "GET", "/admin/v1/orgs/"+hostileOrg, nil, 200, &o)
	return o.Usage.CurrentUsage
}

// raw sends one request as written and returns the response.
func raw(t *testing.T, addr, request string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(request, " ")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", request, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, strings.TrimSpace(string(b))
}

func TestPathSpellingsCannotBypassRules(t *testing.T) {
	e := newHostileEnv(t, sidecar.Options{})
	rw := e.key(t, "rw", "read", "write")
	pin := e.key(t, "pin", "read", "write", "pin")
	spellings := []string{
		"/api/v0/pin/add", "//api/v0/pin/add", "/api/v0/./pin/add", "/x/../api/v0/pin/add",
		"/API/v0/PIN/add", "/api/v0/%2e/pin/add", "/api/v0/%2E%2E/v0/pin/add", "/api/v0/pin//add",
		"/api/v0/pin/add/", "/./api/v0/pin/add", "/api/v0/pin/x/%2e%2e/add",
	}
	for _, p := range spellings {
		resp, body := raw(t, e.base, "POST "+p+" HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\nContent-Length: 0\r\n\r\n")
		if resp.StatusCode != 403 || !strings.Contains(body, `pin\" permission`) {
			t.Errorf("POST %s with read,write: %d %s, want 403 for the pin permission", p, resp.StatusCode, body)
		}
	}
	if got := e.up.take(); len(got) != 0 {
		t.Errorf("the upstream received %d refused requests, first %s", len(got), got[0].URL)
	}
	if u := e.used(t); u != 0 {
		t.Errorf("refused requests charged %d", u)
	}
	// With the permission, every spelling costs the rule's 5 and reaches
	// the upstream canonical, under the upstream URL's prefix.
	for _, p := range spellings {
		if resp, body := raw(t, e.base, "POST "+p+" HTTP/1.1\r\nHost: x\r\nX-API-Key: "+pin+"\r\nContent-Length: 0\r\n\r\n"); resp.StatusCode != 200 {
			t.Errorf("POST %s with pin: %d %s", p, resp.StatusCode, body)
		}
	}
	for _, r := range e.up.take() {
		if got := r.URL.EscapedPath(); got != "/base/api/v0/pin/add" && got != "/base/API/v0/PIN/add" && got != "/base/api/v0/pin/add/" {
			t.Errorf("upstream received %q", got)
		}
	}
	if u := e.used(t); u != int64(5*len(spellings)) {
		t.Errorf("charged %d, want %d", u, 5*len(spellings))
	}

	// HEAD is covered by a GET rule; a free prefix does not free what a dot
	// segment climbs out to; nothing escapes the upstream URL's prefix.
	for _, tc := range []struct{ method, path string }{{"HEAD", "/export"}, {"GET", "/public/../export"}, {"GET", "/public/%2e%2e/export"}} {
		resp, body := raw(t, e.base, tc.method+" "+tc.path+" HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\n\r\n")
		if resp.StatusCode != 403 {
			t.Errorf("%s %s: %d %s, want 403", tc.method, tc.path, resp.StatusCode, body)
		}
	}
	if resp, _ := raw(t, e.base, "GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\n\r\n"); resp.StatusCode != 200 {
		t.Errorf("GET /../../etc/passwd: %d", resp.StatusCode)
	}
	for _, r := range e.up.take() {
		if !strings.HasPrefix(r.URL.Path, "/base/") {
			t.Errorf("upstream received %q, outside the upstream URL's path", r.URL.Path)
		}
	}
	// What cannot be made canonical is refused, and reaches no one.
	for _, p := range []string{"/a%00b", "/a%5cb", "/a\\b", "/a%2fb"} {
		resp, body := raw(t, e.base, "GET "+p+" HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\n\r\n")
		if resp.StatusCode != 400 || body != `{"error":true,"statusCode":400,"message":"Non-canonical request path"}` {
			t.Errorf("GET %s: %d %s", p, resp.StatusCode, body)
		}
	}
	if got := e.up.take(); len(got) != 0 {
		t.Errorf("the upstream received %d refused paths", len(got))
	}
}

func TestRejectModeRefusesNonCanonicalPaths(t *testing.T) {
	e := newHostileEnv(t, sidecar.Options{RejectNonCanonical: true})
	rw := e.key(t, "rw", "read", "write")
	for _, p := range []string{"//a", "/a/./b", "/a/../b", "/a/"} {
		resp, body := raw(t, e.base, "GET "+p+" HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\n\r\n")
		want := 400
		if p == "/a/" {
			want = 200 // a trailing slash is canonical
		}
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d %s, want %d", p, resp.StatusCode, body, want)
		}
	}
	if n := len(e.up.take()); n != 1 {
		t.Errorf("upstream received %d requests, want 1", n)
	}
	if u := e.used(t); u != 1 {
		t.Errorf("charged %d, want 1", u)
	}
}

func TestIdentityHeaderSpellingsAreDropped(t *testing.T) {
	e := newHostileEnv(t, sidecar.Options{})
	rw := e.key(t, "rw", "read", "write")
	resp, body := raw(t, e.base, "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+
		"\r\nX_Keygate_Org_Id: victim\r\nx_keygate_permissions: admin\r\nX-KEYGATE-KEY-ID: forged\r\nx-Keygate_Key-Name: forged\r\nX-Keygate-Usage: requests=-100\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	got := e.up.take()
	if len(got) != 1 {
		t.Fatalf("upstream received %d requests", len(got))
	}
	for name, vs := range got[0].Header {
		if guard.IsIdentityHeader(name) {
			for _, v := range vs {
				if v == "victim" || v == "admin" || v == "forged" || strings.Contains(v, "requests") {
					t.Errorf("upstream received the client's %s: %s", name, v)
				}
			}
		}
	}
	if g := got[0].Header.Get("X-Keygate-Org-Id"); g != hostileOrg {
		t.Errorf("X-Keygate-Org-Id = %q", g)
	}
	if g := got[0].Header.Values("X-Keygate-Permissions"); len(g) != 1 || g[0] != "read,write" {
		t.Errorf("X-Keygate-Permissions = %q", g)
	}
}

func TestForwardedForFromUntrustedPeersIsReplaced(t *testing.T) {
	for _, tc := range []struct {
		trusted string
		want    string
	}{
		{"", "127.0.0.1"},
		{"127.0.0.0/8", "203.0.113.7, 127.0.0.1"},
	} {
		tp, err := guard.ParseTrustedProxies(tc.trusted)
		if err != nil {
			t.Fatal(err)
		}
		e := newHostileEnv(t, sidecar.Options{TrustedProxies: tp})
		rw := e.key(t, "rw", "read", "write")
		if resp, body := raw(t, e.base, "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		got := e.up.take()
		if len(got) != 1 || got[0].Header.Get("X-Forwarded-For") != tc.want {
			t.Errorf("trusted %q: upstream saw X-Forwarded-For %q, want %q", tc.trusted, got[0].Header.Values("X-Forwarded-For"), tc.want)
		}
	}
}

// TestRefusalsDoNotWaitForTheBody: a refused request that announced a body
// it never sends is answered at once with Connection: close, and holds no
// goroutine afterwards.
func TestRefusalsDoNotWaitForTheBody(t *testing.T) {
	e := newHostileEnv(t, sidecar.Options{})
	rw := e.key(t, "rw", "read", "write")
	before := runtime.NumGoroutine()
	const n = 200
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		conn, err := net.Dial("tcp", e.base)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	// All at once: each refusal must be answered without its body.
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cred := ""
			if i%2 == 1 {
				cred = "X-API-Key: " + rw[:len(rw)-1] + "x\r\n" // a mistyped key: 403
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(conn, "POST /hello HTTP/1.1\r\nHost: x\r\n"+cred+"Content-Length: 1000\r\n\r\n"); err != nil {
				t.Error(err)
				return
			}
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Errorf("request %d: no answer: %v", i, err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 401 && resp.StatusCode != 403 || !resp.Close {
				t.Errorf("request %d: %d, Connection: close %v", i, resp.StatusCode, resp.Close)
			}
			// keygate closes its end: the next read sees EOF, not a wait.
			if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
				t.Errorf("request %d: connection still open after the refusal: %v", i, err)
			}
		}()
	}
	wg.Wait()
	// No handler goroutine is left waiting for the bodies.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+10 && time.Now().Before(deadline) {
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before+10 {
		t.Errorf("%d goroutines after %d refused requests with unsent bodies, %d before", g, n, before)
	}
	if len(e.up.take()) != 0 || e.used(t) != 0 {
		t.Error("a refused request reached the upstream or was charged")
	}
}

// TestFailedAuthenticationsAreLimited: minted well-formed keys from one
// address cost a bounded number of store lookups, then 429 without one;
// the key that address proved keeps working throughout.
func TestFailedAuthenticationsAreLimited(t *testing.T) {
	limit, _ := guard.ParseFailLimit("20/10s")
	e := newHostileEnv(t, sidecar.Options{FailLimit: limit})
	rw := e.key(t, "rw", "read", "write")
	if resp, _ := raw(t, e.base, "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\n\r\n"); resp.StatusCode != 200 {
		t.Fatal("the good key is refused")
	}
	e.store.lookups.Store(0)
	statuses := map[int]int{}
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range 2000 {
		minted, err := keys.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", "http://"+e.base+"/hello", nil)
		req.Header.Set("X-API-Key", minted)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		statuses[resp.StatusCode]++
		if resp.StatusCode == 429 {
			if string(b) != `{"error":true,"statusCode":429,"message":"Too many failed authentications"}`+"\n" || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("429 %q Retry-After %q", b, resp.Header.Get("Retry-After"))
			}
		}
		if i%100 == 0 {
			if resp, body := raw(t, e.base, "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: "+rw+"\r\n\r\n"); resp.StatusCode != 200 {
				t.Fatalf("after %d minted keys the proved key gets %d %s", i, resp.StatusCode, body)
			}
		}
	}
	if n := e.store.lookups.Load(); n > 100 {
		t.Errorf("2000 minted keys cost %d store lookups", n)
	}
	if statuses[429] < 1900 || statuses[200] != 0 {
		t.Errorf("statuses %v: want mostly 429", statuses)
	}
	t.Logf("2000 minted keys: %v, %d store lookups", statuses, e.store.lookups.Load())
	if n := len(e.up.take()); n != 1+20 {
		t.Errorf("upstream received %d requests, want the good key's 21", n)
	}
}

// TestUnknownSecretsAreRemembered: a well-formed unknown secret costs one
// store lookup however often it is sent, until a key is created.
func TestUnknownSecretsAreRemembered(t *testing.T) {
	e := newHostileEnv(t, sidecar.Options{})
	_ = e.key(t, "rw", "read", "write")
	minted, _ := keys.NewSecret()
	e.store.lookups.Store(0)
	for range 50 {
		if resp, _ := raw(t, e.base, "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: "+minted+"\r\n\r\n"); resp.StatusCode != 403 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if n := e.store.lookups.Load(); n != 1 {
		t.Errorf("50 requests with one unknown secret cost %d lookups, want 1", n)
	}
	_ = e.key(t, "other", "read")
	if resp, _ := raw(t, e.base, "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: "+minted+"\r\n\r\n"); resp.StatusCode != 403 {
		t.Fatal("unknown secret admitted")
	}
	if n := e.store.lookups.Load(); n != 2 {
		t.Errorf("after a key was created the unknown secret cost %d lookups in all, want 2", n)
	}
}
