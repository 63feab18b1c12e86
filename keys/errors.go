package keys

import (
	"errors"
	"fmt"
)

// Sentinel errors of the keys domain. Adapters translate their library errors
// into these at their boundary; proxy maps them to HTTP in one place.
var (
	// ErrNotFound means the plan, organization or key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict means a plan id, organization id or key name is taken.
	ErrConflict = errors.New("already exists")
	// ErrNoCredential means the request carried no credential at all.
	ErrNoCredential = errors.New("no credential")
	// ErrInvalidCredential means the credential is malformed, unknown, deleted
	// or does not match.
	ErrInvalidCredential = errors.New("invalid credential")
	// ErrUnavailable means the store could not be reached in time. It never
	// means the credential is wrong.
	ErrUnavailable = errors.New("key store unavailable")
	// ErrNotBroadcast means a change was made but its revocation could not
	// be sent to the other sidecars: they forget the old state within their
	// cache TTL instead of at once. Stores wrap it together with
	// ErrUnavailable; callers that know it treat the change as done.
	ErrNotBroadcast = errors.New("change made, but its revocation was not broadcast")
	// ErrOverAllocated means the per-key maxima of an organization would add up
	// to more than the organization's quota.
	ErrOverAllocated = errors.New("per-key quotas would exceed the organization quota")
	// ErrSigningOff means a signed request reached a gateway without an
	// operator key (no Sealer): it cannot verify signatures.
	ErrSigningOff = errors.New("signed requests are off")
	// ErrNotSignable means the key has no sealed secret (it was created while
	// signing was off), so its signatures cannot be verified.
	ErrNotSignable = errors.New("key has no sealed secret and cannot sign requests")
	// ErrBadSignature means a signed request's signature does not match.
	ErrBadSignature = errors.New("request signature does not match")
)

// InvalidError reports a field of a request that is not acceptable. Field is
// empty when the value as a whole is (In then names it).
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string {
	if e.Field == "" {
		return "invalid value: " + e.Reason
	}
	return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason)
}

// PermissionError reports that a key lacks the permission a route needs.
type PermissionError struct {
	Need Permission
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("API key lacks the %q permission", string(e.Need))
}

// In returns the error with its field placed under parent, for a field of a
// nested object: "per" in "rate_limit" becomes "rate_limit.per".
func (e *InvalidError) In(parent string) *InvalidError {
	if e.Field == "" {
		return &InvalidError{Field: parent, Reason: e.Reason}
	}
	return &InvalidError{Field: parent + "." + e.Field, Reason: e.Reason}
}

// prefixInvalid places an *InvalidError under parent and returns any other
// error unchanged.
func prefixInvalid(parent string, err error) error {
	var inv *InvalidError
	if errors.As(err, &inv) {
		return inv.In(parent)
	}
	return err
}
