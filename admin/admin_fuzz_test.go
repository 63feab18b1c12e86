package admin_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/sidecar"
)

// fuzzNow is the fixed clock of the fuzz targets.
var fuzzNow = time.Unix(1700000000, 0)

// operatorRoutes are every route of the operator API; {id}, {name} and
// {plan} are filled from the fuzz input. New routes go at the end, so the
// seeds' route numbers keep their meaning.
var operatorRoutes = []struct{ method, path string }{
	{http.MethodPost, "/admin/v1/plans"},
	{http.MethodGet, "/admin/v1/plans"},
	{http.MethodPost, "/admin/v1/orgs"},
	{http.MethodGet, "/admin/v1/orgs"},
	{http.MethodGet, "/admin/v1/orgs/{id}"},
	{http.MethodPatch, "/admin/v1/orgs/{id}"},
	{http.MethodGet, "/admin/v1/orgs/{id}/suborgs"},
	{http.MethodPost, "/admin/v1/orgs/{id}/keys"},
	{http.MethodGet, "/admin/v1/orgs/{id}/keys"},
	{http.MethodPatch, "/admin/v1/orgs/{id}/keys/{name}"},
	{http.MethodDelete, "/admin/v1/orgs/{id}/keys/{name}"},
	{http.MethodPatch, "/admin/v1/plans/{plan}"},
	{http.MethodGet, "/admin/v1/orgs/{id}/keys/{name}"},
	{http.MethodPost, "/admin/v1/orgs/{id}/keys/{name}/rotate"},
}

// storeState is everything a request may change (sidecartest.State).
type storeState = sidecartest.State

func snapshot(t *testing.T, e *sidecartest.Env) storeState { return e.Snapshot(t, fuzzNow) }

// newAdminEnv is a sidecar with plan 1, organization org-1 and its admin
// key k1, and a second key k2 with a per-key maximum.
func newAdminEnv(tb testing.TB) *sidecartest.Env {
	e := sidecartest.New(tb, sidecar.Options{Now: func() time.Time { return fuzzNow }})
	e.SetupOrg(tb, 1, 1<<40, map[string]int64{"ingress": 100}, "org-1")
	e.Admin(tb, "POST", "/admin/v1/orgs/org-1/keys", map[string]any{"name": "k2", "permissions": []string{"read"}, "max_api_requests": 10}, 201, nil)
	return e
}

// FuzzOperatorBody sends arbitrary bodies to every operator route, with
// arbitrary organization ids (or plan ids) and key names in the path. No answer may be a
// 5xx; every answer but 204 and the mux's redirects is JSON; a refused
// request changes nothing in the store. The sidecar is built once and
// rebuilt only after a request that changed it, so each input starts from
// the same state.
func FuzzOperatorBody(f *testing.F) {
	f.Add(uint8(0), "", "", []byte(`{"id":2,"name":"p2","price":"1.00","period":"day","max_api_requests":5,"limits":{"egress":1}}`))
	f.Add(uint8(5), "", "", []byte(`{"max_api_requests":1e400}`))
	e := newAdminEnv(f)
	f.Fuzz(func(t *testing.T, route uint8, id, name string, body []byte) {
		rt := operatorRoutes[int(route)%len(operatorRoutes)]
		if id == "" {
			id = "org-1"
		}
		if name == "" {
			name = "k2"
		}
		plan := "1"
		if strings.Contains(rt.path, "{plan}") && id != "org-1" {
			plan = id
		}
		p := strings.NewReplacer("{id}", id, "{name}", name, "{plan}", plan).Replace(rt.path)
		req := httptest.NewRequest(rt.method, "/", bytes.NewReader(body))
		req.URL.Path = p
		req.Header.Set("Authorization", "Bearer "+sidecartest.AdminToken)
		req.Header.Set("Content-Type", "application/json")
		before := snapshot(t, e)
		rec := httptest.NewRecorder()
		e.Sidecar.Admin.ServeHTTP(rec, req)
		after := snapshot(t, e)
		if rec.Code >= 500 {
			t.Fatalf("%s %q: status %d: %s", rt.method, p, rec.Code, rec.Body)
		}
		if rec.Code != http.StatusNoContent && (rec.Code < 300 || rec.Code > 399) && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %q: status %d, answer is not JSON: %q", rt.method, p, rec.Code, rec.Body)
		}
		changed := !reflect.DeepEqual(before, after)
		if changed && (rec.Code < 200 || rec.Code > 299) {
			t.Fatalf("%s %q: refused with %d (%s) but the store changed:\nbefore %+v\nafter  %+v", rt.method, p, rec.Code, rec.Body, before, after)
		}
		if changed {
			e = newAdminEnv(t)
		}
	})
}
