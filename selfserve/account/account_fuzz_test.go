package account_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/sidecartest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/sidecar"
)

// noUpstream fails every forwarded request: self-served routes never
// reach the upstream.
type noUpstream struct{}

func (noUpstream) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("self-served request forwarded")
}

// FuzzAccountBody sends GET /api/v1/account (seed 002) with arbitrary
// bodies, queries, Content-Types and credentials ($KEY stands for the
// admin key's secret). No answer may be a 5xx, every answer is JSON, and
// nothing changes: the route is free and reads only.
func FuzzAccountBody(f *testing.F) {
	f.Add("", "Bearer $KEY", "", []byte(nil))
	f.Add("a=%zz", "Bearer kg_x", "application/json", []byte(`{"x":1}`))
	now := time.Unix(1700000000, 0)
	e := sidecartest.New(f, sidecar.Options{Now: func() time.Time { return now }, Transport: noUpstream{}})
	secret := e.SetupOrg(f, 1, 1<<40, nil, "org-1")
	state := func(t *testing.T) any {
		ks, err := e.Store.Keys(context.Background(), "org-1")
		if err != nil {
			t.Fatal(err)
		}
		u, err := e.Manage.Counter().Usage(context.Background(), "org-1", ks[0].UID, quota.PeriodMonth, now)
		if err != nil {
			t.Fatal(err)
		}
		return struct {
			Keys  []keys.Key
			Usage quota.Usage
		}{ks, u}
	}
	f.Fuzz(func(t *testing.T, query, authz, ct string, body []byte) {
		req := httptest.NewRequest(http.MethodGet, "/api/v1/account", bytes.NewReader(body))
		req.URL.RawQuery = query
		if authz == "Bearer $KEY" {
			authz = "Bearer " + secret
		}
		req.Header.Set("Authorization", authz)
		req.Header.Set("Content-Type", ct)
		before := state(t)
		rec := httptest.NewRecorder()
		e.Data.ServeHTTP(rec, req)
		if rec.Code >= 500 || !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("status %d: %q", rec.Code, rec.Body)
		}
		if after := state(t); !reflect.DeepEqual(before, after) {
			t.Fatalf("status %d, and the store changed:\nbefore %+v\nafter  %+v", rec.Code, before, after)
		}
	})
}
