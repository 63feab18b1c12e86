package lease

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/countertest"
	"github.com/keygate/keygate/quota/rediscounter"
)

// newLease returns a lease Counter on rdb, closed when the test ends. Its
// calls get a generous deadline unless o says otherwise: the race detector
// and parallel test packages slow Redis down, and these tests are about
// counting, not latency.
func newLease(t testing.TB, rdb redis.UniversalClient, o Options) *Counter {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	c := New(rediscounter.New(rdb), "", o)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

// TestConformance runs the counter suite with leases on, on one Redis and
// on a Redis Cluster (leases off is rediscounter's own TestConformance).
func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		addrs func(t *testing.T) []string
	}{
		{"redis", func(t *testing.T) []string { return []string{redistest.Start(t).Addr()} }},
		{"cluster", func(t *testing.T) []string { return redistest.StartCluster(t).Addrs() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addrs := tc.addrs(t)
			rdb := redistest.NewClient(t, addrs...)
			countertest.Run(t, func(t *testing.T) quota.Counter {
				redistest.Flush(t, rdb)
				return newLease(t, rdb, Options{})
			})
			other := redistest.NewClient(t, addrs...)
			countertest.RunShared(t, func(t *testing.T) (quota.Counter, quota.Counter) {
				redistest.Flush(t, rdb)
				return newLease(t, rdb, Options{}), newLease(t, other, Options{})
			})
			// Rate-limit blocks as large as a limit allows: every slot a
			// charge does not spend is held, so the answers stay the
			// memory counter's only if the sidecar gives back and counts
			// its own slots exactly.
			t.Run("big-rate-blocks", func(t *testing.T) {
				countertest.Run(t, func(t *testing.T) quota.Counter {
					redistest.Flush(t, rdb)
					return newLease(t, rdb, Options{RateShare: 1, RateSpan: 1000 * time.Hour})
				})
			})
		})
	}
}
