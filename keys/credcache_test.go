package keys_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
)

// newKeys creates n keys k0… in org1 of st and returns their secrets.
func newKeys(t *testing.T, st keys.Store, n int) []string {
	t.Helper()
	var out []string
	for i := range n {
		secret, _ := keys.NewSecret()
		uid, _ := keys.NewUUID()
		k := keys.Key{UID: uid, OrgID: "org1", Name: "k" + strconv.Itoa(i), Permissions: []keys.Permission{keys.PermRead}, SecretHash: keys.HashSecret(secret)}
		if err := st.CreateKey(context.Background(), k, -1); err != nil {
			t.Fatal(err)
		}
		out = append(out, secret)
	}
	return out
}

// TestCacheEvictsLeastRecentlyUsedByBytes bounds the cache to about ten
// keys' worth of bytes: after five of ten cached keys are used again and
// five new ones cached, the five used ones are still served without a store
// read and the five unused ones are gone.
func TestCacheEvictsLeastRecentlyUsedByBytes(t *testing.T) {
	st, _, _ := setup(t)
	secrets := newKeys(t, st, 15)
	ctx := context.Background()

	probe := keys.NewAuthenticator(st, keys.AuthOptions{TTL: time.Hour})
	if _, err := probe.Authenticate(ctx, keys.Credential{Secret: secrets[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Authenticate(ctx, keys.Credential{Secret: secrets[1]}); err != nil {
		t.Fatal(err)
	}
	_, two := probe.CacheStats()
	if _, err := probe.Authenticate(ctx, keys.Credential{Secret: secrets[2]}); err != nil {
		t.Fatal(err)
	}
	_, three := probe.CacheStats()
	perKey := three - two
	limit := two + 8*perKey // ten keys

	a := keys.NewAuthenticator(st, keys.AuthOptions{TTL: time.Hour, MaxBytes: limit})
	for _, s := range secrets[:10] {
		if _, err := a.Authenticate(ctx, keys.Credential{Secret: s}); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := a.CacheStats(); n != 10 {
		t.Fatalf("cache holds %d keys within its bound, want 10", n)
	}
	for _, s := range secrets[:5] {
		if _, err := a.Authenticate(ctx, keys.Credential{Secret: s}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range secrets[10:] {
		if _, err := a.Authenticate(ctx, keys.Credential{Secret: s}); err != nil {
			t.Fatal(err)
		}
		if _, bytes := a.CacheStats(); bytes > limit {
			t.Fatalf("cache holds %d bytes, over its bound of %d", bytes, limit)
		}
	}
	reads := st.reads.Load()
	for i, s := range secrets[:5] {
		if !a.Cached(keys.Credential{Secret: s}) {
			t.Errorf("recently used key %d was evicted", i)
		}
		if _, err := a.Authenticate(ctx, keys.Credential{Secret: s}); err != nil {
			t.Fatal(err)
		}
	}
	if n := st.reads.Load() - reads; n != 0 {
		t.Errorf("recently used keys: %d store reads, want 0", n)
	}
	for i, s := range secrets[5:10] {
		if a.Cached(keys.Credential{Secret: s}) {
			t.Errorf("least recently used key %d is still cached", i+5)
		}
	}
}

// following runs a's Run and returns a channel told of each confirmation.
func following(t *testing.T, st keys.Store, opt keys.AuthOptions) (*keys.Authenticator, <-chan struct{}) {
	t.Helper()
	confirms := make(chan struct{}, 1)
	opt.OnConfirm = func() {
		select {
		case confirms <- struct{}{}:
		default:
		}
	}
	a := keys.NewAuthenticator(st, opt)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a, confirms
}

func waitConfirmed(t *testing.T, confirms <-chan struct{}) {
	t.Helper()
	for range 2 { // the first may stem from a read before the call
		select {
		case <-confirms:
		case <-time.After(5 * time.Second):
			t.Fatal("no confirmation within 5s")
		}
	}
}

// TestCacheLivesWhileConfirmed: with the change log followed, an entry is
// still served from the cache long past its TTL, and a deletion still
// reaches it at once.
func TestCacheLivesWhileConfirmed(t *testing.T) {
	inner, _, secret := setup(t)
	st := &feedStore{countingStore: inner}
	clk := &clock{now: time.Unix(1_800_000_000, 0)}
	a, confirms := following(t, st, keys.AuthOptions{TTL: 5 * time.Second, Now: clk.Now})
	ctx := context.Background()
	// What is cached before the follow's first read is not confirmed.
	waitConfirmed(t, confirms)
	clk.Add(time.Millisecond)
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	waitConfirmed(t, confirms)
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil {
		t.Fatal(err)
	}
	if n := st.reads.Load(); n != 1 {
		t.Errorf("an hour past the TTL, confirmed: %d store reads, want 1", n)
	}

	if _, err := st.DeleteKey(ctx, "org1", "k"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		_, err := a.Authenticate(ctx, keys.Credential{Secret: secret})
		if errors.Is(err, keys.ErrInvalidCredential) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deleted key still accepted after 1s: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCacheScheduledPlanSwitch: a plan change scheduled for a time is
// applied when that time comes, even though nothing in the change log says
// so and the entry is confirmed.
func TestCacheScheduledPlanSwitch(t *testing.T) {
	ctx := context.Background()
	inner := &countingStore{Store: memstore.New()}
	st := &feedStore{countingStore: inner}
	for _, id := range []int64{1, 2} {
		if err := st.CreatePlan(ctx, keys.Plan{ID: id, Name: "p" + strconv.FormatInt(id, 10), Period: "month"}); err != nil {
			t.Fatal(err)
		}
	}
	clk := &clock{now: time.Unix(1_800_000_000, 0)}
	next := int64(2)
	if err := st.CreateOrg(ctx, keys.Org{ID: "org1", Name: "o", PlanID: 1, NextPlanID: &next, NextPlanAt: clk.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	secret := newKeys(t, st, 1)[0]
	a, confirms := following(t, st, keys.AuthOptions{TTL: 5 * time.Second, Now: clk.Now})
	p, err := a.Authenticate(ctx, keys.Credential{Secret: secret})
	if err != nil || p.Plan.ID != 1 {
		t.Fatalf("before the switch: plan %d, %v; want 1", p.Plan.ID, err)
	}
	clk.Add(2 * time.Hour)
	waitConfirmed(t, confirms)
	p, err = a.Authenticate(ctx, keys.Credential{Secret: secret})
	if err != nil || p.Plan.ID != 2 {
		t.Fatalf("after the switch: plan %d, %v; want 2", p.Plan.ID, err)
	}
}

// feedStore is a countingStore that keeps its store's change log.
type feedStore struct{ *countingStore }

func (s *feedStore) FollowChanges(ctx context.Context, from string, fn func(keys.ChangeBatch)) error {
	return s.Store.(keys.ChangeFeed).FollowChanges(ctx, from, fn)
}

// TestCacheBeforeFollowKeepsItsTTL: a key cached before the follow's first
// read is not forgotten by it (a sidecar's first requests keep their entries)
// but gets no confirmation either: a change made before that read is in no
// batch, so the entry is read again after its own TTL.
func TestCacheBeforeFollowKeepsItsTTL(t *testing.T) {
	inner, _, secret := setup(t)
	st := &feedStore{countingStore: inner}
	clk := &clock{now: time.Unix(1_800_000_000, 0)}
	ctx := context.Background()
	confirms := make(chan struct{}, 1)
	a := keys.NewAuthenticator(st, keys.AuthOptions{TTL: 5 * time.Second, Now: clk.Now, OnConfirm: func() {
		select {
		case confirms <- struct{}{}:
		default:
		}
	}})
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitConfirmed(t, confirms)
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil || st.reads.Load() != 1 {
		t.Fatalf("after the follow's first read: %v, %d store reads; want the entry kept", err, st.reads.Load())
	}
	clk.Add(6 * time.Second)
	waitConfirmed(t, confirms)
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil || st.reads.Load() != 2 {
		t.Fatalf("past its own TTL: %v, %d store reads; want a second read", err, st.reads.Load())
	}
	clk.Add(time.Hour)
	waitConfirmed(t, confirms)
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: secret}); err != nil || st.reads.Load() != 2 {
		t.Fatalf("read again after the follow began, an hour on: %v, %d store reads; want it confirmed", err, st.reads.Load())
	}
}
