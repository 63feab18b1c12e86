package main

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kgate "github.com/keygate/keygate/gate"
)

// Route rules (KEYGATE_ROUTES_FILE): the shipped example parses and does
// what it says on a running sidecar, and an invalid rule stops `keygate
// serve` with one line naming the rule.

const routesExample = "../../deploy/routes.example.yaml"

func TestRoutesFileInvalidRuleStopsServe(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, rules, want string
	}{
		{"unknown permission", "- method: POST\n  path: /api/v0/pin/*\n  permission: pin\n  cost: 5\n- method: GET\n  path: /x\n  permission: fly\n",
			`KEYGATE_ROUTES_FILE: route rule 2 (GET /x, line 5): invalid permissions: unknown permission "fly"`},
		{"negative cost", "- method: GET\n  path: /a\n  cost: -1\n",
			"KEYGATE_ROUTES_FILE: route rule 1 (GET /a, line 1): cost -1: must be between 0 and 1000000"},
		{"relative path", "- method: PUT\n  path: v1/items\n",
			`KEYGATE_ROUTES_FILE: route rule 1 (PUT v1/items, line 1): path "v1/items": must start with /`},
		{"lower-case method", "- method: post\n  path: /a\n",
			`KEYGATE_ROUTES_FILE: route rule 1 (post /a, line 1): method "post": want an upper-case HTTP method or *`},
		{"bad pattern", "- path: /a/[\n",
			`KEYGATE_ROUTES_FILE: route rule 1 ( /a/[, line 1): path "/a/[": syntax error in pattern`},
		{"unknown field", "- path: /a\n  costs: 3\n", `KEYGATE_ROUTES_FILE: route rule 1 ( /a, line 1): unknown field "costs" (want method, path, permission, cost)`},
		{"wrong type", "- path: /a\n  cost: [1]\n", "KEYGATE_ROUTES_FILE: route rule 1 ( /a, line 1): line 2: cannot unmarshal"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			if err := os.WriteFile(f, []byte(tc.rules), 0o600); err != nil {
				t.Fatal(err)
			}
			err := runServeBriefly(t, f)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("case %d: serve returned %v, want an error starting %q", i, err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("the error is not one line: %q", err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		err := runServeBriefly(t, filepath.Join(dir, "nope.yaml"))
		if err == nil || !strings.HasPrefix(err.Error(), "KEYGATE_ROUTES_FILE: reading route rules: ") {
			t.Fatalf("serve returned %v", err)
		}
	})
}

// runServeBriefly runs `keygate serve` with the routes file; a sidecar that
// starts anyway is stopped after a few seconds (and the test then fails on
// the nil error).
func runServeBriefly(t *testing.T, routesFile string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	return run(ctx, []string{"serve"}, []string{
		"KEYGATE_UPSTREAM_URL=http://127.0.0.1:9",
		"KEYGATE_LISTEN_ADDR=127.0.0.1:0", "KEYGATE_ADMIN_ADDR=127.0.0.1:0", "KEYGATE_METRICS_ADDR=127.0.0.1:0",
		"KEYGATE_ROUTES_FILE=" + routesFile,
	}, io.Discard, &stderr)
}

func TestRoutesExampleOnARunningSidecar(t *testing.T) {
	if _, err := kgate.LoadRules(routesExample); err != nil {
		t.Fatalf("%s does not parse: %v", routesExample, err)
	}
	rec := &recorder{}
	up := httptest.NewServer(rec)
	defer up.Close()
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": up.URL, "KEYGATE_ROUTES_FILE": routesExample})
	_, ks := g.setupOrg(1, 1000, "month", map[string][]string{
		"rw": {"read", "write"}, "pinner": {"read", "pin"}, "unpinner": {"unpin"},
	})
	data := "http://" + g.l.Data
	usage := func(k newKey) float64 {
		t.Helper()
		status, m, raw := jsonCall(t, "GET", data+"/api/v1/account", apiKey(k.AccessSecret), "")
		if status != 200 {
			t.Fatalf("account: %d %s", status, raw)
		}
		return m["api_key"].(map[string]any)["current_usage"].(float64)
	}
	cases := []struct {
		name, method, path, key string
		status                  int
		msg                     string  // error message when refused
		cost                    float64 // usage added
	}{
		{"pin needs pin", "POST", "/api/v0/pin/QmX", "rw", 403, `API key lacks the "pin" permission`, 0},
		{"pin costs 5", "POST", "/api/v0/pin/QmX", "pinner", 200, "", 5},
		{"pin prefix itself", "POST", "/api/v0/pin", "pinner", 200, "", 5},
		{"unpin needs unpin", "DELETE", "/api/v0/pin/QmX", "pinner", 403, `API key lacks the "unpin" permission`, 0},
		{"unpin costs the default 1", "DELETE", "/api/v0/pin/QmX", "unpinner", 200, "", 1},
		{"healthz is free", "GET", "/healthz", "pinner", 200, "", 0},
		{"unmatched GET: read, 1", "GET", "/api/v0/pinned", "pinner", 200, "", 1},
		{"unmatched POST: write", "POST", "/api/v0/pinned", "pinner", 403, `API key lacks the "write" permission`, 0},
		{"unmatched POST: write, 1", "POST", "/api/v0/pinned", "rw", 200, "", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := ks[tc.key]
			before, reached := usage(k), rec.count()
			status, _, body := call(t, tc.method, data+tc.path, apiKey(k.AccessSecret), "")
			if status != tc.status {
				t.Fatalf("got %d %s, want %d", status, body, tc.status)
			}
			if tc.status != 200 {
				if msg := errorMessage(t, body); msg != tc.msg {
					t.Errorf("message %q, want %q", msg, tc.msg)
				}
				if rec.count() != reached {
					t.Errorf("a refused request reached the upstream")
				}
			}
			if got := usage(k) - before; got != tc.cost {
				t.Errorf("charged %v, want %v", got, tc.cost)
			}
		})
	}
}
