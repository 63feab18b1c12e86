// Package sidecartest builds a whole sidecar in-process for tests of the
// packages it is made of: the in-memory store and counter unless the test
// brings its own, and the operator API to set tenants up the way an
// operator would.
package sidecartest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/memcounter"
	"github.com/keygate/keygate/sidecar"
)

// AdminToken is the operator token of every Env.
const AdminToken = "test-token"

// Env is a wired sidecar and its store.
type Env struct {
	*sidecar.Sidecar
	Store keys.Store
}

// New wires a sidecar from o. A nil Store becomes a memstore, a nil Auth an
// Authenticator on it, a nil Counter a memcounter, a nil Upstream an
// address that must not be dialled (give a Transport).
func New(tb testing.TB, o sidecar.Options) *Env {
	tb.Helper()
	if o.Store == nil {
		o.Store = memstore.New()
	}
	if o.Auth == nil {
		var opt keys.AuthOptions
		if o.Metrics != nil {
			opt = keys.AuthOptions{OnLookup: o.Metrics.AuthLookup, OnRevocation: o.Metrics.Revocation}
		}
		opt.Sealer, opt.Now = o.Sealer, o.Now
		o.Auth = keys.NewAuthenticator(o.Store, opt)
	}
	if o.Counter == nil {
		o.Counter = memcounter.New()
	}
	if o.Upstream == nil {
		o.Upstream = &url.URL{Scheme: "http", Host: "upstream.invalid"}
	}
	o.AdminToken = AdminToken
	return &Env{Sidecar: sidecar.New(o), Store: o.Store}
}

// Admin calls the operator API in-process, checks the status and decodes
// the answer into out (when not nil).
func (e *Env) Admin(tb testing.TB, method, path string, body any, want int, out any) {
	tb.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		tb.Fatal(err)
	}
	req := httptest.NewRequest(method, path, strings.NewReader(string(b)))
	req.Header.Set("Authorization", "Bearer "+AdminToken)
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	e.Sidecar.Admin.ServeHTTP(rec, req)
	if rec.Code != want {
		tb.Fatalf("%s %s: status %d, want %d: %s", method, path, rec.Code, want, rec.Body)
	}
	if out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			tb.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

// SetupOrg creates plan planID (if it is new) allowing max requests a month
// with limits, the organization orgID, and an admin key; it returns the
// key's secret.
func (e *Env) SetupOrg(tb testing.TB, planID int64, max int64, limits map[string]int64, orgID string) string {
	tb.Helper()
	var plans []keys.Plan
	e.Admin(tb, "GET", "/admin/v1/plans", nil, 200, &plans)
	if !slices.ContainsFunc(plans, func(p keys.Plan) bool { return p.ID == planID }) {
		e.Admin(tb, "POST", "/admin/v1/plans", map[string]any{"id": planID, "name": "plan", "price": "0.00",
			"period": "month", "max_api_requests": max, "limits": limits}, 201, nil)
	}
	e.Admin(tb, "POST", "/admin/v1/orgs", map[string]any{"id": orgID, "name": "Acme", "email": "ops@example.com", "plan_id": planID}, 201, nil)
	var k struct {
		Secret string `json:"access_secret"`
	}
	e.Admin(tb, "POST", "/admin/v1/orgs/"+orgID+"/keys", map[string]any{"name": "k1", "permissions": []string{"admin"}}, 201, &k)
	return k.Secret
}

// Get sends GET /v1/things with secret as a bearer token (none when empty)
// to h and returns the status.
func Get(h http.Handler, secret string) int {
	req := httptest.NewRequest("GET", "/v1/things", nil)
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code
}

// State is everything a request may change: plans, organizations, their
// keys and request usage (monthly windows).
type State struct {
	Plans []keys.Plan
	Orgs  []keys.Org
	Keys  map[string][]keys.Key
	Usage map[string]quota.Usage
}

// Snapshot reads the State at at, so a test can tell what a request changed.
func (e *Env) Snapshot(tb testing.TB, at time.Time) State {
	tb.Helper()
	ctx := context.Background()
	s := State{Keys: map[string][]keys.Key{}, Usage: map[string]quota.Usage{}}
	var err error
	if s.Plans, err = e.Store.Plans(ctx); err != nil {
		tb.Fatal(err)
	}
	if s.Orgs, err = e.Store.Orgs(ctx); err != nil {
		tb.Fatal(err)
	}
	for _, o := range s.Orgs {
		if s.Keys[o.ID], err = e.Store.Keys(ctx, o.ID); err != nil {
			tb.Fatal(err)
		}
		if s.Usage[o.ID], err = e.Manage.Counter().Usage(ctx, o.ID, "", quota.PeriodMonth, at); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}
