package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// rateHeld is how many slots of the organization limit name c could still
// spend at instant at, over its blocks.
func (c *Counter) rateHeld(org, name string, at time.Time) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.rates[rateID{org: org, name: name, scope: quota.ScopeOrg}]
	if b == nil || b.interval == 0 {
		return 0
	}
	return max(b.e-max(b.l, at.UnixMicro()), 0) / b.interval
}

// rateBlockEnd is the end of c's block of an organization limit (unix µs, 0
// none).
func (c *Counter) rateBlockEnd(org, name string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.rates[rateID{org: org, name: name, scope: quota.ScopeOrg}]; b != nil && b.e > b.l {
		return b.e
	}
	return 0
}

// admission is one admitted charge: its instant (µs) and cost.
type admission struct{ at, cost int64 }

// checkGCRA fails the test unless over every interval [a_i, a_j] the
// admissions cost at most burst + (a_j - a_i)/interval: what one GCRA of that
// limit admits at most. It returns the least room left over all intervals.
func checkGCRA(t *testing.T, name string, adm []admission, l quota.RateLimit) int64 {
	t.Helper()
	slices.SortFunc(adm, func(x, y admission) int { return int(x.at - y.at) })
	iv, burst := l.Interval().Microseconds(), l.EffectiveBurst()
	least := burst
	for i := range adm {
		var sum int64
		for j := i; j < len(adm); j++ {
			sum += adm[j].cost
			allowed := burst + (adm[j].at-adm[i].at)/iv
			if sum > allowed {
				t.Fatalf("%s: %d units admitted in [%d, %d] (%s), a GCRA of %d per %s burst %d allows %d",
					name, sum, adm[i].at, adm[j].at, time.Duration(adm[j].at-adm[i].at)*time.Microsecond, l.Requests, l.Per, burst, allowed)
			}
			least = min(least, allowed-sum)
		}
	}
	return least
}

// scriptCalls is how many scripts Redis ran (EVALSHA and EVAL).
func scriptCalls(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	stats, err := rdb.InfoMap(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sec := range stats {
		for _, k := range []string{"cmdstat_evalsha", "cmdstat_eval"} {
			if v, ok := sec[k]; ok {
				var calls int64
				if _, err := fmt.Sscanf(v, "calls=%d", &calls); err != nil {
					t.Fatalf("%s: %q: %v", k, v, err)
				}
				n += calls
			}
		}
	}
	return n
}

// TestRateFleetWithinGCRA: four leasing sidecars and one charging per
// request send traffic far above an organization limit of 50/s, burst 10,
// and a key limit of 30/s, burst 5 on each of two keys, for about three
// seconds; one leasing sidecar dies (kill -9) half way holding slots. Over
// every interval the fleet admits no more than one GCRA of each limit would,
// and the dead sidecar's slots stay counted as used.
func TestRateFleetWithinGCRA(t *testing.T) {
	srv := redistest.Start(t)
	orgLim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 50, Per: time.Second, Burst: 10}
	keyLim := quota.RateLimit{Name: "key-rate", Scope: quota.ScopeKey, Requests: 30, Per: time.Second, Burst: 5}
	const (
		leasing = 4
		workers = 3
		run     = 3 * time.Second
		pace    = 4 * time.Millisecond // per worker: ~5 × 3 × 250/s offered
		most    = int(run / pace)      // attempts per worker, whatever the clock does
	)
	var cs []*Counter
	var all []quota.Counter
	for range leasing {
		// Blocks up to half the free slots and 200ms of the rate: larger
		// than the defaults, so that sidecars hold slots most of the time.
		c := New(rediscounter.New(redistest.NewClient(t, srv.Addr())), "", Options{Timeout: 5 * time.Second, RateShare: 2, RateSpan: 200 * time.Millisecond})
		cs = append(cs, c)
		all = append(all, c)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, c := range cs[1:] {
			_ = c.Close(ctx)
		}
	})
	all = append(all, rediscounter.New(redistest.NewClient(t, srv.Addr())))
	var (
		mu       sync.Mutex
		orgAdm   []admission
		keyAdm   [2][]admission
		dead     atomic.Bool
		refused  atomic.Int64
		attempts atomic.Int64
		wg       sync.WaitGroup
	)
	rdb := redistest.NewClient(t, srv.Addr())
	calls0 := scriptCalls(t, rdb)
	start := time.Now()
	for ci, c := range all {
		for w := range workers {
			wg.Go(func() {
				for i := range most {
					if time.Since(start) > run || (ci == 0 && dead.Load()) {
						return
					}
					k := (w + i) % 2
					at := time.Now()
					ch := orgCharge("org1", "k"+strconv.Itoa(k), -1, at)
					ch.RateLimits = []quota.RateLimit{orgLim, keyLim}
					ch.Cost = 1 + int64(i%5/4) // every fifth costs 2
					attempts.Add(1)
					_, err := c.Charge(t.Context(), ch)
					var rl *quota.RateLimitedError
					switch {
					case err == nil:
						mu.Lock()
						orgAdm = append(orgAdm, admission{at.UnixMicro(), ch.Cost})
						keyAdm[k] = append(keyAdm[k], admission{at.UnixMicro(), ch.Cost})
						mu.Unlock()
					case errors.As(err, &rl):
						refused.Add(1)
					default:
						t.Error(err)
						return
					}
					time.Sleep(pace) // paces the offered traffic; nothing to wait for
				}
			})
		}
	}
	// Half way, sidecar 0 dies holding what it holds.
	time.Sleep(run / 2)
	dead.Store(true)
	cs[0].abandon()
	heldAtDeath := cs[0].rateHeld("org1", orgLim.Name, time.Now())
	deadEnd := cs[0].rateBlockEnd("org1", orgLim.Name)
	wg.Wait()
	calls := scriptCalls(t, rdb) - calls0

	least := checkGCRA(t, "organization", orgAdm, orgLim)
	for k := range keyAdm {
		checkGCRA(t, "key k"+strconv.Itoa(k), keyAdm[k], keyLim)
	}
	// The dead sidecar's block stays counted: the limit's TAT never went
	// back below its end.
	if deadEnd > 0 {
		v, err := rdb.Get(t.Context(), "kg:{org1}:rl:org:"+orgLim.Name).Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		if err == nil && v < deadEnd {
			t.Errorf("the limit's TAT %d is below the end %d of the dead sidecar's block: its slots were freed", v, deadEnd)
		}
	}
	var units int64
	for _, a := range orgAdm {
		units += a.cost
	}
	// What a GCRA allows over the run, and a floor that shows the leases do
	// not refuse what the limit has room for.
	span := time.Duration(orgAdm[len(orgAdm)-1].at-orgAdm[0].at) * time.Microsecond
	ceiling := orgLim.EffectiveBurst() + int64(span/orgLim.Interval())
	if units < ceiling/2 {
		t.Errorf("admitted %d units over %s, a GCRA allows %d: the leases refuse too much", units, span, ceiling)
	}
	t.Logf("admitted %d units (%d charges) of %d attempts over %s, %d refused; a GCRA allows %d (least room over any interval: %d); "+
		"%d script calls (%.2f per attempt); the dead sidecar held %d slots",
		units, len(orgAdm), attempts.Load(), span, refused.Load(), ceiling, least, calls, float64(calls)/float64(attempts.Load()), heldAtDeath)
}

// TestRateOutage: while Redis is down a sidecar admits from the slots it
// holds, within the limit; past them, charges fail with ErrUnavailable. The
// slots it spent stay spent once Redis is back.
func TestRateOutage(t *testing.T) {
	srv := redistest.StartDurable(t)
	rdb := redistest.NewClient(t, srv.Addr())
	// A burst below the first quota block (8), so that the rate slots run
	// out first.
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 5, Per: time.Minute}
	c := newLease(t, rdb, Options{Timeout: 300 * time.Millisecond, RateShare: 1, RateSpan: time.Hour})
	at := time.Now()
	ch := orgCharge("org1", "k1", -1, at)
	ch.RateLimits = []quota.RateLimit{lim}
	res, err := c.Charge(t.Context(), ch)
	if err != nil {
		t.Fatal(err)
	}
	if held := c.rateHeld("org1", lim.Name, at); held != 4 || res.RateLimits[0].Remaining != 4 {
		t.Fatalf("after one charge: %d slots held, %d remaining reported; want the whole burst reserved: 4, 4", held, res.RateLimits[0].Remaining)
	}
	srv.Stop()
	admitted := int64(1)
	for range 20 {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := c.Charge(ctx, ch)
		cancel()
		if err != nil {
			if !errors.Is(err, quota.ErrUnavailable) {
				t.Fatalf("past the slots held: %v, want ErrUnavailable", err)
			}
			break
		}
		admitted++
	}
	if admitted != 5 {
		t.Errorf("admitted %d during and before the outage, want the 5 of the burst", admitted)
	}
	srv.Restart()
	// Every slot is spent: a sidecar charging per request is refused, and
	// so is the leasing one.
	plain := rediscounter.New(redistest.NewClient(t, srv.Addr()))
	var rl *quota.RateLimitedError
	if _, err := plain.Charge(t.Context(), ch); !errors.As(err, &rl) || rl.RetryAfter != 12*time.Second {
		t.Errorf("after the outage, per request: %v; want refused with Retry-After 12s", err)
	}
	if _, err := c.Charge(t.Context(), ch); !errors.As(err, &rl) || rl.RetryAfter != 12*time.Second {
		t.Errorf("after the outage, leasing: %v; want refused with Retry-After 12s", err)
	}
}

// TestRateIdleGiveBack: a block's unspent slots go back when it has been
// idle, so another sidecar (here one charging per request) finds them free.
func TestRateIdleGiveBack(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 10, Per: time.Minute}
	c := newLease(t, rdb, Options{RateShare: 1, RateSpan: time.Hour, Tick: 20 * time.Millisecond, IdleReturn: 50 * time.Millisecond})
	at := time.Now()
	ch := orgCharge("org1", "k1", -1, at)
	ch.RateLimits = []quota.RateLimit{lim}
	if _, err := c.Charge(t.Context(), ch); err != nil {
		t.Fatal(err)
	}
	if held := c.rateHeld("org1", lim.Name, at); held != 9 {
		t.Fatalf("held %d slots, want 9", held)
	}
	plain := rediscounter.New(rdb)
	deadline := time.Now().Add(2 * time.Second)
	for c.rateHeld("org1", lim.Name, at) > 0 || c.rateFlying("org1", lim.Name) {
		if time.Now().After(deadline) {
			t.Fatal("the idle block was not given back within 2s")
		}
		time.Sleep(10 * time.Millisecond) // the give-back has no signal a test sees
	}
	res, err := plain.Charge(t.Context(), ch)
	if err != nil {
		t.Fatalf("after the give-back: %v, want admitted", err)
	}
	if st := res.RateLimits[0]; st.Remaining != 8 {
		t.Errorf("after the give-back: %d remaining, want 8 (one spent by each sidecar)", st.Remaining)
	}
}

// rateFlying says a rate call of c's organization limit is in progress.
func (c *Counter) rateFlying(org, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.rates[rateID{org: org, name: name, scope: quota.ScopeOrg}]
	return b != nil && b.flight != nil
}

// TestRateRollingUpgrade: sidecars of the previous version (charge_v2.lua,
// per request) and leasing sidecars share an organization limit: they read
// each other's state, and the fleet stays within one GCRA.
func TestRateRollingUpgrade(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 100, Per: time.Second, Burst: 20}
	old := func(at time.Time, i int) (bool, error) {
		w := quota.PeriodHour.Window(at)
		keys := []string{"kg:{org1}:q:org:" + w.ID, "kg:{org1}:q:key:old:" + w.ID, "kg:{org1}:tok:old" + strconv.Itoa(i), "kg:{org1}:nonce:",
			"kg:{org1}:rl:org:" + lim.Name}
		v, err := chargeV2.Run(t.Context(), rdb, keys, 1, -1, -1, w.ExpireAt().Unix(), 5000, -1, at.UnixMilli(),
			at.UnixMicro(), lim.Interval().Microseconds(), lim.EffectiveBurst(), 0).Int64Slice()
		if err != nil {
			return false, err
		}
		return v[0] == 1, nil
	}
	var cs []*Counter
	for range 2 {
		cs = append(cs, newLease(t, redistest.NewClient(t, srv.Addr()), Options{RateShare: 2, RateSpan: 100 * time.Millisecond}))
	}
	var (
		mu  sync.Mutex
		adm []admission
		wg  sync.WaitGroup
	)
	record := func(at time.Time) {
		mu.Lock()
		adm = append(adm, admission{at.UnixMicro(), 1})
		mu.Unlock()
	}
	const run, pace = 1500 * time.Millisecond, 2 * time.Millisecond
	start := time.Now()
	for w := range 3 {
		wg.Go(func() {
			for i := range int(run / pace) {
				if time.Since(start) > run {
					return
				}
				at := time.Now()
				ok, err := old(at, w*100000+i)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					record(at)
				}
				time.Sleep(pace) // paces the offered traffic
			}
		})
	}
	for _, c := range cs {
		for range 3 {
			wg.Go(func() {
				for range int(run / pace) {
					if time.Since(start) > run {
						return
					}
					at := time.Now()
					ch := orgCharge("org1", "new", -1, at)
					ch.RateLimits = []quota.RateLimit{lim}
					_, err := c.Charge(t.Context(), ch)
					var rl *quota.RateLimitedError
					switch {
					case err == nil:
						record(at)
					case !errors.As(err, &rl):
						t.Error(err)
						return
					}
					time.Sleep(pace) // paces the offered traffic
				}
			})
		}
	}
	wg.Wait()
	least := checkGCRA(t, "old and new sidecars", adm, lim)
	t.Logf("%d admitted over %s by old and new sidecars (least room over any interval: %d)", len(adm), run, least)
}

// TestRateRefusedWhileOthersHold measures what other sidecars held unspent
// when one was refused by a rate limit, with four sidecars at the default
// options sending traffic above an organization limit of 200/s, burst 50.
// The bound (docs/rate-limits.md): a sidecar refuses only when Redis has no
// room after it gave back its own slots; each other sidecar then holds at
// most one block, of at most RateSpan of the limit's rate (here 10 slots)
// or what its waiting requests spend at once.
func TestRateRefusedWhileOthersHold(t *testing.T) {
	srv := redistest.Start(t)
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 200, Per: time.Second, Burst: 50}
	const n, workers, run, pace = 4, 3, 1500 * time.Millisecond, 2 * time.Millisecond
	cs := make([]*Counter, n)
	for i := range cs {
		cs[i] = newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	}
	var (
		mu        sync.Mutex
		refusals  int
		whileHeld int
		worst     int64
		admitted  atomic.Int64
		wg        sync.WaitGroup
	)
	start := time.Now()
	for i, c := range cs {
		for range workers {
			wg.Go(func() {
				for range int(run / pace) {
					if time.Since(start) > run {
						return
					}
					at := time.Now()
					ch := orgCharge("org1", "k"+strconv.Itoa(i), -1, at)
					ch.RateLimits = []quota.RateLimit{lim}
					_, err := c.Charge(t.Context(), ch)
					var rl *quota.RateLimitedError
					switch {
					case err == nil:
						admitted.Add(1)
					case errors.As(err, &rl):
						var others int64
						for k, o := range cs {
							if k != i {
								others += o.rateHeld("org1", lim.Name, time.Now())
							}
						}
						mu.Lock()
						refusals++
						if others > 0 {
							whileHeld++
						}
						worst = max(worst, others)
						mu.Unlock()
					default:
						t.Error(err)
						return
					}
					time.Sleep(pace) // paces the offered traffic
				}
			})
		}
	}
	wg.Wait()
	t.Logf("admitted %d; %d refusals, %d while others held slots, at most %d slots held elsewhere", admitted.Load(), refusals, whileHeld, worst)
	if bound := int64(n-1) * (10 + workers); worst > bound {
		t.Errorf("others held %d slots at a refusal, want at most %d", worst, bound)
	}
}

// TestRateCrashCountsAsUsed: a sidecar that dies holding slots leaves them
// counted as used: another finds the limit spent and is told how long to
// wait.
func TestRateCrashCountsAsUsed(t *testing.T) {
	srv := redistest.Start(t)
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 5, Per: time.Minute}
	a := New(rediscounter.New(redistest.NewClient(t, srv.Addr())), "", Options{Timeout: 5 * time.Second, RateShare: 1, RateSpan: time.Hour})
	at := time.Now()
	ch := orgCharge("org1", "k1", -1, at)
	ch.RateLimits = []quota.RateLimit{lim}
	if _, err := a.Charge(t.Context(), ch); err != nil {
		t.Fatal(err)
	}
	if held := a.rateHeld("org1", lim.Name, at); held != 4 {
		t.Fatalf("held %d slots, want 4", held)
	}
	a.abandon() // kill -9: nothing goes back
	b := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	var rl *quota.RateLimitedError
	if _, err := b.Charge(t.Context(), ch); !errors.As(err, &rl) || rl.RetryAfter != 12*time.Second {
		t.Errorf("after the crash: %v, want refused with Retry-After 12s (the dead sidecar's 4 slots count as used)", err)
	}
}

// TestRateBelowLimit: four sidecars whose traffic together is about half an
// organization limit of 1000/s, burst 100, paced: nothing is refused, and
// the sidecars charge Redis far less than once per request.
func TestRateBelowLimit(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 1000, Per: time.Second, Burst: 100}
	const n, workers, run, pace = 4, 2, time.Second, 16 * time.Millisecond // 4 × 2 × 62.5/s = 500/s
	cs := make([]*Counter, n)
	for i := range cs {
		cs[i] = newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	}
	var admitted, refused atomic.Int64
	var wg sync.WaitGroup
	calls0 := scriptCalls(t, rdb)
	start := time.Now()
	for i, c := range cs {
		for range workers {
			wg.Go(func() {
				for range int(run / pace) {
					if time.Since(start) > run {
						return
					}
					ch := orgCharge("org1", "k"+strconv.Itoa(i), -1, time.Now())
					ch.RateLimits = []quota.RateLimit{lim}
					_, err := c.Charge(t.Context(), ch)
					var rl *quota.RateLimitedError
					switch {
					case err == nil:
						admitted.Add(1)
					case errors.As(err, &rl):
						refused.Add(1)
					default:
						t.Error(err)
						return
					}
					time.Sleep(pace) // paces the offered traffic
				}
			})
		}
	}
	wg.Wait()
	calls := scriptCalls(t, rdb) - calls0
	t.Logf("admitted %d, refused %d, %d script calls (%.3f per request, quota blocks included)", admitted.Load(), refused.Load(), calls, float64(calls)/float64(admitted.Load()))
	if refused.Load() > 0 {
		t.Errorf("%d refused at half the limit", refused.Load())
	}
	if calls*2 > admitted.Load() {
		t.Errorf("%d script calls for %d requests, want fewer than one per two", calls, admitted.Load())
	}
}
