package gate

import (
	"path"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/keygate/keygate/keys"
)

func TestRules(t *testing.T) {
	rs, err := ParseRules([]byte(`
- method: POST
  path: /api/v0/pin/*
  permission: pin
  cost: 5
- method: "*"
  path: /free/*/x
  cost: 0
- method: GET
  path: /exact
  permission: admin
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		method, path string
		perm         keys.Permission
		cost         int64
	}{
		{"POST", "/api/v0/pin/abc", keys.PermPin, 5},
		{"POST", "/api/v0/pin", keys.PermPin, 5},
		{"POST", "/api/v0/pinned", keys.PermWrite, 1},
		{"GET", "/api/v0/pin/abc", keys.PermRead, 1},
		{"DELETE", "/free/a/x", keys.PermWrite, 0},
		{"GET", "/free/a/b/x", keys.PermRead, 1},
		{"GET", "/exact", keys.PermAdmin, 1},
		// One trailing slash, any case, and HEAD for GET (issue 12):
		// spellings an upstream treats as the same route.
		{"GET", "/exact/", keys.PermAdmin, 1},
		{"HEAD", "/exact", keys.PermAdmin, 1},
		{"GET", "/EXACT", keys.PermAdmin, 1},
		{"POST", "/API/v0/PIN/add", keys.PermPin, 5},
		{"POST", "/api/v0/pin/", keys.PermPin, 5},
		{"GET", "/exact/x", keys.PermRead, 1},
		{"GET", "/exactly", keys.PermRead, 1},
		{"DELETE", "/FREE/a/X/", keys.PermWrite, 0},
		{"HEAD", "/", keys.PermRead, 1},
		{"OPTIONS", "/", keys.PermRead, 1},
		{"PATCH", "/", keys.PermWrite, 1},
	}
	for _, tc := range cases {
		d := rs.Match(tc.method, tc.path)
		if d.Permission != tc.perm || d.Cost != tc.cost {
			t.Errorf("%s %s: %s/%d, want %s/%d", tc.method, tc.path, d.Permission, d.Cost, tc.perm, tc.cost)
		}
	}
}

func TestRulesInvalid(t *testing.T) {
	cases := map[string]string{
		"- method: POST\n  path: /a\n  permission: fly": `route rule 1 (POST /a, line 1): invalid permissions: unknown permission "fly"`,
		"- method: GET\n  path: a":                      `route rule 1 (GET a, line 1): path "a": must start with /`,
		"- path: /a\n- method: get\n  path: /b":         `route rule 2 (get /b, line 2): method "get"`,
		"- path: /a\n  cost: -1":                        "cost -1: must be between 0 and 1000000",
		"- path: /a[\n":                                 "syntax error in pattern",
		"- path: /a\n  colour: red":                     `route rule 1 ( /a, line 1): unknown field "colour" (want method, path, permission, cost)`,
		"path: /a":                                      "route rules:",
	}
	for in, want := range cases {
		_, err := ParseRules([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to contain %q", in, err, want)
		}
	}
	if rs, err := ParseRules(nil); err != nil || len(rs.rules) != 0 {
		t.Errorf("empty file: %v", err)
	}
}

func FuzzMatchPath(f *testing.F) {
	f.Add("/a/*", "/a/b")
	f.Add("/a[", "/a")
	f.Fuzz(func(t *testing.T, pattern, p string) {
		_ = matchPath(pattern, p) // must not panic
	})
}

// FuzzParseRules feeds arbitrary route-rule files to the parser: it must
// not panic, every rule it accepts must pass validation again, the rules
// must survive a YAML round trip unchanged, a rule matches every path its
// pattern matches as written (case folding and the trailing slash only
// widen it), and matching any request with them must not panic and must
// answer a known permission and a bounded cost.
func FuzzParseRules(f *testing.F) {
	f.Add([]byte("- method: POST\n  path: /api/v0/pin/*\n  permission: pin\n  cost: 5\n"), "POST", "/api/v0/pin/add")
	f.Add([]byte(`[{"method":"GET","path":"/free/*","cost":0}]`), "GET", "/free/a/b")
	f.Fuzz(func(t *testing.T, file []byte, method, p string) {
		rs, err := ParseRules(file)
		if err != nil {
			if len(rs.rules) != 0 {
				t.Fatalf("error %v with %d rules", err, len(rs.rules))
			}
			return
		}
		for i, r := range rs.rules {
			if err := r.validate(); err != nil {
				t.Fatalf("accepted rule %d %+v does not validate: %v", i+1, r, err)
			}
		}
		if len(rs.rules) > 0 {
			again, err := yaml.Marshal(rs.rules)
			if err != nil {
				t.Fatalf("marshal accepted rules: %v", err)
			}
			rs2, err := ParseRules(again)
			if err != nil {
				t.Fatalf("accepted rules refused after a round trip: %v\n%s", err, again)
			}
			if !reflect.DeepEqual(rs.rules, rs2.rules) {
				t.Fatalf("round trip changed the rules:\n%+v\n%+v", rs.rules, rs2.rules)
			}
		}
		for i, r := range rs.rules {
			// Folding case must only widen a rule: it still matches every
			// path its pattern matches as written.
			if _, err := path.Match(strings.TrimSuffix(rs.patterns[i], "/*"), "/"); err != nil {
				t.Fatalf("rule %d path %q: its matching form %q is not a valid pattern: %v", i+1, r.Path, rs.patterns[i], err)
			}
			// The rule alone, with a cost no file may give, tells whether it
			// matched.
			const marker = -42
			one := Rules{rules: []Rule{r}, patterns: rs.patterns[i : i+1]}
			one.rules[0].Cost = new(int64)
			*one.rules[0].Cost = marker
			m := r.Method
			if m == "" || m == "*" {
				m = "PATCH"
			}
			for _, q := range []string{p, r.Path, strings.TrimSuffix(r.Path, "*") + "x"} {
				if matchesAsWritten(r.Path, q) && one.Match(m, q).Cost != marker {
					t.Fatalf("rule %d path %q does not match %q, which its pattern matches as written", i+1, r.Path, q)
				}
			}
		}
		for _, m := range []string{method, "GET", "HEAD", "POST", "*"} {
			for _, q := range []string{p, "/", "/api/v0/pin/add"} {
				d := rs.Match(m, q)
				if _, err := keys.ParsePermission(string(d.Permission)); err != nil || d.Cost < 0 || d.Cost > maxCost {
					t.Fatalf("Match(%q, %q) = %+v", m, q, d)
				}
			}
		}
	})
}

// matchesAsWritten is a rule pattern's match without case folding or
// slash trimming: the least a rule must match.
func matchesAsWritten(pattern, p string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "/*"); ok {
		return p == prefix || strings.HasPrefix(p, prefix+"/")
	}
	ok, err := path.Match(pattern, p)
	return ok && err == nil
}
