package user

import (
	"testing"

	"github.com/keygate/keygate/keys"
)

func TestAccessLevels(t *testing.T) {
	cases := []struct {
		perms []keys.Permission
		want  string
	}{
		{[]keys.Permission{keys.PermAdmin}, "full"},
		{[]keys.Permission{keys.PermRead, keys.PermWrite, keys.PermPin, keys.PermUnpin}, "apikey"},
		{[]keys.Permission{keys.PermRead, keys.PermWrite, keys.PermPin}, "basic"},
		{[]keys.Permission{keys.PermRead}, "basic"},
		{[]keys.Permission{keys.PermUnpin}, "basic"},
	}
	for _, tc := range cases {
		if got := accessLevelOf(tc.perms); got != tc.want {
			t.Errorf("accessLevelOf(%v) = %s, want %s", tc.perms, got, tc.want)
		}
	}
	// Every level lists as itself.
	for _, level := range []string{"basic", "apikey", "full"} {
		perms, ok := accessLevelPerms(level)
		if !ok || accessLevelOf(perms) != level {
			t.Errorf("level %s: permissions %v list as %s", level, perms, accessLevelOf(perms))
		}
	}
	if _, ok := accessLevelPerms("root"); ok {
		t.Errorf("unknown level accepted")
	}
}
