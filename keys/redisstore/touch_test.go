package redisstore_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/redisstore"
	"github.com/keygate/keygate/keys/storetest"
)

// roundTrips counts what a client sends: single commands and pipelines.
type roundTrips struct {
	commands, pipelines atomic.Int64
}

func (h *roundTrips) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.commands.Add(1)
		return next(ctx, cmd)
	}
}

func (h *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		return next(ctx, cmds)
	}
}

// TestToucherOneRoundTrip: a Toucher flushing the uses of 600 keys of three
// organizations (more than one script's chunk for one of them) writes them
// all in a single pipeline.
func TestToucherOneRoundTrip(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	rdb := redistest.Client(t)
	s := redisstore.New(rdb)
	var refs []keys.KeyRef
	for i, n := range []int{400, 150, 50} {
		org := fmt.Sprintf("org%d", i)
		if err := s.CreateOrg(ctx, keys.Org{ID: org, Name: org, PlanID: 1}); err != nil {
			t.Fatal(err)
		}
		for j := range n {
			k, _ := storetest.NewKey(t, org, fmt.Sprintf("k%d", j), nil)
			if err := s.CreateKey(ctx, k, -1); err != nil {
				t.Fatal(err)
			}
			refs = append(refs, k.Ref())
		}
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tc := keys.NewToucher(s, keys.ToucherOptions{Now: func() time.Time { return now }, MaxPending: len(refs)})
	for _, ref := range refs {
		tc.Touch(ref)
	}
	var rt roundTrips
	rdb.AddHook(&rt)
	if err := tc.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if p, c := rt.pipelines.Load(), rt.commands.Load(); p != 1 || c != 0 {
		t.Errorf("flush of %d keys took %d pipelines and %d single commands, want 1 pipeline", len(refs), p, c)
	}
	for _, org := range []string{"org0", "org1", "org2"} {
		ks, err := s.Keys(ctx, org)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if k.LastUsedAt == nil || !k.LastUsedAt.Equal(now) {
				t.Fatalf("key %s/%s last used %v after the flush, want %v", org, k.Name, k.LastUsedAt, now)
			}
		}
	}
}

// commandCalls reads INFO commandstats of a single server: calls per
// command, the commands scripts run included, INFO itself left out.
func commandCalls(t *testing.T, ctx context.Context, rdb redis.UniversalClient) map[string]int64 {
	t.Helper()
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		n, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			t.Fatalf("commandstats line %q: %v", line, err)
		}
		out[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return out
}

// commandsDuring returns the commands Redis ran during f, by command, and
// their total.
func commandsDuring(t *testing.T, ctx context.Context, rdb redis.UniversalClient, f func()) (map[string]int64, int64) {
	t.Helper()
	before := commandCalls(t, ctx, rdb)
	f()
	delta, total := map[string]int64{}, int64(0)
	for name, n := range commandCalls(t, ctx, rdb) {
		if d := n - before[name]; d != 0 {
			delta[name] = d
			total += d
		}
	}
	return delta, total
}

// TestTouchKeysCommandsPerChunk counts what recording the uses of 1,000 keys
// of one organization costs Redis (INFO commandstats): a few commands per
// chunk of keys, not per key — one EVAL running one EXISTS, one MGET and one
// MSET — plus a bounded search for keys deleted since their use. The times
// still never move backwards and deleted keys keep nothing.
func TestTouchKeysCommandsPerChunk(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	rdb := redistest.Client(t)
	s := redisstore.New(rdb)
	if err := s.CreateOrg(ctx, keys.Org{ID: "org", Name: "org", PlanID: 1}); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	chunks := int64((n + redisstore.TouchChunk - 1) / redisstore.TouchChunk)
	var all []keys.Key
	for i := range n {
		k, _ := storetest.NewKey(t, "org", fmt.Sprintf("k%d", i), nil)
		if err := s.CreateKey(ctx, k, -1); err != nil {
			t.Fatal(err)
		}
		all = append(all, k)
	}
	deleted := map[string]bool{}
	for _, i := range []int{10, 500, 990} {
		if _, err := s.DeleteKey(ctx, "org", all[i].Name); err != nil {
			t.Fatal(err)
		}
		deleted[all[i].UID] = true
	}
	touch := func(what string, at time.Time, withDeleted bool) (map[string]int64, int64) {
		t.Helper()
		used := map[keys.KeyRef]time.Time{}
		for _, k := range all {
			if withDeleted || !deleted[k.UID] {
				used[k.Ref()] = at
			}
		}
		var err error
		by, total := commandsDuring(t, ctx, rdb, func() { err = s.TouchKeys(ctx, used) })
		if err != nil {
			t.Fatalf("%s: TouchKeys: %v", what, err)
		}
		t.Logf("%s: %d keys, %d chunks: %d commands %v", what, len(used), chunks, total, by)
		return by, total
	}
	wantUsed := func(what string, at time.Time) {
		t.Helper()
		ks, err := s.Keys(ctx, "org")
		if err != nil || len(ks) != n-len(deleted) {
			t.Fatalf("%s: Keys: %d keys, %v", what, len(ks), err)
		}
		for _, k := range ks {
			if k.LastUsedAt == nil || !k.LastUsedAt.Equal(at) {
				t.Fatalf("%s: key %s last used %v, want %v", what, k.Name, k.LastUsedAt, at)
			}
		}
		for uid := range deleted {
			if n, err := rdb.Exists(ctx, "kg:{org}:used:"+uid).Result(); err != nil || n != 0 {
				t.Fatalf("%s: deleted key %s has a last-used time (%d, %v)", what, uid, n, err)
			}
		}
	}

	t1 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	// Steady state: every key of the flush exists.
	by, total := touch("first uses", t1, false)
	if want := map[string]int64{"eval": chunks, "exists": chunks, "mget": chunks, "mset": chunks}; fmt.Sprint(by) != fmt.Sprint(want) || total != 4*chunks {
		t.Errorf("first uses: %d commands %v, want %v", total, by, want)
	}
	wantUsed("first uses", t1)

	// Three keys deleted since their use: each costs at most 2·log2(256)
	// more EXISTS, and gets nothing.
	t2 := t1.Add(time.Minute)
	by, total = touch("with deleted keys", t2, true)
	if maxExists := chunks + int64(len(deleted))*2*8; by["exists"] > maxExists || total > 3*chunks+maxExists {
		t.Errorf("with deleted keys: %d commands %v, want at most %d EXISTS and %d in all", total, by, maxExists, 3*chunks+maxExists)
	}
	wantUsed("with deleted keys", t2)

	// Earlier times write nothing.
	by, _ = touch("earlier times", t1, false)
	if by["mset"] != 0 || by["set"] != 0 {
		t.Errorf("earlier times: commands %v, want no MSET or SET", by)
	}
	wantUsed("earlier times", t2)
}
