package redisstore_test

import (
	"context"
	"fmt"
	"net"
	"os"
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
// chunk of keys, not per key — one EVAL running one MGET and one MSET, and
// one EXISTS when some keys have no time yet — plus a bounded search for keys
// deleted since their use. The times still never move backwards and deleted
// keys keep nothing.
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
		if err != nil || len(ks) != len(all)-len(deleted) {
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
	// First uses: every record is checked, with one EXISTS per chunk.
	by, total := touch("first uses", t1, false)
	if want := map[string]int64{"eval": chunks, "exists": chunks, "mget": chunks, "mset": chunks}; fmt.Sprint(by) != fmt.Sprint(want) || total != 4*chunks {
		t.Errorf("first uses: %d commands %v, want %v", total, by, want)
	}
	wantUsed("first uses", t1)

	// Steady state: keys with a time need no check.
	t2 := t1.Add(time.Minute)
	by, total = touch("later uses", t2, false)
	if want := map[string]int64{"eval": chunks, "mget": chunks, "mset": chunks}; fmt.Sprint(by) != fmt.Sprint(want) || total != 3*chunks {
		t.Errorf("later uses: %d commands %v, want %v", total, by, want)
	}
	wantUsed("later uses", t2)

	// Three keys deleted since their use, among 20 new ones: at most one
	// EXISTS per chunk, and 2·log2(256) more per deleted key to tell it from
	// the new ones. The new keys get their time, the deleted ones nothing.
	for i := range 20 {
		k, _ := storetest.NewKey(t, "org", fmt.Sprintf("new%d", i), nil)
		if err := s.CreateKey(ctx, k, -1); err != nil {
			t.Fatal(err)
		}
		all = append(all, k)
	}
	t3 := t2.Add(time.Minute)
	by, total = touch("with deleted and new keys", t3, true)
	if maxExists := chunks + int64(len(deleted))*2*8; by["exists"] > maxExists || total > 3*chunks+maxExists {
		t.Errorf("with deleted and new keys: %d commands %v, want at most %d EXISTS and %d in all", total, by, maxExists, 3*chunks+maxExists)
	}
	wantUsed("with deleted and new keys", t3)

	// Earlier times write nothing.
	by, _ = touch("earlier times", t1, false)
	if by["mset"] != 0 || by["set"] != 0 || by["exists"] != 0 {
		t.Errorf("earlier times: commands %v, want no MSET, SET or EXISTS", by)
	}
	wantUsed("earlier times", t3)
}

// BenchmarkTouchKeysRedisTime measures Redis's own time per key recorded
// (INFO commandstats: EVAL's microseconds, which include its commands'; and
// INFO cpu: the server's CPU time, parsing and replies included) for
// the previous script (testdata/touch_keys_v1.lua) and the store's, in a
// database of 20,000 keys of 100 organizations, each flush carrying 33 keys
// of every organization. Run the two one after the other, several times:
// both figures are inflated on a busy machine, script-µs/key the most (it is
// wall time).
func BenchmarkTouchKeysRedisTime(b *testing.B) {
	ctx := b.Context()
	rdb := redistest.Client(b)
	s := redisstore.New(rdb)
	src, err := os.ReadFile("testdata/touch_keys_v1.lua")
	if err != nil {
		b.Fatal(err)
	}
	v1 := redis.NewScript(string(src))
	refs := make([]keys.KeyRef, 20000)
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range refs {
			uid, _ := keys.NewUUID()
			refs[i] = keys.KeyRef{OrgID: fmt.Sprintf("org%03d", i%100), UID: uid}
			p.Set(ctx, "kg:{"+refs[i].OrgID+"}:key:"+uid, "{}", 0)
			p.Set(ctx, "kg:{"+refs[i].OrgID+"}:used:"+uid, "1700000000000", 0)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	// redisTime returns EVAL's microseconds and the server's CPU time
	// (user + system) in microseconds.
	redisTime := func() (evalUsec, cpuUsec float64) {
		info, err := rdb.Info(ctx, "commandstats", "cpu").Result()
		if err != nil {
			b.Fatal(err)
		}
		for line := range strings.SplitSeq(info, "\n") {
			line = strings.TrimSpace(line)
			if rest, ok := strings.CutPrefix(line, "cmdstat_eval:"); ok {
				var calls int64
				if _, err := fmt.Sscanf(rest, "calls=%d,usec=%g,", &calls, &evalUsec); err != nil {
					b.Fatal(err)
				}
			}
			for _, f := range []string{"used_cpu_user:", "used_cpu_sys:"} {
				if rest, ok := strings.CutPrefix(line, f); ok {
					sec, err := strconv.ParseFloat(rest, 64)
					if err != nil {
						b.Fatal(err)
					}
					cpuUsec += sec * 1e6
				}
			}
		}
		return evalUsec, cpuUsec
	}
	const batch = 3300
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, name := range []string{"v1", "multi-key"} {
		b.Run(name, func(b *testing.B) {
			eval0, cpu0 := redisTime()
			n := 0
			for b.Loop() {
				at = at.Add(time.Second)
				used := map[keys.KeyRef]time.Time{}
				for i := range batch {
					used[refs[(n*batch+i)%len(refs)]] = at
				}
				n++
				if name == "multi-key" {
					if err := s.TouchKeys(ctx, used); err != nil {
						b.Fatal(err)
					}
					continue
				}
				byOrg := map[string][]string{}
				for ref := range used {
					byOrg[ref.OrgID] = append(byOrg[ref.OrgID], ref.UID)
				}
				if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
					for org, uids := range byOrg {
						var ks []string
						var args []any
						for _, uid := range uids {
							ks = append(ks, "kg:{"+org+"}:key:"+uid, "kg:{"+org+"}:used:"+uid)
							args = append(args, at.UnixMilli())
						}
						v1.Eval(ctx, p, ks, args...)
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			eval1, cpu1 := redisTime()
			b.ReportMetric((eval1-eval0)/float64(n*batch), "script-µs/key")
			b.ReportMetric((cpu1-cpu0)/float64(n*batch), "redis-cpu-µs/key")
		})
	}
}
