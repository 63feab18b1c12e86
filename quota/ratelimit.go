package quota

import (
	"fmt"
	"time"
)

// RateLimit is a short-window limit checked beside the quotas (GCRA, the
// generic cell rate algorithm): at most Burst units at once, refilling at
// Requests units per Per. A request of cost c needs c units.
//
// Time is counted in whole microseconds: a unit refills every Interval, which
// is Per/Requests rounded up to a microsecond, so a limit that does not divide
// evenly refills a hair slower than asked (3000 per 1s: every 334µs), never
// faster.
//
// Counters evaluate a limit at Charge.At, never by their own clock, so the
// sidecars sharing a limit must agree on the time (as they must for quota
// windows); a charge dated before the limit's last one finds less room, never
// more.
type RateLimit struct {
	// Name is the policy name shown in headers ("key-rate", "org-rate"). A
	// limit's state is kept per scope and name: renaming a limit starts it
	// afresh, changing its numbers keeps what was spent.
	Name string
	// Scope is ScopeKey (each key has its own state) or ScopeOrg (one state
	// for the whole organization).
	Scope    Scope
	Requests int64
	// Per is the refill window, from MinRatePer to MaxRatePer.
	Per time.Duration
	// Burst is how many units may be spent at once; 0 means Requests.
	Burst int64
	// Shadow limits are evaluated and reported but never refuse: see
	// RateLimitState.WouldLimit.
	Shadow bool
}

// Bounds of a RateLimit.
const (
	MinRatePer = time.Second
	MaxRatePer = 24 * time.Hour
	// MaxBurstSpan bounds how long a full burst takes to refill
	// (Burst × Interval). It keeps every instant the counters compute exact
	// in the float64 arithmetic of Redis's Lua, and the default burst
	// (Requests) always fits.
	MaxBurstSpan = 720 * time.Hour
	// maxRateNameLen bounds a limit's name: it is part of a Redis key and of
	// the RateLimit headers.
	maxRateNameLen = 64
)

// Validate reports why l cannot be counted, naming the field; nil if it can.
func (l RateLimit) Validate() error {
	if err := checkRateName(l.Name); err != nil {
		return err
	}
	if l.Scope != ScopeKey && l.Scope != ScopeOrg {
		return fmt.Errorf("rate limit %q: scope %q: want %q or %q", l.Name, l.Scope, ScopeKey, ScopeOrg)
	}
	if l.Requests < 1 {
		return fmt.Errorf("rate limit %q: requests %d: must be at least 1", l.Name, l.Requests)
	}
	if l.Per < MinRatePer || l.Per > MaxRatePer {
		return fmt.Errorf("rate limit %q: per %s: must be from %s to %s", l.Name, l.Per, MinRatePer, MaxRatePer)
	}
	if l.Requests > l.Per.Microseconds() {
		return fmt.Errorf("rate limit %q: %d requests per %s: at most one per microsecond", l.Name, l.Requests, l.Per)
	}
	if l.Burst < 0 {
		return fmt.Errorf("rate limit %q: burst %d: must be at least 1 (0 means requests)", l.Name, l.Burst)
	}
	if span := l.EffectiveBurst() * l.Interval().Microseconds(); span > MaxBurstSpan.Microseconds() {
		return fmt.Errorf("rate limit %q: burst %d: a full burst must refill within %s (at most %d here)",
			l.Name, l.EffectiveBurst(), MaxBurstSpan, MaxBurstSpan.Microseconds()/l.Interval().Microseconds())
	}
	return nil
}

// checkRateName allows 1 to 64 ASCII letters, digits, '-', '_' and '.': the
// name goes into Redis keys after a ':' and into structured-field headers.
func checkRateName(name string) error {
	if name == "" || len(name) > maxRateNameLen {
		return fmt.Errorf("rate limit name %q: must be 1 to %d characters", name, maxRateNameLen)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return fmt.Errorf("rate limit name %q: only letters, digits, '-', '_' and '.'", name)
		}
	}
	return nil
}

// EffectiveBurst is Burst, or Requests when Burst is 0.
func (l RateLimit) EffectiveBurst() int64 {
	if l.Burst == 0 {
		return l.Requests
	}
	return l.Burst
}

// Interval is how often one unit refills: Per/Requests rounded up to a whole
// microsecond. Meaningful only for a valid limit.
func (l RateLimit) Interval() time.Duration {
	per, n := l.Per.Microseconds(), max(l.Requests, 1)
	return time.Duration((per+n-1)/n) * time.Microsecond
}

// RateLimitState is a rate limit's state after a charge, for the RateLimit
// headers, metrics and the access log.
type RateLimitState struct {
	Limit RateLimit
	// Remaining is how many units a charge could spend right now.
	Remaining int64
	// RetryAfter is the time until at least one unit is available: zero
	// when Remaining is at least 1.
	RetryAfter time.Duration
	// Reset is the time until the limit is full again (Remaining = burst).
	Reset time.Duration
	// WouldLimit is set on a shadow limit that would have refused this
	// charge. Such a limit does not advance, so it keeps reporting what
	// enforcing it would do; a shadow limit that would have allowed the
	// charge advances as an enforced one does.
	WouldLimit bool
}

// RateLimitedError reports a charge refused by a rate limit that is not a
// shadow: nothing was counted, no limit advanced and the nonce stays unused.
// When several rate limits refuse, the one with the longest RetryAfter is
// reported (CostAboveBurst counts as the longest), the first given on a
// tie. When a quota refuses too, the *ExceededError is reported instead:
// waiting RetryAfter would not cure it.
type RateLimitedError struct {
	// Scope and Name are Limit's, for messages.
	Scope Scope
	Name  string
	// RetryAfter is the time until a charge of the same cost would pass
	// this limit, if nothing else spends from it.
	RetryAfter time.Duration
	// Reset is the time until the limit is full again.
	Reset time.Duration
	// CostAboveBurst means the charge costs more than the limit's burst:
	// no wait lets it pass, and RetryAfter is zero.
	CostAboveBurst bool
	Limit          RateLimit
}

func (e *RateLimitedError) Error() string {
	if e.CostAboveBurst {
		return fmt.Sprintf("%s rate limit %q: cost above its burst of %d", e.Scope, e.Name, e.Limit.EffectiveBurst())
	}
	return fmt.Sprintf("%s rate limit %q of %d per %s exceeded: retry after %s", e.Scope, e.Name, e.Limit.Requests, e.Limit.Per, e.RetryAfter)
}

// checkRateLimits validates the charge's limits: each valid, a key-scoped
// one only with a key, and no scope and name twice (they would share state).
func checkRateLimits(c Charge) error {
	type id struct {
		scope Scope
		name  string
	}
	seen := make(map[id]bool, len(c.RateLimits))
	for _, l := range c.RateLimits {
		if err := l.Validate(); err != nil {
			return err
		}
		if l.Scope == ScopeKey && c.KeyID == "" {
			return fmt.Errorf("rate limit %q: scope key needs a key id", l.Name)
		}
		k := id{l.Scope, l.Name}
		if seen[k] {
			return fmt.Errorf("rate limit %q: %s scope named twice", l.Name, l.Scope)
		}
		seen[k] = true
	}
	return nil
}

// CheckCharge refuses a charge a counter cannot count: a bad org id, a
// negative cost, or an invalid rate limit. Both counters apply it, so they
// answer alike.
func CheckCharge(c Charge) error {
	if err := CheckOrgID(c.OrgID); err != nil {
		return err
	}
	if c.Cost < 0 {
		return fmt.Errorf("charging org %s: negative cost %d", c.OrgID, c.Cost)
	}
	if len(c.RateLimits) > 0 {
		if err := checkRateLimits(c); err != nil {
			return fmt.Errorf("charging org %s: %w", c.OrgID, err)
		}
	}
	return nil
}

// RateOutcome turns the counters' view of a charge's rate limits into what
// Charge returns, so both counters answer alike. For each limit in
// c.RateLimits, debts[i] is its debt in microseconds (its theoretical arrival
// time minus the charge's instant, never negative): after the charge for a
// limit that advanced, before it otherwise. limited[i] says the limit would
// refuse c. When any limit that is not a shadow refuses, RateOutcome returns
// the *RateLimitedError to report; else the states.
func RateOutcome(c Charge, debts []int64, limited []bool) ([]RateLimitState, error) {
	if len(debts) != len(c.RateLimits) || len(limited) != len(c.RateLimits) {
		return nil, fmt.Errorf("rate limit states: %d limits, %d debts, %d flags", len(c.RateLimits), len(debts), len(limited))
	}
	var refusal *RateLimitedError
	for i, l := range c.RateLimits {
		if !limited[i] || l.Shadow {
			continue
		}
		e := refused(l, debts[i], c.Cost)
		if refusal == nil || longer(e, refusal) {
			refusal = e
		}
	}
	if refusal != nil {
		return nil, refusal
	}
	states := make([]RateLimitState, len(c.RateLimits))
	for i, l := range c.RateLimits {
		states[i] = state(l, debts[i], limited[i])
	}
	return states, nil
}

// longer reports whether a asks to wait longer than b.
func longer(a, b *RateLimitedError) bool {
	if a.CostAboveBurst || b.CostAboveBurst {
		return a.CostAboveBurst && !b.CostAboveBurst
	}
	return a.RetryAfter > b.RetryAfter
}

func refused(l RateLimit, debt, cost int64) *RateLimitedError {
	e := &RateLimitedError{Scope: l.Scope, Name: l.Name, Reset: micros(debt), Limit: l}
	burst, interval := l.EffectiveBurst(), l.Interval().Microseconds()
	if cost > burst {
		e.CostAboveBurst = true
		return e
	}
	// The charge fits once debt + cost×interval <= burst×interval.
	e.RetryAfter = micros(max(debt+(cost-burst)*interval, 0))
	return e
}

func state(l RateLimit, debt int64, wouldLimit bool) RateLimitState {
	burst, interval := l.EffectiveBurst(), l.Interval().Microseconds()
	s := RateLimitState{Limit: l, Reset: micros(debt), WouldLimit: wouldLimit}
	// A limit whose burst was lowered below its debt has nothing left.
	s.Remaining = min(max((burst*interval-debt)/interval, 0), burst)
	if s.Remaining == 0 {
		s.RetryAfter = micros(debt - (burst-1)*interval)
	}
	return s
}

func micros(n int64) time.Duration { return time.Duration(n) * time.Microsecond }
