package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	kgate "github.com/keygate/keygate/gate"
	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
)

// Operator keys of the tests (base64 of 32 bytes).
var (
	testSecretKeyA = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{'A'}, 32))
	testSecretKeyB = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{'B'}, 32))
)

// signed is a request signed for a key: the URL to send (ts added) and the
// headers.
func signed(t *testing.T, method, rawURL string, k newKey) (string, map[string]string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if !q.Has("ts") {
		q.Set("ts", strconv.FormatInt(time.Now().Unix(), 10))
		if u.RawQuery != "" {
			u.RawQuery += "&"
		}
		u.RawQuery += "ts=" + q.Get("ts")
	}
	return u.String(), map[string]string{
		"X-Access-Key":       k.AccessKey,
		"X-Access-Signature": kgate.SignRequest(method, u.EscapedPath(), q, k.AccessSecret),
	}
}

func errorMessage(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %s: %v", body, err)
	}
	return e.Message
}

func TestSignedRequests(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		rec := &recorder{}
		up := httptest.NewServer(rec)
		defer up.Close()
		g := startGate(t, mergeEnv(withUpstream(env, up.URL), map[string]string{"KEYGATE_SECRET_KEY": testSecretKeyA}))
		org, ks := g.setupOrg(1, 1000, "month", map[string][]string{"rw": {"read", "write"}, "gone": {"read"}})
		k := ks["rw"]
		data := "http://" + g.l.Data

		u, hdr := signed(t, "GET", data+"/v1/things?b=2&a=1&name=John%20Doe&expr=1%2B1", k)
		if status, _, body := call(t, "GET", u, hdr, ""); status != 200 {
			t.Fatalf("signed request: %d %s", status, body)
		}
		got := rec.last(t)
		for _, h := range []string{"X-Access-Key", "X-Access-Signature"} {
			if v := got.Header.Get(h); v != "" {
				t.Errorf("upstream got %s: %q", h, v)
			}
		}
		if got.Header.Get("X-Keygate-Key-Id") != k.UID {
			t.Errorf("upstream identity %q, want %s", got.Header.Get("X-Keygate-Key-Id"), k.UID)
		}
		before := rec.count()
		status, _, body := call(t, "GET", u, hdr, "")
		if status != 401 || errorMessage(t, body) != "Request signature already used" {
			t.Errorf("replay: %d %s", status, body)
		}
		if rec.count() != before {
			t.Error("replayed request reached the upstream")
		}

		// Self-served route: signed works, and the signature is spent too.
		u, hdr = signed(t, "GET", data+"/api/v1/account", k)
		if status, _, body := call(t, "GET", u, hdr, ""); status != 200 || !strings.Contains(string(body), k.UID) {
			t.Fatalf("signed account: %d %s", status, body)
		}
		if status, _, body := call(t, "GET", u, hdr, ""); status != 401 || errorMessage(t, body) != "Request signature already used" {
			t.Errorf("replay on account: %d %s", status, body)
		}

		// POST without params (ts only) with a body.
		u, hdr = signed(t, "POST", data+"/v1/upload", k)
		if status, _, body := call(t, "POST", u, hdr, "payload"); status != 200 {
			t.Errorf("signed POST: %d %s", status, body)
		}

		wrong := k
		wrong.AccessSecret = ks["gone"].AccessSecret
		u, hdr = signed(t, "GET", data+"/v1/things", wrong)
		if status, _, body := call(t, "GET", u, hdr, ""); status != 403 || errorMessage(t, body) != "Invalid request signature" {
			t.Errorf("wrong secret: %d %s", status, body)
		}
		stale := data + "/v1/things?ts=" + strconv.FormatInt(time.Now().Add(-10*time.Minute).Unix(), 10)
		u, hdr = signed(t, "GET", stale, k)
		if status, _, body := call(t, "GET", u, hdr, ""); status != 401 || !strings.Contains(errorMessage(t, body), "too old") {
			t.Errorf("stale ts: %d %s", status, body)
		}

		// A deleted key, cached as verified a moment ago, is refused at once.
		gone := ks["gone"]
		u, hdr = signed(t, "GET", data+"/v1/things?x=1", gone)
		if status, _, body := call(t, "GET", u, hdr, ""); status != 200 {
			t.Fatalf("before delete: %d %s", status, body)
		}
		g.admin("DELETE", "/admin/v1/orgs/"+org+"/keys/gone", nil, 204, nil)
		u, hdr = signed(t, "GET", data+"/v1/things?x=2", gone)
		if status, _, body := call(t, "GET", u, hdr, ""); status != 403 || errorMessage(t, body) != "Invalid API key" {
			t.Errorf("deleted key: %d %s", status, body)
		}

		// keygate sign prints what a client needs.
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"sign", "-method", "get", "-url", data + "/v1/cli?q=a%20b"},
			[]string{envSignAccessKey + "=" + k.AccessKey, envSignSecret + "=" + k.AccessSecret}, &out, &errOut)
		if err != nil {
			t.Fatalf("keygate sign: %v\n%s", err, errOut.String())
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[2], "URL: ") {
			t.Fatalf("keygate sign printed %q", out.String())
		}
		cliHdr := map[string]string{}
		for _, l := range lines[:2] {
			name, v, _ := strings.Cut(l, ": ")
			cliHdr[name] = v
		}
		if status, _, body := call(t, "GET", strings.TrimPrefix(lines[2], "URL: "), cliHdr, ""); status != 200 {
			t.Errorf("request signed by keygate sign: %d %s", status, body)
		}

		if err := g.stop(); err != nil { // flushes the log
			t.Fatal(err)
		}
		for _, k := range ks {
			if strings.Contains(g.logs.String(), k.AccessSecret) {
				t.Errorf("log output contains a secret")
			}
		}
		if !strings.Contains(g.logs.String(), "request signing on") {
			t.Errorf("start-up log does not say signing is on")
		}
	})
}

func TestSignedReplayThroughOtherSidecar(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	srv := redistest.Start(t)
	env := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_SECRET_KEY": testSecretKeyA}
	a := startGate(t, env)
	b := startGate(t, env)
	_, ks := a.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	path := "/v1/things?a=1"
	u, hdr := signed(t, "GET", "http://"+a.l.Data+path, ks["k"])
	if status, _, body := call(t, "GET", u, hdr, ""); status != 200 {
		t.Fatalf("first use on A: %d %s", status, body)
	}
	// The same request (same path, query and signature) sent to B.
	ub := "http://" + b.l.Data + strings.TrimPrefix(u, "http://"+a.l.Data)
	status, _, body := call(t, "GET", ub, hdr, "")
	if status != 401 || errorMessage(t, body) != "Request signature already used" {
		t.Errorf("replay through B: %d %s", status, body)
	}
	// Self-served on B, replayed on A.
	u, hdr = signed(t, "GET", "http://"+b.l.Data+"/api/v1/account", ks["k"])
	if status, _, body := call(t, "GET", u, hdr, ""); status != 200 {
		t.Fatalf("account on B: %d %s", status, body)
	}
	ua := "http://" + a.l.Data + strings.TrimPrefix(u, "http://"+b.l.Data)
	if status, _, body := call(t, "GET", ua, hdr, ""); status != 401 {
		t.Errorf("account replay through A: %d %s", status, body)
	}
}

func TestSigningOff(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	u, hdr := signed(t, "GET", "http://"+g.l.Data+"/v1/x", ks["k"])
	status, _, body := call(t, "GET", u, hdr, "")
	if status != 403 || errorMessage(t, body) != "Signed requests are not enabled on this gateway; send the secret instead" {
		t.Errorf("signed request with signing off: %d %s", status, body)
	}
	// The key still works with its secret.
	if status, _, body := call(t, "GET", "http://"+g.l.Data+"/v1/x", map[string]string{"X-API-Key": ks["k"].AccessSecret}, ""); status != 200 {
		t.Errorf("bearer with signing off: %d %s", status, body)
	}
	if err := g.stop(); err != nil { // flushes the log
		t.Fatal(err)
	}
	if !strings.Contains(g.logs.String(), "request signing off: KEYGATE_SECRET_KEY is empty") {
		t.Errorf("start-up log does not say signing is off:\n%s", g.logs)
	}
}

// sealedIDs returns the key id of every key record's sealed secret, by uid.
func sealedIDs(t *testing.T, rdb redis.UniversalClient) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	iter := rdb.Scan(ctx, 0, "kg:{*}:key:*", 100).Iterator()
	for iter.Next(ctx) {
		v, err := rdb.Get(ctx, iter.Val()).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		var k keys.Key
		if err := json.Unmarshal(v, &k); err != nil {
			t.Fatalf("%s: %v", iter.Val(), err)
		}
		id, _ := keys.SealedKeyID(k.SealedSecret)
		out[k.UID] = id.String()
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func keyID(t *testing.T, b64 string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return keys.KeyIDOf(b).String()
}

func TestSecretKeyRotationAndRekey(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	base := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL()}
	idA, idB := keyID(t, testSecretKeyA), keyID(t, testSecretKeyB)

	// Before the rotation: key "old" sealed under A.
	g1 := startGate(t, mergeEnv(base, map[string]string{"KEYGATE_SECRET_KEY": testSecretKeyA}))
	org, ks := g1.setupOrg(1, 1000, "month", map[string][]string{"old": {"read"}})
	old := ks["old"]
	if err := g1.stop(); err != nil {
		t.Fatal(err)
	}

	// Rotated: B current, A previous. The old key still signs; new keys are sealed under B.
	rotated := mergeEnv(base, map[string]string{"KEYGATE_SECRET_KEY": testSecretKeyB, "KEYGATE_SECRET_KEY_PREVIOUS": testSecretKeyA})
	g2 := startGate(t, rotated)
	u, hdr := signed(t, "GET", "http://"+g2.l.Data+"/v1/x", old)
	if status, _, body := call(t, "GET", u, hdr, ""); status != 200 {
		t.Fatalf("old key after rotation: %d %s", status, body)
	}
	var fresh newKey
	g2.admin("POST", "/admin/v1/orgs/"+org+"/keys", map[string]any{"name": "new", "permissions": []string{"read"}}, 201, &fresh)
	ids := sealedIDs(t, rdb)
	if ids[old.UID] != idA || ids[fresh.UID] != idB {
		t.Fatalf("sealed key ids %v, want old=%s new=%s", ids, idA, idB)
	}

	// rekey: dry run changes nothing, then a real run moves the old record.
	var out, errOut bytes.Buffer
	environ := []string{"KEYGATE_REDIS_URL=" + srv.URL(), "KEYGATE_SECRET_KEY=" + testSecretKeyB, "KEYGATE_SECRET_KEY_PREVIOUS=" + testSecretKeyA}
	if err := run(context.Background(), []string{"rekey", "-dry-run"}, environ, &out, &errOut); err != nil {
		t.Fatalf("rekey -dry-run: %v\n%s", err, errOut.String())
	}
	if want := fmt.Sprintf("rekey: 1 to re-encrypt under key id %s, 1 already under it", idB); !strings.Contains(out.String(), want) {
		t.Errorf("dry run printed %q, want %q", out.String(), want)
	}
	if ids := sealedIDs(t, rdb); ids[old.UID] != idA {
		t.Errorf("dry run changed the record: %v", ids)
	}
	out.Reset()
	if err := run(context.Background(), []string{"rekey"}, environ, &out, &errOut); err != nil {
		t.Fatalf("rekey: %v\n%s", err, errOut.String())
	}
	if want := fmt.Sprintf("rekey: 1 re-encrypted under key id %s, 1 already under it, 0 without a sealed secret (created while signing was off), 0 failed", idB); strings.TrimSpace(out.String()) != want {
		t.Errorf("rekey printed %q, want %q", out.String(), want)
	}
	if ids := sealedIDs(t, rdb); ids[old.UID] != idB || ids[fresh.UID] != idB {
		t.Errorf("after rekey: %v, want every record under %s", ids, idB)
	}
	if err := g2.stop(); err != nil {
		t.Fatal(err)
	}

	// After rekey the previous key can go: both keys sign with B alone.
	g3 := startGate(t, mergeEnv(base, map[string]string{"KEYGATE_SECRET_KEY": testSecretKeyB}))
	for _, k := range []newKey{old, fresh} {
		u, hdr := signed(t, "GET", "http://"+g3.l.Data+"/v1/y", k)
		if status, _, body := call(t, "GET", u, hdr, ""); status != 200 {
			t.Errorf("key %s with B only after rekey: %d %s", k.Name, status, body)
		}
	}
	// A sidecar left with only A cannot open records sealed under B.
	g4 := startGate(t, mergeEnv(base, map[string]string{"KEYGATE_SECRET_KEY": testSecretKeyA}))
	u, hdr = signed(t, "GET", "http://"+g4.l.Data+"/v1/z", old)
	// The gateway's fault, not the client's: 503, and a log line (issue 12).
	if status, _, body := call(t, "GET", u, hdr, ""); status != 503 {
		t.Errorf("record sealed under an unconfigured key: %d %s", status, body)
	}
	if err := g4.stop(); err != nil { // flushes the log
		t.Fatal(err)
	}
	if !strings.Contains(g4.logs.String(), "sealed under unknown key id "+idB) {
		t.Errorf("the failure is not logged with its key id:\n%s", g4.logs)
	}

	// rekey needs a persistent store and a key.
	err := run(context.Background(), []string{"rekey"}, []string{"KEYGATE_SECRET_KEY=" + testSecretKeyB}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "KEYGATE_REDIS_URL is empty") {
		t.Errorf("rekey with the embedded store: %v", err)
	}
	err = run(context.Background(), []string{"rekey"}, []string{"KEYGATE_REDIS_URL=" + srv.URL()}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "KEYGATE_SECRET_KEY is empty") {
		t.Errorf("rekey without a key: %v", err)
	}
}

// dumpRedis returns every key name and every value of every type in rdb.
func dumpRedis(t *testing.T, rdb redis.UniversalClient) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	iter := rdb.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		out = append(out, k)
		typ, err := rdb.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		var vals []string
		switch typ {
		case "string":
			vals = []string{rdb.Get(ctx, k).Val()}
		case "hash":
			for f, v := range rdb.HGetAll(ctx, k).Val() {
				vals = append(vals, f, v)
			}
		case "set":
			vals = rdb.SMembers(ctx, k).Val()
		case "zset":
			for _, z := range rdb.ZRangeWithScores(ctx, k, 0, -1).Val() {
				vals = append(vals, fmt.Sprint(z.Member), strconv.FormatFloat(z.Score, 'f', -1, 64))
			}
		case "list":
			vals = rdb.LRange(ctx, k, 0, -1).Val()
		case "stream":
			for _, m := range rdb.XRange(ctx, k, "-", "+").Val() {
				vals = append(vals, m.ID)
				for f, v := range m.Values {
					vals = append(vals, f, fmt.Sprint(v))
				}
			}
		case "none": // expired meanwhile
		default:
			t.Fatalf("key %s has type %s, which the dump does not read", k, typ)
		}
		out = append(out, vals...)
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// secretForms are the ways a secret could show up in a dump.
func secretForms(t *testing.T, secret string) []string {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(secret, keys.SecretPrefix))
	if err != nil {
		t.Fatal(err)
	}
	entropy := string(raw[:32])
	var forms []string
	for _, s := range []string{secret, strings.TrimPrefix(secret, keys.SecretPrefix), entropy} {
		forms = append(forms, s,
			base64.StdEncoding.EncodeToString([]byte(s)), base64.RawStdEncoding.EncodeToString([]byte(s)),
			base64.URLEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s)),
			hex.EncodeToString([]byte(s)), strings.ToUpper(hex.EncodeToString([]byte(s))))
	}
	return forms
}

func TestRedisHoldsNoClearSecret(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_SECRET_KEY": testSecretKeyA})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{"a": {"read"}, "b": {"admin"}})
	for _, k := range ks {
		u, hdr := signed(t, "GET", "http://"+g.l.Data+"/v1/x?y=1", k)
		if status, _, body := call(t, "GET", u, hdr, ""); status != 200 {
			t.Fatalf("signed request: %d %s", status, body)
		}
		if status, _, body := call(t, "GET", "http://"+g.l.Data+"/v1/x", map[string]string{"X-API-Key": k.AccessSecret}, ""); status != 200 {
			t.Fatalf("api key request: %d %s", status, body)
		}
	}
	dump := dumpRedis(t, rdb)
	sealed := 0
	for _, v := range dump {
		if strings.Contains(v, `"sealed_secret":"`) {
			sealed++
		}
	}
	if sealed != len(ks) {
		t.Fatalf("%d key records with a sealed secret, want %d (the dump would prove nothing)", sealed, len(ks))
	}
	for name, k := range ks {
		for _, form := range secretForms(t, k.AccessSecret) {
			for _, v := range dump {
				if strings.Contains(v, form) {
					t.Errorf("Redis holds the secret of key %s in clear (form %q) in %q", name, form, v)
				}
			}
		}
	}
	if err := g.stop(); err != nil { // flushes the log
		t.Fatal(err)
	}
	for _, k := range ks {
		if strings.Contains(g.logs.String(), k.AccessSecret) {
			t.Error("log output contains a secret")
		}
	}
}
