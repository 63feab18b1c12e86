package keys

import (
	"reflect"
	"strconv"
	"testing"
	"time"
)

// TestCachedPrincipalIsTheLoadedOne caches principals with and without the
// fields most keys lack and checks the packed entry gives back exactly what
// was put: every field a decision, a header or the account route reads.
func TestCachedPrincipalIsTheLoadedOne(t *testing.T) {
	max := int64(7)
	exp := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	org := Org{ID: "org1", Name: "Org", PlanID: 1}
	plan := Plan{ID: 1, Name: "plan", Period: "month"}
	created := time.Date(2026, 12, 1, 10, 0, 0, 123, time.UTC)
	plain := Principal{Key: Key{UID: "0b8e6a1c-6d7e-4f43-9b1e-5a2f3c4d5e6f", OrgID: "org1", Name: "plain",
		Permissions: []Permission{PermRead}, CreatedAt: created, SecretHash: hashOf(1)}, Org: org, Plan: plan}
	full := Principal{Key: Key{UID: "1b8e6a1c-6d7e-4f43-9b1e-5a2f3c4d5e6f", OrgID: "org1", Name: "full",
		Permissions: []Permission{PermRead, PermWrite}, CreatedAt: created, SecretHash: hashOf(2), MaxAPIRequests: &max,
		RateLimit: &RateLimit{Requests: 5, Per: time.Minute}, ExpiresAt: &exp, Disabled: true,
		Previous: &PreviousSecret{Hash: hashOf(3), ExpiresAt: exp}}, Org: org, Plan: plan}
	// The same key presented with its previous secret.
	prev := full
	prev.PreviousSecret = true

	c := newCredCache(1<<20, 100)
	v := time.Unix(0, 42)
	for _, tc := range []struct {
		name string
		h    SecretHash
		p    Principal
	}{{"plain", hashOf(1), plain}, {"full", hashOf(2), full}, {"previous secret", hashOf(3), prev}} {
		c.put(tc.h, tc.p, v)
		e, ok := c.get(tc.h)
		if !ok {
			t.Fatalf("%s: not cached", tc.name)
		}
		got := c.principal(e)
		want := tc.p
		want.VerifiedAt = v
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: cached principal\n%+v\nwant\n%+v", tc.name, got, want)
		}
	}
	if e, _ := c.get(hashOf(1)); e.rare != nil {
		t.Error("a key without limits, expiry or previous secret holds rare fields")
	}
}

// TestCachePrefixCollision puts two hashes that share the map key (their
// first eight bytes): the second displaces the first, the first is a miss
// (never the other key's principal), and the byte count and revocations
// stay right.
func TestCachePrefixCollision(t *testing.T) {
	c := newCredCache(1<<20, 100)
	a, b := hashOf(1), hashOf(1)
	b[31] ^= 0xff
	pa := Principal{Key: Key{UID: "a", OrgID: "o", Name: "a", Permissions: []Permission{PermRead}}, Org: Org{ID: "o"}}
	pb := Principal{Key: Key{UID: "b", OrgID: "o", Name: "b", Permissions: []Permission{PermRead}}, Org: Org{ID: "o"}}
	c.put(a, pa, time.Now())
	c.put(b, pb, time.Now())
	if _, ok := c.get(a); ok {
		t.Fatal("a hash sharing its prefix with a cached one was a hit")
	}
	e, ok := c.get(b)
	if !ok || c.principal(e).Key.UID != "b" {
		t.Fatal("the later of two colliding hashes is not cached")
	}
	c.drop(a) // not cached: must not drop b
	if _, ok := c.get(b); !ok {
		t.Fatal("dropping an uncached hash dropped the entry sharing its prefix")
	}
	c.revoke(Revocation{OrgID: "o", KeyUID: "b"})
	if len(c.entries) != 0 || len(c.orgs) != 0 || c.bytes != 0 || c.hand != nil {
		t.Fatalf("after revoking the only entry: %d entries, %d orgs, %d bytes", len(c.entries), len(c.orgs), c.bytes)
	}
}

// TestCachePermissionSetsBounded caches keys with more distinct permission
// lists than are interned: the lists past the bound are kept with their
// entry, and every key still gets its own list back.
func TestCachePermissionSetsBounded(t *testing.T) {
	c := newCredCache(1<<30, 1<<20)
	n := maxPermSets + 10
	for i := range n {
		p := Principal{Key: Key{UID: strconv.Itoa(i), OrgID: "o", Permissions: []Permission{Permission("p" + strconv.Itoa(i))}}, Org: Org{ID: "o"}}
		c.put(hashOf(i+10), p, time.Now())
	}
	if len(c.permSets) != maxPermSets {
		t.Fatalf("%d interned lists, want the bound %d", len(c.permSets), maxPermSets)
	}
	for i := range n {
		e, ok := c.get(hashOf(i + 10))
		if !ok {
			t.Fatalf("key %d not cached", i)
		}
		if got := c.principal(e).Key.Permissions; len(got) != 1 || string(got[0]) != "p"+strconv.Itoa(i) {
			t.Fatalf("key %d has permissions %v", i, got)
		}
	}
}

func hashOf(i int) SecretHash { return HashSecret("secret-" + strconv.Itoa(i)) }
