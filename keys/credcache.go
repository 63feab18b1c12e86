package keys

import (
	"encoding/binary"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"
)

// credCache holds the verified principals of the Authenticator by secret
// hash. It is bounded by an estimate of the heap its entries hold and evicts
// the least recently used first (the CLOCK approximation: a hit only sets a
// flag, so the request path needs no write lock). The keys of one
// organization share one orgSlot, the organization and plan as last read,
// instead of a copy each, and are linked from it, so a revocation of a key or
// an organization visits that organization's entries only and one of a plan
// visits the organizations. It is not safe for concurrent use: the
// Authenticator guards it (get and principal under a read lock, the rest
// under the write lock).
type credCache struct {
	maxBytes   int64
	maxEntries int
	bytes      int64
	// entries maps the first eight bytes of a secret hash to its entry,
	// whose full hash get compares: a map slot of 16 bytes instead of 40.
	// Two cached secrets sharing a prefix (random 64-bit values: never in
	// practice) only displace one another.
	entries map[uint64]*cacheEntry
	orgs    map[string]*orgSlot
	// hand is the CLOCK hand over the ring of entries; nil when empty.
	hand *cacheEntry
	// perms interns permission lists, which are few and alike: permSets
	// holds them by index (an entry's perms), permIndex finds one's index.
	permSets  [][]Permission
	permIndex map[string]uint16
}

// cacheEntry is one cached key: what a principal needs of it, packed, so
// that a cached key costs about 200 bytes of heap with its map slot (see
// BenchmarkCacheBytesPerKey). Fields most keys do not have live in rare;
// the permission list is an index into the cache's interned lists; the uid
// and the name share one string.
type cacheEntry struct {
	hash SecretHash
	// ident is the key's uid followed by its name (uidLen bytes of uid).
	ident string
	slot  *orgSlot
	// rare holds what a common key lacks; nil when it has none of it.
	rare *rareFields
	// created is the key's CreatedAt in Unix nanoseconds.
	created int64
	// verified is when the store last confirmed the key, in Unix
	// nanoseconds of the Authenticator's clock.
	verified int64
	// prev and next link the CLOCK ring; orgNext and orgPrev the slot's
	// entries.
	prev, next       *cacheEntry
	orgPrev, orgNext *cacheEntry
	size             int32
	uidLen           int32
	// perms indexes the cache's interned permission lists (permSets).
	perms uint16
	// previous is set when hash is the key's previous secret.
	previous bool
	disabled bool
	// used is set by a hit and cleared by the CLOCK hand.
	used atomic.Bool
}

// rareFields are the parts of a key most keys do not have.
type rareFields struct {
	maxAPIRequests *int64
	rateLimit      *RateLimit
	expiresAt      *time.Time
	prev           *PreviousSecret
	// secretHash is the key's current secret hash, set only when the entry
	// is for its previous secret (hash then differs).
	secretHash SecretHash
	// perms is the permission list when the interned lists are full.
	perms []Permission
}

// orgSlot is what the cached keys of one organization share.
type orgSlot struct {
	org   Org
	plan  Plan
	first *cacheEntry
	n     int
	size  int32
}

// Fixed costs of the estimate: the entry itself and its share of the map
// (a 16-byte slot in a table kept between 7/16 and 7/8 full).
const (
	entryFixed = int64(unsafe.Sizeof(cacheEntry{})) + 24
	rareFixed  = int64(unsafe.Sizeof(rareFields{}))
	slotFixed  = int64(unsafe.Sizeof(orgSlot{})) + 96
	// maxPermSets bounds the interned permission lists.
	maxPermSets = 1024
)

func newCredCache(maxBytes int64, maxEntries int) *credCache {
	return &credCache{maxBytes: maxBytes, maxEntries: maxEntries, entries: make(map[uint64]*cacheEntry),
		orgs: make(map[string]*orgSlot), permIndex: make(map[string]uint16)}
}

// prefix is the map key of h.
func prefix(h SecretHash) uint64 { return binary.LittleEndian.Uint64(h[:8]) }

// get returns the entry of h and marks it used.
func (c *credCache) get(h SecretHash) (*cacheEntry, bool) {
	e, ok := c.entries[prefix(h)]
	if !ok || e.hash != h {
		return nil, false
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	return e, true
}

// principal returns the principal e stands for. It allocates nothing: the
// strings and lists are the entry's (callers must not modify them, as with
// any cached principal).
func (c *credCache) principal(e *cacheEntry) Principal {
	k := Key{UID: e.ident[:e.uidLen], OrgID: e.slot.org.ID, Name: e.ident[e.uidLen:],
		CreatedAt: time.Unix(0, e.created).UTC(), SecretHash: e.hash, Disabled: e.disabled}
	if r := e.rare; r != nil {
		k.MaxAPIRequests, k.RateLimit, k.ExpiresAt, k.Previous = r.maxAPIRequests, r.rateLimit, r.expiresAt, r.prev
		if e.previous {
			k.SecretHash = r.secretHash
		}
		k.Permissions = r.perms
	}
	if k.Permissions == nil {
		k.Permissions = c.permSets[e.perms]
	}
	return Principal{Key: k, Org: e.slot.org, Plan: e.slot.plan,
		VerifiedAt: time.Unix(0, e.verified), PreviousSecret: e.previous}
}

// put caches p under h, verified at v, replacing an entry h had, and evicts
// until the cache fits its bound again; it returns the new entry, which an
// eviction never drops. p's organization and plan replace the slot's: they
// were read no earlier than the slot's were confirmed.
func (c *credCache) put(h SecretHash, p Principal, v time.Time) *cacheEntry {
	c.dropPrefix(prefix(h))
	slot := c.orgs[p.Org.ID]
	if slot == nil {
		slot = &orgSlot{}
		c.orgs[p.Org.ID] = slot
	} else {
		c.bytes -= int64(slot.size)
		// Keep the id string the slot's keys were handed out with: what
		// callers keep of them (last-used times, lease tallies) then
		// holds one copy per organization, not one per key read.
		p.Org.ID = slot.org.ID
	}
	slot.org, slot.plan = p.Org, p.Plan
	slot.size = int32(slotFixed + orgBytes(p.Org) + planBytes(p.Plan))
	c.bytes += int64(slot.size)

	k := p.Key
	e := &cacheEntry{hash: h, ident: k.UID + k.Name, uidLen: int32(len(k.UID)), slot: slot,
		created: k.CreatedAt.UnixNano(), verified: v.UnixNano(), previous: p.PreviousSecret, disabled: k.Disabled}
	idx, interned := c.intern(k.Permissions)
	e.perms = idx
	if !interned || k.MaxAPIRequests != nil || k.RateLimit != nil || k.ExpiresAt != nil || k.Previous != nil || p.PreviousSecret {
		r := &rareFields{maxAPIRequests: k.MaxAPIRequests, rateLimit: k.RateLimit, expiresAt: k.ExpiresAt,
			prev: k.Previous, secretHash: k.SecretHash}
		if !interned {
			r.perms = k.Permissions
		}
		e.rare = r
	}
	e.size = int32(entryFixed + entryBytes(e))
	c.entries[prefix(h)] = e
	c.bytes += int64(e.size)

	e.orgNext = slot.first
	if slot.first != nil {
		slot.first.orgPrev = e
	}
	slot.first = e
	slot.n++

	// A new entry goes just behind the hand: the last the hand visits.
	if c.hand == nil {
		e.prev, e.next = e, e
		c.hand = e
	} else {
		e.next, e.prev = c.hand, c.hand.prev
		c.hand.prev.next = e
		c.hand.prev = e
	}
	for (c.bytes > c.maxBytes || len(c.entries) > c.maxEntries) && len(c.entries) > 1 {
		c.evict(e)
	}
	return e
}

// evict drops the entry the CLOCK hand finds unused first, never keep.
func (c *credCache) evict(keep *cacheEntry) {
	for range 2*len(c.entries) + 1 {
		e := c.hand
		if e == keep || e.used.Load() {
			e.used.Store(false)
			c.hand = e.next
			continue
		}
		c.dropPrefix(prefix(e.hash))
		return
	}
	c.dropPrefix(prefix(c.hand.hash)) // every entry was used twice over: drop the hand's
}

// drop forgets the entry of h, if any.
func (c *credCache) drop(h SecretHash) {
	if e, ok := c.entries[prefix(h)]; ok && e.hash == h {
		c.dropPrefix(prefix(h))
	}
}

// dropPrefix forgets the entry under map key p, if any.
func (c *credCache) dropPrefix(p uint64) {
	e, ok := c.entries[p]
	if !ok {
		return
	}
	delete(c.entries, p)
	c.bytes -= int64(e.size)
	if e.next == e {
		c.hand = nil
	} else {
		if c.hand == e {
			c.hand = e.next
		}
		e.prev.next, e.next.prev = e.next, e.prev
	}
	s := e.slot
	if e.orgPrev != nil {
		e.orgPrev.orgNext = e.orgNext
	} else {
		s.first = e.orgNext
	}
	if e.orgNext != nil {
		e.orgNext.orgPrev = e.orgPrev
	}
	s.n--
	if s.n == 0 {
		delete(c.orgs, s.org.ID)
		c.bytes -= int64(s.size)
	}
	e.prev, e.next, e.orgPrev, e.orgNext = nil, nil, nil, nil
}

// revoke drops the entries r covers.
func (c *credCache) revoke(r Revocation) {
	if r.PlanID != 0 {
		for _, s := range c.orgs {
			if s.first != nil && r.Covers(c.principal(s.first)) {
				c.dropSlot(s)
			}
		}
		return
	}
	s := c.orgs[r.OrgID]
	if s == nil {
		return
	}
	if r.KeyUID == "" {
		c.dropSlot(s)
		return
	}
	for e := s.first; e != nil; {
		next := e.orgNext
		if e.ident[:e.uidLen] == r.KeyUID {
			c.dropPrefix(prefix(e.hash))
		}
		e = next
	}
}

// dropSlot drops every entry of an organization.
func (c *credCache) dropSlot(s *orgSlot) {
	for s.first != nil {
		c.dropPrefix(prefix(s.first.hash))
	}
}

// clear forgets everything.
func (c *credCache) clear() {
	clear(c.entries)
	clear(c.orgs)
	c.hand, c.bytes = nil, 0
}

// intern returns the index of the shared copy of a permission list, and
// false when the interned lists are full and ps is not among them.
func (c *credCache) intern(ps []Permission) (uint16, bool) {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(string(p))
		b.WriteByte(0)
	}
	k := b.String()
	if i, ok := c.permIndex[k]; ok {
		return i, true
	}
	if len(c.permSets) >= maxPermSets {
		return 0, false
	}
	i := uint16(len(c.permSets))
	c.permSets = append(c.permSets, slices.Clone(ps))
	c.permIndex[k] = i
	return i, true
}

// entryBytes estimates the heap an entry holds beyond its struct and map
// slot: its string (rounded up as the allocator does, to 16 bytes) and its
// rare fields.
func entryBytes(e *cacheEntry) int64 {
	n := roundUp16(int64(len(e.ident)))
	if r := e.rare; r != nil {
		n += rareFixed + int64(len(r.perms))*16
		if r.maxAPIRequests != nil {
			n += 8
		}
		if r.rateLimit != nil {
			n += int64(unsafe.Sizeof(RateLimit{}))
		}
		if r.expiresAt != nil {
			n += 24
		}
		if r.prev != nil {
			n += int64(unsafe.Sizeof(PreviousSecret{}))
		}
	}
	return n
}

func roundUp16(n int64) int64 { return (n + 15) &^ 15 }

func orgBytes(o Org) int64 {
	return int64(unsafe.Sizeof(o)) + int64(len(o.ID)+len(o.Name)+len(o.Email)+len(o.PartnerID)+len(o.Username)+len(o.PasswordHash))
}

func planBytes(p Plan) int64 {
	return int64(unsafe.Sizeof(p)) + int64(len(p.Name)+len(p.Price)+len(p.Period)) + int64(48*len(p.Limits))
}
