package guard

import (
	"strings"
	"testing"
)

func TestIsIdentityHeader(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"X-Keygate-Org-Id", true},
		{"x-keygate-permissions", true},
		{"X_Keygate_Org_Id", true},
		{"X_KEYGATE_PERMISSIONS", true},
		{"x-keygate_", true},
		{"X-Keygate-", true},
		{"x_keygate-usage", true},
		{"X-Keygate", false},
		{"X-Keygat-Org", false},
		{"X-Keygatex-Org", false},
		{"Keygate-Org", false},
		{"X-Forwarded-For", false},
		{"XX-Keygate-Org", false},
		{"X-Keygate\u212a", false}, // not a token; ASCII folding only
		{"", false},
	}
	for _, tt := range tests {
		if got := IsIdentityHeader(tt.name); got != tt.want {
			t.Errorf("IsIdentityHeader(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestIsIdentityHeaderNoAllocs(t *testing.T) {
	var sink bool
	if n := testing.AllocsPerRun(100, func() { sink = IsIdentityHeader("X_Keygate_Org_Id") }); n != 0 || !sink {
		t.Errorf("IsIdentityHeader allocates %v times", n)
	}
}

// asciiLower folds ASCII only, as header names are tokens.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func FuzzIsIdentityHeader(f *testing.F) {
	for _, s := range []string{"X-Keygate-Org-Id", "X_Keygate_Org_Id", "x-keygatE_", "X-Forwarded-For", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := strings.HasPrefix(strings.ReplaceAll(asciiLower(name), "_", "-"), "x-keygate-")
		if got := IsIdentityHeader(name); got != want {
			t.Fatalf("IsIdentityHeader(%q) = %v, want %v", name, got, want)
		}
	})
}

func BenchmarkIsIdentityHeader(b *testing.B) {
	for _, name := range []string{"Content-Type", "X_Keygate_Org_Id"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var n int
			for b.Loop() {
				if IsIdentityHeader(name) {
					n++
				}
			}
			_ = n
		})
	}
}
