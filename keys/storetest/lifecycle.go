package storetest

// The key lifecycle and rate-limit cases of the suite: partial updates of
// keys and plans, rotation with a grace period, last-used times.

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keygate/keygate/keys"
)

func timePtr(t time.Time) *time.Time { return &t }

func wantInvalid(t *testing.T, what string, err error, field string) {
	t.Helper()
	var inv *keys.InvalidError
	if !errors.As(err, &inv) || inv.Field != field {
		t.Errorf("%s: error %v, want *keys.InvalidError naming %q", what, err, field)
	}
}

func mustKeyByName(t *testing.T, s keys.Store, orgID, name string) keys.Key {
	t.Helper()
	k, err := s.KeyByName(ctxFor(t), orgID, name)
	if err != nil {
		t.Fatalf("KeyByName(%s, %q): %v", orgID, name, err)
	}
	return k
}

func wantKey(t *testing.T, what string, want, got keys.Key) {
	t.Helper()
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", what, diff)
	}
}

// testUpdateKey: every field of a key patch, alone and together; fields not
// in the patch keep their values; a bad patch changes nothing; a patch that
// leaves the maximum alone is never refused for allocation.
func testUpdateKey(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", ptr(60))
	mustCreateKey(t, s, k, 100)

	rl := &keys.RateLimit{Requests: 10, Per: time.Minute, Burst: 20, Shadow: true}
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	got, err := s.UpdateKey(ctx, "org", "k", keys.KeyPatch{
		RateLimit:   keys.ChangeTo(rl),
		ExpiresAt:   keys.ChangeTo(&exp),
		Enabled:     keys.ChangeTo(false),
		Permissions: keys.ChangeTo([]keys.Permission{keys.PermPin, keys.PermRead, keys.PermPin}),
		Comment:     keys.ChangeTo("rotated by ops"),
	}, 50) // the maximum is not in the patch: no allocation check
	if err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	want := k
	want.RateLimit = &keys.RateLimit{Requests: 10, Per: time.Minute, Burst: 20, Shadow: true}
	want.ExpiresAt = timePtr(exp.UTC())
	want.Disabled = true
	want.Permissions = []keys.Permission{keys.PermRead, keys.PermPin}
	want.Comment = "rotated by ops"
	wantKey(t, "UpdateKey result", want, got)
	if got.ExpiresAt.Location() != time.UTC {
		t.Errorf("UpdateKey kept expires_at in %v, want UTC", got.ExpiresAt.Location())
	}
	rl.Requests = 99 // the store keeps its own copy
	for _, get := range []func() (keys.Key, error){
		func() (keys.Key, error) { return s.KeyByHash(ctx, k.SecretHash) },
		func() (keys.Key, error) { return s.KeyByUID(ctx, k.UID) },
		func() (keys.Key, error) { return s.KeyByName(ctx, "org", "k") },
	} {
		got, err := get()
		if err != nil {
			t.Fatalf("reading key after UpdateKey: %v", err)
		}
		wantKey(t, "key after UpdateKey", want, got)
	}

	// Clearing: nil rate limit and expiry, enabled again, no comment.
	got, err = s.UpdateKey(ctx, "org", "k", keys.KeyPatch{
		RateLimit: keys.ChangeTo[*keys.RateLimit](nil),
		ExpiresAt: keys.ChangeTo[*time.Time](nil),
		Enabled:   keys.ChangeTo(true),
		Comment:   keys.ChangeTo(""),
	}, -1)
	if err != nil {
		t.Fatalf("UpdateKey(clear): %v", err)
	}
	want.RateLimit, want.ExpiresAt, want.Disabled, want.Comment = nil, nil, false, ""
	wantKey(t, "UpdateKey(clear) result", want, got)

	// An empty patch changes nothing and succeeds.
	if got, err := s.UpdateKey(ctx, "org", "k", keys.KeyPatch{}, 0); err != nil {
		t.Errorf("UpdateKey(empty): %v", err)
	} else {
		wantKey(t, "UpdateKey(empty) result", want, got)
	}

	bad := []struct {
		field string
		patch keys.KeyPatch
	}{
		{"max_api_requests", keys.KeyPatch{MaxAPIRequests: keys.ChangeTo(ptr(-1))}},
		{"rate_limit.requests", keys.KeyPatch{RateLimit: keys.ChangeTo(&keys.RateLimit{Per: time.Second})}},
		{"rate_limit.per", keys.KeyPatch{RateLimit: keys.ChangeTo(&keys.RateLimit{Requests: 1, Per: 25 * time.Hour})}},
		{"rate_limit.burst", keys.KeyPatch{RateLimit: keys.ChangeTo(&keys.RateLimit{Requests: 1, Per: time.Second, Burst: -1})}},
		{"expires_at", keys.KeyPatch{ExpiresAt: keys.ChangeTo(timePtr(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)))}},
		{"enabled", keys.KeyPatch{Enabled: keys.Change[bool]{Set: true, Null: true}}},
		{"permissions", keys.KeyPatch{Permissions: keys.ChangeTo([]keys.Permission{})}},
		{"permissions", keys.KeyPatch{Permissions: keys.ChangeTo([]keys.Permission{"root"})}},
		{"comment", keys.KeyPatch{Comment: keys.ChangeTo(string(make([]rune, keys.MaxCommentLen+1)))}},
	}
	for _, b := range bad {
		// Each bad patch also carries a good change, which must not happen.
		b.patch.Comment = keys.ChangeTo("changed")
		if b.field == "comment" {
			b.patch.Comment = keys.ChangeTo(string(make([]rune, keys.MaxCommentLen+1)))
			b.patch.Enabled = keys.ChangeTo(false)
		}
		_, err := s.UpdateKey(ctx, "org", "k", b.patch, -1)
		wantInvalid(t, "UpdateKey(bad "+b.field+")", err, b.field)
	}
	wantKey(t, "key after refused patches", want, mustKeyByName(t, s, "org", "k"))

	_, err = s.UpdateKey(ctx, "org", "nope", keys.KeyPatch{Comment: keys.ChangeTo("x")}, -1)
	wantErr(t, "UpdateKey(unknown key)", err, keys.ErrNotFound)
	_, err = s.UpdateKey(ctx, "nobody", "k", keys.KeyPatch{Comment: keys.ChangeTo("x")}, -1)
	wantErr(t, "UpdateKey(unknown org)", err, keys.ErrNotFound)
}

// testConcurrentUpdateKey: patches of different fields racing on one key,
// and uses recorded meanwhile, lose nothing and never fail.
func testConcurrentUpdateKey(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", nil)
	mustCreateKey(t, s, k, -1)
	exp := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	rl := &keys.RateLimit{Requests: 5, Per: time.Second}
	patches := []keys.KeyPatch{
		{MaxAPIRequests: keys.ChangeTo(ptr(7))},
		{RateLimit: keys.ChangeTo(rl)},
		{ExpiresAt: keys.ChangeTo(&exp)},
		{Enabled: keys.ChangeTo(false)},
		{Permissions: keys.ChangeTo([]keys.Permission{keys.PermAdmin})},
		{Comment: keys.ChangeTo("c")},
	}
	var wg sync.WaitGroup
	for _, p := range patches {
		wg.Go(func() {
			if _, err := s.UpdateKey(ctx, "org", "k", p, 100); err != nil {
				t.Errorf("UpdateKey: %v", err)
			}
		})
	}
	used := tStore.Add(time.Minute)
	wg.Go(func() {
		for i := range 20 {
			if err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{k.Ref(): used.Add(time.Duration(i) * time.Millisecond)}); err != nil {
				t.Errorf("TouchKeys: %v", err)
				return
			}
		}
	})
	wg.Wait()
	want := k
	want.MaxAPIRequests, want.RateLimit, want.ExpiresAt, want.Disabled = ptr(7), rl, &exp, true
	want.Permissions, want.Comment = []keys.Permission{keys.PermAdmin}, "c"
	want.LastUsedAt = timePtr(used.Add(19 * time.Millisecond))
	wantKey(t, "key after racing patches", want, mustKeyByName(t, s, "org", "k"))
	if ks, err := s.Keys(ctx, "org"); err != nil || keys.Allocated(ks) != 7 {
		t.Errorf("allocated after racing patches = %d, %v; want 7", keys.Allocated(ks), err)
	}
}

func testKeyByName(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org1"))
	mustCreateOrg(t, s, newOrg("org2"))
	a, _ := NewKey(t, "org1", "same", nil)
	b, _ := NewKey(t, "org2", "same", ptr(3))
	mustCreateKey(t, s, a, -1)
	mustCreateKey(t, s, b, -1)
	wantKey(t, "KeyByName(org1)", a, mustKeyByName(t, s, "org1", "same"))
	wantKey(t, "KeyByName(org2)", b, mustKeyByName(t, s, "org2", "same"))
	_, err := s.KeyByName(ctx, "org1", "other")
	wantErr(t, "KeyByName(unknown name)", err, keys.ErrNotFound)
	_, err = s.KeyByName(ctx, "nobody", "same")
	wantErr(t, "KeyByName(unknown org)", err, keys.ErrNotFound)
	if _, err := s.DeleteKey(ctx, "org1", "same"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	_, err = s.KeyByName(ctx, "org1", "same")
	wantErr(t, "KeyByName after DeleteKey", err, keys.ErrNotFound)
}

// testLifecycleFields: a key created with an expiry, disabled and with a
// rate limit reads back as created, from every lookup; CreateKey ignores
// last_used_at and a previous secret.
func testLifecycleFields(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", nil)
	k.ExpiresAt = timePtr(time.Date(2029, 5, 6, 7, 8, 9, 0, time.UTC))
	k.Disabled = true
	k.RateLimit = &keys.RateLimit{Requests: 3, Per: time.Hour}
	k.LastUsedAt = timePtr(t0)
	k.Previous = &keys.PreviousSecret{Hash: keys.HashSecret("old"), ExpiresAt: t0.Add(100 * time.Hour)}
	mustCreateKey(t, s, k, -1)
	want := k
	want.LastUsedAt, want.Previous = nil, nil
	for name, get := range map[string]func() (keys.Key, error){
		"KeyByHash": func() (keys.Key, error) { return s.KeyByHash(ctx, k.SecretHash) },
		"KeyByUID":  func() (keys.Key, error) { return s.KeyByUID(ctx, k.UID) },
		"KeyByName": func() (keys.Key, error) { return s.KeyByName(ctx, "org", "k") },
	} {
		got, err := get()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		wantKey(t, name, want, got)
	}
	wantKeys(t, s, "org", want)
	_, err := s.KeyByHash(ctx, keys.HashSecret("old"))
	wantErr(t, "KeyByHash(previous given to CreateKey)", err, keys.ErrNotFound)

	bad, _ := NewKey(t, "org", "bad", nil)
	bad.RateLimit = &keys.RateLimit{Requests: 0, Per: time.Second}
	wantInvalid(t, "CreateKey(bad rate limit)", s.CreateKey(ctx, bad, -1), "rate_limit.requests")
	bad.RateLimit = nil
	bad.ExpiresAt = timePtr(time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC))
	wantInvalid(t, "CreateKey(bad expiry)", s.CreateKey(ctx, bad, -1), "expires_at")
	wantKeys(t, s, "org", want)
}

// testRateLimitFields: rate limits on plans and organizations are stored,
// validated and changed like their other fields.
func testRateLimitFields(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	p := keys.Plan{ID: 1, Name: "P", Period: "month",
		KeyRateLimit: &keys.RateLimit{Requests: 10, Per: time.Second},
		OrgRateLimit: &keys.RateLimit{Requests: 1000, Per: time.Minute, Burst: 50, Shadow: true}}
	if err := s.CreatePlan(ctx, p); err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	got, err := s.Plan(ctx, 1)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	if diff := cmp.Diff(p, got, cmpOpts); diff != "" {
		t.Errorf("Plan mismatch (-want +got):\n%s", diff)
	}
	badPlan := keys.Plan{ID: 2, Name: "Bad", Period: "month", OrgRateLimit: &keys.RateLimit{Requests: 1, Per: time.Millisecond}}
	wantInvalid(t, "CreatePlan(bad rate limit)", s.CreatePlan(ctx, badPlan), "org_rate_limit.per")
	_, err = s.Plan(ctx, 2)
	wantErr(t, "Plan after refused CreatePlan", err, keys.ErrNotFound)

	o := newOrg("org")
	o.RateLimit = &keys.RateLimit{Requests: 7, Per: 24 * time.Hour, Burst: 1}
	mustCreateOrg(t, s, o)
	gotOrg, err := s.Org(ctx, "org")
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	if diff := cmp.Diff(o, gotOrg, cmpOpts); diff != "" {
		t.Errorf("Org mismatch (-want +got):\n%s", diff)
	}
	gotOrg.RateLimit = &keys.RateLimit{Requests: 1, Per: 25 * time.Hour}
	wantInvalid(t, "UpdateOrg(bad rate limit)", s.UpdateOrg(ctx, &gotOrg), "rate_limit.per")
	gotOrg.RateLimit = nil
	if err := s.UpdateOrg(ctx, &gotOrg); err != nil {
		t.Fatalf("UpdateOrg(no rate limit): %v", err)
	}
	if got, _ := s.Org(ctx, "org"); got.RateLimit != nil {
		t.Errorf("UpdateOrg(nil rate limit) left %+v", got.RateLimit)
	}
	bad := newOrg("bad")
	bad.RateLimit = &keys.RateLimit{Requests: 1, Per: time.Second, Burst: keys.MaxRateCount + 1}
	wantInvalid(t, "CreateOrg(bad rate limit)", s.CreateOrg(ctx, bad), "rate_limit.burst")
	_, err = s.Org(ctx, "bad")
	wantErr(t, "Org after refused CreateOrg", err, keys.ErrNotFound)
}

func testUpdatePlan(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	p := keys.Plan{ID: 1, Name: "Free", Price: "0.00", Period: "month", MaxAPIRequests: ptr(1000), Limits: map[string]int64{"egress": 5}}
	other := keys.Plan{ID: 2, Name: "Pro", Price: "9.00", Period: "day"}
	for _, pl := range []keys.Plan{p, other} {
		if err := s.CreatePlan(ctx, pl); err != nil {
			t.Fatalf("CreatePlan: %v", err)
		}
	}
	rl := &keys.RateLimit{Requests: 10, Per: time.Second}
	got, err := s.UpdatePlan(ctx, 1, keys.PlanPatch{
		Name:         keys.ChangeTo("Free+"),
		KeyRateLimit: keys.ChangeTo(rl),
		Limits:       keys.ChangeTo(map[string]int64{"ingress": 7}),
	})
	if err != nil {
		t.Fatalf("UpdatePlan: %v", err)
	}
	want := p
	want.Name, want.KeyRateLimit, want.Limits = "Free+", &keys.RateLimit{Requests: 10, Per: time.Second}, map[string]int64{"ingress": 7}
	rl.Requests = 11
	for what, gotten := range map[string]func() (keys.Plan, error){
		"UpdatePlan result": func() (keys.Plan, error) { return got, nil },
		"Plan after it":     func() (keys.Plan, error) { return s.Plan(ctx, 1) },
	} {
		g, err := gotten()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if diff := cmp.Diff(want, g, cmpOpts); diff != "" {
			t.Errorf("%s mismatch (-want +got):\n%s", what, diff)
		}
	}

	got, err = s.UpdatePlan(ctx, 1, keys.PlanPatch{
		Price:          keys.ChangeTo("1.00"),
		MaxAPIRequests: keys.ChangeTo[*int64](nil),
		Limits:         keys.ChangeTo[map[string]int64](nil),
		KeyRateLimit:   keys.ChangeTo[*keys.RateLimit](nil),
		OrgRateLimit:   keys.ChangeTo(&keys.RateLimit{Requests: 100, Per: time.Hour, Shadow: true}),
	})
	if err != nil {
		t.Fatalf("UpdatePlan(clear): %v", err)
	}
	want.Price, want.MaxAPIRequests, want.Limits, want.KeyRateLimit = "1.00", nil, nil, nil
	want.OrgRateLimit = &keys.RateLimit{Requests: 100, Per: time.Hour, Shadow: true}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("UpdatePlan(clear) mismatch (-want +got):\n%s", diff)
	}

	bad := []struct {
		field string
		patch keys.PlanPatch
	}{
		{"name", keys.PlanPatch{Name: keys.ChangeTo("")}},
		{"price", keys.PlanPatch{Price: keys.Change[string]{Set: true, Null: true}}},
		{"max_api_requests", keys.PlanPatch{MaxAPIRequests: keys.ChangeTo(ptr(-5))}},
		{"limits", keys.PlanPatch{Limits: keys.ChangeTo(map[string]int64{"egress": -1})}},
		{"key_rate_limit.per", keys.PlanPatch{KeyRateLimit: keys.ChangeTo(&keys.RateLimit{Requests: 1})}},
		{"org_rate_limit.requests", keys.PlanPatch{OrgRateLimit: keys.ChangeTo(&keys.RateLimit{Requests: keys.MaxRateCount + 1, Per: time.Second})}},
	}
	for _, b := range bad {
		if b.field != "name" {
			b.patch.Name = keys.ChangeTo("changed")
		}
		_, err := s.UpdatePlan(ctx, 1, b.patch)
		wantInvalid(t, "UpdatePlan(bad "+b.field+")", err, b.field)
	}
	if got, _ := s.Plan(ctx, 1); !cmp.Equal(want, got, cmpOpts) {
		t.Errorf("plan after refused patches: %+v, want %+v", got, want)
	}
	if got, _ := s.Plan(ctx, 2); !cmp.Equal(other, got, cmpOpts) {
		t.Errorf("the other plan changed: %+v, want %+v", got, other)
	}
	_, err = s.UpdatePlan(ctx, 99, keys.PlanPatch{Name: keys.ChangeTo("x")})
	wantErr(t, "UpdatePlan(unknown)", err, keys.ErrNotFound)

	// Racing patches of different fields lose nothing.
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			patch := keys.PlanPatch{Limits: keys.ChangeTo(map[string]int64{"egress": 1})}
			switch i {
			case 0:
				patch = keys.PlanPatch{Name: keys.ChangeTo("raced")}
			case 1:
				patch = keys.PlanPatch{Price: keys.ChangeTo("2.00")}
			case 2:
				patch = keys.PlanPatch{MaxAPIRequests: keys.ChangeTo(ptr(5))}
			case 3:
				patch = keys.PlanPatch{KeyRateLimit: keys.ChangeTo(&keys.RateLimit{Requests: 2, Per: time.Second})}
			}
			if _, err := s.UpdatePlan(ctx, 1, patch); err != nil {
				t.Errorf("UpdatePlan #%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	want.Name, want.Price, want.MaxAPIRequests = "raced", "2.00", ptr(5)
	want.KeyRateLimit, want.Limits = &keys.RateLimit{Requests: 2, Per: time.Second}, map[string]int64{"egress": 1}
	if got, _ := s.Plan(ctx, 1); !cmp.Equal(want, got, cmpOpts) {
		t.Errorf("plan after racing patches:\n%s", cmp.Diff(want, got, cmpOpts))
	}
}

// rotate rotates the key called name to a fresh secret and returns the
// result with the secret.
func rotate(t *testing.T, s keys.Store, orgID, name string, sealed []byte, grace time.Duration) (keys.Key, time.Time, string) {
	t.Helper()
	secret, err := keys.NewSecret()
	if err != nil {
		t.Fatalf("NewSecret: %v", err)
	}
	k, until, err := s.RotateKey(ctxFor(t), orgID, name, keys.Rotation{Hash: keys.HashSecret(secret), Sealed: sealed, Grace: grace, Now: clockOf(s).Now()})
	if err != nil {
		t.Fatalf("RotateKey(%s, %q, grace %s): %v", orgID, name, grace, err)
	}
	return k, until, secret
}

// wantFound checks that KeyByHash(h) finds the key with the given uid.
func wantFound(t *testing.T, s keys.Store, what string, h keys.SecretHash, uid string) {
	t.Helper()
	k, err := s.KeyByHash(ctxFor(t), h)
	if err != nil || k.UID != uid {
		t.Errorf("%s: KeyByHash = key %q, %v; want key %q", what, k.UID, err, uid)
	}
}

func wantGone(t *testing.T, s keys.Store, what string, h keys.SecretHash) {
	t.Helper()
	_, err := s.KeyByHash(ctxFor(t), h)
	wantErr(t, what+": KeyByHash", err, keys.ErrNotFound)
}

// testRotateKey: a rotated key keeps everything but its secret; both secrets
// find it during the grace, only the new one after it.
func testRotateKey(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	clk := clockOf(s)
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", ptr(10))
	k.SealedSecret = []byte("old sealed")
	k.RateLimit = &keys.RateLimit{Requests: 1, Per: time.Second}
	k.ExpiresAt = timePtr(t0.Add(1000 * time.Hour))
	mustCreateKey(t, s, k, 10)
	if err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{k.Ref(): tStore}); err != nil {
		t.Fatalf("TouchKeys: %v", err)
	}

	now := clk.Now()
	got, until, _ := rotate(t, s, "org", "k", []byte("new sealed"), time.Hour)
	if !until.Equal(now.Add(time.Hour)) {
		t.Errorf("previous secret expires at %v, want %v", until, now.Add(time.Hour))
	}
	want := k
	want.SecretHash = got.SecretHash
	want.SealedSecret = []byte("new sealed")
	want.LastUsedAt = timePtr(tStore)
	want.Previous = &keys.PreviousSecret{Hash: k.SecretHash, Sealed: []byte("old sealed"), ExpiresAt: now.Add(time.Hour)}
	wantKey(t, "RotateKey result", want, got)
	if got.SecretHash == k.SecretHash {
		t.Fatal("RotateKey kept the old secret hash")
	}
	wantKey(t, "KeyByUID after RotateKey", want, mustKeyByName(t, s, "org", "k"))
	wantFound(t, s, "new secret", got.SecretHash, k.UID)
	wantFound(t, s, "previous secret during the grace", k.SecretHash, k.UID)
	if byOld, err := s.KeyByHash(ctx, k.SecretHash); err == nil {
		wantKey(t, "KeyByHash(previous)", want, byOld)
	}
	wantKeys(t, s, "org", want)

	// The allocation is unchanged: the key still holds its 10.
	other, _ := NewKey(t, "org", "other", ptr(1))
	wantErr(t, "CreateKey over the rotated key's allocation", s.CreateKey(ctx, other, 10), keys.ErrOverAllocated)

	clk.Add(time.Hour - time.Millisecond)
	wantFound(t, s, "previous secret 1ms before the grace ends", k.SecretHash, k.UID)
	clk.Add(time.Millisecond)
	wantGone(t, s, "previous secret when the grace ends", k.SecretHash)
	wantFound(t, s, "new secret after the grace", got.SecretHash, k.UID)

	// A later change drops the expired previous secret from the record.
	got, err := s.UpdateKey(ctx, "org", "k", keys.KeyPatch{Comment: keys.ChangeTo("after")}, -1)
	if err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	if got.Previous != nil {
		t.Errorf("UpdateKey after the grace kept previous secret %+v", got.Previous)
	}

	// Deleting a key in its grace removes both secrets.
	k2, _ := NewKey(t, "org", "k2", nil)
	mustCreateKey(t, s, k2, -1)
	r2, _, _ := rotate(t, s, "org", "k2", nil, time.Hour)
	if r2.Previous == nil || r2.Previous.Sealed != nil || r2.SealedSecret != nil {
		t.Errorf("rotation of a key without sealed secret: %+v", r2)
	}
	if _, err := s.DeleteKey(ctx, "org", "k2"); err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	wantGone(t, s, "current secret after DeleteKey", r2.SecretHash)
	wantGone(t, s, "previous secret after DeleteKey", k2.SecretHash)

	// Bad grace and unknown keys change nothing.
	before := mustKeyByName(t, s, "org", "k")
	for _, grace := range []time.Duration{-time.Second, keys.MaxRotationGrace + time.Second} {
		_, _, err := s.RotateKey(ctx, "org", "k", keys.Rotation{Hash: keys.HashSecret("x"), Grace: grace, Now: clk.Now()})
		wantInvalid(t, fmt.Sprintf("RotateKey(grace %s)", grace), err, "grace")
	}
	_, _, err = s.RotateKey(ctx, "org", "nope", keys.Rotation{Hash: keys.HashSecret("x"), Now: clk.Now()})
	wantErr(t, "RotateKey(unknown key)", err, keys.ErrNotFound)
	_, _, err = s.RotateKey(ctx, "org", "k", keys.Rotation{UID: k2.UID, Hash: keys.HashSecret("x"), Now: clk.Now()})
	wantErr(t, "RotateKey(name now names another uid)", err, keys.ErrNotFound)
	wantKey(t, "key after refused rotations", before, mustKeyByName(t, s, "org", "k"))
	wantGone(t, s, "hash of a refused rotation", keys.HashSecret("x"))
}

// testRotateTwice: a rotation during another's grace keeps only the secret
// it retires; the one retired before is refused at once.
func testRotateTwice(t *testing.T, s keys.Store) {
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", nil)
	mustCreateKey(t, s, k, -1)
	first, _, _ := rotate(t, s, "org", "k", nil, time.Hour)
	for what, h := range map[string]keys.SecretHash{"current": first.SecretHash, "previous": k.SecretHash} {
		_, _, err := s.RotateKey(ctxFor(t), "org", "k", keys.Rotation{Hash: h, Grace: time.Hour, Now: clockOf(s).Now()})
		wantInvalid(t, "RotateKey(to the "+what+" secret)", err, "secret")
	}
	wantKey(t, "key after refused rotations", first, mustKeyByName(t, s, "org", "k"))
	clockOf(s).Add(time.Minute)
	second, until, _ := rotate(t, s, "org", "k", nil, 2*time.Hour)
	wantGone(t, s, "original secret after the second rotation", k.SecretHash)
	wantFound(t, s, "first rotation's secret in the second grace", first.SecretHash, k.UID)
	wantFound(t, s, "second rotation's secret", second.SecretHash, k.UID)
	if second.Previous == nil || second.Previous.Hash != first.SecretHash || !second.Previous.ExpiresAt.Equal(until) {
		t.Errorf("previous after two rotations = %+v, want the first rotation's secret until %v", second.Previous, until)
	}
	clockOf(s).Add(2 * time.Hour)
	wantGone(t, s, "first rotation's secret after the second grace", first.SecretHash)
	wantFound(t, s, "current secret", second.SecretHash, k.UID)
}

// testRotateWithoutGrace: with no grace the old secret stops at once.
func testRotateWithoutGrace(t *testing.T, s keys.Store) {
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", nil)
	k.SealedSecret = []byte("sealed")
	mustCreateKey(t, s, k, -1)
	now := clockOf(s).Now()
	got, until, _ := rotate(t, s, "org", "k", []byte("sealed 2"), 0)
	if !until.Equal(now) || got.Previous != nil {
		t.Errorf("RotateKey(grace 0) = previous %+v until %v; want none, until %v", got.Previous, until, now)
	}
	wantGone(t, s, "old secret after a rotation without grace", k.SecretHash)
	wantFound(t, s, "new secret", got.SecretHash, k.UID)
}

// testConcurrentRotate: racing rotations all succeed one after another;
// the key ends with one of their secrets and, as previous, another's.
func testConcurrentRotate(t *testing.T, s keys.Store) {
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", nil)
	mustCreateKey(t, s, k, -1)
	const n = 5
	hashes := make(map[keys.SecretHash]bool)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			secret, _ := keys.NewSecret()
			h := keys.HashSecret(secret)
			_, _, err := s.RotateKey(ctxFor(t), "org", "k", keys.Rotation{Hash: h, Grace: time.Hour, Now: clockOf(s).Now()})
			if err != nil {
				t.Errorf("RotateKey: %v", err)
				return
			}
			mu.Lock()
			hashes[h] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	got := mustKeyByName(t, s, "org", "k")
	if !hashes[got.SecretHash] || got.Previous == nil || !hashes[got.Previous.Hash] {
		t.Fatalf("after racing rotations: current %v, previous %+v; want both among the rotations' secrets", got.SecretHash, got.Previous)
	}
	found := 0
	for h := range hashes {
		if _, err := s.KeyByHash(ctxFor(t), h); err == nil {
			found++
		}
	}
	if found != 2 {
		t.Errorf("%d of the %d rotations' secrets still find the key, want exactly 2 (current and previous)", found, n)
	}
	wantGone(t, s, "original secret", k.SecretHash)
}

// testTouchKeys: last_used_at moves forward only, to the millisecond, many
// keys at once, across organizations, skipping unknown keys.
func testTouchKeys(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org1"))
	mustCreateOrg(t, s, newOrg("org2"))
	a, _ := NewKey(t, "org1", "a", nil)
	b, _ := NewKey(t, "org1", "b", nil)
	c, _ := NewKey(t, "org2", "c", nil)
	for _, k := range []keys.Key{a, b, c} {
		mustCreateKey(t, s, k, -1)
	}
	if got := mustKeyByName(t, s, "org1", "a"); got.LastUsedAt != nil {
		t.Errorf("new key has last_used_at %v, want none", got.LastUsedAt)
	}
	ta := tStore.Add(1234567 * time.Microsecond) // sub-millisecond part is dropped
	tb := tStore.Add(2 * time.Second)
	err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{
		a.Ref(): ta,
		b.Ref(): tb,
		c.Ref(): tb,
		{OrgID: "org1", UID: "00000000-0000-4000-8000-000000000000"}: tb, // unknown
		{OrgID: "org2", UID: a.UID}:                                  tb, // wrong organization
		{OrgID: "nobody", UID: "x"}:                                  tb,
	})
	if err != nil {
		t.Fatalf("TouchKeys: %v", err)
	}
	want := map[string]time.Time{"a": ta.Truncate(time.Millisecond), "b": tb, "c": tb}
	check := func(what string) {
		t.Helper()
		for _, k := range []keys.Key{a, b, c} {
			got := mustKeyByName(t, s, k.OrgID, k.Name)
			if got.LastUsedAt == nil || !got.LastUsedAt.Equal(want[k.Name]) {
				t.Errorf("%s: key %s last used %v, want %v", what, k.Name, got.LastUsedAt, want[k.Name])
			}
			byHash, err := s.KeyByHash(ctx, k.SecretHash)
			if err != nil || !cmp.Equal(got, byHash, cmpOpts) {
				t.Errorf("%s: KeyByHash(%s) = %+v, %v; want %+v", what, k.Name, byHash, err, got)
			}
		}
		ks, err := s.Keys(ctx, "org1")
		if err != nil || len(ks) != 2 {
			t.Fatalf("Keys: %v, %v", ks, err)
		}
		for _, k := range ks {
			if k.LastUsedAt == nil || !k.LastUsedAt.Equal(want[k.Name]) {
				t.Errorf("%s: Keys lists %s last used %v, want %v", what, k.Name, k.LastUsedAt, want[k.Name])
			}
		}
	}
	check("after TouchKeys")

	// Earlier times never move it back; later ones move it forward.
	tc := tb.Add(time.Minute)
	if err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{a.Ref(): tStore, b.Ref(): tb.Add(-time.Millisecond), c.Ref(): tc}); err != nil {
		t.Fatalf("TouchKeys: %v", err)
	}
	want["c"] = tc
	check("after TouchKeys with earlier times")
	if err := s.TouchKeys(ctx, nil); err != nil {
		t.Errorf("TouchKeys(nothing): %v", err)
	}

	// Other changes keep it; deleting the key removes it.
	if _, err := s.UpdateKey(ctx, "org1", "a", keys.KeyPatch{Comment: keys.ChangeTo("x")}, -1); err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	rotate(t, s, "org1", "b", nil, 0)
	if got := mustKeyByName(t, s, "org1", "a"); got.LastUsedAt == nil || !got.LastUsedAt.Equal(want["a"]) {
		t.Errorf("UpdateKey changed last_used_at to %v, want %v", got.LastUsedAt, want["a"])
	}
	if got := mustKeyByName(t, s, "org1", "b"); got.LastUsedAt == nil || !got.LastUsedAt.Equal(want["b"]) {
		t.Errorf("RotateKey changed last_used_at to %v, want %v", got.LastUsedAt, want["b"])
	}
	deleted, err := s.DeleteKey(ctx, "org2", "c")
	if err != nil {
		t.Fatalf("DeleteKey: %v", err)
	}
	if deleted.LastUsedAt == nil || !deleted.LastUsedAt.Equal(tc) {
		t.Errorf("DeleteKey returned last_used_at %v, want %v", deleted.LastUsedAt, tc)
	}
	if err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{c.Ref(): tc.Add(time.Hour)}); err != nil {
		t.Fatalf("TouchKeys(deleted): %v", err)
	}
	again := c
	again.UID = "11111111-1111-4111-8111-111111111111"
	mustCreateKey(t, s, again, -1)
	if got := mustKeyByName(t, s, "org2", "c"); got.LastUsedAt != nil {
		t.Errorf("a key re-created under a deleted one's name has last_used_at %v, want none", got.LastUsedAt)
	}
}

// testTouchManyKeys: one TouchKeys call with the uses of 600 keys of one
// organization (more than one of the Redis store's script chunks) and of a
// few of another moves exactly the times that are later than the stored
// ones, skips the keys deleted since their use and leaves nothing of them
// behind: a key re-created with a deleted key's uid starts unused.
func testTouchManyKeys(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	mustCreateOrg(t, s, newOrg("org1"))
	mustCreateOrg(t, s, newOrg("org2"))
	var all []keys.Key
	for i := range 600 {
		k, _ := NewKey(t, "org1", fmt.Sprintf("k%03d", i), nil)
		mustCreateKey(t, s, k, -1)
		all = append(all, k)
	}
	for i := range 5 {
		k, _ := NewKey(t, "org2", fmt.Sprintf("k%03d", i), nil)
		mustCreateKey(t, s, k, -1)
		all = append(all, k)
	}
	first := map[keys.KeyRef]time.Time{}
	want := map[string]time.Time{}
	for i, k := range all {
		first[k.Ref()] = tStore.Add(time.Duration(i) * time.Millisecond)
		want[k.UID] = first[k.Ref()]
	}
	if err := s.TouchKeys(ctx, first); err != nil {
		t.Fatalf("TouchKeys: %v", err)
	}
	deleted := map[string]keys.Key{}
	for _, i := range []int{0, 255, 256, 599, 601} {
		if _, err := s.DeleteKey(ctx, all[i].OrgID, all[i].Name); err != nil {
			t.Fatalf("DeleteKey: %v", err)
		}
		deleted[all[i].UID] = all[i]
		delete(want, all[i].UID)
	}
	// Even keys get an earlier time, odd ones a later one.
	second := map[keys.KeyRef]time.Time{}
	for i, k := range all {
		d := time.Second
		if i%2 == 0 {
			d = -time.Second
		}
		second[k.Ref()] = first[k.Ref()].Add(d)
		if _, ok := want[k.UID]; ok && d > 0 {
			want[k.UID] = second[k.Ref()]
		}
	}
	if err := s.TouchKeys(ctx, second); err != nil {
		t.Fatalf("TouchKeys: %v", err)
	}
	for _, org := range []string{"org1", "org2"} {
		ks, err := s.Keys(ctx, org)
		if err != nil {
			t.Fatalf("Keys(%s): %v", org, err)
		}
		for _, k := range ks {
			if k.LastUsedAt == nil || !k.LastUsedAt.Equal(want[k.UID]) {
				t.Errorf("key %s/%s last used %v, want %v", org, k.Name, k.LastUsedAt, want[k.UID])
			}
			delete(want, k.UID)
		}
	}
	if len(want) != 0 {
		t.Errorf("%d keys not listed", len(want))
	}
	for _, k := range deleted {
		mustCreateKey(t, s, k, -1)
		if got := mustKeyByName(t, s, k.OrgID, k.Name); got.LastUsedAt != nil {
			t.Errorf("key %s re-created after its deletion has last_used_at %v, want none", k.Name, got.LastUsedAt)
		}
	}
}

// testWatchLifecycle: key updates and rotations revoke the key, plan updates
// revoke the plan.
func testWatchLifecycle(t *testing.T, s keys.Store) {
	ctx := ctxFor(t)
	if err := s.CreatePlan(ctx, keys.Plan{ID: 3, Name: "P", Period: "month"}); err != nil {
		t.Fatalf("CreatePlan: %v", err)
	}
	probe := newOrg("probe")
	mustCreateOrg(t, s, probe)
	mustCreateOrg(t, s, newOrg("org"))
	k, _ := NewKey(t, "org", "k", nil)
	mustCreateKey(t, s, k, -1)
	w := startWatch(t, s, probe)

	if _, err := s.UpdateKey(ctx, "org", "k", keys.KeyPatch{Enabled: keys.ChangeTo(false)}, -1); err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	if r := w.next(t, "org"); r.KeyUID != k.UID || r.PlanID != 0 {
		t.Errorf("UpdateKey published %+v, want the key's revocation", r)
	}
	rotate(t, s, "org", "k", nil, time.Minute)
	if r := w.next(t, "org"); r.KeyUID != k.UID {
		t.Errorf("RotateKey published %+v, want the key's revocation", r)
	}
	if _, err := s.UpdatePlan(ctx, 3, keys.PlanPatch{Name: keys.ChangeTo("Q")}); err != nil {
		t.Fatalf("UpdatePlan: %v", err)
	}
	if r := w.next(t, ""); r.PlanID != 3 || r.KeyUID != "" || r.PublishedAt.IsZero() {
		t.Errorf("UpdatePlan published %+v, want Revocation{PlanID: 3} with a publication time", r)
	}
	// Touching revokes nothing: the next revocation seen is the probe's.
	if err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{k.Ref(): tStore}); err != nil {
		t.Fatalf("TouchKeys: %v", err)
	}
	o, err := s.Org(ctx, "org")
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	if err := s.UpdateOrg(ctx, &o); err != nil {
		t.Fatalf("UpdateOrg: %v", err)
	}
	if r := w.next(t, "org"); r.KeyUID != "" {
		t.Errorf("after TouchKeys the next revocation was %+v, want UpdateOrg's", r)
	}
}
