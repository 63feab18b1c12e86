package lease

import (
	"context"
	"errors"
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

// keyCharge is a charge of a key with a max of its own.
func keyCharge(org, key string, orgMax, keyMax int64, at time.Time) quota.Charge {
	ch := orgCharge(org, key, orgMax, at)
	ch.KeyMax = keyMax
	return ch
}

// keyBlockHeld is what c's block of key holds unspent, given back units
// not confirmed yet included.
func (c *Counter) keyBlockHeld(org, key string, at time.Time) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	ol := c.orgs[orgWindow{org, quota.PeriodHour.Window(at).ID}]
	if ol == nil || ol.kb[key] == nil {
		return 0
	}
	kl := ol.kb[key]
	return kl.avail + kl.toReturn + kl.sent - kl.acked
}

// TestKeyBlocksNoOvershoot: four leasing sidecars and one without leases
// charge three keys with maxes of their own under an org max smaller than
// the keys' maxes together: no key is admitted beyond its max, the org not
// beyond its; no refusal while units were left (the org's quota is used
// exactly), and once they stopped every counter shows what was admitted.
// Key blocks served most charges: fewer than half as many reservations as
// charges.
func TestKeyBlocksNoOvershoot(t *testing.T) {
	srv := redistest.Start(t)
	const (
		orgMax   = 700
		keyMax   = 300
		keys     = 3
		counters = 4
		workers  = 6
		attempts = 60 // per worker: (4+1)×6×60 = 1800 > 3×300
	)
	now := time.Now()
	obs := newObserver()
	var cs []*Counter
	var all []quota.Counter
	for range counters {
		c := newLease(t, redistest.NewClient(t, srv.Addr()), Options{Observer: obs, RefusalWait: 10 * time.Second})
		cs = append(cs, c)
		all = append(all, c)
	}
	all = append(all, rediscounter.New(redistest.NewClient(t, srv.Addr())))
	var (
		perKey [keys]atomic.Int64
		wg     sync.WaitGroup
		bad    atomic.Value
	)
	start := make(chan struct{})
	for ci, c := range all {
		for w := range workers {
			wg.Go(func() {
				<-start
				for i := range attempts {
					k := (ci + w + i) % keys
					_, err := c.Charge(t.Context(), keyCharge("org1", "k"+strconv.Itoa(k), orgMax, keyMax, now))
					var ex *quota.ExceededError
					switch {
					case err == nil:
						perKey[k].Add(1)
					case errors.As(err, &ex):
					default:
						bad.Store(err)
						return
					}
				}
			})
		}
	}
	close(start)
	wg.Wait()
	if err := bad.Load(); err != nil {
		t.Fatal(err)
	}
	var total int64
	for k := range keys {
		if n := perKey[k].Load(); n > keyMax {
			t.Errorf("key k%d: admitted %d against its max %d", k, n, keyMax)
		}
		total += perKey[k].Load()
	}
	if total != orgMax {
		t.Errorf("admitted %d in all against an org max of %d, want exactly the org max", total, orgMax)
	}
	if g := obs.renewed("granted"); g*2 > total {
		t.Errorf("%d key blocks granted for %d admitted charges: blocks serve few charges", g, total)
	}
	closeAll(t, cs...)
	rdb := redistest.NewClient(t, srv.Addr())
	if u := usage(t, rdb, "org1", "", now); u.Org != total {
		t.Errorf("org usage %d after all stopped, admitted %d", u.Org, total)
	}
	for k := range keys {
		if got := usage(t, rdb, "org1", "k"+strconv.Itoa(k), now).Key; got != perKey[k].Load() {
			t.Errorf("key k%d: usage %d, admitted %d", k, got, perKey[k].Load())
		}
	}
	t.Logf("admitted %d, %d, %d (%d in all); %d blocks granted", perKey[0].Load(), perKey[1].Load(), perKey[2].Load(), total, obs.renewed("granted"))
}

// TestKeyBlockCrashCountsAsUsed: a sidecar that dies holding a key block
// leaves its units counted as used by the key and the org: usage never
// shows less than was admitted, and the survivor admits only what remains.
func TestKeyBlockCrashCountsAsUsed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	const keyMax = 200
	a := New(rediscounter.New(rdb), "", Options{Timeout: 5 * time.Second})
	for range 5 {
		if _, err := a.Charge(t.Context(), keyCharge("org1", "k1", -1, keyMax, now)); err != nil {
			t.Fatal(err)
		}
	}
	unspent := a.keyBlockHeld("org1", "k1", now)
	if unspent == 0 {
		t.Fatal("the sidecar holds no key block")
	}
	a.abandon() // kill -9

	if u := usage(t, rdb, "org1", "k1", now); u.Org != 5+unspent || u.Key != 5+unspent {
		t.Errorf("after the crash: org %d, key %d; want both %d (5 admitted + %d held)", u.Org, u.Key, 5+unspent, unspent)
	}
	b := newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 200 * time.Millisecond})
	var got int64
	for range keyMax {
		_, err := b.Charge(t.Context(), keyCharge("org1", "k1", -1, keyMax, now))
		var ex *quota.ExceededError
		if errors.As(err, &ex) {
			if ex.Scope != quota.ScopeKey {
				t.Errorf("refused by %s, want the key", ex.Scope)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got++
	}
	if got != keyMax-5-unspent {
		t.Errorf("the survivor admitted %d after the crash admitted 5 holding %d; want %d", got, unspent, keyMax-5-unspent)
	}
}

// TestKeyBlockOutage: while Redis is down a sidecar admits from the key
// block it holds, exactly counted once Redis is back; past the block,
// charges fail with ErrUnavailable.
func TestKeyBlockOutage(t *testing.T) {
	srv := redistest.StartDurable(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	c := newLease(t, rdb, Options{Timeout: 300 * time.Millisecond})
	ch := keyCharge("org1", "k1", 1000, 500, now)
	var admitted int64
	for c.keyBlockHeld("org1", "k1", now) < 4 {
		if _, err := c.Charge(t.Context(), ch); err != nil {
			t.Fatal(err)
		}
		if admitted++; admitted > 20 {
			t.Fatal("no key block of 4 units after 20 charges")
		}
	}
	block := c.keyBlockHeld("org1", "k1", now)
	srv.Stop()
	var during int64
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
		if during++; during > block {
			t.Fatalf("admitted %d from a key block of %d during the outage", during, block)
		}
	}
	if during != block {
		t.Errorf("admitted %d during the outage, want the block's %d", during, block)
	}
	srv.Restart()
	closeAll(t, c)
	if u := usage(t, redistest.NewClient(t, srv.Addr()), "org1", "k1", now); u.Org != admitted+block || u.Key != admitted+block {
		t.Errorf("after the outage: org %d, key %d; want both %d", u.Org, u.Key, admitted+block)
	}
}

// TestKeyMaxChanged: two sidecars hold blocks of a key when its max is
// lowered, then raised, mid-traffic: each time the key is admitted exactly
// up to the new max, the old blocks having gone back.
func TestKeyMaxChanged(t *testing.T) {
	srv := redistest.Start(t)
	now := time.Now()
	cs := []*Counter{
		newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second}),
		newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second}),
	}
	var admitted atomic.Int64
	run := func(keyMax int64, each int) {
		var wg sync.WaitGroup
		for _, c := range cs {
			for range 3 {
				wg.Go(func() {
					for range each {
						_, err := c.Charge(t.Context(), keyCharge("org1", "k1", -1, keyMax, now))
						var ex *quota.ExceededError
						switch {
						case err == nil:
							admitted.Add(1)
						case errors.As(err, &ex) && ex.Scope == quota.ScopeKey:
							return
						default:
							t.Error(err)
							return
						}
					}
				})
			}
		}
		wg.Wait()
	}
	run(1000, 10) // 60 admitted, blocks held on both sidecars
	if admitted.Load() != 60 || cs[0].keyBlockHeld("org1", "k1", now)+cs[1].keyBlockHeld("org1", "k1", now) == 0 {
		t.Fatalf("admitted %d, held %d and %d; want 60 admitted and blocks held", admitted.Load(),
			cs[0].keyBlockHeld("org1", "k1", now), cs[1].keyBlockHeld("org1", "k1", now))
	}
	for _, keyMax := range []int64{100, 150} {
		run(keyMax, 200)
		if admitted.Load() != keyMax {
			t.Errorf("under a key max of %d: %d admitted in all, want exactly %d", keyMax, admitted.Load(), keyMax)
		}
	}
	closeAll(t, cs...)
	if u := usage(t, redistest.NewClient(t, srv.Addr()), "org1", "k1", now); u.Key != admitted.Load() || u.Org != admitted.Load() {
		t.Errorf("usage org %d, key %d; want both %d", u.Org, u.Key, admitted.Load())
	}
}

// TestKeyBlockUsageTruthful: while a sidecar holds a key block, every
// reader sees at least what was admitted for the key and the org, the
// admitting one exactly; and every reader exactly that within a second of
// the traffic stopping.
func TestKeyBlockUsageTruthful(t *testing.T) {
	srv := redistest.Start(t)
	now := time.Now()
	a := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	b := newLease(t, redistest.NewClient(t, srv.Addr()), Options{})
	plain := rediscounter.New(redistest.NewClient(t, srv.Addr()))
	var last time.Time
	for i := range 30 {
		if _, err := a.Charge(t.Context(), keyCharge("org1", "k1", 100000, 50000, now)); err != nil {
			t.Fatal(err)
		}
		last = time.Now()
		if i%10 != 9 {
			continue
		}
		admitted := int64(i + 1)
		for name, r := range map[string]quota.Counter{"leasing": b, "plain": plain, "self": a} {
			u, err := r.Usage(t.Context(), "org1", "k1", quota.PeriodHour, now)
			if err != nil {
				t.Fatal(err)
			}
			if u.Org < admitted || u.Key < admitted {
				t.Errorf("%s reader after %d admitted: org %d, key %d", name, admitted, u.Org, u.Key)
			}
			if name == "self" && (u.Org != admitted || u.Key != admitted) {
				t.Errorf("the admitting sidecar reads org %d, key %d; want exactly %d", u.Org, u.Key, admitted)
			}
		}
	}
	if a.keyBlockHeld("org1", "k1", now) == 0 {
		t.Error("no key block held: the test did not test blocks")
	}
	for _, r := range []quota.Counter{b, plain} {
		for {
			u, err := r.Usage(t.Context(), "org1", "k1", quota.PeriodHour, now)
			if err != nil {
				t.Fatal(err)
			}
			if u.Org == 30 && u.Key == 30 {
				break
			}
			// 1s is the bound (IdleReturn+Tick and a round trip); the
			// slack is for a loaded machine.
			if time.Since(last) > 2*time.Second {
				t.Fatalf("%s after the traffic stopped: org %d, key %d; want 30, 30", time.Since(last), u.Org, u.Key)
			}
			time.Sleep(20 * time.Millisecond) // polling Redis: the return has no signal a reader sees
		}
	}
	t.Logf("exact %s after the last request", time.Since(last))
}

// TestOwnKeyBlockGivesWay: the org's units a sidecar's key block holds go
// back when a charge of another key of the org is refused on the same
// sidecar, which waits for them: the org's quota is used to the last unit.
func TestOwnKeyBlockGivesWay(t *testing.T) {
	srv := redistest.Start(t)
	now := time.Now()
	const orgMax = 50
	c := newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second})
	var admitted int64
	for range 5 {
		if _, err := c.Charge(t.Context(), keyCharge("org1", "capped", orgMax, 1000, now)); err != nil {
			t.Fatal(err)
		}
		admitted++
	}
	if c.keyBlockHeld("org1", "capped", now) == 0 {
		t.Fatal("no key block held")
	}
	for range orgMax {
		_, err := c.Charge(t.Context(), orgCharge("org1", "free", orgMax, now))
		var ex *quota.ExceededError
		if errors.As(err, &ex) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		admitted++
	}
	if admitted != orgMax {
		t.Errorf("admitted %d against an org max of %d, want all of it", admitted, orgMax)
	}
}

// TestKeyBlocksRollingUpgrade: sidecars of the two previous versions,
// charging a key with a max per request with their own scripts (which read
// the key's counter, where key blocks are booked), and sidecars with key
// blocks share the key's max exactly.
func TestKeyBlocksRollingUpgrade(t *testing.T) {
	v1Src, err := os.ReadFile("../rediscounter/testdata/charge_v1.lua")
	if err != nil {
		t.Fatal(err)
	}
	chargeV1 := redis.NewScript(string(v1Src))
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	now := time.Now()
	const keyMax = 400
	w := quota.PeriodHour.Window(now)
	old := func(s *redis.Script, i int) (bool, error) {
		keys := []string{"kg:{org1}:q:org:" + w.ID, "kg:{org1}:q:key:k1:" + w.ID,
			"kg:{org1}:tok:old" + strconv.Itoa(i), "kg:{org1}:nonce:"}
		v, err := s.Run(t.Context(), rdb, keys, 1, -1, keyMax, w.ExpireAt().Unix(), 5000, -1, now.UnixMilli()).Int64Slice()
		if err != nil {
			return false, err
		}
		return v[0] == 1, nil
	}
	var cs []*Counter
	for range 3 {
		cs = append(cs, newLease(t, redistest.NewClient(t, srv.Addr()), Options{RefusalWait: 10 * time.Second}))
	}
	var admitted, seq atomic.Int64
	var wg sync.WaitGroup
	for _, s := range []*redis.Script{chargeV1, chargeV2} {
		for range 2 {
			wg.Go(func() {
				for range 60 {
					ok, err := old(s, int(seq.Add(1)))
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
	for _, c := range cs {
		for range 4 {
			wg.Go(func() {
				for range 60 {
					_, err := c.Charge(t.Context(), keyCharge("org1", "k1", -1, keyMax, now))
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
	if admitted.Load() > keyMax {
		t.Fatalf("old and new sidecars admitted %d against a key max of %d", admitted.Load(), keyMax)
	}
	closeAll(t, cs...)
	if u := usage(t, rdb, "org1", "k1", now); u.Key != admitted.Load() || u.Org != admitted.Load() {
		t.Errorf("usage org %d, key %d; admitted %d", u.Org, u.Key, admitted.Load())
	}
	t.Logf("admitted %d of %d", admitted.Load(), keyMax)
}
