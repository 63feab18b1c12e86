package redisstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/redisstore"
	"github.com/keygate/keygate/keys/storetest"
)

// sidecar is an Authenticator following a store on Redis, as a keygate
// sidecar runs one.
type sidecar struct {
	st       *redisstore.Store
	auth     *keys.Authenticator
	events   chan string
	confirms chan struct{}

	mu      sync.Mutex
	lookups map[string]int // by OnLookup result
}

func startSidecar(t *testing.T, rdb redis.UniversalClient, ttl time.Duration, now func() time.Time, opts ...redisstore.Option) *sidecar {
	t.Helper()
	sc := &sidecar{st: redisstore.New(rdb, append([]redisstore.Option{redisstore.WithWatchHealthCheck(300 * time.Millisecond)}, opts...)...),
		events: make(chan string, 16), confirms: make(chan struct{}, 1), lookups: map[string]int{}}
	sc.auth = keys.NewAuthenticator(sc.st, keys.AuthOptions{TTL: ttl, Now: now,
		OnChangeLog: func(e string) { sc.events <- e },
		OnConfirm: func() {
			select {
			case sc.confirms <- struct{}{}:
			default:
			}
		},
		OnLookup: func(r string) { sc.mu.Lock(); sc.lookups[r]++; sc.mu.Unlock() },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sc.auth.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return sc
}

// counts returns the lookups so far by result.
func (sc *sidecar) counts() map[string]int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return maps.Clone(sc.lookups)
}

// confirmed waits until the sidecar's follow has read the log after this
// call began.
func (sc *sidecar) confirmed(t *testing.T) {
	t.Helper()
	for range 2 { // the first may have been signalled before the call
		select {
		case <-sc.confirms:
		case <-time.After(5 * time.Second):
			t.Fatal("no confirmation of the cache within 5s")
		}
	}
}

// event waits for the change-log event want.
func (sc *sidecar) event(t *testing.T, want string, within time.Duration) {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case e := <-sc.events:
			if e == want {
				return
			}
		case <-timer.C:
			t.Fatalf("no %q of the change log within %s", want, within)
		}
	}
}

func (sc *sidecar) authenticate(t *testing.T, secret string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := sc.auth.Authenticate(ctx, keys.Credential{Secret: secret})
	return err
}

// refusedWithin polls until the sidecar refuses secret and returns how long
// that took; it fails the test past limit.
func (sc *sidecar) refusedWithin(t *testing.T, secret string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for i := 0; ; i++ {
		err := sc.authenticate(t, secret)
		if errors.Is(err, keys.ErrInvalidCredential) {
			return time.Since(start)
		}
		if time.Since(start) > limit || i > 10000 {
			t.Fatalf("still accepted %s after the change (last: %v)", time.Since(start), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// seedKeys creates plan 1, organization "org" and n keys k0…, returning
// their secrets.
func seedKeys(t *testing.T, s keys.Store, n int) []string {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	if err := s.CreatePlan(ctx, keys.Plan{ID: 1, Name: "Free", Period: "month"}); err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	if err := s.CreateOrg(ctx, keys.Org{ID: "org", Name: "Org", PlanID: 1}); err != nil {
		t.Fatalf("CreateOrg: %v", err)
	}
	var secrets []string
	for i := range n {
		k, secret := storetest.NewKey(t, "org", "k"+strconv.Itoa(i), nil)
		if err := s.CreateKey(ctx, k, -1); err != nil {
			t.Fatalf("CreateKey: %v", err)
		}
		secrets = append(secrets, secret)
	}
	return secrets
}

// TestCacheChangeReachesOtherSidecar: a key deleted or disabled on sidecar
// A is refused on sidecar B within 1s, though B's entries never expire (TTL
// 1h) and B has confirmed them.
func TestCacheChangeReachesOtherSidecar(t *testing.T) {
	rdb := redistest.Client(t)
	a := startSidecar(t, rdb, time.Hour, nil)
	b := startSidecar(t, rdb, time.Hour, nil)
	secrets := seedKeys(t, a.st, 2)
	for _, s := range secrets {
		if err := b.authenticate(t, s); err != nil {
			t.Fatalf("B: %v", err)
		}
	}
	b.confirmed(t)

	ctx := ctxFor(t, 5*time.Second)
	k, err := a.st.DeleteKey(ctx, "org", "k0")
	if err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	a.auth.Revoke(keys.Revocation{OrgID: "org", KeyUID: k.UID})
	t.Logf("deleted key refused on B after %s", b.refusedWithin(t, secrets[0], time.Second))

	k, err = a.st.UpdateKey(ctx, "org", "k1", keys.KeyPatch{Enabled: keys.ChangeTo(false)}, -1)
	if err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	a.auth.Revoke(keys.Revocation{OrgID: "org", KeyUID: k.UID})
	t.Logf("disabled key refused on B after %s", b.refusedWithin(t, secrets[1], time.Second))
}

// TestCacheCatchesUpAfterCut cuts sidecar B off Redis, deletes a key on A
// meanwhile, and restores B's connection: B catches up from the last change
// it saw and refuses the key, keeping its other entries.
func TestCacheCatchesUpAfterCut(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	link := redistest.NewLink(t, srv.Addr())
	a := startSidecar(t, rdb, time.Hour, nil)
	b := startSidecar(t, redistest.NewClient(t, link.Addr()), time.Hour, nil)
	secrets := seedKeys(t, a.st, 2)
	for _, s := range secrets {
		if err := b.authenticate(t, s); err != nil {
			t.Fatalf("B: %v", err)
		}
	}
	b.confirmed(t)

	link.Cut()
	b.event(t, "break", 10*time.Second)
	if _, err := a.st.DeleteKey(ctxFor(t, 5*time.Second), "org", "k0"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	// While cut off B keeps what it confirmed (for up to TTL): the one
	// change it missed is in the log.
	link.Restore()
	b.event(t, "catch_up", 5*time.Second)
	b.refusedWithin(t, secrets[0], time.Second)
	before := b.counts()
	if err := b.authenticate(t, secrets[1]); err != nil {
		t.Fatalf("B, other key after the catch-up: %v", err)
	}
	if after := b.counts(); after["hit"] != before["hit"]+1 {
		t.Errorf("other key after the catch-up: lookups %v → %v, want a cache hit", before, after)
	}
}

// TestCacheForgetsWhenTrimmed: B is cut off while more changes are made
// than the log keeps; on reconnect B cannot catch up and forgets its cache,
// so the deleted key is refused and the others are read again.
func TestCacheForgetsWhenTrimmed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redistest.NewClient(t, srv.Addr())
	link := redistest.NewLink(t, srv.Addr())
	a := startSidecar(t, rdb, time.Hour, nil, redisstore.WithChangeLogLen(3))
	b := startSidecar(t, redistest.NewClient(t, link.Addr()), time.Hour, nil, redisstore.WithChangeLogLen(3))
	secrets := seedKeys(t, a.st, 2)
	for _, s := range secrets {
		if err := b.authenticate(t, s); err != nil {
			t.Fatalf("B: %v", err)
		}
	}
	b.confirmed(t)

	link.Cut()
	b.event(t, "break", 10*time.Second)
	ctx := ctxFor(t, 5*time.Second)
	if _, err := a.st.DeleteKey(ctx, "org", "k0"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	for range 5 {
		if _, err := a.st.UpdatePlan(ctx, 1, keys.PlanPatch{}); err != nil {
			t.Fatalf("UpdatePlan: %v", err)
		}
	}
	link.Restore()
	b.event(t, "forget", 5*time.Second)
	if err := b.authenticate(t, secrets[0]); !errors.Is(err, keys.ErrInvalidCredential) {
		t.Errorf("deleted key after the forget: %v, want ErrInvalidCredential", err)
	}
	before := b.counts()
	if err := b.authenticate(t, secrets[1]); err != nil {
		t.Fatalf("other key after the forget: %v", err)
	}
	if after := b.counts(); after["miss"] != before["miss"]+1 {
		t.Errorf("other key after the forget: lookups %v → %v, want a store read", before, after)
	}
}

// TestCacheOldSidecarChange: a sidecar older than the change log deletes a
// key and only publishes the old pub/sub message; B refuses it within 1s.
func TestCacheOldSidecarChange(t *testing.T) {
	rdb := redistest.Client(t)
	b := startSidecar(t, rdb, time.Hour, nil)
	secrets := seedKeys(t, b.st, 1)
	if err := b.authenticate(t, secrets[0]); err != nil {
		t.Fatalf("B: %v", err)
	}
	b.confirmed(t)
	ctx := ctxFor(t, 5*time.Second)
	k, err := b.st.KeyByName(ctx, "org", "k0")
	if err != nil {
		t.Fatalf("KeyByName: %v", err)
	}
	// What the earlier version does: remove the index and the record, then
	// publish {"org_id","key_uid","published_at"} on kg:revocations.
	if err := rdb.Del(ctx, "kg:hash:"+k.SecretHash.String(), "kg:uid:"+k.UID, "kg:{org}:key:"+k.UID).Err(); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	old, _ := json.Marshal(map[string]any{"org_id": "org", "key_uid": k.UID, "published_at": time.Now()})
	if err := rdb.Publish(ctx, "kg:revocations", old).Err(); err != nil {
		t.Fatalf("PUBLISH: %v", err)
	}
	b.refusedWithin(t, secrets[0], time.Second)
}

// TestCacheOnDataWithoutChangeLog: data an earlier version wrote has no
// change log; a sidecar follows it anyway (the first change creates it) and
// a deletion reaches it within 1s.
func TestCacheOnDataWithoutChangeLog(t *testing.T) {
	rdb := redistest.Client(t)
	secrets := seedKeys(t, redisstore.New(rdb), 1)
	ctx := ctxFor(t, 5*time.Second)
	if n, err := rdb.Exists(ctx, "kg:changes").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS kg:changes = %d, %v; want no log before the first change", n, err)
	}
	a := startSidecar(t, rdb, time.Hour, nil)
	b := startSidecar(t, rdb, time.Hour, nil)
	if err := b.authenticate(t, secrets[0]); err != nil {
		t.Fatalf("B: %v", err)
	}
	b.confirmed(t)
	if _, err := a.st.DeleteKey(ctx, "org", "k0"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	b.refusedWithin(t, secrets[0], time.Second)
	select {
	case e := <-b.events:
		t.Errorf("change-log event %q, want none (the log was created, not lost)", e)
	default:
	}
}

// TestCacheSteadyStateNoStoreCalls caches 20,000 keys of 100 organizations,
// lets the clock run far past the TTL, and checks that looking every key up
// again sends Redis no command but the change log's follow.
func TestCacheSteadyStateNoStoreCalls(t *testing.T) {
	if testing.Short() {
		t.Skip("20,000 keys")
	}
	rdb := redistest.Client(t)
	clk := storetest.NewClock(time.Now())
	sc := startSidecar(t, rdb, 2*time.Second, clk.Now)
	// Keys cached after the follow's first read are the ones it confirms.
	sc.confirmed(t)
	clk.Add(time.Millisecond)
	ctx := ctxFor(t, 60*time.Second)
	if err := sc.st.CreatePlan(ctx, keys.Plan{ID: 1, Name: "Free", Period: "month"}); err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	start := time.Now()
	const orgs, perOrg = 100, 200
	secrets := make([]string, 0, orgs*perOrg)
	// Seeded with the records CreateKey writes, pipelined: 20,000 keys
	// one by one would take most of this test's time.
	pipe := rdb.Pipeline()
	for o := range orgs {
		org := "org" + strconv.Itoa(o)
		if err := sc.st.CreateOrg(ctx, keys.Org{ID: org, Name: org, PlanID: 1}); err != nil {
			t.Fatalf("CreateOrg: %v", err)
		}
		for i := range perOrg {
			k, secret := storetest.NewKey(t, org, "k"+strconv.Itoa(i), nil)
			rec, err := json.Marshal(k)
			if err != nil {
				t.Fatal(err)
			}
			pipe.Set(ctx, "kg:{"+org+"}:key:"+k.UID, rec, 0)
			pipe.Set(ctx, "kg:uid:"+k.UID, org, 0)
			pipe.Set(ctx, "kg:hash:"+k.SecretHash.String(), org+"/"+k.UID, 0)
			secrets = append(secrets, secret)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("seeding: %v", err)
		}
	}
	t.Logf("seeded in %s", time.Since(start))
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < len(secrets); i += 16 {
				if _, err := sc.auth.Authenticate(ctx, keys.Credential{Secret: secrets[i]}); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatalf("warming: %v", err)
	}
	t.Logf("warmed in %s", time.Since(start))
	clk.Add(time.Hour) // far past the TTL
	sc.confirmed(t)
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatalf("CONFIG RESETSTAT: %v", err)
	}
	before := sc.counts()
	for _, s := range secrets {
		if _, err := sc.auth.Authenticate(ctx, keys.Credential{Secret: s}); err != nil {
			t.Fatalf("steady state: %v", err)
		}
	}
	if after := sc.counts(); after["hit"]-before["hit"] != len(secrets) {
		t.Errorf("lookups %v → %v, want %d hits", before, after, len(secrets))
	}
	t.Logf("looked up in %s", time.Since(start))
	stats, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	// The follow of the change log (read_changes.lua's commands among
	// them), the subscription and this test's own commands.
	follow := map[string]bool{"xread": true, "evalsha": true, "eval": true, "exists": true, "xinfo|stream": true, "xrange": true,
		"ping": true, "info": true, "config|resetstat": true, "subscribe": true}
	for line := range strings.SplitSeq(stats, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		cmd, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd || follow[cmd] {
			continue
		}
		t.Errorf("%d lookups sent %s %s, want no store command", len(secrets), cmd, rest)
	}
	if n, bytes := sc.auth.CacheStats(); n != len(secrets) {
		t.Errorf("cache holds %d keys, want %d", n, len(secrets))
	} else {
		t.Logf("%d cached keys, %d bytes estimated (%.0f per key)", n, bytes, float64(bytes)/float64(n))
	}
}

// TestChangePublishedForOldSidecars: every change still goes out on
// kg:revocations in the form earlier versions decode (org_id, key_uid,
// published_at), marked as logged for newer ones.
func TestChangePublishedForOldSidecars(t *testing.T) {
	rdb := redistest.Client(t)
	s := redisstore.New(rdb)
	seedKeys(t, s, 1)
	ctx := ctxFor(t, 5*time.Second)
	sub := rdb.Subscribe(ctx, "kg:revocations")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatalf("SUBSCRIBE: %v", err)
	}
	k, err := s.DeleteKey(ctx, "org", "k0")
	if err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("receiving: %v", err)
	}
	// What an earlier version's Watch decodes into.
	var old struct {
		OrgID       string    `json:"org_id"`
		KeyUID      string    `json:"key_uid"`
		PublishedAt time.Time `json:"published_at"`
	}
	if err := json.Unmarshal([]byte(msg.Payload), &old); err != nil || old.OrgID != "org" || old.KeyUID != k.UID || old.PublishedAt.IsZero() {
		t.Errorf("published %s (%v), want the key's revocation in the old form", msg.Payload, err)
	}
	if !strings.Contains(msg.Payload, `"logged":true`) {
		t.Errorf("published %s, want it marked as logged", msg.Payload)
	}
	if n, err := rdb.XLen(ctx, "kg:changes").Result(); err != nil || n != 1 {
		t.Errorf("XLEN kg:changes = %d, %v; want 1", n, err)
	}
}
