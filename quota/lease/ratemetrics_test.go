package lease

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
)

// rateObserver counts what a Counter reports of its rate-limit blocks.
type rateObserver struct {
	*observer
	outstanding, returned   atomic.Int64
	granted, refused, faild atomic.Int64
}

func (o *rateObserver) RateLeaseOutstanding(d int64) { o.outstanding.Add(d) }
func (o *rateObserver) RateLeaseReturned(n int64)    { o.returned.Add(n) }
func (o *rateObserver) RateLeaseRenewal(r string) {
	switch r {
	case "granted":
		o.granted.Add(1)
	case "refused":
		o.refused.Add(1)
	default:
		o.faild.Add(1)
	}
}

// rateSlotsHeld is what the outstanding-slots gauge should read: the slots
// in every rate block.
func (c *Counter) rateSlotsHeld() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, b := range c.rates {
		n += b.held()
	}
	return n
}

// TestRateLeaseMetrics: the rate-limit leases report the blocks they
// reserve, the slots they hold (as their blocks hold them, at every step)
// and give back, and hold none once idle blocks went back and at Close.
func TestRateLeaseMetrics(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	obs := &rateObserver{observer: newObserver()}
	c := newLease(t, rdb, Options{Observer: obs, Tick: 20 * time.Millisecond, IdleReturn: 50 * time.Millisecond})
	ctx := t.Context()
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 1000, Per: time.Second, Burst: 1000}
	for i := range 200 {
		ch := orgCharge("org1", "k1", -1, time.Now())
		ch.RateLimits = []quota.RateLimit{lim}
		if _, err := c.Charge(ctx, ch); err != nil {
			t.Fatal(err)
		}
		if i%20 == 0 {
			if got, want := obs.outstanding.Load(), c.rateSlotsHeld(); got != want {
				t.Fatalf("after %d charges: outstanding slots reported %d, blocks hold %d", i+1, got, want)
			}
		}
	}
	if obs.granted.Load() == 0 {
		t.Fatal("no rate block reported granted")
	}
	if obs.outstanding.Load() <= 0 {
		t.Fatalf("outstanding slots %d while a block is held", obs.outstanding.Load())
	}
	// Idle: the block goes back (polling: a return has no signal here).
	for deadline := time.Now().Add(10 * time.Second); obs.outstanding.Load() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("outstanding slots %d 10 s after traffic stopped, want 0", obs.outstanding.Load())
		}
	}
	if got := c.rateSlotsHeld(); got != 0 {
		t.Errorf("blocks hold %d slots after they went back", got)
	}
	// Close gives back a block just reserved, whose slots are ahead.
	ch := orgCharge("org1", "k1", -1, time.Now())
	ch.RateLimits = []quota.RateLimit{lim}
	if _, err := c.Charge(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if obs.returned.Load() == 0 {
		t.Error("no slots reported given back at Close")
	}
	if got := obs.outstanding.Load(); got != 0 || obs.faild.Load() != 0 {
		t.Errorf("after Close: outstanding %d, failed renewals %d; want 0, 0", got, obs.faild.Load())
	}
}
