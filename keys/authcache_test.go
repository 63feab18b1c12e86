package keys_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
)

// countingStore counts key reads and can pretend to be unreachable.
type countingStore struct {
	keys.Store
	reads atomic.Int64
	down  atomic.Bool
}

func (s *countingStore) KeyByHash(ctx context.Context, h keys.SecretHash) (keys.Key, error) {
	s.reads.Add(1)
	if s.down.Load() {
		return keys.Key{}, fmt.Errorf("reading: %w", keys.ErrUnavailable)
	}
	return s.Store.KeyByHash(ctx, h)
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func setup(t *testing.T) (*countingStore, keys.Key, string) {
	t.Helper()
	ctx := context.Background()
	st := &countingStore{Store: memstore.New()}
	if err := st.CreatePlan(ctx, keys.Plan{ID: 1, Name: "p", Period: "month"}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateOrg(ctx, keys.Org{ID: "org1", Name: "o", PlanID: 1}); err != nil {
		t.Fatal(err)
	}
	secret, _ := keys.NewSecret()
	uid, _ := keys.NewUUID()
	k := keys.Key{UID: uid, OrgID: "org1", Name: "k", Permissions: []keys.Permission{keys.PermRead}, SecretHash: keys.HashSecret(secret)}
	if err := st.CreateKey(ctx, k, -1); err != nil {
		t.Fatal(err)
	}
	return st, k, secret
}

func TestAuthenticatorCacheAndRevocation(t *testing.T) {
	st, k, secret := setup(t)
	clk := &clock{now: time.Unix(1_800_000_000, 0)}
	a := keys.NewAuthenticator(st, keys.AuthOptions{TTL: 5 * time.Second, StaleAuth: time.Minute, Now: clk.Now})
	ctx := context.Background()

	p, err := a.Authenticate(ctx, keys.Credential{Secret: secret})
	if err != nil || p.Key.UID != k.UID || p.Org.ID != "org1" || p.Plan.ID != 1 {
		t.Fatalf("Authenticate = %+v, %v", p, err)
	}
	for range 10 {
		if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret, AccessKey: k.UID}); err != nil {
			t.Fatal(err)
		}
	}
	if n := st.reads.Load(); n != 1 {
		t.Errorf("store reads %d for 11 authentications within the TTL, want 1", n)
	}
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret, AccessKey: "other"}); !errors.Is(err, keys.ErrInvalidCredential) {
		t.Errorf("wrong access key: %v", err)
	}

	clk.Add(6 * time.Second)
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil || st.reads.Load() != 2 {
		t.Errorf("after the TTL: err %v, reads %d, want a second read", err, st.reads.Load())
	}

	// Store down: a key verified within StaleAuth is served stale.
	st.down.Store(true)
	clk.Add(10 * time.Second)
	p, err = a.Authenticate(ctx, keys.Credential{Secret: secret})
	if err != nil || !p.Stale {
		t.Errorf("stale serve: %+v %v", p, err)
	}
	clk.Add(2 * time.Minute)
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); !errors.Is(err, keys.ErrUnavailable) {
		t.Errorf("past StaleAuth with the store down: %v, want ErrUnavailable", err)
	}
	st.down.Store(false)

	// Revocation evicts at once, even within the TTL.
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DeleteKey(ctx, "org1", "k"); err != nil {
		t.Fatal(err)
	}
	a.Revoke(keys.Revocation{OrgID: "org1", KeyUID: k.UID})
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); !errors.Is(err, keys.ErrInvalidCredential) {
		t.Errorf("after revocation: %v, want ErrInvalidCredential", err)
	}
}

func TestAuthenticatorRejectsMalformedWithoutStore(t *testing.T) {
	st, _, secret := setup(t)
	a := keys.NewAuthenticator(st, keys.AuthOptions{})
	for _, s := range []string{"", "kg_short", secret[:len(secret)-1], "Bearer " + secret} {
		if _, err := a.Authenticate(context.Background(), keys.Credential{Secret: s}); !errors.Is(err, keys.ErrInvalidCredential) {
			t.Errorf("%q: %v", s, err)
		}
	}
	if n := st.reads.Load(); n != 0 {
		t.Errorf("malformed secrets caused %d store reads", n)
	}
}

func TestAuthenticatorCoalescesColdReads(t *testing.T) {
	st, _, secret := setup(t)
	a := keys.NewAuthenticator(st, keys.AuthOptions{})
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.Authenticate(context.Background(), keys.Credential{Secret: secret}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := st.reads.Load(); n > 5 {
		t.Errorf("%d store reads for 50 concurrent cold authentications", n)
	}
}

func TestAuthenticatorWatchRevokes(t *testing.T) {
	st, k, secret := setup(t)
	var lags atomic.Int64
	a := keys.NewAuthenticator(st, keys.AuthOptions{TTL: time.Hour, OnRevocation: func(time.Duration) { lags.Add(1) }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil {
		t.Fatal(err)
	}
	// Wait until the watch is live: probe with org updates until one is seen.
	deadline := time.Now().Add(5 * time.Second)
	for lags.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("watch never delivered a revocation")
		}
		o, _ := st.Org(ctx, "org1")
		_ = st.UpdateOrg(ctx, &o)
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DeleteKey(ctx, "org1", k.Name); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(time.Second)
	for {
		_, err := a.Authenticate(ctx, keys.Credential{Secret: secret})
		if errors.Is(err, keys.ErrInvalidCredential) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("deleted key still authenticates 1s later through the watch: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gatedStore holds key reads until released.
type gatedStore struct {
	keys.Store
	started chan struct{}
	release chan struct{}
}

func (s *gatedStore) KeyByHash(ctx context.Context, h keys.SecretHash) (keys.Key, error) {
	s.started <- struct{}{}
	select {
	case <-s.release:
	case <-ctx.Done():
		return keys.Key{}, fmt.Errorf("reading: %w: %w", keys.ErrUnavailable, ctx.Err())
	}
	return s.Store.KeyByHash(ctx, h)
}

// TestSharedReadSurvivesItsStarterLeaving: the first caller of a cold key
// goes away; the caller that joined its read still gets the principal.
func TestSharedReadSurvivesItsStarterLeaving(t *testing.T) {
	base, _, secret := setup(t)
	st := &gatedStore{Store: base, started: make(chan struct{}, 1), release: make(chan struct{})}
	a := keys.NewAuthenticator(st, keys.AuthOptions{})
	first, cancelFirst := context.WithCancel(context.Background())
	firstDone := make(chan error, 1)
	go func() {
		_, err := a.Authenticate(first, keys.Credential{Secret: secret})
		firstDone <- err
	}()
	<-st.started // the shared read is under way
	secondDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := a.Authenticate(ctx, keys.Credential{Secret: secret})
		secondDone <- err
	}()
	cancelFirst()
	if err := <-firstDone; !errors.Is(err, keys.ErrUnavailable) {
		t.Errorf("cancelled caller: %v, want ErrUnavailable", err)
	}
	close(st.release)
	if err := <-secondDone; err != nil {
		t.Errorf("the caller that joined the read failed with its starter: %v", err)
	}
}

// BenchmarkAuthenticateCached measures the hot path: a cached key, checked
// for its access key, expiry and enabled flag on every call.
func BenchmarkAuthenticateCached(b *testing.B) {
	st := memstore.New()
	ctx := context.Background()
	if err := st.CreatePlan(ctx, keys.Plan{ID: 1, Name: "p", Period: "month"}); err != nil {
		b.Fatal(err)
	}
	if err := st.CreateOrg(ctx, keys.Org{ID: "org1", Name: "o", PlanID: 1}); err != nil {
		b.Fatal(err)
	}
	secret, _ := keys.NewSecret()
	uid, _ := keys.NewUUID()
	if err := st.CreateKey(ctx, keys.Key{UID: uid, OrgID: "org1", Name: "k", Permissions: []keys.Permission{keys.PermRead}, SecretHash: keys.HashSecret(secret)}, -1); err != nil {
		b.Fatal(err)
	}
	a := keys.NewAuthenticator(st, keys.AuthOptions{TTL: time.Hour})
	c := keys.Credential{Secret: secret, AccessKey: uid}
	if _, err := a.Authenticate(ctx, c); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Authenticate(ctx, c); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
