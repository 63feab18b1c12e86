package admincli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/openapi"
)

// TestEveryOperatorRouteHasACommand walks the OpenAPI document: every
// operator operation (tag "operator", on the admin listener) has a command,
// and every command calls an operation the document lists on the admin
// listener. A route added to the operator API fails here until the CLI
// covers it.
func TestEveryOperatorRouteHasACommand(t *testing.T) {
	var doc struct {
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas map[string]struct {
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"schemas"`
			Parameters map[string]struct {
				In string `json:"in"`
			} `json:"parameters"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openapi.Document(), &doc); err != nil {
		t.Fatal(err)
	}
	// bodyFields and queryParams: what each operator operation takes.
	bodyFields, queryParams := map[string][]string{}, map[string][]string{}
	onAdmin, operator := map[string]bool{}, map[string]bool{}
	for path, item := range doc.Paths {
		var listener string
		_ = json.Unmarshal(item["x-keygate-listener"], &listener)
		if listener != "admin" {
			continue
		}
		for method, raw := range item {
			switch method {
			case "get", "post", "put", "patch", "delete":
			default:
				continue
			}
			op := strings.ToUpper(method) + " " + path
			onAdmin[op] = true
			var o struct {
				Tags       []string `json:"tags"`
				Parameters []struct {
					Ref  string `json:"$ref"`
					In   string `json:"in"`
					Name string `json:"name"`
				} `json:"parameters"`
				RequestBody struct {
					Content map[string]struct {
						Schema struct {
							Ref string `json:"$ref"`
						} `json:"schema"`
					} `json:"content"`
				} `json:"requestBody"`
			}
			if err := json.Unmarshal(raw, &o); err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			if !slices.Contains(o.Tags, "operator") {
				continue
			}
			operator[op] = true
			for _, p := range o.Parameters {
				if p.Ref != "" {
					p.In = doc.Components.Parameters[strings.TrimPrefix(p.Ref, "#/components/parameters/")].In
				}
				if p.In == "query" {
					queryParams[op] = append(queryParams[op], p.Name+p.Ref)
				}
			}
			if ref := o.RequestBody.Content["application/json"].Schema.Ref; ref != "" {
				schema, ok := doc.Components.Schemas[strings.TrimPrefix(ref, "#/components/schemas/")]
				if !ok || len(schema.Properties) == 0 {
					t.Fatalf("%s: body schema %s has no properties", op, ref)
				}
				for name := range schema.Properties {
					bodyFields[op] = append(bodyFields[op], name)
				}
			}
		}
	}
	if len(operator) < 14 {
		t.Fatalf("found %d operator operations; is the document read right?", len(operator))
	}
	covered := map[string][]string{}
	flags := map[string]map[string]bool{} // operation → body fields a flag or argument sets
	for _, c := range commands {
		op := c.method + " " + c.route
		covered[op] = append(covered[op], c.name())
		if !onAdmin[op] {
			t.Errorf("command %q calls %s, which the OpenAPI document does not list on the admin listener", c.name(), op)
		}
		if flags[op] == nil {
			flags[op] = map[string]bool{}
		}
		for _, f := range c.fields {
			flags[op][f.json] = true
		}
		if c.bodyName {
			flags[op]["name"] = true
		}
	}
	for op := range operator {
		if len(covered[op]) == 0 {
			t.Errorf("operator route %s has no keygate admin command: add one to admincli/commands.go (and docs/cli.md)", op)
		}
		for _, f := range bodyFields[op] {
			if !flags[op][f] {
				t.Errorf("%s: the body field %q has no flag in %v", op, f, covered[op])
			}
		}
		for _, q := range queryParams[op] {
			t.Errorf("%s: the query parameter %q has no flag in %v (the client sends no query yet)", op, q, covered[op])
		}
	}
}

// TestCommandTable checks what the table's shape promises.
func TestCommandTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commands {
		if seen[c.name()] {
			t.Errorf("%s: listed twice", c.name())
		}
		seen[c.name()] = true
		n := strings.Count(c.route, "{")
		if c.bodyName {
			n++
		}
		if c.pick != nil {
			n++
		}
		if n != len(c.args) {
			t.Errorf("%s: %d arguments for %d uses", c.name(), len(c.args), n)
		}
		if c.show == nil || c.summary == "" || c.example == "" {
			t.Errorf("%s: show, summary and example are required", c.name())
		}
		if !strings.HasPrefix(c.example, "keygate admin "+c.name()) {
			t.Errorf("%s: example %q", c.name(), c.example)
		}
		flags := map[string]bool{}
		for _, f := range c.fields {
			if flags[f.flag] || slices.Contains([]string{"o", "url", "token-file", "timeout", "f"}, f.flag) {
				t.Errorf("%s: flag --%s twice", c.name(), f.flag)
			}
			flags[f.flag] = true
		}
	}
}

var testNow = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// files is what IO.Open opens in the tests.
var files = map[string]string{
	"plan.json":  `{"id":7,"name":"From file","period":"day"}`,
	"list.json":  `[1]`,
	"two.json":   `{"a":1} {"b":2}`,
	"token":      "file-token\n",
	"password":   "s3cret-pass\nignored second line\n",
	"empty":      "\n",
	"bad-token":  "has space\n",
	"limits.txt": "x",
}

func testIO(stdin string, stdout, stderr io.Writer) IO {
	return IO{Stdin: strings.NewReader(stdin), Stdout: stdout, Stderr: stderr, Now: func() time.Time { return testNow },
		Open: func(name string) (io.ReadCloser, error) {
			s, ok := files[name]
			if !ok {
				return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
			}
			return io.NopCloser(strings.NewReader(s)), nil
		}}
}

var testEnv = map[string]string{EnvURL: "http://127.0.0.1:9/kg/", EnvToken: "env-token"}

// TestPrepare: command lines become requests, or usage errors that send
// nothing.
func TestPrepare(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		env     map[string]string
		stdin   string
		method  string
		path    string
		body    string // JSON, compared decoded; "" for none
		token   string
		url     string
		json    bool
		code    int    // exit code of a refusal
		message string // in the message
	}{
		{args: []string{"plans", "list"}, method: "GET", path: "/admin/v1/plans", token: "env-token", url: "http://127.0.0.1:9/kg"},
		{args: []string{"-o", "json", "plans", "get", "3"}, method: "GET", path: "/admin/v1/plans", json: true},
		{args: []string{"plans", "get", "3", "-o", "json"}, method: "GET", path: "/admin/v1/plans", json: true},
		{args: []string{"plans", "create", "--id", "1", "--name", "Free", "--price", "0.00", "--quota", "1000", "--limits", "egress=5368709120", "--limits", "ipns=3",
			"--key-rate-limit", "10/m,burst=5", "--org-rate-limit", "100/1s,shadow"},
			method: "POST", path: "/admin/v1/plans",
			body: `{"id":1,"name":"Free","price":"0.00","max_api_requests":1000,"limits":{"egress":5368709120,"ipns":3},
				"key_rate_limit":{"requests":10,"per":"1m","burst":5},"org_rate_limit":{"requests":100,"per":"1s","shadow":true}}`},
		{args: []string{"plans", "create", "-f", "plan.json", "--name", "Flag wins"}, method: "POST", path: "/admin/v1/plans",
			body: `{"id":7,"name":"Flag wins","period":"day"}`},
		{args: []string{"plans", "create", "-f", "-"}, stdin: `{"id":8}`, method: "POST", path: "/admin/v1/plans", body: `{"id":8}`},
		{args: []string{"plans", "patch", "1", "--quota", "none", "--limits", "none", "--key-rate-limit", "null"}, method: "PATCH", path: "/admin/v1/plans/1",
			body: `{"max_api_requests":null,"limits":null,"key_rate_limit":null}`},
		{args: []string{"orgs", "create", "--name", "Acme", "--email", "a@b.example", "--plan", "1", "--partner", "--unlimited=false",
			"--username", "test", "--password-file", "password", "--rate-limit", "5/h"}, method: "POST", path: "/admin/v1/orgs",
			body: `{"name":"Acme","email":"a@b.example","plan_id":1,"partner":true,"unlimited":false,"username":"test","password":"s3cret-pass",
				"rate_limit":{"requests":5,"per":"1h"}}`},
		{args: []string{"orgs", "get", "a/b c?"}, method: "GET", path: "/admin/v1/orgs/a%2Fb%20c%3F"},
		{args: []string{"orgs", "usage", "o1"}, method: "GET", path: "/admin/v1/orgs/o1"},
		{args: []string{"orgs", "patch", "o1", "--email-verified", "--plan", "2"}, method: "PATCH", path: "/admin/v1/orgs/o1",
			body: `{"email_verified":true,"plan_id":2}`},
		{args: []string{"orgs", "suborgs", "p1"}, method: "GET", path: "/admin/v1/orgs/p1/suborgs"},
		{args: []string{"keys", "list", "o1"}, method: "GET", path: "/admin/v1/orgs/o1/keys"},
		{args: []string{"keys", "get", "o1", "ci"}, method: "GET", path: "/admin/v1/orgs/o1/keys/ci"},
		{args: []string{"keys", "create", "o1", "ci", "--permissions", "read, write", "--permissions", "pin", "--expires", "720h",
			"--comment", "a\tb", "--enabled=false"}, method: "POST", path: "/admin/v1/orgs/o1/keys",
			body: `{"name":"ci","permissions":["read","write","pin"],"expires_at":"2026-12-31T10:00:00Z","comment":"a\tb","enabled":false}`},
		{args: []string{"keys", "create", "o1", "ci"}, method: "POST", path: "/admin/v1/orgs/o1/keys", body: `{"name":"ci"}`},
		{args: []string{"keys", "patch", "o1", "ci", "--expires", "2027-01-02T03:04:05+01:00", "--quota", "5"}, method: "PATCH", path: "/admin/v1/orgs/o1/keys/ci",
			body: `{"expires_at":"2027-01-02T02:04:05Z","max_api_requests":5}`},
		{args: []string{"keys", "patch", "o1", "ci", "--expires", "never", "--rate-limit", "none"}, method: "PATCH", path: "/admin/v1/orgs/o1/keys/ci",
			body: `{"expires_at":null,"rate_limit":null}`},
		{args: []string{"keys", "disable", "o1", "ci"}, method: "PATCH", path: "/admin/v1/orgs/o1/keys/ci", body: `{"enabled":false}`},
		{args: []string{"keys", "enable", "o1", "ci"}, method: "PATCH", path: "/admin/v1/orgs/o1/keys/ci", body: `{"enabled":true}`},
		{args: []string{"keys", "rotate", "o1", "ci", "--grace", "1h"}, method: "POST", path: "/admin/v1/orgs/o1/keys/ci/rotate", body: `{"grace":"1h"}`},
		{args: []string{"keys", "rotate", "o1", "ci"}, method: "POST", path: "/admin/v1/orgs/o1/keys/ci/rotate", body: `{}`},
		{args: []string{"keys", "delete", "o1", "--", "-ci"}, method: "DELETE", path: "/admin/v1/orgs/o1/keys/-ci"},
		{args: []string{"openapi"}, env: map[string]string{}, method: "GET", path: "/openapi.json", url: DefaultURL},
		// flags override the environment; a bare host:port is http
		{args: []string{"--url", "10.0.0.1:9091", "--token-file", "token", "plans", "list"}, method: "GET", path: "/admin/v1/plans",
			token: "file-token", url: "http://10.0.0.1:9091"},
		{args: []string{"plans", "list", "--token-file", "-"}, stdin: "stdin-token\n", method: "GET", path: "/admin/v1/plans", token: "stdin-token"},

		// usage errors
		{args: nil, code: ExitUsage, message: "no command given"},
		{args: []string{"nope"}, code: ExitUsage, message: `unknown command "nope"`},
		{args: []string{"keys"}, code: ExitUsage, message: "keys: which operation?"},
		{args: []string{"keys", "frob"}, code: ExitUsage, message: `unknown command "keys frob"`},
		{args: []string{"plans", "delete", "1"}, code: ExitUsage, message: "no route to delete a plan"},
		{args: []string{"orgs", "delete", "o1"}, code: ExitUsage, message: "no route to delete an organization"},
		{args: []string{"keys", "delete", "o1"}, code: ExitUsage, message: "keys delete: missing NAME"},
		{args: []string{"keys", "delete"}, code: ExitUsage, message: "keys delete: missing ORG"},
		{args: []string{"keys", "delete", "o1", "ci", "extra"}, code: ExitUsage, message: `unexpected argument "extra"`},
		{args: []string{"keys", "delete", "o1", ""}, code: ExitUsage, message: "NAME: must not be empty"},
		{args: []string{"keys", "delete", "..", "ci"}, code: ExitUsage, message: `ORG: cannot be ".." or "."`},
		{args: []string{"keys", "delete", "o1", strings.Repeat("x", 1025)}, code: ExitUsage, message: "longer than 1024 bytes"},
		{args: []string{"keys", "list", "o1", "--frob"}, code: ExitUsage, message: "flag provided but not defined: -frob"},
		{args: []string{"--frob", "keys", "list", "o1"}, code: ExitUsage, message: "flag provided but not defined: -frob"},
		{args: []string{"keys", "list", "o1", "-o", "yaml"}, code: ExitUsage, message: `-o "yaml": want table or json`},
		{args: []string{"keys", "list", "o1", "--timeout", "0s"}, code: ExitUsage, message: "--timeout must be positive"},
		{args: []string{"keys", "patch", "o1", "ci"}, code: ExitUsage, message: "nothing to change"},
		{args: []string{"plans", "patch", "1", "--quota", "lots"}, code: ExitUsage, message: "--quota: want an integer, or none"},
		{args: []string{"plans", "create", "--id", "x"}, code: ExitUsage, message: "--id: want an integer"},
		{args: []string{"plans", "create", "--key-rate-limit", "10"}, code: ExitUsage, message: "--key-rate-limit: want N/PER"},
		{args: []string{"plans", "create", "--limits", "egress"}, code: ExitUsage, message: "--limits: want meter=N"},
		{args: []string{"plans", "create", "--limits", "a=1,a=2"}, code: ExitUsage, message: `meter "a" given twice`},
		{args: []string{"orgs", "patch", "o1", "--partner=maybe"}, code: ExitUsage, message: "--partner: want true or false"},
		{args: []string{"keys", "patch", "o1", "ci", "--expires", "tomorrow"}, code: ExitUsage, message: "--expires: want an RFC 3339 time"},
		{args: []string{"keys", "rotate", "o1", "ci", "--grace", "a while"}, code: ExitUsage, message: "--grace: want a Go duration"},
		{args: []string{"plans", "create", "-f", "missing.json"}, code: ExitUsage, message: "open missing.json"},
		{args: []string{"plans", "create", "-f", "list.json"}, code: ExitUsage, message: "want one JSON object"},
		{args: []string{"plans", "create", "-f", "two.json"}, code: ExitUsage, message: "found more after it"},
		{args: []string{"plans", "create", "-f", "-"}, stdin: strings.Repeat(" ", MaxBodyFile+1), code: ExitUsage, message: "larger than 1048576 bytes"},
		{args: []string{"plans", "create", "-f", "-", "--token-file", "-"}, code: ExitUsage, message: "-f, --token-file cannot all read stdin"},
		{args: []string{"orgs", "create", "--password-file", "-", "--token-file", "-"}, code: ExitUsage, message: "--token-file, --password-file cannot all read stdin"},
		{args: []string{"orgs", "create", "--name", "A", "--password-file", "-"}, stdin: "pw\n", method: "POST", path: "/admin/v1/orgs", body: `{"name":"A","password":"pw"}`},
		{args: []string{"orgs", "create", "--password-file", "empty"}, code: ExitUsage, message: "--password-file: empty is empty"},
		// the URL (3) and the token (4)
		{args: []string{"--url", "ftp://x", "plans", "list"}, code: ExitUnreachable, message: "want an http:// or https:// URL"},
		{args: []string{"--url", "http://user:pw@x", "plans", "list"}, code: ExitUnreachable, message: "no user or password"},
		{args: []string{"--url", "http://x/?q=1", "plans", "list"}, code: ExitUnreachable, message: "no query or fragment"},
		{args: []string{"--url", "http://%zz", "plans", "list"}, code: ExitUnreachable, message: "is not a URL"},
		{args: []string{"plans", "list"}, env: map[string]string{}, code: ExitUnauthorized, message: "no admin token: set KEYGATE_ADMIN_TOKEN"},
		{args: []string{"plans", "list", "--token-file", "bad-token"}, code: ExitUnauthorized, message: "--token-file holds a character"},
		{args: []string{"plans", "list", "--token-file", "nope"}, code: ExitUnauthorized, message: "--token-file: open nope"},
	} {
		name := strings.Join(tc.args, " ")
		env := tc.env
		if env == nil {
			env = testEnv
		}
		var stdout, stderr bytes.Buffer
		inv, err := prepare(tc.args, env, testIO(tc.stdin, &stdout, &stderr))
		if tc.code != 0 {
			var ex *exitError
			if !errors.As(err, &ex) || ex.code != tc.code || !strings.Contains(ex.msg, tc.message) {
				t.Errorf("%s: got %v (%#v), want exit %d with %q", name, err, ex, tc.code, tc.message)
			}
			if strings.Contains(ex.Error(), "env-token") || strings.Contains(ex.Error(), "pw@") {
				t.Errorf("%s: the message shows a secret: %s", name, ex.msg)
			}
			continue
		}
		if err != nil || inv == nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if inv.method != tc.method || inv.path != tc.path || inv.json != tc.json {
			t.Errorf("%s: %s %s json=%v, want %s %s json=%v", name, inv.method, inv.path, inv.json, tc.method, tc.path, tc.json)
		}
		if tc.token != "" && inv.token != tc.token {
			t.Errorf("%s: token %q, want %q", name, inv.token, tc.token)
		}
		if tc.url != "" && inv.base.String() != tc.url {
			t.Errorf("%s: URL %s, want %s", name, inv.base, tc.url)
		}
		if (tc.body == "") != (inv.body == nil) {
			t.Errorf("%s: body %q, want %q", name, inv.body, tc.body)
		} else if tc.body != "" {
			var got, want any
			if err := json.Unmarshal(inv.body, &got); err != nil {
				t.Fatalf("%s: body %q: %v", name, inv.body, err)
			}
			if err := json.Unmarshal([]byte(tc.body), &want); err != nil {
				t.Fatalf("%s: want %q: %v", name, tc.body, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s: body %s, want %s", name, inv.body, tc.body)
			}
		}
	}
}

// TestHelp: help goes to stdout and exits 0; a usage error prints where
// the help is.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, "usage: keygate admin [flags] <resource> <operation>"},
		{[]string{"help"}, "keys rotate ORG NAME [flags]"},
		{[]string{"help", "keys"}, "usage: keygate admin keys <operation>"},
		{[]string{"keys", "help"}, "keys delete ORG NAME"},
		{[]string{"keys", "create", "-h"}, "--permissions A,B"},
		{[]string{"plans", "create", "--help"}, "-f FILE"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Run(t.Context(), tc.args, testEnv, testIO("", &stdout, &stderr)); code != 0 || !strings.Contains(stdout.String(), tc.want) || stderr.Len() != 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 0 and %q", tc.args, code, stdout.String(), stderr.String(), tc.want)
		}
	}
	var stdout, stderr bytes.Buffer
	code := Run(t.Context(), []string{"keys", "delete", "o1"}, testEnv, testIO("", &stdout, &stderr))
	want := "keygate admin: keys delete: missing NAME\nusage: keygate admin keys delete ORG NAME\n(keygate admin keys delete -h shows its flags)\n"
	if code != ExitUsage || stderr.String() != want || stdout.Len() != 0 {
		t.Errorf("missing NAME: exit %d, stderr %q", code, stderr.String())
	}
}

func TestParseRateLimit(t *testing.T) {
	for in, want := range map[string]string{
		"10/1m":                `{"requests":10,"per":"1m"}`,
		"10/m":                 `{"requests":10,"per":"1m"}`,
		" 100 / s , burst=20 ": `{"requests":100,"per":"1s","burst":20}`,
		"5/1h0m0s,shadow":      `{"requests":5,"per":"1h","shadow":true}`,
		"3/1.5s":               `{"requests":3,"per":"1.5s"}`,
		"3/90s,burst=1,shadow": `{"requests":3,"per":"90s","burst":1,"shadow":true}`,
	} {
		l, err := parseRateLimit(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if b, _ := json.Marshal(l); string(b) != want {
			t.Errorf("%q: %s, want %s", in, b, want)
		}
	}
	for _, in := range []string{"", "10", "/1m", "0/1m", "-1/1m", "x/1m", "10/", "10/0s", "10/-1m", "10/fortnight",
		"10/1m,burst", "10/1m,burst=0", "10/1m,burst=x", "10/1m,shadow=true", "10/1m,shadow,shadow", "10/1m,frob", "10/1m,"} {
		if l, err := parseRateLimit(in); err == nil {
			t.Errorf("%q: parsed as %+v, want an error", in, l)
		}
	}
}

// TestTables: the tables of each kind of answer, as a user sees them.
func TestTables(t *testing.T) {
	inv := &invocation{args: []string{"o1", "ci"}}
	for _, tc := range []struct {
		show func(io.Writer, *invocation, []byte) error
		raw  string
		want string
	}{
		{showPlans, `[{"id":1,"name":"Free","price":"0.00","period":"month","max_api_requests":1000,"limits":{"egress":5,"a":1},"key_rate_limit":{"requests":10,"per":"1m","burst":5}},
			{"id":22,"name":"Unlimited","price":"","period":"none","max_api_requests":null,"org_rate_limit":{"requests":1,"per":"1s","shadow":true}}]`,
			"ID  NAME       PRICE  PERIOD  QUOTA      LIMITS        KEY RATE LIMIT  ORG RATE LIMIT\n" +
				"1   Free       0.00   month   1000       a=1,egress=5  10/1m,burst=5   -\n" +
				"22  Unlimited  -      none    unlimited  -             -               1/1s,shadow\n"},
		{showOrgs, `[{"id":"o1","name":"Acme","email":"a@b","plan_id":1,"next_plan_id":2,"partner":true,"max_api_requests":null,"rate_limit":null,"unlimited":false,"created_at":"2026-12-01T10:00:00.000Z"},
			{"id":"o2","name":"Sub","email":"c@d","plan_id":1,"next_plan_id":1,"partner_id":"o1","max_api_requests":5,"rate_limit":{"requests":2,"per":"1s"},"unlimited":true,"created_at":"x"}]`,
			"ID  NAME  EMAIL  PLAN        PARTNER            QUOTA      RATE LIMIT  CREATED\n" +
				"o1  Acme  a@b    1 (next 2)  partner            plan's     plan's      2026-12-01T10:00:00.000Z\n" +
				"o2  Sub   c@d    1           sub-account of o1  unlimited  2/1s        x\n"},
		{showKeys, `[{"uid":"u1","name":"ci","access_key":"u1","permissions":["read","write"],"max_api_requests":null,"rate_limit":null,"expires_at":null,"enabled":true,"last_used_at":"2026-12-01T10:00:00Z","created_at":"c"}]`,
			"NAME  ACCESS KEY  PERMISSIONS  ENABLED  QUOTA  RATE LIMIT  EXPIRES  LAST USED             CREATED\n" +
				"ci    u1          read,write   yes      -      plan's      never    2026-12-01T10:00:00Z  c\n"},
		{showUsage, `{"id":"o1","usage":{"current_usage":2,"total_quota":1000,"allocated_api_key_quota":100,"available_api_key_quota":900,"source":"plan"}}`,
			"ORG  USED  QUOTA  SOURCE  ALLOCATED TO KEYS  AVAILABLE TO KEYS\n" +
				"o1   2     1000   plan    100                900\n"},
		{showNewKey, `{"uid":"u1","name":"ci","access_key":"u1","access_secret":"kg_secret","permissions":["admin"],"enabled":true,"created_at":"c"}`,
			"SECRET:      kg_secret\n\n" + secretNote + "\n"},
		{showRotation, `{"uid":"u1","name":"ci","access_key":"u1","access_secret":"kg_new","previous_secret_expires_at":"t"}`,
			"NEW SECRET:                  kg_new\n\n" + secretNote + "\n"},
		{showDeleted, ``, "deleted key ci of organization o1\n"},
		// hostile values: no control character reaches the terminal, the
		// columns hold
		{showOrgs, `[{"id":"o\u001b[31m1","name":"a\tb\nc","email":"\u202eevil","plan_id":1}]`,
			"ID            NAME       EMAIL         PLAN  PARTNER  QUOTA   RATE LIMIT  CREATED\n" +
				`"o\x1b[31m1"  "a\tb\nc"  "\u202eevil"  1     -        plan's  plan's      -` + "\n"},
	} {
		var b bytes.Buffer
		if err := tc.show(&b, inv, []byte(tc.raw)); err != nil {
			t.Errorf("%s: %v", tc.raw, err)
			continue
		}
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("got\n%s\nwant it to contain\n%s", b.String(), tc.want)
		}
	}
	// Answers that are not the operator API's are errors, not tables.
	for _, raw := range []string{`{}`, `[1]`, `"x"`} {
		if err := showKeys(io.Discard, inv, []byte(raw)); err == nil && raw != `{}` {
			t.Errorf("showKeys(%s): no error", raw)
		}
		if err := showNewKey(io.Discard, inv, []byte(raw)); err == nil {
			t.Errorf("showNewKey(%s): no error", raw)
		}
	}
}

// TestSendBounds: an answer larger than the bound, a server whose
// certificate is not trusted, a redirect and an answer that is not the
// operator API's all end with exit 3 and say so; the token never follows
// the redirect.
func TestSendBounds(t *testing.T) {
	var gotAuth []string
	var mu sync.Mutex
	mux := http.NewServeMux()
	mux.HandleFunc("/big/admin/v1/plans", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("[" + strings.Repeat(`{"id":1},`, 200) + `{"id":2}]`))
	})
	mux.HandleFunc("/redirect/admin/v1/plans", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotAuth = append(gotAuth, r.Header.Get("Authorization"))
		mu.Unlock()
	})
	mux.HandleFunc("/html/admin/v1/plans", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("<html>hello</html>"))
	})
	mux.HandleFunc("/teapot/admin/v1/plans", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tlsSrv := httptest.NewTLSServer(mux)
	defer tlsSrv.Close()

	for _, tc := range []struct {
		url, want string
		max       int64
	}{
		{srv.URL + "/big", "the answer is larger than 1000 bytes", 1000},
		{srv.URL + "/redirect", "redirected to " + srv.URL + "/elsewhere", 0},
		{srv.URL + "/html", "answered 200 OK with something other than JSON (GET /admin/v1/plans): is KEYGATE_ADMIN_URL keygate's admin listener?", 0},
		{srv.URL + "/teapot", "answered 418 I'm a teapot with no operator API error", 0},
		{tlsSrv.URL + "/big", "cannot reach keygate at " + tlsSrv.URL + "/big: TLS: ", 0},
	} {
		var stdout, stderr bytes.Buffer
		inv, err := prepare([]string{"--url", tc.url, "plans", "list"}, testEnv, testIO("", &stdout, &stderr))
		if err != nil {
			t.Fatal(err)
		}
		if tc.max > 0 {
			inv.maxResponse = tc.max
		}
		err = execute(t.Context(), inv, testIO("", &stdout, &stderr))
		var ex *exitError
		if !errors.As(err, &ex) || ex.code != ExitUnreachable || !strings.Contains(ex.msg, tc.want) || stdout.Len() != 0 {
			t.Errorf("%s: %v, stdout %q; want exit 3 with %q", tc.url, err, stdout.String(), tc.want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(gotAuth) != 0 {
		t.Errorf("the redirect was followed, with Authorization %q", gotAuth)
	}
}
