package rediscounter_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/countertest"
	"github.com/keygate/keygate/quota/rediscounter"
)

func TestConformance(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	countertest.Run(t, func(t *testing.T) quota.Counter {
		redistest.Flush(t, rdb)
		return rediscounter.New(rdb)
	})
	// Two sidecars: two counters with their own clients on one server.
	other := redistest.NewClient(t, srv.Addr())
	countertest.RunShared(t, func(t *testing.T) (quota.Counter, quota.Counter) {
		redistest.Flush(t, rdb)
		return rediscounter.New(rdb), rediscounter.New(other)
	})
}

// TestConformanceCluster runs the suite on a 3-master Redis Cluster: every
// key a charge touches carries the org's hash tag, so none fails with
// CROSSSLOT.
func TestConformanceCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	rdb := redistest.NewClient(t, cl.Addrs()...)
	countertest.Run(t, func(t *testing.T) quota.Counter {
		redistest.Flush(t, rdb)
		return rediscounter.New(rdb)
	})
	other := redistest.NewClient(t, cl.Addrs()...)
	countertest.RunShared(t, func(t *testing.T) (quota.Counter, quota.Counter) {
		redistest.Flush(t, rdb)
		return rediscounter.New(rdb), rediscounter.New(other)
	})
}

// newClient returns a client for addrs set up as ClientOptions says, closed
// when the test ends.
func newClient(t testing.TB, addrs ...string) redis.UniversalClient {
	t.Helper()
	rdb := redis.NewUniversalClient(rediscounter.ClientOptions(&redis.UniversalOptions{Addrs: addrs}))
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// at is a real instant: the tests below check expiry on Redis's clock.
func charge(at time.Time) quota.Charge {
	return quota.Charge{OrgID: "org1", KeyID: "k1", Cost: 1, OrgMax: -1, KeyMax: -1, Period: quota.PeriodHour, At: at}
}

func TestKeysExpire(t *testing.T) {
	rdb := newClient(t, redistest.Start(t).Addr())
	c := rediscounter.New(rdb)
	ctx := t.Context()
	now := time.Now()
	ch := charge(now)
	ch.Token = "tok1"
	ch.Nonce = "sig1"
	ch.NonceUntil = now.Add(90 * time.Second)
	res, err := c.Charge(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	w := ch.Period.Window(now)
	for _, k := range []string{"kg:{org1}:q:org:" + w.ID, "kg:{org1}:q:key:k1:" + w.ID} {
		got, err := rdb.ExpireTime(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if want := w.ExpireAt().Unix(); int64(got/time.Second) != want {
			t.Errorf("EXPIRETIME %s = %d, want %d (window end + grace)", k, int64(got/time.Second), want)
		}
	}
	if got, err := rdb.Do(ctx, "PEXPIRETIME", "kg:{org1}:nonce:sig1").Int64(); err != nil || got != ch.NonceUntil.UnixMilli() {
		t.Errorf("PEXPIRETIME of the nonce = %d, %v; want %d", got, err, ch.NonceUntil.UnixMilli())
	}
	if ttl, err := rdb.PTTL(ctx, "kg:{org1}:tok:tok1").Result(); err != nil || ttl <= 0 || ttl > 5*time.Second {
		t.Errorf("PTTL of the token = %s, %v; want in (0, 5s]", ttl, err)
	}
	if res.Window.ID != w.ID {
		t.Errorf("result window %q, want %q", res.Window.ID, w.ID)
	}

	// A period that never ends leaves its counters without expiry; a charge
	// without a token or nonce writes neither.
	ch = charge(now)
	ch.Period = quota.PeriodNone
	if _, err := c.Charge(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if ttl, err := rdb.TTL(ctx, "kg:{org1}:q:org:all").Result(); err != nil || ttl != -1 {
		t.Errorf("TTL of a PeriodNone counter = %s, %v; want -1 (no expiry)", ttl, err)
	}
	if n, err := rdb.Exists(ctx, "kg:{org1}:tok:", "kg:{org1}:nonce:").Result(); err != nil || n != 0 {
		t.Errorf("empty token/nonce keys exist: %d, %v", n, err)
	}

	// A refusal writes nothing: a fresh window stays without keys.
	ch = charge(now.Add(time.Hour))
	ch.OrgMax = 0
	var ex *quota.ExceededError
	if _, err := c.Charge(ctx, ch); !errors.As(err, &ex) {
		t.Fatalf("charge at max 0: %v, want *ExceededError", err)
	}
	w = ch.Period.Window(ch.At)
	if n, err := rdb.Exists(ctx, "kg:{org1}:q:org:"+w.ID, "kg:{org1}:q:key:k1:"+w.ID).Result(); err != nil || n != 0 {
		t.Errorf("refused charge created %d counter keys (%v)", n, err)
	}
}

// wantUnavailable charges with a deadline and checks that it fails with
// quota.ErrUnavailable within the deadline plus 50ms.
func wantUnavailable(t *testing.T, c *rediscounter.Counter, ch quota.Charge, deadline time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), deadline)
	defer cancel()
	start := time.Now()
	_, err := c.Charge(ctx, ch)
	took := time.Since(start)
	if !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("Charge with the store down: %v, want quota.ErrUnavailable", err)
	}
	if took > deadline+50*time.Millisecond {
		t.Errorf("Charge with the store down took %s, deadline %s", took, deadline)
	}
}

func TestRedisStopped(t *testing.T) {
	srv := redistest.Start(t)
	c := rediscounter.New(newClient(t, srv.Addr()))
	ch := charge(time.Now())
	ch.OrgMax = 3
	if _, err := c.Charge(t.Context(), ch); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	for range 3 {
		wantUnavailable(t, c, ch, 250*time.Millisecond)
	}

	// Restarted empty (no persistence): ready again within a bounded time,
	// then counting starts over and the max binds again.
	srv.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 250*time.Millisecond)
		err := c.Load(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counter not ready 10s after restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // go-redis redials a failed pool once a second; nothing to wait on
	}
	for i := range 3 {
		res, err := c.Charge(t.Context(), ch)
		if err != nil {
			t.Fatalf("charge %d after restart: %v", i, err)
		}
		if res.OrgUsed != int64(i+1) {
			t.Errorf("charge %d after restart: org used %d, want %d", i, res.OrgUsed, i+1)
		}
	}
	var ex *quota.ExceededError
	if _, err := c.Charge(t.Context(), ch); !errors.As(err, &ex) || ex.Used != 3 {
		t.Errorf("fourth charge after restart: %v, want refused at 3", err)
	}
}

func TestRedisPaused(t *testing.T) {
	srv := redistest.Start(t)
	c := rediscounter.New(newClient(t, srv.Addr()))
	if err := c.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Charge(t.Context(), charge(time.Now())); err != nil {
		t.Fatal(err)
	}

	srv.Pause()
	t.Cleanup(srv.Resume) // runs before the client is closed and the server stopped
	const deadline = 150 * time.Millisecond
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { wantUnavailable(t, c, charge(time.Now()), deadline) })
	}
	wg.Wait()

	srv.Resume()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := c.Charge(ctx, charge(time.Now())); err != nil {
		t.Errorf("charge after resume: %v", err)
	}
}

func TestNoScript(t *testing.T) {
	rdb := newClient(t, redistest.Start(t).Addr())
	c := rediscounter.New(rdb)
	ctx := t.Context()
	// Never loaded: EVALSHA fails with NOSCRIPT, Run falls back to EVAL.
	if _, err := c.Charge(ctx, charge(time.Now())); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := c.Charge(ctx, charge(time.Now()))
	if err != nil {
		t.Fatalf("charge after SCRIPT FLUSH: %v", err)
	}
	if res.OrgUsed != 2 {
		t.Errorf("org used %d, want 2", res.OrgUsed)
	}
	if err := c.Load(ctx); err != nil {
		t.Errorf("Load: %v", err)
	}
}

func TestInvalidOrg(t *testing.T) {
	c := rediscounter.New(newClient(t, redistest.Start(t).Addr()))
	for _, org := range []string{"", "a}b", "{x"} {
		ch := charge(time.Now())
		ch.OrgID = org
		_, err := c.Charge(t.Context(), ch)
		if err == nil || errors.Is(err, quota.ErrUnavailable) {
			t.Errorf("Charge for org %q: %v, want an error other than ErrUnavailable", org, err)
		}
	}
}

// BenchmarkCharge measures one admitted charge with a fresh token against a
// private redis-server on loopback, from parallel goroutines on one org:
// quotas only, and with an org rate limit and a key and an org rate limit
// (limits that never refuse, so every charge is admitted and advances them).
// Besides ns/op and allocs/op it reports the script's own time in Redis,
// from INFO commandstats (µs per EVALSHA), and the server's CPU time per
// charge (pipelined, so the reading and writing is shared among charges).
func BenchmarkCharge(b *testing.B) {
	orgRate := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 1_000_000, Per: time.Second, Burst: 1_000_000_000_000}
	keyRate := quota.RateLimit{Name: "key-rate", Scope: quota.ScopeKey, Requests: 1_000_000, Per: time.Second, Burst: 1_000_000_000_000}
	for _, bc := range []struct {
		name   string
		limits []quota.RateLimit
	}{
		{"quota", nil},
		{"quota+org-rate", []quota.RateLimit{orgRate}},
		{"quota+key-rate+org-rate", []quota.RateLimit{keyRate, orgRate}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rdb := newClient(b, redistest.Start(b).Addr())
			c := rediscounter.New(rdb)
			if err := c.Load(b.Context()); err != nil {
				b.Fatal(err)
			}
			if err := rdb.ConfigResetStat(b.Context()).Err(); err != nil {
				b.Fatal(err)
			}
			_, cpu0, _ := rediscounter.RedisStats(b.Context(), rdb)
			now := time.Now()
			var seq atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := b.Context()
				for pb.Next() {
					n := seq.Add(1)
					_, err := c.Charge(ctx, quota.Charge{
						OrgID: "org1", KeyID: "k" + strconv.FormatInt(n%8, 10), Cost: 1,
						OrgMax: 1 << 40, KeyMax: 1 << 40, Period: quota.PeriodMonth, At: now,
						Token: strconv.FormatInt(n, 36), RateLimits: bc.limits,
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			us, cpu, err := rediscounter.RedisStats(b.Context(), rdb)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(us, "redis-µs/charge")
			b.ReportMetric((cpu-cpu0)/float64(b.N), "redis-cpu-µs/charge")
		})
	}
}
