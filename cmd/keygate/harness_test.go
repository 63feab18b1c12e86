package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer collects log output from the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

const testAdminToken = "test-admin-token"

// gate is a keygate sidecar running in-process on loopback ports.
type gate struct {
	t    *testing.T
	l    listeners
	logs *syncBuffer
	stop func() error
}

// startGate runs `keygate serve` in-process with env on top of test
// defaults, and stops it when the test ends.
func startGate(t *testing.T, env map[string]string) *gate {
	t.Helper()
	base := map[string]string{
		"KEYGATE_LISTEN_ADDR":  "127.0.0.1:0",
		"KEYGATE_ADMIN_ADDR":   "127.0.0.1:0",
		"KEYGATE_METRICS_ADDR": "127.0.0.1:0",
		"KEYGATE_ADMIN_TOKEN":  testAdminToken,
		"KEYGATE_LOG_LEVEL":    "debug",
	}
	for k, v := range env {
		base[k] = v
	}
	cfg, err := loadConfig(base)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	g := &gate{t: t, logs: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan listeners, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, g.logs, func(l listeners) { readyc <- l }) }()
	select {
	case g.l = <-readyc:
	case err := <-done:
		cancel()
		t.Fatalf("keygate did not start: %v\n%s", err, g.logs)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("keygate not ready after 10s\n%s", g.logs)
	}
	var once sync.Once
	var stopErr error
	g.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				t.Errorf("keygate did not stop within 30s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := g.stop(); err != nil {
			t.Errorf("keygate stopped with: %v", err)
		}
	})
	registerListeners(t, g.l) // its cleanup runs before the stop frees the ports
	return g
}

// call sends a request and returns the status, headers and body.
func call(t *testing.T, method, url string, headers map[string]string, body string) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return callReader(t, method, url, headers, rd)
}

// callReader is call with any body: a reader of unknown length (not a
// *strings.Reader) is sent chunked, without Content-Length. Answers of a
// sidecar's own routes are checked against openapi/openapi.json
// (checkAnswer).
func callReader(t *testing.T, method, url string, headers map[string]string, body io.Reader) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	for k, v := range headers {
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	checkAnswer(t, req, resp.StatusCode, resp.Header, b)
	return resp.StatusCode, resp.Header, b
}

// admin calls the operator API and decodes a JSON answer into out (if not
// nil), failing unless the status is want.
func (g *gate) admin(method, path string, body any, want int, out any) {
	g.t.Helper()
	var s string
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			g.t.Fatal(err)
		}
		s = string(b)
	}
	status, _, b := call(g.t, method, "http://"+g.l.Admin+path, map[string]string{"Authorization": "Bearer " + testAdminToken}, s)
	if status != want {
		g.t.Fatalf("%s %s: status %d, want %d: %s", method, path, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			g.t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

// newKey is a key as the operator API returns it on creation.
type newKey struct {
	UID          string   `json:"uid"`
	Name         string   `json:"name"`
	AccessKey    string   `json:"access_key"`
	AccessSecret string   `json:"access_secret"`
	Permissions  []string `json:"permissions"`
}

// setupOrg creates plan planID (if new) with max requests per period, an
// organization and one key per name with the given permissions.
func (g *gate) setupOrg(planID int64, max any, period string, perms map[string][]string) (string, map[string]newKey) {
	g.t.Helper()
	var plans []map[string]any
	g.admin("GET", "/admin/v1/plans", nil, 200, &plans)
	exists := false
	for _, p := range plans {
		if p["id"] == float64(planID) {
			exists = true
		}
	}
	if !exists {
		g.admin("POST", "/admin/v1/plans", map[string]any{"id": planID, "name": "plan", "price": "0.00", "period": period, "max_api_requests": max}, 201, nil)
	}
	var org struct {
		ID string `json:"id"`
	}
	g.admin("POST", "/admin/v1/orgs", map[string]any{"name": "Acme", "email": "ops@example.com", "plan_id": planID}, 201, &org)
	out := map[string]newKey{}
	for name, p := range perms {
		var k newKey
		g.admin("POST", "/admin/v1/orgs/"+org.ID+"/keys", map[string]any{"name": name, "permissions": p}, 201, &k)
		out[name] = k
	}
	return org.ID, out
}

// recorder is an upstream that records the requests it gets.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, r.Clone(context.Background()))
	rc.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "hello from upstream\n")
}

func (rc *recorder) last(t *testing.T) *http.Request {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.reqs) == 0 {
		t.Fatal("upstream got no request")
	}
	return rc.reqs[len(rc.reqs)-1]
}

func (rc *recorder) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.reqs)
}
