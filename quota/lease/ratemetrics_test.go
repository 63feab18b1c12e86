package lease

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// rateObserver records what a Counter reports of its rate leases, beside
// the quota leases' observer.
type rateObserver struct {
	*observer
	mu          sync.Mutex
	outstanding []int64 // every value set, in order
	renewals    map[string]int64
	returned    int64
	lost        int64
}

func newRateObserver() *rateObserver {
	return &rateObserver{observer: newObserver(), renewals: map[string]int64{}}
}

func (o *rateObserver) RateLeaseOutstanding(n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.outstanding = append(o.outstanding, n)
}

func (o *rateObserver) RateLeaseRenewal(r string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.renewals[r]++
}

func (o *rateObserver) RateLeaseReturned(n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.returned += n
}

func (o *rateObserver) RateLeaseLost(n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lost += n
}

// waitFor polls cond under o's lock: ticks and give-backs run on the
// Counter's own goroutines and have no signal a test sees.
func (o *rateObserver) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		o.mu.Lock()
		ok := cond()
		o.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 3s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRateLeaseObserved: the rate leases' metrics say what the leases did:
// a granted block is outstanding until it is spent or given back, a
// reservation the limit has no room for is refused, and one without an
// answer is failed, its slots counted as possibly lost.
func TestRateLeaseObserved(t *testing.T) {
	srv := redistest.StartDurable(t)
	rdb := redistest.NewClient(t, srv.Addr())
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 10, Per: time.Minute}
	obs := newRateObserver()
	c := newLease(t, rdb, Options{Observer: obs, RateShare: 1, RateSpan: time.Hour, Tick: 20 * time.Millisecond,
		IdleReturn: 100 * time.Millisecond, Timeout: 300 * time.Millisecond})
	at := time.Now()
	ch := orgCharge("org1", "k1", -1, at)
	ch.RateLimits = []quota.RateLimit{lim}
	if _, err := c.Charge(t.Context(), ch); err != nil {
		t.Fatal(err)
	}
	obs.waitFor(t, "the 9 unspent slots of the block were never reported outstanding", func() bool {
		return len(obs.outstanding) > 0 && obs.outstanding[len(obs.outstanding)-1] == 9
	})
	obs.waitFor(t, "the idle block's 9 slots were not reported given back, nor 0 outstanding", func() bool {
		return obs.returned == 9 && obs.outstanding[len(obs.outstanding)-1] == 0
	})

	// Another sidecar spends the other 9: the next block is refused.
	plain := rediscounter.New(rdb)
	for i := range 9 {
		if _, err := plain.Charge(t.Context(), ch); err != nil {
			t.Fatalf("per request, charge %d: %v", i+1, err)
		}
	}
	var rl *quota.RateLimitedError
	if _, err := c.Charge(t.Context(), ch); !errors.As(err, &rl) {
		t.Fatalf("with the limit spent: %v, want refused", err)
	}

	// A reservation during an outage fails; what it asked for may be lost.
	// A burst below the first quota block (8): the rate slots run out
	// while quota units are still at hand, so the call that fails is the
	// rate limit's.
	lim2 := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 5, Per: time.Minute}
	ch2 := orgCharge("org2", "k2", -1, at)
	ch2.RateLimits = []quota.RateLimit{lim2}
	for i := range 5 {
		if _, err := c.Charge(t.Context(), ch2); err != nil {
			t.Fatalf("org2 charge %d: %v", i+1, err)
		}
	}
	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	_, err := c.Charge(ctx, ch2)
	cancel()
	if !errors.Is(err, quota.ErrUnavailable) {
		t.Fatalf("during the outage: %v, want ErrUnavailable", err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.renewals["granted"] != 2 || obs.renewals["refused"] != 1 || obs.renewals["failed"] < 1 {
		t.Errorf("renewals %v, want granted 2 (one block of each org), refused 1, failed at least 1", obs.renewals)
	}
	if obs.lost < 1 {
		t.Errorf("%d slots reported lost after a reservation without an answer, want at least 1", obs.lost)
	}
}
