// Package console is the operator console (DESIGN.md "Operator tools"): web
// pages at /console/ on the admin listener for what the operator API does —
// plans, organizations, keys — plus a searchable, paged organization list
// and usage bars.
//
// Every change goes through the operator API's own handler, called
// in-process with the admin token, so the console has no second copy of
// its validation and every change is audited like an API call; reads that
// the API has no route for (a page of organizations, meter usage) go to the
// store and counter through manage.Service. The operator signs in with the
// admin token once; the browser then holds only a random session id in an
// HttpOnly, SameSite=Strict cookie (Secure over TLS), and every
// state-changing request must carry the session's CSRF token and come from
// the console's own origin.
package console

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/guard"
	"github.com/keygate/keygate/manage"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// Prefix is where the console is served on the admin listener.
const Prefix = "/console/"

// cookieName holds the session id; never the token.
const cookieName = "keygate_console"

// maxForm bounds a form body; every console form is far smaller.
const maxForm = 64 << 10

// DefaultSignInLimit bounds failed sign-ins per client address.
var DefaultSignInLimit = guard.FailLimit{Limit: 5, Window: time.Minute}

// Options configure the console. Manage, API and Token are required.
type Options struct {
	Manage *manage.Service
	// API is the operator API's handler (token-guarded); the console sends
	// it every change in-process.
	API http.Handler
	// Token is the admin token, compared in constant time at sign-in.
	Token string
	// SignInLimit bounds failed sign-ins per client address (zero:
	// DefaultSignInLimit).
	SignInLimit guard.FailLimit
	// SessionTTL is how long a session lasts without use (default 1h);
	// MaxSessions bounds how many are kept (default 256).
	SessionTTL  time.Duration
	MaxSessions int
	Log         *zap.Logger
}

// Console serves the operator console's pages.
type Console struct {
	opt      Options
	log      *zap.Logger
	pages    map[string]*template.Template
	sessions *sessions
	fails    *guard.FailLimiter[netip.Addr, struct{}]
	token    [32]byte
	mux      *http.ServeMux
}

// New returns the console; a missing required option panics.
func New(o Options) *Console {
	if o.Manage == nil || o.API == nil || o.Token == "" {
		panic("console.New: Options.Manage, API and Token are required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.SignInLimit.Off() {
		o.SignInLimit = DefaultSignInLimit
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = time.Hour
	}
	if o.MaxSessions <= 0 {
		o.MaxSessions = 256
	}
	c := &Console{
		opt:      o,
		log:      o.Log.Named("console"),
		pages:    parsePages(),
		sessions: newSessions(o.MaxSessions, o.SessionTTL, 12*time.Hour),
		fails:    guard.NewFailLimiter[netip.Addr, struct{}](o.SignInLimit, 4096, 1),
		token:    sha256.Sum256([]byte(o.Token)),
	}
	c.routes()
	return c
}

func (c *Console) routes() {
	m := http.NewServeMux()
	assets, err := fs.Sub(assetFS, "assets")
	if err != nil {
		panic(err)
	}
	m.Handle("GET /console/assets/", http.StripPrefix("/console/assets/", http.FileServerFS(assets)))
	m.HandleFunc("GET /console/signin", c.signInPage)
	m.HandleFunc("POST /console/signin", c.signIn)
	page := func(pattern string, fn func(w http.ResponseWriter, r *http.Request, s *session) error) {
		m.HandleFunc(pattern, c.signedIn(fn))
	}
	page("GET /console/{$}", func(w http.ResponseWriter, r *http.Request, _ *session) error {
		http.Redirect(w, r, "/console/orgs", http.StatusSeeOther)
		return nil
	})
	page("POST /console/signout", c.signOut)
	page("GET /console/plans", c.plansPage)
	page("GET /console/plans/new", c.newPlanPage)
	page("POST /console/plans", c.createPlan)
	page("GET /console/plans/{id}", c.planPage)
	page("POST /console/plans/{id}", c.patchPlan)
	page("GET /console/orgs", c.orgsPage)
	page("GET /console/orgs/new", c.newOrgPage)
	page("POST /console/orgs", c.createOrg)
	page("GET /console/orgs/{id}", c.orgPage)
	page("POST /console/orgs/{id}/plan", c.changeOrgPlan)
	page("POST /console/orgs/{id}/keys", c.createKey)
	page("GET /console/orgs/{id}/keys/{name}", c.keyPage)
	page("POST /console/orgs/{id}/keys/{name}/enabled", c.setKeyEnabled)
	page("POST /console/orgs/{id}/keys/{name}/limits", c.setKeyLimits)
	page("POST /console/orgs/{id}/keys/{name}/rotate", c.rotateKey)
	page("GET /console/orgs/{id}/keys/{name}/delete", c.deleteKeyPage)
	page("POST /console/orgs/{id}/keys/{name}/delete", c.deleteKey)
	m.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, http.StatusNotFound, "error", view{Title: "Not found", Error: "There is no such console page."})
	})
	c.mux = m
}

// ServeHTTP serves the console with its security headers: pages only from
// this origin, never framed, never cached.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: with no-referrer a browser sends
	// "Origin: null" on a form post, and the CSRF check reads Origin.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	}
	c.mux.ServeHTTP(w, r)
}

// signedIn runs fn for a request of a signed-in operator; a state-changing
// request must also pass the CSRF check. fn's error is shown in a page.
func (c *Console) signedIn(fn func(w http.ResponseWriter, r *http.Request, s *session) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		s := c.sessions.get(c.sessionID(r), now)
		if s == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/console/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			c.render(w, http.StatusForbidden, "error", view{Title: "Signed out", Error: "Your session has ended: sign in again."})
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := r.ParseForm(); err != nil {
				c.render(w, http.StatusRequestEntityTooLarge, "error", view{Title: "Form too large", Error: "The form could not be read.", CSRF: s.csrf})
				return
			}
			if !sameOrigin(r) || subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.csrf)) != 1 {
				c.render(w, http.StatusForbidden, "error", view{Title: "Refused", Error: "This form did not come from this console page (CSRF check failed). Reload the page and try again.", CSRF: s.csrf})
				return
			}
		}
		if err := fn(w, r, s); err != nil {
			c.fail(w, r, s, err)
		}
	}
}

// fail shows err in a page with its status: the operator API's message for
// its refusals, a generic one for internal failures.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, err error) {
	status, msg := http.StatusInternalServerError, "Something went wrong; the server log has the details."
	var ae *apiError
	var fe *formError
	switch {
	case errors.As(err, &ae):
		status, msg = ae.Status, ae.Message
	case errors.As(err, &fe):
		status, msg = http.StatusBadRequest, fe.Error()
	default:
		p := gate.Classify(err, time.Now())
		if p.Internal {
			c.log.Error("console page failed", zap.String("path", r.URL.Path), zap.Error(err))
		} else {
			status, msg = p.Status, p.Message
		}
	}
	c.render(w, status, "error", view{Title: http.StatusText(status), Error: msg, CSRF: s.csrf})
}

// sameOrigin reports whether a browser says the request comes from this
// origin. Clients that send neither header (not browsers) pass on to the
// CSRF token check.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		return origin == scheme+"://"+r.Host
	}
	return true
}

func (c *Console) sessionID(r *http.Request) string {
	ck, err := r.Cookie(cookieName)
	if err != nil {
		return ""
	}
	return ck.Value
}

func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	if c.sessions.get(c.sessionID(r), time.Now()) != nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	c.render(w, http.StatusOK, "signin", view{Title: "Sign in", Data: safeNext(r.URL.Query().Get("next"))})
}

// signIn exchanges the admin token for a session. Failures are counted per
// client address (guard.FailLimiter) and, past the limit, refused without
// looking at the token.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	if err := r.ParseForm(); err != nil {
		c.render(w, http.StatusRequestEntityTooLarge, "signin", view{Title: "Sign in", Error: "The form could not be read."})
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	if !sameOrigin(r) {
		c.render(w, http.StatusForbidden, "signin", view{Title: "Sign in", Error: "This form did not come from this console page.", Data: next})
		return
	}
	addr := clientAddr(r)
	if ok, retry := c.fails.Allow(addr, now); !ok {
		gate.SetRetryAfter(w.Header(), retry)
		c.render(w, http.StatusTooManyRequests, "signin", view{Title: "Sign in", Data: next,
			Error: fmt.Sprintf("Too many failed sign-ins from your address: try again in %d s.", int(retry/time.Second)+1)})
		return
	}
	got := sha256.Sum256([]byte(r.PostForm.Get("token")))
	if subtle.ConstantTimeCompare(got[:], c.token[:]) != 1 {
		c.fails.Fail(addr, now)
		c.log.Info("sign-in refused", zap.String("remote_addr", r.RemoteAddr))
		c.render(w, http.StatusUnauthorized, "signin", view{Title: "Sign in", Error: "That is not the admin token.", Data: next})
		return
	}
	id, err := c.sessions.create(now)
	if err != nil {
		c.log.Error("creating a session", zap.Error(err))
		c.render(w, http.StatusInternalServerError, "signin", view{Title: "Sign in", Error: "Could not start a session; the server log has the details."})
		return
	}
	c.log.Info("signed in", zap.String("remote_addr", r.RemoteAddr))
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: Prefix, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) signOut(w http.ResponseWriter, r *http.Request, _ *session) error {
	c.sessions.remove(c.sessionID(r))
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: Prefix, MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/console/signin", http.StatusSeeOther)
	return nil
}

// safeNext keeps a redirect target inside the console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.Contains(next, "..") || strings.ContainsAny(next, "\\\r\n") || len(next) > 2048 {
		return "/console/orgs"
	}
	return next
}

// clientAddr is the peer address the sign-in limit counts: the admin
// listener is reached directly, not through the data path's proxies.
func clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return guard.AddrKey(ap.Addr())
}

// apiError is the operator API's refusal of a console call.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s", e.Status, e.Message) }

// formError is a form field the console could not read (before the
// operator API sees anything).
type formError struct{ Field, Reason string }

func (e *formError) Error() string { return e.Field + ": " + e.Reason }

// call sends one operator API request in-process, as the signed-in
// operator, and decodes a JSON answer into out (unless nil). A refusal is an
// *apiError with the API's status and message.
func (c *Console) call(r *http.Request, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(r.Context(), method, "http://console.invalid"+path, rd)
	if err != nil {
		return fmt.Errorf("building %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.opt.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.RemoteAddr = r.RemoteAddr
	rec := &recorder{header: http.Header{}}
	c.opt.API.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	if rec.status >= 400 {
		var e gate.DataError
		if json.Unmarshal(rec.body.Bytes(), &e) != nil || e.Message == "" {
			e.Message = http.StatusText(rec.status)
		}
		return &apiError{Status: rec.status, Message: e.Message}
	}
	if out != nil {
		if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
			return fmt.Errorf("decoding %s %s: %w", method, path, err)
		}
	}
	return nil
}

// recorder collects an in-process operator API answer.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}
