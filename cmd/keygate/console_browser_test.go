package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/keygate/keygate/internal/browsertest"
)

// page drives the console in a real browser for one test.
type page struct {
	t    *testing.T
	ctx  context.Context
	base string
	// shots is where screenshots go (KEYGATE_SCREENSHOTS); empty: none.
	shots string
}

// open loads path and returns the status of the page.
func (p *page) open(path string) int64 {
	p.t.Helper()
	return p.nav(chromedp.Navigate(p.base + path))
}

// nav runs steps that load a page (a click on a submit button or link) and
// returns the page's status.
func (p *page) nav(steps ...chromedp.Action[chromedp.Void]) int64 {
	p.t.Helper()
	resp, err := chromedp.RunResponse(p.ctx, steps...)
	if err != nil {
		p.t.Fatalf("browser: %v", err)
	}
	return resp.Status
}

// submit clicks sel and waits for the page it loads, failing unless its
// status is want.
func (p *page) submit(sel string, want int64) {
	p.t.Helper()
	if got := p.nav(chromedp.Click(chromedp.CSS(sel))); got != want {
		p.t.Fatalf("after clicking %s: status %d, want %d; page: %s", sel, got, want, p.text("main"))
	}
}

// fill sets form fields by CSS selector, in one round trip.
func (p *page) fill(fields map[string]string) {
	p.t.Helper()
	b, err := json.Marshal(fields)
	if err != nil {
		p.t.Fatal(err)
	}
	js := `(() => { for (const [sel, v] of Object.entries(` + string(b) + `)) { const el = document.querySelector(sel); if (!el) return sel; el.value = v; } return ""; })()`
	if missing := browsertest.Get(p.t, p.ctx, chromedp.Evaluate[string](js)); missing != "" {
		p.t.Fatalf("no field %s on the page", missing)
	}
}

func (p *page) text(sel string) string {
	p.t.Helper()
	return browsertest.Get(p.t, p.ctx, chromedp.Text(chromedp.CSS(sel)))
}

func (p *page) eval(js string) bool {
	p.t.Helper()
	return browsertest.Get(p.t, p.ctx, chromedp.Evaluate[bool](js))
}

func (p *page) wantText(sel, want string) {
	p.t.Helper()
	if got := p.text(sel); !strings.Contains(got, want) {
		p.t.Fatalf("%s reads %q, want %q", sel, got, want)
	}
}

func (p *page) shot(name string) {
	p.t.Helper()
	if p.shots != "" {
		browsertest.Screenshot(p.t, p.ctx, filepath.Join(p.shots, name+".png"))
	}
}

// TestConsoleInBrowser signs in to the console in headless Chromium and does
// an operator's day: a plan, an organization, a key whose secret is shown
// once, the key disabled (the data path refuses it), enabled, rotated and
// deleted; a wrong token and a CSRF-less post are refused. With
// KEYGATE_SCREENSHOTS=dir (make screenshots) it also writes the docs'
// screenshots there.
func TestConsoleInBrowser(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		up := httptest.NewServer(&recorder{})
		defer up.Close()
		// A generous store deadline: the test checks what the console
		// does, not latency, and shares the machine with the rest of the
		// suite.
		g := startGate(t, mergeEnv(withUpstream(env, up.URL), map[string]string{"KEYGATE_REDIS_TIMEOUT": "2s"}))
		shots := os.Getenv("KEYGATE_SCREENSHOTS")
		if _, redis := env["KEYGATE_REDIS_URL"]; redis {
			shots = ""
		}
		ctx := browsertest.NewWith(t, browsertest.Options{Width: 1200, Height: 800})
		p := &page{t: t, ctx: ctx, base: "http://" + g.l.Admin, shots: shots}
		data := "http://" + g.l.Data
		get := func(secret string) int {
			status, _, _ := call(t, "GET", data+"/v1/things", map[string]string{"Authorization": "Bearer " + secret}, "")
			return status
		}

		// Signed out, every page leads to the sign-in form; a wrong token
		// is refused with a message, the right one typed and sent with
		// Enter signs in.
		refused := func(status int) bool { return status == http.StatusUnauthorized || status == http.StatusForbidden }
		p.open("/console/")
		p.wantText("h1", "Sign in")
		if !p.eval(`document.activeElement !== null && document.activeElement.id === "token"`) {
			t.Error("the sign-in page does not put the keyboard in the token field")
		}
		p.shot("console-signin")
		browsertest.Do(t, ctx, chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"))
		if got := p.nav(chromedp.SendKeys(chromedp.CSS("#token"), "\r")); got != http.StatusUnauthorized {
			t.Fatalf("wrong token: status %d", got)
		}
		p.wantText("#error", "not the admin token")
		browsertest.Do(t, ctx, chromedp.SendKeys(chromedp.CSS("#token"), testAdminToken))
		if got := p.nav(chromedp.SendKeys(chromedp.CSS("#token"), "\r")); got != http.StatusOK {
			t.Fatalf("sign-in: status %d", got)
		}
		p.wantText("h1", "Organizations")

		// A plan with a meter limit and a key rate limit; a refused form
		// comes back with its message.
		p.open("/console/plans/new")
		p.fill(map[string]string{"#id": "1", "#name": "Starter", "#price": "9.00", "#max": "100", "#limits": "egress=5000000\npinned_bytes=1000000",
			"#key_requests": "600", "#key_per": "1m", "#period": "fortnight"})
		p.submit("main form button[type=submit]", http.StatusBadRequest)
		p.wantText("#error", "period")
		p.fill(map[string]string{"#period": "month"})
		p.submit("main form button[type=submit]", http.StatusOK)
		p.wantText(".notice", "Plan 1 created")
		p.wantText("table", "600 per 1m0s")
		p.open("/console/plans/new")
		p.fill(map[string]string{"#id": "2", "#name": "Growth", "#price": "49.00", "#max": "100000", "#limits": "egress=50000000"})
		p.submit("main form button[type=submit]", http.StatusOK)

		// An organization, found by a search.
		p.open("/console/orgs/new")
		p.fill(map[string]string{"#name": "Acme Corp", "#email": "ops@acme.example", "#plan_id": "1", "#id": "acme"})
		p.submit("main form button[type=submit]", http.StatusOK)
		p.wantText("h1", "Acme Corp")
		for i, name := range []string{"Globex", "Initech", "Umbrella", "Hooli"} {
			g.admin("POST", "/admin/v1/orgs", map[string]any{"name": name, "email": "it@" + strings.ToLower(name) + ".example", "plan_id": 1 + i%2, "partner": name == "Hooli"}, 201, nil)
		}
		p.open("/console/orgs?q=ops@acme")
		p.wantText("table", "Acme Corp")
		if strings.Contains(p.text("table"), "Globex") {
			t.Fatal("search ops@acme lists Globex")
		}
		p.open("/console/orgs")
		p.shot("console-orgs")

		// A key: its secret is shown once, with a copy button.
		p.open("/console/orgs/acme")
		p.fill(map[string]string{"#key-name": "ci"})
		p.submit("#new-key button[type=submit]", http.StatusOK)
		secret := p.text("#secret-value")
		if len(secret) < 20 {
			t.Fatalf("secret %q", secret)
		}
		p.shot("console-new-key")
		browsertest.Do(t, ctx, chromedp.Click(chromedp.CSS("button[data-copy]")))
		for range 12 {
			if s := get(secret); s != 200 {
				t.Fatalf("the new key: data path answered %d", s)
			}
		}
		p.open("/console/orgs/acme")
		p.wantText("#usage-requests", "12 of 100 (12%)")
		if p.eval(`document.getElementById("secret-value") !== null`) || strings.Contains(p.text("main"), secret) {
			t.Fatal("the secret is shown again after a reload")
		}
		p.shot("console-org")

		// Disabled, the data path refuses it; enabled, it passes again.
		p.submit(`tr[data-key="ci"] button[aria-label="Disable key ci"]`, http.StatusOK)
		p.wantText(".notice", `Key "ci" disabled`)
		p.wantText(`tr[data-key="ci"] .state`, "disabled")
		if s := get(secret); !refused(s) {
			t.Fatalf("disabled key: data path answered %d", s)
		}
		p.submit(`tr[data-key="ci"] button[aria-label="Enable key ci"]`, http.StatusOK)
		if s := get(secret); s != 200 {
			t.Fatalf("enabled key: data path answered %d", s)
		}

		// Limits on the key's page; rotation shows the new secret once and
		// retires the old one (no grace).
		p.open("/console/orgs/acme/keys/ci")
		p.fill(map[string]string{"#max": "abc"})
		p.submit(`form[action$="/limits"] button`, http.StatusBadRequest)
		p.wantText("#error", "max_api_requests")
		p.fill(map[string]string{"#max": "50", "#rl_requests": "10", "#rl_per": "1s"})
		p.submit(`form[action$="/limits"] button`, http.StatusOK)
		p.wantText(".notice", "Limits saved")
		p.shot("console-key")
		p.submit(`form[action$="/rotate"] button`, http.StatusOK)
		rotated := p.text("#secret-value")
		if n, o := get(rotated), get(secret); rotated == secret || n != 200 || !refused(o) {
			t.Fatalf("after the rotation: new secret %d, old one %d; want 200 and a refusal", n, o)
		}

		// Delete asks first.
		p.open("/console/orgs/acme")
		p.submit(`tr[data-key="ci"] a[aria-label="Delete key ci"]`, http.StatusOK)
		p.wantText("h1", "Delete key ci?")
		p.shot("console-delete")
		p.submit("#confirm-delete", http.StatusOK)
		p.wantText(".notice", `Key "ci" deleted`)
		if p.eval(`document.querySelector('tr[data-key="ci"]') !== null`) || !refused(get(rotated)) {
			t.Fatal("the deleted key is still listed or still passes")
		}

		// A post without the session's CSRF token, sent by the page itself
		// (same origin, with the cookie), is refused.
		status := browsertest.Get(t, ctx, chromedp.Evaluate[int](`fetch("/console/plans", {method: "POST", body: new URLSearchParams({id: "9", name: "Sneaky", period: "month"})}).then(r => r.status)`,
			chromedp.EvalAwaitPromise))
		if status != http.StatusForbidden {
			t.Fatalf("CSRF-less post: %d, want 403", status)
		}
		var plans []map[string]any
		g.admin("GET", "/admin/v1/plans", nil, 200, &plans)
		if len(plans) != 2 {
			t.Fatalf("plans after the CSRF-less post: %v", plans)
		}
		p.open("/console/plans")
		p.shot("console-plans")

		// Readable at 400 px: nothing wider than the window, and every
		// control labelled (once: it does not depend on the store).
		if _, redis := env["KEYGATE_REDIS_URL"]; redis {
			return
		}
		browsertest.Do(t, ctx, chromedp.EmulateViewport(400, 900))
		for _, path := range []string{"/console/orgs/acme", "/console/orgs", "/console/plans/1"} {
			p.open(path)
			if !p.eval(`document.documentElement.scrollWidth <= window.innerWidth`) {
				t.Errorf("%s is wider than 400 px", path)
			}
			if !p.eval(`[...document.querySelectorAll("input:not([type=hidden]), select, textarea")].every(e => e.labels && e.labels.length > 0)`) {
				t.Errorf("%s has a form control without a label", path)
			}
		}
		p.open("/console/orgs/acme")
		p.shot("console-org-400px")

		// Signed out, the session is gone.
		p.submit(".signout button", http.StatusOK)
		p.wantText("h1", "Sign in")
		p.open("/console/plans")
		p.wantText("h1", "Sign in")
	})
}
