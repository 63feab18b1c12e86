package keys

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// RateLimit is a short-window limit beside the period quotas: at most Burst
// requests at once, refilling at Requests per Per (GCRA). keys only models
// and stores it; quota counts it.
//
// Its JSON form, in storage and in the operator API, is
//
//	{"requests": 10, "per": "1m", "burst": 20, "shadow": true}
//
// where per is a Go duration from 1s to 24h, burst is optional (0 or absent
// means Requests) and shadow is optional. A nil *RateLimit means no limit.
type RateLimit struct {
	// Requests is how many requests Per refills; at least 1.
	Requests int64
	// Per is the refill window, from MinRatePer to MaxRatePer.
	Per time.Duration
	// Burst is how many requests may pass at once; 0 means Requests.
	Burst int64
	// Shadow makes the limit evaluated and reported but never refusing, so
	// operators can see what a new limit would do before enforcing it.
	Shadow bool
}

// Bounds of a rate limit. MaxRateCount keeps the GCRA arithmetic exact: with
// at most 1e9 requests per second the emission interval is at least 1ns, and
// MaxRateRefill keeps a full burst's refill time far inside an int64 of
// nanoseconds and a Lua double of microseconds.
const (
	MinRatePer    = time.Second
	MaxRatePer    = 24 * time.Hour
	MaxRateCount  = 1_000_000_000
	MaxRateRefill = 10 * 365 * 24 * time.Hour
)

// EffectiveBurst returns Burst, or Requests when Burst is 0.
func (l RateLimit) EffectiveBurst() int64 {
	if l.Burst == 0 {
		return l.Requests
	}
	return l.Burst
}

// Interval returns the emission interval of the limit: Per / Requests, the
// time one request takes to refill. Valid limits give at least 1ns.
func (l RateLimit) Interval() time.Duration {
	if l.Requests <= 0 {
		return 0
	}
	return l.Per / time.Duration(l.Requests)
}

// Validate checks the limit's bounds. It returns a *InvalidError naming the
// sub-field (requests, per, burst); callers that know the limit's own field
// name prefix it with InvalidError.In.
func (l RateLimit) Validate() error {
	switch {
	case l.Requests < 1 || l.Requests > MaxRateCount:
		return &InvalidError{Field: "requests", Reason: fmt.Sprintf("must be an integer from 1 to %d", int64(MaxRateCount))}
	case l.Per < MinRatePer || l.Per > MaxRatePer:
		return &InvalidError{Field: "per", Reason: "must be a Go duration from 1s to 24h"}
	case l.Burst < 0 || l.Burst > MaxRateCount:
		return &InvalidError{Field: "burst", Reason: fmt.Sprintf("must be an integer from 1 to %d, or 0 or absent for requests", int64(MaxRateCount))}
	}
	// burst × per / requests, in floating point so it cannot overflow.
	if refill := float64(l.EffectiveBurst()) * float64(l.Per) / float64(l.Requests); refill > float64(MaxRateRefill) {
		return &InvalidError{Field: "burst", Reason: "refilling a full burst (burst × per / requests) must take at most 10 years"}
	}
	return nil
}

// rateLimitJSON is the wire form of RateLimit. Pointers tell absent fields
// from zero ones.
type rateLimitJSON struct {
	Requests *int64  `json:"requests"`
	Per      *string `json:"per"`
	Burst    *int64  `json:"burst,omitempty"`
	Shadow   *bool   `json:"shadow,omitempty"`
}

// MarshalJSON renders the limit as {"requests","per","burst","shadow"},
// omitting a zero burst and a false shadow.
func (l RateLimit) MarshalJSON() ([]byte, error) {
	per := FormatRatePer(l.Per)
	w := rateLimitJSON{Requests: &l.Requests, Per: &per}
	if l.Burst != 0 {
		w.Burst = &l.Burst
	}
	if l.Shadow {
		w.Shadow = &l.Shadow
	}
	return json.Marshal(w)
}

// UnmarshalJSON parses the JSON form strictly: requests and per are
// required, unknown fields are refused, and the result must pass Validate.
// Every refusal is a *InvalidError naming the sub-field.
func (l *RateLimit) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var w rateLimitJSON
	if err := dec.Decode(&w); err != nil {
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) && typ.Field != "" {
			return &InvalidError{Field: typ.Field, Reason: "must be " + jsonKind(typ.Field)}
		}
		return &InvalidError{Reason: `a rate limit must be an object {"requests": N, "per": "1m", "burst": B, "shadow": false}: ` + err.Error()}
	}
	if dec.More() {
		return &InvalidError{Reason: "a rate limit must be a single JSON object"}
	}
	if w.Requests == nil {
		return &InvalidError{Field: "requests", Reason: "is required"}
	}
	if w.Per == nil {
		return &InvalidError{Field: "per", Reason: "is required"}
	}
	per, err := time.ParseDuration(*w.Per)
	if err != nil {
		return &InvalidError{Field: "per", Reason: "must be a Go duration from 1s to 24h, such as 1s, 1m or 1h"}
	}
	out := RateLimit{Requests: *w.Requests, Per: per}
	if w.Burst != nil {
		if *w.Burst == 0 {
			return &InvalidError{Field: "burst", Reason: "must be at least 1 (leave it out for requests)"}
		}
		out.Burst = *w.Burst
	}
	if w.Shadow != nil {
		out.Shadow = *w.Shadow
	}
	if err := out.Validate(); err != nil {
		return err
	}
	*l = out
	return nil
}

func jsonKind(field string) string {
	switch field {
	case "per":
		return "a string holding a Go duration"
	case "shadow":
		return "a boolean"
	default:
		return "an integer"
	}
}

// FormatRatePer renders a window as the shortest Go duration string that
// parses back to it: "1m" rather than "1m0s".
func FormatRatePer(d time.Duration) string {
	switch {
	case d != 0 && d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d != 0 && d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d != 0 && d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	default:
		return d.String()
	}
}

// validateRateLimit checks an optional limit and names it field.
func validateRateLimit(field string, l *RateLimit) error {
	if l == nil {
		return nil
	}
	if err := l.Validate(); err != nil {
		return prefixInvalid(field, err)
	}
	return nil
}

// OrgRateLimit returns the rate limit of the organization as a whole under
// plan: the organization's own when it has one, else the plan's
// org_rate_limit; nil when neither has one. The result is shared with o and
// plan: do not modify it.
func (o Org) OrgRateLimit(plan Plan) *RateLimit {
	if o.RateLimit != nil {
		return o.RateLimit
	}
	return plan.OrgRateLimit
}

// KeyRateLimit returns the rate limit of the key under plan: the key's own
// when it has one, else the plan's key_rate_limit; nil when neither has one.
// The result is shared with k and plan: do not modify it.
func (k Key) KeyRateLimit(plan Plan) *RateLimit {
	if k.RateLimit != nil {
		return k.RateLimit
	}
	return plan.KeyRateLimit
}

// RateLimits returns the limits that apply to the principal's requests: the
// key's (its own, else the plan's key_rate_limit) and the organization's
// (its own, else the plan's org_rate_limit); nil for none. They are shared
// with the principal, which may be shared with the credential cache: do not
// modify them.
func (p Principal) RateLimits() (key, org *RateLimit) {
	return p.Key.KeyRateLimit(p.Plan), p.Org.OrgRateLimit(p.Plan)
}
