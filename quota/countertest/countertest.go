// Package countertest is the conformance suite of quota.Counter: every
// implementation's tests call Run (and RunShared, for two counters on one
// store), which proves the implementations give the same answers. It tests
// only the interface.
//
// The suite controls time only through the instants it passes (Charge.At and
// the at arguments). They lie in the year 2100, so that a store which expires
// keys by its own clock (Redis, with EXPIREAT at Window.ExpireAt) keeps every
// window alive for the whole run.
package countertest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/quota"
)

// base is the suite's "now": two seconds before a month, a day and an hour
// turn, in the middle of nothing special otherwise.
var base = time.Date(2100, time.January, 31, 23, 59, 58, 0, time.UTC)

// timeout bounds every subtest's calls.
const timeout = 20 * time.Second

// Run runs the suite against Counters made by newCounter. Each subtest gets a
// fresh, empty Counter; the suite controls time through Charge.At.
func Run(t *testing.T, newCounter func(t *testing.T) quota.Counter) {
	t.Helper()
	for _, tc := range append([]struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"ConcurrentOrgMax", testConcurrentOrgMax},
		{"ConcurrentKeyMax", testConcurrentKeyMax},
		{"RefusalChangesNothing", testRefusalChangesNothing},
		{"KeyLimitBindsOneKey", testKeyLimitBindsOneKey},
		{"OrgLimitAcrossKeys", testOrgLimitAcrossKeys},
		{"Unlimited", testUnlimited},
		{"CostAtBoundary", testCostAtBoundary},
		{"CostZero", testCostZero},
		{"ExceededError", testExceededError},
		{"Rollover", testRollover},
		{"PeriodNone", testPeriodNone},
		{"OrgsIndependent", testOrgsIndependent},
		{"UsageWithoutKey", testUsageWithoutKey},
		{"Token", testToken},
		{"Nonce", testNonce},
		{"Meters", testMeters},
	}, rateTests...) {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), timeout)
			defer cancel()
			tc.fn(t, &suite{ctx: ctx, c: newCounter(t)})
		})
	}
}

// suite is one subtest's counter and context.
type suite struct {
	ctx context.Context
	c   quota.Counter
}

// charge is the suite's usual charge: cost 1, no limits, monthly, at base.
func charge(org, key string) quota.Charge {
	return quota.Charge{OrgID: org, KeyID: key, Cost: 1, OrgMax: -1, KeyMax: -1, Period: quota.PeriodMonth, At: base}
}

// admit charges and fails the test unless the charge is admitted.
func (s *suite) admit(t *testing.T, ch quota.Charge) quota.Result {
	t.Helper()
	res, err := s.c.Charge(s.ctx, ch)
	if err != nil {
		t.Fatalf("Charge(%s) = %v, want admitted", describe(ch), err)
	}
	return res
}

// refuse charges and fails the test unless the charge is refused with an
// *ExceededError, which it returns.
func (s *suite) refuse(t *testing.T, ch quota.Charge) *quota.ExceededError {
	t.Helper()
	res, err := s.c.Charge(s.ctx, ch)
	var ex *quota.ExceededError
	if !errors.As(err, &ex) {
		t.Fatalf("Charge(%s) = %+v, %v; want *quota.ExceededError", describe(ch), res, err)
	}
	return ex
}

// usage reads usage and fails the test on error.
func (s *suite) usage(t *testing.T, org, key string, p quota.Period, at time.Time) quota.Usage {
	t.Helper()
	u, err := s.c.Usage(s.ctx, org, key, p, at)
	if err != nil {
		t.Fatalf("Usage(%s, %s, %s, %s): %v", org, key, p, at, err)
	}
	return u
}

// wantUsage checks both counters of org and key in the window of p at at.
func (s *suite) wantUsage(t *testing.T, org, key string, p quota.Period, at time.Time, wantOrg, wantKey int64) {
	t.Helper()
	u := s.usage(t, org, key, p, at)
	if u.Org != wantOrg || u.Key != wantKey {
		t.Errorf("Usage(%s, %s, %s, %s) = org %d, key %d; want org %d, key %d", org, key, p, at.Format(time.RFC3339), u.Org, u.Key, wantOrg, wantKey)
	}
	if w := p.Window(at); !sameWindow(u.Window, w) {
		t.Errorf("Usage window = %+v, want %+v", u.Window, w)
	}
}

func describe(ch quota.Charge) string {
	return fmt.Sprintf("org=%s key=%s cost=%d orgMax=%d keyMax=%d period=%s at=%s token=%q nonce=%q",
		ch.OrgID, ch.KeyID, ch.Cost, ch.OrgMax, ch.KeyMax, ch.Period, ch.At.Format(time.RFC3339Nano), ch.Token, ch.Nonce)
}

func sameWindow(a, b quota.Window) bool {
	return a.ID == b.ID && a.Start.Equal(b.Start) && a.End.Equal(b.End)
}

// chargeAll runs n charges of ch at once and returns how many were admitted.
// Every refusal must be an *ExceededError of scope.
func (s *suite) chargeAll(t *testing.T, n int, ch quota.Charge, scope quota.Scope) int {
	t.Helper()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		admitted int
		errs     []error
	)
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			_, err := s.c.Charge(s.ctx, ch)
			mu.Lock()
			defer mu.Unlock()
			var ex *quota.ExceededError
			switch {
			case err == nil:
				admitted++
			case errors.As(err, &ex) && ex.Scope == scope:
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
		t.Errorf("concurrent Charge: %v, want nil or *ExceededError of scope %s", err, scope)
	}
	return admitted
}

func testConcurrentOrgMax(t *testing.T, s *suite) {
	ch := charge("org1", "k1")
	ch.OrgMax = 50
	if got := s.chargeAll(t, 200, ch, quota.ScopeOrg); got != 50 {
		t.Errorf("admitted %d of 200 charges against org max 50, want exactly 50", got)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, base, 50, 50)
}

func testConcurrentKeyMax(t *testing.T, s *suite) {
	ch := charge("org1", "k1")
	ch.KeyMax = 50
	if got := s.chargeAll(t, 200, ch, quota.ScopeKey); got != 50 {
		t.Errorf("admitted %d of 200 charges against key max 50, want exactly 50", got)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, base, 50, 50)
}

func testRefusalChangesNothing(t *testing.T, s *suite) {
	byOrg := charge("org1", "k1")
	byOrg.OrgMax = 3
	for range 3 {
		s.admit(t, byOrg)
	}
	for range 3 {
		s.refuse(t, byOrg)
	}
	s.wantUsage(t, "org1", "k1", byOrg.Period, base, 3, 3)

	byKey := charge("org2", "k1")
	byKey.KeyMax = 2
	byKey.OrgMax = 100
	for range 2 {
		s.admit(t, byKey)
	}
	byKey.Cost = 5
	for range 3 {
		s.refuse(t, byKey)
	}
	s.wantUsage(t, "org2", "k1", byKey.Period, base, 2, 2)
}

func testKeyLimitBindsOneKey(t *testing.T, s *suite) {
	k1 := charge("org1", "k1")
	k1.OrgMax, k1.KeyMax = 10, 3
	k2 := charge("org1", "k2")
	k2.OrgMax = 10
	for range 3 {
		s.admit(t, k1)
	}
	if ex := s.refuse(t, k1); ex.Scope != quota.ScopeKey {
		t.Errorf("k1 refused by %s, want %s", ex.Scope, quota.ScopeKey)
	}
	for i := range 7 {
		res := s.admit(t, k2)
		if want := int64(4 + i); res.OrgUsed != want || res.KeyUsed != int64(i+1) {
			t.Errorf("k2 charge %d: org used %d, key used %d; want %d, %d", i, res.OrgUsed, res.KeyUsed, want, i+1)
		}
	}
	if ex := s.refuse(t, k2); ex.Scope != quota.ScopeOrg {
		t.Errorf("k2 refused by %s, want %s", ex.Scope, quota.ScopeOrg)
	}
	s.wantUsage(t, "org1", "k1", k1.Period, base, 10, 3)
	s.wantUsage(t, "org1", "k2", k2.Period, base, 10, 7)
}

func testOrgLimitAcrossKeys(t *testing.T, s *suite) {
	k1 := charge("org1", "k1")
	k1.OrgMax = 4
	k2 := charge("org1", "k2")
	k2.OrgMax = 4
	s.admit(t, k1)
	s.admit(t, k2)
	s.admit(t, k1)
	if res := s.admit(t, k2); res.OrgUsed != 4 || res.KeyUsed != 2 {
		t.Errorf("fourth charge: org used %d, key used %d; want 4, 2", res.OrgUsed, res.KeyUsed)
	}
	for _, ch := range []quota.Charge{k1, k2} {
		if ex := s.refuse(t, ch); ex.Scope != quota.ScopeOrg || ex.Used != 4 || ex.Limit != 4 {
			t.Errorf("%s refused with %+v, want scope %s, used 4, limit 4", ch.KeyID, ex, quota.ScopeOrg)
		}
	}
	s.wantUsage(t, "org1", "k1", k1.Period, base, 4, 2)
}

func testUnlimited(t *testing.T, s *suite) {
	ch := charge("org1", "k1")
	ch.Cost = 1_000_000
	for i := range 3 {
		res := s.admit(t, ch)
		if want := int64(i+1) * 1_000_000; res.OrgUsed != want || res.KeyUsed != want {
			t.Errorf("charge %d: used %d/%d, want %d", i, res.OrgUsed, res.KeyUsed, want)
		}
	}
	// A key without a max under a limited org, and a limited key in an
	// unlimited org.
	noKeyMax := charge("org2", "k1")
	noKeyMax.OrgMax = 5
	noKeyMax.Cost = 5
	s.admit(t, noKeyMax)
	unlimitedOrg := charge("org3", "k1")
	unlimitedOrg.KeyMax = 5
	unlimitedOrg.Cost = 5
	s.admit(t, unlimitedOrg)
	unlimitedOrg.KeyID = "k2"
	unlimitedOrg.Cost = 5_000
	unlimitedOrg.KeyMax = -1
	s.admit(t, unlimitedOrg)
	s.wantUsage(t, "org1", "k1", ch.Period, base, 3_000_000, 3_000_000)
	s.wantUsage(t, "org2", "k1", ch.Period, base, 5, 5)
	s.wantUsage(t, "org3", "k2", ch.Period, base, 5_005, 5_000)
}

func testCostAtBoundary(t *testing.T, s *suite) {
	for _, tc := range []struct {
		name  string
		org   string
		limit func(ch *quota.Charge)
		scope quota.Scope
	}{
		{"org", "org1", func(ch *quota.Charge) { ch.OrgMax = 10 }, quota.ScopeOrg},
		{"key", "org2", func(ch *quota.Charge) { ch.KeyMax = 10 }, quota.ScopeKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := charge(tc.org, "k1")
			tc.limit(&ch)
			ch.Cost = 8
			s.admit(t, ch)
			ch.Cost = 3
			if ex := s.refuse(t, ch); ex.Scope != tc.scope || ex.Used != 8 || ex.Limit != 10 {
				t.Errorf("cost 3 at usage 8 of 10 refused with %+v, want scope %s, used 8, limit 10", ex, tc.scope)
			}
			ch.Cost = 2
			if res := s.admit(t, ch); res.OrgUsed != 10 || res.KeyUsed != 10 {
				t.Errorf("cost 2 at usage 8 of 10: used %d/%d, want 10/10", res.OrgUsed, res.KeyUsed)
			}
			ch.Cost = 1
			s.refuse(t, ch)
			s.wantUsage(t, tc.org, "k1", ch.Period, base, 10, 10)
		})
	}
}

func testCostZero(t *testing.T, s *suite) {
	ch := charge("org1", "k1")
	ch.Cost = 0
	ch.OrgMax, ch.KeyMax = 0, 0
	if res := s.admit(t, ch); res.OrgUsed != 0 || res.KeyUsed != 0 {
		t.Errorf("cost 0 with max 0: used %d/%d, want 0/0", res.OrgUsed, res.KeyUsed)
	}
	ch.OrgMax, ch.KeyMax = 2, -1
	ch.Cost = 2
	s.admit(t, ch)
	ch.Cost = 0
	for range 3 {
		if res := s.admit(t, ch); res.OrgUsed != 2 || res.KeyUsed != 2 {
			t.Errorf("cost 0 with the org exhausted: used %d/%d, want 2/2", res.OrgUsed, res.KeyUsed)
		}
	}
	// Lowered below the usage, the max still lets a cost-0 charge through.
	ch.OrgMax = 1
	s.admit(t, ch)
	s.wantUsage(t, "org1", "k1", ch.Period, base, 2, 2)
	// A cost-0 charge in a window nobody used leaves it empty.
	ch.At = base.AddDate(0, 3, 0)
	s.admit(t, ch)
	s.wantUsage(t, "org1", "k1", ch.Period, ch.At, 0, 0)
}

func testExceededError(t *testing.T, s *suite) {
	for _, p := range []string{"2s", "hour", "month"} {
		t.Run(p, func(t *testing.T) {
			period, err := quota.ParsePeriod(p)
			if err != nil {
				t.Fatal(err)
			}
			org := "org-" + p
			ch := charge(org, "k1")
			ch.Period = period
			ch.OrgMax, ch.KeyMax = 7, 5
			ch.Cost = 5
			s.admit(t, ch)
			w := period.Window(base)
			ch.Cost = 1
			check := func(ex *quota.ExceededError, scope quota.Scope, limit, used int64) {
				t.Helper()
				if ex.Scope != scope || ex.Limit != limit || ex.Used != used || !sameWindow(ex.Window, w) {
					t.Errorf("ExceededError = %+v, want scope %s limit %d used %d window %+v", ex, scope, limit, used, w)
				}
				if !ex.Window.End.After(base) || ex.Window.End.Sub(ex.Window.Start) <= 0 {
					t.Errorf("window %+v does not end after %s", ex.Window, base)
				}
			}
			check(s.refuse(t, ch), quota.ScopeKey, 5, 5)
			ch.KeyID = "k2"
			ch.Cost = 3
			check(s.refuse(t, ch), quota.ScopeOrg, 7, 5)
			// Both exhausted: the key is named.
			ch.KeyID = "k1"
			ch.OrgMax = 5
			check(s.refuse(t, ch), quota.ScopeKey, 5, 5)
		})
	}
	// The end of well-known windows.
	for _, tc := range []struct {
		period quota.Period
		end    time.Time
	}{
		{quota.PeriodMonth, time.Date(2100, time.February, 1, 0, 0, 0, 0, time.UTC)},
		{quota.PeriodDay, time.Date(2100, time.February, 1, 0, 0, 0, 0, time.UTC)},
		{quota.PeriodHour, time.Date(2100, time.February, 1, 0, 0, 0, 0, time.UTC)},
	} {
		ch := charge("org-end-"+tc.period.String(), "k1")
		ch.Period = tc.period
		ch.OrgMax = 0
		if ex := s.refuse(t, ch); !ex.Window.End.Equal(tc.end) {
			t.Errorf("period %s at %s: window ends %s, want %s", tc.period, base, ex.Window.End, tc.end)
		}
	}
}

func testRollover(t *testing.T, s *suite) {
	for _, p := range []string{"2s", "hour", "day", "month"} {
		t.Run(p, func(t *testing.T) {
			period, err := quota.ParsePeriod(p)
			if err != nil {
				t.Fatal(err)
			}
			org := "org-" + p
			ch := charge(org, "k1")
			ch.Period = period
			ch.OrgMax = 3
			ch.Cost = 3
			old := s.admit(t, ch).Window
			ch.Cost = 1
			s.refuse(t, ch)
			// The last instant of the window still counts in it.
			ch.At = old.End.Add(-time.Millisecond)
			s.refuse(t, ch)

			ch.At = old.End
			res := s.admit(t, ch)
			if res.OrgUsed != 1 || res.KeyUsed != 1 {
				t.Errorf("first charge of the new window: used %d/%d, want 1/1", res.OrgUsed, res.KeyUsed)
			}
			if !res.Window.Start.Equal(old.End) || res.Window.ID == old.ID {
				t.Errorf("new window %+v does not follow %+v", res.Window, old)
			}
			s.wantUsage(t, org, "k1", period, old.End, 1, 1)
			s.wantUsage(t, org, "k1", period, base, 3, 3)
		})
	}
}

func testPeriodNone(t *testing.T, s *suite) {
	ch := charge("org1", "k1")
	ch.Period = quota.PeriodNone
	ch.OrgMax = 2
	res := s.admit(t, ch)
	if res.Window.ID == "" || !res.Window.End.IsZero() {
		t.Errorf("PeriodNone window = %+v, want an id and no end", res.Window)
	}
	ch.At = base.AddDate(10, 0, 0)
	s.admit(t, ch)
	ch.At = base.AddDate(-10, 0, 0)
	ex := s.refuse(t, ch)
	if ex.Used != 2 || !ex.Window.End.IsZero() {
		t.Errorf("PeriodNone refusal = %+v, want used 2 and no window end", ex)
	}
	s.wantUsage(t, "org1", "k1", quota.PeriodNone, base.AddDate(50, 0, 0), 2, 2)
}

func testOrgsIndependent(t *testing.T, s *suite) {
	a := charge("org-a", "k1")
	a.OrgMax = 2
	b := charge("org-b", "k1") // same key id, another org
	b.OrgMax = 3
	s.admit(t, a)
	s.admit(t, a)
	s.refuse(t, a)
	for range 3 {
		s.admit(t, b)
	}
	s.refuse(t, b)
	s.wantUsage(t, "org-a", "k1", a.Period, base, 2, 2)
	s.wantUsage(t, "org-b", "k1", b.Period, base, 3, 3)
	s.wantUsage(t, "org-c", "k1", b.Period, base, 0, 0)
}

func testUsageWithoutKey(t *testing.T, s *suite) {
	s.admit(t, charge("org1", "k1"))
	s.admit(t, charge("org1", "k2"))
	s.wantUsage(t, "org1", "", quota.PeriodMonth, base, 2, 0)
}

func testToken(t *testing.T, s *suite) {
	t.Run("admitted", func(t *testing.T) {
		ch := charge("org1", "k1")
		ch.OrgMax = 1
		ch.Token = "tok-1"
		first := s.admit(t, ch)
		// A retry returns the first result although the org is now full.
		again := s.admit(t, ch)
		if again.OrgUsed != first.OrgUsed || again.KeyUsed != first.KeyUsed || !sameWindow(again.Window, first.Window) {
			t.Errorf("retried charge = %+v, want the first result %+v", again, first)
		}
		s.wantUsage(t, "org1", "k1", ch.Period, base, 1, 1)
		// Another token is another request.
		ch.Token = "tok-2"
		s.refuse(t, ch)
	})
	t.Run("refused", func(t *testing.T) {
		ch := charge("org2", "k1")
		ch.OrgMax = 2
		ch.Cost = 2
		s.admit(t, ch)
		ch.Token = "tok-3"
		first := s.refuse(t, ch)
		// Retried with more room, the charge still gets its first answer.
		ch.OrgMax = 100
		again := s.refuse(t, ch)
		if again.Scope != first.Scope || again.Used != first.Used {
			t.Errorf("retried refusal = %+v, want the first %+v", again, first)
		}
		s.wantUsage(t, "org2", "k1", ch.Period, base, 2, 2)
		ch.Token = "tok-4"
		s.admit(t, ch)
		s.wantUsage(t, "org2", "k1", ch.Period, base, 4, 4)
	})
	t.Run("concurrent", func(t *testing.T) {
		ch := charge("org3", "k1")
		ch.Token = "tok-5"
		if got := s.chargeAll(t, 20, ch, quota.ScopeOrg); got != 20 {
			t.Errorf("%d of 20 retries of one charge admitted, want all", got)
		}
		s.wantUsage(t, "org3", "k1", ch.Period, base, 1, 1)
	})
}

func testNonce(t *testing.T, s *suite) {
	ch := charge("org1", "k1")
	ch.Period = quota.PeriodNone
	ch.Nonce = "sig-1"
	ch.NonceUntil = base.Add(5 * time.Minute)
	s.admit(t, ch)
	ch.At = base.Add(time.Minute)
	if _, err := s.c.Charge(s.ctx, ch); !errors.Is(err, quota.ErrReplay) {
		t.Errorf("second use of a nonce: %v, want ErrReplay", err)
	}
	s.wantUsage(t, "org1", "k1", ch.Period, base, 1, 1)
	// A retried replay, by token, is still a replay.
	ch.Token = "tok-replay"
	for range 2 {
		if _, err := s.c.Charge(s.ctx, ch); !errors.Is(err, quota.ErrReplay) {
			t.Errorf("replay with a token: %v, want ErrReplay", err)
		}
	}
	ch.Token = ""
	// Past NonceUntil the nonce is free again.
	ch.At = ch.NonceUntil
	ch.NonceUntil = ch.At.Add(5 * time.Minute)
	s.admit(t, ch)
	s.wantUsage(t, "org1", "k1", ch.Period, base, 2, 2)
	// Nonces are per org.
	other := ch
	other.OrgID = "org2"
	s.admit(t, other)

	// A charge refused by a quota leaves its nonce unused.
	ch.Nonce = "sig-2"
	ch.OrgMax = 2
	s.refuse(t, ch)
	ch.OrgMax = 3
	s.admit(t, ch)
	if _, err := s.c.Charge(s.ctx, ch); !errors.Is(err, quota.ErrReplay) {
		t.Errorf("second use of sig-2: %v, want ErrReplay", err)
	}
	// A replay is refused even when the quota is exhausted too.
	ch.OrgMax = 0
	if _, err := s.c.Charge(s.ctx, ch); !errors.Is(err, quota.ErrReplay) {
		t.Errorf("replay at an exhausted quota: %v, want ErrReplay", err)
	}

	// Cost-0 charges (self-served routes) use up nonces too, and a nonce
	// without NonceUntil never expires.
	free := charge("org3", "k1")
	free.Cost = 0
	free.Nonce = "sig-3"
	s.admit(t, free)
	free.At = base.AddDate(20, 0, 0)
	if _, err := s.c.Charge(s.ctx, free); !errors.Is(err, quota.ErrReplay) {
		t.Errorf("second use of a nonce without expiry: %v, want ErrReplay", err)
	}
	// NonceUntil at or before At marks nothing.
	stale := charge("org4", "k1")
	stale.Nonce = "sig-4"
	stale.NonceUntil = base
	s.admit(t, stale)
	s.admit(t, stale)
	s.wantUsage(t, "org4", "k1", stale.Period, base, 2, 2)
}

func testMeters(t *testing.T, s *suite) {
	pinned := quota.Meter{Name: "pinned_bytes", Period: quota.PeriodNone}
	egress := quota.Meter{Name: "egress", Period: quota.PeriodHour}
	unknown := quota.Meter{Name: "ipns", Period: quota.PeriodMonth}
	// add books deltas and checks the totals Add returns: one per delta, in
	// order, each the meter's total right after that delta.
	add := func(org string, at time.Time, totals []int64, deltas ...quota.MeterDelta) {
		t.Helper()
		got, err := s.c.Add(s.ctx, org, at, deltas)
		if err != nil {
			t.Fatalf("Add(%s, %s): %v", org, at, err)
		}
		if got == nil || len(got) != len(totals) {
			t.Fatalf("Add(%s, %s) = %#v, want totals %v", org, at, got, totals)
		}
		for i := range totals {
			if got[i] != totals[i] {
				t.Errorf("Add(%s, %s) = %v, want totals %v", org, at, got, totals)
				break
			}
		}
	}
	want := func(org string, at time.Time, meters []quota.Meter, want ...int64) {
		t.Helper()
		got, err := s.c.Meters(s.ctx, org, at, meters)
		if err != nil {
			t.Fatalf("Meters(%s, %s): %v", org, at, err)
		}
		if len(got) != len(want) {
			t.Fatalf("Meters(%s, %s) = %v, want %v", org, at, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("Meters(%s, %s) = %v, want %v", org, at, got, want)
				break
			}
		}
	}
	all := []quota.Meter{pinned, egress, unknown}
	want("org1", base, all, 0, 0, 0)
	add("org1", base, []int64{1024, 500}, quota.MeterDelta{Meter: pinned, Delta: 1024}, quota.MeterDelta{Meter: egress, Delta: 500})
	add("org1", base, []int64{1000, 507, 1010}, quota.MeterDelta{Meter: pinned, Delta: -24}, quota.MeterDelta{Meter: egress, Delta: 7}, quota.MeterDelta{Meter: pinned, Delta: 10})
	want("org1", base, all, 1010, 507, 0)
	want("org1", base, []quota.Meter{egress, pinned}, 507, 1010) // in the order asked
	want("org1", base, nil)

	// The hourly meter starts again in the next hour; the running total goes on.
	next := egress.Period.Window(base).End
	want("org1", next, all, 1010, 0, 0)
	add("org1", next, []int64{-990, 3}, quota.MeterDelta{Meter: pinned, Delta: -2000}, quota.MeterDelta{Meter: egress, Delta: 3})
	want("org1", next, all, -990, 3, 0)
	want("org1", base, []quota.Meter{egress}, 507)
	add("org1", base.AddDate(5, 0, 0), []int64{-989}, quota.MeterDelta{Meter: pinned, Delta: 1})
	want("org1", base.AddDate(-5, 0, 0), []quota.Meter{pinned}, -989)

	// Meters are per org, and apart from the request counters.
	want("org2", base, all, 0, 0, 0)
	add("org1", base, []int64{})
	s.wantUsage(t, "org1", "k1", quota.PeriodMonth, base, 0, 0)

	// A booking that would overflow int64 books nothing, not even the
	// deltas before the one that overflows.
	add("org5", base, []int64{math.MaxInt64 - 10, 5}, quota.MeterDelta{Meter: pinned, Delta: math.MaxInt64 - 10}, quota.MeterDelta{Meter: egress, Delta: 5})
	if got, err := s.c.Add(s.ctx, "org5", base, []quota.MeterDelta{{Meter: egress, Delta: 1}, {Meter: pinned, Delta: 11}}); !errors.Is(err, quota.ErrOverflow) {
		t.Errorf("overflowing Add = %v, %v; want ErrOverflow", got, err)
	}
	if got, err := s.c.Add(s.ctx, "org5", base, []quota.MeterDelta{{Meter: pinned, Delta: 6}, {Meter: pinned, Delta: 5}}); !errors.Is(err, quota.ErrOverflow) {
		t.Errorf("Add overflowing on a meter named twice = %v, %v; want ErrOverflow", got, err)
	}
	want("org5", base, []quota.Meter{pinned, egress}, math.MaxInt64-10, 5)
	add("org5", base, []int64{math.MaxInt64}, quota.MeterDelta{Meter: pinned, Delta: 10})
}
