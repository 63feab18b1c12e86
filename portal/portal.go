// Package portal is the customer portal on the data listener: static pages
// (embedded, committed) whose script calls the self-served routes from the
// browser with the customer's own credential. It serves files and nothing
// else — no credential reaches it, it reads no store and charges nothing —
// so it opens no way in that the self-served routes do not already offer.
package portal

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strconv"

	"github.com/keygate/keygate/listener"
	"github.com/keygate/keygate/metrics"
)

// Prefix is where the portal lives; every path below it is the portal's.
const Prefix = "/portal/"

//go:embed assets
var assets embed.FS

// securityHeaders go on every answer: the pages load only their own files,
// run no inline script, send requests only to this origin and cannot be
// framed; nothing is fetched from elsewhere.
var securityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
		"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
	"X-Frame-Options":        "DENY",
	"X-Content-Type-Options": "nosniff",
	"Referrer-Policy":        "no-referrer",
	// The pages are small and change with the binary: always revalidate.
	"Cache-Control":                "no-cache",
	"Cross-Origin-Opener-Policy":   "same-origin",
	"Cross-Origin-Resource-Policy": "same-origin",
}

// contentTypes are the types of the assets, by extension: fixed here, not
// read from the machine's mime tables, so every build serves the same.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// file is an embedded asset ready to serve.
type file struct {
	body        []byte
	contentType string
	etag        string
}

// Portal serves the portal's files.
type Portal struct {
	files map[string]file // by request path
}

// New returns the portal with its embedded files.
func New() *Portal {
	p, err := newPortal(assets)
	if err != nil {
		panic(fmt.Sprintf("portal: embedded assets: %v", err)) // a build mistake, caught by any test
	}
	return p
}

func newPortal(fsys fs.FS) (*Portal, error) {
	p := &Portal{files: make(map[string]file)}
	err := fs.WalkDir(fsys, "assets", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return err
		}
		ct := contentTypes[path.Ext(name)]
		if ct == "" {
			return fmt.Errorf("%s: no content type for its extension", name)
		}
		sum := sha256.Sum256(body)
		rel := name[len("assets/"):]
		f := file{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		p.files[Prefix+rel] = f
		if rel == "index.html" {
			p.files[Prefix] = f
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, ok := p.files[Prefix]; !ok {
		return nil, fmt.Errorf("no index.html")
	}
	return p, nil
}

// Serve answers a request below Prefix: GET and HEAD of a known file; 405
// for any other method, 404 for any other path. The query is ignored.
func (p *Portal) Serve(w *listener.Writer, r *http.Request) {
	h := w.Header()
	for k, v := range securityHeaders {
		h[k] = []string{v}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		plain(w, http.StatusMethodNotAllowed, "method not allowed: the portal's pages are read with GET")
		return
	}
	f, ok := p.files[r.URL.Path]
	if !ok {
		plain(w, http.StatusNotFound, "no such page in the portal")
		return
	}
	w.Outcome = metrics.OutcomeAdmitted
	h.Set("ETag", f.etag)
	if r.Header.Get("If-None-Match") == f.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", f.contentType)
	h.Set("Content-Length", strconv.Itoa(len(f.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(f.body)
	}
}

// Redirect answers the portal's bare path (no trailing slash) with a
// redirect to Prefix, so that the pages' relative links resolve.
func (p *Portal) Redirect(w *listener.Writer, r *http.Request) {
	for k, v := range securityHeaders {
		w.Header()[k] = []string{v}
	}
	w.Outcome = metrics.OutcomeAdmitted
	w.Header().Set("Location", Prefix)
	w.WriteHeader(http.StatusPermanentRedirect)
}

// plain writes a short text answer (the portal's errors are for a person
// at a browser).
func plain(w *listener.Writer, status int, msg string) {
	w.Outcome = metrics.OutcomeBadRequest
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(msg + "\n"))
}
