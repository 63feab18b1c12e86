package quota

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Charge asks to count one request of Cost against a key and its
// organization. Maxima below zero mean no limit.
type Charge struct {
	OrgID  string
	KeyID  string
	Cost   int64
	OrgMax int64
	KeyMax int64
	Period Period
	// At is the instant of the request; it picks the window.
	At time.Time
	// Token identifies this request: a charge retried with the same Token
	// (after a lost reply) returns the first result and counts once. Empty
	// means no protection.
	Token string
	// Nonce, when set, may be used once until NonceUntil: a second charge
	// with the same Nonce is refused with ErrReplay and counts nothing. It
	// carries the replay check of signed requests in the same round trip.
	Nonce      string
	NonceUntil time.Time
	// RateLimits are checked in the same atomic step as the quotas (see
	// RateLimit): the charge is admitted iff every quota and every rate
	// limit that is not a shadow allows it; refused, none of them changes.
	// A charge of cost 0 checks none of them and advances none, but reports
	// their state.
	RateLimits []RateLimit
}

// Result is the state of both counters and of the rate limits after an
// admitted charge.
type Result struct {
	OrgUsed int64
	KeyUsed int64
	Window  Window
	// RateLimits holds the state of each of Charge.RateLimits, in the same
	// order; nil when the charge had none.
	RateLimits []RateLimitState
}

// Scope names which quota or rate limit refused, and whom a rate limit
// binds.
type Scope string

// The two scopes of quotas and rate limits.
const (
	ScopeKey Scope = "key"
	ScopeOrg Scope = "organization"
)

// ExceededError reports a refused charge: nothing was counted.
type ExceededError struct {
	Scope Scope
	Limit int64
	// Used is the usage of that quota, unchanged by the refused charge.
	Used   int64
	Window Window
}

func (e *ExceededError) Error() string {
	return fmt.Sprintf("%s quota of %d requests exhausted", e.Scope, e.Limit)
}

var (
	// ErrUnavailable means the counter store could not be reached in time;
	// whether the charge was counted is unknown.
	ErrUnavailable = errors.New("quota store unavailable")
	// ErrReplay means the charge's Nonce was used before.
	ErrReplay = errors.New("nonce already used")
	// ErrOverflow means a meter booking would take a counter out of the
	// int64 range; nothing of that booking was applied.
	ErrOverflow = errors.New("meter counter would overflow")
)

// CheckOrgID refuses organization ids a counter cannot key: empty, or with
// braces, which would break the Redis Cluster hash tag ({org}). Both
// counters apply it, so they answer alike.
func CheckOrgID(org string) error {
	if org == "" || strings.ContainsAny(org, "{}") {
		return fmt.Errorf("org id %q: must be non-empty and contain no brace", org)
	}
	return nil
}

// Usage is what an organization and one of its keys used in a window.
type Usage struct {
	Org    int64
	Key    int64
	Window Window
}

// Meter is a named quantity counted per window of its period: "ingress" and
// "egress" bytes per plan period, or upstream-reported meters such as
// "pinned_bytes" with PeriodNone (running totals).
type Meter struct {
	Name   string
	Period Period
}

// MeterDelta adds Delta (which may be negative) to a meter.
type MeterDelta struct {
	Meter Meter
	Delta int64
}

// Counter counts requests and meters. Implementations are safe for concurrent
// use, never read the clock (every instant is passed in), and translate store
// failures into errors wrapping ErrUnavailable.
type Counter interface {
	// Charge applies the quota and rate-limit rule atomically. A refusal
	// returns ErrReplay, *ExceededError or *RateLimitedError (checked in this
	// order: the first that applies is reported) and changes nothing.
	Charge(ctx context.Context, c Charge) (Result, error)
	// Usage reads the request counters of an organization and, when keyID is
	// not empty, of one key, in the window of period at at.
	Usage(ctx context.Context, orgID, keyID string, period Period, at time.Time) (Usage, error)
	// Add books meter deltas for an organization in the windows at at and
	// returns each meter's total right after its delta was applied, in the
	// order given (a meter named twice gets its running total each time),
	// so callers learn the new usage without another round trip. It is
	// all or nothing: a delta that would overflow a counter fails the call
	// with ErrOverflow and books none of them.
	Add(ctx context.Context, orgID string, at time.Time, deltas []MeterDelta) ([]int64, error)
	// Meters reads meters of an organization in the windows at at, in the
	// order asked.
	Meters(ctx context.Context, orgID string, at time.Time, meters []Meter) ([]int64, error)
}
