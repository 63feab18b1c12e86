package gw3_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/manage"
	"github.com/keygate/keygate/sidecar"
)

// fuzzNow is the fixed clock of the fuzz target; $TS in a query is its
// Unix time, a valid ts parameter.
var fuzzNow = time.Unix(1700000000, 0)

// gw3Routes are every route of seeds 000 and 001.
var gw3Routes = []struct{ method, path string }{
	{http.MethodGet, "/api/v0/stats"},
	{http.MethodGet, "/api/v0/plans"},
	{http.MethodPost, "/api/v0/key"},
	{http.MethodGet, "/api/v0/keys"},
	{http.MethodDelete, "/api/v0/key"},
	{http.MethodPost, "/api/v0/partner/user/create"},
	{http.MethodGet, "/api/v0/partner/user/stats"},
	{http.MethodPost, "/api/v0/partner/user/update-plan"},
	{http.MethodPost, "/api/v0/partner/user/key"},
	{http.MethodGet, "/api/v0/partner/user/keys"},
	{http.MethodDelete, "/api/v0/partner/user/key"},
}

// storeState is everything a request may change (sidecartest.State).
type storeState = sidecartest.State

func snapshot(t *testing.T, e *sidecartest.Env) storeState { return e.Snapshot(t, fuzzNow) }

// orgOf returns the organization id of s (zero when absent).
func orgOf(s storeState, id string) keys.Org {
	for _, o := range s.Orgs {
		if o.ID == id {
			return o
		}
	}
	return keys.Org{}
}

// noUpstream fails every forwarded request: self-served routes never
// reach the upstream.
type noUpstream struct{}

func (noUpstream) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("self-served request forwarded")
}

// newGW3Env is a sidecar with partner org-1 (admin key returned) on plan 1,
// its sub-account sub-1 with key k1, another organization org-2 with key
// k1, plan 2 and plan 3 (period none).
func newGW3Env(tb testing.TB) (*sidecartest.Env, string) {
	e := sidecartest.New(tb, sidecar.Options{Now: func() time.Time { return fuzzNow }, Transport: noUpstream{}})
	secret := e.SetupOrg(tb, 1, 1<<40, map[string]int64{"ingress": 100, "custom_meter": 5}, "org-1")
	e.Admin(tb, "PATCH", "/admin/v1/orgs/org-1", map[string]any{"partner": true}, 200, nil)
	e.Admin(tb, "POST", "/admin/v1/plans", map[string]any{"id": 2, "name": "p2", "price": "1.00", "period": "day", "max_api_requests": 10}, 201, nil)
	e.Admin(tb, "POST", "/admin/v1/plans", map[string]any{"id": 3, "name": "p3", "price": "0", "period": "none"}, 201, nil)
	ctx := context.Background()
	one := int64(1)
	if _, err := e.Manage.CreateOrg(ctx, manage.NewOrg{ID: "sub-1", Name: "Sub", Email: "sub@example.com", PlanID: &one}, "org-1"); err != nil {
		tb.Fatal(err)
	}
	e.SetupOrg(tb, 1, 1<<40, nil, "org-2")
	if _, _, err := e.Manage.CreateKey(ctx, manage.NewKey{OrgID: "sub-1", Name: "k1", Permissions: []keys.Permission{keys.PermRead}}); err != nil {
		tb.Fatal(err)
	}
	return e, secret
}

// FuzzGW3Body sends arbitrary bodies and queries to every route of seeds
// 000 and 001 with the partner's admin key ($TS in the query is a valid
// ts). No answer may be a 5xx; every answer is the JSON envelope whose code
// is the HTTP status; a refused request changes nothing in the store, and
// no request changes org-2, which is not the partner's. The sidecar is
// rebuilt only after a request that changed it, so each input starts from
// the same state.
func FuzzGW3Body(f *testing.F) {
	f.Add(uint8(2), "", []byte(`{"name":"k9","permissions":["read"]}`))
	f.Add(uint8(8), "ts=$TS", []byte(`{"uuid":"sub-1","name":"k9","permissions":["admin"]}`))
	e, secret := newGW3Env(f)
	ts := strconv.FormatInt(fuzzNow.Unix(), 10)
	f.Fuzz(func(t *testing.T, route uint8, query string, body []byte) {
		rt := gw3Routes[int(route)%len(gw3Routes)]
		req := httptest.NewRequest(rt.method, rt.path, bytes.NewReader(body))
		req.URL.RawQuery = strings.ReplaceAll(query, "$TS", ts)
		req.Header.Set("Authorization", "Bearer "+secret)
		req.Header.Set("Content-Type", "application/json")
		before := snapshot(t, e)
		rec := httptest.NewRecorder()
		e.Data.ServeHTTP(rec, req)
		after := snapshot(t, e)
		if rec.Code >= 500 {
			t.Fatalf("%s %s?%s: status %d: %s", rt.method, rt.path, req.URL.RawQuery, rec.Code, rec.Body)
		}
		var env struct {
			Code *int `json:"code"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || env.Code == nil || *env.Code != rec.Code {
			t.Fatalf("%s %s: status %d, answer is not the envelope with that code: %q", rt.method, rt.path, rec.Code, rec.Body)
		}
		// The partner's routes reach its own sub-accounts only: org-2 is
		// never touched.
		if !reflect.DeepEqual(orgOf(before, "org-2"), orgOf(after, "org-2")) || !reflect.DeepEqual(before.Keys["org-2"], after.Keys["org-2"]) {
			t.Fatalf("%s %s?%s: %d (%s) changed org-2", rt.method, rt.path, req.URL.RawQuery, rec.Code, rec.Body)
		}
		changed := !reflect.DeepEqual(before, after)
		if changed && rec.Code != http.StatusOK {
			t.Fatalf("%s %s?%s: refused with %d (%s) but the store changed:\nbefore %+v\nafter  %+v", rt.method, rt.path, req.URL.RawQuery, rec.Code, rec.Body, before, after)
		}
		if changed {
			e, secret = newGW3Env(t)
		}
	})
}
