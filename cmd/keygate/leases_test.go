package main

import (
	"net/http/httptest"
	"testing"

	"github.com/keygate/keygate/internal/redistest"
)

// TestLeasesGoBackAtShutdown: a sidecar with quota leases (the default)
// admits from a block, and on shutdown gives back what it did not spend:
// another sidecar then sees the org's usage exactly as admitted, and a
// sidecar with KEYGATE_QUOTA_LEASES=off charges the same counter.
func TestLeasesGoBackAtShutdown(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	srv := redistest.Start(t)
	env := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_LOG_LEVEL": "warn"}
	a := startGate(t, env)
	off := startGate(t, mergeEnv(env, map[string]string{"KEYGATE_QUOTA_LEASES": "off"}))
	org, ks := a.setupOrg(1, 1000, "month", map[string][]string{"k": {"read"}})
	hdr := map[string]string{"X-API-Key": ks["k"].AccessSecret}
	for range 5 {
		if status, _, body := call(t, "GET", "http://"+a.l.Data+"/", hdr, ""); status != 200 {
			t.Fatalf("%d %s", status, body)
		}
	}
	if status, _, body := call(t, "GET", "http://"+off.l.Data+"/", hdr, ""); status != 200 {
		t.Fatalf("leases off: %d %s", status, body)
	}
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	var view struct {
		Usage struct {
			CurrentUsage int64 `json:"current_usage"`
		} `json:"usage"`
	}
	off.admin("GET", "/admin/v1/orgs/"+org, nil, 200, &view)
	if view.Usage.CurrentUsage != 6 || rec.count() != 6 {
		t.Errorf("after the leasing sidecar stopped: org usage %d, upstream saw %d; want 6, 6", view.Usage.CurrentUsage, rec.count())
	}
}
