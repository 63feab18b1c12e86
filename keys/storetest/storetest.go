// Package storetest is the conformance suite of keys.Store. Every
// implementation's tests call Run, so the in-memory and the Redis store are
// proved to behave alike. It tests only the interface.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keygate/keygate/keys"
)

// Run runs the conformance suite. newStore is called once per subtest and
// must return an empty store that reads the time from now (WithClock in both
// stores): the suite moves that clock to end rotation grace periods. The
// subtests run one after another, so stores returned by newStore may share
// one backend that newStore empties first.
func Run(t *testing.T, newStore func(t *testing.T, now func() time.Time) keys.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s keys.Store)
	}{
		{"Plans", testPlans},
		{"Orgs", testOrgs},
		{"FindOrgs", testFindOrgs},
		{"UpdateOrg", testUpdateOrg},
		{"ConcurrentUpdateOrg", testConcurrentUpdateOrg},
		{"InvalidInput", testInvalidInput},
		{"Keys", testKeys},
		{"Allocation", testAllocation},
		{"ConcurrentAllocation", testConcurrentAllocation},
		{"ConcurrentSameName", testConcurrentSameName},
		{"UpdateKeyMax", testUpdateKeyMax},
		{"UpdateKey", testUpdateKey},
		{"ConcurrentUpdateKey", testConcurrentUpdateKey},
		{"KeyByName", testKeyByName},
		{"LifecycleFields", testLifecycleFields},
		{"RateLimitFields", testRateLimitFields},
		{"UpdatePlan", testUpdatePlan},
		{"RotateKey", testRotateKey},
		{"RotateTwice", testRotateTwice},
		{"RotateWithoutGrace", testRotateWithoutGrace},
		{"ConcurrentRotate", testConcurrentRotate},
		{"TouchKeys", testTouchKeys},
		{"TouchManyKeys", testTouchManyKeys},
		{"DeleteKey", testDeleteKey},
		{"SetSealedSecret", testSetSealedSecret},
		{"Copies", testCopies},
		{"Watch", testWatch},
		{"WatchLifecycle", testWatchLifecycle},
		{"WatchCanceled", testWatchCanceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := &Clock{now: tStore}
			tc.fn(t, suiteStore{Store: newStore(t, clk.Now), clock: clk})
		})
	}
}

// tStore is where the store's clock starts in each subtest: an hour after
// the keys' creation time t0.
var tStore = t0.Add(time.Hour)

// Clock is a settable clock for tests. The zero value reads the zero time.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock reading now.
func NewClock(now time.Time) *Clock { return &Clock{now: now} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// suiteStore is a store under test with the clock it reads.
type suiteStore struct {
	keys.Store
	clock *Clock
}

// clockOf returns the clock of a store the suite made.
func clockOf(s keys.Store) *Clock { return s.(suiteStore).clock }

// opTimeout bounds every store call of the suite.
const opTimeout = 10 * time.Second

// waitTimeout bounds every wait for a revocation.
const waitTimeout = 5 * time.Second

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

var cmpOpts = cmp.Options{cmpopts.EquateEmpty()}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

func ptr(v int64) *int64 { return &v }

// setMax changes only the per-key maximum of a key.
func setMax(ctx context.Context, s keys.Store, orgID, name string, max *int64, allocLimit int64) (keys.Key, error) {
	return s.UpdateKey(ctx, orgID, name, keys.KeyPatch{MaxAPIRequests: keys.ChangeTo(max)}, allocLimit)
}

// NewKey returns a valid key of orgID called name with the given per-key
// maximum (nil for none), and its clear secret.
func NewKey(t testing.TB, orgID, name string, max *int64) (keys.Key, string) {
	t.Helper()
	secret, err := keys.NewSecret()
	if err != nil {
		t.Fatalf("NewSecret: %v", err)
	}
	uid, err := keys.NewUUID()
	if err != nil {
		t.Fatalf("NewUUID: %v", err)
	}
	return keys.Key{
		UID:            uid,
		OrgID:          orgID,
		Name:           name,
		Permissions:    []keys.Permission{keys.PermRead, keys.PermWrite},
		MaxAPIRequests: max,
		Comment:        "test key " + name,
		CreatedAt:      t0,
		SecretHash:     keys.HashSecret(secret),
	}, secret
}

// newOrg returns a valid organization with the given id.
func newOrg(id string) keys.Org {
	return keys.Org{ID: id, Name: "org " + id, Email: id + "@example.com", PlanID: 1, CreatedAt: t0}
}

func mustCreateOrg(t *testing.T, s keys.Store, o keys.Org) {
	t.Helper()
	if err := s.CreateOrg(ctxFor(t), o); err != nil {
		t.Fatalf("CreateOrg(%s): %v", o.ID, err)
	}
}

func mustCreateKey(t *testing.T, s keys.Store, k keys.Key, allocLimit int64) {
	t.Helper()
	if err := s.CreateKey(ctxFor(t), k, allocLimit); err != nil {
		t.Fatalf("CreateKey(%s, %q): %v", k.OrgID, k.Name, err)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: error %v, want %v", what, err, want)
	}
}

func wantKeys(t *testing.T, s keys.Store, orgID string, want ...keys.Key) {
	t.Helper()
	got, err := s.Keys(ctxFor(t), orgID)
	if err != nil {
		t.Fatalf("Keys(%s): %v", orgID, err)
	}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("Keys(%s) mismatch (-want +got):\n%s", orgID, diff)
	}
}

func testPlans(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	free := keys.Plan{ID: 1, Name: "Free", Price: "0.00", Period: "month", MaxAPIRequests: ptr(1000), Limits: map[string]int64{"egress": 5368709120}}
	pro := keys.Plan{ID: 2, Name: "Pro", Price: "10.00", Period: "30s"}
	for _, p := range []keys.Plan{pro, free} {
		if err := s.CreatePlan(ctx, p); err != nil {
			t.Fatalf("CreatePlan(%d): %v", p.ID, err)
		}
	}
	got, err := s.Plan(ctx, 1)
	if err != nil {
		t.Fatalf("Plan(1): %v", err)
	}
	if diff := cmp.Diff(free, got, cmpOpts); diff != "" {
		t.Errorf("Plan(1) mismatch (-want +got):\n%s", diff)
	}
	list, err := s.Plans(ctx)
	if err != nil {
		t.Fatalf("Plans: %v", err)
	}
	if diff := cmp.Diff([]keys.Plan{free, pro}, list, cmpOpts); diff != "" {
		t.Errorf("Plans mismatch (-want +got):\n%s", diff)
	}
	wantErr(t, "CreatePlan(duplicate id)", s.CreatePlan(ctx, keys.Plan{ID: 1, Name: "Other"}), keys.ErrConflict)
	if got, _ := s.Plan(ctx, 1); got.Name != "Free" {
		t.Errorf("duplicate CreatePlan overwrote the plan: name %q", got.Name)
	}
	_, err = s.Plan(ctx, 99)
	wantErr(t, "Plan(unknown)", err, keys.ErrNotFound)
}

func testOrgs(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	if list, err := s.Orgs(ctx); err != nil || len(list) != 0 {
		t.Fatalf("Orgs of an empty store = %v, %v; want none", list, err)
	}
	partner := newOrg("p-partner")
	partner.Partner = true
	alice := newOrg("b-alice")
	alice.Username, alice.PasswordHash = "alice", "$argon2id$v=19$m=65536,t=1,p=4$c2FsdA$aGFzaA"
	alice.MaxAPIRequests = ptr(500)
	sub1 := newOrg("c-sub1")
	sub1.PartnerID = partner.ID
	sub2 := newOrg("a-sub2")
	sub2.PartnerID = partner.ID
	sub2.NextPlanID = ptr(2)
	for _, o := range []keys.Org{partner, alice, sub1, sub2} {
		mustCreateOrg(t, s, o)
	}

	got, err := s.Org(ctx, alice.ID)
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	if diff := cmp.Diff(alice, got, cmpOpts); diff != "" {
		t.Errorf("Org mismatch (-want +got):\n%s", diff)
	}
	_, err = s.Org(ctx, "nobody")
	wantErr(t, "Org(unknown)", err, keys.ErrNotFound)

	dup := newOrg(alice.ID)
	wantErr(t, "CreateOrg(duplicate id)", s.CreateOrg(ctx, dup), keys.ErrConflict)
	if got, _ := s.Org(ctx, alice.ID); got.Username != "alice" {
		t.Errorf("duplicate CreateOrg overwrote the organization: %+v", got)
	}
	sameLogin := newOrg("d-other")
	sameLogin.Username = "alice"
	wantErr(t, "CreateOrg(duplicate username)", s.CreateOrg(ctx, sameLogin), keys.ErrConflict)
	_, err = s.Org(ctx, sameLogin.ID)
	wantErr(t, "Org after refused CreateOrg", err, keys.ErrNotFound)

	got, err = s.OrgByUsername(ctx, "alice")
	if err != nil {
		t.Fatalf("OrgByUsername: %v", err)
	}
	if diff := cmp.Diff(alice, got, cmpOpts); diff != "" {
		t.Errorf("OrgByUsername mismatch (-want +got):\n%s", diff)
	}
	_, err = s.OrgByUsername(ctx, "bob")
	wantErr(t, "OrgByUsername(unknown)", err, keys.ErrNotFound)

	list, err := s.Orgs(ctx)
	if err != nil {
		t.Fatalf("Orgs: %v", err)
	}
	if diff := cmp.Diff([]keys.Org{sub2, alice, sub1, partner}, list, cmpOpts); diff != "" {
		t.Errorf("Orgs mismatch (-want +got):\n%s", diff)
	}
	subs, err := s.SubOrgs(ctx, partner.ID)
	if err != nil {
		t.Fatalf("SubOrgs: %v", err)
	}
	if diff := cmp.Diff([]keys.Org{sub2, sub1}, subs, cmpOpts); diff != "" {
		t.Errorf("SubOrgs mismatch (-want +got):\n%s", diff)
	}
	if subs, err := s.SubOrgs(ctx, alice.ID); err != nil || len(subs) != 0 {
		t.Errorf("SubOrgs(not a partner) = %v, %v; want none", subs, err)
	}
}

func testUpdateOrg(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	partner := newOrg("partner")
	o := newOrg("org")
	o.Username = "login"
	o.PartnerID = partner.ID
	mustCreateOrg(t, s, partner)
	mustCreateOrg(t, s, o)

	o.Name, o.PlanID, o.Unlimited, o.EmailVerified = "renamed", 2, true, true
	o.MaxAPIRequests, o.NextPlanID = ptr(42), ptr(3)
	o.PasswordHash = "new hash"
	if err := s.UpdateOrg(ctx, &o); err != nil {
		t.Fatalf("UpdateOrg: %v", err)
	}
	if o.Revision != 1 {
		t.Errorf("UpdateOrg left Revision %d, want 1", o.Revision)
	}
	got, err := s.Org(ctx, o.ID)
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	if diff := cmp.Diff(o, got, cmpOpts); diff != "" {
		t.Errorf("Org after UpdateOrg mismatch (-want +got):\n%s", diff)
	}
	if got, err := s.OrgByUsername(ctx, "login"); err != nil || got.Name != "renamed" {
		t.Errorf("OrgByUsername after UpdateOrg = %+v, %v", got, err)
	}

	// Moving the organization away from its partner updates SubOrgs.
	o.PartnerID = ""
	if err := s.UpdateOrg(ctx, &o); err != nil {
		t.Fatalf("UpdateOrg(no partner): %v", err)
	}
	if subs, err := s.SubOrgs(ctx, partner.ID); err != nil || len(subs) != 0 {
		t.Errorf("SubOrgs after the partner was removed = %v, %v; want none", subs, err)
	}

	changed := o
	changed.Username = "other"
	var inv *keys.InvalidError
	if err := s.UpdateOrg(ctx, &changed); !errors.As(err, &inv) {
		t.Errorf("UpdateOrg(changed username): error %v, want *keys.InvalidError", err)
	}
	nobody := newOrg("nobody")
	wantErr(t, "UpdateOrg(unknown)", s.UpdateOrg(ctx, &nobody), keys.ErrNotFound)

	// A copy read before another change is refused, and changes nothing.
	stale := o
	stale.Revision--
	stale.Name = "stale"
	wantErr(t, "UpdateOrg(stale revision)", s.UpdateOrg(ctx, &stale), keys.ErrConflict)
	if got, _ := s.Org(ctx, o.ID); got.Name != "renamed" || got.Revision != o.Revision {
		t.Errorf("after a refused stale update: %+v", got)
	}
	_, err = s.Org(ctx, "nobody")
	wantErr(t, "Org after UpdateOrg(unknown)", err, keys.ErrNotFound)
}

// testConcurrentUpdateOrg: read-modify-write cycles racing on one
// organization, each retrying on ErrConflict, lose no change.
func testConcurrentUpdateOrg(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	o := newOrg("org")
	o.MaxAPIRequests = ptr(0)
	mustCreateOrg(t, s, o)
	const writers = 10
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 { // bounded retries
				cur, err := s.Org(ctx, o.ID)
				if err != nil {
					t.Errorf("Org: %v", err)
					return
				}
				*cur.MaxAPIRequests++
				err = s.UpdateOrg(ctx, &cur)
				if err == nil {
					return
				}
				if !errors.Is(err, keys.ErrConflict) {
					t.Errorf("UpdateOrg: %v", err)
					return
				}
			}
			t.Error("UpdateOrg kept conflicting")
		}()
	}
	wg.Wait()
	got, err := s.Org(ctx, o.ID)
	if err != nil || got.MaxAPIRequests == nil || *got.MaxAPIRequests != writers || got.Revision != writers {
		t.Errorf("after %d racing increments: %+v, %v; want max %d and revision %d", writers, got, err, writers, writers)
	}
}

func testInvalidInput(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	noName, _ := NewKey(t, "org", "", nil)
	noUID, _ := NewKey(t, "org", "k", nil)
	noUID.UID = ""
	negative, _ := NewKey(t, "org", "k", ptr(-1))
	tests := []struct {
		name string
		err  error
	}{
		{"org without id", s.CreateOrg(ctx, newOrg(""))},
		{"org id with braces", s.CreateOrg(ctx, newOrg("a{b}"))},
		{"key without name", s.CreateKey(ctx, noName, -1)},
		{"key without uid", s.CreateKey(ctx, noUID, -1)},
		{"key with negative max", s.CreateKey(ctx, negative, -1)},
	}
	for _, tc := range tests {
		var inv *keys.InvalidError
		if !errors.As(tc.err, &inv) {
			t.Errorf("%s: error %v, want *keys.InvalidError", tc.name, tc.err)
		}
	}
	wantKeys(t, s, "org")
}

func testKeys(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org1"))
	mustCreateOrg(t, s, newOrg("org2"))

	kb, _ := NewKey(t, "org1", "b", ptr(10))
	kb.CreatedAt = t0.Add(2 * time.Second)
	kc, _ := NewKey(t, "org1", "c", nil)
	kc.CreatedAt = t0.Add(time.Second)
	kc.Permissions = []keys.Permission{keys.PermAdmin}
	ka, _ := NewKey(t, "org1", "a", nil)
	ka.CreatedAt = t0.Add(2 * time.Second)
	ka.SealedSecret = []byte("sealed")
	for _, k := range []keys.Key{kb, kc, ka} {
		mustCreateKey(t, s, k, -1)
	}

	got, err := s.KeyByHash(ctx, kb.SecretHash)
	if err != nil {
		t.Fatalf("KeyByHash: %v", err)
	}
	if diff := cmp.Diff(kb, got, cmpOpts); diff != "" {
		t.Errorf("KeyByHash mismatch (-want +got):\n%s", diff)
	}
	got, err = s.KeyByUID(ctx, ka.UID)
	if err != nil {
		t.Fatalf("KeyByUID: %v", err)
	}
	if diff := cmp.Diff(ka, got, cmpOpts); diff != "" {
		t.Errorf("KeyByUID mismatch (-want +got):\n%s", diff)
	}
	_, err = s.KeyByHash(ctx, keys.HashSecret("kg_unknown"))
	wantErr(t, "KeyByHash(unknown)", err, keys.ErrNotFound)
	_, err = s.KeyByUID(ctx, "00000000-0000-4000-8000-000000000000")
	wantErr(t, "KeyByUID(unknown)", err, keys.ErrNotFound)

	// Ordered by creation time, then name.
	wantKeys(t, s, "org1", kc, ka, kb)

	dup, _ := NewKey(t, "org1", "b", nil)
	wantErr(t, "CreateKey(duplicate name)", s.CreateKey(ctx, dup, -1), keys.ErrConflict)
	_, err = s.KeyByHash(ctx, dup.SecretHash)
	wantErr(t, "KeyByHash of a refused key", err, keys.ErrNotFound)

	other, _ := NewKey(t, "org2", "b", nil)
	mustCreateKey(t, s, other, -1)
	wantKeys(t, s, "org2", other)
	wantKeys(t, s, "org1", kc, ka, kb)

	orphan, _ := NewKey(t, "nobody", "k", nil)
	wantErr(t, "CreateKey(unknown org)", s.CreateKey(ctx, orphan, -1), keys.ErrNotFound)
	_, err = s.KeyByUID(ctx, orphan.UID)
	wantErr(t, "KeyByUID of a refused key", err, keys.ErrNotFound)
	wantKeys(t, s, "nobody")
}

func testAllocation(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	k60, _ := NewKey(t, "org", "k60", ptr(60))
	k60.CreatedAt = t0
	mustCreateKey(t, s, k60, 100)
	free, _ := NewKey(t, "org", "free", nil)
	free.CreatedAt = t0.Add(time.Second)
	mustCreateKey(t, s, free, 100)

	k50, _ := NewKey(t, "org", "k50", ptr(50))
	wantErr(t, "CreateKey(60+50 > 100)", s.CreateKey(ctx, k50, 100), keys.ErrOverAllocated)
	wantKeys(t, s, "org", k60, free)
	_, err := s.KeyByHash(ctx, k50.SecretHash)
	wantErr(t, "KeyByHash of the refused key", err, keys.ErrNotFound)
	_, err = s.KeyByUID(ctx, k50.UID)
	wantErr(t, "KeyByUID of the refused key", err, keys.ErrNotFound)

	k40, _ := NewKey(t, "org", "k40", ptr(40))
	k40.CreatedAt = t0.Add(2 * time.Second)
	mustCreateKey(t, s, k40, 100) // exactly the limit
	k0, _ := NewKey(t, "org", "k0", ptr(0))
	k0.CreatedAt = t0.Add(3 * time.Second)
	mustCreateKey(t, s, k0, 100)
	k1, _ := NewKey(t, "org", "k1", ptr(1))
	wantErr(t, "CreateKey(101 > 100)", s.CreateKey(ctx, k1, 100), keys.ErrOverAllocated)

	// A negative limit means no check.
	big, _ := NewKey(t, "org", "big", ptr(1_000_000))
	big.CreatedAt = t0.Add(4 * time.Second)
	mustCreateKey(t, s, big, -1)
	wantKeys(t, s, "org", k60, free, k40, k0, big)
}

func testConcurrentAllocation(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		k, _ := NewKey(t, "org", fmt.Sprintf("k%02d", i), ptr(10))
		wg.Go(func() { errs[i] = s.CreateKey(ctx, k, 100) })
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, keys.ErrOverAllocated):
			t.Errorf("CreateKey #%d: %v, want nil or ErrOverAllocated", i, err)
		}
	}
	if ok != 10 {
		t.Errorf("%d of %d concurrent CreateKey calls succeeded, want exactly 10", ok, n)
	}
	ks, err := s.Keys(ctx, "org")
	if err != nil {
		t.Fatalf("Keys: %v", err)
	}
	if len(ks) != 10 || keys.Allocated(ks) != 100 {
		t.Errorf("after concurrent creates: %d keys allocating %d, want 10 allocating 100", len(ks), keys.Allocated(ks))
	}
}

func testConcurrentSameName(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	const n = 10
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		k, _ := NewKey(t, "org", "same", nil)
		wg.Go(func() { errs[i] = s.CreateKey(ctx, k, -1) })
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, keys.ErrConflict):
			t.Errorf("CreateKey #%d: %v, want nil or ErrConflict", i, err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d concurrent creates of one name succeeded, want exactly 1", ok, n)
	}
	if ks, err := s.Keys(ctx, "org"); err != nil || len(ks) != 1 {
		t.Errorf("Keys after concurrent creates of one name = %d keys, %v; want 1", len(ks), err)
	}
}

// testUpdateKeyMax: a patch of the maximum alone follows the allocation rule.
func testUpdateKeyMax(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	k1, _ := NewKey(t, "org", "k1", ptr(60))
	k2, _ := NewKey(t, "org", "k2", ptr(30))
	k2.CreatedAt = t0.Add(time.Second)
	mustCreateKey(t, s, k1, 100)
	mustCreateKey(t, s, k2, 100)

	_, err := setMax(ctx, s, "org", "k2", ptr(50), 100)
	wantErr(t, "UpdateKey(max 60+50 > 100)", err, keys.ErrOverAllocated)
	wantKeys(t, s, "org", k1, k2)

	got, err := setMax(ctx, s, "org", "k2", ptr(40), 100)
	if err != nil {
		t.Fatalf("UpdateKey(max 40): %v", err)
	}
	k2.MaxAPIRequests = ptr(40)
	if diff := cmp.Diff(k2, got, cmpOpts); diff != "" {
		t.Errorf("UpdateKey(max) result mismatch (-want +got):\n%s", diff)
	}
	if got, err := s.KeyByHash(ctx, k2.SecretHash); err != nil || got.KeyMax() != 40 {
		t.Errorf("KeyByHash after UpdateKey(max): max %d, %v; want 40", got.KeyMax(), err)
	}

	// Removing a maximum frees its share of the allocation.
	got, err = setMax(ctx, s, "org", "k1", nil, 100)
	if err != nil {
		t.Fatalf("UpdateKey(max nil): %v", err)
	}
	if got.MaxAPIRequests != nil {
		t.Errorf("UpdateKey(max nil) returned max %d, want none", *got.MaxAPIRequests)
	}
	if _, err := setMax(ctx, s, "org", "k2", ptr(100), 100); err != nil {
		t.Errorf("UpdateKey(max 100) with the other key unlimited: %v", err)
	}
	if _, err := setMax(ctx, s, "org", "k1", ptr(1), 100); !errors.Is(err, keys.ErrOverAllocated) {
		t.Errorf("UpdateKey(max k1, 1) with k2 at 100: error %v, want ErrOverAllocated", err)
	}
	if _, err := setMax(ctx, s, "org", "k1", ptr(1000), -1); err != nil {
		t.Errorf("UpdateKey(max) with no limit: %v", err)
	}
	ks, err := s.Keys(ctx, "org")
	if err != nil {
		t.Fatalf("Keys: %v", err)
	}
	if a := keys.Allocated(ks); a != 1100 {
		t.Errorf("allocated %d, want 1100", a)
	}
	// A key created afterwards is checked against the new maxima.
	k3, _ := NewKey(t, "org", "k3", ptr(1))
	wantErr(t, "CreateKey after UpdateKey(max)", s.CreateKey(ctx, k3, 1100), keys.ErrOverAllocated)

	_, err = setMax(ctx, s, "org", "nope", ptr(1), -1)
	wantErr(t, "UpdateKey(max unknown key)", err, keys.ErrNotFound)
	_, err = setMax(ctx, s, "nobody", "k1", ptr(1), -1)
	wantErr(t, "UpdateKey(max unknown org)", err, keys.ErrNotFound)
}

func testDeleteKey(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", ptr(100))
	k.SealedSecret = []byte{1, 2, 3}
	keep, _ := NewKey(t, "org", "keep", nil)
	mustCreateKey(t, s, k, 100)
	mustCreateKey(t, s, keep, 100)

	got, err := s.DeleteKey(ctx, "org", "k")
	if err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if diff := cmp.Diff(k, got, cmpOpts); diff != "" {
		t.Errorf("DeleteKey result mismatch (-want +got):\n%s", diff)
	}
	_, err = s.KeyByHash(ctx, k.SecretHash)
	wantErr(t, "KeyByHash after DeleteKey", err, keys.ErrNotFound)
	_, err = s.KeyByUID(ctx, k.UID)
	wantErr(t, "KeyByUID after DeleteKey", err, keys.ErrNotFound)
	wantErr(t, "SetSealedSecret after DeleteKey", s.SetSealedSecret(ctx, k.UID, []byte{9}), keys.ErrNotFound)
	wantKeys(t, s, "org", keep)

	// The name and the allocation are free again.
	again, _ := NewKey(t, "org", "k", ptr(100))
	mustCreateKey(t, s, again, 100)
	wantKeys(t, s, "org", again, keep)

	_, err = s.DeleteKey(ctx, "org", "nope")
	wantErr(t, "DeleteKey(unknown name)", err, keys.ErrNotFound)
	_, err = s.DeleteKey(ctx, "nobody", "k")
	wantErr(t, "DeleteKey(unknown org)", err, keys.ErrNotFound)
	if _, err := s.DeleteKey(ctx, "org", "keep"); err != nil {
		t.Fatalf("DeleteKey(keep): %v", err)
	}
	_, err = s.DeleteKey(ctx, "org", "keep")
	wantErr(t, "DeleteKey twice", err, keys.ErrNotFound)
}

func testSetSealedSecret(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", ptr(5))
	k.SealedSecret = []byte("old ciphertext")
	mustCreateKey(t, s, k, -1)

	if err := s.SetSealedSecret(ctx, k.UID, []byte("new ciphertext")); err != nil {
		t.Fatalf("SetSealedSecret: %v", err)
	}
	k.SealedSecret = []byte("new ciphertext")
	for _, get := range []func() (keys.Key, error){
		func() (keys.Key, error) { return s.KeyByUID(ctx, k.UID) },
		func() (keys.Key, error) { return s.KeyByHash(ctx, k.SecretHash) },
	} {
		got, err := get()
		if err != nil {
			t.Fatalf("reading key: %v", err)
		}
		if diff := cmp.Diff(k, got, cmpOpts); diff != "" {
			t.Errorf("key after SetSealedSecret mismatch (-want +got):\n%s", diff)
		}
	}
	if err := s.SetSealedSecret(ctx, k.UID, nil); err != nil {
		t.Fatalf("SetSealedSecret(nil): %v", err)
	}
	if got, err := s.KeyByUID(ctx, k.UID); err != nil || len(got.SealedSecret) != 0 {
		t.Errorf("SetSealedSecret(nil) left %q, %v", got.SealedSecret, err)
	}
	wantErr(t, "SetSealedSecret(unknown)", s.SetSealedSecret(ctx, "nope", []byte{1}), keys.ErrNotFound)
}

// testCopies checks that no slice, map or pointer is shared between the
// store and its callers, in either direction.
func testCopies(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	limits := map[string]int64{"egress": 1}
	p := keys.Plan{ID: 1, Name: "P", Period: "month", MaxAPIRequests: ptr(10), Limits: limits}
	if err := s.CreatePlan(ctx, p); err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	limits["egress"] = 2
	*p.MaxAPIRequests = 11
	got, err := s.Plan(ctx, 1)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	got.Limits["egress"] = 3
	*got.MaxAPIRequests = 12
	if got, _ := s.Plan(ctx, 1); got.Limits["egress"] != 1 || *got.MaxAPIRequests != 10 {
		t.Errorf("plan changed through a caller's map or pointer: %+v", got)
	}
	if list, err := s.Plans(ctx); err == nil && len(list) == 1 {
		list[0].Limits["egress"] = 4
	}
	if got, _ := s.Plan(ctx, 1); got.Limits["egress"] != 1 {
		t.Errorf("plan changed through the map of a listed plan: %+v", got)
	}

	o := newOrg("org")
	o.MaxAPIRequests = ptr(100)
	mustCreateOrg(t, s, o)
	*o.MaxAPIRequests = 101
	if list, err := s.Orgs(ctx); err == nil && len(list) == 1 {
		*list[0].MaxAPIRequests = 102
	}
	if got, _ := s.Org(ctx, "org"); got.MaxAPIRequests == nil || *got.MaxAPIRequests != 100 {
		t.Errorf("organization changed through a caller's pointer: %+v", got)
	}

	k, _ := NewKey(t, "org", "k", ptr(10))
	k.SealedSecret = []byte("abc")
	mustCreateKey(t, s, k, -1)
	k.Permissions[0] = keys.PermAdmin
	k.SealedSecret[0] = 'X'
	*k.MaxAPIRequests = 11
	gk, err := s.KeyByUID(ctx, k.UID)
	if err != nil {
		t.Fatalf("KeyByUID: %v", err)
	}
	gk.Permissions[0] = keys.PermAdmin
	gk.SealedSecret[0] = 'Y'
	*gk.MaxAPIRequests = 12
	if list, err := s.Keys(ctx, "org"); err == nil && len(list) == 1 {
		list[0].Permissions[0] = keys.PermAdmin
		list[0].SealedSecret[0] = 'Z'
	}
	gk, err = s.KeyByHash(ctx, k.SecretHash)
	if err != nil {
		t.Fatalf("KeyByHash: %v", err)
	}
	if gk.Permissions[0] != keys.PermRead || string(gk.SealedSecret) != "abc" || gk.KeyMax() != 10 {
		t.Errorf("key changed through a caller's slice or pointer: permissions %v, sealed %q, max %d",
			gk.Permissions, gk.SealedSecret, gk.KeyMax())
	}
	sealed := []byte("def")
	if err := s.SetSealedSecret(ctx, k.UID, sealed); err != nil {
		t.Fatalf("SetSealedSecret: %v", err)
	}
	sealed[0] = 'X'
	if gk, _ := s.KeyByUID(ctx, k.UID); string(gk.SealedSecret) != "def" {
		t.Errorf("sealed secret changed through the caller's slice: %q", gk.SealedSecret)
	}

	// Rate limits and times are copied too.
	rl := &keys.RateLimit{Requests: 1, Per: time.Second}
	exp := t0.Add(time.Hour)
	k2, _ := NewKey(t, "org", "k2", nil)
	k2.RateLimit, k2.ExpiresAt = rl, &exp
	mustCreateKey(t, s, k2, -1)
	rl.Requests, exp = 2, t0
	gk, err = s.KeyByUID(ctx, k2.UID)
	if err != nil || gk.RateLimit == nil || gk.ExpiresAt == nil {
		t.Fatalf("KeyByUID: %+v, %v", gk, err)
	}
	gk.RateLimit.Requests, *gk.ExpiresAt = 3, t0
	if gk, _ := s.KeyByName(ctx, "org", "k2"); gk.RateLimit.Requests != 1 || !gk.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Errorf("key changed through a caller's rate limit or expiry: %+v, %v", gk.RateLimit, gk.ExpiresAt)
	}
	prl := &keys.RateLimit{Requests: 5, Per: time.Minute}
	up, err := s.UpdatePlan(ctx, 1, keys.PlanPatch{OrgRateLimit: keys.ChangeTo(prl)})
	if err != nil {
		t.Fatalf("UpdatePlan: %v", err)
	}
	prl.Requests, up.OrgRateLimit.Requests = 6, 7
	if got, _ := s.Plan(ctx, 1); got.OrgRateLimit == nil || got.OrgRateLimit.Requests != 5 {
		t.Errorf("plan changed through a caller's rate limit: %+v", got.OrgRateLimit)
	}
}

// watch is a running Watch whose revocations arrive on ch.
type watch struct {
	ch     chan keys.Revocation
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
}

// stop ends the watch and waits for Watch to return; it returns what Watch
// returned.
func (w *watch) stop(t *testing.T) error {
	t.Helper()
	w.cancel()
	select {
	case <-w.done:
		return w.err
	case <-time.After(waitTimeout):
		t.Fatalf("Watch did not return within %s of its context's end", waitTimeout)
		return nil
	}
}

// startWatch starts Watch on s and returns once it is live: it changes the
// probe organization (which must exist) until the watcher reports that
// change, so the test never relies on a sleep. The watcher's fn also reads
// from the store, to prove a callback may call back into it. The watch is
// stopped, and must return, when the test ends.
func startWatch(t *testing.T, s keys.Store, probe keys.Org) *watch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watch{ch: make(chan keys.Revocation, 64), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.err = s.Watch(ctx, func(r keys.Revocation) {
			rctx, rcancel := context.WithTimeout(ctx, opTimeout)
			_, _ = s.Org(rctx, r.OrgID)
			rcancel()
			select {
			case w.ch <- r:
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(func() { _ = w.stop(t) })

	deadline := time.Now().Add(waitTimeout)
	for attempt := 1; ; attempt++ {
		probe, err := s.Org(ctxFor(t), probe.ID)
		if err != nil {
			t.Fatalf("Org(probe): %v", err)
		}
		if err := s.UpdateOrg(ctxFor(t), &probe); err != nil {
			t.Fatalf("UpdateOrg(probe): %v", err)
		}
		timer := time.NewTimer(50 * time.Millisecond)
		select {
		case r := <-w.ch:
			timer.Stop()
			if r.OrgID == probe.ID {
				return w
			}
		case <-w.done:
			timer.Stop()
			t.Fatalf("Watch returned before it was live: %v", w.err)
		case <-timer.C:
		}
		if time.Now().After(deadline) {
			t.Fatalf("watcher did not see a probe revocation after %d attempts in %s", attempt, waitTimeout)
		}
	}
}

// next returns the next revocation of orgID, skipping the probes of other
// organizations.
func (w *watch) next(t *testing.T, orgID string) keys.Revocation {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		select {
		case r := <-w.ch:
			if r.OrgID == orgID {
				return r
			}
		case <-w.done:
			t.Fatalf("Watch returned early: %v", w.err)
		case <-timer.C:
			t.Fatalf("no revocation of %s within %s", orgID, waitTimeout)
		}
	}
}

func testWatch(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	probe := newOrg("probe")
	mustCreateOrg(t, s, probe)
	mustCreateOrg(t, s, newOrg("org"))
	k1, _ := NewKey(t, "org", "k1", ptr(10))
	k2, _ := NewKey(t, "org", "k2", nil)
	mustCreateKey(t, s, k1, -1)
	mustCreateKey(t, s, k2, -1)

	w1 := startWatch(t, s, probe)
	w2 := startWatch(t, s, probe)

	check := func(what string, r keys.Revocation, wantUID string) {
		t.Helper()
		if r.OrgID != "org" || r.KeyUID != wantUID || r.PublishedAt.IsZero() {
			t.Errorf("%s: revocation %+v, want org %q, key %q and a publication time", what, r, "org", wantUID)
		}
	}

	if _, err := setMax(ctx, s, "org", "k1", ptr(20), -1); err != nil {
		t.Fatalf("UpdateKey(max): %v", err)
	}
	check("UpdateKey(max)", w1.next(t, "org"), k1.UID)
	check("UpdateKey(max) (second watcher)", w2.next(t, "org"), k1.UID)

	if _, err := s.DeleteKey(ctx, "org", "k2"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	check("DeleteKey", w1.next(t, "org"), k2.UID)
	check("DeleteKey (second watcher)", w2.next(t, "org"), k2.UID)

	o := newOrg("org")
	o.Name = "renamed"
	if err := s.UpdateOrg(ctx, &o); err != nil {
		t.Fatalf("UpdateOrg: %v", err)
	}
	check("UpdateOrg", w1.next(t, "org"), "")
	check("UpdateOrg (second watcher)", w2.next(t, "org"), "")
}

func testWatchCanceled(t *testing.T, s keys.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, func(keys.Revocation) {}) }()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("Watch with a canceled context returned nil, want an error")
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Watch with a canceled context did not return within %s", waitTimeout)
	}

	probe := newOrg("probe")
	mustCreateOrg(t, s, probe)
	w := startWatch(t, s, probe)
	if err := w.stop(t); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch after cancel returned %v, want context.Canceled", err)
	}
}
