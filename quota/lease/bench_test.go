package lease

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// redisCost reads INFO of the server: commands run (scripts' own commands
// and EVALSHA included; INFO and CONFIG left out) and its CPU time in µs.
func redisCost(ctx context.Context, rdb redis.UniversalClient) (cmds, cpuMicros float64, err error) {
	info, err := rdb.Info(ctx, "commandstats", "cpu").Result()
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(info, "\n") {
		line = strings.TrimSpace(line)
		if name, rest, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(name, "cmdstat_") &&
			name != "cmdstat_info" && !strings.HasPrefix(name, "cmdstat_config") {
			calls, _, _ := strings.Cut(rest, ",")
			n, err := strconv.ParseFloat(strings.TrimPrefix(calls, "calls="), 64)
			if err != nil {
				return 0, 0, err
			}
			cmds += n
		}
		for _, f := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				secs, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return 0, 0, err
				}
				cpuMicros += secs * 1e6
			}
		}
	}
	return cmds, cpuMicros, nil
}

// BenchmarkCharge charges admitted requests from 32 goroutines through one
// counter on a private redis-server, with leases on and off, for one hot key
// (also one with a max of its own) and for 20,000 keys in 100 organizations
// cycled evenly. It reports Redis
// commands and Redis CPU per admitted request (INFO commandstats, INFO cpu)
// besides ns/op. With leases off every charge carries a token, as the gate
// sends them. Every key is charged once before the timer starts, so the
// figures are those of steady traffic; a paced case needs a -benchtime of
// some seconds (e.g. 60000x at 6000 charges/s) to include renewals, held
// counts and folds in their proportions. The "-rate" cases carry an
// organization and a key rate limit (10⁶/s each, burst 10⁶, far above what
// the benchmark reaches) and date each charge by the clock, as the gate
// does.
func BenchmarkCharge(b *testing.B) {
	for _, mode := range []string{"off", "auto"} {
		for _, tr := range []struct {
			name       string
			keys, orgs int
			// rate paces the charges (per second, 0 = as fast as they go):
			// the per-key bookings cost Redis per key and per 5s, not per
			// request, so their share depends on the rate.
			rate int
			// fold overrides Options.FoldEvery.
			fold  time.Duration
			rated bool
		}{
			{"one-key", 1, 1, 0, 0, false},
			{"one-key-with-max", 1, 1, 0, 0, false},
			{"20000-keys-100-orgs", 20000, 100, 0, 0, false},
			{"20000-keys-100-orgs-15000rps", 20000, 100, 15000, 0, false},
			// The load test's rate on this machine; folding every 5s
			// rather than 30s shows what folds cost at six times the rate.
			{"20000-keys-100-orgs-6000rps", 20000, 100, 6000, 0, false},
			{"20000-keys-100-orgs-6000rps-fold5s", 20000, 100, 6000, 5 * time.Second, false},
			{"one-key-rate", 1, 1, 0, 0, true},
			{"100-orgs-rate", 100, 100, 0, 0, true},
		} {
			b.Run(mode+"/"+tr.name, func(b *testing.B) {
				srv := redistest.Start(b)
				rdb := redistest.NewClient(b, srv.Addr())
				ctx := b.Context()
				rc := rediscounter.New(rdb)
				var c quota.Counter = rc
				var lcw *Counter
				if mode == "auto" {
					lc := New(rc, "", Options{Timeout: benchTimeout, FoldEvery: tr.fold})
					b.Cleanup(func() { _ = lc.Close(context.Background()) })
					c, lcw = lc, lc
				}
				now := time.Now()
				var seq atomic.Int64
				keyMax := int64(-1) // a key with a max of its own leases key blocks
				if strings.HasSuffix(tr.name, "-with-max") {
					keyMax = 1 << 40
				}
				rates := []quota.RateLimit{
					{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 1_000_000, Per: time.Second},
					{Name: "key-rate", Scope: quota.ScopeKey, Requests: 1_000_000, Per: time.Second},
				}
				charge := func(i int64) {
					k := i % int64(tr.keys)
					ch := quota.Charge{OrgID: "org" + strconv.FormatInt(k%int64(tr.orgs), 10), KeyID: "k" + strconv.FormatInt(k, 10),
						Cost: 1, OrgMax: 1 << 40, KeyMax: keyMax, Period: quota.PeriodMonth, At: now}
					if tr.rated {
						ch.At, ch.RateLimits = time.Now(), rates
					}
					if mode == "off" {
						ch.Token = "t" + strconv.FormatInt(i, 10)
					}
					if _, err := c.Charge(ctx, ch); err != nil {
						b.Fatal(err)
					}
				}
				// Warm up: every key seen once, blocks sized to the traffic.
				for range tr.keys + 2000 {
					charge(seq.Add(1))
				}
				if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				cmds0, cpu0, err := redisCost(ctx, rdb)
				if err != nil {
					b.Fatal(err)
				}
				var waits0 int64
				if lcw != nil {
					waits0 = lcw.waits.Load()
				}
				b.SetParallelism(16)
				b.ReportAllocs()
				b.ResetTimer()
				t0, n0 := time.Now(), seq.Load()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := seq.Add(1)
						if tr.rate > 0 { // the i-th charge is due at t0 + i/rate
							time.Sleep(time.Until(t0.Add(time.Duration(i-n0) * time.Second / time.Duration(tr.rate))))
						}
						charge(i)
					}
				})
				b.StopTimer()
				cmds, cpu, err := redisCost(ctx, rdb)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric((cmds-cmds0)/float64(b.N), "redis-cmds/op")
				b.ReportMetric((cpu-cpu0)/float64(b.N), "redis-cpu-µs/op")
				if lcw != nil {
					b.ReportMetric(float64(lcw.waits.Load()-waits0)/float64(b.N), "waits/op")
				}
			})
		}
	}
}

// benchTimeout bounds the background calls in the benchmark: generous, as
// the benchmark saturates both cores of the machine it shares with Redis.
const benchTimeout = 5 * time.Second
