package main

import (
	"encoding/json"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Seed 001 (the partner API under /api/v0/partner/user/), end to end on both
// stores.

const seedUUID = "123e4567-e89b-12d3-a456-426614174000"

// partnerClient calls the partner routes with one credential.
type partnerClient struct {
	base string
	hdr  map[string]string
}

func (g *gate) partner(k newKey) partnerClient {
	// The seed's headers: the access-key/secret pair.
	return partnerClient{base: "http://" + g.l.Data + "/api/v0/partner/user/",
		hdr: map[string]string{"X-Access-Key": k.AccessKey, "X-Access-Secret": k.AccessSecret}}
}

// do calls route with query; ts=now is added unless query contains "ts="
// (so "nots=1" sends no ts at all).
func (c partnerClient) do(t *testing.T, method, route, query, body string) (int, map[string]any, string) {
	t.Helper()
	if !strings.Contains(query, "ts=") {
		if query != "" {
			query += "&"
		}
		query += "ts=" + strconv.FormatInt(time.Now().Unix(), 10)
	}
	return jsonCall(t, method, c.base+route+"?"+query, c.hdr, body)
}

// ok fails unless the answer is the seed's bare {"code":200,"msg":"ok"}.
func (c partnerClient) ok(t *testing.T, method, route, query, body string) {
	t.Helper()
	if status, _, raw := c.do(t, method, route, query, body); status != 200 || raw != `{"code":200,"msg":"ok"}` {
		t.Fatalf("%s %s: %d %s", method, route, status, raw)
	}
}

// stats returns a sub-account's stats data.
func (c partnerClient) stats(t *testing.T, uuid string) map[string]any {
	t.Helper()
	status, m, raw := c.do(t, "GET", "stats", "uuid="+uuid, "")
	if status != 200 || m["code"] != 200.0 || m["msg"] != "ok" {
		t.Fatalf("stats %s: %d %s", uuid, status, raw)
	}
	return m["data"].(map[string]any)
}

func TestSeed001(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		up := &recorder{}
		srv := httptest.NewServer(up)
		defer srv.Close()
		g := startGate(t, mergeEnv(withUpstream(env, srv.URL), map[string]string{"KEYGATE_PROVIDER": "gw3"}))
		limits := map[string]int64{"pinned_count": 100, "pinned_bytes": 1073741824, "ingress": 5368709120, "egress": 5368709120, "ipns": 1}
		g.admin("POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Starter", "price": "0.00", "period": "month", "max_api_requests": 1000, "limits": limits}, 201, nil)
		g.admin("POST", "/admin/v1/plans", map[string]any{"id": 6, "name": "Advanced", "price": "$ 19.99", "period": "month", "max_api_requests": 100000, "limits": limits}, 201, nil)
		g.admin("POST", "/admin/v1/plans", map[string]any{"id": 7, "name": "Quick", "price": "0.00", "period": "2s", "max_api_requests": 10}, 201, nil)
		orgA := g.createOrg(map[string]any{"name": "Partner A", "plan_id": 1, "partner": true})
		orgB := g.createOrg(map[string]any{"name": "Partner B", "plan_id": 1, "partner": true})
		plain := g.createOrg(map[string]any{"name": "Not a partner", "plan_id": 1})
		a := g.partner(g.createKey(orgA, "admin", "admin"))
		aRead := g.partner(g.createKey(orgA, "reader", "read", "write"))
		b := g.partner(g.createKey(orgB, "admin", "admin"))
		n := g.partner(g.createKey(plain, "admin", "admin"))
		data := "http://" + g.l.Data
		now := time.Now().UTC()
		nextMonth := time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC).Unix()

		t.Run("create", func(t *testing.T) {
			a.ok(t, "POST", "create", "", `{"email":"example@example.com","name":"John Doe","uuid":"`+seedUUID+`"}`)
			a.ok(t, "POST", "create", "", `{"email":"jack@example.com","name":"Jack","uuid":"jack_001","plan_id":6}`)
			var o struct {
				ID        string `json:"id"`
				PlanID    int64  `json:"plan_id"`
				PartnerID string `json:"partner_id"`
			}
			g.admin("GET", "/admin/v1/orgs/"+seedUUID, nil, 200, &o)
			if o.ID != seedUUID || o.PlanID != 1 || o.PartnerID != orgA {
				t.Errorf("sub-account %+v: want id %s, the partner's plan 1, partner %s", o, seedUUID, orgA)
			}
		})

		statsKinds := map[string]string{"name": "string", "provider": "string", "email": "string", "email_verified": "boolean",
			"plan": "string", "next_plan": "string", "next_bill_at": "number", "requests": "number", "requests_limit": "number"}
		for _, m := range []string{"pinned_count", "pinned_bytes", "ingress", "egress", "ipns"} {
			statsKinds[m], statsKinds[m+"_limit"] = "number", "number"
		}
		t.Run("stats", func(t *testing.T) {
			// The seed's example: GET …/stats?uuid=jack_001&ts=….
			status, m, raw := a.do(t, "GET", "stats", "uuid=jack_001", "")
			if status != 200 {
				t.Fatalf("%d %s", status, raw)
			}
			checkKinds(t, "response", m, map[string]string{"code": "number", "msg": "string", "data": "object"})
			checkKinds(t, "data", m["data"], statsKinds)
			d := m["data"].(map[string]any)
			want := map[string]any{"name": "Jack", "provider": "gw3", "email": "jack@example.com", "email_verified": false, "plan": "Advanced",
				"next_plan": "Advanced", "next_bill_at": float64(nextMonth), "pinned_count": 0.0, "pinned_count_limit": 100.0, "ipns_limit": 1.0,
				"requests": 0.0, "requests_limit": 100000.0}
			for k, v := range want {
				if d[k] != v {
					t.Errorf("%s = %v, want %v", k, d[k], v)
				}
			}
		})

		t.Run("update-plan now and next period", func(t *testing.T) {
			a.ok(t, "POST", "update-plan", "", `{"uuid":"`+seedUUID+`","plan_id":6}`)
			if d := a.stats(t, seedUUID); d["plan"] != "Advanced" || d["next_plan"] != "Advanced" || d["requests_limit"] != 100000.0 {
				t.Errorf("after update-plan now: %v", d)
			}
			a.ok(t, "POST", "update-plan", "", `{"uuid":"`+seedUUID+`","plan_id":1,"when":"next_period"}`)
			d := a.stats(t, seedUUID)
			if d["plan"] != "Advanced" || d["next_plan"] != "Starter" || d["next_bill_at"] != float64(nextMonth) {
				t.Errorf("after update-plan next_period: %v", d)
			}
			var o struct {
				PlanID     int64  `json:"plan_id"`
				NextPlanID *int64 `json:"next_plan_id"`
			}
			g.admin("GET", "/admin/v1/orgs/"+seedUUID, nil, 200, &o)
			if o.PlanID != 6 || o.NextPlanID == nil || *o.NextPlanID != 1 {
				t.Errorf("operator view: plan %d next %v", o.PlanID, o.NextPlanID)
			}
		})

		t.Run("a scheduled plan applies when the next period begins", func(t *testing.T) {
			a.ok(t, "POST", "create", "", `{"email":"q@example.com","name":"Quick","uuid":"quick","plan_id":7}`)
			scheduled := time.Now().Unix()
			a.ok(t, "POST", "update-plan", "", `{"uuid":"quick","plan_id":1,"when":"next_period"}`)
			d := a.stats(t, "quick")
			billAt, _ := d["next_bill_at"].(float64)
			switch {
			case d["plan"] == "Quick":
				if d["next_plan"] != "Starter" || billAt <= float64(scheduled) || billAt > float64(scheduled+2) {
					t.Errorf("scheduled: %v", d)
				}
			case time.Now().Unix()/2 == scheduled/2:
				t.Errorf("switched before the 2s window ended: %v", d)
			}
			pollUntil(t, 4*time.Second, func() string {
				if d := a.stats(t, "quick"); d["plan"] != "Starter" || d["next_plan"] != "Starter" || d["requests_limit"] != 1000.0 {
					return "plan not switched: " + d["plan"].(string)
				}
				return ""
			})
			var o struct {
				PlanID     int64  `json:"plan_id"`
				NextPlanID *int64 `json:"next_plan_id"`
			}
			g.admin("GET", "/admin/v1/orgs/quick", nil, 200, &o)
			if o.PlanID != 1 || o.NextPlanID != nil {
				t.Errorf("switch not stored: plan %d next %v", o.PlanID, o.NextPlanID)
			}
		})

		var subKey map[string]string
		t.Run("key, keys, delete key", func(t *testing.T) {
			status, m, raw := a.do(t, "POST", "key", "", `{"uuid":"`+seedUUID+`","name":"test_key","permissions":["read","write","pin","unpin"]}`)
			if status != 200 || m["code"] != 200.0 || m["msg"] != "ok" {
				t.Fatalf("key: %d %s", status, raw)
			}
			checkKinds(t, "data", m["data"], map[string]string{"access_key": "string", "access_secret": "string"})
			nk := m["data"].(map[string]any)
			secret := nk["access_secret"].(string)
			hdr := map[string]string{"X-Access-Key": nk["access_key"].(string), "X-Access-Secret": secret}

			if status, _, body := call(t, "GET", data+"/v1/things", hdr, ""); status != 200 {
				t.Fatalf("sub-account key on the data path: %d %s", status, body)
			}
			if got := up.last(t).Header.Get("X-Keygate-Org-Id"); got != seedUUID {
				t.Errorf("X-Keygate-Org-Id = %q, want the sub-account's uuid", got)
			}
			if status, m, raw := jsonCall(t, "GET", data+"/api/v1/account", apiKey(secret), ""); status != 200 || m["organization_id"] != seedUUID {
				t.Errorf("account endpoint for a sub-account key: %d %s", status, raw)
			}

			// The seed's keys example, typo included: "?uuid=…&?ts=…".
			status, m, raw = a.do(t, "GET", "keys", "uuid="+seedUUID+"&?ts="+strconv.FormatInt(time.Now().Unix(), 10), "")
			if status != 200 || m["code"] != 200.0 {
				t.Fatalf("keys: %d %s", status, raw)
			}
			list, _ := m["data"].([]any)
			if len(list) != 1 {
				t.Fatalf("keys: %s", raw)
			}
			checkKinds(t, "key", list[0], map[string]string{"name": "string", "access_key": "string", "permissions": "array"})
			if perms, _ := json.Marshal(list[0].(map[string]any)["permissions"]); list[0].(map[string]any)["name"] != "test_key" || string(perms) != `["read","write","pin","unpin"]` {
				t.Errorf("keys: %s", raw)
			}
			if strings.Contains(raw, secret) {
				t.Errorf("keys shows a secret")
			}

			a.ok(t, "DELETE", "key", "", `{"uuid":"`+seedUUID+`","name":"test_key"}`)
			if status, _, body := call(t, "GET", data+"/v1/things", hdr, ""); status != 403 {
				t.Errorf("deleted sub-account key: %d %s", status, body)
			}

			status, m, raw = a.do(t, "POST", "key", "", `{"uuid":"jack_001","name":"live","permissions":["read"]}`)
			if status != 200 {
				t.Fatalf("key: %d %s", status, raw)
			}
			subKey = apiKey(m["data"].(map[string]any)["access_secret"].(string))
		})

		t.Run("refusals", func(t *testing.T) {
			subsBefore := len(g.subOrgs(orgA))
			keysBefore := g.keyNames("jack_001")
			ts := func(d time.Duration) string { return "ts=" + strconv.FormatInt(time.Now().Add(d).Unix(), 10) }
			noSub := `{"code":404,"msg":"no sub-account with this uuid"}`
			big := `{"uuid":"x","email":"` + strings.Repeat("e", 1<<20) + `"}`
			cases := []struct {
				name          string
				c             partnerClient
				method, route string
				query, body   string
				status        int
				want          string
			}{
				{"ts absent", a, "GET", "stats", "uuid=jack_001&nots=1", "", 401, `{"code":401,"msg":"missing ts query parameter (Unix time in seconds)"}`},
				{"ts empty", a, "GET", "stats", "uuid=jack_001&ts=", "", 401, `{"code":401,"msg":"missing ts query parameter (Unix time in seconds)"}`},
				{"ts not a number", a, "GET", "stats", "uuid=jack_001&ts=yesterday", "", 401, `{"code":401,"msg":"ts query parameter is not a number of seconds"}`},
				{"ts too old", a, "POST", "create", ts(-time.Hour), `{"uuid":"late","name":"Late"}`, 401, `{"code":401,"msg":"ts query parameter is too old (allowed skew 5m0s)"}`},
				{"ts too far ahead", a, "POST", "key", ts(time.Hour), `{"uuid":"jack_001","name":"x","permissions":["read"]}`, 401, `{"code":401,"msg":"ts query parameter is too far in the future (allowed skew 5m0s)"}`},
				{"ts twice", a, "GET", "keys", "uuid=jack_001&" + ts(0) + "&" + ts(0), "", 401, `{"code":401,"msg":"ts query parameter given more than once"}`},
				{"no credential", partnerClient{base: a.base}, "GET", "stats", "uuid=jack_001", "", 401, `{"code":401,"msg":"Valid API key required"}`},
				{"not a partner", n, "POST", "create", "", `{"uuid":"sneaky","name":"S"}`, 403, `{"code":403,"msg":"the organization of this API key is not a partner"}`},
				{"not an admin key", aRead, "GET", "stats", "uuid=jack_001", "", 403, `{"code":403,"msg":"API key lacks the \"admin\" permission"}`},
				{"B reads A's sub-account", b, "GET", "stats", "uuid=jack_001", "", 404, noSub},
				{"B lists A's keys", b, "GET", "keys", "uuid=jack_001", "", 404, noSub},
				{"B re-plans A's sub-account", b, "POST", "update-plan", "", `{"uuid":"jack_001","plan_id":1}`, 404, noSub},
				{"B adds a key to A's sub-account", b, "POST", "key", "", `{"uuid":"jack_001","name":"x","permissions":["admin"]}`, 404, noSub},
				{"B deletes A's key", b, "DELETE", "key", "", `{"uuid":"jack_001","name":"live"}`, 404, noSub},
				{"unknown uuid", a, "GET", "stats", "uuid=nobody", "", 404, noSub},
				{"A reads another partner itself", a, "GET", "stats", "uuid=" + orgB, "", 404, noSub},
				{"stats without uuid", a, "GET", "stats", "", "", 400, `{"code":400,"msg":"invalid uuid: is required"}`},
				{"duplicate uuid", a, "POST", "create", "", `{"uuid":"jack_001","name":"Again"}`, 409, `{"code":409,"msg":"an account with this uuid already exists"}`},
				{"uuid of another partner's org", b, "POST", "create", "", `{"uuid":"` + orgA + `","name":"Again"}`, 409, `{"code":409,"msg":"an account with this uuid already exists"}`},
				{"create without uuid", a, "POST", "create", "", `{"name":"No id"}`, 400, `{"code":400,"msg":"invalid uuid: is required"}`},
				{"create with a bad uuid", a, "POST", "create", "", `{"uuid":"a b","name":"x"}`, 400, `{"code":400,"msg":"invalid uuid: want 1 to 64 letters, digits, '.', '_' or '-' (a UUID fits)"}`},
				{"create without name", a, "POST", "create", "", `{"uuid":"noname"}`, 400, `{"code":400,"msg":"invalid name: must not be empty"}`},
				{"create with a bad email", a, "POST", "create", "", `{"uuid":"bad-mail","name":"x","email":"nope"}`, 400, `{"code":400,"msg":"invalid email: not an email address"}`},
				{"create with an unknown plan", a, "POST", "create", "", `{"uuid":"bad-plan","name":"x","plan_id":99}`, 404, `{"code":404,"msg":"plan 99 does not exist"}`},
				{"create malformed", a, "POST", "create", "", `{"uuid":`, 400, `{"code":400,"msg":"malformed JSON in request body"}`},
				{"create wrong type", a, "POST", "create", "", `{"uuid":7,"name":"x"}`, 400, `{"code":400,"msg":"field \"uuid\" must be a string"}`},
				{"create unknown field", a, "POST", "create", "", `{"uuid":"u","name":"x","partner":true}`, 400, `{"code":400,"msg":"unknown field \"partner\""}`},
				{"create oversized", a, "POST", "create", "", big, 413, `{"code":413,"msg":"Request body larger than 1048576 bytes"}`},
				{"update-plan without plan", a, "POST", "update-plan", "", `{"uuid":"jack_001"}`, 400, `{"code":400,"msg":"invalid plan_id: is required"}`},
				{"update-plan unknown plan", a, "POST", "update-plan", "", `{"uuid":"jack_001","plan_id":99}`, 404, `{"code":404,"msg":"plan 99 does not exist"}`},
				{"update-plan bad when", a, "POST", "update-plan", "", `{"uuid":"jack_001","plan_id":1,"when":"later"}`, 400, `{"code":400,"msg":"invalid when: want \"now\" or \"next_period\""}`},
				{"update-plan plan as text", a, "POST", "update-plan", "", `{"uuid":"jack_001","plan_id":"6"}`, 400, `{"code":400,"msg":"field \"plan_id\" must be a number"}`},
				{"key unknown permission", a, "POST", "key", "", `{"uuid":"jack_001","name":"x","permissions":["root"]}`, 400, `{"code":400,"msg":"invalid permissions: unknown permission \"root\" (want one of admin, read, write, pin, unpin)"}`},
				{"key permissions as text", a, "POST", "key", "", `{"uuid":"jack_001","name":"x","permissions":"read"}`, 400, `{"code":400,"msg":"field \"permissions\" must be a list"}`},
				{"key without name", a, "POST", "key", "", `{"uuid":"jack_001","permissions":["read"]}`, 400, `{"code":400,"msg":"invalid name: must not be empty"}`},
				{"key name too long", a, "POST", "key", "", `{"uuid":"jack_001","name":"` + strings.Repeat("n", 129) + `","permissions":["read"]}`, 400, `{"code":400,"msg":"invalid name: must be at most 128 bytes"}`},
				{"key duplicate name", a, "POST", "key", "", `{"uuid":"jack_001","name":"live","permissions":["read"]}`, 409, `{"code":409,"msg":"a key named \"live\" already exists"}`},
				{"delete unknown key", a, "DELETE", "key", "", `{"uuid":"jack_001","name":"nope"}`, 404, `{"code":404,"msg":"no key named \"nope\""}`},
				{"delete malformed", a, "DELETE", "key", "", `{"uuid":"jack_001",`, 400, `{"code":400,"msg":"malformed JSON in request body"}`},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					status, _, raw := tc.c.do(t, tc.method, tc.route, tc.query, tc.body)
					if status != tc.status || raw != tc.want {
						t.Errorf("got %d %s, want %d %s", status, raw, tc.status, tc.want)
					}
				})
			}
			if got := len(g.subOrgs(orgA)); got != subsBefore {
				t.Errorf("refused requests changed A's sub-accounts: %d → %d", subsBefore, got)
			}
			if got := len(g.subOrgs(orgB)); got != 0 {
				t.Errorf("B has %d sub-accounts", got)
			}
			if after := g.keyNames("jack_001"); !slices.Equal(keysBefore, after) {
				t.Errorf("refused requests changed the keys: %v → %v", keysBefore, after)
			}
			if d := a.stats(t, "jack_001"); d["plan"] != "Advanced" {
				t.Errorf("refused requests changed the plan: %v", d["plan"])
			}
		})

		t.Run("operator lists sub-accounts and removes the partner flag", func(t *testing.T) {
			subs := g.subOrgs(orgA)
			slices.Sort(subs)
			if want := []string{seedUUID, "jack_001", "quick"}; !slices.Equal(subs, want) {
				t.Errorf("sub-accounts %v, want %v", subs, want)
			}
			g.admin("PATCH", "/admin/v1/orgs/"+orgA, map[string]any{"partner": false}, 200, nil)
			if status, _, raw := a.do(t, "GET", "stats", "uuid=jack_001", ""); status != 403 || raw != `{"code":403,"msg":"the organization of this API key is not a partner"}` {
				t.Errorf("former partner: %d %s", status, raw)
			}
			if status, _, body := call(t, "GET", data+"/v1/things", subKey, ""); status != 200 {
				t.Errorf("sub-account key after the partner flag went: %d %s", status, body)
			}
			if got := g.subOrgs(orgA); len(got) != 3 {
				t.Errorf("sub-accounts after the partner flag went: %v", got)
			}
		})
	})
}

// subOrgs lists the ids of a partner's sub-accounts (operator API).
func (g *gate) subOrgs(partner string) []string {
	g.t.Helper()
	var os []struct {
		ID string `json:"id"`
	}
	g.admin("GET", "/admin/v1/orgs/"+partner+"/suborgs", nil, 200, &os)
	out := make([]string, len(os))
	for i, o := range os {
		out[i] = o.ID
	}
	return out
}
