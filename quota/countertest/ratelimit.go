package countertest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/quota"
)

// rateTests are the rate-limit cases of Run.
var rateTests = []struct {
	name string
	fn   func(t *testing.T, s *suite)
}{
	{"RateRefusesQuotaWouldPass", testRateRefusesQuotaWouldPass},
	{"QuotaRefusesRateWouldPass", testQuotaRefusesRateWouldPass},
	{"RateAndQuotaRefuse", testRateAndQuotaRefuse},
	{"RateSeveralRefuse", testRateSeveralRefuse},
	{"RateCostAboveOne", testRateCostAboveOne},
	{"RateBurstAtWindowBoundary", testRateBurstAtWindowBoundary},
	{"RateRefill", testRateRefill},
	{"RateShadow", testRateShadow},
	{"RateKeyScope", testRateKeyScope},
	{"RateConcurrentOrg", testRateConcurrentOrg},
	{"RateToken", testRateToken},
	{"RateNonce", testRateNonce},
	{"RateCostZero", testRateCostZero},
	{"RateInvalid", testRateInvalid},
	{"RateLimitChanged", testRateLimitChanged},
	{"RateEarlyChargeLowersNothing", testRateEarlyChargeLowersNothing},
}

// rateBase is the rate cases' "now": mid-month, so that the minutes they
// move on stay in one monthly window.
var rateBase = time.Date(2100, time.January, 15, 12, 0, 0, 0, time.UTC)

// rcharge is charge at rateBase.
func rcharge(org, key string) quota.Charge {
	ch := charge(org, key)
	ch.At = rateBase
	return ch
}

// orgRate is an org-wide limit of requests per per with burst.
func orgRate(requests int64, per time.Duration, burst int64) quota.RateLimit {
	return quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: requests, Per: per, Burst: burst}
}

// keyRate is a per-key limit of requests per per with burst.
func keyRate(requests int64, per time.Duration, burst int64) quota.RateLimit {
	return quota.RateLimit{Name: "key-rate", Scope: quota.ScopeKey, Requests: requests, Per: per, Burst: burst}
}

// limited charges and fails the test unless the charge is refused with a
// *RateLimitedError, which it returns.
func (s *suite) limited(t *testing.T, ch quota.Charge) *quota.RateLimitedError {
	t.Helper()
	res, err := s.c.Charge(s.ctx, ch)
	var rl *quota.RateLimitedError
	if !errors.As(err, &rl) {
		t.Fatalf("Charge(%s) = %+v, %v; want *quota.RateLimitedError", describe(ch), res, err)
	}
	return rl
}

// rates reads the state of ch's rate limits at ch.At with a charge of cost 0,
// which checks and changes nothing.
func (s *suite) rates(t *testing.T, ch quota.Charge) []quota.RateLimitState {
	t.Helper()
	ch.Cost = 0
	ch.Token, ch.Nonce = "", ""
	return s.admit(t, ch).RateLimits
}

// wantRate checks one rate limit's state.
func wantRate(t *testing.T, got quota.RateLimitState, remaining int64, retryAfter, reset time.Duration, wouldLimit bool) {
	t.Helper()
	if got.Remaining != remaining || got.RetryAfter != retryAfter || got.Reset != reset || got.WouldLimit != wouldLimit {
		t.Errorf("rate limit %q state = remaining %d, retry after %s, reset %s, would limit %t; want %d, %s, %s, %t",
			got.Limit.Name, got.Remaining, got.RetryAfter, got.Reset, got.WouldLimit, remaining, retryAfter, reset, wouldLimit)
	}
}

// wantLimited checks a rate refusal.
func wantLimited(t *testing.T, e *quota.RateLimitedError, l quota.RateLimit, retryAfter, reset time.Duration) {
	t.Helper()
	if e.Scope != l.Scope || e.Name != l.Name || e.Limit != l || e.RetryAfter != retryAfter || e.Reset != reset || e.CostAboveBurst {
		t.Errorf("RateLimitedError = %+v; want scope %s, name %s, limit %+v, retry after %s, reset %s", e, l.Scope, l.Name, l, retryAfter, reset)
	}
}

func testRateRefusesQuotaWouldPass(t *testing.T, s *suite) {
	lim := orgRate(3, time.Minute, 0) // a unit every 20s, burst 3
	ch := rcharge("org1", "k1")
	ch.OrgMax, ch.KeyMax = 100, 100
	ch.RateLimits = []quota.RateLimit{lim}
	for i := range 3 {
		res := s.admit(t, ch)
		if len(res.RateLimits) != 1 {
			t.Fatalf("result has %d rate limit states, want 1", len(res.RateLimits))
		}
		if res.RateLimits[0].Limit != lim {
			t.Errorf("state of %+v, want of %+v", res.RateLimits[0].Limit, lim)
		}
		retry := time.Duration(0)
		if i == 2 {
			retry = 20 * time.Second
		}
		wantRate(t, res.RateLimits[0], int64(2-i), retry, time.Duration(i+1)*20*time.Second, false)
	}
	for range 3 {
		wantLimited(t, s.limited(t, ch), lim, 20*time.Second, time.Minute)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 3, 3)
	// One unit has refilled 20s later: refusals advanced nothing.
	ch.At = rateBase.Add(20 * time.Second)
	res := s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 0, 20*time.Second, time.Minute, false)
	wantLimited(t, s.limited(t, ch), lim, 20*time.Second, time.Minute)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 4, 4)

	// A charge without rate limits reports none.
	if res := s.admit(t, rcharge("org2", "k1")); res.RateLimits != nil {
		t.Errorf("charge without rate limits: states %+v, want nil", res.RateLimits)
	}
}

func testQuotaRefusesRateWouldPass(t *testing.T, s *suite) {
	lim := orgRate(10, time.Minute, 0)
	kl := keyRate(10, time.Minute, 0)
	ch := rcharge("org1", "k1")
	ch.OrgMax, ch.KeyMax = 3, 2
	ch.RateLimits = []quota.RateLimit{lim, kl}
	s.admit(t, ch)
	s.admit(t, ch)
	if ex := s.refuse(t, ch); ex.Scope != quota.ScopeKey {
		t.Errorf("refused by %s, want the key quota", ex.Scope)
	}
	ch.KeyID = "k2"
	s.admit(t, ch)
	if ex := s.refuse(t, ch); ex.Scope != quota.ScopeOrg {
		t.Errorf("refused by %s, want the org quota", ex.Scope)
	}
	// The quota refusals advanced neither rate limit.
	st := s.rates(t, ch)
	wantRate(t, st[0], 7, 0, 18*time.Second, false)
	wantRate(t, st[1], 9, 0, 6*time.Second, false)
	ch.KeyID = "k1"
	st = s.rates(t, ch)
	wantRate(t, st[1], 8, 0, 12*time.Second, false)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 3, 2)
}

func testRateAndQuotaRefuse(t *testing.T, s *suite) {
	lim := orgRate(2, time.Minute, 0)
	ch := rcharge("org1", "k1")
	ch.OrgMax = 2
	ch.RateLimits = []quota.RateLimit{lim}
	s.admit(t, ch)
	s.admit(t, ch)
	// Both exhausted: the quota is reported, as waiting would not cure it.
	if ex := s.refuse(t, ch); ex.Scope != quota.ScopeOrg || ex.Used != 2 {
		t.Errorf("refusal %+v, want the org quota at 2", ex)
	}
	// The quota has room again (a raised max), the rate limit still refuses.
	ch.OrgMax = 10
	wantLimited(t, s.limited(t, ch), lim, 30*time.Second, time.Minute)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 2, 2)
}

func testRateSeveralRefuse(t *testing.T, s *suite) {
	slow := orgRate(1, time.Minute, 1)
	fast := keyRate(1, 10*time.Second, 1)
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{fast, slow}
	s.admit(t, ch)
	// Both refuse: the one with the longest wait is reported.
	wantLimited(t, s.limited(t, ch), slow, time.Minute, time.Minute)
	ch.RateLimits = []quota.RateLimit{slow, fast}
	wantLimited(t, s.limited(t, ch), slow, time.Minute, time.Minute)
	// Only the slow one refuses 10s later.
	ch.At = rateBase.Add(10 * time.Second)
	wantLimited(t, s.limited(t, ch), slow, 50*time.Second, 50*time.Second)
	// On a tie, the first given.
	tie := rcharge("org2", "k1")
	a, b := orgRate(1, time.Minute, 1), keyRate(1, time.Minute, 1)
	tie.RateLimits = []quota.RateLimit{a, b}
	s.admit(t, tie)
	wantLimited(t, s.limited(t, tie), a, time.Minute, time.Minute)
	tie.RateLimits = []quota.RateLimit{b, a}
	wantLimited(t, s.limited(t, tie), b, time.Minute, time.Minute)
	// A cost above a burst outranks any wait.
	wide := orgRate(1, 24*time.Hour, 2)
	wide.Name = "wide"
	tie.Cost = 2
	tie.RateLimits = []quota.RateLimit{wide}
	s.admit(t, tie)
	tie.RateLimits = []quota.RateLimit{wide, a}
	if e := s.limited(t, tie); !e.CostAboveBurst || e.Name != a.Name {
		t.Errorf("refusal %+v, want %q's cost above burst", e, a.Name)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 1, 1)
	s.wantUsage(t, "org2", "k1", ch.Period, rateBase, 3, 3)
}

func testRateCostAboveOne(t *testing.T, s *suite) {
	lim := orgRate(5, 10*time.Second, 0) // a unit every 2s, burst 5
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{lim}
	ch.Cost = 3
	res := s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 2, 0, 6*time.Second, false)
	// Three units are there after one more refills.
	wantLimited(t, s.limited(t, ch), lim, 2*time.Second, 6*time.Second)
	ch.Cost = 2
	res = s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 0, 2*time.Second, 10*time.Second, false)
	ch.Cost = 3
	ch.At = rateBase.Add(5 * time.Second) // 2.5 units back
	wantLimited(t, s.limited(t, ch), lim, time.Second, 5*time.Second)
	ch.At = rateBase.Add(6 * time.Second)
	res = s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 0, 2*time.Second, 10*time.Second, false)

	// A cost above the burst never passes: RetryAfter is zero and says so.
	ch.At = rateBase.Add(time.Hour)
	ch.Cost = 6
	e := s.limited(t, ch)
	if !e.CostAboveBurst || e.RetryAfter != 0 || e.Reset != 0 || e.Name != lim.Name {
		t.Errorf("cost 6 over burst 5: %+v, want CostAboveBurst, no retry, reset 0", e)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 8, 8)
	// A shadow limit it exceeds lets it through and says it would limit.
	ch.RateLimits[0].Shadow = true
	res = s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 5, 0, 0, true)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 14, 14)
}

func testRateBurstAtWindowBoundary(t *testing.T, s *suite) {
	lim := orgRate(5, time.Minute, 0) // a unit every 12s
	ch := charge("org1", "k1")
	ch.Period = quota.PeriodHour // base is 2s before the hour turns
	ch.OrgMax = 5
	ch.RateLimits = []quota.RateLimit{lim}
	ch.Cost = 5
	old := s.admit(t, ch).Window
	ch.Cost = 1
	s.refuse(t, ch) // the quota, at 5 of 5
	// The quota window rolls; the rate limit is still empty.
	ch.At = old.End
	wantLimited(t, s.limited(t, ch), lim, 10*time.Second, 58*time.Second)
	s.wantUsage(t, "org1", "k1", ch.Period, old.End, 0, 0)
	ch.At = old.End.Add(10 * time.Second)
	res := s.admit(t, ch)
	if res.OrgUsed != 1 || res.Window.Start != old.End {
		t.Errorf("first charge of the new window: org used %d in %+v, want 1 in the window after %+v", res.OrgUsed, res.Window, old)
	}
	wantRate(t, res.RateLimits[0], 0, 12*time.Second, time.Minute, false)
	s.wantUsage(t, "org1", "k1", ch.Period, base, 5, 5)
	s.wantUsage(t, "org1", "k1", ch.Period, old.End, 1, 1)
}

func testRateRefill(t *testing.T, s *suite) {
	lim := keyRate(10, 10*time.Second, 0) // a unit a second, burst 10
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{lim}
	ch.Cost = 10
	s.admit(t, ch)
	ch.At = rateBase.Add(3500 * time.Millisecond)
	wantRate(t, s.rates(t, ch)[0], 3, 0, 6500*time.Millisecond, false)
	ch.Cost = 3
	res := s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 0, 500*time.Millisecond, 9500*time.Millisecond, false)
	ch.Cost = 1
	wantLimited(t, s.limited(t, ch), lim, 500*time.Millisecond, 9500*time.Millisecond)
	ch.At = ch.At.Add(500 * time.Millisecond)
	s.admit(t, ch)
	// Full again once the debt is paid, and it stays full.
	for _, at := range []time.Duration{time.Hour, 14 * time.Second, 15 * time.Second} {
		ch.At = rateBase.Add(at)
		wantRate(t, s.rates(t, ch)[0], 10, 0, 0, false)
	}
	ch.Cost = 10
	s.admit(t, ch)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 24, 24)
}

func testRateShadow(t *testing.T, s *suite) {
	shadow := orgRate(2, time.Minute, 0) // a unit every 30s
	shadow.Shadow = true
	enforced := keyRate(100, time.Minute, 0)
	ch := rcharge("org1", "k1")
	ch.OrgMax = 5
	ch.RateLimits = []quota.RateLimit{shadow, enforced}
	res := s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 1, 0, 30*time.Second, false)
	res = s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 0, 30*time.Second, time.Minute, false)
	// It would limit now: the charge passes and the shadow does not advance.
	for range 2 {
		res = s.admit(t, ch)
		wantRate(t, res.RateLimits[0], 0, 30*time.Second, time.Minute, true)
	}
	wantRate(t, res.RateLimits[1], 96, 0, 2400*time.Millisecond, false)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 4, 4)
	// 30s later it has exactly one unit, as if enforced all along.
	ch.At = rateBase.Add(30 * time.Second)
	res = s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 0, 30*time.Second, time.Minute, false)
	// A charge a quota refuses advances no shadow either.
	ch.At = rateBase.Add(time.Minute)
	s.refuse(t, ch)
	wantRate(t, s.rates(t, ch)[0], 1, 0, 30*time.Second, false)
	// Nor one an enforced limit refuses.
	ch.OrgMax = 100
	tight := orgRate(1, time.Minute, 0)
	tight.Name = "tight"
	spend := ch
	spend.RateLimits = []quota.RateLimit{tight}
	s.admit(t, spend)
	ch.RateLimits = []quota.RateLimit{shadow, tight}
	wantLimited(t, s.limited(t, ch), tight, time.Minute, time.Minute)
	wantRate(t, s.rates(t, ch)[0], 1, 0, 30*time.Second, false)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 6, 6)
}

func testRateKeyScope(t *testing.T, s *suite) {
	kl := keyRate(2, time.Minute, 0)
	ol := orgRate(3, time.Minute, 0)
	k1 := rcharge("org1", "k1")
	k1.RateLimits = []quota.RateLimit{kl, ol}
	k2 := k1
	k2.KeyID = "k2"
	s.admit(t, k1)
	s.admit(t, k1)
	wantLimited(t, s.limited(t, k1), kl, 30*time.Second, time.Minute)
	s.admit(t, k2)
	wantLimited(t, s.limited(t, k2), ol, 20*time.Second, time.Minute)
	// Another org, and a key of the same id there, have their own state.
	other := k1
	other.OrgID = "org2"
	s.admit(t, other)
	s.wantUsage(t, "org1", "k1", k1.Period, rateBase, 3, 2)
	s.wantUsage(t, "org1", "k2", k1.Period, rateBase, 3, 1)
	s.wantUsage(t, "org2", "k1", k1.Period, rateBase, 1, 1)
}

// chargeAllRate runs n charges of ch at once, spread over keys, and returns
// how many were admitted. Every refusal must be a *RateLimitedError.
func (s *suite) chargeAllRate(t *testing.T, n int, ch quota.Charge, keys int) int {
	t.Helper()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		admitted int
		errs     []error
	)
	start := make(chan struct{})
	for i := range n {
		c := ch
		c.KeyID = "k" + string(rune('a'+i%keys))
		wg.Go(func() {
			<-start
			_, err := s.c.Charge(s.ctx, c)
			mu.Lock()
			defer mu.Unlock()
			var rl *quota.RateLimitedError
			switch {
			case err == nil:
				admitted++
			case errors.As(err, &rl):
			default:
				errs = append(errs, err)
			}
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if i == 5 {
			t.Errorf("… and %d more unexpected errors", len(errs)-i)
			break
		}
		t.Errorf("concurrent Charge: %v, want nil or *RateLimitedError", err)
	}
	return admitted
}

func testRateConcurrentOrg(t *testing.T, s *suite) {
	ch := rcharge("org1", "")
	ch.RateLimits = []quota.RateLimit{orgRate(10, time.Minute, 10)}
	if got := s.chargeAllRate(t, 60, ch, 6); got != 10 {
		t.Errorf("admitted %d of 60 charges against an org rate of 10/min, burst 10; want exactly 10", got)
	}
	s.wantUsage(t, "org1", "", ch.Period, rateBase, 10, 0)
	wantRate(t, s.rates(t, ch)[0], 0, 6*time.Second, time.Minute, false)
}

func testRateToken(t *testing.T, s *suite) {
	lim := orgRate(2, time.Minute, 0)
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{lim}
	ch.Token = "tok-1"
	first := s.admit(t, ch)
	again := s.admit(t, ch)
	if len(again.RateLimits) != 1 || again.RateLimits[0] != first.RateLimits[0] || again.OrgUsed != first.OrgUsed {
		t.Errorf("retried charge = %+v, want the first result %+v", again, first)
	}
	wantRate(t, s.rates(t, ch)[0], 1, 0, 30*time.Second, false)
	ch.Token = "tok-2"
	s.admit(t, ch)
	ch.Token = "tok-3"
	e1 := s.limited(t, ch)
	e2 := s.limited(t, ch)
	if *e1 != *e2 {
		t.Errorf("retried refusal = %+v, want the first %+v", e2, e1)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 2, 2)
}

func testRateNonce(t *testing.T, s *suite) {
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{orgRate(1, time.Minute, 0)}
	ch.Nonce = "sig-1"
	ch.NonceUntil = rateBase.Add(5 * time.Minute)
	s.admit(t, ch)
	// A replay is reported as such even when the rate limit would refuse.
	if _, err := s.c.Charge(s.ctx, ch); !errors.Is(err, quota.ErrReplay) {
		t.Errorf("replay: %v, want ErrReplay", err)
	}
	// A rate-limited charge leaves its nonce unused.
	ch.Nonce = "sig-2"
	s.limited(t, ch)
	ch.At = rateBase.Add(time.Minute)
	s.admit(t, ch)
	if _, err := s.c.Charge(s.ctx, ch); !errors.Is(err, quota.ErrReplay) {
		t.Errorf("second use of sig-2: %v, want ErrReplay", err)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 2, 2)
}

func testRateCostZero(t *testing.T, s *suite) {
	lim := orgRate(1, time.Minute, 0)
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{lim}
	ch.Cost = 0
	res := s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 1, 0, 0, false)
	ch.Cost = 1
	s.admit(t, ch)
	ch.Cost = 0
	for range 3 {
		res := s.admit(t, ch)
		wantRate(t, res.RateLimits[0], 0, time.Minute, time.Minute, false)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 1, 1)
}

func testRateInvalid(t *testing.T, s *suite) {
	valid := orgRate(10, time.Minute, 0)
	with := func(f func(l *quota.RateLimit)) quota.RateLimit {
		l := valid
		f(&l)
		return l
	}
	for _, tc := range []struct {
		name   string
		limits []quota.RateLimit
		keyID  string
	}{
		{"no name", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Name = "" })}, "k1"},
		{"colon in name", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Name = "a:b" })}, "k1"},
		{"brace in name", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Name = "{x}" })}, "k1"},
		{"bad scope", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Scope = "plan" })}, "k1"},
		{"no requests", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Requests = 0 })}, "k1"},
		{"per below 1s", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Per = 999 * time.Millisecond })}, "k1"},
		{"per above 24h", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Per = 24*time.Hour + time.Second })}, "k1"},
		{"over one per µs", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Per, l.Requests = time.Second, 1_000_001 })}, "k1"},
		{"negative burst", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Burst = -1 })}, "k1"},
		{"burst refills too slowly", []quota.RateLimit{with(func(l *quota.RateLimit) { l.Requests, l.Per, l.Burst = 1, 24*time.Hour, 31 })}, "k1"},
		{"key scope without key", []quota.RateLimit{keyRate(1, time.Minute, 0)}, ""},
		{"twice", []quota.RateLimit{valid, orgRate(5, time.Second, 0)}, "k1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := rcharge("org1", tc.keyID)
			ch.RateLimits = tc.limits
			_, err := s.c.Charge(s.ctx, ch)
			var (
				rl *quota.RateLimitedError
				ex *quota.ExceededError
			)
			if err == nil || errors.As(err, &rl) || errors.As(err, &ex) || errors.Is(err, quota.ErrUnavailable) {
				t.Errorf("Charge with %+v: %v, want an invalid-charge error", tc.limits, err)
			}
		})
	}
	// The same name in both scopes is two limits.
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{valid, with(func(l *quota.RateLimit) { l.Scope = quota.ScopeKey })}
	s.admit(t, ch)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 1, 1)
}

func testRateLimitChanged(t *testing.T, s *suite) {
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{orgRate(10, time.Minute, 0)} // every 6s
	ch.Cost = 8
	s.admit(t, ch) // debt 48s
	// Lowered below what was spent: an empty bucket of the new limit (its
	// window is 24s), refilling at the new rate.
	lower := orgRate(10, time.Minute, 4)
	ch.RateLimits = []quota.RateLimit{lower}
	ch.Cost = 1
	wantLimited(t, s.limited(t, ch), lower, 6*time.Second, 24*time.Second)
	wantRate(t, s.rates(t, ch)[0], 0, 6*time.Second, 24*time.Second, false)
	// Raised: the debt carries over, in time (the refusal above stored the
	// empty bucket of the lower limit: 24s).
	higher := orgRate(60, time.Minute, 60) // every 1s
	ch.RateLimits = []quota.RateLimit{higher}
	res := s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 35, 0, 25*time.Second, false)
	// Raised to a window shorter than the debt: it does not keep the old
	// wait (100/min spent, then 1000/s refused for 30s), it starts empty.
	fast := orgRate(10, time.Second, 10) // every 100ms, window 1s
	ch.RateLimits = []quota.RateLimit{fast}
	wantLimited(t, s.limited(t, ch), fast, 100*time.Millisecond, time.Second)
	ch.At = ch.At.Add(100 * time.Millisecond)
	res = s.admit(t, ch)
	wantRate(t, res.RateLimits[0], 0, 100*time.Millisecond, time.Second, false)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 10, 10)
}

func testRateEarlyChargeLowersNothing(t *testing.T, s *suite) {
	lim := orgRate(10, time.Second, 10) // every 100ms, window 1s
	ch := rcharge("org1", "k1")
	ch.RateLimits = []quota.RateLimit{lim}
	ch.Cost = 10
	s.admit(t, ch) // debt 1s: full to the brim
	// A charge dated 300ms earlier (it raced to the store) sees a debt
	// beyond the window: refused, as if the bucket were just empty, and it
	// lowers nothing, else the slots up to the brim would be handed out
	// twice.
	ch.Cost = 1
	ch.At = rateBase.Add(-300 * time.Millisecond)
	wantLimited(t, s.limited(t, ch), lim, 100*time.Millisecond, time.Second)
	ch.At = rateBase.Add(50 * time.Millisecond)
	wantLimited(t, s.limited(t, ch), lim, 50*time.Millisecond, 950*time.Millisecond)
	ch.At = rateBase.Add(100 * time.Millisecond)
	s.admit(t, ch)
	s.wantUsage(t, "org1", "k1", ch.Period, rateBase, 11, 11)
}

// RunShared runs the cases of two counters on one store (two sidecars on
// one Redis): they must share every limit exactly. newPair returns two
// Counters on the same, empty store.
func RunShared(t *testing.T, newPair func(t *testing.T) (quota.Counter, quota.Counter)) {
	t.Helper()
	t.Run("SharedRateLimit", func(t *testing.T) {
		a, b := newPair(t)
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		sa, sb := &suite{ctx: ctx, c: a}, &suite{ctx: ctx, c: b}
		lim := orgRate(4, time.Minute, 0)
		ch := rcharge("org1", "k1")
		ch.OrgMax = 100
		ch.RateLimits = []quota.RateLimit{lim}
		sa.admit(t, ch)
		sb.admit(t, ch)
		sa.admit(t, ch)
		res := sb.admit(t, ch)
		wantRate(t, res.RateLimits[0], 0, 15*time.Second, time.Minute, false)
		wantLimited(t, sa.limited(t, ch), lim, 15*time.Second, time.Minute)
		wantLimited(t, sb.limited(t, ch), lim, 15*time.Second, time.Minute)
		settle(ctx, t, a, b)
		sa.wantUsage(t, "org1", "k1", ch.Period, rateBase, 4, 4)
		sb.wantUsage(t, "org1", "k1", ch.Period, rateBase, 4, 4)
	})
	t.Run("SharedConcurrent", func(t *testing.T) {
		a, b := newPair(t)
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		ch := rcharge("org1", "")
		ch.RateLimits = []quota.RateLimit{orgRate(10, time.Minute, 10)}
		var wg sync.WaitGroup
		var got [2]int
		for i, c := range []quota.Counter{a, b} {
			wg.Go(func() {
				s := &suite{ctx: ctx, c: c}
				got[i] = s.chargeAllRate(t, 30, ch, 3)
			})
		}
		wg.Wait()
		if got[0]+got[1] != 10 {
			t.Errorf("two counters admitted %d + %d of 60 against an org rate of 10/min, burst 10; want exactly 10", got[0], got[1])
		}
		settle(ctx, t, a, b)
		(&suite{ctx: ctx, c: a}).wantUsage(t, "org1", "", ch.Period, rateBase, 10, 0)
	})
}

// settle closes the counters that hold units of their own (quota/lease:
// blocks, counts not booked yet), which gives them back: usage is exact
// after it. Counters without Close are left as they are.
func settle(ctx context.Context, t *testing.T, cs ...quota.Counter) {
	t.Helper()
	for _, c := range cs {
		if cl, ok := c.(interface{ Close(context.Context) error }); ok {
			if err := cl.Close(ctx); err != nil {
				t.Fatalf("closing a counter: %v", err)
			}
		}
	}
}
