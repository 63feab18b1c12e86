package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/quota/memcounter"
)

// exampleSecret is the secret of the README's worked example.
const exampleSecret = "kg_PcFR7vJmUCpD2TTuQdhEVqpHwqLUgKL21ygT63uL6JQDt6FX"

// handMAC computes the formula directly: BASE64(HMAC_SHA256(s, secret)).
func handMAC(s, secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(s))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestSignKnownAnswers(t *testing.T) {
	cases := []struct {
		name, method, path string
		query              url.Values
		// stringToSign is written out by hand from the formula.
		stringToSign string
		// want, when set, is a signature computed outside Go (openssl).
		want string
	}{
		{
			name: "GET with several params, repeated key, README example", method: "GET", path: "/api/v0/keys",
			query:        url.Values{"tag": {"été", "a+b"}, "name": {"John Doe"}, "ts": {"1700000000"}, "limit": {"10"}},
			stringToSign: "GET\n/api/v0/keys\nlimit=10&name=John+Doe&tag=a%2Bb&tag=%C3%A9t%C3%A9&ts=1700000000",
			want:         "7RG+JWaIa2iI1XMz+/VRLhcvuE7mEIFEUVziGAi5ATg=",
		},
		{
			name: "POST without params", method: "POST", path: "/api/v0/key",
			stringToSign: "POST\n/api/v0/key\n",
			want:         "/oevb8psznT6IMM9W2qmYOv0jWT2AYtg/e7Xi9RZayU=",
		},
		{
			name: "params needing URL-encoding", method: "get", path: "/v1/search",
			query: url.Values{
				"q":      {"a b&c=d"},
				"plus":   {"1+1"},
				"emoji":  {"☃"},
				"empty":  {""},
				"a key":  {"/?#"},
				"ts":     {"1700000123"},
				"zürich": {"100%"},
			},
			stringToSign: "GET\n/v1/search\na+key=%2F%3F%23&emoji=%E2%98%83&empty=&plus=1%2B1&q=a+b%26c%3Dd&ts=1700000123&z%C3%BCrich=100%25",
		},
		{
			name: "path keeps its percent-encoding", method: "DELETE", path: "/files/a%2Fb%20c",
			query:        url.Values{"ts": {"1"}},
			stringToSign: "DELETE\n/files/a%2Fb%20c\nts=1",
		},
		{
			name: "values of one key sorted", method: "GET", path: "/",
			query:        url.Values{"k": {"b", "a", "B"}, "ts": {"5"}},
			stringToSign: "GET\n/\nk=B&k=a&k=b&ts=5",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := StringToSign(tc.method, tc.path, tc.query); got != tc.stringToSign {
				t.Errorf("StringToSign = %q, want %q", got, tc.stringToSign)
			}
			want := handMAC(tc.stringToSign, exampleSecret)
			if tc.want != "" && want != tc.want {
				t.Fatalf("hand-computed HMAC %s differs from the openssl vector %s", want, tc.want)
			}
			if got := SignRequest(tc.method, tc.path, tc.query, exampleSecret); got != want {
				t.Errorf("SignRequest = %s, want %s", got, want)
			}
		})
	}
}

// TestParseSignedCanonicalises checks that the server side rebuilds the
// same string from a raw query however the client encoded it.
func TestParseSignedCanonicalises(t *testing.T) {
	now := time.Unix(1700000000, 0)
	want := "GET\n/x\na=1&name=John+Doe&plus=%2B&ts=1700000000"
	for _, raw := range []string{
		"ts=1700000000&name=John+Doe&a=1&plus=%2B",
		"name=John%20Doe&plus=%2b&a=1&ts=1700000000",
		"a=1&ts=1700000000&plus=%2B&name=John%20Doe",
	} {
		sr, err := parseSigned("GET", "/x", raw, "", now, time.Minute)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if sr.stringToSign != want {
			t.Errorf("%s: string to sign %q, want %q", raw, sr.stringToSign, want)
		}
	}
	if _, err := parseSigned("GET", "/x", "a=%zz&ts=1700000000", "", now, time.Minute); err == nil {
		t.Error("malformed query accepted")
	}
}

func TestVerifySignature(t *testing.T) {
	now := time.Unix(1700000000, 0)
	q := url.Values{"a": {"1"}, "ts": {"1700000000"}}
	sig := SignRequest("GET", "/x", q, exampleSecret)
	sr, err := parseSigned("GET", "/x", q.Encode(), sig, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !sr.verify([]byte(exampleSecret)) {
		t.Error("valid signature refused")
	}
	if sr.verify([]byte(exampleSecret + "x")) {
		t.Error("wrong secret accepted")
	}
	unpadded, err := parseSigned("GET", "/x", q.Encode(), strings.TrimRight(sig, "="), now, time.Minute)
	if err != nil || !unpadded.verify([]byte(exampleSecret)) {
		t.Errorf("unpadded signature refused: %v", err)
	}
	if unpadded.nonce(time.Minute) != sr.nonce(time.Minute) {
		t.Error("padded and unpadded forms of one signature are different nonces: a replay could slip through")
	}
	if n := sr.nonce(time.Minute); !n.until.Equal(now.Add(time.Minute + nonceMargin)) {
		t.Errorf("nonce until %v, want ts + skew + margin", n.until)
	}
	for _, bad := range []string{"", "not base64!", base64.StdEncoding.EncodeToString([]byte("short"))} {
		sr, _ := parseSigned("GET", "/x", q.Encode(), bad, now, time.Minute)
		if sr.verify([]byte(exampleSecret)) {
			t.Errorf("signature %q accepted", bad)
		}
	}
}

// FuzzSignedRequest feeds arbitrary requests to the canonicalisation and
// the verification: they must not panic, and what SignRequest signs must
// verify.
func FuzzSignedRequest(f *testing.F) {
	f.Add("GET", "/api/v0/keys", "limit=10&name=John%20Doe&ts=1700000000", "7RG+JWaIa2iI1XMz+/VRLhcvuE7mEIFEUVziGAi5ATg=", exampleSecret)
	f.Add("post", "/a%2Fb", "", "", "")
	f.Add("GET", "/", "ts=1700000000&ts=1", "====", "s")
	f.Add("GET", "/", "a=%zz;b&ts=1700000000", "AAAA", "s")
	f.Fuzz(func(t *testing.T, method, path, rawQuery, sig, secret string) {
		now := time.Unix(1700000000, 0)
		sr, err := parseSigned(method, path, rawQuery, sig, now, time.Hour)
		if err != nil {
			return
		}
		_ = sr.verify([]byte(secret))
		q, _ := url.ParseQuery(rawQuery)
		good := SignRequest(method, path, q, secret)
		sr2, err := parseSigned(method, path, rawQuery, good, now, time.Hour)
		if err != nil {
			t.Fatalf("second parse failed: %v", err)
		}
		if !sr2.verify([]byte(secret)) {
			t.Fatalf("SignRequest's signature does not verify: %q %q %q", method, path, rawQuery)
		}
	})
}

func FuzzCredentialFrom(f *testing.F) {
	f.Add("", "", "", "", "")
	f.Add("Bearer kg_x", "", "", "", "")
	f.Add("", "kg_x", "", "", "")
	f.Add("", "", "6f1c5a3e-8b2d-4c7a-9e0f-1a2b3c4d5e6f", "kg_x", "")
	f.Add("bearer  ", "", "ak", "", "c2ln")
	f.Fuzz(func(t *testing.T, authz, apiKey, accessKey, accessSecret, signature string) {
		h := http.Header{}
		for k, v := range map[string]string{headerAuthorization: authz, headerAPIKey: apiKey, headerAccessKey: accessKey, headerAccessSecret: accessSecret, headerAccessSignature: signature} {
			if v != "" {
				h.Set(k, v)
			}
		}
		c, err := credentialFrom(h)
		if err != nil {
			if c != (credential{}) {
				t.Errorf("error %v with a credential %+v", err, c)
			}
			return
		}
		if c.signature == "" && c.Secret == "" {
			t.Errorf("credential without secret or signature: %+v", c)
		}
		if c.signature != "" && c.AccessKey == "" {
			t.Errorf("signature without access key: %+v", c)
		}
	})
}

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
	h      *Handler
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
	e.h = New(Options{
		Upstream:  &url.URL{Scheme: "http", Host: "upstream.invalid"},
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
	k, secret, err := e.h.createKey(ctx, newKeyRequest{orgID: "org-1", name: "k", permissions: []keys.Permission{keys.PermAdmin}})
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
	sig := SignRequest(method, u.EscapedPath(), u.Query(), secret)
	return e.send(t, method, target, map[string]string{headerAccessKey: e.key.UID, headerAccessSignature: sig})
}

func (e *signedEnv) send(t *testing.T, method, target string, hdr map[string]string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, strings.TrimSpace(string(b))
}

func dataBody(status int, msg string) string {
	b, _ := json.Marshal(dataError{Error: true, StatusCode: status, Message: msg})
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
				sig := SignRequest("GET", u.EscapedPath(), u.Query(), secret)
				code, body := e.send(t, tc.method, tc.target, map[string]string{headerAccessKey: e.key.UID, headerAccessSignature: sig})
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
		code, body := e.send(t, "GET", "/v1/things?ts="+ts(0), map[string]string{headerAccessKey: e.key.UID})
		if code != 401 {
			t.Errorf("got %d %s", code, body)
		}
	})
	t.Run("percent-encoded path signed as sent", func(t *testing.T) {
		target := "/files/a%2Fb%41?ts=" + ts(2)
		if code, body := e.do(t, "GET", target, "", e.secret); code != 200 {
			t.Errorf("got %d %s", code, body)
		}
	})
	t.Run("Sign helper", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/v1/helper?x=1", nil)
		if err := Sign(r, e.key.UID, e.secret, e.now); err != nil {
			t.Fatal(err)
		}
		r.RequestURI = r.URL.RequestURI()
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code != 200 || r.URL.Query().Get("ts") != ts(0) {
			t.Errorf("got %d, ts %q", w.Code, r.URL.Query().Get("ts"))
		}
	})
	t.Run("deleted key", func(t *testing.T) {
		target := "/v1/things?ts=" + ts(3)
		if code, body := e.do(t, "GET", target, "", e.secret); code != 200 {
			t.Fatalf("before delete: %d %s", code, body)
		}
		if _, err := e.h.deleteKey(context.Background(), e.key.OrgID, e.key.Name); err != nil {
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
