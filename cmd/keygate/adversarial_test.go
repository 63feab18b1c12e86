package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
)

// The adversarial suite (issue 12): the built keygate binary, each case on
// its own process with its own redis-server and a recording upstream, all on
// free loopback ports, attacked the way a client on the network could. Every
// case asserts what the upstream received and what was charged, not only
// the status. The slow-body case waits out keygate's 30s body deadline
// beside the others.

// advRules are the route rules of the path-spelling cases: a protected
// prefix with a cost, a protected exact path, and a free prefix.
const advRules = `
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

// nonCanonical is the 400 of a path keygate will not rewrite.
const nonCanonical = `{"error":true,"statusCode":400,"message":"Non-canonical request path"}`

// sighting is one request as the upstream received it.
type sighting struct {
	Method, Path string // Path as on the wire (escaped)
	Header       http.Header
	Body         string
}

// witness is an upstream that records every request with its body.
type witness struct {
	mu   sync.Mutex
	seen []sighting
}

func (u *witness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	u.mu.Lock()
	u.seen = append(u.seen, sighting{r.Method, r.URL.EscapedPath(), r.Header.Clone(), string(b)})
	u.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "hello from upstream\n")
}

// take returns the requests received since the last take.
func (u *witness) take() []sighting {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.seen
	u.seen = nil
	return out
}

func paths(s []sighting) []string {
	var out []string
	for _, r := range s {
		out = append(out, r.Method+" "+r.Path)
	}
	return out
}

// advGate is a keygate binary under attack: its listeners (through the
// embedded gate, whose operator-API helpers it reuses), its Redis and its
// upstream.
type advGate struct {
	*gate
	rdb *redis.Client
	up  *witness
}

// startAdvGate runs the keygate binary bin with its own redis-server, a
// witness upstream and extra KEYGATE_* settings, and kills it when the test
// ends.
func startAdvGate(t *testing.T, bin string, extra ...string) *advGate {
	t.Helper()
	srv := redistest.Start(t)
	up := &witness{}
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })

	cmd := exec.Command(bin, "serve")
	cmd.Env = cleanEnv(append([]string{
		"KEYGATE_UPSTREAM_URL=" + upSrv.URL,
		"KEYGATE_REDIS_URL=" + srv.URL(),
		"KEYGATE_LISTEN_ADDR=127.0.0.1:0",
		"KEYGATE_ADMIN_ADDR=127.0.0.1:0",
		"KEYGATE_METRICS_ADDR=127.0.0.1:0",
		"KEYGATE_ADMIN_TOKEN=" + testAdminToken,
		"KEYGATE_LOG_LEVEL=info",
		// The machine may be loaded: no store call should time out for
		// want of CPU (the default is 250ms).
		"KEYGATE_REDIS_TIMEOUT=2s",
	}, extra...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	exited := make(chan struct{})
	var waitErr error
	ready := make(chan listeners, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var l listeners
		for sc.Scan() {
			_, _ = logs.Write(append(sc.Bytes(), '\n'))
			var line struct{ Msg, Listener, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "listening" {
				continue
			}
			switch line.Listener {
			case "data":
				l.Data = line.Addr
			case "admin":
				l.Admin = line.Addr
			case "metrics":
				l.Metrics = line.Addr
			}
			if l.Data != "" && l.Admin != "" && l.Metrics != "" {
				ready <- l
				l = listeners{}
			}
		}
		waitErr = cmd.Wait()
		close(exited)
	}()
	g := &gate{t: t, logs: logs}
	g.stop = func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		return nil
	}
	t.Cleanup(func() {
		select {
		case <-exited:
			t.Errorf("keygate had exited before the end of the test: %v\n%s", waitErr, logs)
		default:
		}
		_ = g.stop()
		if strings.Contains(logs.String(), "panic") {
			t.Errorf("keygate logged a panic:\n%s", logs)
		}
	})
	select {
	case g.l = <-ready:
	case <-exited:
		t.Fatalf("keygate exited at start: %v\n%s", waitErr, logs)
	case <-time.After(20 * time.Second):
		t.Fatalf("keygate did not log its listeners\n%s", logs)
	}
	return &advGate{gate: g, rdb: rdb, up: up}
}

// alive fails the test if the process has stopped answering.
func (g *advGate) alive() {
	g.t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + g.l.Metrics + "/healthz")
	if err != nil {
		g.t.Fatalf("keygate is not answering /healthz: %v\n%s", err, g.logs)
	}
	resp.Body.Close()
}

// used is the organization's request usage (operator API).
func (g *advGate) used(org string) int64 { return orgUsage(g.t, g.gate, org) }

// keyCount is the number of keys of an organization (operator API).
func (g *advGate) keyCount(org string) int {
	var ks []json.RawMessage
	g.admin("GET", "/admin/v1/orgs/"+org+"/keys", nil, 200, &ks)
	return len(ks)
}

// redisCalls is the number of commands Redis has run, INFO itself aside.
func (g *advGate) redisCalls() int64 {
	g.t.Helper()
	info, err := g.rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		g.t.Fatalf("INFO commandstats: %v", err)
	}
	var n int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok || name == "cmdstat_info" {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		c, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			g.t.Fatalf("INFO line %q: %v", line, err)
		}
		n += c
	}
	return n
}

// goroutines scrapes go_goroutines from keygate's metrics listener.
func (g *advGate) goroutines() int {
	g.t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + g.l.Metrics + "/metrics")
	if err != nil {
		g.t.Fatalf("scraping metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				g.t.Fatalf("go_goroutines %q: %v", v, err)
			}
			return int(n)
		}
	}
	g.t.Fatal("no go_goroutines in /metrics")
	return 0
}

// exchange writes request on a new connection and reads every answer until
// keygate closes the connection (or 10s pass); the last request of a
// payload says Connection: close, so a well-behaved server closes at once.
func exchange(t *testing.T, addr, request string) []*http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatalf("writing %q: %v", request, err)
	}
	br := bufio.NewReader(conn)
	// The first request's method tells ReadResponse whether a body follows
	// (none after HEAD).
	method, _, _ := strings.Cut(request, " ")
	var out []*http.Response
	for range 10 {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("%q: keygate kept the connection open 10s without answering", request)
			}
			break
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(strings.NewReader(string(b)))
		out = append(out, resp)
		if resp.Close {
			break
		}
	}
	return out
}

// one is exchange for a request that gets exactly one answer; it returns
// the answer and its body.
func one(t *testing.T, addr, request string) (*http.Response, string) {
	t.Helper()
	rs := exchange(t, addr, request)
	if len(rs) != 1 {
		t.Fatalf("%q: %d answers, want 1", request, len(rs))
	}
	b, _ := io.ReadAll(rs[0].Body)
	return rs[0], strings.TrimSpace(string(b))
}

func statuses(rs []*http.Response) []int {
	var out []int
	for _, r := range rs {
		out = append(out, r.StatusCode)
	}
	return out
}

func TestAdversarial(t *testing.T) {
	bin := buildKeygate(t)
	rulesFile := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(rulesFile, []byte(advRules), 0o600); err != nil {
		t.Fatal(err)
	}
	// The slow-body case waits out a 30s deadline: it runs beside the
	// others (t.Run from a goroutine, so -parallel does not serialise it).
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t.Run("slow body on a self-served route", func(t *testing.T) { advSlowBody(t, bin) })
	}()
	defer wg.Wait()
	t.Run("path spellings", func(t *testing.T) { advPathSpellings(t, bin, rulesFile) })
	t.Run("header spellings", func(t *testing.T) { advHeaderSpellings(t, bin) })
	t.Run("request smuggling", func(t *testing.T) { advSmuggling(t, bin) })
	t.Run("oversized input", func(t *testing.T) { advOversized(t, bin) })
	t.Run("refusals do not wait for bodies", func(t *testing.T) { advUnsentBodies(t, bin) })
	t.Run("minted keys", func(t *testing.T) { advMintedKeys(t, bin) })
	t.Run("login flood", func(t *testing.T) { advLoginFlood(t, bin) })
	t.Run("connection limit", func(t *testing.T) { advConnectionLimit(t, bin) })
}

// advPathSpellings: every spelling of a protected route that an upstream
// reads as that route is refused like the route itself (rewrite mode) or as
// non-canonical (reject mode), reaches nothing and costs nothing.
func advPathSpellings(t *testing.T, bin, rulesFile string) {
	type spelling struct {
		method, path string
		canonical    bool // the path is canonical as sent (reject mode matches it too)
	}
	spellings := []spelling{
		{"POST", "/api/v0/pin/add", true},
		{"POST", "//api/v0/pin/add", false},
		{"POST", "/api/v0//pin/add", false},
		{"POST", "/api/v0/./pin/add", false},
		{"POST", "/x/../api/v0/pin/add", false},
		{"POST", "/API/v0/PIN/add", true},
		{"POST", "/api/v0/%2e/pin/add", false},
		{"POST", "/api/v0/%2E%2e/v0/pin/add", false},
		{"POST", "/api/v0/pin/x/%2e%2e/add", false},
		{"POST", "/api/v0/pin/add/", true},
		{"POST", "/api/v0/pin", true},
		{"POST", "/api/v0/pin/", true},
		{"GET", "/export", true},
		{"HEAD", "/export", true},
		{"GET", "/EXPORT", true},
		{"GET", "/export/", true},
		{"GET", "/public/../export", false},
		{"GET", "/public/%2e%2e/export", false},
		{"HEAD", "/public/./../export", false},
	}
	// Never canonical, refused in both modes.
	refused := []string{"/a%00b", "/a%5cb", "/a\\b", "/api%2fv0/pin/add", "/public/..;/export", "/public/.;x/../export"}

	for _, mode := range []string{"rewrite", "reject"} {
		t.Run(mode, func(t *testing.T) {
			g := startAdvGate(t, bin, "KEYGATE_ROUTES_FILE="+rulesFile, "KEYGATE_PATH_NORMALIZE="+mode)
			org, ks := g.setupOrg(1, 100000, "month", map[string][]string{"rw": {"read", "write"}, "pin": {"read", "write", "pin"}})
			data := g.l.Data
			req := func(method, path, secret string) string {
				return method + " " + path + " HTTP/1.1\r\nHost: x\r\nX-API-Key: " + secret + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
			}
			for _, s := range spellings {
				resp, body := one(t, data, req(s.method, s.path, ks["rw"].AccessSecret))
				if mode == "reject" && !s.canonical {
					if resp.StatusCode != 400 || (s.method != "HEAD" && body != nonCanonical) {
						t.Errorf("%s %s: %d %s, want 400 %s", s.method, s.path, resp.StatusCode, body, nonCanonical)
					}
					continue
				}
				if resp.StatusCode != 403 || (s.method != "HEAD" && !strings.Contains(body, `lacks the \"pin\" permission`)) {
					t.Errorf("%s %s with read,write: %d %s, want the pin permission's 403", s.method, s.path, resp.StatusCode, body)
				}
			}
			for _, p := range refused {
				if resp, body := one(t, data, req("GET", p, ks["pin"].AccessSecret)); resp.StatusCode != 400 || body != nonCanonical {
					t.Errorf("GET %s: %d %s, want 400 %s", p, resp.StatusCode, body, nonCanonical)
				}
			}
			if got := g.up.take(); len(got) != 0 {
				t.Errorf("refused spellings reached the upstream: %v", paths(got))
			}
			if u := g.used(org); u != 0 {
				t.Errorf("refused spellings charged %d", u)
			}

			// The suite is not vacuous: the pin key passes, pays the rule's
			// 5, and the upstream sees the canonical path; a free prefix is
			// free.
			for _, s := range spellings[:10] {
				if mode == "reject" && !s.canonical {
					continue
				}
				if resp, body := one(t, data, req(s.method, s.path, ks["pin"].AccessSecret)); resp.StatusCode != 200 {
					t.Errorf("%s %s with pin: %d %s", s.method, s.path, resp.StatusCode, body)
				}
			}
			want := map[string]bool{"POST /api/v0/pin/add": true, "POST /API/v0/PIN/add": true, "POST /api/v0/pin/add/": true}
			got := g.up.take()
			for _, p := range paths(got) {
				if !want[p] {
					t.Errorf("the upstream received %q, not a canonical path", p)
				}
			}
			if u := g.used(org); u != int64(5*len(got)) {
				t.Errorf("%d pins charged %d, want %d", len(got), u, 5*len(got))
			}
			before := g.used(org)
			if resp, body := one(t, data, req("GET", "/public/a/b", ks["rw"].AccessSecret)); resp.StatusCode != 200 {
				t.Errorf("GET /public/a/b: %d %s", resp.StatusCode, body)
			}
			if u := g.used(org); u != before {
				t.Errorf("the free prefix charged %d", u-before)
			}
			// The known gap (docs/security.md): a ";" matrix parameter is
			// part of the segment, so "/api/v0/pin;x/add" is not the pin
			// rule's path; it is forwarded as sent, as an unmatched POST
			// (write, cost 1). Upstreams that strip matrix parameters
			// (Spring, Tomcat) need rules for that spelling too.
			g.up.take()
			before = g.used(org)
			if resp, body := one(t, data, req("POST", "/api/v0/pin;x/add", ks["rw"].AccessSecret)); resp.StatusCode != 200 {
				t.Errorf("POST /api/v0/pin;x/add: %d %s (if this is now refused, update docs/security.md)", resp.StatusCode, body)
			}
			if got := paths(g.up.take()); !slices.Equal(got, []string{"POST /api/v0/pin;x/add"}) {
				t.Errorf("the upstream received %v for the matrix-parameter spelling", got)
			}
			if u := g.used(org) - before; u != 1 {
				t.Errorf("the matrix-parameter spelling charged %d, want 1", u)
			}
		})
	}
}

// advHeaderSpellings: whatever spelling of keygate's identity headers a
// client sends, and whatever it lists in Connection, the upstream sees only
// keygate's own values.
func advHeaderSpellings(t *testing.T, bin string) {
	g := startAdvGate(t, bin)
	org, ks := g.setupOrg(1, 1000, "month", map[string][]string{"rw": {"read", "write"}})
	k := ks["rw"]
	forged := []string{
		"X_Keygate_Org_Id: victim",
		"x_keygate_org_id: victim",
		"x-keygate-permissions: admin",
		"X-KEYGATE-PERMISSIONS: admin",
		"X_Keygate-Permissions: admin",
		"X-Keygate_Key_Id: forged",
		"x-KeyGate-Key-Name: forged",
		"X-Keygate-Org-Id: victim",
		"X-Keygate-Org-Id: victim2",
		"X-Keygate-Usage: requests=-100",
		"X-Keygate-Anything-Else: forged",
		"X-Forwarded-For: 10.0.0.1",
	}
	wantIdentity := map[string]string{
		"X-Keygate-Org-Id": org, "X-Keygate-Key-Id": k.UID, "X-Keygate-Key-Name": "rw", "X-Keygate-Permissions": "read,write",
	}
	for _, connection := range []string{"", "Connection: X-Keygate-Org-Id, X-Keygate-Permissions, x_keygate_key_id\r\n"} {
		req := "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: " + k.AccessSecret + "\r\n" + strings.Join(forged, "\r\n") + "\r\n" + connection + "Content-Length: 0\r\n\r\n" +
			"GET /again HTTP/1.1\r\nHost: x\r\nX-API-Key: " + k.AccessSecret + "\r\nConnection: close\r\n\r\n"
		if rs := exchange(t, g.l.Data, req); !slices.Equal(statuses(rs), []int{200, 200}) {
			t.Fatalf("with %q: statuses %v", connection, statuses(rs))
		}
		got := g.up.take()
		if len(got) != 2 {
			t.Fatalf("the upstream received %v", paths(got))
		}
		s := got[0]
		for name, vs := range s.Header {
			for _, v := range vs {
				if strings.Contains(v, "victim") || strings.Contains(v, "admin") || strings.Contains(v, "forged") || strings.Contains(v, "-100") {
					t.Errorf("with %q: the upstream received the client's %s: %s", connection, name, v)
				}
			}
			if guard.IsIdentityHeader(name) {
				if want, ok := wantIdentity[name]; !ok || len(vs) != 1 || vs[0] != want {
					t.Errorf("with %q: the upstream received %s: %q, want keygate's %q", connection, name, vs, want)
				}
			}
		}
		for name, want := range wantIdentity {
			if v := s.Header.Values(name); len(v) != 1 || v[0] != want {
				t.Errorf("with %q: %s = %q, want %q", connection, name, v, want)
			}
		}
		if v := s.Header.Values("X-Forwarded-For"); !slices.Equal(v, []string{"127.0.0.1"}) {
			t.Errorf("X-Forwarded-For from an untrusted peer reached the upstream as %q, want 127.0.0.1", v)
		}
		if v := s.Header.Get("X-API-Key"); v != "" {
			t.Errorf("the upstream received the client's X-API-Key")
		}
	}
	if u := g.used(org); u != 4 {
		t.Errorf("4 requests charged %d", u)
	}
}

// advSmuggling: framing tricks on one raw connection. Whatever keygate
// makes of them, the upstream never receives a request the client did not
// authenticate (the smuggled one, /smuggled, carries no credential), and
// the charge is one per request the upstream received.
func advSmuggling(t *testing.T, bin string) {
	g := startAdvGate(t, bin)
	org, ks := g.setupOrg(1, 1000, "month", map[string][]string{"rw": {"read", "write"}})
	key := "X-API-Key: " + ks["rw"].AccessSecret + "\r\n"
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	chunk := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
	cases := []struct {
		name, request string
		// want is the upstream's requests (method and path) and body of
		// the first one ("*": any), when it received any.
		want []string
		body string
		// statuses are keygate's answers on the connection.
		statuses []int
	}{
		{"CL and TE: chunked (TE wins, CL dropped)",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
			[]string{"POST /hello"}, "", []int{200, 401}},
		{"TE: chunked and CL (order reversed)",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Transfer-Encoding: chunked\r\nContent-Length: " + strconv.Itoa(len(chunk)+len(smuggled)) + "\r\n\r\n" + chunk + smuggled,
			[]string{"POST /hello"}, smuggled, []int{200, 401}},
		{"two different Content-Lengths",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Content-Length: 0\r\nContent-Length: " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled,
			nil, "", []int{400}},
		{"one Content-Length with two values",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Content-Length: 0, " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled,
			nil, "", []int{400}},
		{"TE: chunked, identity",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Transfer-Encoding: chunked, identity\r\n\r\n" + chunk + smuggled,
			nil, "", []int{501}},
		{"TE: identity with CL",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Transfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n" + smuggled,
			nil, "", []int{501}},
		{"TE: xchunked",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Transfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n" + smuggled,
			nil, "", []int{501}},
		// net/http reads an obs-fold as a space (RFC 9112 section 5.2
		// allows that): the header is "chunked", the folded credential the
		// client's own.
		{"TE obs-folded",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Transfer-Encoding:\r\n chunked\r\nContent-Length: 0\r\n\r\n" + chunk + smuggled,
			[]string{"POST /hello"}, smuggled, []int{200, 401}},
		{"credential obs-folded",
			"GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key:\r\n " + ks["rw"].AccessSecret + "\r\n\r\n" + smuggled,
			[]string{"GET /hello"}, "", []int{200, 401}},
		{"space before the colon",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Transfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n" + chunk + smuggled,
			nil, "", []int{400}},
		{"a request in the body of an authenticated one",
			"POST /hello HTTP/1.1\r\nHost: x\r\n" + key + "Connection: close\r\nContent-Length: " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled,
			[]string{"POST /hello"}, smuggled, []int{200}},
		{"a request in the body of an unauthenticated one",
			"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled,
			nil, "", []int{401}},
		{"an authenticated request in the body of a refused one",
			"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n" + "GET /inner HTTP/1.1\r\nHost: x\r\n" + key + "Connection: close\r\n\r\n",
			nil, "", []int{401}},
		// HTTP/1.0 has no Transfer-Encoding: Content-Length frames the
		// body, and the connection closes after it.
		{"HTTP/1.0 with TE: chunked",
			"POST /hello HTTP/1.0\r\nHost: x\r\n" + key + "Transfer-Encoding: chunked\r\nContent-Length: " + strconv.Itoa(len(chunk)) + "\r\n\r\n" + chunk + smuggled,
			[]string{"POST /hello"}, chunk, []int{200}},
	}
	var charged int64
	for _, tc := range cases {
		rs := exchange(t, g.l.Data, tc.request)
		got := g.up.take()
		t.Logf("%s: keygate answered %v; the upstream received %v", tc.name, statuses(rs), paths(got))
		for _, s := range got {
			if s.Path != "/hello" {
				t.Errorf("%s: the upstream received %s %s, which the client did not authenticate", tc.name, s.Method, s.Path)
			}
		}
		if tc.want != nil || len(got) != 0 {
			if !slices.Equal(paths(got), tc.want) {
				t.Errorf("%s: the upstream received %v, want %v", tc.name, paths(got), tc.want)
			} else if tc.body != "*" && got[0].Body != tc.body {
				t.Errorf("%s: the upstream received the body %q, want %q", tc.name, got[0].Body, tc.body)
			}
		}
		if !slices.Equal(statuses(rs), tc.statuses) {
			t.Errorf("%s: keygate answered %v, want %v", tc.name, statuses(rs), tc.statuses)
		}
		charged += int64(len(got))
		if u := g.used(org); u != charged {
			t.Errorf("%s: usage %d, want %d (one per forwarded request)", tc.name, u, charged)
			charged = u
		}
	}

	// Last, as its upstream sighting may come late: bare LF ends header
	// lines for net/http, but not chunk lines. The request is admitted
	// (charged 1), then its body fails while it is forwarded; the client
	// gets 400, and the upstream at most the request's head with a cut
	// body, depending on how far the transport got.
	rs := exchange(t, g.l.Data, "POST /hello HTTP/1.1\nHost: x\n"+key+"Content-Length: 0\nTransfer-Encoding: chunked\n\n0\n\n"+smuggled)
	if !slices.Equal(statuses(rs), []int{400}) {
		t.Errorf("bare LF line ends: keygate answered %v, want [400]", statuses(rs))
	} else if b, _ := io.ReadAll(rs[0].Body); strings.TrimSpace(string(b)) != `{"error":true,"statusCode":400,"message":"Request body could not be read"}` {
		t.Errorf("bare LF line ends: 400 %s", b)
	}
	if u := g.used(org); u != charged+1 {
		t.Errorf("bare LF line ends: usage %d, want %d", u, charged+1)
	}
	time.Sleep(500 * time.Millisecond) // no signal for a request that may not come
	got := g.up.take()
	t.Logf("bare LF line ends: keygate answered %v; the upstream received %v", statuses(rs), paths(got))
	if len(got) > 1 || len(got) == 1 && got[0].Path != "/hello" {
		t.Errorf("bare LF line ends: the upstream received %v, want at most [POST /hello]", paths(got))
	}
}

// advOversized: headers past 64 KiB are 431 before anything else; a 5 MiB
// body on a self-served route is the route's 413 and creates nothing.
func advOversized(t *testing.T, bin string) {
	g := startAdvGate(t, bin)
	org, ks := g.setupOrg(1, 1000, "month", map[string][]string{"admin": {"admin"}})
	secret := ks["admin"].AccessSecret

	// 80 KiB of headers: past the 64 KiB limit and net/http's 4 KiB slack.
	big := "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: " + secret + "\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("a", 1000)+"\r\n", 80) + "\r\n"
	if resp, body := one(t, g.l.Data, big); resp.StatusCode != 431 {
		t.Errorf("80 KiB of headers: %d %s, want 431", resp.StatusCode, body)
	}
	// One header line of 80 KiB.
	big = "GET /hello HTTP/1.1\r\nHost: x\r\nX-API-Key: " + secret + "\r\nX-Filler: " + strings.Repeat("a", 80<<10) + "\r\n\r\n"
	if resp, body := one(t, g.l.Data, big); resp.StatusCode != 431 {
		t.Errorf("an 80 KiB header line: %d %s, want 431", resp.StatusCode, body)
	}
	if got := g.up.take(); len(got) != 0 {
		t.Errorf("oversized headers reached the upstream: %v", paths(got))
	}

	keysBefore := g.keyCount(org)
	for _, framing := range []string{"Content-Length", "chunked"} {
		body := `{"name":"` + strings.Repeat("a", 5<<20) + `","permissions":["read"]}`
		conn, err := net.Dial("tcp", g.l.Data)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		head := "POST /api/v0/key HTTP/1.1\r\nHost: x\r\nX-API-Key: " + secret + "\r\nContent-Type: application/json\r\n"
		if framing == "chunked" {
			head += "Transfer-Encoding: chunked\r\n\r\n"
			body = fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)
		} else {
			head += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
		}
		// keygate answers before the body has all arrived: write in the
		// background, and expect the write to be cut short.
		go func() { _, _ = io.WriteString(conn, head+body) }()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			conn.Close()
			t.Fatalf("5 MiB %s body: no answer: %v", framing, err)
		}
		b, _ := io.ReadAll(resp.Body)
		conn.Close()
		if want := `{"code":413,"msg":"Request body larger than 1048576 bytes"}`; resp.StatusCode != 413 || strings.TrimSpace(string(b)) != want || !resp.Close {
			t.Errorf("5 MiB %s body to POST /api/v0/key: %d %s (close %v), want 413 %s with Connection: close", framing, resp.StatusCode, b, resp.Close, want)
		}
	}
	if n := g.keyCount(org); n != keysBefore {
		t.Errorf("huge bodies created %d keys", n-keysBefore)
	}
	if got := g.up.take(); len(got) != 0 {
		t.Errorf("huge bodies reached the upstream: %v", paths(got))
	}
	if u := g.used(org); u != 0 {
		t.Errorf("refused requests charged %d", u)
	}
	g.alive()
}

// advSlowBody: a body trickled at 1 byte per 100ms to a self-served route
// is cut off when keygate's body deadline (the write timeout, 30s) passes,
// and the key it would have created is not.
func advSlowBody(t *testing.T, bin string) {
	g := startAdvGate(t, bin)
	org, ks := g.setupOrg(1, 1000, "month", map[string][]string{"admin": {"admin"}})
	keysBefore := g.keyCount(org)
	// 1000 bytes at 10 per second would take 100s.
	body := `{"name":"slow","permissions":["read"]` + strings.Repeat(" ", 1000-38) + "}"
	conn, err := net.Dial("tcp", g.l.Data)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	start := time.Now()
	if _, err := io.WriteString(conn, "POST /api/v0/key HTTP/1.1\r\nHost: x\r\nX-API-Key: "+ks["admin"].AccessSecret+
		"\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	trickled := make(chan int, 1)
	go func() {
		n := 0
		defer func() { trickled <- n }()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n < len(body) {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte{body[n]}); err != nil {
				return
			}
			n++
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	elapsed := time.Since(start)
	close(stop)
	sent := <-trickled
	status := "connection closed without an answer"
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		status = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if want := `408 {"code":408,"msg":"request body not received in time"}`; status != want {
		t.Errorf("the slow body got %s, want %s", status, want)
	}
	t.Logf("a body trickled at 10 bytes/s: %s after %v, %d of %d bytes sent", status, elapsed.Round(time.Millisecond), sent, len(body))
	if elapsed > 45*time.Second {
		t.Errorf("the slow body held its connection %v, past the 30s deadline and slack", elapsed)
	}
	if elapsed < 25*time.Second {
		t.Errorf("the slow body was cut after %v, before the 30s deadline", elapsed)
	}
	if n := g.keyCount(org); n != keysBefore {
		t.Errorf("the slow body created %d keys", n-keysBefore)
	}
	g.alive()
}

// advUnsentBodies: 500 connections announce a 1000-byte body without a
// credential and never send it; each is answered 401 at once with
// Connection: close, and keygate's goroutines return to their baseline.
func advUnsentBodies(t *testing.T, bin string) {
	g := startAdvGate(t, bin)
	org, _ := g.setupOrg(1, 1000, "month", map[string][]string{"rw": {"read", "write"}})
	baseline := g.goroutines()
	const n = 500
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan string, n)
	start := time.Now()
	var slowest time.Duration
	var mu sync.Mutex
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", g.l.Data)
			if err != nil {
				errs <- err.Error()
				return
			}
			conns[i] = conn
			_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
			t0 := time.Now()
			if _, err := io.WriteString(conn, "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"); err != nil {
				errs <- err.Error()
				return
			}
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				errs <- fmt.Sprintf("no answer: %v", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			d := time.Since(t0)
			mu.Lock()
			slowest = max(slowest, d)
			mu.Unlock()
			if resp.StatusCode != 401 || !resp.Close {
				errs <- fmt.Sprintf("%d, Connection: close %v", resp.StatusCode, resp.Close)
				return
			}
			// keygate closes its end: the next read is EOF, not a wait.
			if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
				errs <- fmt.Sprintf("connection left open after the 401: %v", err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	bad := map[string]int{}
	for e := range errs {
		bad[e]++
	}
	if len(bad) != 0 {
		t.Errorf("of %d refused requests with unsent bodies: %v", n, bad)
	}
	t.Logf("%d unsent bodies refused in %v, slowest answer %v; goroutines %d before", n, time.Since(start).Round(time.Millisecond), slowest.Round(time.Millisecond), baseline)
	if slowest > 10*time.Second {
		t.Errorf("a refusal took %v: it waited for the body", slowest)
	}
	// The clients still hold their sockets: keygate must have let go.
	var now int
	deadline := time.Now().Add(10 * time.Second)
	for {
		now = g.goroutines()
		if now <= baseline+20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("goroutines after: %d", now)
	if now > baseline+20 {
		t.Errorf("keygate holds %d goroutines after %d refusals, %d before", now, n, baseline)
	}
	if got := g.up.take(); len(got) != 0 {
		t.Errorf("refusals reached the upstream: %d", len(got))
	}
	if u := g.used(org); u != 0 {
		t.Errorf("refusals charged %d", u)
	}
}

// advMintedKeys: well-formed random secrets from one address cost a bounded
// number of Redis commands while a key the address proved keeps working;
// behind a trusted proxy the limit is per client address.
func advMintedKeys(t *testing.T, bin string) {
	mint := func() string {
		s, err := keys.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(data, secret, xff string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+data+"/hello", nil)
		req.Header.Set("X-API-Key", secret)
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}

	t.Run("one address", func(t *testing.T) {
		g := startAdvGate(t, bin)
		org, ks := g.setupOrg(1, 100000, "month", map[string][]string{"rw": {"read", "write"}})
		good := ks["rw"].AccessSecret
		if status, body := get(g.l.Data, good, ""); status != 200 {
			t.Fatalf("the good key: %d %s", status, body)
		}
		g.up.take()
		before := g.redisCalls()
		start := time.Now()
		counts := map[int]int{}
		goodOK := 0
		for i := range 2000 {
			status, body := get(g.l.Data, mint(), "")
			counts[status]++
			if status == 429 && body != `{"error":true,"statusCode":429,"message":"Too many failed authentications"}` {
				t.Fatalf("429 body %s", body)
			}
			if i%100 == 99 {
				if status, body := get(g.l.Data, good, ""); status != 200 {
					t.Fatalf("after %d minted keys the proved key gets %d %s", i+1, status, body)
				}
				goodOK++
			}
		}
		calls := g.redisCalls() - before
		t.Logf("2000 minted keys from one address in %v: statuses %v, %d Redis commands (the proved key's %d requests included)",
			time.Since(start).Round(time.Millisecond), counts, calls, goodOK)
		if calls >= 500 {
			t.Errorf("2000 minted keys cost %d Redis commands, want < 500", calls)
		}
		if counts[200] != 0 || counts[403] < 20 || counts[429] < 1500 {
			t.Errorf("statuses %v: want 20 and a few 403s, the rest 429", counts)
		}
		if got := g.up.take(); len(got) != goodOK {
			t.Errorf("the upstream received %d requests, want the proved key's %d", len(got), goodOK)
		}
		if u := g.used(org); u != int64(goodOK+1) {
			t.Errorf("usage %d, want %d", u, goodOK+1)
		}
	})

	t.Run("per client behind a trusted proxy", func(t *testing.T) {
		g := startAdvGate(t, bin, "KEYGATE_TRUSTED_PROXIES=127.0.0.1")
		org, ks := g.setupOrg(1, 100000, "month", map[string][]string{"rw": {"read", "write"}})
		const clients, each = 10, 40
		refused := map[string]map[int]int{}
		start := time.Now()
		for i := range clients * each {
			addr := "203.0.113." + strconv.Itoa(1+i%clients)
			status, _ := get(g.l.Data, mint(), addr)
			if refused[addr] == nil {
				refused[addr] = map[int]int{}
			}
			refused[addr][status]++
		}
		elapsed := time.Since(start)
		// 20 failures per client, refilled one per 500ms.
		refill := int(elapsed/(500*time.Millisecond)) + 1
		for addr, c := range refused {
			if c[403] < 20 || c[403] > 20+refill || c[403]+c[429] != each {
				t.Errorf("client %s: %v, want 20 (up to %d) 403s and the rest 429", addr, c, 20+refill)
			}
		}
		t.Logf("%d clients × %d minted keys in %v: %v", clients, each, elapsed.Round(time.Millisecond), refused["203.0.113.1"])
		// A client with no failures is not limited by the others', nor
		// is a good key from a new client.
		if status, _ := get(g.l.Data, mint(), "203.0.113.200"); status != 403 {
			t.Errorf("a fresh client's first unknown key: %d, want 403", status)
		}
		if status, body := get(g.l.Data, ks["rw"].AccessSecret, "203.0.113.201"); status != 200 {
			t.Errorf("a good key from a fresh client: %d %s", status, body)
		}
		// The peer itself (the proxy) is not the client: its own address
		// is not limited by its clients' failures.
		if status, body := get(g.l.Data, ks["rw"].AccessSecret, ""); status != 200 {
			t.Errorf("a good key from the proxy itself: %d %s", status, body)
		}
		if got := g.up.take(); len(got) != 2 {
			t.Errorf("the upstream received %v, want the good key's 2", paths(got))
		}
		if u := g.used(org); u != 2 {
			t.Errorf("usage %d, want 2", u)
		}
	})
}

// advLoginFlood: 40 wrong passwords for one seed 003 username at once are
// mostly 429, and another user logs in meanwhile.
func advLoginFlood(t *testing.T, bin string) {
	g := startAdvGate(t, bin)
	g.admin("POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "p", "period": "month", "max_api_requests": 100}, 201, nil)
	alice := g.createOrg(map[string]any{"name": "A", "plan_id": 1, "username": "alice", "password": "alice-password"})
	bob := g.createOrg(map[string]any{"name": "B", "plan_id": 1, "username": "bob", "password": "bob-password"})
	client := &http.Client{Timeout: 30 * time.Second}
	login := func(user, pw string) (int, string, time.Duration) {
		form := url.Values{"username": {user}, "password": {pw}, "access_level": {"basic"}}
		t0 := time.Now()
		resp, err := client.Post("http://"+g.l.Data+"/user/create_apikey", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
		if err != nil {
			return 0, err.Error(), time.Since(t0)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b)), time.Since(t0)
	}
	var mu sync.Mutex
	counts := map[int]int{}
	var slowest time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _, d := login("alice", "guess")
			mu.Lock()
			counts[status]++
			slowest = max(slowest, d)
			mu.Unlock()
		}()
	}
	bobStatus, bobBody, bobTook := login("bob", "bob-password")
	if bobStatus == 503 {
		// Both password-check slots stayed busy past their 2s wait (a
		// loaded machine): the answer says retry, and a client would.
		t.Logf("bob got 503 after %v during the flood (%s); retrying once", bobTook, bobBody)
		bobStatus, bobBody, bobTook = login("bob", "bob-password")
	}
	wg.Wait()
	flood := time.Since(start)
	t.Logf("40 wrong passwords for alice at once: %v in %v (slowest %v); bob meanwhile: %d in %v",
		counts, flood.Round(time.Millisecond), slowest.Round(time.Millisecond), bobStatus, bobTook.Round(time.Millisecond))
	if counts[429] <= 30 || counts[200] != 0 || counts[500] != 0 {
		t.Errorf("40 wrong passwords: %v, want more than 30 429s and no 200", counts)
	}
	if bobStatus != 200 {
		t.Errorf("bob during the flood: %d %s", bobStatus, bobBody)
	}
	// alice's own password from the guessing address waits out the limit
	// too: that address never logged in as alice.
	status, body, _ := login("alice", "alice-password")
	t.Logf("alice's right password from the flooding address afterwards: %d %s", status, body)
	if status != 429 {
		t.Errorf("alice's password from the flooding address: %d %s, want 429", status, body)
	}
	if n := g.keyCount(alice); n != 0 {
		t.Errorf("the flood created %d keys for alice", n)
	}
	if n := g.keyCount(bob); n != 1 {
		t.Errorf("bob has %d keys, want the 1 he created", n)
	}
	if got := g.up.take(); len(got) != 0 {
		t.Errorf("logins reached the upstream: %v", paths(got))
	}
}

// advConnectionLimit: with KEYGATE_MAX_CONNECTIONS=50, 200 idle connections
// fill the data listener (the rest wait in the kernel's backlog); the
// operator and metrics listeners keep answering; a legitimate request
// completes once the idle ones go; keygate does not crash.
func advConnectionLimit(t *testing.T, bin string) {
	g := startAdvGate(t, bin, "KEYGATE_MAX_CONNECTIONS=50")
	org, ks := g.setupOrg(1, 1000, "month", map[string][]string{"rw": {"read", "write"}})
	baseline := g.goroutines()
	idle := make([]net.Conn, 0, 200)
	closeIdle := func() {
		for _, c := range idle {
			c.Close()
		}
		idle = idle[:0]
	}
	defer closeIdle()
	for range 200 {
		c, err := net.DialTimeout("tcp", g.l.Data, 5*time.Second)
		if err != nil {
			t.Fatalf("dialing idle connection %d: %v", len(idle), err)
		}
		idle = append(idle, c)
	}
	type answer struct {
		status int
		err    error
		at     time.Duration
	}
	done := make(chan answer, 1)
	start := time.Now()
	go func() {
		c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		req, _ := http.NewRequest("GET", "http://"+g.l.Data+"/hello", nil)
		req.Header.Set("X-API-Key", ks["rw"].AccessSecret)
		resp, err := c.Do(req)
		if err != nil {
			done <- answer{err: err, at: time.Since(start)}
			return
		}
		resp.Body.Close()
		done <- answer{status: resp.StatusCode, at: time.Since(start)}
	}()
	held := g.goroutines()
	select {
	case a := <-done:
		t.Errorf("a request behind 200 idle connections was answered after %v (%+v): the limit of 50 did not hold", a.at, a)
	case <-time.After(time.Second):
	}
	// The other listeners have their own limits.
	var plans []json.RawMessage
	g.admin("GET", "/admin/v1/plans", nil, 200, &plans)
	g.alive()
	closeIdle()
	closed := time.Since(start)
	select {
	case a := <-done:
		t.Logf("50 of 200 idle connections held (goroutines %d, %d before); the request waited; closed the idle ones after %v; answered %d after %v",
			held, baseline, closed.Round(time.Millisecond), a.status, a.at.Round(time.Millisecond))
		if a.err != nil || a.status != 200 {
			t.Errorf("the request after the idle connections closed: %+v", a)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the request was not answered 20s after the idle connections closed")
	}
	if held > baseline+50+20 {
		t.Errorf("%d goroutines with 200 idle connections and a limit of 50 (%d before)", held, baseline)
	}
	if got := g.up.take(); len(got) != 1 {
		t.Errorf("the upstream received %v, want 1 request", paths(got))
	}
	if u := g.used(org); u != 1 {
		t.Errorf("usage %d, want 1", u)
	}
	g.alive()
}
