package quota

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRateLimitValidate(t *testing.T) {
	ok := RateLimit{Name: "org-rate", Scope: ScopeOrg, Requests: 10, Per: time.Minute}
	with := func(f func(l *RateLimit)) RateLimit {
		l := ok
		f(&l)
		return l
	}
	for _, l := range []RateLimit{
		ok,
		with(func(l *RateLimit) { l.Scope, l.Name = ScopeKey, "key-rate" }),
		with(func(l *RateLimit) { l.Burst = 1 }),
		with(func(l *RateLimit) { l.Per = time.Second }),
		with(func(l *RateLimit) { l.Per = 24 * time.Hour }),
		with(func(l *RateLimit) { l.Requests, l.Per = 1_000_000, time.Second }),
		with(func(l *RateLimit) { l.Requests, l.Per = 1_000_000_000, 24*time.Hour }),  // the default burst always fits
		with(func(l *RateLimit) { l.Requests, l.Per, l.Burst = 1, 24*time.Hour, 30 }), // 720h exactly
		with(func(l *RateLimit) { l.Name = strings.Repeat("a", 64) }),
		with(func(l *RateLimit) { l.Name = "Plan_1.rate-2" }),
		with(func(l *RateLimit) { l.Shadow = true }),
	} {
		if err := l.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v, want nil", l, err)
		}
	}
	for _, tc := range []struct {
		l    RateLimit
		want string // in the message
	}{
		{with(func(l *RateLimit) { l.Name = "" }), "name"},
		{with(func(l *RateLimit) { l.Name = strings.Repeat("a", 65) }), "name"},
		{with(func(l *RateLimit) { l.Name = "a b" }), "name"},
		{with(func(l *RateLimit) { l.Name = "é" }), "name"},
		{with(func(l *RateLimit) { l.Scope = "" }), "scope"},
		{with(func(l *RateLimit) { l.Requests = 0 }), "requests"},
		{with(func(l *RateLimit) { l.Requests = -3 }), "requests"},
		{with(func(l *RateLimit) { l.Per = 0 }), "per"},
		{with(func(l *RateLimit) { l.Per = time.Second - 1 }), "per"},
		{with(func(l *RateLimit) { l.Per = 24*time.Hour + 1 }), "per"},
		{with(func(l *RateLimit) { l.Requests, l.Per = 1_000_001, time.Second }), "microsecond"},
		{with(func(l *RateLimit) { l.Burst = -1 }), "burst"},
		{with(func(l *RateLimit) { l.Requests, l.Per, l.Burst = 1, 24*time.Hour, 31 }), "burst"},
	} {
		err := tc.l.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error about %s", tc.l, err, tc.want)
		}
	}
}

func TestRateLimitInterval(t *testing.T) {
	for _, tc := range []struct {
		requests int64
		per      time.Duration
		want     time.Duration
	}{
		{10, time.Minute, 6 * time.Second},
		{3, time.Second, 333334 * time.Microsecond}, // rounded up: never faster than asked
		{1_000_000, time.Second, time.Microsecond},
		{1, 24 * time.Hour, 24 * time.Hour},
		{7, 1500 * time.Millisecond, 214286 * time.Microsecond},
	} {
		l := RateLimit{Name: "r", Scope: ScopeOrg, Requests: tc.requests, Per: tc.per}
		if got := l.Interval(); got != tc.want {
			t.Errorf("Interval of %d per %s = %s, want %s", tc.requests, tc.per, got, tc.want)
		}
	}
	if b := (RateLimit{Requests: 7}).EffectiveBurst(); b != 7 {
		t.Errorf("default burst = %d, want requests (7)", b)
	}
}

func TestRateOutcomeMismatch(t *testing.T) {
	c := Charge{Cost: 1, RateLimits: []RateLimit{{Name: "r", Scope: ScopeOrg, Requests: 1, Per: time.Second}}}
	if _, err := RateOutcome(c, nil, nil); err == nil {
		t.Error("RateOutcome with no debts for one limit: nil error")
	}
}

// admits is GCRA as both counters run it, for the fuzz test.
func admits(l RateLimit, debt, cost int64) bool {
	burst, interval := l.EffectiveBurst(), l.Interval().Microseconds()
	return cost <= burst && debt+cost*interval <= burst*interval
}

// FuzzRateLimit checks, for every valid limit, that the arithmetic stays
// exact in float64 (what Redis's Lua computes with), that the state reported
// agrees with what a charge would get, and that RetryAfter is exactly the
// wait after which the charge passes.
func FuzzRateLimit(f *testing.F) {
	f.Add(int64(10), int64(time.Minute), int64(0), int64(1), int64(0), false)
	f.Add(int64(3), int64(time.Second), int64(5), int64(3), int64(900_000), false)
	f.Add(int64(1), int64(24*time.Hour), int64(30), int64(31), int64(0), true)
	f.Add(int64(1_000_000), int64(time.Second), int64(1), int64(1), int64(1), false)
	f.Fuzz(func(t *testing.T, requests, per, burst, cost, debt int64, shadow bool) {
		l := RateLimit{Name: "fuzz", Scope: ScopeKey, Requests: requests, Per: time.Duration(per), Burst: burst, Shadow: shadow}
		if l.Validate() != nil {
			return
		}
		b, interval := l.EffectiveBurst(), l.Interval().Microseconds()
		if interval < 1 || b < 1 || b*interval > MaxBurstSpan.Microseconds() {
			t.Fatalf("valid %+v: interval %dµs, burst %d", l, interval, b)
		}
		// A TAT in 2100 plus the longest debt is exact as a float64.
		tat := time.Date(2100, 12, 31, 0, 0, 0, 0, time.UTC).UnixMicro() + b*interval
		if float64(tat) >= 1<<53 {
			t.Fatalf("%+v: TAT %d is not exact in float64", l, tat)
		}
		if cost < 0 || cost > 1<<20 {
			cost %= 1 << 20
			cost = max(cost, -cost)
		}
		if debt < 0 || debt > b*interval {
			debt %= b*interval + 1
			debt = max(debt, -debt)
		}
		c := Charge{KeyID: "k", Cost: cost, RateLimits: []RateLimit{l}}
		limited := cost > 0 && !admits(l, debt, cost)
		states, err := RateOutcome(c, []int64{debt}, []bool{limited})
		if limited && !shadow {
			var e *RateLimitedError
			if !errors.As(err, &e) {
				t.Fatalf("%+v debt %d cost %d: %v, want *RateLimitedError", l, debt, cost, err)
			}
			if e.CostAboveBurst != (cost > b) {
				t.Fatalf("%+v cost %d: CostAboveBurst %t", l, cost, e.CostAboveBurst)
			}
			if !e.CostAboveBurst {
				wait := e.RetryAfter.Microseconds()
				if wait <= 0 || !admits(l, debt-wait, cost) || admits(l, debt-wait+1, cost) {
					t.Fatalf("%+v debt %d cost %d: RetryAfter %s is not the exact wait", l, debt, cost, e.RetryAfter)
				}
			}
			return
		}
		if err != nil || len(states) != 1 {
			t.Fatalf("%+v debt %d cost %d: %v, %v", l, debt, cost, states, err)
		}
		s := states[0]
		if s.Remaining < 0 || s.Remaining > b || s.WouldLimit != limited || s.Reset != time.Duration(debt)*time.Microsecond {
			t.Fatalf("%+v debt %d: state %+v", l, debt, s)
		}
		// Remaining is exactly what a charge could spend now.
		if !admits(l, debt, s.Remaining) || admits(l, debt, s.Remaining+1) {
			t.Fatalf("%+v debt %d: Remaining %d is not what fits", l, debt, s.Remaining)
		}
		if (s.Remaining == 0) != (s.RetryAfter > 0) {
			t.Fatalf("%+v debt %d: Remaining %d with RetryAfter %s", l, debt, s.Remaining, s.RetryAfter)
		}
		if w := s.RetryAfter.Microseconds(); w > 0 && (!admits(l, debt-w, 1) || admits(l, debt-w+1, 1)) {
			t.Fatalf("%+v debt %d: RetryAfter %s is not the wait for one unit", l, debt, s.RetryAfter)
		}
	})
}
