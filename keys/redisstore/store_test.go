package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/redisstore"
	"github.com/keygate/keygate/keys/storetest"
)

func TestStore(t *testing.T) {
	rdb := redistest.Client(t)
	storetest.Run(t, func(t *testing.T, now func() time.Time) keys.Store {
		redistest.Flush(t, rdb)
		return redisstore.New(rdb, redisstore.WithClock(now))
	})
	storetest.RunChangeFeed(t, func(t *testing.T, n int) keys.Store {
		redistest.Flush(t, rdb)
		return redisstore.New(rdb, redisstore.WithChangeLogLen(int64(n)))
	})
}

// TestCluster runs the conformance suites on a three-master Redis Cluster, so
// every script proves it touches one slot only.
func TestCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	rdb := redistest.NewClient(t, cl.Addrs()...)
	storetest.Run(t, func(t *testing.T, now func() time.Time) keys.Store {
		redistest.Flush(t, rdb)
		return redisstore.New(rdb, redisstore.WithClock(now))
	})
	storetest.RunChangeFeed(t, func(t *testing.T, n int) keys.Store {
		redistest.Flush(t, rdb)
		return redisstore.New(rdb, redisstore.WithChangeLogLen(int64(n)))
	})
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// seed creates an organization "org" with one key "k" and returns the key and
// its clear secret.
func seed(t *testing.T, s keys.Store) (keys.Key, string) {
	t.Helper()
	ctx := ctxFor(t, 5*time.Second)
	if err := s.CreatePlan(ctx, keys.Plan{ID: 1, Name: "Free", Period: "month"}); err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	org := keys.Org{ID: "org", Name: "Org", PlanID: 1, Username: "user", PasswordHash: "hash"}
	if err := s.CreateOrg(ctx, org); err != nil {
		t.Fatalf("CreateOrg: %v", err)
	}
	k, secret := storetest.NewKey(t, "org", "k", nil)
	k.SealedSecret = []byte("ciphertext")
	if err := s.CreateKey(ctx, k, 100); err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return k, secret
}

// watchLive starts Watch on w and returns its revocations once the watch is
// live, proved by revocations of org published through p. The watch ends,
// and is waited for, when the test ends; its result arrives on done.
func watchLive(t *testing.T, w, p keys.Store, org keys.Org) (<-chan keys.Revocation, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan keys.Revocation, 64)
	done := make(chan error, 1)
	go func() {
		done <- w.Watch(ctx, func(r keys.Revocation) {
			select {
			case ch <- r:
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(cancel)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := p.UpdateOrg(ctxFor(t, 5*time.Second), &org); err != nil {
			t.Fatalf("UpdateOrg(probe): %v", err)
		}
		select {
		case r := <-ch:
			if r.OrgID == org.ID {
				return ch, done
			}
		case err := <-done:
			t.Fatalf("Watch returned before it was live: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("watch not live within 5s")
		}
	}
}

// TestRevocationAcrossStores checks that a revocation published by one store
// reaches a watcher of another store on the same Redis, stamped by the
// publisher's clock.
func TestRevocationAcrossStores(t *testing.T) {
	srv := redistest.Start(t)
	published := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	a := redisstore.New(redistest.NewClient(t, srv.Addr()), redisstore.WithClock(func() time.Time { return published }))
	b := redisstore.New(redistest.NewClient(t, srv.Addr()))
	k, _ := seed(t, a)
	org, err := b.Org(ctxFor(t, 5*time.Second), "org")
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	ch, _ := watchLive(t, b, a, org)

	if _, err := a.DeleteKey(ctxFor(t, 5*time.Second), "org", "k"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r := <-ch:
			if r.KeyUID == "" {
				continue // a probe
			}
			want := keys.Revocation{OrgID: "org", KeyUID: k.UID, PublishedAt: published}
			if r.OrgID != want.OrgID || r.KeyUID != want.KeyUID || !r.PublishedAt.Equal(published) {
				t.Errorf("revocation %+v, want %+v", r, want)
			}
			return
		case <-timeout:
			t.Fatal("store B's watcher did not see store A's DeleteKey within 5s")
		}
	}
}

// TestUnavailable checks that a stopped Redis makes every call fail with
// keys.ErrUnavailable within its context's deadline, ends a running Watch,
// makes a new Watch fail at once, and that the store works again once Redis
// is back.
func TestUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	s := redisstore.New(redistest.NewClient(t, srv.Addr()))
	k, _ := seed(t, s)
	org, err := s.Org(ctxFor(t, 5*time.Second), "org")
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	_, running := watchLive(t, s, s, org)

	srv.Stop()

	select {
	case err := <-running:
		if err == nil {
			t.Error("running Watch returned nil after Redis stopped, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("running Watch did not return within 10s of Redis stopping")
	}

	const deadline = 250 * time.Millisecond
	max := ptr(int64(5))
	k2, _ := storetest.NewKey(t, "org", "k2", nil)
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Ping", s.Ping},
		{"Plan", func(ctx context.Context) error { _, err := s.Plan(ctx, 1); return err }},
		{"Plans", func(ctx context.Context) error { _, err := s.Plans(ctx); return err }},
		{"CreatePlan", func(ctx context.Context) error { return s.CreatePlan(ctx, keys.Plan{ID: 2}) }},
		{"Org", func(ctx context.Context) error { _, err := s.Org(ctx, "org"); return err }},
		{"OrgByUsername", func(ctx context.Context) error { _, err := s.OrgByUsername(ctx, "user"); return err }},
		{"Orgs", func(ctx context.Context) error { _, err := s.Orgs(ctx); return err }},
		{"SubOrgs", func(ctx context.Context) error { _, err := s.SubOrgs(ctx, "org"); return err }},
		{"CreateOrg", func(ctx context.Context) error { return s.CreateOrg(ctx, keys.Org{ID: "org2"}) }},
		{"UpdateOrg", func(ctx context.Context) error { o := org; return s.UpdateOrg(ctx, &o) }},
		{"KeyByHash", func(ctx context.Context) error { _, err := s.KeyByHash(ctx, k.SecretHash); return err }},
		{"KeyByUID", func(ctx context.Context) error { _, err := s.KeyByUID(ctx, k.UID); return err }},
		{"Keys", func(ctx context.Context) error { _, err := s.Keys(ctx, "org"); return err }},
		{"CreateKey", func(ctx context.Context) error { return s.CreateKey(ctx, k2, 100) }},
		{"UpdateKey", func(ctx context.Context) error {
			_, err := s.UpdateKey(ctx, "org", "k", keys.KeyPatch{MaxAPIRequests: keys.ChangeTo(max)}, 100)
			return err
		}},
		{"UpdatePlan", func(ctx context.Context) error {
			_, err := s.UpdatePlan(ctx, 1, keys.PlanPatch{Name: keys.ChangeTo("x")})
			return err
		}},
		{"RotateKey", func(ctx context.Context) error {
			_, _, err := s.RotateKey(ctx, "org", "k", keys.Rotation{Hash: keys.HashSecret("x"), Grace: time.Hour, Now: time.Now()})
			return err
		}},
		{"TouchKeys", func(ctx context.Context) error {
			return s.TouchKeys(ctx, map[keys.KeyRef]time.Time{k.Ref(): time.Now()})
		}},
		{"KeyByName", func(ctx context.Context) error { _, err := s.KeyByName(ctx, "org", "k"); return err }},
		{"SetSealedSecret", func(ctx context.Context) error { return s.SetSealedSecret(ctx, k.UID, nil) }},
		{"DeleteKey", func(ctx context.Context) error { _, err := s.DeleteKey(ctx, "org", "k"); return err }},
	}
	for _, c := range calls {
		ctx, cancel := context.WithTimeout(t.Context(), deadline)
		start := time.Now()
		err := c.call(ctx)
		elapsed := time.Since(start)
		cancel()
		if !errors.Is(err, keys.ErrUnavailable) {
			t.Errorf("%s with Redis down: error %v, want ErrUnavailable", c.name, err)
		}
		if elapsed > deadline+250*time.Millisecond {
			t.Errorf("%s with Redis down took %s, want about its %s deadline", c.name, elapsed, deadline)
		}
	}

	// A new Watch fails promptly even without a deadline.
	done := make(chan error, 1)
	go func() { done <- s.Watch(t.Context(), func(keys.Revocation) {}) }()
	select {
	case err := <-done:
		if !errors.Is(err, keys.ErrUnavailable) {
			t.Errorf("Watch with Redis down: error %v, want ErrUnavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch with Redis down did not return within 5s")
	}

	srv.Restart()
	// The client's pool may take a moment to dial again; bounded.
	back := time.Now().Add(5 * time.Second)
	for {
		err := s.Ping(ctxFor(t, time.Second))
		if err == nil {
			break
		}
		if time.Now().After(back) {
			t.Fatalf("Ping still failing 5s after Redis restarted: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The server kept no data; the store works on the new one.
	seed(t, s)
	if _, err := s.KeyByUID(ctxFor(t, time.Second), k.UID); !errors.Is(err, keys.ErrNotFound) {
		t.Errorf("KeyByUID of a key the restarted server never saw: %v, want ErrNotFound", err)
	}
	if _, err := s.Keys(ctxFor(t, time.Second), "org"); err != nil {
		t.Errorf("Keys after restart: %v", err)
	}
	org, err = s.Org(ctxFor(t, time.Second), "org")
	if err != nil {
		t.Fatalf("Org after restart: %v", err)
	}
	watchLive(t, s, s, org)
}

// TestNoClearSecret reads every value of every Redis key the store wrote and
// checks that no clear secret is among them.
func TestNoClearSecret(t *testing.T) {
	rdb := redistest.Client(t)
	s := redisstore.New(rdb)
	ctx := ctxFor(t, 10*time.Second)
	_, first := seed(t, s)
	secrets := []string{first}
	for _, name := range []string{"a", "b", "c"} {
		k, secret := storetest.NewKey(t, "org", name, ptr(1))
		k.SealedSecret = []byte("sealed " + name)
		if err := s.CreateKey(ctx, k, -1); err != nil {
			t.Fatalf("CreateKey: %v", err)
		}
		secrets = append(secrets, secret)
	}
	if _, err := s.UpdateKey(ctx, "org", "a", keys.KeyPatch{MaxAPIRequests: keys.ChangeTo(ptr(2))}, -1); err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	if _, _, err := s.RotateKey(ctx, "org", "c", keys.Rotation{Hash: keys.HashSecret("rotated"), Sealed: []byte("sealed c2"), Grace: time.Hour, Now: time.Now()}); err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	if _, err := s.DeleteKey(ctx, "org", "b"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}

	var dump []string
	var cursor uint64
	for range 1000 {
		names, next, err := rdb.Scan(ctx, cursor, "*", 100).Result()
		if err != nil {
			t.Fatalf("SCAN: %v", err)
		}
		for _, name := range names {
			dump = append(dump, name)
			dump = append(dump, values(t, ctx, rdb, name)...)
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	if len(dump) < 10 {
		t.Fatalf("dump holds only %d strings; did the store write anything?", len(dump))
	}
	for _, v := range dump {
		for _, secret := range secrets {
			if strings.Contains(v, secret) {
				t.Errorf("Redis holds a clear secret in %q", v)
			}
		}
	}
}

// values returns every value held by the Redis key name, whatever its type.
func values(t *testing.T, ctx context.Context, rdb redis.UniversalClient, name string) []string {
	t.Helper()
	typ, err := rdb.Type(ctx, name).Result()
	if err != nil {
		t.Fatalf("TYPE %s: %v", name, err)
	}
	var out []string
	switch typ {
	case "string":
		v, err := rdb.Get(ctx, name).Result()
		if err != nil {
			t.Fatalf("GET %s: %v", name, err)
		}
		out = append(out, v)
	case "hash":
		m, err := rdb.HGetAll(ctx, name).Result()
		if err != nil {
			t.Fatalf("HGETALL %s: %v", name, err)
		}
		for f, v := range m {
			out = append(out, f, v)
		}
	case "set":
		out, err = rdb.SMembers(ctx, name).Result()
		if err != nil {
			t.Fatalf("SMEMBERS %s: %v", name, err)
		}
	case "stream":
		ms, err := rdb.XRange(ctx, name, "-", "+").Result()
		if err != nil {
			t.Fatalf("XRANGE %s: %v", name, err)
		}
		for _, m := range ms {
			for f, v := range m.Values {
				out = append(out, f, fmt.Sprint(v))
			}
		}
	case "zset":
		out, err = rdb.ZRange(ctx, name, 0, -1).Result()
		if err != nil {
			t.Fatalf("ZRANGE %s: %v", name, err)
		}
	case "list":
		out, err = rdb.LRange(ctx, name, 0, -1).Result()
		if err != nil {
			t.Fatalf("LRANGE %s: %v", name, err)
		}
	default:
		t.Fatalf("key %s has type %s, which the store never writes", name, typ)
	}
	return out
}

func ptr(v int64) *int64 { return &v }

// TestWatchPausedServer checks that the health check notices a server that
// keeps the connection open but stops answering, and that a new Watch on such
// a server fails instead of hanging.
func TestWatchPausedServer(t *testing.T) {
	srv := redistest.Start(t)
	s := redisstore.New(redistest.NewClient(t, srv.Addr()), redisstore.WithWatchHealthCheck(100*time.Millisecond))
	seed(t, s)
	org, err := s.Org(ctxFor(t, 5*time.Second), "org")
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	_, running := watchLive(t, s, s, org)

	srv.Pause()
	t.Cleanup(srv.Resume)
	select {
	case err := <-running:
		if !errors.Is(err, keys.ErrUnavailable) {
			t.Errorf("Watch on a paused server: error %v, want ErrUnavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not notice a paused server within 5s")
	}

	done := make(chan error, 1)
	go func() { done <- s.Watch(t.Context(), func(keys.Revocation) {}) }()
	select {
	case err := <-done:
		if !errors.Is(err, keys.ErrUnavailable) {
			t.Errorf("new Watch on a paused server: error %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("new Watch on a paused server did not return within 10s")
	}
}
