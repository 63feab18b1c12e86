package keys

import (
	"crypto/rand"
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
	Unlimited      bool   `json:"unlimited"`
	Partner        bool   `json:"partner"`
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
