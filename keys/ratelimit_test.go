package keys_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
)

func TestRateLimitJSON(t *testing.T) {
	good := []struct {
		in   string
		want keys.RateLimit
		out  string
	}{
		{`{"requests":10,"per":"1m"}`, keys.RateLimit{Requests: 10, Per: time.Minute}, `{"requests":10,"per":"1m"}`},
		{`{"requests":10,"per":"60s","burst":20,"shadow":true}`, keys.RateLimit{Requests: 10, Per: time.Minute, Burst: 20, Shadow: true}, `{"requests":10,"per":"1m","burst":20,"shadow":true}`},
		{`{"per":"1h30m","requests":1,"shadow":false,"burst":null}`, keys.RateLimit{Requests: 1, Per: 90 * time.Minute}, `{"requests":1,"per":"90m"}`},
		{`{"requests":1000000000,"per":"1s"}`, keys.RateLimit{Requests: 1e9, Per: time.Second}, `{"requests":1000000000,"per":"1s"}`},
		{`{"requests":3,"per":"1.5s"}`, keys.RateLimit{Requests: 3, Per: 1500 * time.Millisecond}, `{"requests":3,"per":"1.5s"}`},
		{`{"requests":1,"per":"24h"}`, keys.RateLimit{Requests: 1, Per: 24 * time.Hour}, `{"requests":1,"per":"24h"}`},
	}
	for _, g := range good {
		var got keys.RateLimit
		if err := json.Unmarshal([]byte(g.in), &got); err != nil {
			t.Errorf("%s: %v", g.in, err)
			continue
		}
		if got != g.want {
			t.Errorf("%s: got %+v, want %+v", g.in, got, g.want)
		}
		out, err := json.Marshal(got)
		if err != nil || string(out) != g.out {
			t.Errorf("%s: marshals as %s, %v; want %s", g.in, out, err, g.out)
		}
	}
	bad := map[string]string{
		`{"per":"1m"}`:                                  "requests",
		`{"requests":10}`:                               "per",
		`{"requests":0,"per":"1m"}`:                     "requests",
		`{"requests":-1,"per":"1m"}`:                    "requests",
		`{"requests":1000000001,"per":"1s"}`:            "requests",
		`{"requests":1.5,"per":"1m"}`:                   "requests",
		`{"requests":"10","per":"1m"}`:                  "requests",
		`{"requests":10,"per":"1 minute"}`:              "per",
		`{"requests":10,"per":60}`:                      "per",
		`{"requests":10,"per":"999ms"}`:                 "per",
		`{"requests":10,"per":"25h"}`:                   "per",
		`{"requests":10,"per":"-1m"}`:                   "per",
		`{"requests":10,"per":"1m","burst":0}`:          "burst",
		`{"requests":10,"per":"1m","burst":-2}`:         "burst",
		`{"requests":1,"per":"24h","burst":1000000000}`: "burst",
		`{"requests":10,"per":"1m","shadow":"yes"}`:     "shadow",
		`{"requests":10,"per":"1m","window":"1m"}`:      "",
		`[1,2]`: "",
	}
	for in, field := range bad {
		var got keys.RateLimit
		err := json.Unmarshal([]byte(in), &got)
		var inv *keys.InvalidError
		if !errors.As(err, &inv) || inv.Field != field {
			t.Errorf("%s: error %v, want *keys.InvalidError naming %q", in, err, field)
		}
		if got != (keys.RateLimit{}) {
			t.Errorf("%s: refused input left %+v", in, got)
		}
	}
	// In a document, null is no limit.
	var plan keys.Plan
	if err := json.Unmarshal([]byte(`{"id":1,"key_rate_limit":null,"org_rate_limit":{"requests":5,"per":"1s"}}`), &plan); err != nil || plan.KeyRateLimit != nil || plan.OrgRateLimit == nil {
		t.Errorf("plan = %+v, %v", plan, err)
	}
}

func TestKeyPatchJSON(t *testing.T) {
	var p keys.KeyPatch
	in := `{"max_api_requests":null,"rate_limit":{"requests":2,"per":"1s"},"expires_at":"2030-01-02T03:04:05+01:00","enabled":false,"permissions":["write","read","write"]}`
	if err := json.Unmarshal([]byte(in), &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if !p.MaxAPIRequests.Set || p.MaxAPIRequests.Value != nil || !p.MaxAPIRequests.Null || p.Comment.Set {
		t.Errorf("null and absent fields decode as %+v and %+v", p.MaxAPIRequests, p.Comment)
	}
	k := p.Apply(keys.Key{MaxAPIRequests: new(int64(5)), Comment: "kept"})
	want := time.Date(2030, 1, 2, 2, 4, 5, 0, time.UTC)
	if k.MaxAPIRequests != nil || k.RateLimit == nil || k.RateLimit.Requests != 2 || !k.Disabled || k.Comment != "kept" ||
		k.ExpiresAt == nil || !k.ExpiresAt.Equal(want) || k.ExpiresAt.Location() != time.UTC ||
		len(k.Permissions) != 2 || k.Permissions[0] != keys.PermRead || k.Permissions[1] != keys.PermWrite {
		t.Errorf("applied patch gives %+v", k)
	}
	for in, field := range map[string]string{
		`{"enabled":null}`:            "enabled",
		`{"permissions":null}`:        "permissions",
		`{"permissions":["sudo"]}`:    "permissions",
		`{"max_api_requests":-1}`:     "max_api_requests",
		`{"rate_limit":{"per":"1s"}}`: "requests",
	} {
		var p keys.KeyPatch
		err := json.Unmarshal([]byte(in), &p)
		if err == nil {
			err = p.Validate()
		}
		var inv *keys.InvalidError
		if !errors.As(err, &inv) || inv.Field != field {
			t.Errorf("%s: error %v, want *keys.InvalidError naming %q", in, err, field)
		}
	}
}

// FuzzRateLimitJSON: any input either is refused with a *InvalidError and
// leaves the value alone, or gives a valid limit that survives a round trip.
func FuzzRateLimitJSON(f *testing.F) {
	for _, s := range []string{`{"requests":10,"per":"1m"}`, `{"requests":10,"per":"1m","burst":20,"shadow":true}`,
		`{"requests":1,"per":"24h","burst":3650}`, `{"per":"1s"}`, `{"requests":1e3,"per":"1s"}`, `null`, `{}`, `[]`, `{"requests":10,"per":"1m"} {}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var l keys.RateLimit
		err := l.UnmarshalJSON(b)
		if err != nil {
			var inv *keys.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("%q: error %T %v, want *keys.InvalidError", b, err, err)
			}
			if l != (keys.RateLimit{}) {
				t.Fatalf("%q: refused input left %+v", b, l)
			}
			return
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("%q: accepted %+v, which is invalid: %v", b, l, err)
		}
		out, err := json.Marshal(l)
		if err != nil {
			t.Fatalf("%+v: marshal: %v", l, err)
		}
		var back keys.RateLimit
		if err := json.Unmarshal(out, &back); err != nil || back != l {
			t.Fatalf("%+v: round trip through %s gives %+v, %v", l, out, back, err)
		}
	})
}

// FuzzKeyPatchJSON: a patch that decodes and validates applies to a key
// that still validates and stores (marshals); nothing panics.
func FuzzKeyPatchJSON(f *testing.F) {
	for _, s := range []string{`{"enabled":false}`, `{"expires_at":"9999-12-31T23:59:59-01:00"}`, `{"expires_at":null,"rate_limit":null}`,
		`{"permissions":["admin"],"comment":"x","max_api_requests":5}`, `{"rate_limit":{"requests":5,"per":"1s","burst":1}}`, `{"comment":null}`} {
		f.Add([]byte(s))
	}
	base := keys.Key{UID: "u", OrgID: "o", Name: "n", Permissions: []keys.Permission{keys.PermRead}}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p keys.KeyPatch
		if json.Unmarshal(b, &p) != nil || p.Validate() != nil {
			return
		}
		k := p.Apply(base)
		if err := k.Validate(); err != nil {
			t.Fatalf("%q: applied to a valid key gives an invalid one: %v", b, err)
		}
		if len(k.Permissions) == 0 {
			t.Fatalf("%q: applied patch leaves no permissions", b)
		}
		if _, err := json.Marshal(k); err != nil {
			t.Fatalf("%q: applied key does not marshal: %v", b, err)
		}
	})
}

// FuzzPlanPatchJSON: a plan patch that decodes and validates applies to a
// plan that still validates and marshals.
func FuzzPlanPatchJSON(f *testing.F) {
	for _, s := range []string{`{"name":"x","price":"1.00"}`, `{"limits":{"egress":1},"max_api_requests":null}`,
		`{"key_rate_limit":{"requests":1,"per":"1s"},"org_rate_limit":null}`, `{"price":null}`, `{"name":""}`} {
		f.Add([]byte(s))
	}
	base := keys.Plan{ID: 1, Name: "p", Period: "month"}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p keys.PlanPatch
		if json.Unmarshal(b, &p) != nil || p.Validate() != nil {
			return
		}
		pl := p.Apply(base)
		if err := pl.Validate(); err != nil {
			t.Fatalf("%q: applied to a valid plan gives an invalid one: %v", b, err)
		}
		if _, err := json.Marshal(pl); err != nil {
			t.Fatalf("%q: applied plan does not marshal: %v", b, err)
		}
	})
}
