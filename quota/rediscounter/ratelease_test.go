package rediscounter

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
)

// TestRateLease drives ratelease.lua call by call: grants are consecutive
// slots that advance the TAT charge.lua reads; a give-back applies only while
// the TAT is still the end of the holder's block, once, so a retry, a stale
// give-back, or a TAT that came back to the same instant through someone
// else's slots change nothing.
func TestRateLease(t *testing.T) {
	srv := redistest.Start(t)
	c := New(redistest.NewClient(t, srv.Addr()))
	ctx := t.Context()
	at := time.Date(2100, time.March, 3, 12, 0, 0, 0, time.UTC)
	t0 := at.UnixMicro()
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 10, Per: 10 * time.Second} // 1s a slot, burst 10
	call := func(holder string, cost, want, end, from int64) RateGrant {
		t.Helper()
		rep, err := c.RateLease(ctx, RateLease{OrgID: "org1", KeyID: "k1", At: at, Holder: holder, Cost: cost, Share: 1,
			Limits: []RateAsk{{Limit: lim, Want: want, End: end, From: from}}})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Refused != rep.Limits[0].Limited {
			t.Fatalf("refused %t, limited %t", rep.Refused, rep.Limits[0].Limited)
		}
		return rep.Limits[0]
	}
	const s = int64(time.Second / time.Microsecond)
	g := call("a", 1, 4, 0, 0)
	if g.Start != t0 || g.Grant != 4 || g.TAT != t0+4*s || g.Debt != 0 {
		t.Fatalf("first grant %+v, want 4 slots from %d", g, t0)
	}
	// a spent one slot; it gives back the other three and asks for two.
	g = call("a", 1, 2, t0+4*s, t0+s)
	if g.Debt != s || g.Start != t0+s || g.Grant != 2 || g.TAT != t0+3*s {
		t.Fatalf("after giving back 3: %+v, want debt 1s, 2 slots from %d", g, t0+s)
	}
	// The same give-back again (a retry after a lost reply): nothing goes
	// back, the grant comes after the TAT.
	g = call("a", 1, 1, t0+4*s, t0+s)
	if g.Debt != 3*s || g.TAT != t0+4*s {
		t.Fatalf("a repeated give-back: %+v, want debt 3s, TAT %d", g, t0+4*s)
	}
	// A per-request charge takes the slot after a's block; a's stale
	// give-back of that block changes nothing.
	charge := quota.Charge{OrgID: "org1", KeyID: "k2", Cost: 1, OrgMax: -1, KeyMax: -1, Period: quota.PeriodMonth, At: at,
		RateLimits: []quota.RateLimit{lim}}
	if _, err := c.Charge(ctx, charge); err != nil {
		t.Fatal(err)
	}
	g = call("a", 0, 0, t0+4*s, t0+3*s)
	if g.TAT != t0+5*s || g.Grant != 0 {
		t.Fatalf("a stale give-back: %+v, want the TAT at %d", g, t0+5*s)
	}
	// ABA: a gives back its block [t0+5s, t0+7s) (spent none), b then
	// takes exactly as many slots: the TAT is a's old end again, but b's;
	// a's give-back, resent, changes nothing.
	g = call("a", 1, 2, 0, 0)
	if g.Start != t0+5*s || g.TAT != t0+7*s {
		t.Fatalf("grant %+v, want 2 from %d", g, t0+5*s)
	}
	call("a", 0, 0, t0+7*s, t0+5*s)
	g = call("b", 2, 2, 0, 0)
	if g.Start != t0+5*s || g.TAT != t0+7*s {
		t.Fatalf("b's grant %+v, want 2 from %d", g, t0+5*s)
	}
	if g = call("a", 0, 0, t0+7*s, t0+5*s); g.TAT != t0+7*s {
		t.Fatalf("a's resent give-back moved the TAT to %d, want %d (b's)", g.TAT, t0+7*s)
	}
	// Full: 3 free slots; a charge of 4 is refused and reserves nothing, a
	// shadow that would refuse reserves nothing and refuses nothing.
	if g = call("c", 4, 4, 0, 0); !g.Limited || g.Debt != 7*s || g.TAT != t0+7*s {
		t.Fatalf("cost 4 with 3 free: %+v, want limited at debt 7s", g)
	}
	sh := lim
	sh.Shadow = true
	rep, err := c.RateLease(ctx, RateLease{OrgID: "org1", At: at, Holder: "c", Cost: 4, Share: 1, Limits: []RateAsk{{Limit: sh, Want: 4}}})
	if err != nil || rep.Refused || !rep.Limits[0].Limited || rep.Limits[0].Grant != 0 {
		t.Fatalf("shadow: %+v, %v; want limited, not refused, no grant", rep, err)
	}
	// The state stays charge.lua's: a per-request charge sees 3 free slots.
	charge.Cost = 3
	res, err := c.Charge(ctx, charge)
	if err != nil || res.RateLimits[0].Remaining != 0 {
		t.Fatalf("per request after the leases: %+v, %v; want admitted with nothing left", res, err)
	}
	var rl *quota.RateLimitedError
	charge.Cost = 1
	if _, err := c.Charge(ctx, charge); !errors.As(err, &rl) || rl.RetryAfter != time.Second {
		t.Errorf("per request when full: %v, want refused for 1s", err)
	}
}

// TestRateLeaseCap: a changed limit's debt beyond its window is stored
// capped only when it is more than a second beyond (what a charge dated a
// little before the last grant sees must not lower the TAT).
func TestRateLeaseCap(t *testing.T) {
	srv := redistest.Start(t)
	c := New(redistest.NewClient(t, srv.Addr()))
	ctx := context.Background()
	at := time.Date(2100, time.March, 3, 12, 0, 0, 0, time.UTC)
	lim := quota.RateLimit{Name: "r", Scope: quota.ScopeOrg, Requests: 10, Per: time.Second} // 100ms, window 1s
	ask := func(at time.Time, l quota.RateLimit, cost int64) RateGrant {
		t.Helper()
		rep, err := c.RateLease(ctx, RateLease{OrgID: "org1", At: at, Holder: "a", Cost: cost, Share: 1, Limits: []RateAsk{{Limit: l, Want: max(cost, 10)}}})
		if err != nil {
			t.Fatal(err)
		}
		return rep.Limits[0]
	}
	full := ask(at, lim, 10) // TAT at+1s
	// Dated 300ms earlier: debt 1.3s, seen as 1s, not stored.
	if g := ask(at.Add(-300*time.Millisecond), lim, 1); !g.Limited || g.Debt != 1_000_000 || g.TAT != full.TAT {
		t.Errorf("an early charge: %+v, want limited, debt 1s, TAT unchanged at %d", g, full.TAT)
	}
	// A limit lowered to a window of 100ms, dated 200ms earlier: 1.1s
	// beyond its window, stored capped.
	small := lim
	small.Burst = 1
	g := ask(at.Add(-200*time.Millisecond), small, 1)
	if !g.Limited || g.TAT != at.Add(-200*time.Millisecond).UnixMicro()+100_000 {
		t.Errorf("a lowered limit: %+v, want limited and the TAT capped at the instant + 100ms", g)
	}
}

// TestRateLeaseInvalid: bad asks are refused before Redis.
func TestRateLeaseInvalid(t *testing.T) {
	c := New(redistest.NewClient(t, redistest.Start(t).Addr()))
	lim := quota.RateLimit{Name: "r", Scope: quota.ScopeOrg, Requests: 10, Per: time.Second}
	for _, l := range []RateLease{
		{OrgID: "", Share: 1, Limits: []RateAsk{{Limit: lim}}},
		{OrgID: "o", Share: 0, Limits: []RateAsk{{Limit: lim}}},
		{OrgID: "o", Share: 1},
		{OrgID: "o", Share: 1, Cost: 2, Limits: []RateAsk{{Limit: lim, Want: 1}}},
		{OrgID: "o", Share: 1, Limits: []RateAsk{{Limit: lim, End: 5, From: 6}}},
		{OrgID: "o", Share: 1, Limits: []RateAsk{{Limit: quota.RateLimit{Name: "bad:name", Scope: quota.ScopeOrg, Requests: 1, Per: time.Second}}}},
	} {
		if _, err := c.RateLease(t.Context(), l); err == nil || errors.Is(err, quota.ErrUnavailable) {
			t.Errorf("RateLease(%+v) = %v, want an invalid-call error", l, err)
		}
	}
}
