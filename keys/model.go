package keys

import (
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"time"
)

// Plan is what an organization pays for: a request quota per period and
// limits for other meters. The JSON tags are the storage format.
type Plan struct {
	ID    int64  `json:"id"`
	Name  string `json:"name"`
	Price string `json:"price"`
	// Period is when the quota resets: month, day, hour, none, or a Go
	// duration. keys keeps it as text; quota parses it.
	Period string `json:"period"`
	// MaxAPIRequests is the request quota per period; nil means unlimited.
	MaxAPIRequests *int64 `json:"max_api_requests"`
	// Limits holds the limits of other meters by name (ingress, egress,
	// pinned_count, pinned_bytes, ipns, …).
	Limits map[string]int64 `json:"limits,omitempty"`
	// KeyRateLimit applies to each key of an organization on the plan that
	// has no rate limit of its own; nil means none.
	KeyRateLimit *RateLimit `json:"key_rate_limit,omitempty"`
	// OrgRateLimit applies to each organization on the plan as a whole,
	// unless the organization has a rate limit of its own; nil means none.
	OrgRateLimit *RateLimit `json:"org_rate_limit,omitempty"`
}

// Org is a tenant: a "user account" in seeds 000/001, an "organization" in
// seed 002. The JSON tags are the storage format.
type Org struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	Email         string `json:"email"`
	EmailVerified bool   `json:"email_verified"`
	PlanID        int64  `json:"plan_id"`
	// NextPlanID is a plan change scheduled for the next period.
	NextPlanID *int64 `json:"next_plan_id,omitempty"`
	// NextPlanAt is when NextPlanID takes effect: the end of the period
	// window in which it was scheduled. See ApplyScheduledPlan.
	NextPlanAt time.Time `json:"next_plan_at,omitzero"`
	// MaxAPIRequests overrides the plan's quota when set.
	MaxAPIRequests *int64 `json:"max_api_requests,omitempty"`
	// RateLimit overrides the plan's org_rate_limit when set.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
	Unlimited bool       `json:"unlimited"`
	Partner   bool       `json:"partner"`
	// PartnerID is the partner organization that created this one, if any.
	PartnerID string `json:"partner_id,omitempty"`
	// Username and PasswordHash are the optional login of the seed 003 routes.
	Username     string    `json:"username,omitempty"`
	PasswordHash string    `json:"password_hash,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	// Revision counts the stored changes of the organization; UpdateOrg
	// accepts a change only from a caller that read the current revision.
	Revision int64 `json:"revision,omitempty"`
}

// Quota sources reported by the account endpoint.
const (
	SourcePlan      = "plan"
	SourceOverride  = "override"
	SourceUnlimited = "unlimited"
)

// RequestQuota returns the organization's request quota under plan and where
// it comes from. A negative max means unlimited.
func (o Org) RequestQuota(plan Plan) (max int64, source string) {
	switch {
	case o.Unlimited:
		return -1, SourceUnlimited
	case o.MaxAPIRequests != nil:
		return *o.MaxAPIRequests, SourceOverride
	case plan.MaxAPIRequests != nil:
		return *plan.MaxAPIRequests, SourcePlan
	default:
		return -1, SourceUnlimited
	}
}

// ApplyScheduledPlan returns o with its scheduled plan change made current
// when it is due at now, and whether it was. The switch is applied lazily by
// whoever reads the organization (the Authenticator, the stats routes); a
// reader that writes the organization back persists it.
func (o Org) ApplyScheduledPlan(now time.Time) (Org, bool) {
	if o.NextPlanID == nil || o.NextPlanAt.IsZero() || now.Before(o.NextPlanAt) {
		return o, false
	}
	o.PlanID, o.NextPlanID, o.NextPlanAt = *o.NextPlanID, nil, time.Time{}
	return o, true
}

// Key is an API key of an organization. The JSON tags are the storage format;
// the secret itself is never stored, only its hash and, when signing is on,
// its sealed (encrypted) form.
type Key struct {
	// UID is the public access_key, a UUID.
	UID            string       `json:"uid"`
	OrgID          string       `json:"org_id"`
	Name           string       `json:"name"`
	Permissions    []Permission `json:"permissions"`
	MaxAPIRequests *int64       `json:"max_api_requests,omitempty"`
	Comment        string       `json:"comment,omitempty"`
	CreatedAt      time.Time    `json:"created_at"`
	SecretHash     SecretHash   `json:"secret_hash"`
	// SealedSecret is the secret encrypted under the operator's key, needed
	// to verify signed requests; nil when signing was off at creation.
	SealedSecret []byte `json:"sealed_secret,omitempty"`
	// RateLimit overrides the plan's key_rate_limit when set.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
	// ExpiresAt is when the key stops working; nil means never.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Disabled turns the key off without deleting it. It is stored negated
	// (the API's "enabled") so that the zero value, and every record written
	// before the field existed, is an enabled key. See Enabled.
	Disabled bool `json:"disabled,omitempty"`
	// LastUsedAt is when the key last authenticated a request, as recorded
	// by TouchKeys (about once a minute per key and sidecar); nil when never.
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	// Previous is the secret a rotation replaced, still accepted until its
	// ExpiresAt; nil when there is none. See Store.RotateKey.
	Previous *PreviousSecret `json:"previous_secret,omitempty"`
}

// PreviousSecret is the secret a key had before its last rotation, kept for
// the rotation's grace period so clients can switch without an outage.
type PreviousSecret struct {
	Hash SecretHash `json:"hash"`
	// Sealed is the previous secret sealed for signed requests; nil when
	// the key had no sealed secret.
	Sealed []byte `json:"sealed,omitempty"`
	// ExpiresAt is the end of the grace period: from then on the previous
	// secret is refused like a deleted key's.
	ExpiresAt time.Time `json:"expires_at"`
}

// Enabled reports whether the key is switched on (the API's "enabled").
func (k Key) Enabled() bool { return !k.Disabled }

// Expired reports whether the key's expiry has passed at now.
func (k Key) Expired(now time.Time) bool { return k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) }

// ActiveAt reports whether the key may authenticate a request at now: it is
// enabled and not expired.
func (k Key) ActiveAt(now time.Time) bool { return !k.Disabled && !k.Expired(now) }

// PreviousValid reports whether the key has a previous secret still within
// its grace period at now.
func (k Key) PreviousValid(now time.Time) bool {
	return k.Previous != nil && now.Before(k.Previous.ExpiresAt)
}

// MatchHash reports whether h is the hash of one of the key's secrets at now:
// the current one, or the previous one within its grace period (previous is
// then true). Both comparisons run in constant time. It does not look at
// Enabled or ExpiresAt; see ActiveAt.
func (k Key) MatchHash(h SecretHash, now time.Time) (ok, previous bool) {
	if subtle.ConstantTimeCompare(k.SecretHash[:], h[:]) == 1 {
		return true, false
	}
	if k.Previous != nil && subtle.ConstantTimeCompare(k.Previous.Hash[:], h[:]) == 1 && now.Before(k.Previous.ExpiresAt) {
		return true, true
	}
	return false, false
}

// Ref returns the key's reference for TouchKeys.
func (k Key) Ref() KeyRef { return KeyRef{OrgID: k.OrgID, UID: k.UID} }

// KeyRef names a key by its organization and uid, everything a store needs
// to find its records.
type KeyRef struct {
	OrgID string
	UID   string
}

// KeyMax returns the key's own request maximum; negative means none.
func (k Key) KeyMax() int64 {
	if k.MaxAPIRequests == nil {
		return -1
	}
	return *k.MaxAPIRequests
}

// Principal is who a request acts as: an authenticated key with the
// organization and plan it belongs to, as they were when it was verified.
type Principal struct {
	Key  Key
	Org  Org
	Plan Plan
	// VerifiedAt is when the store last confirmed the key.
	VerifiedAt time.Time
	// Stale is set when the store could not be reached and the principal was
	// served from a cache entry older than the cache TTL.
	Stale bool
	// PreviousSecret is set when the credential was the key's previous
	// secret, accepted during its rotation's grace period.
	PreviousSecret bool
}

// Can reports whether the principal's key grants need.
func (p Principal) Can(need Permission) bool { return Allows(p.Key.Permissions, need) }

// NewUUID returns a random (version 4) UUID in canonical form.
func NewUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// MaxNameLen bounds key names and organization names.
const MaxNameLen = 128

// ValidateName checks a key or organization name: present, not too long,
// printable.
func ValidateName(field, name string) error {
	switch {
	case name == "":
		return &InvalidError{Field: field, Reason: "must not be empty"}
	case len(name) > MaxNameLen:
		return &InvalidError{Field: field, Reason: fmt.Sprintf("must be at most %d bytes", MaxNameLen)}
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return &InvalidError{Field: field, Reason: "must not contain control characters"}
		}
	}
	return nil
}
