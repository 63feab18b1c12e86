package keys_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
)

// lifecycleSetup is setup with a store and an authenticator sharing one
// clock, and a cache TTL long enough that only the lifecycle checks, never
// the cache's expiry, can refuse a cached key.
func lifecycleSetup(t *testing.T, opt keys.AuthOptions) (*countingStore, *keys.Authenticator, *clock, keys.Key, string) {
	t.Helper()
	clk := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	ctx := context.Background()
	st := &countingStore{Store: memstore.New(memstore.WithClock(clk.Now))}
	if err := st.CreatePlan(ctx, keys.Plan{ID: 1, Name: "p", Period: "month"}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateOrg(ctx, keys.Org{ID: "org1", Name: "o", PlanID: 1}); err != nil {
		t.Fatal(err)
	}
	secret, _ := keys.NewSecret()
	k := keys.Key{UID: uid1, OrgID: "org1", Name: "k", Permissions: []keys.Permission{keys.PermRead}, SecretHash: keys.HashSecret(secret)}
	if opt.Sealer != nil {
		var err error
		if k.SealedSecret, err = opt.Sealer.Seal(k, secret); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CreateKey(ctx, k, -1); err != nil {
		t.Fatal(err)
	}
	opt.TTL, opt.StaleAuth, opt.Now = time.Hour, 2*time.Hour, clk.Now
	return st, keys.NewAuthenticator(st, opt), clk, k, secret
}

func wantAuth(t *testing.T, a *keys.Authenticator, what string, c keys.Credential, want error) keys.Principal {
	t.Helper()
	p, err := a.Authenticate(context.Background(), c)
	if want == nil && err != nil {
		t.Errorf("%s: %v, want success", what, err)
	}
	if want != nil && !errors.Is(err, want) {
		t.Errorf("%s: %v, want %v", what, err, want)
	}
	return p
}

// patch changes a key in the store and revokes it locally, as the sidecar
// that makes a change does.
func patch(t *testing.T, st keys.Store, a *keys.Authenticator, p keys.KeyPatch) {
	t.Helper()
	k, err := st.UpdateKey(context.Background(), "org1", "k", p, -1)
	if err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
	a.Revoke(keys.Revocation{OrgID: k.OrgID, KeyUID: k.UID})
}

func TestAuthenticatorDisabledKey(t *testing.T) {
	st, a, _, k, secret := lifecycleSetup(t, keys.AuthOptions{})
	bearer := keys.Credential{Secret: secret}
	pair := keys.Credential{Secret: secret, AccessKey: k.UID}
	wantAuth(t, a, "enabled key", bearer, nil)
	patch(t, st, a, keys.KeyPatch{Enabled: keys.ChangeTo(false)})
	wantAuth(t, a, "disabled key", bearer, keys.ErrInvalidCredential)
	wantAuth(t, a, "disabled key, cached refusal", pair, keys.ErrInvalidCredential)
	patch(t, st, a, keys.KeyPatch{Enabled: keys.ChangeTo(true)})
	wantAuth(t, a, "enabled again", pair, nil)
}

// TestAuthenticatorExpiryInCache: a cached key is refused at the instant it
// expires, with no store read, an hour before its cache entry would end.
func TestAuthenticatorExpiryInCache(t *testing.T) {
	st, a, clk, _, secret := lifecycleSetup(t, keys.AuthOptions{})
	c := keys.Credential{Secret: secret}
	patch(t, st, a, keys.KeyPatch{ExpiresAt: keys.ChangeTo(new(clk.Now().Add(10 * time.Second)))})
	wantAuth(t, a, "before expiry", c, nil)
	reads := st.reads.Load()
	clk.Add(10*time.Second - time.Nanosecond)
	wantAuth(t, a, "1ns before expiry", c, nil)
	clk.Add(time.Nanosecond)
	wantAuth(t, a, "at expiry", c, keys.ErrInvalidCredential)
	if n := st.reads.Load() - reads; n != 0 {
		t.Errorf("%d store reads while the key was cached, want 0", n)
	}

	// An expiry in the past refuses at once; clearing it restores the key.
	patch(t, st, a, keys.KeyPatch{ExpiresAt: keys.ChangeTo[*time.Time](nil)})
	wantAuth(t, a, "expiry cleared", c, nil)

	// Served stale while the store is down, an expired key is still refused.
	patch(t, st, a, keys.KeyPatch{ExpiresAt: keys.ChangeTo(new(clk.Now().Add(100 * time.Minute)))})
	wantAuth(t, a, "new expiry", c, nil)
	st.down.Store(true)
	clk.Add(90 * time.Minute) // past the TTL, within StaleAuth
	if p := wantAuth(t, a, "stale, before expiry", c, nil); !p.Stale {
		t.Errorf("principal not marked stale")
	}
	clk.Add(10 * time.Minute) // still within StaleAuth
	wantAuth(t, a, "stale, at expiry", c, keys.ErrInvalidCredential)
}

// TestAuthenticatorRotationGrace: both secrets work during the grace, for
// Bearer and the pair; the previous one is refused at the instant the grace
// ends, cached or not.
func TestAuthenticatorRotationGrace(t *testing.T) {
	st, a, clk, k, oldSecret := lifecycleSetup(t, keys.AuthOptions{})
	old := keys.Credential{Secret: oldSecret}
	wantAuth(t, a, "old secret before rotation", old, nil)

	newSecret, _ := keys.NewSecret()
	rotated, until, err := st.RotateKey(context.Background(), "org1", "k", keys.Rotation{Hash: keys.HashSecret(newSecret), Grace: time.Minute, Now: clk.Now()})
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	a.Revoke(keys.Revocation{OrgID: "org1", KeyUID: k.UID})
	if rotated.UID != k.UID || !until.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("RotateKey = %+v until %v", rotated, until)
	}
	cur := keys.Credential{Secret: newSecret}
	if p := wantAuth(t, a, "new secret", cur, nil); p.PreviousSecret || p.Key.UID != k.UID {
		t.Errorf("new secret: principal %+v", p)
	}
	if p := wantAuth(t, a, "old secret in the grace", old, nil); !p.PreviousSecret || p.Key.UID != k.UID {
		t.Errorf("old secret: principal %+v, want PreviousSecret", p)
	}
	wantAuth(t, a, "old secret as a pair", keys.Credential{Secret: oldSecret, AccessKey: k.UID}, nil)
	wantAuth(t, a, "old secret with another access key", keys.Credential{Secret: oldSecret, AccessKey: uid2}, keys.ErrInvalidCredential)

	clk.Add(time.Minute)
	wantAuth(t, a, "old secret, cached, when the grace ends", old, keys.ErrInvalidCredential)
	wantAuth(t, a, "new secret after the grace", cur, nil)
	fresh := keys.NewAuthenticator(st, keys.AuthOptions{Now: clk.Now})
	wantAuth(t, fresh, "old secret, uncached, after the grace", old, keys.ErrInvalidCredential)
	wantAuth(t, fresh, "new secret, uncached", cur, nil)
}

func TestAuthenticateSignedLifecycle(t *testing.T) {
	ctx := context.Background()
	sealer, _ := keys.NewSealer(opKey('a'), nil)
	st, a, clk, k, oldSecret := lifecycleSetup(t, keys.AuthOptions{Sealer: sealer})
	signedWith := func(secret string) func([]byte) bool { return func(s []byte) bool { return string(s) == secret } }
	if _, err := a.AuthenticateSigned(ctx, k.UID, signedWith(oldSecret)); err != nil {
		t.Fatalf("before rotation: %v", err)
	}

	newSecret, _ := keys.NewSecret()
	sealed, err := sealer.Seal(k, newSecret)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.RotateKey(ctx, "org1", "k", keys.Rotation{UID: k.UID, Hash: keys.HashSecret(newSecret), Sealed: sealed, Grace: time.Minute, Now: clk.Now()}); err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	a.Revoke(keys.Revocation{OrgID: "org1", KeyUID: k.UID})
	if p, err := a.AuthenticateSigned(ctx, k.UID, signedWith(newSecret)); err != nil || p.PreviousSecret {
		t.Errorf("signed with the new secret: %+v, %v", p, err)
	}
	p, err := a.AuthenticateSigned(ctx, k.UID, signedWith(oldSecret))
	if err != nil || !p.PreviousSecret {
		t.Errorf("signed with the old secret in the grace: %+v, %v; want PreviousSecret", p, err)
	}
	if p.Key.Previous != nil && p.Key.Previous.Sealed != nil {
		t.Error("principal carries the previous sealed secret")
	}
	clk.Add(time.Minute)
	if _, err := a.AuthenticateSigned(ctx, k.UID, signedWith(oldSecret)); !errors.Is(err, keys.ErrBadSignature) {
		t.Errorf("signed with the old secret after the grace: %v, want ErrBadSignature", err)
	}
	if _, err := a.AuthenticateSigned(ctx, k.UID, signedWith(newSecret)); err != nil {
		t.Errorf("signed with the new secret after the grace: %v", err)
	}

	patch(t, st, a, keys.KeyPatch{Enabled: keys.ChangeTo(false)})
	if _, err := a.AuthenticateSigned(ctx, k.UID, signedWith(newSecret)); !errors.Is(err, keys.ErrInvalidCredential) {
		t.Errorf("signed by a disabled key: %v, want ErrInvalidCredential", err)
	}
	patch(t, st, a, keys.KeyPatch{Enabled: keys.ChangeTo(true), ExpiresAt: keys.ChangeTo(new(clk.Now().Add(time.Second)))})
	if _, err := a.AuthenticateSigned(ctx, k.UID, signedWith(newSecret)); err != nil {
		t.Errorf("signed before expiry: %v", err)
	}
	clk.Add(time.Second)
	if _, err := a.AuthenticateSigned(ctx, k.UID, signedWith(newSecret)); !errors.Is(err, keys.ErrInvalidCredential) {
		t.Errorf("signed by a key that expired in the cache: %v, want ErrInvalidCredential", err)
	}
}

// TestAuthenticatorPlanRevocation: a plan revocation evicts the principals
// of organizations on that plan (their next request reads the new plan) and
// no others.
func TestAuthenticatorPlanRevocation(t *testing.T) {
	st, a, _, _, secret := lifecycleSetup(t, keys.AuthOptions{})
	ctx := context.Background()
	if err := st.CreatePlan(ctx, keys.Plan{ID: 2, Name: "other", Period: "month"}); err != nil {
		t.Fatal(err)
	}
	c := keys.Credential{Secret: secret}
	if key, org := wantAuth(t, a, "before", c, nil).RateLimits(); key != nil || org != nil {
		t.Fatalf("rate limits before any were set: %v, %v", key, org)
	}
	if _, err := st.UpdatePlan(ctx, 1, keys.PlanPatch{KeyRateLimit: keys.ChangeTo(&keys.RateLimit{Requests: 5, Per: time.Second})}); err != nil {
		t.Fatal(err)
	}
	reads := st.reads.Load()
	a.Revoke(keys.Revocation{PlanID: 2})
	wantAuth(t, a, "after another plan's revocation", c, nil)
	if st.reads.Load() != reads {
		t.Error("another plan's revocation evicted the principal")
	}
	a.Revoke(keys.Revocation{PlanID: 1})
	key, org := wantAuth(t, a, "after the plan's revocation", c, nil).RateLimits()
	if key == nil || key.Requests != 5 || org != nil {
		t.Errorf("rate limits after the plan changed: %v, %v; want the plan's key_rate_limit only", key, org)
	}
	if st.reads.Load() != reads+1 {
		t.Errorf("%d store reads after the plan's revocation, want 1", st.reads.Load()-reads)
	}
}

func TestRateLimitsPrecedence(t *testing.T) {
	plan := keys.Plan{KeyRateLimit: &keys.RateLimit{Requests: 1, Per: time.Second}, OrgRateLimit: &keys.RateLimit{Requests: 2, Per: time.Second}}
	own := &keys.RateLimit{Requests: 3, Per: time.Minute}
	orgOwn := &keys.RateLimit{Requests: 4, Per: time.Hour}
	tests := []struct {
		name             string
		key              keys.Key
		org              keys.Org
		plan             keys.Plan
		wantKey, wantOrg *keys.RateLimit
	}{
		{"none", keys.Key{}, keys.Org{}, keys.Plan{}, nil, nil},
		{"plan's", keys.Key{}, keys.Org{}, plan, plan.KeyRateLimit, plan.OrgRateLimit},
		{"own override the plan's", keys.Key{RateLimit: own}, keys.Org{RateLimit: orgOwn}, plan, own, orgOwn},
		{"own without plan", keys.Key{RateLimit: own}, keys.Org{}, keys.Plan{}, own, nil},
	}
	for _, tc := range tests {
		k, o := keys.Principal{Key: tc.key, Org: tc.org, Plan: tc.plan}.RateLimits()
		if k != tc.wantKey || o != tc.wantOrg {
			t.Errorf("%s: RateLimits = %v, %v; want %v, %v", tc.name, k, o, tc.wantKey, tc.wantOrg)
		}
	}
}
