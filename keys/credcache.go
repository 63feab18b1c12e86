package keys

import (
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
	entries    map[SecretHash]*cacheEntry
	orgs       map[string]*orgSlot
	// hand is the CLOCK hand over the ring of entries; nil when empty.
	hand *cacheEntry
	// perms interns permission lists, which are few and alike.
	perms map[string][]Permission
}

// cacheEntry is one cached key. Its size is what a cached key costs beyond
// its strings: keep it small.
type cacheEntry struct {
	key  Key
	slot *orgSlot
	hash SecretHash
	// verified is when the store last confirmed the key, in Unix
	// nanoseconds of the Authenticator's clock.
	verified int64
	// prev and next link the CLOCK ring; orgNext and orgPrev the slot's
	// entries.
	prev, next       *cacheEntry
	orgPrev, orgNext *cacheEntry
	size             int32
	// used is set by a hit and cleared by the CLOCK hand.
	used atomic.Bool
	// previous is set when hash is the key's previous secret.
	previous bool
}

// orgSlot is what the cached keys of one organization share.
type orgSlot struct {
	org   Org
	plan  Plan
	first *cacheEntry
	n     int
	size  int32
}

// Fixed costs of the estimate: the entry itself and its share of the map.
const (
	entryFixed = int64(unsafe.Sizeof(cacheEntry{})) + 64
	slotFixed  = int64(unsafe.Sizeof(orgSlot{})) + 96
	// maxPermSets bounds the interned permission lists.
	maxPermSets = 1024
)

func newCredCache(maxBytes int64, maxEntries int) *credCache {
	return &credCache{maxBytes: maxBytes, maxEntries: maxEntries, entries: make(map[SecretHash]*cacheEntry),
		orgs: make(map[string]*orgSlot), perms: make(map[string][]Permission)}
}

// get returns the entry of h and marks it used.
func (c *credCache) get(h SecretHash) (*cacheEntry, bool) {
	e, ok := c.entries[h]
	if ok && !e.used.Load() {
		e.used.Store(true)
	}
	return e, ok
}

// principal returns the principal e stands for.
func (e *cacheEntry) principal() Principal {
	return Principal{Key: e.key, Org: e.slot.org, Plan: e.slot.plan,
		VerifiedAt: time.Unix(0, e.verified), PreviousSecret: e.previous}
}

// put caches p under h, verified at v, replacing an entry h had, and evicts
// until the cache fits its bound again. p's organization and plan replace
// the slot's: they were read no earlier than the slot's were confirmed.
func (c *credCache) put(h SecretHash, p Principal, v time.Time) {
	c.drop(h)
	slot := c.orgs[p.Org.ID]
	if slot == nil {
		slot = &orgSlot{}
		c.orgs[p.Org.ID] = slot
	} else {
		c.bytes -= int64(slot.size)
	}
	slot.org, slot.plan = p.Org, p.Plan
	slot.size = int32(slotFixed + orgBytes(p.Org) + planBytes(p.Plan))
	c.bytes += int64(slot.size)

	e := &cacheEntry{key: p.Key, slot: slot, hash: h, verified: v.UnixNano(), previous: p.PreviousSecret}
	e.key.OrgID = slot.org.ID // share the string
	e.key.LastUsedAt = nil    // not part of a principal
	e.key.SealedSecret = nil
	e.key.Permissions = c.intern(e.key.Permissions)
	e.size = int32(entryFixed + keyBytes(e.key))
	c.entries[h] = e
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
		c.drop(e.hash)
		return
	}
	c.drop(c.hand.hash) // every entry was used twice over: drop the hand's
}

// drop forgets the entry of h, if any.
func (c *credCache) drop(h SecretHash) {
	e, ok := c.entries[h]
	if !ok {
		return
	}
	delete(c.entries, h)
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
			if s.first != nil && r.Covers(s.first.principal()) {
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
		if e.key.UID == r.KeyUID {
			c.drop(e.hash)
		}
		e = next
	}
}

// dropSlot drops every entry of an organization.
func (c *credCache) dropSlot(s *orgSlot) {
	for s.first != nil {
		c.drop(s.first.hash)
	}
}

// clear forgets everything.
func (c *credCache) clear() {
	clear(c.entries)
	clear(c.orgs)
	c.hand, c.bytes = nil, 0
}

// intern returns the shared copy of a permission list.
func (c *credCache) intern(ps []Permission) []Permission {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(string(p))
		b.WriteByte(0)
	}
	k := b.String()
	if shared, ok := c.perms[k]; ok {
		return shared
	}
	if len(c.perms) >= maxPermSets {
		return ps
	}
	c.perms[k] = ps
	return ps
}

// keyBytes estimates the heap a cached key holds beyond its struct.
func keyBytes(k Key) int64 {
	n := int64(len(k.UID) + len(k.Name) + len(k.Comment))
	if k.MaxAPIRequests != nil {
		n += 8
	}
	if k.RateLimit != nil {
		n += int64(unsafe.Sizeof(RateLimit{}))
	}
	if k.ExpiresAt != nil {
		n += 24
	}
	if k.Previous != nil {
		n += int64(unsafe.Sizeof(PreviousSecret{}))
	}
	return n
}

func orgBytes(o Org) int64 {
	return int64(unsafe.Sizeof(o)) + int64(len(o.ID)+len(o.Name)+len(o.Email)+len(o.PartnerID)+len(o.Username)+len(o.PasswordHash))
}

func planBytes(p Plan) int64 {
	return int64(unsafe.Sizeof(p)) + int64(len(p.Name)+len(p.Price)+len(p.Period)) + int64(48*len(p.Limits))
}
