package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/keygate/keygate/openapi"
)

// The answers of keygate's own routes, checked against openapi/openapi.json:
// callReader hands every answer it receives to checkAnswer, which validates
// those of the sidecars' self-served and operator routes, so every such
// call of the suite is checked, and the document cannot drift from the code.

// contract is the parsed document and a router over its paths.
type contract struct {
	doc    *openapi3.T
	router routers.Router
}

var (
	contractOnce sync.Once
	contractVal  contract
	contractErr  error
)

// parsedContract parses and validates the document once per test binary.
func parsedContract() (contract, error) {
	contractOnce.Do(func() {
		loader := openapi3.NewLoader()
		doc, err := loader.LoadFromData(openapi.Document())
		if err != nil {
			contractErr = fmt.Errorf("loading openapi.json: %w", err)
			return
		}
		// Routes match by path and method: the listeners' loopback ports
		// differ per test, so the document's server URLs are left out.
		doc.Servers = nil
		router, err := legacy.NewRouter(doc) // validates the document
		if err != nil {
			contractErr = fmt.Errorf("openapi.json: %w", err)
			return
		}
		contractVal = contract{doc: doc, router: router}
	})
	return contractVal, contractErr
}

// loadContract is parsedContract for a test's own goroutine.
func loadContract(t *testing.T) contract {
	t.Helper()
	c, err := parsedContract()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// listenerKinds maps the address of every running sidecar listener whose
// answers are checked to a *listenerKind.
var listenerKinds sync.Map

// listenerKind is "admin", "data" or "authz", the values of the document's
// x-keygate-listener; a pointer, so a registration removes only itself.
type listenerKind struct{ name string }

// registerListeners makes the answers of a sidecar's data, admin and
// authorization listeners checked against the document until the test ends.
func registerListeners(t *testing.T, l listeners) {
	data, admin, authz := &listenerKind{"data"}, &listenerKind{"admin"}, &listenerKind{"authz"}
	listenerKinds.Store(l.Data, data)
	listenerKinds.Store(l.Admin, admin)
	if l.Authz != "" {
		listenerKinds.Store(l.Authz, authz)
	}
	t.Cleanup(func() {
		listenerKinds.CompareAndDelete(l.Data, data)
		listenerKinds.CompareAndDelete(l.Admin, admin)
		listenerKinds.CompareAndDelete(l.Authz, authz)
	})
}

// authzPath is where the document lists the authorization endpoint, which
// answers on every path of its listener.
const authzPath = "/authz"

// documented returns the document's operation for a request to a sidecar
// listener, and its path parameters; false for anything else (an upstream,
// the metrics listener, a forwarded path, an unknown operator route).
func (c contract) documented(req *http.Request) (*routers.Route, map[string]string, bool) {
	kind, ok := listenerKinds.Load(req.URL.Host)
	if !ok {
		return nil, nil, false
	}
	if kind.(*listenerKind).name == "authz" {
		// Every path is the one operation, listed for GET.
		find := req.Clone(req.Context())
		find.URL.Path, find.URL.RawPath = authzPath, ""
		route, params, err := c.router.FindRoute(find)
		if err != nil || route.PathItem.Extensions["x-keygate-listener"] != "authz" {
			return nil, nil, false
		}
		return route, params, true
	}
	route, params, err := c.router.FindRoute(req)
	if err != nil || route.PathItem.Extensions["x-keygate-listener"] != kind.(*listenerKind).name {
		return nil, nil, false
	}
	// keygate's routes match exactly: no trailing slash, no empty segment.
	if !samePath(route.Path, req.URL.Path) {
		return nil, nil, false
	}
	return route, params, true
}

// samePath reports whether path matches template segment by segment, a
// {name} standing for one non-empty segment.
func samePath(template, path string) bool {
	ts, ps := strings.Split(template, "/"), strings.Split(path, "/")
	if len(ts) != len(ps) {
		return false
	}
	for i, s := range ts {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
			if ps[i] == "" {
				return false
			}
		} else if s != ps[i] {
			return false
		}
	}
	return true
}

// checkAnswer validates the answer to req against the document when req
// went to a documented route of a sidecar; a mismatch fails the test. It
// may run on any goroutine (callReader does), so it never stops the test.
func checkAnswer(t *testing.T, req *http.Request, status int, header http.Header, body []byte) {
	t.Helper()
	c, err := parsedContract()
	if err != nil {
		t.Error(err)
		return
	}
	route, params, ok := c.documented(req)
	if !ok {
		return
	}
	err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		// A status the document does not list for the route is a mismatch too.
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	})
	if err != nil {
		t.Errorf("%s %s (%s): the answer does not match openapi/openapi.json: %v\nstatus %d, headers %v\n%s",
			req.Method, req.URL.Path, route.Operation.OperationID, err, status, header, body)
	}
}

// TestOpenAPIRoutesByListener: checkAnswer picks the document's operation
// by listener, path and method, exactly as keygate routes: what keygate
// forwards or refuses as unknown is not checked against an operation.
func TestOpenAPIRoutesByListener(t *testing.T) {
	c := loadContract(t)
	l := listeners{Data: "127.0.0.1:1", Admin: "127.0.0.1:2"}
	registerListeners(t, l)
	for _, tc := range []struct {
		method, url string
		op          string
	}{
		{"GET", "http://127.0.0.1:1/api/v1/account", "getAccount"},
		{"GET", "http://127.0.0.1:1/api/v1/account/", ""}, // forwarded
		{"HEAD", "http://127.0.0.1:1/api/v0/stats", ""},   // forwarded
		{"GET", "http://127.0.0.1:1/admin/v1/plans", ""},  // forwarded: not on the data listener
		{"GET", "http://127.0.0.1:2/admin/v1/plans", "listPlans"},
		{"DELETE", "http://127.0.0.1:2/admin/v1/orgs/o/keys/k", "deleteKey"},
		{"GET", "http://127.0.0.1:2/admin/v1/orgs//keys", ""}, // no such operator route
		{"GET", "http://127.0.0.1:2/api/v1/account", ""},      // no such operator route
		{"GET", "http://127.0.0.1:3/api/v1/account", ""},      // not a sidecar
	} {
		req := httptest.NewRequest(tc.method, tc.url, nil)
		route, _, ok := c.documented(req)
		got := ""
		if ok {
			got = route.Operation.OperationID
		}
		if got != tc.op {
			t.Errorf("%s %s: operation %q, want %q", tc.method, tc.url, got, tc.op)
		}
	}
}

// TestEveryDocumentedRouteIsServed compares the document with what the
// listeners answer, by behaviour: every documented operation is answered
// by keygate on its listener, and every other method on a documented path,
// and every path-like literal of the code that the document lacks, is not.
// On the admin listener an unknown route answers 404 "no such operator
// route"; on the data listener it is forwarded, so the upstream sees it.
// Answers to documented operations are validated too (callReader).
func TestEveryDocumentedRouteIsServed(t *testing.T) {
	c := loadContract(t)
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_AUTHZ_ADDR": "127.0.0.1:0"})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"owner": {"admin"}})
	// The authorization listener answers its one operation on any path,
	// and forwards nothing.
	for _, path := range []string{authzPath, "/", "/api/v1/account", "/admin/v1/plans"} {
		hdr := apiKey(ks["owner"].AccessSecret)
		hdr["X-Original-URI"] = "/v1/things"
		if status, h, _ := call(t, "GET", "http://"+g.l.Authz+path, hdr, ""); status != 200 || h.Get("X-Keygate-Key-Name") != "owner" {
			t.Errorf("GET %s on the authorization listener: %d %v", path, status, h)
		}
	}
	if rec.count() != 0 {
		t.Errorf("the authorization listener forwarded %d requests", rec.count())
	}
	// A valid admin key: a forwarded request then reaches the upstream
	// instead of being refused, and a self-served one gets past the
	// credential check. Bodies are empty, so nothing is changed.
	dataHdr := apiKey(ks["owner"].AccessSecret)
	adminHdr := map[string]string{"Authorization": "Bearer " + testAdminToken}

	// listenerOf returns the listener on which the document puts method
	// on the concrete path, "" when it has no such operation.
	listenerOf := func(method, concrete string) string {
		for template, item := range c.doc.Paths.Map() {
			if samePath(template, concrete) && item.GetOperation(method) != nil {
				return item.Extensions["x-keygate-listener"].(string)
			}
		}
		return ""
	}
	// served reports whether keygate itself answered method path on the
	// listener.
	served := func(t *testing.T, listener, method, path string) bool {
		t.Helper()
		if listener == "admin" {
			const notARoute = `{"error":true,"statusCode":404,"message":"no such operator route"}` + "\n"
			status, h, body := call(t, method, "http://"+g.l.Admin+path, adminHdr, "")
			if method == "HEAD" { // no body: its announced length tells the answers apart
				return !(status == 404 && h.Get("Content-Length") == strconv.Itoa(len(notARoute)))
			}
			return !(status == 404 && string(body) == notARoute)
		}
		before := rec.count()
		call(t, method, "http://"+g.l.Data+path, dataHdr, "")
		return rec.count() == before
	}

	// Paths to probe: the documented ones and every path-like literal in
	// the code (a route the document lacks shows up as one of these), with
	// "x" for each path parameter.
	paths := map[string]bool{}
	for _, p := range append(slices.Collect(maps.Keys(c.doc.Paths.Map())), codePathLiterals(t)...) {
		paths[regexp.MustCompile(`\{[^}]+\}`).ReplaceAllString(p, "x")] = true
	}
	methods := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
	for _, path := range slices.Sorted(maps.Keys(paths)) {
		for _, listener := range []string{"admin", "data"} {
			if path == "/openapi.json" && listener == "admin" {
				// How other methods are refused is up to the mount.
				checkOpenAPIRoute(t, g)
				continue
			}
			for _, method := range methods {
				want := listenerOf(method, path) == listener
				// net/http's mux answers HEAD for a GET pattern: the
				// operator API's GET routes answer HEAD too.
				if listener == "admin" && method == "HEAD" {
					want = listenerOf("GET", path) == "admin"
				}
				if got := served(t, listener, method, path); got != want {
					if want {
						t.Errorf("%s %s is in openapi.json, but the %s listener does not serve it", method, path, listener)
					} else {
						t.Errorf("the %s listener serves %s %s, which openapi.json lacks", listener, method, path)
					}
				}
			}
		}
	}
}

// checkOpenAPIRoute checks GET /openapi.json on the admin listener, without
// the admin token: the document itself.
func checkOpenAPIRoute(t *testing.T, g *gate) {
	t.Helper()
	status, h, body := call(t, "GET", "http://"+g.l.Admin+"/openapi.json", nil, "")
	if status != 200 || h.Get("Content-Type") != "application/json" || !bytes.Equal(body, openapi.Document()) {
		t.Errorf("GET /openapi.json on the admin listener: %d %q, %d bytes; want 200, the document", status, h.Get("Content-Type"), len(body))
	}
}

// pathLiteral matches Go string literals that name a route of keygate's
// API path spaces, with an optional method ("GET /admin/v1/orgs/{id}"); the
// operator console's pages (/console/…) are HTML for a browser, not API,
// and are not in the document (their own tests are in console and
// TestConsoleInBrowser);
// segmentLiteral a literal appended to a name (partnerPrefix+"create").
var (
	pathLiteral    = regexp.MustCompile(`"(?:(?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) )?(/(?:admin|api|user)/[A-Za-z0-9_.{}/-]*|/openapi\.json)"`)
	segmentLiteral = regexp.MustCompile(`[A-Za-z_][A-Za-z0-9_]*\s*\+\s*"([a-z][a-z0-9_-]*)"`)
)

// codePathLiterals returns the route-like string literals of the module's
// non-test Go code, wherever the packages that serve them live, and each
// prefix among them ("/api/v0/partner/user/") joined to each appended
// segment literal.
func codePathLiterals(t *testing.T) []string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var out, segments []string
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "deploy" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range pathLiteral.FindAllStringSubmatch(string(src), -1) {
			out = append(out, m[1])
		}
		for _, m := range segmentLiteral.FindAllStringSubmatch(string(src), -1) {
			segments = append(segments, m[1])
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the code: %v", err)
	}
	for _, p := range slices.Clone(out) {
		if strings.HasSuffix(p, "/") {
			for _, s := range segments {
				out = append(out, p+s)
			}
		}
	}
	if !slices.Contains(out, "/api/v1/account") || !slices.Contains(out, "/admin/v1/orgs/{id}/keys/{name}") ||
		!slices.Contains(out, "/api/v0/partner/user/update-plan") {
		t.Fatalf("found too few route literals in %s: %v", root, out)
	}
	return out
}
