package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/keygate/keygate/internal/browsertest"
	"github.com/keygate/keygate/internal/redistest"
)

// The customer portal (/portal/ on the data listener) in a real headless
// Chromium, against the real sidecar on both stores: sign-in with an admin
// key, usage that moves with requests sent through the data path, a key
// created (its secret shown once) and one deleted; a key without admin sees
// usage only; seed 003 username/password sign-in.

// portalPage drives one browser tab on the portal.
type portalPage struct {
	t   *testing.T
	ctx context.Context
}

func (p portalPage) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v\npage text:\n%s", what, err, p.text())
	}
}

// text is the page's visible text, for failure messages.
func (p portalPage) text() string {
	s, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	return s
}

// eval returns a JavaScript expression's value.
func eval[T any](p portalPage, expr string) T {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// waitFor waits (on DOM changes, at most 10 s) until the JavaScript
// condition holds.
func (p portalPage) waitFor(what, cond string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingMutation())); err != nil {
		p.t.Fatalf("waiting for %s (%s): %v\npage text:\n%s", what, cond, err, p.text())
	}
}

// waitText waits until the element of the CSS selector contains want.
func (p portalPage) waitText(sel, want string) {
	p.t.Helper()
	p.waitFor(fmt.Sprintf("%s to show %q", sel, want),
		fmt.Sprintf(`((document.querySelector(%q) || {}).textContent || "").includes(%q)`, sel, want))
}

// visible reports whether the element of id is shown.
func (p portalPage) visible(id string) bool {
	p.t.Helper()
	return eval[bool](p, fmt.Sprintf(`(() => { const e = document.getElementById(%q); return !!e && e.offsetParent !== null; })()`, id))
}

// clear empties the input of id.
func (p portalPage) clear(id string) {
	p.t.Helper()
	eval[chromedp.Void](p, fmt.Sprintf(`document.getElementById(%q).value = ""`, id))
}

func (p portalPage) signInWithKey(secret string) {
	p.t.Helper()
	p.do("signing in with a key",
		chromedp.WaitVisible(chromedp.ID("key-input")),
		chromedp.SendKeys(chromedp.ID("key-input"), secret),
		chromedp.Click(chromedp.CSS("#key-form button[type=submit]")),
	)
}

func (p portalPage) signOut() {
	p.t.Helper()
	p.do("signing out", chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("signin")))
}

func TestPortalInBrowser(t *testing.T) {
	t.Run("memory", func(t *testing.T) { testPortal(t, map[string]string{}, nil) })
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		testPortal(t, map[string]string{"KEYGATE_REDIS_URL": srv.URL()}, srv)
	})
}

// testPortal runs the browser test on the store of env; srv, when not
// nil, is its Redis, which the test pauses at the end.
func testPortal(t *testing.T, env map[string]string, srv *redistest.Server) {
	{
		up := &meteringUpstream{}
		upSrv := httptest.NewServer(up)
		defer upSrv.Close()
		g := startGate(t, withUpstream(env, upSrv.URL))
		g.seedPlans()
		org := g.createOrg(map[string]any{"name": "John Doe", "email": "example@example.com", "plan_id": 1, "username": "john", "password": "correct horse"})
		owner := g.createKey(org, "owner", "admin")
		reader := g.createKey(org, "reader", "read")
		viewer := g.createKey(org, "viewer", "read", "write")
		data := "http://" + g.l.Data
		shots := t.Name() == "TestPortalInBrowser/memory" // one set of screenshots is enough

		// Plain HTTP first: the portal's pages, asked with a valid key,
		// are neither forwarded nor charged.
		for _, path := range []string{"/portal/", "/portal/portal.js", "/portal/nope"} {
			call(t, "GET", data+path, apiKey(owner.AccessSecret), "")
		}
		call(t, "POST", data+"/portal/", apiKey(owner.AccessSecret), "x")
		if n := up.count(); n != 0 {
			t.Fatalf("the upstream got %d portal requests", n)
		}
		if _, m, raw := jsonCall(t, "GET", data+"/api/v0/stats", apiKey(owner.AccessSecret), ""); m["data"].(map[string]any)["requests"] != 0.0 {
			t.Fatalf("portal requests were charged: %s", raw)
		}

		ctx := browsertest.New(t)
		p := portalPage{t: t, ctx: ctx}
		// Every request the page makes goes to keygate's data listener;
		// every script error is a failure.
		var mu sync.Mutex
		var elsewhere, exceptions []string
		if err := chromedp.Listen(ctx, func(ev any) {
			mu.Lock()
			defer mu.Unlock()
			switch ev := ev.(type) {
			case *network.EventRequestWillBeSent:
				if !strings.HasPrefix(ev.Request.URL, data+"/") {
					elsewhere = append(elsewhere, ev.Request.URL)
				}
			case *runtime.EventExceptionThrown:
				exceptions = append(exceptions, ev.ExceptionDetails.Text+" "+fmt.Sprint(ev.ExceptionDetails.Exception))
			}
		}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			if len(elsewhere) > 0 || len(exceptions) > 0 {
				t.Errorf("requests elsewhere than keygate: %q; script errors: %q", elsewhere, exceptions)
			}
		}()
		p.do("opening the portal", chromedp.EmulateViewport(1000, 1300), chromedp.Navigate(data+"/portal"), chromedp.WaitVisible(chromedp.ID("signin")))
		if shots {
			browsertest.Shot(t, ctx, "portal-signin.png")
		}

		t.Run("a wrong key is refused in the page", func(t *testing.T) {
			p := portalPage{t: t, ctx: ctx}
			p.signInWithKey("kg_not-a-key")
			p.waitText("#error", "Sign-in failed")
			if !p.visible("signin") || p.visible("account") {
				t.Error("a wrong key got past the sign-in")
			}
			p.clear("key-input")
		})

		t.Run("an admin key sees usage move and manages keys", func(t *testing.T) {
			p := portalPage{t: t, ctx: ctx}
			p.signInWithKey(owner.AccessSecret)
			p.waitText(`#usage li[data-meter="requests"] .figures`, "0 of 1,000")
			p.waitText(`#keys tbody`, "reader")
			if p.visible("error") || p.visible("keys-note") {
				t.Errorf("an admin sees an error or the read-only note:\n%s", p.text())
			}
			if s := eval[string](p, `document.querySelector('#keys tr[data-name="owner"]').textContent`); !strings.Contains(s, "signed in with it") {
				t.Errorf("the key signed in with: %q", s)
			}
			if s := eval[string](p, `document.getElementById("reset-line").textContent`); !strings.Contains(s, "The period resets on") {
				t.Errorf("reset line %q", s)
			}
			// The credential is in this tab's session storage only, and
			// never in the URL.
			if n := eval[int](p, `localStorage.length + document.cookie.length`); n != 0 {
				t.Errorf("local storage or cookies used: %d", n)
			}
			if loc := eval[string](p, `location.href`); strings.Contains(loc, owner.AccessSecret) || loc != data+"/portal/" {
				t.Errorf("location %s", loc)
			}

			// Three requests through the data path, one of them reporting
			// pinned usage; the meters are booked within a second.
			for _, path := range []string{"/v1/things", "/v1/things", "/pin/add"} {
				if status, _, body := call(t, "GET", data+path, apiKey(owner.AccessSecret), ""); status != 200 {
					t.Fatalf("GET %s: %d %s", path, status, body)
				}
			}
			pollUntil(t, 5*time.Second, func() string {
				_, m, raw := jsonCall(t, "GET", data+"/api/v0/stats", apiKey(owner.AccessSecret), "")
				if d, _ := m["data"].(map[string]any); d["pinned_count"] != 1.0 {
					return raw
				}
				return ""
			})
			p.do("reloading", chromedp.Reload())
			p.waitText(`#usage li[data-meter="requests"] .figures`, "3 of 1,000")
			p.waitText(`#usage li[data-meter="key"] .figures`, "3 used")
			p.waitText(`#usage li[data-meter="pinned_count"] .figures`, "1 of 100")
			p.waitText(`#usage li[data-meter="pinned_bytes"] .figures`, "1.00 KiB of 1.00 GiB")
			// The Refresh button shows new usage too.
			call(t, "GET", data+"/v1/things", apiKey(owner.AccessSecret), "")
			p.do("refreshing", chromedp.Click(chromedp.ID("refresh")))
			p.waitText(`#usage li[data-meter="requests"] .figures`, "4 of 1,000")
			if shots {
				browsertest.Shot(t, ctx, "portal-usage.png")
			}

			// Create a key: its secret is shown once, and works.
			p.do("creating a key",
				chromedp.SendKeys(chromedp.ID("new-name"), "laptop"),
				chromedp.Click(chromedp.CSS(`#create-form input[value="pin"]`)),
				chromedp.Click(chromedp.CSS("#create-form button[type=submit]")),
				chromedp.WaitVisible(chromedp.ID("new-secret")),
			)
			secret := eval[string](p, `document.getElementById("secret-value").value`)
			if !strings.HasPrefix(secret, "kg_") {
				t.Fatalf("secret shown: %q", secret)
			}
			p.waitText(`#keys tbody`, "laptop")
			if s := eval[string](p, `document.querySelector('#keys tr[data-name="laptop"]').textContent`); !strings.Contains(s, "read, write, pin") {
				t.Errorf("new key row %q", s)
			}
			if status, _, body := call(t, "GET", data+"/api/v1/account", apiKey(secret), ""); status != 200 || !strings.Contains(string(body), `"name":"laptop"`) {
				t.Errorf("the new secret: %d %s", status, body)
			}
			p.do("copying", chromedp.Click(chromedp.ID("copy")))
			p.waitFor("the copy status", `document.getElementById("copy-status").textContent !== ""`)
			if shots {
				browsertest.Shot(t, ctx, "portal-new-key.png")
			}
			p.do("closing the secret", chromedp.Click(chromedp.ID("secret-done")), chromedp.WaitNotVisible(chromedp.ID("new-secret")))
			if eval[bool](p, fmt.Sprintf(`document.documentElement.outerHTML.includes(%q) || document.getElementById("secret-value").value !== "" || JSON.stringify(sessionStorage).includes(%q)`, secret, secret)) {
				t.Error("the secret is still in the page after Done")
			}

			// Delete a key, after a confirmation; cancelling deletes nothing.
			del := chromedp.CSS(`button[aria-label="Delete key reader"]`)
			p.do("asking to delete", chromedp.Click(del), chromedp.WaitVisible(chromedp.ID("confirm")))
			p.do("cancelling", chromedp.Click(chromedp.ID("confirm-cancel")), chromedp.WaitNotVisible(chromedp.ID("confirm")))
			// With the keyboard: the dialog opens with the focus on Cancel,
			// Escape closes it, and the focus goes back to the button.
			p.do("asking with the keyboard", chromedp.Focus(del), chromedp.KeyEvent(kb.Enter), chromedp.WaitVisible(chromedp.ID("confirm")))
			if f := eval[string](p, `document.activeElement.id`); f != "confirm-cancel" {
				t.Errorf("the dialog opened with the focus on %q, want Cancel", f)
			}
			p.do("escaping", chromedp.KeyEvent(kb.Escape), chromedp.WaitNotVisible(chromedp.ID("confirm")))
			if f := eval[string](p, `document.activeElement.getAttribute("aria-label") || ""`); f != "Delete key reader" {
				t.Errorf("after Escape the focus is on %q", f)
			}
			if status, _, _ := call(t, "GET", data+"/v1/things", apiKey(reader.AccessSecret), ""); status != 200 {
				t.Fatalf("cancelled, yet the key is refused: %d", status)
			}
			p.do("asking again", chromedp.Click(del), chromedp.WaitVisible(chromedp.ID("confirm")))
			p.waitText("#confirm-text", "Delete key reader?")
			if shots {
				browsertest.Shot(t, ctx, "portal-delete.png")
			}
			p.do("confirming", chromedp.Click(chromedp.ID("confirm-delete")))
			p.waitFor("the row to go", `!document.querySelector('#keys tr[data-name="reader"]')`)
			if status, _, _ := call(t, "GET", data+"/v1/things", apiKey(reader.AccessSecret), ""); status != 401 && status != 403 {
				t.Errorf("the deleted key still passes: %d", status)
			}
			if n := up.count(); n != 5 {
				t.Errorf("the upstream got %d requests, want the 5 the test sent", n)
			}
			// An API error shows in the page: a second key of the same name.
			p.do("creating a duplicate",
				chromedp.SendKeys(chromedp.ID("new-name"), "laptop"),
				chromedp.Click(chromedp.CSS("#create-form button[type=submit]")),
			)
			p.waitText("#error", "The key was not created")
			if p.visible("new-secret") {
				t.Error("a failed creation showed a secret")
			}

			// A narrow screen: nothing overflows the page sideways.
			p.do("narrowing", chromedp.EmulateViewport(400, 800))
			if w := eval[int](p, `document.documentElement.scrollWidth`); w > 400 {
				t.Errorf("at 400 px the page is %d px wide", w)
			}
			if shots {
				browsertest.Shot(t, ctx, "portal-narrow.png")
			}
			p.do("widening", chromedp.EmulateViewport(1000, 1300))
			p.signOut()
			if n := eval[int](p, `sessionStorage.length`); n != 0 {
				t.Errorf("signed out, session storage keeps %d items", n)
			}
		})

		t.Run("a key without admin sees usage, not keys", func(t *testing.T) {
			p := portalPage{t: t, ctx: ctx}
			p.signInWithKey(viewer.AccessSecret)
			p.waitText(`#usage li[data-meter="requests"] .figures`, "of 1,000")
			p.waitFor("the read-only note", `!document.getElementById("keys-note").hidden`)
			if p.visible("keys-admin") || p.visible("create-form") {
				t.Error("a key without admin is offered key management")
			}
			if shots {
				browsertest.Shot(t, ctx, "portal-read-only.png")
			}
			p.signOut()
		})

		t.Run("seed 003 username and password", func(t *testing.T) {
			p := portalPage{t: t, ctx: ctx}
			if srv == nil { // once is enough: each password check costs 32 MiB and a fair share of a core
				p.do("a wrong password",
					chromedp.SendKeys(chromedp.ID("username"), "john"),
					chromedp.SendKeys(chromedp.ID("password"), "wrong"),
					chromedp.Click(chromedp.CSS("#login-form button[type=submit]")),
				)
				p.waitText("#error", "Sign-in failed")
			}
			before := len(g.keyNames(org))
			p.clear("username")
			p.do("the right password",
				chromedp.SendKeys(chromedp.ID("username"), "john"),
				chromedp.SendKeys(chromedp.ID("password"), "correct horse"),
				chromedp.Click(chromedp.CSS("#login-form button[type=submit]")),
			)
			p.waitText(`#usage li[data-meter="requests"] .figures`, "of 1,000")
			p.waitText("#keys tbody", "signed in with it")
			if n := len(g.keyNames(org)); n != before+1 {
				t.Errorf("%d keys after a password sign-in, want %d", n, before+1)
			}
			if p.visible("keys-note") {
				t.Error("a password sign-in (access level full) got the read-only note")
			}
			p.signOut()
			if n := len(g.keyNames(org)); n != before {
				t.Errorf("%d keys after signing out, want %d: the session's key outlived it", n, before)
			}
		})

		if srv == nil {
			return
		}
		t.Run("a store outage shows in the page", func(t *testing.T) {
			p := portalPage{t: t, ctx: ctx}
			p.signInWithKey(owner.AccessSecret)
			p.waitText(`#usage li[data-meter="requests"] .figures`, "of 1,000")
			srv.Pause()
			defer srv.Resume()
			p.do("refreshing", chromedp.Click(chromedp.ID("refresh")))
			p.waitText("#error", "HTTP 503")
			if !p.visible("account") {
				t.Errorf("the account went blank during the outage:\n%s", p.text())
			}
			srv.Resume()
			p.do("refreshing", chromedp.Click(chromedp.ID("refresh")))
			p.waitFor("the error to go", `document.getElementById("error").hidden`)
		})
	}
}
