package keys

import (
	"fmt"
	"slices"
	"strings"
)

// Permission is one right a key may hold. Admin implies all others.
type Permission string

// The permissions a key may hold, as named in the seed documents.
const (
	PermAdmin Permission = "admin"
	PermRead  Permission = "read"
	PermWrite Permission = "write"
	PermPin   Permission = "pin"
	PermUnpin Permission = "unpin"
)

// AllPermissions lists every known permission in a stable order.
var AllPermissions = []Permission{PermAdmin, PermRead, PermWrite, PermPin, PermUnpin}

// ParsePermission returns the permission named s, or an InvalidError.
func ParsePermission(s string) (Permission, error) {
	p := Permission(s)
	if slices.Contains(AllPermissions, p) {
		return p, nil
	}
	return "", &InvalidError{Field: "permissions", Reason: fmt.Sprintf("unknown permission %q (want one of admin, read, write, pin, unpin)", s)}
}

// ParsePermissions parses a list of permission names, dropping duplicates and
// sorting the result in the order of AllPermissions. An empty list is invalid:
// a key that can do nothing is a mistake.
func ParsePermissions(names []string) ([]Permission, error) {
	if len(names) == 0 {
		return nil, &InvalidError{Field: "permissions", Reason: "at least one permission is required"}
	}
	var out []Permission
	for _, n := range names {
		p, err := ParsePermission(n)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Permission) int {
		return slices.Index(AllPermissions, a) - slices.Index(AllPermissions, b)
	})
	return out, nil
}

// Allows reports whether the set ps grants need. Admin grants everything.
func Allows(ps []Permission, need Permission) bool {
	for _, p := range ps {
		if p == need || p == PermAdmin {
			return true
		}
	}
	return false
}

// JoinPermissions renders ps as a comma-separated list, the format of the
// X-Keygate-Permissions header.
func JoinPermissions(ps []Permission) string {
	switch len(ps) {
	case 0:
		return ""
	case 1:
		return string(ps[0]) // the common case, without an allocation
	}
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(string(p))
	}
	return b.String()
}
