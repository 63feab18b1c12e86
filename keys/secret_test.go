package keys

import (
	"strings"
	"testing"
)

func TestSecretShape(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(s, SecretPrefix) || len(s) != SecretLen || !CheckSecret(s) {
			t.Fatalf("secret %q: prefix, length %d or checksum wrong", s, len(s))
		}
		if seen[s] {
			t.Fatal("duplicate secret")
		}
		seen[s] = true
	}
	s, _ := NewSecret()
	flip := func(i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	bad := map[string]string{
		"empty":        "",
		"truncated":    s[:len(s)-1],
		"extended":     s + "A",
		"no prefix":    "xx" + s[2:],
		"typo in body": flip(10),
		"typo at end":  flip(len(s) - 1),
		"bad alphabet": s[:10] + "!" + s[11:],
	}
	for name, v := range bad {
		if CheckSecret(v) {
			t.Errorf("%s: CheckSecret(%q) = true", name, v)
		}
	}
}

func FuzzCheckSecret(f *testing.F) {
	s, _ := NewSecret()
	f.Add(s)
	f.Add("kg_")
	f.Fuzz(func(t *testing.T, v string) {
		_ = CheckSecret(v) // must not panic
	})
}

func TestPermissions(t *testing.T) {
	ps, err := ParsePermissions([]string{"pin", "read", "pin"})
	if err != nil || JoinPermissions(ps) != "read,pin" {
		t.Fatalf("ParsePermissions = %v, %v", ps, err)
	}
	if _, err := ParsePermissions(nil); err == nil {
		t.Error("empty permission list accepted")
	}
	if _, err := ParsePermissions([]string{"root"}); err == nil {
		t.Error("unknown permission accepted")
	}
	if !Allows([]Permission{PermAdmin}, PermUnpin) || Allows([]Permission{PermRead}, PermWrite) || !Allows([]Permission{PermRead}, PermRead) {
		t.Error("Allows: admin must imply all, read must not imply write")
	}
}

func TestPassword(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !VerifyPassword(h, "correct horse") || VerifyPassword(h, "wrong") || VerifyPassword("", "correct horse") {
		t.Error("VerifyPassword accepted a wrong password or an unknown user")
	}
	if strings.Contains(h, "correct horse") {
		t.Error("hash contains the password")
	}
}
