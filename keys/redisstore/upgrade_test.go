package redisstore_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/redistest"
	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/redisstore"
	"github.com/keygate/keygate/keys/storetest"
)

// The records below are byte for byte what the store wrote before rate
// limits and the key lifecycle existed (captured from that version: the
// field order and omissions are encoding/json's for the old types). Only the
// secrets' hashes, the sealed secret and the uids are filled in.
const (
	v1Plans = `{"id":1,"name":"Free","price":"0.00","period":"month","max_api_requests":1000,"limits":{"egress":5368709120}}`
	v1Plan2 = `{"id":2,"name":"Pro","price":"10.00","period":"30s","max_api_requests":null}`
	v1Org   = `{"id":"org","name":"Org","email":"o@example.com","email_verified":false,"plan_id":1,"unlimited":false,"partner":false,"username":"user","password_hash":"hash","created_at":"2025-03-04T05:06:07Z","revision":1}`
	// v1Key has a maximum and a sealed secret; v1Bare has neither.
	v1Key  = `{"uid":"%s","org_id":"org","name":"k","permissions":["read","write"],"max_api_requests":100,"comment":"c","created_at":"2025-03-04T05:06:07Z","secret_hash":"%s","sealed_secret":"%s"}`
	v1Bare = `{"uid":"%s","org_id":"org","name":"bare","permissions":["admin"],"created_at":"2025-03-04T05:06:08Z","secret_hash":"%s"}`
	// v1Revocation is a revocation as the old version publishes it.
	v1Revocation = `{"org_id":"org","key_uid":"%s","published_at":"2025-03-04T05:06:07.123456789Z"}`
)

const (
	v1UID     = "0b0e5d2c-6c39-4d7b-9a55-3f2a0f1c9e11"
	v1BareUID = "1b0e5d2c-6c39-4d7b-9a55-3f2a0f1c9e11"
)

// writeV1 writes an organization with two keys and two plans in the old
// format, with the indices the old store kept, straight through the client.
func writeV1(t *testing.T, ctx context.Context, rdb redis.UniversalClient, sealer *keys.Sealer) (secret, bareSecret string) {
	t.Helper()
	secret, _ = keys.NewSecret()
	bareSecret, _ = keys.NewSecret()
	h, bh := keys.HashSecret(secret), keys.HashSecret(bareSecret)
	sealed, err := sealer.Seal(keys.Key{UID: v1UID, OrgID: "org"}, secret)
	if err != nil {
		t.Fatal(err)
	}
	sets := []struct{ key, value string }{
		{"kg:{org}:org", v1Org},
		{"kg:{org}:key:" + v1UID, fmt.Sprintf(v1Key, v1UID, h, base64.StdEncoding.EncodeToString(sealed))},
		{"kg:{org}:key:" + v1BareUID, fmt.Sprintf(v1Bare, v1BareUID, bh)},
		{"kg:hash:" + h.String(), "org/" + v1UID},
		{"kg:hash:" + bh.String(), "org/" + v1BareUID},
		{"kg:uid:" + v1UID, "org"},
		{"kg:uid:" + v1BareUID, "org"},
	}
	for _, s := range sets {
		if err := rdb.Set(ctx, s.key, s.value, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, err := range []error{
		rdb.HSet(ctx, "kg:plans", "1", v1Plans, "2", v1Plan2).Err(),
		rdb.HSet(ctx, "kg:usernames", "user", "org").Err(),
		rdb.ZAdd(ctx, "kg:orgs", redis.Z{Score: 0, Member: "org"}).Err(),
		rdb.HSet(ctx, "kg:{org}:keynames", "k", v1UID, "bare", v1BareUID).Err(),
		rdb.HSet(ctx, "kg:{org}:alloc", v1UID, "100").Err(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return secret, bareSecret
}

// TestUpgradeFromV1 reads data written by the version before rate limits
// and the key lifecycle: its keys authenticate (every credential form), are
// enabled, never expire, have no rate limit and no last use, and can be
// updated, rotated, touched and deleted; its plans and organization read
// without rate limits and can be changed.
func TestUpgradeFromV1(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	sealer, err := keys.NewSealer([]byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redistest.Client(t)
	secret, bareSecret := writeV1(t, ctx, rdb, sealer)
	s := redisstore.New(rdb)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	a := keys.NewAuthenticator(s, keys.AuthOptions{Sealer: sealer, Now: func() time.Time { return now }})

	for _, c := range []keys.Credential{{Secret: secret}, {Secret: secret, AccessKey: v1UID}, {Secret: bareSecret}} {
		p, err := a.Authenticate(ctx, c)
		if err != nil {
			t.Fatalf("Authenticate(old key): %v", err)
		}
		key, org := p.RateLimits()
		if !p.Key.Enabled() || p.Key.ExpiresAt != nil || p.Key.LastUsedAt != nil || p.Key.Previous != nil || key != nil || org != nil {
			t.Errorf("old key reads as %+v with rate limits %v, %v; want enabled, no expiry, no last use, no limits", p.Key, key, org)
		}
		if p.Org.ID != "org" || p.Plan.ID != 1 || p.Plan.KeyRateLimit != nil || p.Plan.OrgRateLimit != nil || p.Org.RateLimit != nil {
			t.Errorf("old organization and plan read as %+v, %+v", p.Org, p.Plan)
		}
	}
	if _, err := a.AuthenticateSigned(ctx, v1UID, func(b []byte) bool { return string(b) == secret }); err != nil {
		t.Errorf("AuthenticateSigned(old key): %v", err)
	}
	if plans, err := s.Plans(ctx); err != nil || len(plans) != 2 || plans[1].MaxAPIRequests != nil {
		t.Errorf("Plans = %+v, %v", plans, err)
	}

	// Changes on old records.
	rl := &keys.RateLimit{Requests: 10, Per: time.Minute}
	k, err := s.UpdateKey(ctx, "org", "k", keys.KeyPatch{RateLimit: keys.ChangeTo(rl), Comment: keys.ChangeTo("upgraded")}, 1000)
	if err != nil || k.RateLimit == nil || k.Comment != "upgraded" || k.KeyMax() != 100 || !k.Enabled() {
		t.Fatalf("UpdateKey(old key) = %+v, %v", k, err)
	}
	if _, err := s.UpdateKey(ctx, "org", "bare", keys.KeyPatch{MaxAPIRequests: keys.ChangeTo(ptr(901))}, 1000); err == nil {
		t.Error("UpdateKey ignored the old allocation record (100 + 901 > 1000)")
	}
	newSecret, _ := keys.NewSecret()
	newSealed, _ := sealer.Seal(k, newSecret)
	if _, _, err := s.RotateKey(ctx, "org", "k", keys.Rotation{UID: v1UID, Hash: keys.HashSecret(newSecret), Sealed: newSealed, Grace: time.Hour, Now: now}); err != nil {
		t.Fatalf("RotateKey(old key): %v", err)
	}
	a.Revoke(keys.Revocation{OrgID: "org", KeyUID: v1UID})
	for _, sec := range []string{secret, newSecret} {
		if p, err := a.Authenticate(ctx, keys.Credential{Secret: sec, AccessKey: v1UID}); err != nil || p.Key.RateLimit == nil {
			t.Errorf("Authenticate after rotating the old key: %+v, %v", p.Key, err)
		}
		if _, err := a.AuthenticateSigned(ctx, v1UID, func(b []byte) bool { return string(b) == sec }); err != nil {
			t.Errorf("AuthenticateSigned after rotating the old key: %v", err)
		}
	}
	if err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{{OrgID: "org", UID: v1BareUID}: now}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.KeyByUID(ctx, v1BareUID); err != nil || got.LastUsedAt == nil || !got.LastUsedAt.Equal(now) {
		t.Errorf("old key after TouchKeys: %+v, %v", got, err)
	}
	if _, err := s.UpdatePlan(ctx, 1, keys.PlanPatch{OrgRateLimit: keys.ChangeTo(rl)}); err != nil {
		t.Errorf("UpdatePlan(old plan): %v", err)
	}
	if pl, err := s.Plan(ctx, 1); err != nil || pl.OrgRateLimit == nil || pl.Limits["egress"] != 5368709120 || *pl.MaxAPIRequests != 1000 {
		t.Errorf("old plan after UpdatePlan: %+v, %v", pl, err)
	}
	o, err := s.Org(ctx, "org")
	if err != nil {
		t.Fatal(err)
	}
	o.RateLimit = rl
	if err := s.UpdateOrg(ctx, &o); err != nil || o.Revision != 2 {
		t.Errorf("UpdateOrg(old organization): revision %d, %v", o.Revision, err)
	}
	if _, err := s.DeleteKey(ctx, "org", "bare"); err != nil {
		t.Fatalf("DeleteKey(old key): %v", err)
	}
	a.Revoke(keys.Revocation{OrgID: "org", KeyUID: v1BareUID})
	if _, err := a.Authenticate(ctx, keys.Credential{Secret: bareSecret}); !errors.Is(err, keys.ErrInvalidCredential) {
		t.Errorf("deleted old key: %v, want ErrInvalidCredential", err)
	}

	// An old sidecar's revocation message decodes.
	var r keys.Revocation
	if err := json.Unmarshal(fmt.Appendf(nil, v1Revocation, v1UID), &r); err != nil || r.OrgID != "org" || r.KeyUID != v1UID || r.PlanID != 0 || r.PublishedAt.IsZero() {
		t.Errorf("old revocation decodes as %+v, %v", r, err)
	}
}

// TestSearchFindsOrgsOfEarlierVersion: organizations written before the
// search index existed are found by a search after the upgrade (the first
// search indexes them), alongside ones created since.
func TestSearchFindsOrgsOfEarlierVersion(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	sealer, err := keys.NewSealer([]byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redistest.Client(t)
	writeV1(t, ctx, rdb, sealer)
	s := redisstore.New(rdb)
	if err := s.CreateOrg(ctx, keys.Org{ID: "org2", Name: "Org Two", Email: "two@example.com", PlanID: 1, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for search, want := range map[string][]string{"org": {"org", "org2"}, "o@example": {"org"}, "example.com": {"org", "org2"}} {
		page, err := s.FindOrgs(ctx, keys.OrgQuery{Search: search, Limit: 10})
		var got []string
		for _, o := range page.Orgs {
			got = append(got, o.ID)
		}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("FindOrgs(%q) = %v, %v; want %v", search, got, err, want)
		}
	}
	// A second store (another sidecar) finds the marker and indexes nothing again.
	if n, err := rdb.Exists(ctx, "kg:orgterms:built").Result(); err != nil || n != 1 {
		t.Errorf("index marker: %d, %v", n, err)
	}
}

// touchV1 records uses the way sidecars before the multi-key touch script
// did: testdata/touch_keys_v1.lua is that version's script, byte for byte
// (EXISTS, GET and SET per key; KEYS interleaved record, time).
func touchV1(t *testing.T, ctx context.Context, rdb redis.UniversalClient, orgID string, used map[string]time.Time) {
	t.Helper()
	src, err := os.ReadFile("testdata/touch_keys_v1.lua")
	if err != nil {
		t.Fatal(err)
	}
	var ks []string
	var args []any
	for uid, at := range used {
		ks = append(ks, "kg:{"+orgID+"}:key:"+uid, "kg:{"+orgID+"}:used:"+uid)
		args = append(args, at.UnixMilli())
	}
	if err := redis.NewScript(string(src)).Eval(ctx, rdb, ks, args...).Err(); err != nil {
		t.Fatalf("old touch script: %v", err)
	}
}

// TestTouchMixedFleet: last-used times recorded by sidecars of the version
// before the multi-key touch script read after the upgrade with no step in
// between, and while old and new sidecars record uses of the same keys side
// by side (a rolling upgrade) no key's time ever moves backwards, whichever
// sidecar writes last, and a deleted key keeps nothing. Both write one string
// per key, so an old sidecar also reads what a new one wrote. It also measures
// the commands each version runs for the same 200 keys.
func TestTouchMixedFleet(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	sealer, err := keys.NewSealer([]byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redistest.Client(t)
	writeV1(t, ctx, rdb, sealer)
	s := redisstore.New(rdb)
	uids := []string{v1UID, v1BareUID}
	for i := range 198 {
		k, _ := storetest.NewKey(t, "org", fmt.Sprintf("n%d", i), nil)
		if err := s.CreateKey(ctx, k, -1); err != nil {
			t.Fatal(err)
		}
		uids = append(uids, k.UID)
	}

	// Uses recorded before the upgrade read after it.
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	old := map[string]time.Time{}
	for i, uid := range uids {
		old[uid] = t0.Add(time.Duration(i) * time.Millisecond)
	}
	by, total := commandsDuring(t, ctx, rdb, func() { touchV1(t, ctx, rdb, "org", old) })
	t.Logf("old script, %d keys: %d commands %v", len(old), total, by)
	newUsed := map[keys.KeyRef]time.Time{}
	for uid, at := range old {
		newUsed[keys.KeyRef{OrgID: "org", UID: uid}] = at.Add(time.Minute)
	}
	by, total = commandsDuring(t, ctx, rdb, func() {
		if err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{}); err != nil {
			t.Fatal(err)
		}
	})
	if total != 0 {
		t.Errorf("TouchKeys(nothing) ran %d commands %v", total, by)
	}
	want := maps.Clone(old)
	check := func(what string) {
		t.Helper()
		ks, err := s.Keys(ctx, "org")
		if err != nil || len(ks) != len(want) {
			t.Fatalf("%s: Keys: %d keys, %v; want %d", what, len(ks), err, len(want))
		}
		for _, k := range ks {
			if k.LastUsedAt == nil || !k.LastUsedAt.Equal(want[k.UID]) {
				t.Fatalf("%s: key %s last used %v, want %v", what, k.Name, k.LastUsedAt, want[k.UID])
			}
		}
		for _, uid := range []string{v1UID, v1BareUID} {
			if _, ok := want[uid]; !ok {
				continue
			}
			k, err := s.KeyByUID(ctx, uid)
			if err != nil || k.LastUsedAt == nil || !k.LastUsedAt.Equal(want[uid]) {
				t.Fatalf("%s: KeyByUID(%s) last used %v, %v; want %v", what, uid, k.LastUsedAt, err, want[uid])
			}
			// What an old sidecar reads: the string it wrote itself.
			if ms, err := rdb.Get(ctx, "kg:{org}:used:"+uid).Int64(); err != nil || ms != want[uid].UnixMilli() {
				t.Fatalf("%s: old form of %s holds %d, %v; want %d", what, uid, ms, err, want[uid].UnixMilli())
			}
		}
	}
	check("after the upgrade")

	// A rolling upgrade: old and new sidecars record uses of the same keys
	// in random order with times that are early, late or equal.
	by, total = commandsDuring(t, ctx, rdb, func() {
		if err := s.TouchKeys(ctx, newUsed); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("new script, %d keys: %d commands %v", len(newUsed), total, by)
	for ref, at := range newUsed {
		want[ref.UID] = at
	}
	check("after a new sidecar's flush")
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		batch := map[string]time.Time{}
		for range 1 + rng.IntN(20) {
			uid := uids[rng.IntN(len(uids))]
			batch[uid] = want[uid].Add(time.Duration(rng.IntN(2001)-1000) * time.Millisecond)
		}
		if round%2 == 0 {
			touchV1(t, ctx, rdb, "org", batch)
		} else {
			used := map[keys.KeyRef]time.Time{}
			for uid, at := range batch {
				used[keys.KeyRef{OrgID: "org", UID: uid}] = at
			}
			if err := s.TouchKeys(ctx, used); err != nil {
				t.Fatal(err)
			}
		}
		for uid, at := range batch {
			if at.After(want[uid]) {
				want[uid] = at
			}
		}
		check(fmt.Sprintf("round %d", round))
	}

	// A key deleted by a new sidecar keeps nothing, whichever version
	// records a use of it afterwards.
	if _, err := s.DeleteKey(ctx, "org", "bare"); err != nil {
		t.Fatal(err)
	}
	delete(want, v1BareUID)
	touchV1(t, ctx, rdb, "org", map[string]time.Time{v1BareUID: t0.Add(time.Hour)})
	if err := s.TouchKeys(ctx, map[keys.KeyRef]time.Time{{OrgID: "org", UID: v1BareUID}: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if n, err := rdb.Exists(ctx, "kg:{org}:used:"+v1BareUID).Result(); err != nil || n != 0 {
		t.Errorf("deleted key has a last-used time (%d, %v)", n, err)
	}
	check("after deleting a key")
}
