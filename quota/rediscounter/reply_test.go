package rediscounter

import (
	"testing"

	"github.com/keygate/keygate/quota"
)

func TestParseChargeReply(t *testing.T) {
	for _, tc := range []struct {
		name    string
		reply   any
		wantErr bool
	}{
		{"admitted", []any{int64(1), int64(5), int64(2)}, false},
		{"not a list", "OK", true},
		{"nil", nil, true},
		{"too short", []any{int64(1), int64(5)}, true},
		{"one rate value", []any{int64(1), int64(5), int64(2), int64(0)}, true},
		{"one rate limit", []any{int64(1), int64(5), int64(2), int64(700), int64(0)}, false},
		{"string element", []any{int64(1), "5", int64(2)}, true},
		{"nil element", []any{int64(1), nil, int64(2)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseChargeReply(tc.reply)
			if (err != nil) != tc.wantErr {
				t.Errorf("parseChargeReply(%#v) error = %v, want error %v", tc.reply, err, tc.wantErr)
			}
		})
	}
}

func TestParseCount(t *testing.T) {
	for _, tc := range []struct {
		v       any
		want    int64
		wantErr bool
	}{
		{nil, 0, false},
		{"42", 42, false},
		{"-7", -7, false},
		{"x", 0, true},
		{int64(3), 0, true},
	} {
		got, err := parseCount(tc.v)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("parseCount(%#v) = %d, %v; want %d, error %v", tc.v, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestKeysShareOneTag(t *testing.T) {
	const org = "4f9c2a1e-0000-4000-8000-000000000001"
	want := "{" + org + "}"
	for _, k := range []string{
		orgCounterKey(org, "m210001"),
		keyCounterKey(org, "k:1", "m210001"),
		tokenKey(org, "t"),
		nonceKey(org, "n"),
		rateKey(org, "k:1", quota.RateLimit{Name: "key-rate", Scope: quota.ScopeKey}),
		rateKey(org, "k:1", quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg}),
		meterKey(org, "egress", "all"),
	} {
		if got := hashTag(k); got != want[1:len(want)-1] {
			t.Errorf("hash tag of %q = %q, want %q", k, got, org)
		}
	}
}

// hashTag is the part of k Redis Cluster hashes: the text between the first
// "{" and the first "}" after it, when not empty; else all of k.
func hashTag(k string) string {
	for i := 0; i < len(k); i++ {
		if k[i] == '{' {
			for j := i + 1; j < len(k); j++ {
				if k[j] == '}' {
					if j > i+1 {
						return k[i+1 : j]
					}
					return k
				}
			}
			return k
		}
	}
	return k
}
