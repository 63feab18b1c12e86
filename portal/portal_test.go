package portal_test

import (
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/portal"
	"github.com/keygate/keygate/sidecar"
)

var testNow = time.Unix(1700000000, 0)

// countingUpstream fails every forwarded request and counts them: the
// portal's paths never reach the upstream.
type countingUpstream struct{ n atomic.Int64 }

func (u *countingUpstream) RoundTrip(*http.Request) (*http.Response, error) {
	u.n.Add(1)
	return nil, errors.New("portal request forwarded")
}

// newEnv is a sidecar with org-1 and its admin key.
func newEnv(t *testing.T, o sidecar.Options) (*sidecartest.Env, *countingUpstream, string) {
	up := &countingUpstream{}
	o.Now = func() time.Time { return testNow }
	o.Transport = up
	e := sidecartest.New(t, o)
	secret := e.SetupOrg(t, 1, 1000, nil, "org-1")
	return e, up, secret
}

func serve(e *sidecartest.Env, method, target, secret string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, nil)
	if secret != "" {
		req.Header.Set("X-API-Key", secret)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	e.Data.ServeHTTP(rec, req)
	return rec
}

// TestServing: GET and HEAD of the pages, 405 for every other method, 404
// for anything else below /portal/ — none of it forwarded or charged, even
// with a valid credential on the request.
func TestServing(t *testing.T) {
	e, up, secret := newEnv(t, sidecar.Options{})
	before := e.Snapshot(t, testNow)

	pages := map[string]string{
		"/portal/":             "text/html; charset=utf-8",
		"/portal/index.html":   "text/html; charset=utf-8",
		"/portal/portal.js":    "text/javascript; charset=utf-8",
		"/portal/portal.css":   "text/css; charset=utf-8",
		"/portal/favicon.svg":  "image/svg+xml",
		"/portal/?x=1":         "text/html; charset=utf-8",       // the query is ignored
		"/portal//portal.js":   "text/javascript; charset=utf-8", // made canonical first
		"/portal/./portal.css": "text/css; charset=utf-8",
	}
	for target, ct := range pages {
		rec := serve(e, "GET", target, secret, nil)
		if rec.Code != 200 || rec.Header().Get("Content-Type") != ct || rec.Body.Len() == 0 {
			t.Errorf("GET %s: %d %q, %d bytes", target, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
		}
		checkSecurityHeaders(t, "GET "+target, rec.Header())
		head := serve(e, "HEAD", target, "", nil)
		if head.Code != 200 || head.Body.Len() != 0 || head.Header().Get("Content-Length") != rec.Header().Get("Content-Length") {
			t.Errorf("HEAD %s: %d, %d bytes, length %q", target, head.Code, head.Body.Len(), head.Header().Get("Content-Length"))
		}
		etag := rec.Header().Get("ETag")
		if again := serve(e, "GET", target, "", map[string]string{"If-None-Match": etag}); etag == "" || again.Code != 304 || again.Body.Len() != 0 {
			t.Errorf("GET %s with If-None-Match %s: %d", target, etag, again.Code)
		}
	}

	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"} {
		for _, target := range []string{"/portal/", "/portal/portal.js", "/portal/nope"} {
			rec := serve(e, m, target, secret, nil)
			if rec.Code != 405 || rec.Header().Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %d, Allow %q", m, target, rec.Code, rec.Header().Get("Allow"))
			}
			checkSecurityHeaders(t, m+" "+target, rec.Header())
		}
	}

	for _, target := range []string{"/portal/nope", "/portal/assets/index.html", "/portal/portal.js/", "/portal/PORTAL.JS",
		"/portal/index.html%00", "/portal/.env", "/portal/" + strings.Repeat("a", 5000)} {
		rec := serve(e, "GET", target, secret, nil)
		if rec.Code != 404 && rec.Code != 400 {
			t.Errorf("GET %s: %d, want 404 (or 400 for a path that cannot be made canonical)", target, rec.Code)
		}
		if strings.Contains(rec.Body.String(), "<script") {
			t.Errorf("GET %s: an error page with a script", target)
		}
	}

	// The bare path redirects into the portal.
	if rec := serve(e, "GET", "/portal", "", nil); rec.Code != 308 || rec.Header().Get("Location") != "/portal/" {
		t.Errorf("GET /portal: %d %q", rec.Code, rec.Header().Get("Location"))
	}
	if after := e.Snapshot(t, testNow); !reflect.DeepEqual(before, after) || up.n.Load() != 0 {
		t.Errorf("serving the portal forwarded %d requests or changed the store:\n%+v\n%+v", up.n.Load(), before, after)
	}
	// A path that only looks like the portal's is the data path's, as always.
	if rec := serve(e, "GET", "/portalx/", secret, nil); rec.Code != 502 || up.n.Load() != 1 {
		t.Errorf("GET /portalx/: %d, %d forwarded; want the data path's 502 (the test upstream refuses)", rec.Code, up.n.Load())
	}
}

// TestRejectNonCanonical: with KEYGATE_PATH_NORMALIZE=reject a
// non-canonical portal path is refused like any other.
func TestRejectNonCanonical(t *testing.T) {
	e, up, _ := newEnv(t, sidecar.Options{RejectNonCanonical: true})
	for _, target := range []string{"/portal//portal.js", "/portal/./index.html", "/portal/x/../portal.js", "/portal/%2e%2e/api"} {
		if rec := serve(e, "GET", target, "", nil); rec.Code != 400 {
			t.Errorf("GET %s: %d, want 400", target, rec.Code)
		}
	}
	if rec := serve(e, "GET", "/portal/portal.js", "", nil); rec.Code != 200 {
		t.Errorf("GET /portal/portal.js: %d", rec.Code)
	}
	if up.n.Load() != 0 {
		t.Errorf("the upstream got %d requests", up.n.Load())
	}
}

func checkSecurityHeaders(t *testing.T, what string, h http.Header) {
	t.Helper()
	csp := h.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("%s: CSP %q lacks %q", what, csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") || strings.Contains(csp, "http") || strings.Contains(csp, "*") {
		t.Errorf("%s: CSP %q allows more than this origin", what, csp)
	}
	if h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("%s: headers %v", what, h)
	}
}

// TestAssetsSelfContained reads the committed files: no inline script or
// style, no handler attributes, nothing fetched from elsewhere (no CDN, no
// web font), every local reference served, every form control labelled.
func TestAssetsSelfContained(t *testing.T) {
	e, _, _ := newEnv(t, sidecar.Options{})
	dir := "assets"
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		s := string(b)
		for _, bad := range []string{"http://", "https://", "@import", "@font-face", "url(", "localStorage", "document.cookie", "innerHTML", "eval("} {
			if strings.Contains(s, bad) && !(bad == "http://" && strings.HasSuffix(path, ".svg") && strings.Contains(s, `xmlns="http://www.w3.org/2000/svg"`) && strings.Count(s, "http://") == 1) {
				t.Errorf("%s contains %q", path, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	html := serve(e, "GET", "/portal/", "", nil).Body.String()
	if m := regexp.MustCompile(`<script(?:\s[^>]*)?>`).FindAllString(html, -1); len(m) != 1 || !strings.Contains(m[0], `src="portal.js"`) {
		t.Errorf("scripts %q: want exactly one, src=portal.js", m)
	}
	if m := regexp.MustCompile(`(?i)\s(on[a-z]+|style)=`).FindAllString(html, -1); len(m) > 0 {
		t.Errorf("inline handlers or styles: %q", m)
	}
	if strings.Contains(html, "<style") {
		t.Error("an inline <style>")
	}
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(html, -1) {
		if rec := serve(e, "GET", "/portal/"+m[1], "", nil); rec.Code != 200 {
			t.Errorf("the page refers to %s, which answers %d", m[1], rec.Code)
		}
	}
	// Every input has a label: <label for=id>, or it sits inside a <label>.
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`<label for="([^"]+)"`).FindAllStringSubmatch(html, -1) {
		ids[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`<label><input[^>]*>|<input[^>]*>`).FindAllString(html, -1) {
		if strings.HasPrefix(m, "<label>") {
			continue
		}
		id := regexp.MustCompile(`id="([^"]+)"`).FindStringSubmatch(m)
		if id == nil || !ids[id[1]] {
			t.Errorf("an input without a label: %s", m)
		}
	}
}

// FuzzServe: any method and path below /portal/ gets 200, 304, 308, 400,
// 404 or 405 — never a forward, never a 5xx, never a panic.
func FuzzServe(f *testing.F) {
	for _, s := range [][2]string{{"GET", "/portal/"}, {"HEAD", "/portal/portal.js"}, {"POST", "/portal/x"}, {"GET", "/portal/%2e%2e/"}, {"GET", "/portal/a%00"}} {
		f.Add(s[0], s[1])
	}
	up := &countingUpstream{}
	e := sidecartest.New(f, sidecar.Options{Now: func() time.Time { return testNow }, Transport: up})
	f.Fuzz(func(t *testing.T, method, path string) {
		req, err := http.NewRequest(method, "http://keygate.test"+portal.Prefix, nil)
		if err != nil {
			return
		}
		req.URL.Path = portal.Prefix + path
		req.URL.RawPath = ""
		req.RequestURI = req.URL.RequestURI()
		if c, _, _, err := guard.CanonicalPath(req.URL.Path, req.URL.EscapedPath()); err == nil && !strings.HasPrefix(c, portal.Prefix) {
			return // made canonical, it leaves the portal (/portal/../x): not the portal's
		}
		n := up.n.Load()
		rec := httptest.NewRecorder()
		e.Data.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 304, 400, 404, 405:
		default:
			t.Fatalf("%q %q: %d", method, path, rec.Code)
		}
		if up.n.Load() != n {
			t.Fatalf("%q %q: forwarded", method, path)
		}
	})
}
