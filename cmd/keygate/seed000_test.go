package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Seed 000 (GET /api/v0/stats, GET /api/v0/plans, POST /api/v0/key,
// GET /api/v0/keys, DELETE /api/v0/key), end to end on both stores. The
// helpers here serve the seed 001 and 003 tests too.

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// meteringUpstream reports metered usage on /pin/ paths, as a storage
// backend would, and records every request.
type meteringUpstream struct{ recorder }

func (m *meteringUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/pin/") {
		w.Header().Set("X-Keygate-Usage", "pinned_bytes=+1024, pinned_count=+1")
	}
	m.recorder.ServeHTTP(w, r)
}

// upstreamBody is what the recorder answers: its length is the egress of
// one proxied request.
const upstreamBody = "hello from upstream\n"

// seedPlans creates the two plans of the seed 000 example.
func (g *gate) seedPlans() {
	g.t.Helper()
	g.admin("POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "price": "0.00", "period": "month", "max_api_requests": 1000,
		"limits": map[string]int64{"pinned_count": 100, "pinned_bytes": 1073741824, "ingress": 5368709120, "egress": 5368709120, "ipns": 3}}, 201, nil)
	g.admin("POST", "/admin/v1/plans", map[string]any{"id": 3, "name": "Plan0", "price": "$ 9.99", "period": "month", "max_api_requests": nil,
		"limits": map[string]int64{"pinned_count": 2000, "pinned_bytes": 107374182400, "ingress": 21474836480, "egress": 21474836480, "ipns": 1}}, 201, nil)
}

// createOrg creates an organization through the operator API and returns
// its id.
func (g *gate) createOrg(body map[string]any) string {
	g.t.Helper()
	var org struct {
		ID string `json:"id"`
	}
	g.admin("POST", "/admin/v1/orgs", body, 201, &org)
	return org.ID
}

// createKey creates a key through the operator API.
func (g *gate) createKey(org, name string, perms ...string) newKey {
	g.t.Helper()
	var k newKey
	g.admin("POST", "/admin/v1/orgs/"+org+"/keys", map[string]any{"name": name, "permissions": perms}, 201, &k)
	return k
}

// apiKey is the X-API-Key header of a secret.
func apiKey(secret string) map[string]string { return map[string]string{"X-API-Key": secret} }

// jsonCall sends a request and decodes its JSON answer.
func jsonCall(t *testing.T, method, url string, hdr map[string]string, body string) (int, map[string]any, string) {
	t.Helper()
	status, h, b := call(t, method, url, hdr, body)
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q, body %s", method, url, ct, b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: decoding %s: %v", method, url, b, err)
	}
	return status, m, strings.TrimSpace(string(b))
}

// jsonKind names the JSON type of a decoded value.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "?"
}

// checkKinds fails unless obj has exactly the fields of want, of the JSON
// types named there.
func checkKinds(t *testing.T, what string, obj any, want map[string]string) {
	t.Helper()
	m, ok := obj.(map[string]any)
	if !ok {
		t.Fatalf("%s: %v is a %s, want an object", what, obj, jsonKind(obj))
	}
	for k, kind := range want {
		v, ok := m[k]
		if !ok {
			t.Errorf("%s: field %q missing in %v", what, k, m)
		} else if jsonKind(v) != kind {
			t.Errorf("%s: field %q = %v is a %s, want %s", what, k, v, jsonKind(v), kind)
		}
	}
	for k := range m {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected field %q in %v", what, k, m)
		}
	}
}

// pollUntil calls check until it returns "" or the deadline passes; the
// meters are flushed to the store once a second, and there is no signal to
// wait on from outside the process.
func pollUntil(t *testing.T, within time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// keyNames lists the names of the keys of an organization (operator API).
func (g *gate) keyNames(org string) []string {
	g.t.Helper()
	var ks []struct {
		Name string `json:"name"`
	}
	g.admin("GET", "/admin/v1/orgs/"+org+"/keys", nil, 200, &ks)
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.Name
	}
	slices.Sort(out)
	return out
}

func TestSeed000(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		up := &meteringUpstream{}
		srv := httptest.NewServer(up)
		defer srv.Close()
		env = mergeEnv(withUpstream(env, srv.URL), map[string]string{"KEYGATE_PROVIDER": "gw3", "KEYGATE_AUTH_CACHE_TTL": "1m"})
		g := startGate(t, env)
		g.seedPlans()
		org := g.createOrg(map[string]any{"name": "John Doe", "email": "example@example.com", "email_verified": true, "plan_id": 1})
		k3 := g.createKey(org, "k3", "read")
		k4 := g.createKey(org, "k4", "admin")
		data := "http://" + g.l.Data
		admin := apiKey(k4.AccessSecret)

		t.Run("plans", func(t *testing.T) {
			status, _, raw := jsonCall(t, "GET", data+"/api/v0/plans", apiKey(k3.AccessSecret), "")
			want := `{"code":200,"msg":"","data":[` +
				`{"id":1,"name":"Free","price":"0.00","pinned_count_limit":100,"pinned_bytes_limit":1073741824,"ingress_limit":5368709120,"egress_limit":5368709120,"ipns_limit":3,"requests_limit":1000},` +
				`{"id":3,"name":"Plan0","price":"$ 9.99","pinned_count_limit":2000,"pinned_bytes_limit":107374182400,"ingress_limit":21474836480,"egress_limit":21474836480,"ipns_limit":1,"requests_limit":null}]}`
			if status != 200 || raw != want {
				t.Errorf("got %d\n%s\nwant\n%s", status, raw, want)
			}
		})

		stats := func(t *testing.T) (int, map[string]any, string) {
			return jsonCall(t, "GET", data+"/api/v0/stats", apiKey(k3.AccessSecret), "")
		}
		t.Run("stats of a fresh account", func(t *testing.T) {
			status, _, raw := stats(t)
			now := time.Now().UTC()
			nextMonth := time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC).Unix()
			want := `{"code":200,"msg":"ok","data":{"name":"John Doe","provider":"gw3","email":"example@example.com","email_verified":true,"plan":"Free",` +
				`"pinned_count":0,"pinned_count_limit":100,"pinned_bytes":0,"pinned_bytes_limit":1073741824,"ingress":0,"ingress_limit":5368709120,` +
				`"egress":0,"egress_limit":5368709120,"ipns":0,"ipns_limit":3,"requests":0,"requests_limit":1000,` +
				fmt.Sprintf(`"period_resets_at":%d}}`, nextMonth)
			if status != 200 || raw != want {
				t.Errorf("got %d\n%s\nwant\n%s", status, raw, want)
			}
		})

		t.Run("every credential form", func(t *testing.T) {
			for name, hdr := range map[string]map[string]string{
				"bearer":  {"Authorization": "Bearer " + k3.AccessSecret},
				"api-key": apiKey(k3.AccessSecret),
				"pair":    {"X-Access-Key": k3.AccessKey, "X-Access-Secret": k3.AccessSecret},
			} {
				if status, m, raw := jsonCall(t, "GET", data+"/api/v0/stats", hdr, ""); status != 200 || m["code"] != 200.0 {
					t.Errorf("%s: %d %s", name, status, raw)
				}
			}
		})

		t.Run("upstream-reported usage shows in stats, self-served routes are free", func(t *testing.T) {
			status, h, body := call(t, "POST", data+"/pin/add", admin, "x")
			if status != 200 || string(body) != upstreamBody {
				t.Fatalf("data path: %d %s", status, body)
			}
			if v := h.Values("X-Keygate-Usage"); len(v) != 0 {
				t.Errorf("X-Keygate-Usage reached the client: %v", v)
			}
			want := map[string]float64{"pinned_bytes": 1024, "pinned_count": 1, "ingress": 1, "egress": float64(len(upstreamBody)), "ipns": 0, "requests": 1}
			pollUntil(t, 5*time.Second, func() string {
				_, m, raw := stats(t)
				d, _ := m["data"].(map[string]any)
				for k, v := range want {
					if d[k] != v {
						return "stats: " + raw
					}
				}
				return ""
			})
		})

		var created map[string]any
		t.Run("create key", func(t *testing.T) {
			status, m, raw := jsonCall(t, "POST", data+"/api/v0/key", admin, `{"name":"test_key","permissions":["read","write","pin","unpin"]}`)
			if status != 200 || m["code"] != 200.0 || m["msg"] != "ok" {
				t.Fatalf("got %d %s", status, raw)
			}
			checkKinds(t, "response", m, map[string]string{"code": "number", "msg": "string", "data": "object"})
			checkKinds(t, "data", m["data"], map[string]string{"access_key": "string", "access_secret": "string"})
			created = m["data"].(map[string]any)
			if !uuidPattern.MatchString(created["access_key"].(string)) {
				t.Errorf("access_key %v is not a UUID", created["access_key"])
			}
		})
		if created == nil {
			t.FailNow()
		}
		secret := created["access_secret"].(string)
		pair := map[string]string{"X-Access-Key": created["access_key"].(string), "X-Access-Secret": secret}

		t.Run("new key works at once", func(t *testing.T) {
			if status, _, body := call(t, "PUT", data+"/v1/things", pair, "x"); status != 200 {
				t.Errorf("new key: %d %s", status, body)
			}
		})

		t.Run("list keys", func(t *testing.T) {
			status, m, raw := jsonCall(t, "GET", data+"/api/v0/keys", admin, "")
			if status != 200 || m["code"] != 200.0 || m["msg"] != "ok" {
				t.Fatalf("got %d %s", status, raw)
			}
			list, ok := m["data"].([]any)
			if !ok || len(list) != 3 {
				t.Fatalf("data: %s", raw)
			}
			perms := map[string]string{}
			for _, item := range list {
				checkKinds(t, "key", item, map[string]string{"name": "string", "access_key": "string", "permissions": "array"})
				it := item.(map[string]any)
				b, _ := json.Marshal(it["permissions"])
				perms[it["name"].(string)] = string(b)
			}
			want := map[string]string{"k3": `["read"]`, "k4": `["admin"]`, "test_key": `["read","write","pin","unpin"]`}
			for k, v := range want {
				if perms[k] != v {
					t.Errorf("key %s: permissions %s, want %s", k, perms[k], v)
				}
			}
			for _, s := range []string{secret, k3.AccessSecret, k4.AccessSecret} {
				if strings.Contains(raw, s) {
					t.Errorf("the key list shows a secret: %s", raw)
				}
			}
		})

		t.Run("delete key", func(t *testing.T) {
			status, _, raw := jsonCall(t, "DELETE", data+"/api/v0/key", admin, `{"name":"test_key"}`)
			if status != 200 || raw != `{"code":200,"msg":"ok"}` {
				t.Fatalf("got %d %s", status, raw)
			}
			if status, _, body := call(t, "GET", data+"/v1/things", pair, ""); status != 403 {
				t.Errorf("deleted key: %d %s", status, body)
			}
		})

		if env["KEYGATE_REDIS_URL"] != "" {
			t.Run("deletion reaches a second sidecar within 1s", func(t *testing.T) {
				b := startGate(t, env)
				status, m, raw := jsonCall(t, "POST", data+"/api/v0/key", admin, `{"name":"shared","permissions":["read"]}`)
				if status != 200 {
					t.Fatalf("create: %d %s", status, raw)
				}
				hdr := apiKey(m["data"].(map[string]any)["access_secret"].(string))
				if status, _, body := call(t, "GET", "http://"+b.l.Data+"/", hdr, ""); status != 200 {
					t.Fatalf("second sidecar before delete: %d %s", status, body)
				}
				if status, _, raw := jsonCall(t, "DELETE", data+"/api/v0/key", admin, `{"name":"shared"}`); status != 200 {
					t.Fatalf("delete: %d %s", status, raw)
				}
				pollUntil(t, time.Second, func() string {
					if status, _, _ := call(t, "GET", "http://"+b.l.Data+"/", hdr, ""); status != 403 {
						return "second sidecar still admits the deleted key (cache TTL 1m)"
					}
					return ""
				})
			})
		}

		t.Run("errors", func(t *testing.T) {
			before := g.keyNames(org)
			big := `{"name":"` + strings.Repeat("a", 1<<20) + `","permissions":["read"]}`
			long := strings.Repeat("n", 129)
			cases := []struct {
				name, method, path string
				hdr                map[string]string
				body               string
				status             int
				msg                string
			}{
				{"no credential", "GET", "/api/v0/stats", nil, "", 401, "Valid API key required"},
				{"invalid key", "GET", "/api/v0/plans", apiKey("kg_nope"), "", 403, "Invalid API key"},
				{"create needs admin", "POST", "/api/v0/key", apiKey(k3.AccessSecret), `{"name":"x","permissions":["read"]}`, 403, `API key lacks the "admin" permission`},
				{"list needs admin", "GET", "/api/v0/keys", apiKey(k3.AccessSecret), "", 403, `API key lacks the "admin" permission`},
				{"delete needs admin", "DELETE", "/api/v0/key", apiKey(k3.AccessSecret), `{"name":"k4"}`, 403, `API key lacks the "admin" permission`},
				{"malformed json", "POST", "/api/v0/key", admin, `{"name":`, 400, "malformed JSON in request body"},
				{"not an object", "POST", "/api/v0/key", admin, `["x"]`, 400, "request body must be a JSON object"},
				{"empty body", "POST", "/api/v0/key", admin, ``, 400, "request body must be a JSON object"},
				{"wrong type of name", "POST", "/api/v0/key", admin, `{"name":5,"permissions":["read"]}`, 400, `field "name" must be a string`},
				{"wrong type of permissions", "POST", "/api/v0/key", admin, `{"name":"x","permissions":"read"}`, 400, `field "permissions" must be a list`},
				{"unknown field", "POST", "/api/v0/key", admin, `{"name":"x","permissions":["read"],"admin":true}`, 400, `unknown field "admin"`},
				{"unknown permission", "POST", "/api/v0/key", admin, `{"name":"x","permissions":["fly"]}`, 400, `invalid permissions: unknown permission "fly" (want one of admin, read, write, pin, unpin)`},
				{"no permissions", "POST", "/api/v0/key", admin, `{"name":"x","permissions":[]}`, 400, "invalid permissions: at least one permission is required"},
				{"missing name", "POST", "/api/v0/key", admin, `{"permissions":["read"]}`, 400, "invalid name: must not be empty"},
				{"over-long name", "POST", "/api/v0/key", admin, `{"name":"` + long + `","permissions":["read"]}`, 400, "invalid name: must be at most 128 bytes"},
				{"duplicate name", "POST", "/api/v0/key", admin, `{"name":"k3","permissions":["read"]}`, 409, `a key named "k3" already exists`},
				{"oversized body", "POST", "/api/v0/key", admin, big, 413, "Request body larger than 1048576 bytes"},
				{"delete unknown", "DELETE", "/api/v0/key", admin, `{"name":"nope"}`, 404, `no key named "nope"`},
				{"delete without name", "DELETE", "/api/v0/key", admin, `{}`, 400, "invalid name: must not be empty"},
				{"delete malformed", "DELETE", "/api/v0/key", admin, `{"name":"k3"`, 400, "malformed JSON in request body"},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					status, _, raw := jsonCall(t, tc.method, data+tc.path, tc.hdr, tc.body)
					want, _ := json.Marshal(map[string]any{"code": tc.status, "msg": tc.msg})
					if status != tc.status || raw != string(want) {
						t.Errorf("got %d %s, want %d %s", status, raw, tc.status, want)
					}
				})
			}
			if after := g.keyNames(org); !slices.Equal(before, after) {
				t.Errorf("bad input changed the keys: %v → %v", before, after)
			}
		})
	})
}
