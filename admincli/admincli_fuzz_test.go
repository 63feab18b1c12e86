package admincli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/keygate/keygate/keys"
)

// FuzzPrepare: any command line (arguments separated by NUL) either is
// refused with a usage, URL or token error, or becomes a request that can
// be sent: its body is JSON, its arguments stay inside their path
// segments, and no message shows the token.
func FuzzPrepare(f *testing.F) {
	for _, s := range []string{
		"plans\x00create\x00--id\x001\x00--key-rate-limit\x0010/m,burst=5",
		"keys\x00create\x00o1\x00a/b?c#d\x00--permissions\x00read\x00--expires\x00720h",
		"orgs\x00patch\x00o1\x00-f\x00-\x00--quota\x00none",
		"keys\x00delete\x00o1\x00--\x00-x",
		"--url\x00http://[::1]:1/p%2Fq\x00orgs\x00get\x00%",
		"-o\x00json\x00openapi",
	} {
		f.Add(s, `{"name":"x"}`)
	}
	f.Fuzz(func(t *testing.T, line, stdin string) {
		args := strings.Split(line, "\x00")
		if len(args) > 40 {
			return
		}
		var out bytes.Buffer
		inv, err := prepare(args, testEnv, testIO(stdin, &out, &out))
		if err != nil {
			if strings.Contains(err.Error(), "env-token") {
				t.Fatalf("the message shows the token: %v", err)
			}
			return
		}
		if inv == nil {
			return // help
		}
		if inv.body != nil && !json.Valid(inv.body) {
			t.Fatalf("body %q is not JSON", inv.body)
		}
		if got, want := strings.Count(inv.path, "/"), strings.Count(inv.cmd.route, "/"); got != want {
			t.Fatalf("path %q has %d segments, route %s %d", inv.path, got, inv.cmd.route, want)
		}
		u := *inv.base
		u.RawPath = inv.base.EscapedPath() + inv.path
		req, err := http.NewRequest(inv.method, u.Scheme+"://"+u.Host+u.RawPath, nil)
		if err != nil {
			t.Fatalf("%s %s: %v", inv.method, inv.path, err)
		}
		if req.URL.RawQuery != "" || req.URL.Fragment != "" {
			t.Fatalf("an argument reached the query or fragment: %s", req.URL)
		}
	})
}

// FuzzConvert: every flag kind turns any text into valid JSON or a usage
// error.
func FuzzConvert(f *testing.F) {
	for k, s := range []string{"x", "12", "none", "true", "10/1m,burst=2", "a=1,b=2", "read,write", "720h", "1h", "f"} {
		f.Add(uint8(k), s)
	}
	f.Fuzz(func(t *testing.T, k uint8, s string) {
		kd := kind(k % uint8(numKinds))
		b, err := convert(kd, s, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		if err == nil && !json.Valid(b) {
			t.Fatalf("kind %d, %q: %q is not JSON", kd, s, b)
		}
	})
}

// FuzzParseRateLimit: a spec that parses renders back to itself, and
// whatever the API accepts of its JSON is the same limit.
func FuzzParseRateLimit(f *testing.F) {
	for _, s := range []string{"10/1m", "100/s,burst=20", "5/1h,shadow", "3/1.5s,burst=1,shadow", "1/24h", "10/1ns", "9223372036854775807/1h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := parseRateLimit(s)
		if err != nil {
			return
		}
		again, err := parseRateLimit(l.String())
		if err != nil || again != l {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, l, l.String(), again, err)
		}
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		var api keys.RateLimit
		if err := json.Unmarshal(b, &api); err != nil {
			return // out of the API's bounds: it refuses with its own message
		}
		per, _ := time.ParseDuration(l.Per)
		if api.Requests != l.Requests || api.Per != per || api.Burst != l.Burst || api.Shadow != l.Shadow {
			t.Fatalf("%q: sent %s, the API reads %+v", s, b, api)
		}
	})
}

// FuzzShow: no answer, however hostile, panics a table or puts a control
// character on the terminal.
func FuzzShow(f *testing.F) {
	for _, s := range []string{
		`[{"id":1,"name":"Free","limits":{"a\u001b":1},"key_rate_limit":{"requests":1,"per":"1s"}}]`,
		`{"id":"o1","name":"a\tb","usage":{"current_usage":1,"total_quota":2}}`,
		`[{"name":"\u202e","permissions":["\n"],"expires_at":"\r"}]`,
		`{"access_secret":"kg_\u0007","previous_secret_expires_at":"x"}`,
		`null`, `[]`, `{}`, `"\u0000"`,
	} {
		f.Add([]byte(s))
	}
	inv := &invocation{args: []string{"o\x1b1", "k\n"}}
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, c := range commands {
			if c.resource == "openapi" { // the document, checked as JSON before it is shown
				continue
			}
			var out bytes.Buffer
			_ = c.show(&out, inv, raw)
			if c.pick != nil {
				_, _, _ = c.pick(raw, "1")
			}
			for _, r := range out.String() {
				if r != '\n' && (unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)) {
					t.Fatalf("%s: control character %U in\n%q", c.name(), r, out.String())
				}
			}
		}
	})
}
