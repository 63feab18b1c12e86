package user_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/sidecar"
)

// fuzzNow is the fixed clock of the fuzz target.
var fuzzNow = time.Unix(1700000000, 0)

// userRoutes are every route of seed 003.
var userRoutes = []struct{ method, path string }{
	{http.MethodPost, "/user/apikeys"},
	{http.MethodGet, "/user/apikeys"},
	{http.MethodPost, "/user/create_apikey"},
	{http.MethodPost, "/user/delete_apikey"},
}

// storeState is everything a request may change (sidecartest.State).
type storeState = sidecartest.State

func snapshot(t *testing.T, e *sidecartest.Env) storeState { return e.Snapshot(t, fuzzNow) }

// noUpstream fails every forwarded request: self-served routes never
// reach the upstream.
type noUpstream struct{}

func (noUpstream) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("self-served request forwarded")
}

// userEnv is a sidecar with org-1 (login alice / "correct horse", admin
// key, key k2) and org-2 (admin key), and the values the placeholders of a
// fuzz body stand for.
type userEnv struct {
	*sidecartest.Env
	secret string
	subst  *strings.Replacer
}

// newUserEnv builds a userEnv; passwordHash is the hash of "correct
// horse", computed once because argon2id is slow on purpose.
func newUserEnv(tb testing.TB, passwordHash string) *userEnv {
	e := sidecartest.New(tb, sidecar.Options{Now: func() time.Time { return fuzzNow }, Transport: noUpstream{}})
	e.Admin(tb, "POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "p", "price": "0", "max_api_requests": 1 << 40}, 201, nil)
	if err := e.Store.CreateOrg(context.Background(), keys.Org{ID: "org-1", Name: "Acme", Email: "ops@example.com", PlanID: 1,
		Username: "alice", PasswordHash: passwordHash, CreatedAt: fuzzNow}); err != nil {
		tb.Fatal(err)
	}
	var admin, k2 struct {
		UID    string `json:"access_key"`
		Secret string `json:"access_secret"`
	}
	e.Admin(tb, "POST", "/admin/v1/orgs/org-1/keys", map[string]any{"name": "k1", "permissions": []string{"admin"}}, 201, &admin)
	e.Admin(tb, "POST", "/admin/v1/orgs/org-1/keys", map[string]any{"name": "k2", "permissions": []string{"read"}}, 201, &k2)
	other := e.SetupOrg(tb, 1, 1<<40, nil, "org-2")
	ks, err := e.Store.Keys(context.Background(), "org-2")
	if err != nil || len(ks) != 1 {
		tb.Fatalf("org-2 keys %v, %v", ks, err)
	}
	return &userEnv{Env: e, secret: admin.Secret, subst: strings.NewReplacer(
		"$KEY", admin.Secret, "$UID", k2.UID, "$OTHERKEY", other, "$OTHER", ks[0].UID)}
}

// FuzzUserBody sends arbitrary form bodies to every seed 003 route, as
// application/x-www-form-urlencoded, as multipart/form-data with an
// arbitrary boundary, with an arbitrary Content-Type or none, with or
// without the admin key in a header. $KEY, $UID, $OTHER and $OTHERKEY in
// the body stand for org-1's admin secret, the access key of its key k2,
// and org-2's access key and secret. No answer may be a 5xx; every answer
// is seed 003's JSON envelope; a refused request changes nothing in the
// store, and none changes anything but org-1's keys. The sidecar is
// rebuilt only after a request that changed it, so each input starts from
// the same state.
func FuzzUserBody(f *testing.F) {
	f.Add(uint8(2), uint8(1), "", []byte("access_level=basic&comment=x"))
	f.Add(uint8(3), uint8(3), "XyZ", []byte("--XyZ\r\nContent-Disposition: form-data; name=\"delete_key\"\r\n\r\n$UID\r\n--XyZ--\r\n"))
	hash, err := keys.HashPassword("correct horse")
	if err != nil {
		f.Fatal(err)
	}
	e := newUserEnv(f, hash)
	f.Fuzz(func(t *testing.T, route, mode uint8, ct string, body []byte) {
		rt := userRoutes[int(route)%len(userRoutes)]
		req := httptest.NewRequest(rt.method, rt.path, bytes.NewReader([]byte(e.subst.Replace(string(body)))))
		if mode&1 != 0 {
			req.Header.Set("Authorization", "Bearer "+e.secret)
		}
		switch (mode >> 1) % 4 {
		case 0:
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		case 1:
			req.Header.Set("Content-Type", "multipart/form-data; boundary="+ct)
		case 2:
			req.Header.Set("Content-Type", ct)
		}
		before := snapshot(t, e.Env)
		rec := httptest.NewRecorder()
		e.Data.ServeHTTP(rec, req)
		after := snapshot(t, e.Env)
		if rec.Code >= 500 {
			t.Fatalf("%s %s (%q): status %d: %s", rt.method, rt.path, req.Header.Get("Content-Type"), rec.Code, rec.Body)
		}
		var env struct {
			Status  string `json:"status"`
			ErrorID string `json:"error_id"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil ||
			(rec.Code == http.StatusOK) != (env.Status == "success") ||
			env.Status != "success" && (env.Status != "error" || env.ErrorID == "" || env.Message == "") {
			t.Fatalf("%s %s: status %d, answer is not seed 003's envelope: %q", rt.method, rt.path, rec.Code, rec.Body)
		}
		// Seed 003 manages the caller's keys only: no plan or organization
		// changes, and org-2's keys are never touched.
		if !reflect.DeepEqual(before.Plans, after.Plans) || !reflect.DeepEqual(before.Orgs, after.Orgs) ||
			!reflect.DeepEqual(before.Keys["org-2"], after.Keys["org-2"]) {
			t.Fatalf("%s %s: %d (%s) changed more than org-1's keys:\nbefore %+v\nafter  %+v", rt.method, rt.path, rec.Code, rec.Body, before, after)
		}
		changed := !reflect.DeepEqual(before, after)
		if changed && rec.Code != http.StatusOK {
			t.Fatalf("%s %s: refused with %d (%s) but the store changed:\nbefore %+v\nafter  %+v", rt.method, rt.path, rec.Code, rec.Body, before, after)
		}
		if changed {
			e = newUserEnv(t, hash)
		}
	})
}
