package gate_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/quota/memcounter"
	"github.com/keygate/keygate/sidecar"
)

// signedUpstream answers every request with 200 "ok".
type signedUpstream struct{}

func (signedUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"text/plain"}}, Body: io.NopCloser(strings.NewReader("ok\n")), ContentLength: 3, Request: r,
	}, nil
}

// signedEnv is a Handler on the in-memory store and counter with a fixed
// clock and one org with one admin key.
type signedEnv struct {
	e      *sidecartest.Env
	store  *memstore.Store
	now    time.Time
	key    keys.Key
	secret string
}

func newSignedEnv(t *testing.T, sealer *keys.Sealer) *signedEnv {
	t.Helper()
	e := &signedEnv{store: memstore.New(), now: time.Unix(1700000000, 0)}
	clock := func() time.Time { return e.now }
	auth := keys.NewAuthenticator(e.store, keys.AuthOptions{Sealer: sealer, Now: clock})
	e.e = sidecartest.New(t, sidecar.Options{
		Store:     e.store,
		Auth:      auth,
		Counter:   memcounter.New(),
		Transport: signedUpstream{},
		TSSkew:    time.Minute,
		Sealer:    sealer,
		Now:       clock,
	})
	ctx := context.Background()
	max := int64(1000)
	if err := e.store.CreatePlan(ctx, keys.Plan{ID: 1, Name: "p", Period: "month", MaxAPIRequests: &max}); err != nil {
		t.Fatal(err)
	}
	if err := e.store.CreateOrg(ctx, keys.Org{ID: "org-1", Name: "Acme", PlanID: 1}); err != nil {
		t.Fatal(err)
	}
	k, secret, err := e.e.Manage.CreateKey(ctx, manage.NewKey{OrgID: "org-1", Name: "k", Permissions: []keys.Permission{keys.PermAdmin}})
	if err != nil {
		t.Fatal(err)
	}
	e.key, e.secret = k, secret
	return e
}

func testSealer(t *testing.T) *keys.Sealer {
	t.Helper()
	s, err := keys.NewSealer([]byte(strings.Repeat("k", 32)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// do sends target with the key's signature computed for signTarget
// (target when empty) and returns status and body.
func (e *signedEnv) do(t *testing.T, method, target, signTarget, secret string) (int, string) {
	t.Helper()
	if signTarget == "" {
		signTarget = target
	}
	u, err := url.Parse(signTarget)
	if err != nil {
		t.Fatal(err)
	}
	sig := gate.SignRequest(method, u.EscapedPath(), u.Query(), secret)
	return e.send(t, method, target, map[string]string{gate.HeaderAccessKey: e.key.UID, gate.HeaderAccessSignature: sig})
}

func (e *signedEnv) send(t *testing.T, method, target string, hdr map[string]string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	e.e.Data.ServeHTTP(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, strings.TrimSpace(string(b))
}

func dataBody(status int, msg string) string {
	b, _ := json.Marshal(gate.DataError{Error: true, StatusCode: status, Message: msg})
	return string(b)
}

func TestSignedRequestsDataPath(t *testing.T) {
	e := newSignedEnv(t, testSealer(t))
	ts := func(d time.Duration) string { return strconv.FormatInt(e.now.Add(d).Unix(), 10) }
	target := "/v1/things?b=2&a=1&ts=" + ts(0)

	if code, body := e.do(t, "GET", target, "", e.secret); code != 200 {
		t.Fatalf("signed request: %d %s", code, body)
	}
	if code, body := e.do(t, "GET", target, "", e.secret); code != 401 || body != dataBody(401, "Request signature already used") {
		t.Errorf("replay: %d %s", code, body)
	}

	other := "kg_" + strings.Repeat("A", len(e.secret)-3)
	cases := []struct {
		name, method, target, signed, secret string
		status                               int
		msg                                  string
	}{
		{"wrong secret", "GET", "/v1/things?ts=" + ts(0), "", other, 403, "Invalid request signature"},
		{"altered path", "GET", "/v1/other?ts=" + ts(0), "/v1/things?ts=" + ts(0), e.secret, 403, "Invalid request signature"},
		{"altered param", "GET", "/v1/things?a=2&ts=" + ts(0), "/v1/things?a=1&ts=" + ts(0), e.secret, 403, "Invalid request signature"},
		{"added param", "GET", "/v1/things?a=1&x=&ts=" + ts(0), "/v1/things?a=1&ts=" + ts(0), e.secret, 403, "Invalid request signature"},
		{"altered method", "DELETE", "/v1/things?ts=" + ts(1), "", "", 403, "Invalid request signature"},
		{"missing ts", "GET", "/v1/things?a=1", "", e.secret, 401, "missing ts query parameter (Unix time in seconds)"},
		{"stale ts", "GET", "/v1/things?ts=" + ts(-61*time.Second), "", e.secret, 401, "ts query parameter is too old (allowed skew 1m0s)"},
		{"future ts", "GET", "/v1/things?ts=" + ts(61*time.Second), "", e.secret, 401, "ts query parameter is too far in the future (allowed skew 1m0s)"},
		{"malformed query", "GET", "/v1/things?a=%zz&ts=" + ts(0), "/v1/things?ts=" + ts(0), e.secret, 400, "malformed query string: signed requests need a well-formed query"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			secret := tc.secret
			if secret == "" {
				secret = e.secret
			}
			signed := tc.signed
			if tc.name == "altered method" {
				// signed as GET, sent as DELETE
				u, _ := url.Parse(tc.target)
				sig := gate.SignRequest("GET", u.EscapedPath(), u.Query(), secret)
				code, body := e.send(t, tc.method, tc.target, map[string]string{gate.HeaderAccessKey: e.key.UID, gate.HeaderAccessSignature: sig})
				if code != tc.status || body != dataBody(tc.status, tc.msg) {
					t.Errorf("got %d %s, want %d %s", code, body, tc.status, tc.msg)
				}
				return
			}
			code, body := e.do(t, tc.method, tc.target, signed, secret)
			if code != tc.status || body != dataBody(tc.status, tc.msg) {
				t.Errorf("got %d %s, want %d %s", code, body, tc.status, tc.msg)
			}
		})
	}

	t.Run("missing signature", func(t *testing.T) {
		code, body := e.send(t, "GET", "/v1/things?ts="+ts(0), map[string]string{gate.HeaderAccessKey: e.key.UID})
		if code != 401 {
			t.Errorf("got %d %s", code, body)
		}
	})
	t.Run("percent-encoded path signed as sent", func(t *testing.T) {
		target := "/files/a%20b%41?ts=" + ts(2)
		if code, body := e.do(t, "GET", target, "", e.secret); code != 200 {
			t.Errorf("got %d %s", code, body)
		}
		// An encoded slash is refused before any signature check: servers
		// disagree on whether it separates segments (issue 12).
		target = "/files/a%2Fb?ts=" + ts(2)
		if code, body := e.do(t, "GET", target, "", e.secret); code != 400 || body != dataBody(400, "Non-canonical request path") {
			t.Errorf("encoded slash: got %d %s", code, body)
		}
	})
	t.Run("Sign helper", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/v1/helper?x=1", nil)
		if err := gate.Sign(r, e.key.UID, e.secret, e.now); err != nil {
			t.Fatal(err)
		}
		r.RequestURI = r.URL.RequestURI()
		w := httptest.NewRecorder()
		e.e.Data.ServeHTTP(w, r)
		if w.Code != 200 || r.URL.Query().Get("ts") != ts(0) {
			t.Errorf("got %d, ts %q", w.Code, r.URL.Query().Get("ts"))
		}
	})
	t.Run("deleted key", func(t *testing.T) {
		target := "/v1/things?ts=" + ts(3)
		if code, body := e.do(t, "GET", target, "", e.secret); code != 200 {
			t.Fatalf("before delete: %d %s", code, body)
		}
		if _, err := e.e.Manage.DeleteKey(context.Background(), e.key.OrgID, e.key.Name); err != nil {
			t.Fatal(err)
		}
		target = "/v1/things?ts=" + ts(4)
		if code, body := e.do(t, "GET", target, "", e.secret); code != 403 || body != dataBody(403, "Invalid API key") {
			t.Errorf("after delete: %d %s", code, body)
		}
	})
}

func TestSignedRequestsSelfServed(t *testing.T) {
	e := newSignedEnv(t, testSealer(t))
	target := "/api/v1/account?ts=" + strconv.FormatInt(e.now.Unix(), 10)
	if code, body := e.do(t, "GET", target, "", e.secret); code != 200 || !strings.Contains(body, e.key.UID) {
		t.Fatalf("signed account request: %d %s", code, body)
	}
	if code, body := e.do(t, "GET", target, "", e.secret); code != 401 || body != dataBody(401, "Request signature already used") {
		t.Errorf("replay on a self-served route: %d %s", code, body)
	}
}

func TestSignedRequestsSigningOff(t *testing.T) {
	e := newSignedEnv(t, nil)
	if len(e.key.SealedSecret) != 0 {
		t.Fatal("a key created with signing off has a sealed secret")
	}
	target := "/v1/things?ts=" + strconv.FormatInt(e.now.Unix(), 10)
	if code, body := e.do(t, "GET", target, "", e.secret); code != 403 || body != dataBody(403, "Signed requests are not enabled on this gateway; send the secret instead") {
		t.Errorf("signing off: %d %s", code, body)
	}

	// The same store behind a gateway with signing on: that key cannot sign.
	on := newSignedEnv(t, testSealer(t))
	legacy := e.key
	legacy.Name = "legacy"
	if err := on.store.CreateKey(context.Background(), legacy, -1); err != nil {
		t.Fatal(err)
	}
	on.key, on.secret = legacy, e.secret
	if code, body := on.do(t, "GET", target, "", e.secret); code != 403 || body != dataBody(403, "API key cannot sign requests: it was created while request signing was off; create a new key") {
		t.Errorf("unsealed key: %d %s", code, body)
	}
}
