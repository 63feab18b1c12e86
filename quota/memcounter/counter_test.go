package memcounter_test

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/countertest"
	"github.com/keygate/keygate/quota/memcounter"
)

func TestConformance(t *testing.T) {
	countertest.Run(t, func(t *testing.T) quota.Counter { return memcounter.New() })
	// One process: its "two sidecars" are one counter.
	countertest.RunShared(t, func(t *testing.T) (quota.Counter, quota.Counter) {
		c := memcounter.New()
		return c, c
	})
}

// BenchmarkCharge measures one admitted charge with a fresh token, as the
// data path makes it, from parallel goroutines on one org: quotas only, and
// with a key and an org rate limit that never refuse.
func BenchmarkCharge(b *testing.B) {
	orgRate := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 1_000_000, Per: time.Second, Burst: 1_000_000_000_000}
	keyRate := quota.RateLimit{Name: "key-rate", Scope: quota.ScopeKey, Requests: 1_000_000, Per: time.Second, Burst: 1_000_000_000_000}
	for _, bc := range []struct {
		name   string
		limits []quota.RateLimit
	}{
		{"quota", nil},
		{"quota+key-rate+org-rate", []quota.RateLimit{keyRate, orgRate}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := memcounter.New()
			start := time.Date(2100, time.January, 1, 0, 0, 0, 0, time.UTC)
			var seq atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				ctx := b.Context()
				for pb.Next() {
					n := seq.Add(1)
					_, err := c.Charge(ctx, quota.Charge{
						OrgID: "org1", KeyID: "k" + strconv.FormatInt(n%8, 10), Cost: 1,
						OrgMax: -1, KeyMax: -1, Period: quota.PeriodMonth,
						// 100µs of "time" per charge, so tokens expire and get pruned.
						At:         start.Add(time.Duration(n) * 100 * time.Microsecond),
						Token:      strconv.FormatInt(n, 36),
						RateLimits: bc.limits,
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
