package rediscounter

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/quota"
)

// chargeV1Src is charge.lua as it was before rate limits (commit bb20e7d):
// the state it wrote must keep working, and without rate limits the new
// script must do exactly what it did.
//
//go:embed testdata/charge_v1.lua
var chargeV1Src string

var chargeV1 = redis.NewScript(chargeV1Src)

// scriptCall is one charge as the Counter sends it: KEYS and ARGV.
type scriptCall struct {
	keys []string
	args []any
}

// callOf builds the script call of ch the way Charge does, without rate
// limits; for the old script, pass its keys through v1Keys.
func callOf(ch quota.Charge) scriptCall {
	w := ch.Period.Window(ch.At)
	var expireAt, ttl, nonceAt int64
	if at := w.ExpireAt(); !at.IsZero() {
		expireAt = at.Unix()
	}
	if ch.Token != "" {
		ttl = tokenTTL.Milliseconds()
	}
	switch {
	case ch.Nonce == "":
		nonceAt = -1
	case !ch.NonceUntil.IsZero():
		nonceAt = max(ch.NonceUntil.UnixMilli(), 1)
	}
	return scriptCall{
		keys: []string{orgCounterKey(ch.OrgID, w.ID), keyCounterKey(ch.OrgID, ch.KeyID, w.ID), tokenKey(ch.OrgID, ch.Token), nonceKey(ch.OrgID, ch.Nonce), leaseKeysKey(ch.OrgID, w.ID)},
		args: []any{ch.Cost, limit(ch.OrgMax), limit(ch.KeyMax), expireAt, ttl, nonceAt, ch.At.UnixMilli()},
	}
}

// v1Keys are the KEYS of the old script: those of the new one without the
// lease counts (KEYS[5]).
func v1Keys(keys []string) []string { return keys[:4] }

// v1Charges is a sequence that exercises every path of the old script:
// admitted, refused by the key and by the org, cost 0, a token and its
// retry, a nonce and its replay, a nonce without expiry, a period without end.
func v1Charges(now time.Time) []quota.Charge {
	c := func(key string, cost, orgMax, keyMax int64) quota.Charge {
		return quota.Charge{OrgID: "org1", KeyID: key, Cost: cost, OrgMax: orgMax, KeyMax: keyMax, Period: quota.PeriodHour, At: now}
	}
	tok := c("k1", 1, 10, -1)
	tok.Token = "tok-a"
	nonce := c("k2", 1, 10, -1)
	nonce.Nonce, nonce.NonceUntil = "sig-a", now.Add(time.Minute)
	forever := c("k2", 0, 10, -1)
	forever.Nonce = "sig-b"
	none := c("k3", 2, -1, -1)
	none.Period = quota.PeriodNone
	refusedTok := c("k1", 5, 10, 3)
	refusedTok.Token = "tok-b"
	return []quota.Charge{
		c("k1", 1, 10, 3), c("k1", 2, 10, 3), c("k1", 1, 10, 3), // the key's max
		tok, tok, refusedTok, refusedTok,
		nonce, nonce, forever, forever,
		c("k2", 0, 0, 0), c("k2", 4, 10, -1), c("k2", 5, 10, -1), // the org's max
		none, none,
	}
}

// snapshot is every key in Redis with its value and absolute expiry (tokens,
// set with a relative PX, only say whether they expire).
func snapshot(t *testing.T, ctx context.Context, rdb redis.UniversalClient) map[string]string {
	t.Helper()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		v, err := rdb.Get(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		exp, err := rdb.Do(ctx, "PEXPIRETIME", k).Int64()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(k, ":tok:") && exp > 0 {
			exp = 1
		}
		out[k] = v + " @" + strconv.FormatInt(exp, 10)
	}
	return out
}

// commandCalls reads INFO commandstats: calls per command, scripts' own
// commands included, EVAL/EVALSHA left out.
func commandCalls(t *testing.T, ctx context.Context, rdb redis.UniversalClient) map[string]string {
	t.Helper()
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || strings.HasPrefix(name, "cmdstat_eval") ||
			name == "cmdstat_info" || name == "cmdstat_config|resetstat" || name == "cmdstat_script|load" {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		out[name] = calls
	}
	return out
}

// TestNoRateLimitsAsBefore runs one sequence of charges through the old and
// the new script: without rate limits they reply the same, leave the same
// keys, values and expiries behind, and run the same Redis commands.
func TestNoRateLimitsAsBefore(t *testing.T) {
	rdb := newTestClient(t, redistest.Start(t).Addr())
	ctx := t.Context()
	now := time.Now().Truncate(time.Millisecond)
	run := func(s *redis.Script) ([]any, map[string]string, map[string]string) {
		redistest.Flush(t, rdb)
		if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		var replies []any
		for _, ch := range v1Charges(now) {
			call := callOf(ch)
			if s == chargeV1 {
				call.keys = v1Keys(call.keys)
			}
			v, err := s.Run(ctx, rdb, call.keys, call.args...).Result()
			if err != nil {
				t.Fatalf("%+v: %v", ch, err)
			}
			replies = append(replies, v)
		}
		return replies, snapshot(t, ctx, rdb), commandCalls(t, ctx, rdb)
	}
	oldReplies, oldKeys, oldCalls := run(chargeV1)
	newReplies, newKeys, newCalls := run(chargeScript)
	// The new script reads a key's lease counts (one HGET) when the key has
	// a max; nothing else differs.
	if newCalls["cmdstat_hget"] == "" {
		t.Errorf("the new script read no lease counts (HGET): %v", newCalls)
	}
	delete(newCalls, "cmdstat_hget")
	if !reflect.DeepEqual(oldReplies, newReplies) {
		t.Errorf("replies differ:\nold %v\nnew %v", oldReplies, newReplies)
	}
	if !reflect.DeepEqual(oldKeys, newKeys) {
		t.Errorf("state differs:\nold %v\nnew %v", oldKeys, newKeys)
	}
	if !reflect.DeepEqual(oldCalls, newCalls) {
		t.Errorf("Redis commands differ:\nold %v\nnew %v", oldCalls, newCalls)
	}
	if len(oldKeys) < 8 || len(oldCalls) < 3 {
		t.Errorf("the sequence left %d keys and %d kinds of commands: it exercises too little", len(oldKeys), len(oldCalls))
	}
}

// TestUpgradeKeepsState charges with the old script, then with the new
// Counter, with and without rate limits: counters go on, a used nonce is
// still a replay, and a token stored by the old script still answers its
// retry.
func TestUpgradeKeepsState(t *testing.T) {
	rdb := newTestClient(t, redistest.Start(t).Addr())
	ctx := t.Context()
	now := time.Now()
	first := quota.Charge{OrgID: "org1", KeyID: "k1", Cost: 3, OrgMax: 10, KeyMax: 5, Period: quota.PeriodHour, At: now,
		Token: "tok-old", Nonce: "sig-old", NonceUntil: now.Add(time.Minute)}
	call := callOf(first)
	if _, err := chargeV1.Run(ctx, rdb, v1Keys(call.keys), call.args...).Result(); err != nil {
		t.Fatal(err)
	}

	c := New(rdb)
	// The retry of the old charge gets the old reply and counts nothing.
	res, err := c.Charge(ctx, first)
	if err != nil || res.OrgUsed != 3 || res.KeyUsed != 3 {
		t.Fatalf("retry of a charge the old script made = %+v, %v; want used 3/3", res, err)
	}
	// Its nonce is used.
	replay := first
	replay.Token = ""
	if _, err := c.Charge(ctx, replay); !errors.Is(err, quota.ErrReplay) {
		t.Errorf("nonce the old script stored: %v, want ErrReplay", err)
	}
	// The counters go on, with rate limits too.
	next := quota.Charge{OrgID: "org1", KeyID: "k1", Cost: 2, OrgMax: 10, KeyMax: 5, Period: quota.PeriodHour, At: now,
		RateLimits: []quota.RateLimit{{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 10, Per: time.Minute}}}
	if res, err = c.Charge(ctx, next); err != nil || res.OrgUsed != 5 || res.KeyUsed != 5 {
		t.Errorf("charge after the upgrade = %+v, %v; want used 5/5", res, err)
	}
	var ex *quota.ExceededError
	if _, err := c.Charge(ctx, next); !errors.As(err, &ex) || ex.Scope != quota.ScopeKey || ex.Used != 5 {
		t.Errorf("charge over the key's max after the upgrade: %v, want refused by the key at 5", err)
	}
}

// TestRateLimitKeys checks the rate limits' keys in Redis: named and tagged
// by org, holding the TAT in µs, expiring a minute after the limit is full
// again, and untouched by a refusal.
func TestRateLimitKeys(t *testing.T) {
	rdb := newTestClient(t, redistest.Start(t).Addr())
	c := New(rdb)
	ctx := t.Context()
	now := time.Now().Truncate(time.Microsecond)
	orgLim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 2, Per: time.Minute}
	keyLim := quota.RateLimit{Name: "key-rate", Scope: quota.ScopeKey, Requests: 10, Per: time.Second}
	ch := quota.Charge{OrgID: "org1", KeyID: "k:1", Cost: 1, OrgMax: -1, KeyMax: -1, Period: quota.PeriodHour, At: now,
		RateLimits: []quota.RateLimit{orgLim, keyLim}}
	if _, err := c.Charge(ctx, ch); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  string
		debt time.Duration
	}{
		{"kg:{org1}:rl:org:org-rate", 30 * time.Second},
		{"kg:{org1}:rl:key:k:1:key-rate", 100 * time.Millisecond},
	} {
		v, err := rdb.Get(ctx, tc.key).Result()
		if want := strconv.FormatInt(now.Add(tc.debt).UnixMicro(), 10); err != nil || v != want {
			t.Errorf("GET %s = %q, %v; want the TAT %s", tc.key, v, err, want)
		}
		ttl, err := rdb.PTTL(ctx, tc.key).Result()
		if want := tc.debt + time.Minute; err != nil || ttl <= want-5*time.Second || ttl > want {
			t.Errorf("PTTL %s = %s, %v; want about %s (the debt plus a minute)", tc.key, ttl, err, want)
		}
	}
	// Refusals, by the rate limit or by a quota, write no rate-limit key.
	if _, err := c.Charge(ctx, ch); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, ctx, rdb)
	var rl *quota.RateLimitedError
	if _, err := c.Charge(ctx, ch); !errors.As(err, &rl) || rl.Name != "org-rate" {
		t.Fatalf("third charge: %v, want refused by org-rate", err)
	}
	fresh := ch
	fresh.OrgID, fresh.OrgMax = "org2", 0
	var ex *quota.ExceededError
	if _, err := c.Charge(ctx, fresh); !errors.As(err, &ex) {
		t.Fatalf("charge at max 0: %v, want *ExceededError", err)
	}
	if after := snapshot(t, ctx, rdb); !reflect.DeepEqual(before, after) {
		t.Errorf("refusals changed Redis:\nbefore %v\nafter  %v", before, after)
	}
}

// TestRateLimitCommands counts the Redis commands a charge runs: a rate
// limit adds one GET and, when the charge is admitted, one SET.
func TestRateLimitCommands(t *testing.T) {
	rdb := newTestClient(t, redistest.Start(t).Addr())
	c := New(rdb)
	ctx := t.Context()
	lim := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 1, Per: time.Minute}
	ch := quota.Charge{OrgID: "org1", KeyID: "k1", Cost: 1, OrgMax: -1, KeyMax: -1, Period: quota.PeriodHour, At: time.Now(),
		RateLimits: []quota.RateLimit{lim}}
	count := func(ch quota.Charge) map[string]string {
		if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		_, err := c.Charge(ctx, ch)
		var (
			rl *quota.RateLimitedError
			ex *quota.ExceededError
		)
		if err != nil && !errors.As(err, &rl) && !errors.As(err, &ex) {
			t.Fatal(err)
		}
		return commandCalls(t, ctx, rdb)
	}
	want := func(got map[string]string, get, set, incrby int) {
		t.Helper()
		w := map[string]string{"cmdstat_get": fmt.Sprintf("calls=%d", get), "cmdstat_set": fmt.Sprintf("calls=%d", set), "cmdstat_incrby": fmt.Sprintf("calls=%d", incrby)}
		for k, v := range w {
			if strings.HasSuffix(v, "=0") {
				if _, ok := got[k]; ok {
					t.Errorf("%s: %s, want none", k, got[k])
				}
				continue
			}
			if got[k] != v {
				t.Errorf("%s: %q, want %q (all: %v)", k, got[k], v, got)
			}
		}
	}
	want(count(ch), 3, 1, 2) // two counters and the limit; its TAT; two INCRBY
	want(count(ch), 3, 0, 0) // refused by the limit: reads only
	want(count(quota.Charge{OrgID: "org1", KeyID: "k1", Cost: 1, OrgMax: -1, KeyMax: -1, Period: quota.PeriodHour, At: time.Now()}), 2, 0, 2)
	ch.OrgMax = 0
	want(count(ch), 2, 0, 0) // refused by a quota: the limit is not even read
}

// newTestClient returns a client set up as ClientOptions says.
func newTestClient(t testing.TB, addrs ...string) redis.UniversalClient {
	t.Helper()
	rdb := redis.NewUniversalClient(ClientOptions(&redis.UniversalOptions{Addrs: addrs}))
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// BenchmarkScript runs the charge script alone, one call at a time, on a
// private redis-server: the old script (before rate limits), the new one
// without rate limits, with an org rate limit and with a key and an org rate
// limit. redis-µs/call is Redis's own time per EVALSHA (INFO commandstats);
// redis-cpu-µs/call the server's CPU time per call, reading the request and
// writing the reply included: the cost a charge puts on Redis.
func BenchmarkScript(b *testing.B) {
	ctx := b.Context()
	orgRate := quota.RateLimit{Name: "org-rate", Scope: quota.ScopeOrg, Requests: 1_000_000, Per: time.Second, Burst: 1_000_000_000_000}
	keyRate := quota.RateLimit{Name: "key-rate", Scope: quota.ScopeKey, Requests: 1_000_000, Per: time.Second, Burst: 1_000_000_000_000}
	for _, bc := range []struct {
		name   string
		script *redis.Script
		limits []quota.RateLimit
	}{
		{"v1/quota", chargeV1, nil},
		{"quota", chargeScript, nil},
		{"quota+org-rate", chargeScript, []quota.RateLimit{orgRate}},
		{"quota+key-rate+org-rate", chargeScript, []quota.RateLimit{keyRate, orgRate}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			// A fresh server for each case: one that ran the others before
			// spends more CPU per call (measured), which would skew the
			// comparison.
			rdb := newTestClient(b, redistest.Start(b).Addr())
			if err := bc.script.Load(ctx, rdb).Err(); err != nil {
				b.Fatal(err)
			}
			if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			_, cpu0, _ := RedisStats(ctx, rdb)
			now := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			n := 0
			for i := 0; b.Loop(); i++ {
				n++
				ch := quota.Charge{OrgID: "org1", KeyID: "k" + strconv.Itoa(i%8), Cost: 1, OrgMax: 1 << 40, KeyMax: 1 << 40,
					Period: quota.PeriodMonth, At: now, Token: strconv.Itoa(i), RateLimits: bc.limits}
				keys, args := scriptArgs(ch)
				if bc.script == chargeV1 {
					keys = v1Keys(keys)
				}
				if err := bc.script.EvalSha(ctx, rdb, keys, args...).Err(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			us, cpu, err := RedisStats(ctx, rdb)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(us, "redis-µs/call")
			b.ReportMetric((cpu-cpu0)/float64(n), "redis-cpu-µs/call")
		})
	}
}

// scriptArgs builds KEYS and ARGV of ch as Charge does.
func scriptArgs(ch quota.Charge) ([]string, []any) {
	call := callOf(ch)
	if len(ch.RateLimits) == 0 {
		return call.keys, call.args
	}
	args := append(call.args, ch.At.UnixMicro())
	for _, l := range ch.RateLimits {
		call.keys = append(call.keys, rateKey(ch.OrgID, ch.KeyID, l))
		shadow := 0
		if l.Shadow {
			shadow = 1
		}
		args = append(args, l.Interval().Microseconds(), l.EffectiveBurst(), shadow)
	}
	return call.keys, args
}

// RedisStats reads, from INFO, Redis's mean wall time per EVALSHA
// (commandstats, inflated when the machine is busy) and the CPU time the
// server process has used so far (user + system, in µs), which counts only
// the time Redis ran. Exported for the benchmarks of rediscounter_test.
func RedisStats(ctx context.Context, rdb redis.UniversalClient) (evalshaMicros, cpuMicros float64, err error) {
	info, err := rdb.Info(ctx, "commandstats", "cpu").Result()
	if err != nil {
		return 0, 0, err
	}
	found := false
	for line := range strings.SplitSeq(info, "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:"); ok {
			for field := range strings.SplitSeq(rest, ",") {
				if v, ok := strings.CutPrefix(field, "usec_per_call="); ok {
					if evalshaMicros, err = strconv.ParseFloat(v, 64); err != nil {
						return 0, 0, err
					}
					found = true
				}
			}
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
	if !found {
		return 0, 0, errors.New("no cmdstat_evalsha in INFO commandstats")
	}
	return evalshaMicros, cpuMicros, nil
}
