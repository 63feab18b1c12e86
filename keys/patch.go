package keys

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Change is one field of a partial update (a PATCH): when Set, the field
// becomes Value; when not, it keeps what it had.
//
// Decoded from JSON, an absent field is not Set and a present one is, JSON
// null included: null gives the zero Value (nil for a pointer, which means
// "none") and sets Null, so Validate can refuse null where a field cannot be
// none (enabled, permissions, name).
type Change[T any] struct {
	Set   bool
	Value T
	// Null is set by UnmarshalJSON when the JSON value was null.
	Null bool
}

// ChangeTo returns a Change that sets the field to v.
func ChangeTo[T any](v T) Change[T] { return Change[T]{Set: true, Value: v} }

// UnmarshalJSON decodes the field's new value and marks it Set.
func (c *Change[T]) UnmarshalJSON(b []byte) error {
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*c = Change[T]{Set: true, Value: v, Null: bytes.Equal(bytes.TrimSpace(b), []byte("null"))}
	return nil
}

// MaxCommentLen bounds a key's comment, in characters.
const MaxCommentLen = 255

// KeyPatch is a partial update of a key, as PATCH
// /admin/v1/orgs/{id}/keys/{name} takes it: its JSON names are the API's.
// Store.UpdateKey applies it atomically; Validate says what it refuses.
type KeyPatch struct {
	// MaxAPIRequests is the per-key maximum (nil: none), under the
	// organization's allocation rule.
	MaxAPIRequests Change[*int64] `json:"max_api_requests"`
	// RateLimit is the key's own rate limit (nil: the plan's key_rate_limit).
	RateLimit Change[*RateLimit] `json:"rate_limit"`
	// ExpiresAt is when the key stops working (nil: never). A time in the
	// past expires the key at once.
	ExpiresAt Change[*time.Time] `json:"expires_at"`
	// Enabled switches the key on or off; null is refused.
	Enabled Change[bool] `json:"enabled"`
	// Permissions replaces the key's permissions; at least one.
	Permissions Change[[]Permission] `json:"permissions"`
	// Comment replaces the key's comment; null clears it.
	Comment Change[string] `json:"comment"`
}

// Validate checks every field that is Set and returns a *InvalidError
// naming the first bad one. Both stores call it, so a bad patch changes
// nothing.
func (p KeyPatch) Validate() error {
	if c := p.MaxAPIRequests; c.Set && c.Value != nil && *c.Value < 0 {
		return &InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	if c := p.RateLimit; c.Set {
		if err := validateRateLimit("rate_limit", c.Value); err != nil {
			return err
		}
	}
	if c := p.ExpiresAt; c.Set && c.Value != nil {
		if err := validateTime("expires_at", *c.Value); err != nil {
			return err
		}
	}
	if c := p.Enabled; c.Set && c.Null {
		return &InvalidError{Field: "enabled", Reason: "must be true or false"}
	}
	if c := p.Permissions; c.Set {
		if _, err := normalizePermissions(c.Value); err != nil {
			return err
		}
	}
	if c := p.Comment; c.Set && len([]rune(c.Value)) > MaxCommentLen {
		return &InvalidError{Field: "comment", Reason: fmt.Sprintf("must be at most %d characters", MaxCommentLen)}
	}
	return nil
}

// Apply returns k with the patch's Set fields changed: permissions sorted
// and without duplicates, the expiry in UTC. It shares no memory with p. It
// assumes Validate passed.
func (p KeyPatch) Apply(k Key) Key {
	if p.MaxAPIRequests.Set {
		k.MaxAPIRequests = cloneInt(p.MaxAPIRequests.Value)
	}
	if p.RateLimit.Set {
		k.RateLimit = cloneRateLimit(p.RateLimit.Value)
	}
	if p.ExpiresAt.Set {
		k.ExpiresAt = nil
		if p.ExpiresAt.Value != nil {
			t := p.ExpiresAt.Value.UTC()
			k.ExpiresAt = &t
		}
	}
	if p.Enabled.Set {
		k.Disabled = !p.Enabled.Value
	}
	if p.Permissions.Set {
		if ps, err := normalizePermissions(p.Permissions.Value); err == nil {
			k.Permissions = ps
		}
	}
	if p.Comment.Set {
		k.Comment = p.Comment.Value
	}
	return k
}

// normalizePermissions validates ps and returns them sorted without
// duplicates, in a new slice.
func normalizePermissions(ps []Permission) ([]Permission, error) {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = string(p)
	}
	return ParsePermissions(names)
}

// PlanPatch is a partial update of a plan, as PATCH /admin/v1/plans/{id}
// takes it: its JSON names are the API's. The id and the period cannot
// change (the period's counters would lose their meaning). Store.UpdatePlan
// applies it.
type PlanPatch struct {
	Name  Change[string] `json:"name"`
	Price Change[string] `json:"price"`
	// MaxAPIRequests is the request quota per period (nil: unlimited).
	MaxAPIRequests Change[*int64] `json:"max_api_requests"`
	// Limits replaces the limits of other meters as a whole (nil: none).
	Limits       Change[map[string]int64] `json:"limits"`
	KeyRateLimit Change[*RateLimit]       `json:"key_rate_limit"`
	OrgRateLimit Change[*RateLimit]       `json:"org_rate_limit"`
}

// Validate checks every field that is Set and returns a *InvalidError
// naming the first bad one. Meter names are the operator API's to check.
func (p PlanPatch) Validate() error {
	if c := p.Name; c.Set {
		if err := ValidateName("name", c.Value); err != nil {
			return err
		}
	}
	if c := p.Price; c.Set {
		switch {
		case c.Null:
			return &InvalidError{Field: "price", Reason: "must be a string"}
		case len(c.Value) > MaxNameLen:
			return &InvalidError{Field: "price", Reason: "too long"}
		}
	}
	if c := p.MaxAPIRequests; c.Set && c.Value != nil && *c.Value < 0 {
		return &InvalidError{Field: "max_api_requests", Reason: "must be null or at least 0"}
	}
	if c := p.Limits; c.Set {
		if err := validateLimits(c.Value); err != nil {
			return err
		}
	}
	if c := p.KeyRateLimit; c.Set {
		if err := validateRateLimit("key_rate_limit", c.Value); err != nil {
			return err
		}
	}
	if c := p.OrgRateLimit; c.Set {
		if err := validateRateLimit("org_rate_limit", c.Value); err != nil {
			return err
		}
	}
	return nil
}

// Apply returns pl with the patch's Set fields changed. It shares no memory
// with p. It assumes Validate passed.
func (p PlanPatch) Apply(pl Plan) Plan {
	if p.Name.Set {
		pl.Name = p.Name.Value
	}
	if p.Price.Set {
		pl.Price = p.Price.Value
	}
	if p.MaxAPIRequests.Set {
		pl.MaxAPIRequests = cloneInt(p.MaxAPIRequests.Value)
	}
	if p.Limits.Set {
		pl.Limits = maps.Clone(p.Limits.Value)
		if len(pl.Limits) == 0 {
			pl.Limits = nil
		}
	}
	if p.KeyRateLimit.Set {
		pl.KeyRateLimit = cloneRateLimit(p.KeyRateLimit.Value)
	}
	if p.OrgRateLimit.Set {
		pl.OrgRateLimit = cloneRateLimit(p.OrgRateLimit.Value)
	}
	return pl
}

func cloneInt(p *int64) *int64 {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func cloneRateLimit(l *RateLimit) *RateLimit {
	if l == nil {
		return nil
	}
	v := *l
	return &v
}

func cloneTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := *t
	return &v
}

// Clone returns a deep copy of k: no slice or pointer is shared. Stores use
// it to copy keys in and out.
func (k Key) Clone() Key {
	k.Permissions = slices.Clone(k.Permissions)
	k.MaxAPIRequests = cloneInt(k.MaxAPIRequests)
	k.SealedSecret = slices.Clone(k.SealedSecret)
	k.RateLimit = cloneRateLimit(k.RateLimit)
	k.ExpiresAt = cloneTime(k.ExpiresAt)
	k.LastUsedAt = cloneTime(k.LastUsedAt)
	if k.Previous != nil {
		prev := *k.Previous
		prev.Sealed = slices.Clone(prev.Sealed)
		k.Previous = &prev
	}
	return k
}

// Clone returns a deep copy of p.
func (p Plan) Clone() Plan {
	p.MaxAPIRequests = cloneInt(p.MaxAPIRequests)
	p.Limits = maps.Clone(p.Limits)
	p.KeyRateLimit = cloneRateLimit(p.KeyRateLimit)
	p.OrgRateLimit = cloneRateLimit(p.OrgRateLimit)
	return p
}

// Clone returns a deep copy of o.
func (o Org) Clone() Org {
	o.NextPlanID = cloneInt(o.NextPlanID)
	o.MaxAPIRequests = cloneInt(o.MaxAPIRequests)
	o.RateLimit = cloneRateLimit(o.RateLimit)
	return o
}
