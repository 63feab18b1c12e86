package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
)

// Signed requests as a client written against the gw3 document sees them:
// signatures computed by hand from the formula, every self-served envelope,
// `keygate sign` output sent as it is printed, and the README's worked
// example recomputed.

// hmacB64 is the formula: BASE64(HMAC_SHA256(stringToSign, secret)).
func hmacB64(stringToSign, secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(stringToSign))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestSignedKnownAnswersEndToEnd(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_SECRET_KEY": testSecretKeyA})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read", "write"}})
	k := ks["k"]
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	// Each string to sign is written out by hand from the formula; the
	// signature is computed here, not by keygate's code.
	cases := []struct {
		name, method, target, body, stringToSign string
	}{
		{"GET with several params, one repeated", "GET", "/v1/things?b=2&a=1&a=0&name=John%20Doe&ts=" + ts, "",
			"GET\n/v1/things\na=0&a=1&b=2&name=John+Doe&ts=" + ts},
		{"POST without params", "POST", "/v1/upload?ts=" + ts, "payload",
			"POST\n/v1/upload\nts=" + ts},
		{"params needing URL-encoding", "GET", "/v1/search?q=a+b%26c%3Dd&plus=1%2B1&emoji=%E2%98%83&empty&z%C3%BCrich=100%25&ts=" + ts, "",
			"GET\n/v1/search\nemoji=%E2%98%83&empty=&plus=1%2B1&q=a+b%26c%3Dd&ts=" + ts + "&z%C3%BCrich=100%25"},
		{"path with percent-encoding", "GET", "/files/a%2Cb%20c?ts=" + ts, "",
			"GET\n/files/a%2Cb%20c\nts=" + ts},
		{"repeated params sorted by value", "DELETE", "/v1/x?k=b&k=B&k=a&ts=" + ts, "",
			"DELETE\n/v1/x\nk=B&k=a&k=b&ts=" + ts},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{"X-Access-Key": k.AccessKey, "X-Access-Signature": hmacB64(tc.stringToSign, k.AccessSecret)}
			status, _, body := call(t, tc.method, "http://"+g.l.Data+tc.target, hdr, tc.body)
			if status != 200 {
				t.Fatalf("got %d %s", status, body)
			}
			if got := rec.last(t).RequestURI; got != tc.target {
				t.Errorf("upstream got %q, want the target as sent, %q", got, tc.target)
			}
		})
	}
}

// TestSignedOnEverySelfServedRoute sends signed requests to the seed 000,
// 001 and 003 routes: accepted once, and refused in each route's envelope
// (401 for a bad ts or a replay, 403 for a signature that does not match).
func TestSignedOnEverySelfServedRoute(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_SECRET_KEY": testSecretKeyA})
	g.seedPlans()
	org := g.createOrg(map[string]any{"name": "Partner", "plan_id": 1, "partner": true})
	k := g.createKey(org, "admin", "admin")
	wrong := k
	wrong.AccessSecret = g.createKey(org, "other", "read").AccessSecret
	data := "http://" + g.l.Data
	stale := "ts=" + strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)

	v0 := func(status int, msg string) string {
		return `{"code":` + strconv.Itoa(status) + `,"msg":` + strconv.Quote(msg) + `}`
	}
	user := func(_ int, msg string) string {
		return `{"status":"error","error_id":"user/unauthorized","message":` + strconv.Quote(msg) + `}`
	}
	mp, mpType := multipartBody(t, form{})
	routes := []struct {
		name, method, path, query, body, contentType string
		ok                                           string // the start of the success body
		refusal                                      func(status int, msg string) string
	}{
		{"seed 000 keys", "GET", "/api/v0/keys", "", "", "", `{"code":200,"msg":"ok","data":[`, v0},
		{"seed 000 create key", "POST", "/api/v0/key", "", `{"name":"signed","permissions":["read"]}`, "", `{"code":200,"msg":"ok","data":{"access_key":`, v0},
		{"seed 001 create", "POST", "/api/v0/partner/user/create", "", `{"email":"s@example.com","name":"S","uuid":"signed-sub"}`, "", `{"code":200,"msg":"ok"}`, v0},
		{"seed 001 stats", "GET", "/api/v0/partner/user/stats", "uuid=signed-sub", "", "", `{"code":200,"msg":"ok","data":{"name":"S"`, v0},
		{"seed 003 apikeys", "POST", "/user/apikeys", "", mp, mpType, `{"status":"success","data":{"apikeys":{`, user},
	}
	for _, r := range routes {
		t.Run(r.name, func(t *testing.T) {
			prepare := func(k newKey, query string) (string, map[string]string) {
				t.Helper()
				target := data + r.path
				if query != "" {
					target += "?" + query
				}
				u, hdr := signed(t, r.method, target, k)
				if r.contentType != "" {
					hdr["Content-Type"] = r.contentType
				}
				return u, hdr
			}
			u, hdr := prepare(k, r.query)
			if status, _, raw := jsonCall(t, r.method, u, hdr, r.body); status != 200 || !strings.HasPrefix(raw, r.ok) {
				t.Fatalf("signed: %d %s, want 200 %s…", status, raw, r.ok)
			}
			if status, _, raw := jsonCall(t, r.method, u, hdr, r.body); status != 401 || raw != r.refusal(401, "Request signature already used") {
				t.Errorf("replay: %d %s", status, raw)
			}
			u, hdr = prepare(wrong, r.query)
			if status, _, raw := jsonCall(t, r.method, u, hdr, r.body); status != 403 || raw != r.refusal(403, "Invalid request signature") {
				t.Errorf("wrong secret: %d %s", status, raw)
			}
			u, hdr = prepare(k, strings.TrimPrefix(r.query+"&"+stale, "&"))
			if status, _, raw := jsonCall(t, r.method, u, hdr, r.body); status != 401 || raw != r.refusal(401, "ts query parameter is too old (allowed skew 5m0s)") {
				t.Errorf("stale ts: %d %s", status, raw)
			}
		})
	}
	// Refused requests changed nothing: one key made by the signed create.
	if got := g.keyNames(org); strings.Join(got, ",") != "admin,other,signed" {
		t.Errorf("keys %v", got)
	}
}

// signCLI runs `keygate sign` with args for key k and returns its header
// lines (as printed) and its URL.
func signCLI(t *testing.T, k newKey, args ...string) (headers []string, rawURL string) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"sign"}, args...),
		[]string{envSignAccessKey + "=" + k.AccessKey, envSignSecret + "=" + k.AccessSecret}, &out, &errOut)
	if err != nil {
		t.Fatalf("keygate sign %v: %v\n%s", args, err, errOut.String())
	}
	if errOut.Len() != 0 {
		t.Errorf("keygate sign wrote to stderr: %s", errOut.String())
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "X-Access-Key: ") || !strings.HasPrefix(lines[1], "X-Access-Signature: ") || !strings.HasPrefix(lines[2], "URL: ") {
		t.Fatalf("keygate sign printed %q", out.String())
	}
	return lines[:2], strings.TrimPrefix(lines[2], "URL: ")
}

// TestSignCLIOutputWorksVerbatim sends what `keygate sign` prints, unchanged,
// with curl (header lines as -H arguments) and with Go's client.
func TestSignCLIOutputWorksVerbatim(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_SECRET_KEY": testSecretKeyA})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read", "write"}})
	k := ks["k"]
	data := "http://" + g.l.Data
	now := time.Now().Unix()
	cases := []struct {
		name, method, url, body string
	}{
		{"percent-encoded path, repeated and encoded params", "GET", data + "/v1/files/a%2Cb%20c?tag=x&tag=a%2Bb&name=John%20Doe&q=1+1", ""},
		{"query typed unencoded", "GET", data + "/v1/search?name=John Doe&city=Zürich&quote=\"x\"", ""},
		{"POST without params", "post", data + "/v1/upload", "payload"},
		{"no path", "GET", data, ""},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := strconv.FormatInt(now-int64(2*i), 10)
			headers, u := signCLI(t, k, "-method", tc.method, "-ts", ts, "-url", tc.url)
			args := []string{"-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", strings.ToUpper(tc.method), "-H", headers[0], "-H", headers[1]}
			if tc.body != "" {
				args = append(args, "--data-binary", tc.body)
			}
			out, err := exec.Command(curl, append(args, u)...).CombinedOutput()
			if err != nil || string(out) != "200" {
				t.Fatalf("curl %q: %s %v", args, out, err)
			}
			// Go's client, with the next ts (a new signature: the first is spent).
			ts = strconv.FormatInt(now-int64(2*i)-1, 10)
			headers, u = signCLI(t, k, "-method", tc.method, "-ts", ts, "-url", tc.url)
			hdr := map[string]string{}
			for _, h := range headers {
				name, v, _ := strings.Cut(h, ": ")
				hdr[name] = v
			}
			if status, _, body := call(t, strings.ToUpper(tc.method), u, hdr, tc.body); status != 200 {
				t.Errorf("Go client: %d %s", status, body)
			}
		})
	}
}

// TestReadmeSignedExample recomputes the worked example of
// docs/signed-requests.md (once the README's) from the formula and checks
// that `keygate sign` prints exactly what the page shows.
func TestReadmeSignedExample(t *testing.T) {
	b, err := os.ReadFile("../../docs/signed-requests.md")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	find := func(prefix string) (int, string) {
		t.Helper()
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i, strings.TrimPrefix(l, prefix)
			}
		}
		t.Fatalf("README: no line starting %q", prefix)
		return 0, ""
	}
	_, accessKey := find("$ export KEYGATE_SIGN_ACCESS_KEY=")
	_, secret := find("$ export KEYGATE_SIGN_SECRET=")
	if !keys.CheckSecret(secret) {
		t.Errorf("the README's secret %q is not a well-formed keygate secret", secret)
	}
	_, quoted := find(`string_to_sign = "`)
	sts, err := strconv.Unquote(`"` + quoted)
	if err != nil {
		t.Fatalf("README string_to_sign: %v", err)
	}
	want := hmacB64(sts, secret)

	// The request line: its string to sign, built here from the formula.
	_, reqLine := find("GET /api/v0/keys?")
	u, err := url.Parse("/api/v0/keys?" + reqLine)
	if err != nil {
		t.Fatal(err)
	}
	var pairs [][2]string
	for k, vs := range u.Query() {
		for _, v := range vs {
			pairs = append(pairs, [2]string{k, v})
		}
	}
	// Sorted by key, then value, as decoded; then each encoded.
	slices.SortFunc(pairs, func(a, b [2]string) int { return cmp.Or(strings.Compare(a[0], b[0]), strings.Compare(a[1], b[1])) })
	var params []string
	for _, p := range pairs {
		params = append(params, url.QueryEscape(p[0])+"="+url.QueryEscape(p[1]))
	}
	if got := "GET\n" + u.EscapedPath() + "\n" + strings.Join(params, "&"); got != sts {
		t.Errorf("README request line signs %q, but the README says %q", got, sts)
	}

	// Every signature the section shows is the one the formula gives.
	i, _ := find("$ printf 'GET")
	if got := strings.TrimSpace(lines[i+2]); got != want {
		t.Errorf("README openssl output %q, want %q", got, want)
	}
	n := 0
	for _, l := range lines {
		if sig, ok := strings.CutPrefix(l, "X-Access-Signature: "); ok && !strings.Contains(sig, "BASE64") {
			n++
			if sig != want {
				t.Errorf("README shows signature %q, want %q", sig, want)
			}
		}
	}
	if n != 2 {
		t.Errorf("README shows %d signatures, want 2 (request, keygate sign)", n)
	}

	// keygate sign, run as the README runs it, prints what the README shows.
	i, cmd := find("$ keygate sign -ts 1700000000 -url '")
	rawURL, ok := strings.CutSuffix(cmd, "'")
	if !ok || len(lines) < i+4 {
		t.Fatalf("README keygate sign line %q", cmd)
	}
	headers, printedURL := signCLI(t, newKey{AccessKey: accessKey, AccessSecret: secret}, "-ts", "1700000000", "-url", rawURL)
	if got := append(headers, "URL: "+printedURL); strings.Join(got, "\n") != strings.Join(lines[i+1:i+4], "\n") {
		t.Errorf("keygate sign prints\n%s\nthe README shows\n%s", strings.Join(got, "\n"), strings.Join(lines[i+1:i+4], "\n"))
	}
}
