package main

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// TestKeyLifecycleReachesOtherSidecars: disabling, expiring, reducing the
// permissions of and rotating a key on one sidecar is refused (or admitted)
// by another sharing the Redis within a second, although its cache would
// keep the old state a minute; the key keeps its uid and counters.
func TestKeyLifecycleReachesOtherSidecars(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	srv := redistest.Start(t)
	env := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_AUTH_CACHE_TTL": "1m"}
	a := startGate(t, env)
	b := startGate(t, env)
	org, ks := a.setupOrg(1, 1000, "month", map[string][]string{"k": {"read", "write"}})
	k := ks["k"]
	keyPath := "/admin/v1/orgs/" + org + "/keys/k"
	status := func(g *gate, method, secret string) int {
		s, _, _ := call(t, method, "http://"+g.l.Data+"/thing", apiKey(secret), "")
		return s
	}
	// wantOnB waits (at most 1s) for B to answer want; A must already.
	wantOnB := func(step, method, secret string, want int) {
		t.Helper()
		if got := status(a, method, secret); got != want {
			t.Errorf("%s: A answers %d, want %d at once", step, got, want)
		}
		pollUntil(t, time.Second, func() string {
			if got := status(b, method, secret); got != want {
				return step + ": B still answers the old way"
			}
			return ""
		})
	}
	wantOnB("before", "POST", k.AccessSecret, 200)

	a.admin("PATCH", keyPath, map[string]any{"enabled": false}, 200, nil)
	wantOnB("disabled", "GET", k.AccessSecret, 403)
	a.admin("PATCH", keyPath, map[string]any{"enabled": true}, 200, nil)
	wantOnB("enabled again", "GET", k.AccessSecret, 200)

	a.admin("PATCH", keyPath, map[string]any{"permissions": []string{"read"}}, 200, nil)
	wantOnB("write taken away", "POST", k.AccessSecret, 403)

	past := time.Now().Add(-time.Second).UTC().Format(time.RFC3339)
	a.admin("PATCH", keyPath, map[string]any{"expires_at": past}, 200, nil)
	wantOnB("expired", "GET", k.AccessSecret, 403)
	a.admin("PATCH", keyPath, map[string]any{"expires_at": nil}, 200, nil)
	wantOnB("no longer expiring", "GET", k.AccessSecret, 200)

	// Rotation with a grace: both secrets work everywhere; the uid stays.
	var rot struct {
		UID                     string `json:"uid"`
		AccessSecret            string `json:"access_secret"`
		PreviousSecretExpiresAt string `json:"previous_secret_expires_at"`
	}
	a.admin("POST", keyPath+"/rotate", map[string]any{"grace": "1h"}, 200, &rot)
	if rot.UID != k.UID || rot.AccessSecret == "" || rot.AccessSecret == k.AccessSecret {
		t.Fatalf("rotation: %+v", rot)
	}
	if exp, err := time.Parse(time.RFC3339, rot.PreviousSecretExpiresAt); err != nil || time.Until(exp) < 59*time.Minute {
		t.Errorf("previous_secret_expires_at %q", rot.PreviousSecretExpiresAt)
	}
	wantOnB("new secret", "GET", rot.AccessSecret, 200)
	wantOnB("old secret during the grace", "GET", k.AccessSecret, 200)
	// A rotation without a grace retires the previous secret at once.
	var rot2 struct {
		AccessSecret string `json:"access_secret"`
	}
	a.admin("POST", keyPath+"/rotate", nil, 200, &rot2)
	wantOnB("secret retired by a rotation without grace", "GET", rot.AccessSecret, 403)
	wantOnB("first secret, retired twice", "GET", k.AccessSecret, 403)
	wantOnB("latest secret", "GET", rot2.AccessSecret, 200)

	// One key, one set of counters, through every change; and last_used_at
	// shows up within 5 s of the first use.
	var view struct {
		UID        string  `json:"uid"`
		Enabled    bool    `json:"enabled"`
		LastUsedAt *string `json:"last_used_at"`
	}
	pollUntil(t, 5*time.Second, func() string {
		a.admin("GET", keyPath, nil, 200, &view)
		if view.LastUsedAt == nil {
			return "last_used_at still null"
		}
		return ""
	})
	if view.UID != k.UID || !view.Enabled {
		t.Errorf("key view %+v", view)
	}
	var o struct {
		Usage struct {
			CurrentUsage int64 `json:"current_usage"`
		} `json:"usage"`
	}
	a.admin("GET", "/admin/v1/orgs/"+org, nil, 200, &o)
	if o.Usage.CurrentUsage < 8 {
		t.Errorf("usage %d after the admitted requests", o.Usage.CurrentUsage)
	}
	// An empty PATCH changes nothing.
	a.admin("PATCH", keyPath, map[string]any{}, 200, nil)
	wantOnB("after an empty patch", "GET", rot2.AccessSecret, 200)
}
