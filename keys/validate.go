package keys

import "strings"

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
// slash), a name, a non-negative max, a valid organization id. Both stores
// apply it, so they accept the same keys.
func (k Key) Validate() error {
	switch {
	case k.UID == "" || strings.Contains(k.UID, "/"):
		return &InvalidError{Field: "uid", Reason: "must be non-empty and contain no slash"}
	case k.Name == "":
		return &InvalidError{Field: "name", Reason: "must not be empty"}
	case k.MaxAPIRequests != nil && *k.MaxAPIRequests < 0:
		return &InvalidError{Field: "max_api_requests", Reason: "must not be negative"}
	}
	return ValidateOrgID(k.OrgID)
}
