package keys

import (
	"fmt"
	"strings"
	"time"
)

// ValidateOrgID checks an organization id for storage: present, and free of
// the braces that would break a Redis Cluster hash tag. Both stores apply it,
// so they accept the same ids.
func ValidateOrgID(id string) error {
	if id == "" {
		return &InvalidError{Field: "id", Reason: "must not be empty"}
	}
	if strings.ContainsAny(id, "{}") {
		return &InvalidError{Field: "id", Reason: "must not contain braces"}
	}
	return nil
}

// Validate checks a key for storage: a uid usable in index entries (no
// slash), a name, a non-negative max, a valid rate limit and expiry, a valid
// organization id. Both stores apply it, so they accept the same keys.
func (k Key) Validate() error {
	switch {
	case k.UID == "" || strings.Contains(k.UID, "/"):
		return &InvalidError{Field: "uid", Reason: "must be non-empty and contain no slash"}
	case k.Name == "":
		return &InvalidError{Field: "name", Reason: "must not be empty"}
	case k.MaxAPIRequests != nil && *k.MaxAPIRequests < 0:
		return &InvalidError{Field: "max_api_requests", Reason: "must not be negative"}
	}
	if err := validateRateLimit("rate_limit", k.RateLimit); err != nil {
		return err
	}
	if k.ExpiresAt != nil {
		if err := validateTime("expires_at", *k.ExpiresAt); err != nil {
			return err
		}
	}
	return ValidateOrgID(k.OrgID)
}

// Validate checks an organization for storage: its id and its rate limit.
// Both stores apply it on create and update.
func (o Org) Validate() error {
	if err := ValidateOrgID(o.ID); err != nil {
		return err
	}
	if o.MaxAPIRequests != nil && *o.MaxAPIRequests < 0 {
		return &InvalidError{Field: "max_api_requests", Reason: "must not be negative"}
	}
	return validateRateLimit("rate_limit", o.RateLimit)
}

// Validate checks what keys knows of a plan: non-negative maxima and limits,
// valid rate limits. The operator API checks the rest (id, name, period,
// meter names) before it gets here. Both stores apply it.
func (p Plan) Validate() error {
	if p.MaxAPIRequests != nil && *p.MaxAPIRequests < 0 {
		return &InvalidError{Field: "max_api_requests", Reason: "must not be negative"}
	}
	if err := validateLimits(p.Limits); err != nil {
		return err
	}
	if err := validateRateLimit("key_rate_limit", p.KeyRateLimit); err != nil {
		return err
	}
	return validateRateLimit("org_rate_limit", p.OrgRateLimit)
}

func validateLimits(m map[string]int64) error {
	for name, v := range m {
		if name == "" {
			return &InvalidError{Field: "limits", Reason: "meter names must not be empty"}
		}
		if v < 0 {
			return &InvalidError{Field: "limits", Reason: fmt.Sprintf("meter %q: must be at least 0", name)}
		}
	}
	return nil
}

// validateTime checks that t renders as RFC 3339 in UTC (year 1 to 9999),
// so storing it can never fail.
func validateTime(field string, t time.Time) error {
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return &InvalidError{Field: field, Reason: "must be an RFC 3339 time between the years 1 and 9999"}
	}
	return nil
}
