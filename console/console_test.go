package console_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/sidecar"
)

// browser is a cookie-keeping client of a console that does not follow
// redirects, so tests see each answer.
type browser struct {
	t   testing.TB
	srv *httptest.Server
	env *sidecartest.Env
	c   *http.Client
}

func newBrowser(t testing.TB) *browser {
	t.Helper()
	return newBrowserWith(t, sidecar.Options{})
}

func newBrowserWith(t testing.TB, o sidecar.Options) *browser {
	t.Helper()
	env := sidecartest.New(t, o)
	srv := httptest.NewServer(env.Sidecar.Admin)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, srv: srv, env: env, c: &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// do sends a request with the headers a browser sends for a same-origin
// form unless hdr overrides them ("" removes one).
func (b *browser) do(method, path string, form url.Values, hdr map[string]string) (*http.Response, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(context.Background(), method, b.srv.URL+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", b.srv.URL)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, string(out)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// signIn signs in and returns the session's CSRF token.
func (b *browser) signIn() string {
	b.t.Helper()
	resp, _ := b.do("POST", "/console/signin", url.Values{"token": {sidecartest.AdminToken}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("sign-in: status %d", resp.StatusCode)
	}
	_, page := b.do("GET", "/console/orgs", nil, nil)
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		b.t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	return m[1]
}

func TestSignIn(t *testing.T) {
	b := newBrowser(t)
	resp, _ := b.do("GET", "/console/orgs", nil, nil)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/console/signin") {
		t.Fatalf("signed out: %d to %q, want 303 to the sign-in page", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, page := b.do("POST", "/console/signin", url.Values{"token": {"wrong"}}, nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(page, "not the admin token") || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token: %d, cookies %v:\n%s", resp.StatusCode, resp.Cookies(), page)
	}
	resp, _ = b.do("POST", "/console/signin", url.Values{"token": {sidecartest.AdminToken}, "next": {"/console/plans"}}, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/plans" {
		t.Fatalf("sign-in: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	ck := resp.Cookies()
	if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Path != "/console/" || ck[0].Secure ||
		strings.Contains(ck[0].Value, sidecartest.AdminToken) || len(ck[0].Value) < 40 {
		t.Fatalf("session cookie %+v", ck)
	}
	if resp, _ := b.do("GET", "/console/plans", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("signed in: plans page %d", resp.StatusCode)
	}
	// A redirect target outside the console is not followed.
	resp, _ = b.do("POST", "/console/signin", url.Values{"token": {sidecartest.AdminToken}, "next": {"//evil.example/"}}, nil)
	if loc := resp.Header.Get("Location"); loc != "/console/orgs" {
		t.Errorf("sign-in with next=//evil.example/ went to %q", loc)
	}
	csrf := csrfField.FindStringSubmatch(func() string { _, p := b.do("GET", "/console/plans", nil, nil); return p }())[1]
	if resp, _ := b.do("POST", "/console/signout", url.Values{"csrf": {csrf}}, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out: %d", resp.StatusCode)
	}
	if resp, _ := b.do("GET", "/console/plans", nil, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after sign-out: plans page %d, want a redirect to sign in", resp.StatusCode)
	}
}

func TestSignInAttemptsAreLimited(t *testing.T) {
	b := newBrowser(t)
	var last int
	for range 6 {
		resp, _ := b.do("POST", "/console/signin", url.Values{"token": {"guess"}}, nil)
		last = resp.StatusCode
	}
	if last != http.StatusTooManyRequests {
		t.Fatalf("6th wrong token: %d, want 429", last)
	}
	// Past the limit even the right token waits: nothing is compared.
	resp, page := b.do("POST", "/console/signin", url.Values{"token": {sidecartest.AdminToken}}, nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(page, "Too many failed sign-ins") {
		t.Fatalf("right token past the limit: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// TestCSRF: a state-changing request without the session's token, or from
// another origin, is refused with 403 and changes nothing.
func TestCSRF(t *testing.T) {
	b := newBrowser(t)
	csrf := b.signIn()
	plan := url.Values{"id": {"7"}, "name": {"Seven"}, "period": {"month"}}
	with := func(extra url.Values) url.Values {
		v := url.Values{}
		for k, s := range plan {
			v[k] = s
		}
		for k, s := range extra {
			v[k] = s
		}
		return v
	}
	for name, tc := range map[string]struct {
		form url.Values
		hdr  map[string]string
	}{
		"no token":               {plan, nil},
		"wrong token":            {with(url.Values{"csrf": {"x" + csrf}}), nil},
		"other origin":           {with(url.Values{"csrf": {csrf}}), map[string]string{"Origin": "http://evil.example"}},
		"cross-site fetch":       {with(url.Values{"csrf": {csrf}}), map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": ""}},
		"sign-out without token": {url.Values{}, nil},
	} {
		path := "/console/plans"
		if strings.HasPrefix(name, "sign-out") {
			path = "/console/signout"
		}
		resp, page := b.do("POST", path, tc.form, tc.hdr)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(page, "CSRF") {
			t.Errorf("%s: %d, want 403 with the reason:\n%s", name, resp.StatusCode, page)
		}
	}
	if pls, _ := b.env.Store.Plans(context.Background()); len(pls) != 0 {
		t.Fatalf("refused requests created %v", pls)
	}
	if resp, _ := b.do("GET", "/console/plans", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("still signed in after the refusals? %d", resp.StatusCode)
	}
	if resp, _ := b.do("POST", "/console/plans", with(url.Values{"csrf": {csrf}}), nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("with the token: %d", resp.StatusCode)
	}
}

// TestBadInputChangesNothing: a refused form comes back with its message,
// what was typed and a 4xx, and nothing is stored.
func TestBadInputChangesNothing(t *testing.T) {
	b := newBrowser(t)
	csrf := b.signIn()
	for _, tc := range []struct {
		form url.Values
		want string
	}{
		{url.Values{"id": {"x"}, "name": {"Typed name"}}, "id: want a whole number"},
		{url.Values{"id": {"3"}, "name": {"Typed name"}, "period": {"fortnight"}}, "period"},
		{url.Values{"id": {"3"}, "name": {"Typed name"}, "limits": {"egress"}}, "want meter=value"},
		{url.Values{"id": {"3"}, "name": {"Typed name"}, "limits": {"Bad-Name=4"}}, "meter"},
		{url.Values{"id": {"3"}, "name": {"Typed name"}, "key_requests": {"10"}, "key_per": {"forever"}}, "per"},
		{url.Values{"id": {"3"}, "name": {"Typed name"}, "max_api_requests": {"-5"}}, "max_api_requests"},
		{url.Values{"id": {"3"}, "name": {"Typed name"}, "key_requests": {"ten"}, "key_per": {"1m"}}, "key_rate_limit requests: want a whole number"},
	} {
		tc.form.Set("csrf", csrf)
		resp, page := b.do("POST", "/console/plans", tc.form, nil)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, tc.want) || !strings.Contains(page, `value="Typed name"`) {
			t.Errorf("%v: %d, want 400 with %q and the typed name:\n%s", tc.form, resp.StatusCode, tc.want, page)
		}
	}
	if pls, _ := b.env.Store.Plans(context.Background()); len(pls) != 0 {
		t.Fatalf("refused forms created %v", pls)
	}
	// An action on a key that does not exist: the organization's page with
	// the API's 404, not a blank one.
	b.env.Admin(t, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "period": "month"}, 201, nil)
	b.env.Admin(t, "POST", "/admin/v1/orgs", map[string]any{"id": "acme", "name": "Acme", "plan_id": 1}, 201, nil)
	resp, page := b.do("POST", "/console/orgs/acme/keys/nope/enabled", url.Values{"csrf": {csrf}, "enabled": {"false"}}, nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(page, `role="alert"`) || !strings.Contains(page, "<h1>Acme</h1>") {
		t.Errorf("unknown key: %d:\n%s", resp.StatusCode, page)
	}
	resp, page = b.do("GET", "/console/orgs/nobody", nil, nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(page, `role="alert"`) {
		t.Errorf("unknown organization: %d:\n%s", resp.StatusCode, page)
	}
}

// TestSecretShownOnce: a new key's secret is in the first page after its
// creation and in no later one.
func TestSecretShownOnce(t *testing.T) {
	b := newBrowser(t)
	csrf := b.signIn()
	b.env.Admin(t, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "period": "month", "max_api_requests": 100}, 201, nil)
	b.env.Admin(t, "POST", "/admin/v1/orgs", map[string]any{"id": "acme", "name": "Acme", "plan_id": 1}, 201, nil)
	resp, _ := b.do("POST", "/console/orgs/acme/keys", url.Values{"csrf": {csrf}, "name": {"ci"}, "permissions": {"read", "write"}}, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/orgs/acme" {
		t.Fatalf("create key: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, page := b.do("GET", "/console/orgs/acme", nil, nil)
	m := regexp.MustCompile(`id="secret-value">([^<]+)<`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no secret on the first page:\n%s", page)
	}
	k, err := b.env.Store.KeyByHash(context.Background(), keys.HashSecret(m[1]))
	if err != nil || k.Name != "ci" {
		t.Fatalf("the secret shown is not the key's: %v", err)
	}
	if _, page := b.do("GET", "/console/orgs/acme", nil, nil); strings.Contains(page, m[1]) || strings.Contains(page, "secret-value") {
		t.Fatal("the secret is shown a second time")
	}
}

func TestSecurityHeaders(t *testing.T) {
	b := newBrowser(t)
	for _, path := range []string{"/console/signin", "/console/assets/console.css", "/console/nope"} {
		resp, _ := b.do("GET", path, nil, nil)
		h := resp.Header
		if !strings.Contains(h.Get("Content-Security-Policy"), "default-src 'none'") || h.Get("X-Frame-Options") != "DENY" ||
			h.Get("Cache-Control") != "no-store" || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: headers %v", path, h)
		}
	}
	// The operator API is where it was, with its own answers.
	resp, page := b.do("GET", "/admin/v1/plans", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(page, "Valid admin token required") {
		t.Errorf("operator API without token: %d %s", resp.StatusCode, page)
	}
	if resp, _ := b.do("GET", "/console", nil, nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/" {
		t.Errorf("/console: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// TestSubAccounts: a partner's page lists its sub-accounts, and a
// sub-account's page links its partner.
func TestSubAccounts(t *testing.T) {
	b := newBrowser(t)
	b.signIn()
	b.env.Admin(t, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "period": "month"}, 201, nil)
	b.env.Admin(t, "POST", "/admin/v1/orgs", map[string]any{"id": "hooli", "name": "Hooli", "plan_id": 1, "partner": true}, 201, nil)
	if err := b.env.Store.CreateOrg(context.Background(), keys.Org{ID: "hooli-sub", Name: "Hooli Sub", PlanID: 1, PartnerID: "hooli", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, page := b.do("GET", "/console/orgs/hooli", nil, nil); !strings.Contains(page, `href="/console/orgs/hooli-sub">Hooli Sub</a>`) {
		t.Errorf("the partner's page does not list its sub-account:\n%s", page)
	}
	if _, page := b.do("GET", "/console/orgs/hooli-sub", nil, nil); !strings.Contains(page, `Sub-account of</dt><dd><a href="/console/orgs/hooli">`) {
		t.Errorf("the sub-account's page does not link its partner:\n%s", page)
	}
}

// downStore is a store whose backend cannot be reached.
type downStore struct{ keys.Store }

func (downStore) FindOrgs(context.Context, keys.OrgQuery) (keys.OrgPage, error) {
	return keys.OrgPage{}, fmt.Errorf("listing: %w", keys.ErrUnavailable)
}

func (downStore) Org(context.Context, string) (keys.Org, error) {
	return keys.Org{}, fmt.Errorf("reading: %w", keys.ErrUnavailable)
}

// TestStoreOutageShownInPage: when the store cannot be reached the pages
// say so with 503, never a blank page or a 500.
func TestStoreOutageShownInPage(t *testing.T) {
	b := newBrowserWith(t, sidecar.Options{Store: downStore{memstore.New()}})
	b.signIn()
	for _, path := range []string{"/console/orgs", "/console/orgs/acme"} {
		resp, page := b.do("GET", path, nil, nil)
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(page, `role="alert"`) || !strings.Contains(page, "</html>") {
			t.Errorf("%s with the store down: %d\n%s", path, resp.StatusCode, page)
		}
	}
}

// TestFormBodyBounded: a form past the console's 64 KiB bound is refused
// with 413 before it is read further, even with the right token and CSRF
// field, and starts or changes nothing.
func TestFormBodyBounded(t *testing.T) {
	b := newBrowser(t)
	pad := strings.Repeat("x", 70<<10)
	resp, _ := b.do("POST", "/console/signin", url.Values{"token": {sidecartest.AdminToken}, "pad": {pad}}, nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || len(resp.Cookies()) != 0 {
		t.Fatalf("oversized sign-in: %d, cookies %v; want 413 and no session", resp.StatusCode, resp.Cookies())
	}
	csrf := b.signIn()
	resp, _ = b.do("POST", "/console/plans", url.Values{"csrf": {csrf}, "id": {"77"}, "name": {"Big"}, "price": {"0"}, "pad": {pad}}, nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized plan form: %d, want 413", resp.StatusCode)
	}
	if resp, page := b.do("GET", "/console/plans/77", nil, nil); resp.StatusCode == http.StatusOK {
		t.Fatalf("an oversized form created plan 77:\n%s", page)
	}
}

// TestRateLimitFormShowsStoredLimit: a plan's rate limits come back in its
// form as the API writes them ("1m", not "1m0s"), so saving the form
// unchanged sends the same limit.
func TestRateLimitFormShowsStoredLimit(t *testing.T) {
	b := newBrowser(t)
	b.signIn()
	b.env.Admin(t, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "period": "month",
		"key_rate_limit": map[string]any{"requests": 10, "per": "1m", "burst": 20}, "org_rate_limit": map[string]any{"requests": 5, "per": "2h", "shadow": true}}, 201, nil)
	resp, page := b.do("GET", "/console/plans/1", nil, nil)
	for _, want := range []string{`name="key_requests" inputmode="numeric" value="10"`, `name="key_per" value="1m"`,
		`name="key_burst" inputmode="numeric" value="20"`, `name="org_per" value="2h"`, `name="org_burst" inputmode="numeric" value=""`} {
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, want) {
			t.Errorf("plan form: %d, want %s:\n%s", resp.StatusCode, want, page)
		}
	}
}
