package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
)

// TestEveryRouteDuringStoreOutage calls every documented operation, with a
// valid credential and body, while Redis is down: each answers 503 with
// Retry-After in its own envelope (validated against openapi.json by
// callReader), never a 500 or a hang, in both failure modes.
func TestEveryRouteDuringStoreOutage(t *testing.T) {
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			up := httptest.NewServer(&recorder{})
			defer up.Close()
			srv := redistest.Start(t)
			g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_REDIS_URL": srv.URL(), "KEYGATE_AUTHZ_ADDR": "127.0.0.1:0",
				"KEYGATE_FAILURE_MODE": mode, "KEYGATE_REDIS_TIMEOUT": "100ms", "KEYGATE_LOG_LEVEL": "error"})
			g.admin("POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "price": "0.00", "period": "month", "max_api_requests": 1000}, 201, nil)
			// No login: the login of create_apikey fails at its store read,
			// before any password check, whether the username exists or not.
			org := g.createOrg(map[string]any{"name": "Reseller", "plan_id": 1, "partner": true})
			owner := g.createKey(org, "owner", "admin")
			p := g.partner(owner)
			p.ok(t, "POST", "create", "", `{"name":"Sub","uuid":"sub_001"}`)
			hdr := apiKey(owner.AccessSecret)
			// The key is verified (and cached) before the outage.
			if status, _, body := call(t, "GET", "http://"+g.l.Data+"/api/v1/account", hdr, ""); status != 200 {
				t.Fatalf("before the outage: %d %s", status, body)
			}
			srv.Stop()

			ts := "?ts=" + strconv.FormatInt(time.Now().Unix(), 10)
			form := func(fields string) (map[string]string, string) {
				return map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, fields
			}
			type request struct {
				path, body string
				hdr        map[string]string
			}
			admin := map[string]string{"Authorization": "Bearer " + testAdminToken}
			orgPath := "/admin/v1/orgs/" + org
			calls := map[string]request{
				"createPlan":        {"/admin/v1/plans", `{"id":2,"name":"Pro","period":"month"}`, admin},
				"listPlans":         {"/admin/v1/plans", "", admin},
				"createOrg":         {"/admin/v1/orgs", `{"name":"x","plan_id":1}`, admin},
				"listOrgs":          {"/admin/v1/orgs", "", admin},
				"getOrg":            {orgPath, "", admin},
				"patchOrg":          {orgPath, `{"name":"y"}`, admin},
				"listSubOrgs":       {orgPath + "/suborgs", "", admin},
				"createKey":         {orgPath + "/keys", `{"name":"k2","permissions":["read"]}`, admin},
				"listKeys":          {orgPath + "/keys", "", admin},
				"patchKey":          {orgPath + "/keys/owner", `{"max_api_requests":5}`, admin},
				"getKey":            {orgPath + "/keys/owner", "", admin},
				"rotateKey":         {orgPath + "/keys/owner/rotate", `{"grace":"1m"}`, admin},
				"patchPlan":         {"/admin/v1/plans/1", `{"name":"Free 2"}`, admin},
				"deleteKey":         {orgPath + "/keys/owner", "", admin},
				"getAccount":        {"/api/v1/account", "", hdr},
				"getStats":          {"/api/v0/stats", "", hdr},
				"getPlans":          {"/api/v0/plans", "", hdr},
				"createV0Key":       {"/api/v0/key", `{"name":"k3","permissions":["read"]}`, hdr},
				"deleteV0Key":       {"/api/v0/key", `{"name":"k3"}`, hdr},
				"listV0Keys":        {"/api/v0/keys", "", hdr},
				"partnerCreate":     {"/api/v0/partner/user/create" + ts, `{"name":"Sub 2","uuid":"sub_002"}`, hdr},
				"partnerStats":      {"/api/v0/partner/user/stats" + ts + "&uuid=sub_001", "", hdr},
				"partnerUpdatePlan": {"/api/v0/partner/user/update-plan" + ts, `{"uuid":"sub_001","plan_id":1}`, hdr},
				"partnerCreateKey":  {"/api/v0/partner/user/key" + ts, `{"uuid":"sub_001","name":"k4","permissions":["read"]}`, hdr},
				"partnerDeleteKey":  {"/api/v0/partner/user/key" + ts, `{"uuid":"sub_001","name":"k4"}`, hdr},
				"partnerKeys":       {"/api/v0/partner/user/keys" + ts + "&uuid=sub_001", "", hdr},
				"userAPIKeysGet":    {"/user/apikeys", "", hdr},
				"authorize":         {"/authz", "", map[string]string{"X-API-Key": owner.AccessSecret, "X-Original-URI": "/v1/things"}},
			}
			for op, fields := range map[string]string{
				"userAPIKeys":      "apikey=" + owner.AccessSecret,
				"userCreateAPIKey": "username=test&password=test&access_level=full",
				"userDeleteAPIKey": "apikey=" + owner.AccessSecret + "&delete_key=" + owner.AccessKey,
			} {
				h, body := form(fields)
				calls[op] = request{map[string]string{"userAPIKeys": "/user/apikeys", "userCreateAPIKey": "/user/create_apikey",
					"userDeleteAPIKey": "/user/delete_apikey"}[op], body, h}
			}

			// All at once: each waits for its store deadline.
			c := loadContract(t)
			var wg sync.WaitGroup
			for path, item := range c.doc.Paths.Map() {
				for method, op := range item.Operations() {
					if path == "/openapi.json" {
						continue // no store involved
					}
					r, ok := calls[op.OperationID]
					if !ok {
						t.Errorf("%s %s (%s): no request for it in this test", method, path, op.OperationID)
						continue
					}
					base := "http://" + g.l.Data
					switch item.Extensions["x-keygate-listener"] {
					case "admin":
						base = "http://" + g.l.Admin
					case "authz":
						base = "http://" + g.l.Authz
					}
					// The one decision, like the data path's: in open mode
					// a verified key is admitted uncounted.
					admitted := op.OperationID == "authorize" && mode == "open"
					wg.Add(1)
					go func() {
						defer wg.Done()
						start := time.Now()
						status, h, body, err := send(t, method, base+r.path, r.hdr, r.body)
						switch {
						case err != nil:
							t.Errorf("%s %s: %v", method, path, err)
						case admitted:
							if status != 200 || h.Get("Ratelimit") != "" {
								t.Errorf("%s %s (%s) during the outage in open mode: %d %v, want 200 uncounted", method, path, op.OperationID, status, h)
							}
						case status != 503 || h.Get("Retry-After") == "":
							t.Errorf("%s %s (%s) during the outage: %d %v %s, want 503 with Retry-After",
								method, path, op.OperationID, status, h, strings.TrimSpace(string(body)))
						case time.Since(start) > 5*time.Second:
							t.Errorf("%s %s took %s during the outage", method, path, time.Since(start))
						}
					}()
				}
			}
			wg.Wait()
		})
	}
}

// send is callReader for any goroutine: errors are returned, not fatal.
// The answer is checked against openapi.json all the same.
func send(t *testing.T, method, url string, hdr map[string]string, body string) (int, http.Header, []byte, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, err
	}
	checkAnswer(t, req, resp.StatusCode, resp.Header, b)
	return resp.StatusCode, resp.Header, b, nil
}
