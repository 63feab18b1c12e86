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
// data path makes it, from parallel goroutines on one org.
func BenchmarkCharge(b *testing.B) {
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
				At:    start.Add(time.Duration(n) * 100 * time.Microsecond),
				Token: strconv.FormatInt(n, 36),
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}
