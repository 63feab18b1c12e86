package main

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// TestExactQuotaAcrossSidecars: 400 concurrent requests from two keys of one
// organization through two sidecars sharing one Redis, org quota 100 →
// exactly 100 reach the upstream and 300 get 429 with Retry-After.
func TestExactQuotaAcrossSidecars(t *testing.T) {
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	srv := redistest.Start(t)
	// A generous store deadline: the race detector slows everything down,
	// and a timed-out charge would be admitted uncounted in open mode.
	env := map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_LOG_LEVEL": "warn", "KEYGATE_REDIS_TIMEOUT": "5s", "KEYGATE_FAILURE_MODE": "closed"}
	a, b := startGate(t, env), startGate(t, env)
	org, ks := a.setupOrg(1, 100, "month", map[string][]string{"k1": {"read"}, "k2": {"read"}})

	var ok, refused, other atomic.Int64
	var wg sync.WaitGroup
	for i := range 400 {
		g := []*gate{a, b}[i%2]
		k := []string{"k1", "k2"}[(i/2)%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, h, body := call(t, "GET", "http://"+g.l.Data+"/item", map[string]string{"X-API-Key": ks[k].AccessSecret}, "")
			switch {
			case status == 200:
				ok.Add(1)
			case status == 429 && h.Get("Retry-After") != "":
				var e dataErrorBody
				if json.Unmarshal(body, &e) != nil || !e.Error || e.StatusCode != 429 || e.Message != "Organization quota exceeded: 100 of 100 requests used" {
					t.Errorf("429 body %s", body)
				}
				refused.Add(1)
			default:
				other.Add(1)
				t.Errorf("unexpected %d %v %s", status, h, body)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 100 || refused.Load() != 300 || rec.count() != 100 {
		t.Fatalf("admitted %d, refused %d, other %d, upstream saw %d; want 100/300/0/100", ok.Load(), refused.Load(), other.Load(), rec.count())
	}
	var view struct {
		Usage struct {
			CurrentUsage int64 `json:"current_usage"`
		} `json:"usage"`
	}
	a.admin("GET", "/admin/v1/orgs/"+org, nil, 200, &view)
	if view.Usage.CurrentUsage != 100 {
		t.Errorf("org usage %d, want 100 (refusals must not count)", view.Usage.CurrentUsage)
	}
}

type dataErrorBody struct {
	Error      bool   `json:"error"`
	StatusCode int    `json:"statusCode"`
	Message    string `json:"message"`
}

// TestKeyMaxAndWindow: a per-key max caps that key while the org's other
// keys go on; a 2s period admits again after it turns; RateLimit headers
// describe the tighter quota.
func TestKeyMaxAndWindow(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		up := httptest.NewServer(&recorder{})
		defer up.Close()
		g := startGate(t, withUpstream(env, up.URL))
		org, ks := g.setupOrg(1, 10, "2s", map[string][]string{"free": {"read"}})
		var capped newKey
		g.admin("POST", "/admin/v1/orgs/"+org+"/keys", map[string]any{"name": "capped", "permissions": []string{"read"}, "max_api_requests": 3}, 201, &capped)
		data := "http://" + g.l.Data + "/"

		// Align to the start of a 2s window so the test cannot straddle one.
		now := time.Now()
		time.Sleep(time.Until(now.Truncate(2 * time.Second).Add(2*time.Second + 50*time.Millisecond)))

		for i := range 3 {
			status, h, _ := call(t, "GET", data, map[string]string{"X-API-Key": capped.AccessSecret}, "")
			want := fmt.Sprintf(`"key";r=%d;t=`, 2-i)
			if status != 200 || h.Get("RateLimit-Policy") != `"key";q=3;w=2, "org";q=10;w=2` || len(h.Get("RateLimit")) < len(want) || h.Get("RateLimit")[:len(want)] != want {
				t.Fatalf("capped request %d: %d policy %q state %q", i, status, h.Get("RateLimit-Policy"), h.Get("RateLimit"))
			}
		}
		status, h, body := call(t, "GET", data, map[string]string{"X-API-Key": capped.AccessSecret}, "")
		if status != 429 || h.Get("Retry-After") == "" {
			t.Fatalf("4th capped request: %d %s", status, body)
		}
		if ra, _ := strconv.Atoi(h.Get("Retry-After")); ra < 1 || ra > 2 {
			t.Errorf("Retry-After %q, want 1..2 for a 2s window", h.Get("Retry-After"))
		}
		var e dataErrorBody
		_ = json.Unmarshal(body, &e)
		if e.Message != "API key quota exceeded: 3 of 3 requests used" {
			t.Errorf("key refusal message %q", e.Message)
		}
		status, h, _ = call(t, "GET", data, map[string]string{"X-API-Key": ks["free"].AccessSecret}, "")
		if status != 200 || h.Get("RateLimit-Policy") != `"org";q=10;w=2` {
			t.Errorf("other key while one is capped: %d %q", status, h.Get("RateLimit-Policy"))
		}

		// The window turns: the capped key is admitted again.
		time.Sleep(time.Until(time.Now().Truncate(2 * time.Second).Add(2*time.Second + 50*time.Millisecond)))
		if status, _, body := call(t, "GET", data, map[string]string{"X-API-Key": capped.AccessSecret}, ""); status != 200 {
			t.Errorf("after the window turned: %d %s", status, body)
		}
	})
}

// TestAccountEndpoint checks GET /api/v1/account field for field against
// seed 002.
func TestAccountEndpoint(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		up := httptest.NewServer(&recorder{})
		defer up.Close()
		g := startGate(t, withUpstream(env, up.URL))
		org, ks := g.setupOrg(1, 5000000, "month", map[string][]string{"Cloud Firewall": {"read"}})
		k := ks["Cloud Firewall"]
		var capped newKey
		g.admin("POST", "/admin/v1/orgs/"+org+"/keys", map[string]any{"name": "capped", "permissions": []string{"read"}, "max_api_requests": 1000}, 201, &capped)
		data := "http://" + g.l.Data
		if status, _, _ := call(t, "GET", data+"/x", map[string]string{"X-API-Key": k.AccessSecret}, ""); status != 200 {
			t.Fatal("proxied request failed")
		}
		for _, hdr := range []map[string]string{{"Authorization": "Bearer " + k.AccessSecret}, {"X-API-Key": k.AccessSecret}} {
			status, _, body := call(t, "GET", data+"/api/v1/account", hdr, "")
			if status != 200 {
				t.Fatalf("account: %d %s", status, body)
			}
			var got map[string]any
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			apiKey, _ := got["api_key"].(map[string]any)
			q, _ := got["organization_quota"].(map[string]any)
			created, _ := apiKey["created_at"].(string)
			if _, err := time.Parse("2006-01-02T15:04:05.000Z", created); err != nil {
				t.Errorf("created_at %q is not ISO with milliseconds: %v", created, err)
			}
			want := map[string]any{
				"counts_toward_quota": false, "request_cost": float64(0), "organization_id": org,
			}
			for f, v := range want {
				if got[f] != v {
					t.Errorf("%s = %v, want %v", f, got[f], v)
				}
			}
			wantKey := map[string]any{"uid": k.UID, "name": "Cloud Firewall", "current_usage": float64(1), "max_api_requests": nil}
			for f, v := range wantKey {
				if apiKey[f] != v {
					t.Errorf("api_key.%s = %v, want %v", f, apiKey[f], v)
				}
			}
			wantQuota := map[string]any{
				"total_usage": float64(1), "total_quota": float64(5000000), "current_usage": float64(1),
				"max_api_requests": float64(5000000), "allocated_api_key_quota": float64(1000),
				"available_api_key_quota": float64(4999000), "source": "plan", "unlimited": false,
			}
			for f, v := range wantQuota {
				if q[f] != v {
					t.Errorf("organization_quota.%s = %v, want %v", f, q[f], v)
				}
			}
			if len(got) != 5 || len(apiKey) != 5 || len(q) != 8 {
				t.Errorf("field counts differ from seed 002: %s", body)
			}
		}
		// The account call itself counted nothing.
		_, _, body := call(t, "GET", data+"/api/v1/account", map[string]string{"X-API-Key": k.AccessSecret}, "")
		var again struct {
			APIKey struct {
				CurrentUsage int64 `json:"current_usage"`
			} `json:"api_key"`
		}
		_ = json.Unmarshal(body, &again)
		if again.APIKey.CurrentUsage != 1 {
			t.Errorf("account calls counted toward quota: usage %d", again.APIKey.CurrentUsage)
		}
		// Errors as in the seed.
		if status, _, body := call(t, "GET", data+"/api/v1/account", nil, ""); status != 401 || string(body) != `{"statusCode":401,"statusMessage":"Valid API key required"}`+"\n" {
			t.Errorf("no key: %d %s", status, body)
		}
		if status, _, body := call(t, "GET", data+"/api/v1/account", map[string]string{"X-API-Key": "kg_bad"}, ""); status != 403 || string(body) != `{"error":true,"statusCode":403,"message":"Invalid API key"}`+"\n" {
			t.Errorf("bad key: %d %s", status, body)
		}
		// Override and unlimited sources.
		g.admin("PATCH", "/admin/v1/orgs/"+org, map[string]any{"max_api_requests": 7000}, 200, nil)
		assertSource(t, data, k.AccessSecret, "override", false)
		g.admin("PATCH", "/admin/v1/orgs/"+org, map[string]any{"unlimited": true}, 200, nil)
		assertSource(t, data, k.AccessSecret, "unlimited", true)
	})
}

func assertSource(t *testing.T, data, secret, source string, unlimited bool) {
	t.Helper()
	_, _, body := call(t, "GET", data+"/api/v1/account", map[string]string{"X-API-Key": secret}, "")
	var a struct {
		Q struct {
			Source    string `json:"source"`
			Unlimited bool   `json:"unlimited"`
		} `json:"organization_quota"`
	}
	if err := json.Unmarshal(body, &a); err != nil || a.Q.Source != source || a.Q.Unlimited != unlimited {
		t.Errorf("source/unlimited = %q/%v, want %q/%v (%s)", a.Q.Source, a.Q.Unlimited, source, unlimited, body)
	}
}
