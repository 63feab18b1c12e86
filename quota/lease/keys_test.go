package lease

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
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

// usage_v1.lua is the usage script of the version that booked every key's
// count into the per-key hash itself (before held counts); lease_v1.lua
// (leaseV1, guarantee_test.go) is its lease script.
var (
	//go:embed testdata/usage_v1.lua
	usageV1Src string
	usageV1    = redis.NewScript(usageV1Src)
)

// oldUsage reads a key's usage as a sidecar of the previous version does
// (usage_v1.lua, as a reader without a claim): its counter, its field in
// the per-key hash and the other holders' live claims.
func oldUsage(t *testing.T, rdb redis.UniversalClient, org, key string, at time.Time) (orgUsed, keyUsed int64) {
	t.Helper()
	w := quota.PeriodHour.Window(at)
	p := "kg:{" + org + "}:q:"
	v, err := usageV1.Run(t.Context(), rdb, []string{p + "org:" + w.ID, p + "key:" + key + ":" + w.ID, p + "lease:" + w.ID, p + "keys:" + w.ID},
		"", at.UnixMilli(), "1").Int64Slice()
	if err != nil {
		t.Fatal(err)
	}
	return v[0], v[1] + v[2]
}

// tallies counts what was admitted per org and key.
type tallies struct{ m sync.Map } // "org/key" -> *atomic.Int64

func (ts *tallies) add(org, key string) {
	v, _ := ts.m.LoadOrStore(org+"/"+key, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (ts *tallies) get(org, key string) int64 {
	v, ok := ts.m.Load(org + "/" + key)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

// TestManyKeysExact: three sidecars (one with the defaults, one folding
// every 100ms, one whose held counts fit a dozen keys, so it folds for
// size) charge 600 keys of 3 organizations, on Redis and on a Redis
// Cluster. While they do, readers of this version and of the previous one
// never see a key below what was admitted for it; within a second of the
// traffic stopping every key is exact for both; after Close the per-key
// hash holds every count and no holder holds any.
func TestManyKeysExact(t *testing.T) {
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
			plain := rediscounter.New(rdb)
			cs := []*Counter{
				newLease(t, redistest.NewClient(t, addrs...), Options{}),
				newLease(t, redistest.NewClient(t, addrs...), Options{FoldEvery: 100 * time.Millisecond}),
				newLease(t, redistest.NewClient(t, addrs...), Options{MaxHeld: 400}),
			}
			const orgs, keys, perWorker = 3, 600, 250
			now := time.Now()
			var admitted tallies
			keyOf := func(i int) (string, string) {
				return "org" + strconv.Itoa(i%orgs), "key-" + strconv.Itoa(i%keys)
			}
			var wg sync.WaitGroup
			for ci, c := range cs {
				for w := range 4 {
					wg.Go(func() {
						for j := range perWorker {
							org, key := keyOf(ci*7 + w*131 + j*11)
							if _, err := c.Charge(t.Context(), orgCharge(org, key, 1<<30, now)); err != nil {
								t.Error(err)
								return
							}
							admitted.add(org, key)
						}
					})
				}
			}
			// While they charge: no reader sees less than was admitted.
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			reads := 0
			for running := true; running && reads < 200; reads++ {
				select {
				case <-done:
					running = false
				default:
				}
				org, key := keyOf(reads * 37)
				want := admitted.get(org, key)
				for name, r := range map[string]quota.Counter{"plain": plain, "leasing": cs[reads%3]} {
					u, err := r.Usage(t.Context(), org, key, quota.PeriodHour, now)
					if err != nil {
						t.Fatal(err)
					}
					if u.Key < want {
						t.Errorf("%s reader: %s/%s at %d, %d admitted", name, org, key, u.Key, want)
					}
				}
				if _, k := oldUsage(t, rdb, org, key, now); k < want {
					t.Errorf("previous version's reader: %s/%s at %d, %d admitted", org, key, k, want)
				}
			}
			<-done
			last := time.Now()
			t.Logf("%d reads while charging", reads)
			// Traffic stopped: every key exact, for both readers, within a second.
			exact := func() (string, bool) {
				for i := range keys {
					org, key := keyOf(i)
					want := admitted.get(org, key)
					u, err := plain.Usage(t.Context(), org, key, quota.PeriodHour, now)
					if err != nil {
						t.Fatal(err)
					}
					_, old := oldUsage(t, rdb, org, key, now)
					if u.Key != want || old != want {
						return fmt.Sprintf("%s/%s: %d (previous version %d), %d admitted", org, key, u.Key, old, want), false
					}
				}
				return "", true
			}
			// A pass over every key that starts a second or more after the
			// last request must find them all exact.
			for {
				start := time.Now()
				why, ok := exact()
				if ok {
					t.Logf("every key exact in a pass starting %s after the last request (%s long)", start.Sub(last), time.Since(start))
					break
				}
				if start.Sub(last) > time.Second {
					t.Fatalf("a pass starting %s after the traffic stopped: %s", start.Sub(last), why)
				}
				time.Sleep(20 * time.Millisecond) // polling Redis: the fold has no signal a reader sees
			}
			closeAll(t, cs...)
			w := quota.PeriodHour.Window(now)
			for o := range orgs {
				org := "org" + strconv.Itoa(o)
				hash, err := rdb.HGetAll(t.Context(), "kg:{"+org+"}:q:keys:"+w.ID).Result()
				if err != nil {
					t.Fatal(err)
				}
				var total int64
				for i := o; i < keys; i += orgs {
					_, key := keyOf(i)
					want := admitted.get(org, key)
					total += want
					if got, _ := strconv.ParseInt(hash[key+":"+w.ID], 10, 64); got != want {
						t.Errorf("per-key hash %s/%s = %d, want %d", org, key, got, want)
					}
				}
				holders, err := rdb.HGetAll(t.Context(), "kg:{"+org+"}:q:lease:"+w.ID).Result()
				if err != nil {
					t.Fatal(err)
				}
				for f, v := range holders {
					if (f[:2] == "c:" && v != "") || (f[:2] == "u:" && v != "0") {
						t.Errorf("after Close %s holds %s = %q", org, f, v)
					}
				}
				if u := usage(t, rdb, org, "", now); u.Org != total {
					t.Errorf("org %s used %d, admitted %d", org, u.Org, total)
				}
			}
		})
	}
}

// oldHolder is a sidecar of the previous version, running lease_v1.lua: it
// books its keys' counts into the per-key hash itself.
type oldHolder struct {
	rdb   redis.UniversalClient
	at    time.Time
	seq   int
	avail int64
	owed  map[string]int64
}

func (o *oldHolder) call(t *testing.T, need int64, ret int64) {
	t.Helper()
	w := quota.PeriodHour.Window(o.at)
	p := "kg:{org1}:q:"
	args := []any{"old", o.at.UnixMilli(), 10000, w.ExpireAt().Unix(), 0, ret, need, max(need, 20), -1, 1, 0}
	if len(o.owed) > 0 || ret > 0 {
		o.seq++
		args[4] = o.seq
		for k, n := range o.owed {
			args = append(args, k+":"+w.ID, n)
		}
		o.owed = map[string]int64{}
	}
	v, err := leaseV1.Run(t.Context(), o.rdb, []string{p + "org:" + w.ID, p + "lease:" + w.ID, p + "keys:" + w.ID}, args...).Int64Slice()
	if err != nil {
		t.Fatal(err)
	}
	o.avail += v[2] - ret
}

func (o *oldHolder) admit(t *testing.T, key string) {
	if o.avail == 0 {
		o.call(t, 1, 0)
	}
	o.avail--
	o.owed[key]++
}

// TestUpgradeFromPerKeyBooking: what a sidecar of the previous version
// stored (per-key counts in the hash, its claim) is read as it is; while it
// and sidecars of this version admit the same keys, readers of both
// versions see every key at or above what was admitted, and exact once
// every sidecar went idle and gave back.
func TestUpgradeFromPerKeyBooking(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	old := &oldHolder{rdb: rdb, at: now, owed: map[string]int64{}}
	var admitted tallies
	keys := []string{"k1", "k2", "k3", "k4"}
	for i := range 30 {
		old.admit(t, keys[i%4])
		admitted.add("org1", keys[i%4])
		if i == 19 {
			old.call(t, 0, 0) // 20 booked per key, 10 in its claim only
		}
	}
	a := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	b := newLease(t, redistest.NewClient(t, srv.Addr()), Options{MaxHeld: 100})
	check := func(when string, exact bool) {
		t.Helper()
		for _, k := range append(keys, "k5") {
			want := admitted.get("org1", k)
			for name, r := range map[string]quota.Counter{"this version": rediscounter.New(rdb), "leasing": a} {
				u, err := r.Usage(t.Context(), "org1", k, quota.PeriodHour, now)
				if err != nil {
					t.Fatal(err)
				}
				if u.Key < want || (exact && u.Key != want) {
					t.Errorf("%s: %s reader: %s at %d, %d admitted", when, name, k, u.Key, want)
				}
			}
			if _, got := oldUsage(t, rdb, "org1", k, now); got < want || (exact && got != want) {
				t.Errorf("%s: previous version's reader: %s at %d, %d admitted", when, k, got, want)
			}
		}
	}
	check("before this version admitted", false)
	for i := range 200 {
		c, k := a, keys[i%4]
		if i%3 == 0 {
			c, k = b, "k5"
		}
		if _, err := c.Charge(t.Context(), orgCharge("org1", k, -1, now)); err != nil {
			t.Fatal(err)
		}
		admitted.add("org1", k)
		if i%50 == 49 {
			check(fmt.Sprintf("after %d", i+1), false)
		}
		if i%10 == 0 {
			old.admit(t, keys[i%4])
			admitted.add("org1", keys[i%4])
		}
	}
	old.call(t, 0, old.avail) // the old sidecar books the rest and gives back
	closeAll(t, a, b)
	check("after every sidecar gave back", true)
}

// TestHeldCountsAfterCrash: counts a sidecar stored as held counts before
// it was killed stay in every key's usage read by this version (they were
// admitted), and another sidecar's traffic and Close do not disturb them.
func TestHeldCountsAfterCrash(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	dead := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	for i := range 40 {
		if _, err := dead.Charge(t.Context(), orgCharge("org1", "k"+strconv.Itoa(i%8), -1, now)); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until its counts are in Redis (a renewal or the FlushEvery
	// tick carries them), then kill it.
	deadline := time.Now().Add(10 * time.Second)
	for dead.unsent() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // no signal: the background call is the one under test
	}
	dead.abandon()
	live := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	for range 10 {
		if _, err := live.Charge(t.Context(), orgCharge("org1", "k0", -1, now)); err != nil {
			t.Fatal(err)
		}
	}
	closeAll(t, live)
	plain := rediscounter.New(rdb)
	for i := range 8 {
		want := int64(5)
		if i == 0 {
			want += 10
		}
		u, err := plain.Usage(context.Background(), "org1", "k"+strconv.Itoa(i), quota.PeriodHour, now)
		if err != nil {
			t.Fatal(err)
		}
		if u.Key < want {
			t.Errorf("k%d after its sidecar was killed: %d, %d admitted", i, u.Key, want)
		}
	}
}

// unsent is what this Counter admitted and has not had confirmed in Redis
// yet, over all organizations.
func (c *Counter) unsent() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, ol := range c.orgs {
		for _, t := range ol.keys {
			n += t.pending
		}
		if ol.doubt != nil {
			for _, k := range ol.doubt.held {
				n += k.N
			}
			for _, k := range ol.doubt.keys {
				n += k.N
			}
		}
	}
	return n
}

// TestAdoptHeldCounts: the held counts of a sidecar killed with them are
// folded by another sidecar's fold once its claim has been over for
// rediscounter.AdoptAfter (the adopter's clock runs that far ahead here), so
// they do not pile up; and a sidecar taken for dead that is alive after all
// learns of it at its next settlement and books only what was not adopted:
// every key is counted exactly once.
func TestAdoptHeldCounts(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	w := quota.PeriodNone.Window(now)
	charge := func(c *Counter, key string) {
		t.Helper()
		ch := orgCharge("org1", key, -1, now)
		ch.Period = quota.PeriodNone
		if _, err := c.Charge(t.Context(), ch); err != nil {
			t.Fatal(err)
		}
	}
	stored := func(c *Counter) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for c.unsent() > 0 {
			if time.Now().After(deadline) {
				t.Fatal("counts not in Redis after 10s")
			}
			time.Sleep(20 * time.Millisecond) // no signal: the background call is the one under test
		}
	}
	holders := func() map[string]string {
		t.Helper()
		m, err := rdb.HGetAll(t.Context(), "kg:{org1}:q:lease:"+w.ID).Result()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	admitted := map[string]int64{}
	// Neither folds by itself: not idle soon enough, nor by age or size.
	keep := Options{IdleReturn: time.Minute, FlushEvery: 50 * time.Millisecond}
	dead := newLease(t, redistest.NewClient(t, srv.Addr()), keep)
	zombie := newLease(t, redistest.NewClient(t, srv.Addr()), keep)
	for i := range 40 {
		k := "k" + strconv.Itoa(i%8)
		charge(dead, k)
		charge(zombie, k)
		admitted[k] += 2
	}
	stored(dead)
	stored(zombie)
	if h := holders(); h["c:"+dead.Holder()] == "" || h["c:"+zombie.Holder()] == "" {
		t.Fatalf("no held counts in Redis: %v", h)
	}
	dead.abandon()

	later := newLease(t, redistest.NewClient(t, srv.Addr()), Options{Now: func() time.Time { return time.Now().Add(rediscounter.AdoptAfter + time.Minute) }})
	charge(later, "k0")
	admitted["k0"]++
	closeAll(t, later) // its fold adopts both others' held counts
	h := holders()
	for _, c := range []*Counter{dead, zombie} {
		if h["c:"+c.Holder()] != "" || h["d:"+c.Holder()] != "1" {
			t.Errorf("after the fold: held %q, adopted %q; want none held, adopted", h["c:"+c.Holder()], h["d:"+c.Holder()])
		}
	}
	// The zombie was alive: it goes on, and books what it admitted since.
	for i := range 16 {
		k := "k" + strconv.Itoa(i%8)
		charge(zombie, k)
		admitted[k]++
	}
	closeAll(t, zombie)
	if h := holders(); h["d:"+zombie.Holder()] != "" {
		t.Errorf("the zombie did not acknowledge the adoption: %v", h)
	}
	plain := rediscounter.New(rdb)
	for k, want := range admitted {
		got, err := rdb.HGet(t.Context(), "kg:{org1}:q:keys:"+w.ID, k+":"+w.ID).Int64()
		if err != nil || got != want {
			t.Errorf("per-key hash %s = %d, %v; want %d", k, got, err, want)
		}
		// Read past the dead sidecar's claim: until then its unspent
		// block counts for every key.
		u, err := plain.Usage(t.Context(), "org1", k, quota.PeriodNone, now.Add(time.Minute))
		if err != nil || u.Key != want {
			t.Errorf("usage of %s = %d, %v; want %d", k, u.Key, err, want)
		}
	}
	if n, err := rdb.ZCard(t.Context(), "kg:{org1}:q:held:"+w.ID).Result(); err != nil || n != 0 {
		t.Errorf("holders listed with held counts after every fold: %d, %v", n, err)
	}
}

// TestKeyGainsMaxWhileHeld: a key whose requests from blocks are still in
// a sidecar's held counts gets a max of its own: the first charge under it
// makes that sidecar fold them, so the max counts them from then on.
func TestKeyGainsMaxWhileHeld(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	c := newLease(t, rdb, Options{IdleReturn: time.Minute, FlushEvery: 50 * time.Millisecond})
	for range 5 {
		if _, err := c.Charge(t.Context(), orgCharge("org1", "k1", 1000, now)); err != nil {
			t.Fatal(err)
		}
	}
	w := quota.PeriodHour.Window(now)
	capped := orgCharge("org1", "k1", 1000, now)
	capped.KeyMax = 7
	if res, err := c.Charge(t.Context(), capped); err != nil || res.KeyUsed != 6 {
		t.Fatalf("sixth request under a max of 7 = %+v, %v; want admitted at 6", res, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _ := rdb.HGet(t.Context(), "kg:{org1}:q:keys:"+w.ID, "k1:"+w.ID).Int64()
		if n == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the held counts of k1 were not folded after it was charged under a max (hash: %d)", n)
		}
		time.Sleep(20 * time.Millisecond) // no signal: the fold is background work
	}
	plain := rediscounter.New(rdb)
	if res, err := plain.Charge(t.Context(), capped); err != nil || res.KeyUsed != 7 {
		t.Fatalf("seventh request under a max of 7 = %+v, %v; want admitted at 7", res, err)
	}
	var ex *quota.ExceededError
	if _, err := plain.Charge(t.Context(), capped); !errors.As(err, &ex) || ex.Scope != quota.ScopeKey || ex.Used != 7 {
		t.Errorf("eighth request under a max of 7: %v, want refused by the key at 7", err)
	}
}

// TestSettlementsLostReplies drops the replies of lease calls that Redis
// ran (renewals, held counts, folds, returns), again and again, once with
// go-redis retrying the call and once with the Counter sending the
// settlement in doubt again itself: every key's count is booked exactly
// once.
func TestSettlementsLostReplies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		retries int
	}{{"client retries", 3}, {"counter resends", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := redistest.NewClient(t, srv.Addr())
			d := redistest.NewReplyDropper(t, srv.Addr())
			client := redis.NewClient(&redis.Options{Addr: d.Addr(), MaxRetries: tc.retries, ContextTimeoutEnabled: true})
			t.Cleanup(func() { _ = client.Close() })
			c := newLease(t, client, Options{IdleReturn: 100 * time.Millisecond, FlushEvery: 50 * time.Millisecond, FoldEvery: 300 * time.Millisecond})
			now := time.Now()
			admitted := map[string]int64{}
			for round := range 8 {
				d.Arm()
				for i := range 25 {
					k := "k" + strconv.Itoa((round+i)%5)
					ch := orgCharge("org1", k, -1, now)
					ch.Period = quota.PeriodNone
					_, err := c.Charge(t.Context(), ch)
					if err != nil && tc.retries >= 0 {
						t.Fatal(err)
					}
					if err == nil {
						admitted[k]++
					}
				}
				select {
				case <-d.Dropped:
				case <-time.After(5 * time.Second):
					t.Fatalf("round %d: no reply dropped", round)
				}
				if round%2 == 1 {
					// Idle: the next calls give back and fold.
					time.Sleep(300 * time.Millisecond)
				}
			}
			closeAll(t, c)
			w := quota.PeriodNone.Window(now)
			plain := rediscounter.New(rdb)
			var total int64
			for k, want := range admitted {
				total += want
				got, err := rdb.HGet(t.Context(), "kg:{org1}:q:keys:"+w.ID, k+":"+w.ID).Int64()
				if err != nil || got != want {
					t.Errorf("per-key hash %s = %d, %v; want %d", k, got, err, want)
				}
				// Past the claim: a reservation booked twice by a retry
				// counts as used while it is live.
				if u, err := plain.Usage(t.Context(), "org1", k, quota.PeriodNone, now.Add(time.Minute)); err != nil || u.Key != want {
					t.Errorf("usage of %s = %d, %v; want %d", k, u.Key, err, want)
				}
			}
			if u, err := plain.Usage(t.Context(), "org1", "", quota.PeriodNone, now); err != nil || u.Org < total {
				t.Errorf("org used %d, %v; admitted %d", u.Org, err, total)
			}
		})
	}
}
