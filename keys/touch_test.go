package keys_test

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
	"github.com/keygate/keygate/keys/redisstore"
)

// touchStore is a memory store that records every TouchKeys batch and can
// fail them.
type touchStore struct {
	*memstore.Store
	mu      sync.Mutex
	batches []map[keys.KeyRef]time.Time
	fail    atomic.Bool
}

func (s *touchStore) TouchKeys(ctx context.Context, used map[keys.KeyRef]time.Time) error {
	if s.fail.Load() {
		return fmt.Errorf("touching: %w", keys.ErrUnavailable)
	}
	s.mu.Lock()
	s.batches = append(s.batches, used)
	s.mu.Unlock()
	return s.Store.TouchKeys(ctx, used)
}

func (s *touchStore) lastBatch() map[keys.KeyRef]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.batches) == 0 {
		return nil
	}
	return s.batches[len(s.batches)-1]
}

func (s *touchStore) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.batches)
}

// touchSetup returns a store with n keys k0…k(n-1) in org1.
func touchSetup(t *testing.T, n int) (*touchStore, []keys.Key) {
	t.Helper()
	ctx := context.Background()
	st := &touchStore{Store: memstore.New()}
	if err := st.CreateOrg(ctx, keys.Org{ID: "org1", Name: "o", PlanID: 1}); err != nil {
		t.Fatal(err)
	}
	var ks []keys.Key
	for i := range n {
		uid, _ := keys.NewUUID()
		k := keys.Key{UID: uid, OrgID: "org1", Name: fmt.Sprintf("k%d", i), Permissions: []keys.Permission{keys.PermRead}, SecretHash: keys.HashSecret(uid)}
		if err := st.CreateKey(ctx, k, -1); err != nil {
			t.Fatal(err)
		}
		ks = append(ks, k)
	}
	return st, ks
}

func lastUsed(t *testing.T, st keys.Store, k keys.Key) *time.Time {
	t.Helper()
	got, err := st.KeyByUID(context.Background(), k.UID)
	if err != nil {
		t.Fatal(err)
	}
	return got.LastUsedAt
}

func TestToucherOncePerInterval(t *testing.T) {
	st, ks := touchSetup(t, 2)
	clk := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	tc := keys.NewToucher(st, keys.ToucherOptions{Every: time.Minute, Now: clk.Now})
	ctx := context.Background()
	a, b := ks[0], ks[1]

	if err := tc.Flush(ctx); err != nil || st.calls() != 0 {
		t.Fatalf("flush with nothing recorded: %v, %d store calls; want none", err, st.calls())
	}
	first := clk.Now()
	for range 100 {
		tc.Touch(a.Ref())
	}
	clk.Add(time.Second)
	tc.Touch(a.Ref())
	tc.Touch(b.Ref())
	if err := tc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.lastBatch(); len(got) != 2 || !got[a.Ref()].Equal(first) || !got[b.Ref()].Equal(first.Add(time.Second)) {
		t.Errorf("first batch %v, want a at its first use and b", got)
	}
	if got := lastUsed(t, st, a); got == nil || !got.Equal(first) {
		t.Errorf("a last used %v, want %v", got, first)
	}

	// Within the minute nothing more is written.
	clk.Add(58 * time.Second)
	tc.Touch(a.Ref())
	if err := tc.Flush(ctx); err != nil || st.calls() != 1 {
		t.Errorf("flush within a's minute: %v, %d store calls; want still 1", err, st.calls())
	}
	// A minute after a's first recording, its next use is recorded.
	clk.Add(time.Second)
	tc.Touch(a.Ref())
	tc.Touch(b.Ref()) // b's minute is not over
	if err := tc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.lastBatch(); len(got) != 1 || !got[a.Ref()].Equal(clk.Now()) {
		t.Errorf("second batch %v, want only a at %v", got, clk.Now())
	}
	if got := lastUsed(t, st, a); got == nil || !got.Equal(clk.Now()) {
		t.Errorf("a last used %v, want %v", got, clk.Now())
	}
}

// TestToucherRefreshesWait: a key recorded before by this Toucher is
// recorded again after Every, but written only with the refreshes (every
// RefreshInterval in Run), while a first use — of a new key, or of one not
// recorded for two Every — is written at the next flush.
func TestToucherRefreshesWait(t *testing.T) {
	st, ks := touchSetup(t, 3)
	clk := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	tc := keys.NewToucher(st, keys.ToucherOptions{Every: time.Minute, Now: clk.Now})
	ctx := context.Background()
	a, b, c := ks[0], ks[1], ks[2]
	tc.Touch(a.Ref())
	tc.Touch(c.Ref())
	if err := tc.FlushFirstUses(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.lastBatch(); len(got) != 2 {
		t.Fatalf("first uses of a and c: batch %v, want both", got)
	}

	clk.Add(time.Minute)
	tc.Touch(a.Ref()) // a refresh
	tc.Touch(b.Ref()) // a first use
	if err := tc.FlushFirstUses(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.lastBatch(); len(got) != 1 || !got[b.Ref()].Equal(clk.Now()) {
		t.Errorf("flush of first uses wrote %v, want only b at %v", got, clk.Now())
	}
	if err := tc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.lastBatch(); len(got) != 1 || !got[a.Ref()].Equal(clk.Now()) {
		t.Errorf("full flush wrote %v, want a's refresh at %v", got, clk.Now())
	}
	if got := lastUsed(t, st, a); got == nil || !got.Equal(clk.Now()) {
		t.Errorf("a last used %v after its refresh, want %v", got, clk.Now())
	}

	// c was last recorded two minutes ago: it is forgotten, and its next
	// use is a first use again.
	clk.Add(time.Minute)
	if err := tc.FlushFirstUses(ctx); err != nil {
		t.Fatal(err)
	}
	tc.Touch(c.Ref())
	calls := st.calls()
	if err := tc.FlushFirstUses(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.lastBatch(); st.calls() != calls+1 || len(got) != 1 || !got[c.Ref()].Equal(clk.Now()) {
		t.Errorf("use of c after two minutes: batch %v, want c as a first use", got)
	}
}

func TestToucherBoundedAndRetried(t *testing.T) {
	st, ks := touchSetup(t, 5)
	clk := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	tc := keys.NewToucher(st, keys.ToucherOptions{MaxPending: 3, Now: clk.Now})
	ctx := context.Background()
	for _, k := range ks {
		tc.Touch(k.Ref())
	}
	if tc.Dropped() != 2 {
		t.Errorf("dropped %d uses beyond MaxPending 3, want 2", tc.Dropped())
	}

	// A failed flush keeps its uses for the next one.
	st.fail.Store(true)
	if err := tc.Flush(ctx); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("flush on a failing store: %v, want ErrUnavailable", err)
	}
	if got := lastUsed(t, st, ks[0]); got != nil {
		t.Fatalf("failed flush recorded %v", got)
	}
	st.fail.Store(false)
	if err := tc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.lastBatch(); len(got) != 3 {
		t.Errorf("retried batch has %d keys, want the 3 kept", len(got))
	}
	for _, k := range ks[:3] {
		if got := lastUsed(t, st, k); got == nil || !got.Equal(clk.Now()) {
			t.Errorf("key %s last used %v after the retry, want %v", k.Name, got, clk.Now())
		}
	}
	// Room again: the dropped keys are recorded at their next use.
	tc.Touch(ks[3].Ref())
	tc.Touch(ks[4].Ref())
	if err := tc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.lastBatch(); len(got) != 2 {
		t.Errorf("batch after room was made has %d keys, want 2", len(got))
	}
}

// TestToucherRun: Run writes a first use within its flush interval and a
// refresh within its refresh interval, and a refresh recorded just before it
// stops is written by its final flush.
func TestToucherRun(t *testing.T) {
	for _, refreshEvery := range []time.Duration{30 * time.Millisecond, time.Hour} {
		t.Run(fmt.Sprint("refresh every ", refreshEvery), func(t *testing.T) {
			st, ks := touchSetup(t, 1)
			k := ks[0]
			clk := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
			flushed := make(chan int, 16)
			tc := keys.NewToucher(st, keys.ToucherOptions{FlushInterval: 10 * time.Millisecond, RefreshInterval: refreshEvery, Now: clk.Now, OnFlush: func(n int, err error) {
				if err == nil {
					flushed <- n
				}
			}})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); tc.Run(ctx) }()
			defer func() { cancel(); <-done }()
			waitFlush := func(what string) {
				t.Helper()
				select {
				case n := <-flushed:
					if n != 1 {
						t.Errorf("%s: flush wrote %d keys, want 1", what, n)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("%s: Run did not flush within 5s", what)
				}
				if got := lastUsed(t, st, k); got == nil || !got.Equal(clk.Now()) {
					t.Errorf("%s: last used %v after Run's flush, want %v", what, got, clk.Now())
				}
			}

			tc.Touch(k.Ref())
			waitFlush("first use")
			clk.Add(time.Minute)
			tc.Touch(k.Ref())
			if refreshEvery < time.Hour {
				waitFlush("refresh")
				return
			}
			// Only the final flush writes refreshes within the hour.
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return within 5s of its context's end")
			}
			if got := lastUsed(t, st, k); got == nil || !got.Equal(clk.Now()) {
				t.Errorf("refresh recorded before shutdown: last used %v, want %v", got, clk.Now())
			}
		})
	}
}

// TestToucherRunWakes: once half of MaxPending uses wait, Run writes them
// all at once, without waiting for its intervals.
func TestToucherRunWakes(t *testing.T) {
	st, ks := touchSetup(t, 4)
	flushed := make(chan int, 16)
	tc := keys.NewToucher(st, keys.ToucherOptions{FlushInterval: time.Hour, MaxPending: 4, OnFlush: func(n int, err error) {
		if err == nil {
			flushed <- n
		}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tc.Run(ctx) }()
	defer func() { cancel(); <-done }()
	tc.Touch(ks[0].Ref())
	tc.Touch(ks[1].Ref())
	select {
	case n := <-flushed:
		if n != 2 {
			t.Errorf("woken flush wrote %d keys, want 2", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not flush within 5s of half of MaxPending uses waiting")
	}
	for _, k := range ks[:2] {
		if lastUsed(t, st, k) == nil {
			t.Errorf("key %s not recorded by the woken flush", k.Name)
		}
	}
}

// TestToucherConcurrent exercises Touch from many goroutines while flushing,
// for the race detector, and checks every key ends up recorded.
func TestToucherConcurrent(t *testing.T) {
	st, ks := touchSetup(t, 50)
	tc := keys.NewToucher(st, keys.ToucherOptions{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				tc.Touch(ks[(g*7+i)%len(ks)].Ref())
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if err := tc.Flush(context.Background()); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	if err := tc.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, k := range ks {
		if lastUsed(t, st, k) == nil {
			t.Errorf("key %s never recorded", k.Name)
		}
	}
}

// BenchmarkToucherTouch measures the request path's cost: a key recorded
// recently, touched from every core.
func BenchmarkToucherTouch(b *testing.B) {
	tc := keys.NewToucher(memstore.New(), keys.ToucherOptions{})
	refs := make([]keys.KeyRef, 64)
	for i := range refs {
		uid, _ := keys.NewUUID()
		refs[i] = keys.KeyRef{OrgID: "org1", UID: uid}
		tc.Touch(refs[i])
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			tc.Touch(refs[i%len(refs)])
			i++
		}
	})
}

// toucherHeap returns the heap bytes per key of a Toucher tracking n keys of
// 100 organizations: while their uses wait for a flush, and once flushed
// (each key in its quiet period). The refs themselves are not counted: they
// belong to the caller (the credential cache's principals).
func toucherHeap(n int) (pending, quiet float64) {
	refs := make([]keys.KeyRef, n)
	orgs := make([]string, 100)
	for i := range orgs {
		orgs[i] = fmt.Sprintf("org-%03d", i)
	}
	for i := range refs {
		uid, _ := keys.NewUUID()
		refs[i] = keys.KeyRef{OrgID: orgs[i%len(orgs)], UID: uid}
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := heap()
	tc := keys.NewToucher(memstore.New(), keys.ToucherOptions{MaxPending: n, Now: func() time.Time { return now }})
	for _, ref := range refs {
		tc.Touch(ref)
	}
	pending = float64(heap()-base) / float64(n)
	if err := tc.Flush(context.Background()); err != nil {
		panic(err)
	}
	quiet = float64(heap()-base) / float64(n)
	runtime.KeepAlive(tc)
	runtime.KeepAlive(refs)
	return pending, quiet
}

// TestToucherBytesPerKey bounds what a Toucher keeps per key it tracks, for
// 20,000 keys.
func TestToucherBytesPerKey(t *testing.T) {
	pending, quiet := toucherHeap(20000)
	t.Logf("20,000 keys: %.0f B per key waiting for a flush, %.0f B per key in its quiet period", pending, quiet)
	// Before the compact form: 210 B either way (two maps by KeyRef of
	// time.Time).
	if pending > 160 || quiet > 64 {
		t.Errorf("%.0f B per pending key and %.0f B per quiet key, want at most 160 and 64", pending, quiet)
	}
}

// BenchmarkToucherBytesPerKey reports TestToucherBytesPerKey's figures as
// metrics (pending-B/key, quiet-B/key).
func BenchmarkToucherBytesPerKey(b *testing.B) {
	var pending, quiet float64
	for b.Loop() {
		pending, quiet = toucherHeap(20000)
	}
	b.ReportMetric(pending, "pending-B/key")
	b.ReportMetric(quiet, "quiet-B/key")
}

// v1TouchStore records uses as keygate did before the multi-key touch
// script: ../keys/redisstore/testdata/touch_keys_v1.lua (EXISTS, GET and SET
// per key), one script per organization and 256 keys, in one pipeline.
type v1TouchStore struct {
	rdb    redis.UniversalClient
	script *redis.Script
}

func (s v1TouchStore) TouchKeys(ctx context.Context, used map[keys.KeyRef]time.Time) error {
	byOrg := map[string][]keys.KeyRef{}
	for ref := range used {
		byOrg[ref.OrgID] = append(byOrg[ref.OrgID], ref)
	}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for org, refs := range byOrg {
			for chunk := range slices.Chunk(refs, 256) {
				var ks []string
				var args []any
				for _, ref := range chunk {
					ks = append(ks, "kg:{"+org+"}:key:"+ref.UID, "kg:{"+org+"}:used:"+ref.UID)
					args = append(args, used[ref].UnixMilli())
				}
				s.script.Eval(ctx, p, ks, args...)
			}
		}
		return nil
	})
	return err
}

// redisCalls reads INFO commandstats: calls and microseconds of all
// commands (scripts' own commands included, INFO left out), and the
// microseconds of the scripts (EVAL, which include their commands').
func redisCalls(t *testing.T, ctx context.Context, rdb redis.UniversalClient) (calls, scriptUsec int64) {
	t.Helper()
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" {
			continue
		}
		var c, us int64
		if _, err := fmt.Sscanf(rest, "calls=%d,usec=%d,", &c, &us); err != nil {
			t.Fatalf("commandstats line %q: %v", line, err)
		}
		calls += c
		if strings.HasPrefix(name, "cmdstat_eval") {
			scriptUsec += us
		}
	}
	return calls, scriptUsec
}

// TestToucherRedisCommandsPerSecond counts what recording last_used_at costs
// a real Redis at steady traffic: 20,000 keys of 100 organizations used at
// 5,000 requests/s on a simulated clock — cycled evenly, or drawn at random —
// with Run's schedule driven by Tick and Wake, and commands counted by INFO
// commandstats over minutes 2–4 (after every key's first use). It compares
// the previous version (touch_keys_v1.lua, every use written at the next
// 2 s flush) with the Redis store's multi-key script written at the next
// flush, and with refreshes every 10 s (the default).
func TestToucherRedisCommandsPerSecond(t *testing.T) {
	if testing.Short() {
		t.Skip("simulates 4 minutes of traffic against Redis")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rdb := redistest.Client(t)
	v1, err := os.ReadFile("redisstore/testdata/touch_keys_v1.lua")
	if err != nil {
		t.Fatal(err)
	}
	const nKeys, nOrgs, rate = 20000, 100, 5000
	refs := make([]keys.KeyRef, nKeys)
	for i := range refs {
		uid, _ := keys.NewUUID()
		refs[i] = keys.KeyRef{OrgID: fmt.Sprintf("org%03d", i%nOrgs), UID: uid}
	}
	// run returns the commands per second and the scripts' microseconds per
	// second.
	run := func(t *testing.T, store keys.TouchStore, refresh time.Duration, random bool) (cmds, usec float64) {
		redistest.Flush(t, rdb)
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, ref := range refs { // only their existence matters here
				p.Set(ctx, "kg:{"+ref.OrgID+"}:key:"+ref.UID, "{}", 0)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		clk := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
		tc := keys.NewToucher(store, keys.ToucherOptions{RefreshInterval: refresh, Now: clk.Now})
		rng := mrand.New(mrand.NewPCG(1, 2))
		const step, perStep = 100 * time.Millisecond, rate / 10
		var calls0, usec0 int64
		next, tick := 0, 0
		for s := 1; s <= 4*60*10; s++ {
			for range perStep {
				if random {
					next = rng.IntN(len(refs))
				}
				tc.Touch(refs[next])
				next = (next + 1) % len(refs)
			}
			clk.Add(step)
			if _, err := tc.Wake(ctx); err != nil {
				t.Fatal(err)
			}
			if s%20 == 0 { // every 2 s
				tick++
				if err := tc.Tick(ctx, tick); err != nil {
					t.Fatal(err)
				}
			}
			if s == 60*10 {
				calls0, usec0 = redisCalls(t, ctx, rdb)
			}
		}
		calls, us := redisCalls(t, ctx, rdb)
		if tc.Dropped() != 0 {
			t.Errorf("%d uses dropped", tc.Dropped())
		}
		return float64(calls-calls0) / 180, float64(us-usec0) / 180
	}
	for _, random := range []bool{false, true} {
		t.Run(map[bool]string{false: "cycled", true: "random"}[random], func(t *testing.T) {
			before, beforeUs := run(t, v1TouchStore{rdb, redis.NewScript(string(v1))}, 2*time.Second, random)
			multi, multiUs := run(t, redisstore.New(rdb), 2*time.Second, random)
			after, afterUs := run(t, redisstore.New(rdb), 0, random)
			for _, r := range []struct {
				what       string
				cmds, usec float64
			}{{"before: v1 script, all every 2s", before, beforeUs}, {"multi-key script, all every 2s", multi, multiUs}, {"multi-key script, refreshes every 10s", after, afterUs}} {
				t.Logf("%s: %.0f commands/s (%.4f per request), %.0f µs/s in scripts (%.3f µs per request)", r.what, r.cmds, r.cmds/rate, r.usec, r.usec/rate)
			}
			if after > before/10 || after/rate > 0.02 {
				t.Errorf("%.0f commands/s after (%.4f per request), %.0f before: want at most a tenth, and 0.02 per request", after, after/rate, before)
			}
		})
	}
}
