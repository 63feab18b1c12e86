package lease

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
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

// held is what c holds unspent, over all organizations.
func (c *Counter) held() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, ol := range c.orgs {
		n += ol.avail + ol.toReturn + ol.keyHeld
	}
	return n
}

// abandon stops c as a crash would: nothing goes back, nothing is booked.
func (c *Counter) abandon() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	<-c.done
}

// observer counts what a Counter reports, for the tests.
type observer struct {
	outstanding, returned, lost atomic.Int64
	renewals                    sync.Map // result -> *atomic.Int64
	returns                     chan int64
}

func newObserver() *observer { return &observer{returns: make(chan int64, 64)} }

func (o *observer) LeaseOutstanding(d int64) { o.outstanding.Add(d) }
func (o *observer) LeaseRenewal(r string) {
	v, _ := o.renewals.LoadOrStore(r, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}
func (o *observer) LeaseReturned(n int64) {
	o.returned.Add(n)
	select {
	case o.returns <- n:
	default:
	}
}
func (o *observer) LeaseLost(n int64) { o.lost.Add(n) }

func (o *observer) renewed(r string) int64 {
	v, ok := o.renewals.Load(r)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// now is a real instant: these tests run on Redis's clock too (expiries).
func orgCharge(org, key string, orgMax int64, at time.Time) quota.Charge {
	return quota.Charge{OrgID: org, KeyID: key, Cost: 1, OrgMax: orgMax, KeyMax: -1, Period: quota.PeriodHour, At: at}
}

// usage reads usage as a sidecar without leases does.
func usage(t *testing.T, rdb redis.UniversalClient, org, key string, at time.Time) quota.Usage {
	t.Helper()
	u, err := rediscounter.New(rdb).Usage(t.Context(), org, key, quota.PeriodHour, at)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func closeAll(t *testing.T, cs ...*Counter) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for _, c := range cs {
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestManyCountersNoOvershoot: eight sidecars with leases and one without
// charge one org at once, with blocks outstanding on every leasing one:
// together they admit at most the quota, and once they stopped the counter
// shows exactly what was admitted (refusals counted nothing, blocks went
// back), per key too.
func TestManyCountersNoOvershoot(t *testing.T) {
	srv := redistest.Start(t)
	const (
		max      = 3000
		counters = 8
		workers  = 12
		attempts = 40 // per worker: 8×12×40 + 12×40 > 2×max
		keys     = 50
	)
	now := time.Now()
	var cs []*Counter
	var all []quota.Counter
	for range counters {
		c := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
		cs = append(cs, c)
		all = append(all, c)
	}
	all = append(all, rediscounter.New(redistest.NewClient(t, srv.Addr())))
	var (
		admitted atomic.Int64
		perKey   [keys]atomic.Int64
		wg       sync.WaitGroup
		heldOn   [counters]atomic.Bool
	)
	start := make(chan struct{})
	for ci, c := range all {
		for w := range workers {
			wg.Go(func() {
				<-start
				for i := range attempts {
					k := (ci*workers + w + i) % keys
					_, err := c.Charge(t.Context(), orgCharge("org1", "k"+strconv.Itoa(k), max, now))
					var ex *quota.ExceededError
					switch {
					case err == nil:
						admitted.Add(1)
						perKey[k].Add(1)
					case errors.As(err, &ex):
					default:
						t.Error(err)
						return
					}
					if ci < counters && cs[ci].held() > 0 {
						heldOn[ci].Store(true)
					}
				}
			})
		}
	}
	close(start)
	wg.Wait()
	if n := admitted.Load(); n > max {
		t.Fatalf("admitted %d against a quota of %d", n, max)
	}
	for i := range heldOn {
		if !heldOn[i].Load() {
			t.Errorf("sidecar %d never held a block", i)
		}
	}
	closeAll(t, cs...)
	u := usage(t, redistest.NewClient(t, srv.Addr()), "org1", "", now)
	if u.Org != admitted.Load() {
		t.Errorf("org usage %d after all stopped, admitted %d", u.Org, admitted.Load())
	}
	rdb := redistest.NewClient(t, srv.Addr())
	for k := range keys {
		if got := usage(t, rdb, "org1", "k"+strconv.Itoa(k), now).Key; got != perKey[k].Load() {
			t.Errorf("key k%d: usage %d, admitted %d", k, got, perKey[k].Load())
		}
	}
	t.Logf("admitted %d of %d (attempts %d)", admitted.Load(), max, (counters+1)*workers*attempts)
}

// TestCrashCountsAsUsed: a sidecar that dies holding a block leaves its
// units counted as used: the others admit only what remains, usage never
// shows less than was admitted (the dead sidecar's key counts too, while its
// claim is live), and the units it never spent are lost, not free.
func TestCrashCountsAsUsed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	const max = 200
	a := New(rediscounter.New(rdb), "", Options{Timeout: 5 * time.Second})
	for range 5 {
		if _, err := a.Charge(t.Context(), orgCharge("org1", "k1", max, now)); err != nil {
			t.Fatal(err)
		}
	}
	unspent := a.held()
	if unspent == 0 {
		t.Fatal("the sidecar holds no block")
	}
	a.abandon() // kill -9: nothing goes back

	u := usage(t, rdb, "org1", "k1", now)
	if u.Org != 5+unspent || u.Key < 5 {
		t.Errorf("after the crash: org %d, key %d; want org %d (5 admitted + %d held), key at least 5", u.Org, u.Key, 5+unspent, unspent)
	}
	b := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	var got int64
	for range max {
		_, err := b.Charge(t.Context(), orgCharge("org1", "k2", max, now))
		var ex *quota.ExceededError
		if errors.As(err, &ex) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got++
	}
	if got+5 > max || got != max-5-unspent {
		t.Errorf("the survivor admitted %d after the crash admitted 5 holding %d; want %d", got, unspent, max-5-unspent)
	}
}

// TestOutage: while Redis is down a sidecar admits from the block it holds,
// exactly counted once Redis is back; past the block, charges fail with
// ErrUnavailable (the failure mode applies in the gate).
func TestOutage(t *testing.T) {
	srv := redistest.StartDurable(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	obs := newObserver()
	// Calls fail within 300ms, while the outage lasts.
	c := newLease(t, rdb, Options{Observer: obs, Timeout: 300 * time.Millisecond})
	ch := orgCharge("org1", "k1", 1000, now)
	if _, err := c.Charge(t.Context(), ch); err != nil {
		t.Fatal(err)
	}
	block := c.held() + 1
	if block < 4 {
		t.Fatalf("block of %d", block)
	}
	srv.Stop()
	admitted := int64(1)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := c.Charge(ctx, ch)
		cancel()
		if err != nil {
			if !errors.Is(err, quota.ErrUnavailable) {
				t.Fatalf("past the block: %v, want ErrUnavailable", err)
			}
			break
		}
		if admitted++; admitted > block {
			t.Fatalf("admitted %d from a block of %d during the outage", admitted, block)
		}
	}
	if admitted != block {
		t.Errorf("admitted %d during the outage, want the block's %d", admitted, block)
	}
	srv.Restart()
	closeAll(t, c)
	u := usage(t, redistest.NewClient(t, srv.Addr()), "org1", "k1", now)
	if u.Org != block || u.Key != block {
		t.Errorf("after the outage: org %d, key %d; want both %d", u.Org, u.Key, block)
	}
	if obs.renewed("failed") == 0 {
		t.Error("no failed renewal counted")
	}
}

// TestIdleReturn: a block's unspent part goes back within a second of its
// last use, and the key's count is booked: usage is then exact as any
// sidecar reads it.
func TestIdleReturn(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	obs := newObserver()
	c := newLease(t, rdb, Options{Observer: obs})
	for range 3 {
		if _, err := c.Charge(t.Context(), orgCharge("org1", "k1", 1000, now)); err != nil {
			t.Fatal(err)
		}
	}
	last := time.Now()
	held := c.held()
	if held == 0 {
		t.Fatal("no block held")
	}
	select {
	case n := <-obs.returns:
		if d := time.Since(last); d > time.Second {
			t.Errorf("returned %d units %s after the last use, want within 1s", n, d)
		} else {
			t.Logf("returned %d units %s after the last use", n, d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("nothing returned within 3s")
	}
	if u := usage(t, rdb, "org1", "k1", now); u.Org != 3 || u.Key != 3 {
		t.Errorf("usage after the return: org %d, key %d; want 3, 3", u.Org, u.Key)
	}
	if obs.outstanding.Load() != 0 || obs.returned.Load() != held {
		t.Errorf("observer: outstanding %d, returned %d; want 0, %d", obs.outstanding.Load(), obs.returned.Load(), held)
	}
}

// TestRefusedWhileOthersHold measures how much other sidecars held unspent
// when one refused, with four sidecars exhausting a quota, and how long the
// refused charges waited for it. The bound (docs/quota-leases.md): a charge
// the free units refuse while other holders may hold unspent units waits
// for them up to RefusalWait (the test gives it 10s, so that a loaded
// machine cannot break it); the holders give them back within a tick of
// learning of the refusal. So no refusal while units are held elsewhere,
// and the quota is used to the last unit when the workers stop.
func TestRefusedWhileOthersHold(t *testing.T) {
	srv := redistest.Start(t)
	const (
		max     = 2000
		n       = 4
		workers = 4
	)
	now := time.Now()
	cs := make([]*Counter, n)
	for i := range cs {
		cs[i] = newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second})
	}
	var (
		mu         sync.Mutex
		worst      int64
		longest    time.Duration
		refusals   int
		whileHeld  int
		admitted   atomic.Int64
		wg         sync.WaitGroup
		unexpected atomic.Value
	)
	for i, c := range cs {
		for w := range workers {
			wg.Go(func() {
				for j := 0; j < max; j++ {
					start := time.Now()
					_, err := c.Charge(t.Context(), orgCharge("org1", fmt.Sprintf("k%d-%d", i, w), max, now))
					if err == nil {
						admitted.Add(1)
						continue
					}
					var ex *quota.ExceededError
					if !errors.As(err, &ex) {
						unexpected.Store(err)
						return
					}
					took := time.Since(start)
					var others int64
					for k, o := range cs {
						if k != i {
							others += o.held()
						}
					}
					mu.Lock()
					refusals++
					if others > 0 {
						whileHeld++
					}
					worst = maxOf(worst, others)
					if took > longest {
						longest = took
					}
					mu.Unlock()
					return
				}
			})
		}
	}
	wg.Wait()
	if err := unexpected.Load(); err != nil {
		t.Fatal(err)
	}
	t.Logf("admitted %d of %d; %d refusals, %d while others held units (at most %d units); the longest refused charge took %s",
		admitted.Load(), max, refusals, whileHeld, worst, longest)
	if whileHeld > 0 {
		t.Errorf("%d refusals while other sidecars held up to %d units", whileHeld, worst)
	}
	if admitted.Load() != max {
		t.Errorf("admitted %d in all, want the whole quota %d", admitted.Load(), max)
	}
}

// TestRefusalWaitBounded: a refused charge waits for units another holder
// may hold unspent (here a sidecar that died holding a block, its claim
// still live) no longer than RefusalWait, and never past its context's
// deadline; then it is refused, not failed, and counts nothing.
func TestRefusalWaitBounded(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	const max = 100
	dead := New(rediscounter.New(rdb), "", Options{Timeout: 5 * time.Second})
	if _, err := dead.Charge(t.Context(), orgCharge("org1", "k1", max, now)); err != nil {
		t.Fatal(err)
	}
	if dead.held() == 0 {
		t.Fatal("no block held")
	}
	dead.abandon()
	const wait = 600 * time.Millisecond
	c := newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: wait})
	for range max {
		if _, err := c.Charge(t.Context(), orgCharge("org1", "k2", max, now)); err != nil {
			break
		}
	}
	before := usage(t, rdb, "org1", "", now).Org
	for _, tc := range []struct {
		name     string
		deadline time.Duration // 0: none
		atLeast  time.Duration
	}{{"no deadline", 0, wait}, {"deadline", 300 * time.Millisecond, 300 * time.Millisecond}} {
		ctx := t.Context()
		if tc.deadline > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, tc.deadline)
			defer cancel()
		}
		start := time.Now()
		_, err := c.Charge(ctx, orgCharge("org1", "k2", max, now))
		took := time.Since(start)
		var ex *quota.ExceededError
		if !errors.As(err, &ex) || ex.Scope != quota.ScopeOrg {
			t.Fatalf("%s: %v, want refused by the org", tc.name, err)
		}
		// A refused charge waits for others only as long as it may (the
		// upper bound is loose: the machine may be loaded).
		if took < tc.atLeast*9/10 || took > tc.atLeast+2*time.Second {
			t.Errorf("%s: refused after %s, want about %s", tc.name, took, tc.atLeast)
		}
		t.Logf("%s: refused after %s", tc.name, took)
	}
	if u := usage(t, rdb, "org1", "", now).Org; u != before {
		t.Errorf("the refusals changed the org usage from %d to %d", before, u)
	}
}

// TestOldHolderWaitedFor: a sidecar running the previous lease script
// (testdata/lease_v1.lua: it reports no unspent units) holds a block; a
// sidecar refused meanwhile counts the old holder's claim as unspent,
// waits, and admits the units once the old holder gives them back.
func TestOldHolderWaitedFor(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	const max = 100
	w := quota.PeriodHour.Window(now)
	keys := []string{"kg:{org1}:q:org:" + w.ID, "kg:{org1}:q:lease:" + w.ID, "kg:{org1}:q:keys:" + w.ID}
	old := func(seq, ret, need, want int64) []int64 {
		v, err := leaseV1.Run(t.Context(), rdb, keys, "old", time.Now().UnixMilli(), 10000, w.ExpireAt().Unix(),
			seq, ret, need, want, max, 16, want).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := old(0, 0, 1, 40); v[0] != 1 || v[2] != 40 {
		t.Fatalf("old holder's reservation: %v, want 40 granted", v)
	}
	c := newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second})
	var admitted atomic.Int64
	done := make(chan error, 1)
	go func() {
		for range max + 1 {
			if _, err := c.Charge(t.Context(), orgCharge("org1", "k1", max, now)); err != nil {
				done <- err
				return
			}
			admitted.Add(1)
		}
		done <- nil
	}()
	// The new sidecar marks its refusal in the holders hash, and waits.
	deadline := time.Now().Add(5 * time.Second)
	for !rdb.HExists(t.Context(), keys[1], "r:").Val() {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal marked; %d admitted", admitted.Load())
		}
		time.Sleep(10 * time.Millisecond) // polling Redis: the mark has no other signal
	}
	if n := admitted.Load(); n != max-40 {
		t.Errorf("admitted %d before the old holder gave back, want %d", n, max-40)
	}
	old(1, 40, 0, 0) // the old holder gives its block back
	err := <-done
	var ex *quota.ExceededError
	if !errors.As(err, &ex) {
		t.Fatalf("past the quota: %v, want refused", err)
	}
	if n := admitted.Load(); n != max {
		t.Errorf("admitted %d in all, want the whole quota %d", n, max)
	}
}

func maxOf(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// charge_v2.lua is charge.lua before leases; charge_v1.lua, before rate
// limits.
var (
	//go:embed testdata/charge_v2.lua
	chargeV2Src string
	chargeV2    = redis.NewScript(chargeV2Src)
	// lease_v1.lua is lease.lua before holders reported their unspent
	// units (a:) and refusals were marked (r:).
	//go:embed testdata/lease_v1.lua
	leaseV1Src string
	leaseV1    = redis.NewScript(leaseV1Src)
)

// TestRollingUpgrade: sidecars of the two previous versions, charging per
// request with their own scripts, and sidecars with leases charge one org
// together: never more than the quota, and the counters they share end up
// exact.
func TestRollingUpgrade(t *testing.T) {
	v1Src, err := os.ReadFile("../rediscounter/testdata/charge_v1.lua")
	if err != nil {
		t.Fatal(err)
	}
	chargeV1 := redis.NewScript(string(v1Src))
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	const max = 1500
	w := quota.PeriodHour.Window(now)
	old := func(s *redis.Script, key string, i int) (bool, error) {
		keys := []string{"kg:{org1}:q:org:" + w.ID, "kg:{org1}:q:key:" + key + ":" + w.ID,
			"kg:{org1}:tok:" + key + strconv.Itoa(i), "kg:{org1}:nonce:"}
		v, err := s.Run(t.Context(), rdb, keys, 1, max, -1, w.ExpireAt().Unix(), 5000, -1, now.UnixMilli()).Int64Slice()
		if err != nil {
			return false, err
		}
		return v[0] == 1, nil
	}
	var cs []*Counter
	for range 3 {
		cs = append(cs, newLease(t, redistest.NewClient(t, srv.Addr()), Options{}))
	}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for i, s := range []*redis.Script{chargeV1, chargeV2} {
		for w := range 4 {
			wg.Go(func() {
				for j := range 200 {
					ok, err := old(s, fmt.Sprintf("old%d-%d", i, w), j)
					if err != nil {
						t.Error(err)
						return
					}
					if ok {
						admitted.Add(1)
					}
				}
			})
		}
	}
	for i, c := range cs {
		for w := range 6 {
			wg.Go(func() {
				for range 100 {
					_, err := c.Charge(t.Context(), orgCharge("org1", fmt.Sprintf("new%d-%d", i, w), max, now))
					var ex *quota.ExceededError
					switch {
					case err == nil:
						admitted.Add(1)
					case errors.As(err, &ex):
					default:
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if admitted.Load() > max {
		t.Fatalf("old and new sidecars admitted %d against a quota of %d", admitted.Load(), max)
	}
	closeAll(t, cs...)
	if u := usage(t, rdb, "org1", "", now); u.Org != admitted.Load() {
		t.Errorf("org usage %d, admitted %d", u.Org, admitted.Load())
	}
	t.Logf("admitted %d of %d", admitted.Load(), max)
}

// TestCloseDuringOutage: at shutdown with Redis down, Close gives up when
// its context ends and counts what it could not give back as lost (it stays
// counted as used in Redis).
func TestCloseDuringOutage(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	obs := newObserver()
	rc := rediscounter.New(rdb)
	if err := rc.Load(t.Context()); err != nil { // no NOSCRIPT round trip within the 100ms below
		t.Fatal(err)
	}
	c := New(rc, "", Options{Observer: obs, Timeout: 100 * time.Millisecond})
	if _, err := c.Charge(t.Context(), orgCharge("org1", "k1", 1000, time.Now())); err != nil {
		t.Fatal(err)
	}
	held := c.held()
	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Close(ctx); err == nil {
		t.Fatal("Close with Redis down: nil error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %s past its 500ms context", d)
	}
	if obs.lost.Load() != held {
		t.Errorf("lost %d units, want the %d held", obs.lost.Load(), held)
	}
}

// TestExactUnderBurst: four sidecars, 2,000 concurrent charges against a
// quota of 500, in rounds (one window each): exactly 500 admitted every
// round, so no sidecar refused while units were left anywhere at the end.
// A refused charge waits for the units other sidecars hold (RefusalWait,
// generous here: the machine may be loaded, and the test is about
// counting, not latency).
func TestExactUnderBurst(t *testing.T) {
	srv := redistest.Start(t)
	cs := make([]*Counter, 4)
	for i := range cs {
		cs[i] = newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second})
	}
	base := time.Now()
	for round := range 3 {
		at := base.Add(time.Duration(round) * time.Hour)
		var admitted atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 2000 {
			wg.Go(func() {
				<-start
				_, err := cs[i%4].Charge(t.Context(), orgCharge("org1", "k"+strconv.Itoa(i%7), 500, at))
				var ex *quota.ExceededError
				switch {
				case err == nil:
					admitted.Add(1)
				case !errors.As(err, &ex):
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		if admitted.Load() != 500 {
			t.Errorf("round %d: admitted %d of 2000 against a quota of 500, want exactly 500", round, admitted.Load())
		}
	}
}

// TestUsageTruthful: while one sidecar holds a block and has not booked its
// keys' counts, every other reader (a leasing sidecar or one without
// leases) sees at least what was admitted, for the org and for the key; and
// exactly that within a second of the traffic stopping.
func TestUsageTruthful(t *testing.T) {
	srv := redistest.Start(t)
	now := time.Now()
	a := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	b := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	plain := rediscounter.New(redistest.NewClient(t, srv.Addr()))
	var last time.Time
	for i := range 30 {
		key := "k1"
		if i%3 == 0 {
			key = "k2"
		}
		if _, err := a.Charge(t.Context(), orgCharge("org1", key, 100000, now)); err != nil {
			t.Fatal(err)
		}
		last = time.Now()
		if i%10 != 9 {
			continue
		}
		admitted := int64(i + 1)
		k1 := admitted - (admitted+2)/3
		for name, r := range map[string]quota.Counter{"leasing": b, "plain": plain, "self": a} {
			u, err := r.Usage(t.Context(), "org1", "k1", quota.PeriodHour, now)
			if err != nil {
				t.Fatal(err)
			}
			if u.Org < admitted || u.Key < k1 {
				t.Errorf("%s reader after %d admitted (%d for k1): org %d, key %d", name, admitted, k1, u.Org, u.Key)
			}
			if name == "self" && (u.Org != admitted || u.Key != k1) {
				t.Errorf("the admitting sidecar reads org %d, key %d; want exactly %d, %d", u.Org, u.Key, admitted, k1)
			}
		}
	}
	// Traffic stopped: exact everywhere within a second.
	for _, r := range []quota.Counter{b, plain} {
		for {
			u, err := r.Usage(t.Context(), "org1", "k1", quota.PeriodHour, now)
			if err != nil {
				t.Fatal(err)
			}
			if u.Org == 30 && u.Key == 20 {
				break
			}
			if time.Since(last) > time.Second {
				t.Fatalf("%s after the traffic stopped: org %d, key %d; want 30, 20", time.Since(last), u.Org, u.Key)
			}
			time.Sleep(20 * time.Millisecond) // polling Redis: the return has no signal a reader sees
		}
	}
	t.Logf("exact %s after the last request", time.Since(last))
}

// TestKeyGainsMax: requests a key had from an organization's blocks count
// against a max it gets later in the window, on sidecars with and without
// leases.
func TestKeyGainsMax(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	c := newLease(t, rdb, Options{})
	for range 5 {
		if _, err := c.Charge(t.Context(), orgCharge("org1", "k1", 1000, now)); err != nil {
			t.Fatal(err)
		}
	}
	closeAll(t, c) // the counts are booked
	plain := rediscounter.New(rdb)
	capped := orgCharge("org1", "k1", 1000, now)
	capped.KeyMax = 6
	if res, err := plain.Charge(t.Context(), capped); err != nil || res.KeyUsed != 6 {
		t.Fatalf("sixth request under a max of 6 = %+v, %v; want admitted at 6", res, err)
	}
	var ex *quota.ExceededError
	if _, err := plain.Charge(t.Context(), capped); !errors.As(err, &ex) || ex.Scope != quota.ScopeKey || ex.Used != 6 {
		t.Errorf("seventh request under a max of 6: %v, want refused by the key at 6", err)
	}
}

// TestBusyHolderYields: a sidecar with steady traffic holds a block of a
// quota far from its end (it looks for refusals only every second) when
// another sidecar uses up the rest: the refused one waits, the busy one
// gives its unspent units back, and the two together admit the whole quota.
func TestBusyHolderYields(t *testing.T) {
	srv := redistest.Start(t)
	now := time.Now()
	const max = 5000
	a := newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second})
	b := newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second})
	var byA atomic.Int64
	stop := make(chan struct{})
	aDone := make(chan struct{})
	if _, err := a.Charge(t.Context(), orgCharge("org1", "ka", max, now)); err != nil {
		t.Fatal(err)
	}
	byA.Add(1)
	go func() { // a request every 150ms: never idle (IdleReturn 500ms)
		defer close(aDone)
		tick := time.NewTicker(150 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := a.Charge(t.Context(), orgCharge("org1", "ka", max, now)); err == nil {
				byA.Add(1)
			}
		}
	}()
	var byB int64
	var waited time.Duration
	for range max {
		start := time.Now()
		_, err := b.Charge(t.Context(), orgCharge("org1", "kb", max, now))
		var ex *quota.ExceededError
		if errors.As(err, &ex) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		byB++
		waited = maxDur(waited, time.Since(start))
	}
	close(stop)
	<-aDone
	if total := byA.Load() + byB; total != max {
		t.Errorf("admitted %d (%d by the busy sidecar, %d by the other), want the whole quota %d", total, byA.Load(), byB, max)
	}
	t.Logf("busy sidecar %d, other %d; the longest admitted charge of the other waited %s", byA.Load(), byB, waited)
}

func maxDur(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// TestHolderLooksForRefusals: a sidecar holding blocks far from the end of
// their quotas (an org block, a key block) gives them back within about a
// second of a refusal marked elsewhere, before it goes idle (IdleReturn is
// 10s here): it looks for the marks every second.
func TestHolderLooksForRefusals(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	w := quota.PeriodHour.Window(now)
	c := newLease(t, redistest.NewClient(t, srv.Addr()), Options{IdleReturn: 10 * time.Second})
	for range 2 { // the second is warm: from a key block
		if _, err := c.Charge(t.Context(), orgCharge("org1", "free", 100000, now)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Charge(t.Context(), keyCharge("org2", "capped", -1, 100000, now)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, hash, org, key string
	}{
		{"org block", "kg:{org1}:q:lease:" + w.ID, "org1", ""},
		{"key block", "kg:{org2}:q:kl:capped:" + w.ID, "org2", "capped"},
	} {
		if u := usage(t, rdb, tc.org, tc.key, now); u.Org == 2 {
			t.Fatalf("%s: nothing held (org usage %d)", tc.name, u.Org)
		}
		marked := time.Now()
		if err := rdb.HSet(t.Context(), tc.hash, "r:", marked.Add(5*time.Second).UnixMilli()).Err(); err != nil {
			t.Fatal(err)
		}
		// What every reader sees: the block back in the counters.
		for {
			u := usage(t, rdb, tc.org, tc.key, now)
			if u.Org == 2 && (tc.key == "" || u.Key == 2) {
				break
			}
			if time.Since(marked) > 3*time.Second {
				t.Fatalf("%s: usage org %d, key %d %s after a refusal was marked; want 2", tc.name, u.Org, u.Key, time.Since(marked))
			}
			time.Sleep(10 * time.Millisecond) // polling Redis: the return has no signal a reader sees
		}
		t.Logf("%s given back %s after the mark", tc.name, time.Since(marked))
	}
}

// TestPerRequestWaitsForOthers: a charge that goes per request (a rate
// limit applies to it) and that the org's quota refuses while another
// sidecar holds a block of it waits for the block to come back, and is
// admitted: together they admit the whole quota.
func TestPerRequestWaitsForOthers(t *testing.T) {
	srv := redistest.Start(t)
	now := time.Now()
	const max = 200
	a := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	if _, err := a.Charge(t.Context(), orgCharge("org1", "ka", max, now)); err != nil {
		t.Fatal(err)
	}
	if a.held() == 0 {
		t.Fatal("no block held")
	}
	b := newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second})
	ch := orgCharge("org1", "kb", max, now)
	ch.RateLimits = []quota.RateLimit{{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 1_000_000, Per: time.Second, Burst: 1_000_000}}
	admitted := int64(1)
	for range max {
		_, err := b.Charge(t.Context(), ch)
		var ex *quota.ExceededError
		if errors.As(err, &ex) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		admitted++
	}
	if admitted != max {
		t.Errorf("admitted %d, want the whole quota %d", admitted, max)
	}
}
