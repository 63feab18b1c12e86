package keys_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/keys"
	"github.com/keygate/keygate/keys/memstore"
)

func opKey(c byte) []byte { return bytes.Repeat([]byte{c}, keys.SealKeyLen) }

func newSealedKey(t *testing.T, s *keys.Sealer, org, uid string) (keys.Key, string) {
	t.Helper()
	secret, err := keys.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	k := keys.Key{UID: uid, OrgID: org, Name: "k-" + uid[:8], Permissions: []keys.Permission{keys.PermRead}, SecretHash: keys.HashSecret(secret)}
	if s != nil {
		if k.SealedSecret, err = s.Seal(k, secret); err != nil {
			t.Fatal(err)
		}
	}
	return k, secret
}

const (
	uid1 = "6f1c5a3e-8b2d-4c7a-9e0f-1a2b3c4d5e6f"
	uid2 = "7f1c5a3e-8b2d-4c7a-9e0f-1a2b3c4d5e6f"
)

func TestSealer(t *testing.T) {
	old, err := keys.NewSealer(opKey('a'), nil)
	if err != nil {
		t.Fatal(err)
	}
	k, secret := newSealedKey(t, old, "org1", uid1)
	if bytes.Contains(k.SealedSecret, []byte(secret)) {
		t.Fatal("sealed secret contains the secret")
	}
	if id, ok := keys.SealedKeyID(k.SealedSecret); !ok || id != keys.KeyIDOf(opKey('a')) || id != old.CurrentID() {
		t.Errorf("key id %v %v, want %v", id, ok, old.CurrentID())
	}
	got, err := old.Open(k)
	if err != nil || string(got) != secret {
		t.Fatalf("Open = %q, %v", got, err)
	}

	// Rotation: the new sealer seals under the new key and still opens the old records.
	rotated, err := keys.NewSealer(opKey('b'), opKey('a'))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := rotated.Open(k); err != nil || string(got) != secret {
		t.Errorf("previous key does not open old record: %v", err)
	}
	k2, secret2 := newSealedKey(t, rotated, "org1", uid2)
	if id, _ := keys.SealedKeyID(k2.SealedSecret); id != keys.KeyIDOf(opKey('b')) {
		t.Errorf("new record sealed under %v, want the current key", id)
	}
	if _, err := old.Open(k2); !errors.Is(err, keys.ErrUnsealable) {
		t.Errorf("a sealer without the new key opened a new record: %v", err)
	}
	if got, err := rotated.Open(k2); err != nil || string(got) != secret2 {
		t.Errorf("Open new record: %v", err)
	}
	newOnly, _ := keys.NewSealer(opKey('b'), nil)
	if _, err := newOnly.Open(k); !errors.Is(err, keys.ErrUnsealable) || !strings.Contains(err.Error(), old.CurrentID().String()) {
		t.Errorf("old record without the previous key: %v", err)
	}

	// The blob is bound to its org and key.
	moved := k2
	moved.SealedSecret = k.SealedSecret
	if _, err := rotated.Open(moved); !errors.Is(err, keys.ErrUnsealable) {
		t.Errorf("blob moved to another key opened: %v", err)
	}
	otherOrg := k
	otherOrg.OrgID = "org2"
	if _, err := rotated.Open(otherOrg); !errors.Is(err, keys.ErrUnsealable) {
		t.Errorf("blob moved to another org opened: %v", err)
	}
	for i := range k.SealedSecret {
		bad := k
		bad.SealedSecret = bytes.Clone(k.SealedSecret)
		bad.SealedSecret[i] ^= 1
		if _, err := rotated.Open(bad); !errors.Is(err, keys.ErrUnsealable) {
			t.Fatalf("flipping byte %d: %v", i, err)
		}
	}
	for n := range k.SealedSecret {
		bad := k
		bad.SealedSecret = k.SealedSecret[:n]
		if _, err := rotated.Open(bad); !errors.Is(err, keys.ErrUnsealable) {
			t.Fatalf("truncated to %d: %v", n, err)
		}
	}

	if _, err := keys.NewSealer(opKey('a'), opKey('a')); err == nil {
		t.Error("same key as current and previous accepted")
	}
	if _, err := keys.NewSealer(opKey('a')[:16], nil); err == nil {
		t.Error("16-byte key accepted")
	}
}

// uidCountingStore counts KeyByUID reads.
type uidCountingStore struct {
	keys.Store
	reads atomic.Int64
}

func (s *uidCountingStore) KeyByUID(ctx context.Context, uid string) (keys.Key, error) {
	s.reads.Add(1)
	return s.Store.KeyByUID(ctx, uid)
}

func TestAuthenticateSigned(t *testing.T) {
	ctx := context.Background()
	sealer, _ := keys.NewSealer(opKey('a'), nil)
	ms := memstore.New()
	st := &uidCountingStore{Store: ms}
	if err := ms.CreatePlan(ctx, keys.Plan{ID: 1, Name: "p", Period: "month"}); err != nil {
		t.Fatal(err)
	}
	if err := ms.CreateOrg(ctx, keys.Org{ID: "org1", Name: "o", PlanID: 1}); err != nil {
		t.Fatal(err)
	}
	k, secret := newSealedKey(t, sealer, "org1", uid1)
	if err := ms.CreateKey(ctx, k, -1); err != nil {
		t.Fatal(err)
	}
	unsealed, _ := newSealedKey(t, nil, "org1", uid2)
	if err := ms.CreateKey(ctx, unsealed, -1); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0)
	a := keys.NewAuthenticator(st, keys.AuthOptions{Sealer: sealer, TTL: time.Minute, Now: func() time.Time { return now }})

	var seen []byte
	match := func(s []byte) bool { seen = append(seen[:0], s...); return string(s) == secret }
	p, err := a.AuthenticateSigned(ctx, uid1, match)
	if err != nil || p.Key.UID != uid1 || p.Org.ID != "org1" || p.Plan.ID != 1 {
		t.Fatalf("AuthenticateSigned = %+v, %v", p, err)
	}
	if p.Key.SealedSecret != nil {
		t.Error("principal carries the sealed secret")
	}
	if string(seen) != secret {
		t.Error("verify did not get the secret")
	}
	for range 5 {
		if _, err := a.AuthenticateSigned(ctx, uid1, match); err != nil {
			t.Fatal(err)
		}
	}
	if n := st.reads.Load(); n != 1 {
		t.Errorf("%d store reads for 6 signed requests within the TTL, want 1", n)
	}
	if _, err := a.AuthenticateSigned(ctx, uid1, func([]byte) bool { return false }); !errors.Is(err, keys.ErrBadSignature) {
		t.Errorf("mismatch: %v", err)
	}
	if _, err := a.AuthenticateSigned(ctx, uid2, match); !errors.Is(err, keys.ErrNotSignable) {
		t.Errorf("unsealed key: %v", err)
	}
	for _, bad := range []string{"", "nope", "6f1c5a3e-8b2d-4c7a-9e0f-1a2b3c4d5e6", "6f1c5a3e+8b2d-4c7a-9e0f-1a2b3c4d5e6f", "00000000-0000-0000-0000-000000000000"} {
		if _, err := a.AuthenticateSigned(ctx, bad, match); !errors.Is(err, keys.ErrInvalidCredential) {
			t.Errorf("access key %q: %v", bad, err)
		}
	}

	// Revoke evicts the signed entry: the deleted key is refused at once.
	if _, err := ms.DeleteKey(ctx, "org1", k.Name); err != nil {
		t.Fatal(err)
	}
	a.Revoke(keys.Revocation{OrgID: "org1", KeyUID: uid1})
	if _, err := a.AuthenticateSigned(ctx, uid1, match); !errors.Is(err, keys.ErrInvalidCredential) {
		t.Errorf("after revoke: %v", err)
	}

	off := keys.NewAuthenticator(st, keys.AuthOptions{})
	if _, err := off.AuthenticateSigned(ctx, uid1, match); !errors.Is(err, keys.ErrSigningOff) {
		t.Errorf("without a sealer: %v", err)
	}
}
