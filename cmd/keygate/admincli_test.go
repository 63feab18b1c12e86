package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http/httptest"
	"os/exec"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/admincli"
)

// cliResult is what one `keygate admin` run printed and how it ended.
type cliResult struct {
	code           int
	stdout, stderr string
}

// adminCLI runs `keygate admin args…` in-process (keygate's own run, as
// main calls it) against g's operator API, and records which command ran.
type adminCLI struct {
	t    *testing.T
	env  []string
	seen map[string]bool
}

func (g *gate) cli(t *testing.T) *adminCLI {
	return &adminCLI{t: t, seen: map[string]bool{},
		env: []string{admincli.EnvURL + "=http://" + g.l.Admin, admincli.EnvToken + "=" + testAdminToken}}
}

func (c *adminCLI) run(extraEnv []string, args ...string) cliResult {
	c.t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, append([]string{"admin"}, args...), append(append([]string{}, c.env...), extraEnv...), &stdout, &stderr)
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var code exitCode
	switch {
	case err == nil:
	case errors.As(err, &code):
		res.code = int(code)
	default:
		c.t.Fatalf("keygate admin %v: %v", args, err)
	}
	if strings.Contains(res.stdout+res.stderr, testAdminToken) {
		c.t.Errorf("keygate admin %v printed the admin token:\n%s%s", args, res.stdout, res.stderr)
	}
	for _, cmd := range admincli.Commands() {
		if strings.Contains(" "+strings.Join(args, " ")+" ", " "+cmd.Name+" ") {
			c.seen[cmd.Name] = true
		}
	}
	return res
}

// ok runs a command that must succeed and returns its stdout.
func (c *adminCLI) ok(args ...string) string {
	c.t.Helper()
	r := c.run(nil, args...)
	if r.code != 0 || r.stderr != "" {
		c.t.Fatalf("keygate admin %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// fails runs a command that must exit with code and a message containing
// want on stderr, printing nothing on stdout.
func (c *adminCLI) fails(code int, want string, args ...string) {
	c.t.Helper()
	c.failsEnv(nil, code, want, args...)
}

func (c *adminCLI) failsEnv(env []string, code int, want string, args ...string) {
	c.t.Helper()
	r := c.run(env, args...)
	if r.code != code || !strings.Contains(r.stderr, want) || r.stdout != "" {
		c.t.Errorf("keygate admin %s: exit %d, stdout %q, stderr %q; want exit %d and %q", strings.Join(args, " "), r.code, r.stdout, r.stderr, code, want)
	}
}

// wantLine fails unless out has a line matching the regular expression.
func wantLine(t *testing.T, out, re string) {
	t.Helper()
	if !regexp.MustCompile(`(?m)^` + re + `$`).MatchString(out) {
		t.Errorf("no line matching %q in\n%s", re, out)
	}
}

// secretIn returns the secret printed after label.
func secretIn(t *testing.T, out, label string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + label + `:\s+(kg_\S+)$`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "shown only this once") {
		t.Fatalf("no %s with its warning in\n%s", label, out)
	}
	return m[1]
}

// TestAdminCLI runs every `keygate admin` command against a running keygate
// (each store) and checks what it printed, how it exited, what the
// operator API then holds and what the data path does with the keys.
func TestAdminCLI(t *testing.T) {
	eachStore(t, func(t *testing.T, env map[string]string) {
		rec := &recorder{}
		up := httptest.NewServer(rec)
		defer up.Close()
		g := startGate(t, withUpstream(env, up.URL))
		c := g.cli(t)
		data := "http://" + g.l.Data + "/hello"
		get := func(secret string) int {
			status, _, b := call(t, "GET", data, map[string]string{"X-API-Key": secret}, "")
			if status != 200 {
				t.Logf("GET /hello: %d %s", status, b)
			}
			return status
		}

		// plans
		out := c.ok("plans", "create", "--id", "1", "--name", "Free", "--price", "0.00", "--period", "month", "--quota", "1000", "--limits", "egress=5368709120")
		wantLine(t, out, `ID +NAME +PRICE +PERIOD +QUOTA +LIMITS +KEY RATE LIMIT +ORG RATE LIMIT`)
		wantLine(t, out, `1 +Free +0\.00 +month +1000 +egress=5368709120 +- +-`)
		c.fails(admincli.ExitRefused, "keygate admin: 409 Conflict: plan 1 already exists (POST /admin/v1/plans)\n", "plans", "create", "--id", "1", "--name", "Again")
		c.fails(admincli.ExitRefused, `keygate admin: 400 Bad Request: `, "plans", "create", "--id", "2", "--name", "Bad", "--period", "fortnight")
		c.ok("plans", "patch", "1", "--key-rate-limit", "100/1m,burst=50")
		var plans []map[string]any
		g.admin("GET", "/admin/v1/plans", nil, 200, &plans)
		if len(plans) != 1 || plans[0]["max_api_requests"] != 1000.0 || !reflect.DeepEqual(plans[0]["key_rate_limit"], map[string]any{"requests": 100.0, "per": "1m", "burst": 50.0}) ||
			!reflect.DeepEqual(plans[0]["limits"], map[string]any{"egress": 5368709120.0}) {
			t.Errorf("the API holds plans %v", plans)
		}
		sameJSON(t, c.ok("plans", "list", "-o", "json"), g, "/admin/v1/plans", "")
		wantLine(t, c.ok("plans", "get", "1"), `1 +Free +0\.00 +month +1000 +egress=5368709120 +100/1m,burst=50 +-`)
		sameJSON(t, c.ok("-o", "json", "plans", "get", "1"), g, "/admin/v1/plans", "0")
		c.fails(admincli.ExitRefused, "keygate admin: 404 Not Found: no plan 9 (GET /admin/v1/plans)", "plans", "get", "9")
		c.fails(admincli.ExitUsage, "no route to delete a plan", "plans", "delete", "1")

		// organizations
		var created map[string]any
		if err := json.Unmarshal([]byte(c.ok("orgs", "create", "--name", "Acme", "--email", "ops@acme.example", "--plan", "1", "--partner", "-o", "json")), &created); err != nil {
			t.Fatal(err)
		}
		org, _ := created["id"].(string)
		var o map[string]any
		g.admin("GET", "/admin/v1/orgs/"+org, nil, 200, &o)
		if org == "" || o["name"] != "Acme" || o["partner"] != true || o["plan_id"] != 1.0 {
			t.Fatalf("created %v; the API holds %v", created, o)
		}
		wantLine(t, c.ok("orgs", "list"), org+` +Acme +ops@acme\.example +1 +partner +plan's +plan's +\S+`)
		out = c.ok("orgs", "get", org)
		wantLine(t, out, `usage: +0 of 1000 requests this period \(plan quota\); 0 allocated to keys, 1000 available`)
		wantLine(t, out, `partner: +partner`)
		c.ok("orgs", "patch", org, "--quota", "500", "--rate-limit", "100/1m", "--email-verified")
		g.admin("GET", "/admin/v1/orgs/"+org, nil, 200, &o)
		if o["max_api_requests"] != 500.0 || o["email_verified"] != true || !reflect.DeepEqual(o["rate_limit"], map[string]any{"requests": 100.0, "per": "1m"}) {
			t.Errorf("after orgs patch the API holds %v", o)
		}
		c.fails(admincli.ExitUsage, "orgs patch: nothing to change", "orgs", "patch", org)
		c.fails(admincli.ExitRefused, "keygate admin: 404 Not Found: Not found (GET /admin/v1/orgs/org_x)", "orgs", "get", "org_x")
		c.fails(admincli.ExitRefused, "keygate admin: 404 Not Found: ", "orgs", "patch", "org_x", "--name", "X")
		c.fails(admincli.ExitUsage, "no route to delete an organization", "orgs", "delete", org)

		// keys
		out = c.ok("keys", "create", org, "ci", "--permissions", "read,write,admin", "--comment", "for CI", "--rate-limit", "50/1s,burst=20")
		secret := secretIn(t, out, "SECRET")
		wantLine(t, out, `permissions: +admin,read,write`)
		if st := get(secret); st != 200 {
			t.Fatalf("the created key gets %d on the data path", st)
		}
		c.fails(admincli.ExitRefused, "keygate admin: 409 Conflict: ", "keys", "create", org, "ci", "--permissions", "read")
		out = c.ok("keys", "list", org)
		wantLine(t, out, `NAME +ACCESS KEY +PERMISSIONS +ENABLED +QUOTA +RATE LIMIT +EXPIRES +LAST USED +CREATED`)
		wantLine(t, out, `ci +\S+ +admin,read,write +yes +- +50/1s,burst=20 +never +\S+ +\S+`)
		if strings.Contains(out, "kg_") {
			t.Errorf("keys list shows a secret:\n%s", out)
		}
		sameJSON(t, c.ok("keys", "get", org, "ci", "-o", "json"), g, "/admin/v1/orgs/"+org+"/keys/ci", "")
		// (A rate limit changed under traffic starts from the old limit's
		// state, so this test sets it at creation.)
		c.ok("keys", "patch", org, "ci", "--quota", "100", "--expires", "720h", "--comment", "patched")
		var k map[string]any
		g.admin("GET", "/admin/v1/orgs/"+org+"/keys/ci", nil, 200, &k)
		exp, _ := time.Parse(time.RFC3339, k["expires_at"].(string))
		if k["max_api_requests"] != 100.0 || k["comment"] != "patched" || time.Until(exp) < 719*time.Hour || time.Until(exp) > 721*time.Hour ||
			!reflect.DeepEqual(k["rate_limit"], map[string]any{"requests": 50.0, "per": "1s", "burst": 20.0}) {
			t.Errorf("after keys patch the API holds %v", k)
		}
		wantLine(t, c.ok("keys", "get", org, "ci"), `quota: +100`)
		out = c.ok("keys", "disable", org, "ci")
		wantLine(t, out, `enabled: +no`)
		if st := get(secret); st != 403 {
			t.Errorf("a disabled key gets %d, want 403", st)
		}
		c.ok("keys", "enable", org, "ci")
		if st := get(secret); st != 200 {
			t.Errorf("an enabled key gets %d, want 200", st)
		}
		out = c.ok("keys", "rotate", org, "ci", "--grace", "1h")
		rotated := secretIn(t, out, "NEW SECRET")
		if st, old := get(rotated), get(secret); rotated == secret || st != 200 || old != 200 {
			t.Errorf("after rotation with a grace, the new secret gets %d and the old %d, want both 200", st, old)
		}

		// sub-accounts, made by the partner through the partner API
		g.partner(newKey{AccessKey: k["access_key"].(string), AccessSecret: rotated}).ok(t, "POST", "create", "", `{"name":"Sub","uuid":"sub_001"}`)
		wantLine(t, c.ok("orgs", "suborgs", org), `sub_001 +Sub +\S* +1 +sub-account of `+org+` +plan's +plan's +\S+`)
		sameJSON(t, c.ok("orgs", "suborgs", org, "-o", "json"), g, "/admin/v1/orgs/"+org+"/suborgs", "")

		// usage: the four admitted requests above, against the org's own 500
		out = c.ok("orgs", "usage", org)
		wantLine(t, out, `ORG +USED +QUOTA +SOURCE +ALLOCATED TO KEYS +AVAILABLE TO KEYS`)
		wantLine(t, out, org+` +4 +500 +override +100 +400`)

		out = c.ok("keys", "delete", org, "ci")
		if out != "deleted key ci of organization "+org+"\n" {
			t.Errorf("keys delete printed %q", out)
		}
		g.admin("GET", "/admin/v1/orgs/"+org+"/keys/ci", nil, 404, nil)
		if st := get(rotated); st != 403 {
			t.Errorf("a deleted key gets %d, want 403", st)
		}
		c.fails(admincli.ExitRefused, "keygate admin: 404 Not Found: ", "keys", "delete", org, "ci")
		c.fails(admincli.ExitUsage, "keys delete: missing NAME", "keys", "delete", org)
		r := c.run(nil, "keys", "delete", org, "-o", "json", "nope")
		if r.code != admincli.ExitRefused {
			t.Errorf("keys delete of a missing key: %+v", r)
		}

		// the document
		var doc, served map[string]any
		if err := json.Unmarshal([]byte(c.ok("openapi")), &doc); err != nil {
			t.Fatal(err)
		}
		_, _, raw := call(t, "GET", "http://"+g.l.Admin+"/openapi.json", nil, "")
		if err := json.Unmarshal(raw, &served); err != nil || !reflect.DeepEqual(doc, served) {
			t.Errorf("keygate admin openapi differs from GET /openapi.json (%v)", err)
		}

		// the token, the URL, the listener
		c.failsEnv([]string{admincli.EnvToken + "=wrong"}, admincli.ExitUnauthorized,
			"keygate admin: 401 Unauthorized: Valid admin token required (GET /admin/v1/orgs); set KEYGATE_ADMIN_TOKEN", "orgs", "list")
		c.failsEnv([]string{admincli.EnvToken + "="}, admincli.ExitUnauthorized, "no admin token: set KEYGATE_ADMIN_TOKEN", "orgs", "list")
		c.failsEnv([]string{admincli.EnvURL + "=http://" + g.l.Data}, admincli.ExitUnreachable, "is it the data listener instead of the admin listener", "orgs", "list")
		closed := closedAddr(t)
		c.fails(admincli.ExitUnreachable, "cannot reach keygate at http://"+closed+": connect: connection refused", "--url", closed, "orgs", "list")
		c.fails(admincli.ExitUnreachable, "cannot reach keygate at https://"+g.l.Admin+": ", "--url", "https://"+g.l.Admin, "orgs", "list")

		for _, cmd := range admincli.Commands() {
			if !c.seen[cmd.Name] {
				t.Errorf("keygate admin %s was not run", cmd.Name)
			}
		}
	})
}

// sameJSON fails unless out is the API's JSON at path (or, with elem, the
// list element of that index).
func sameJSON(t *testing.T, out string, g *gate, path, elem string) {
	t.Helper()
	var got, want any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("-o json printed %q: %v", out, err)
	}
	g.admin("GET", path, nil, 200, &want)
	if elem != "" {
		want = want.([]any)[0]
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("-o json printed %v, the API answers %v", got, want)
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestAdminCLITimeout: an admin address that accepts and never answers
// ends the command after --timeout with exit 3.
func TestAdminCLITimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() { <-done; conn.Close() }()
		}
	}()
	c := &adminCLI{t: t, seen: map[string]bool{}, env: []string{admincli.EnvURL + "=" + l.Addr().String(), admincli.EnvToken + "=" + testAdminToken}}
	start := time.Now()
	c.fails(admincli.ExitUnreachable, "keygate admin: GET /admin/v1/plans: no answer from http://"+l.Addr().String()+" within 300ms (--timeout)", "plans", "list", "--timeout", "300ms")
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s", d)
	}
}

// TestAdminCLIBinary runs the built keygate binary: the exit codes reach
// the shell, -f - reads the body from stdin, a created key's secret is on
// stdout.
func TestAdminCLIBinary(t *testing.T) {
	bin := buildKeygate(t)
	g := startGate(t, map[string]string{"KEYGATE_UPSTREAM_URL": "http://127.0.0.1:1"})
	g.admin("POST", "/admin/v1/plans", map[string]any{"id": 1, "name": "Free", "period": "month", "max_api_requests": 10}, 201, nil)
	var o struct {
		ID string `json:"id"`
	}
	g.admin("POST", "/admin/v1/orgs", map[string]any{"name": "Acme", "email": "ops@acme.example", "plan_id": 1}, 201, &o)
	env := cleanEnv(admincli.EnvURL+"="+g.l.Admin, admincli.EnvToken+"="+testAdminToken)
	for _, tc := range []struct {
		args   []string
		stdin  string
		env    []string
		code   int
		stdout string // a regular expression
		stderr string
	}{
		{args: []string{"keys", "create", o.ID, "bin", "-f", "-"}, stdin: `{"permissions":["read"],"comment":"from stdin"}`,
			stdout: `(?m)^SECRET: +kg_\S+$`},
		{args: []string{"keys", "list", o.ID}, stdout: `(?m)^bin +\S+ +read +yes `},
		{args: []string{"orgs", "get", "org_x"}, code: 1, stderr: "keygate admin: 404 Not Found: Not found (GET /admin/v1/orgs/org_x)\n"},
		{args: []string{"keys", "frob"}, code: 2, stderr: `keygate admin: unknown command "keys frob"`},
		{args: []string{"orgs", "list", "--url", closedAddr(t)}, code: 3, stderr: "keygate admin: cannot reach keygate at http://"},
		{args: []string{"orgs", "list"}, env: []string{admincli.EnvToken + "=nope"}, code: 4, stderr: "keygate admin: 401 Unauthorized: Valid admin token required"},
	} {
		cmd := exec.Command(bin, append([]string{"admin"}, tc.args...)...)
		cmd.Env = append(append([]string{}, env...), tc.env...)
		cmd.Stdin = strings.NewReader(tc.stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if code != tc.code || (tc.stdout != "" && !regexp.MustCompile(tc.stdout).MatchString(stdout.String())) || !strings.HasPrefix(stderr.String(), tc.stderr) {
			t.Errorf("keygate admin %v: exit %d\nstdout %q\nstderr %q\nwant exit %d, stdout %q, stderr %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
	var k map[string]any
	g.admin("GET", "/admin/v1/orgs/"+o.ID+"/keys/bin", nil, 200, &k)
	if k["comment"] != "from stdin" {
		t.Errorf("the key created from stdin is %v", k)
	}
}
