package rediscounter

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/quota"
)

// keyLeaseScript gives back and reserves blocks of a key with a max of its
// own (keylease.lua).
var (
	//go:embed keylease.lua
	keyLeaseSrc    string
	keyLeaseScript = redis.NewScript(keyLeaseSrc)
)

// KeyLease is one call of a lease holder for one key with a max of its own
// (quota/lease): units given back and a reservation from both the key's and
// the organization's quota, applied atomically by keylease.lua.
type KeyLease struct {
	OrgID, KeyID string
	Period       quota.Period
	// At is the call's instant: it picks the window and dates the claim.
	At     time.Time
	Holder string
	Hold   time.Duration
	// Returned is what the holder gave back of this key's blocks in this
	// window, in all: only the part Redis has not applied yet is applied,
	// so resending it after a lost reply is safe.
	Returned int64
	// Need > 0 asks for a block of at least Need and at most Want units,
	// at most 1/Share of the free units of the key (KeyMax) and the org
	// (OrgMax, -1 unlimited), or Waiting, if more.
	Need, Want, KeyMax, OrgMax, Share, Waiting int64
	// Avail and MarkFor are as in Lease.
	Avail   int64
	MarkFor time.Duration
}

// KeyLeaseReply is keylease.lua's answer.
type KeyLeaseReply struct {
	// Refused names the quota that had fewer than Need free units ("" =
	// none); nothing was reserved then.
	Refused quota.Scope
	// Org and Key are the usages after the call (the key's with its count
	// from org blocks); Grant, the block reserved, is counted in both.
	Org, Key, Grant int64
	// Others and MarkedUntil are as in LeaseReply.
	Others      int64
	MarkedUntil time.Time
	// Returned is what Redis has applied of the holder's returns, in all.
	Returned int64
	Window   quota.Window
}

// KeyLease runs one key lease call. go-redis may retry it after a lost
// reply: a return is applied once (Returned is cumulative), a reservation
// may be booked twice, which counts units as used and admits nothing more.
func (c *Counter) KeyLease(ctx context.Context, l KeyLease) (KeyLeaseReply, error) {
	if err := quota.CheckOrgID(l.OrgID); err != nil {
		return KeyLeaseReply{}, err
	}
	if l.Need < 0 || l.Want < l.Need || l.Returned < 0 || l.Share < 1 || l.KeyMax < 0 {
		return KeyLeaseReply{}, fmt.Errorf("key lease of org %s: need %d, want %d, returned %d, share %d, key max %d",
			l.OrgID, l.Need, l.Want, l.Returned, l.Share, l.KeyMax)
	}
	w := l.Period.Window(l.At)
	var expireAt int64
	if at := w.ExpireAt(); !at.IsZero() {
		expireAt = at.Unix()
	}
	keys := []string{orgCounterKey(l.OrgID, w.ID), keyCounterKey(l.OrgID, l.KeyID, w.ID), leaseKeysKey(l.OrgID, w.ID),
		leaseHoldersKey(l.OrgID, w.ID), keyHoldersKey(l.OrgID, l.KeyID, w.ID)}
	v, err := int64s(c.run(ctx, keyLeaseScript, keys, l.Holder, l.At.UnixMilli(), l.Hold.Milliseconds(), expireAt,
		l.Returned, l.Need, l.Want, l.KeyMax, limit(l.OrgMax), l.Share, max(l.Waiting, 0),
		max(l.Avail, 0), max(l.MarkFor.Milliseconds(), 1)))
	if err != nil {
		return KeyLeaseReply{}, storeError("key lease of org "+l.OrgID, err)
	}
	if len(v) != 7 {
		return KeyLeaseReply{}, fmt.Errorf("key lease of org %s: key lease script: %d values", l.OrgID, len(v))
	}
	rep := KeyLeaseReply{Org: v[1], Key: v[2], Grant: v[3], Others: v[4], Returned: v[6], Window: w}
	switch v[0] {
	case 0:
		rep.Refused = quota.ScopeKey
	case -1:
		rep.Refused = quota.ScopeOrg
	}
	if v[5] > 0 {
		rep.MarkedUntil = time.UnixMilli(v[5])
	}
	return rep, nil
}

// LeaseMarked reads the contention marks of an organization's quota and,
// when keyID is not empty, of a key's (lease.lua, keylease.lua) in the
// window of at: the later one, zero when none. A plain read (one command
// per mark), for a holder far from the end of a quota to learn cheaply
// whether another holder was refused lately.
func (c *Counter) LeaseMarked(ctx context.Context, orgID, keyID string, period quota.Period, at time.Time) (time.Time, error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return time.Time{}, err
	}
	w := period.Window(at)
	if keyID == "" {
		// The common read, batched with the other calls of the moment
		// (a lease holder's tick reads many organizations' marks at once).
		v, err := c.doLater(ctx, "HGET", leaseHoldersKey(orgID, w.ID), "r:")
		if errors.Is(err, redis.Nil) {
			return time.Time{}, nil
		}
		if err != nil {
			return time.Time{}, storeError("reading the lease mark of org "+orgID, err)
		}
		until, err := parseCount(v)
		if err != nil || until <= 0 {
			return time.Time{}, err
		}
		return time.UnixMilli(until), nil
	}
	cmds := []*redis.StringCmd{}
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		cmds = append(cmds, p.HGet(ctx, leaseHoldersKey(orgID, w.ID), "r:"))
		if keyID != "" {
			cmds = append(cmds, p.HGet(ctx, keyHoldersKey(orgID, keyID, w.ID), "r:"))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return time.Time{}, storeError("reading the lease marks of org "+orgID, err)
	}
	var until int64
	for _, cmd := range cmds {
		v, err := cmd.Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return time.Time{}, storeError("reading the lease marks of org "+orgID, err)
		}
		until = max(until, v)
	}
	if until <= 0 {
		return time.Time{}, nil
	}
	return time.UnixMilli(until), nil
}

// LeaseContend marks a refusal of the organization's quota (scope org) or
// of a key's (scope key) in the window of at, as a refused reservation
// does, so that the holders give back what they hold unspent, and returns
// what the live holders other than holder may hold unspent of it (as
// lease.lua and keylease.lua count it) and the quota's usage as charge.lua
// reads it. For a charge per request that the quota refused: it may wait
// for those units instead of refusing, or try again at once when the usage
// fell since.
func (c *Counter) LeaseContend(ctx context.Context, orgID, keyID string, scope quota.Scope, period quota.Period, at time.Time, holder string, markFor time.Duration) (others, used int64, err error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return 0, 0, err
	}
	w := period.Window(at)
	orgHash := leaseHoldersKey(orgID, w.ID)
	markHash := orgHash
	if scope == quota.ScopeKey {
		markHash = keyHoldersKey(orgID, keyID, w.ID)
	}
	var orgAll, keyAll *redis.MapStringStringCmd
	var counter, leased *redis.StringCmd
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		orgAll = p.HGetAll(ctx, orgHash)
		if scope == quota.ScopeKey {
			keyAll = p.HGetAll(ctx, markHash)
			counter = p.Get(ctx, keyCounterKey(orgID, keyID, w.ID))
			leased = p.HGet(ctx, leaseKeysKey(orgID, w.ID), leaseKeyField(keyID, w.ID))
		} else {
			counter = p.Get(ctx, orgCounterKey(orgID, w.ID))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, 0, storeError("reading the lease holders of org "+orgID, err)
	}
	for _, cmd := range []*redis.StringCmd{counter, leased} {
		if cmd == nil {
			continue
		}
		n, err := cmd.Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return 0, 0, storeError("reading the usage of org "+orgID, err)
		}
		used += n
	}
	// Mark only a hash that exists: it has its expiry then.
	if exists := len(orgAll.Val()) > 0 && (keyAll == nil || len(keyAll.Val()) > 0); exists {
		if err := c.rdb.HSet(ctx, markHash, "r:", at.Add(markFor).UnixMilli()).Err(); err != nil {
			return 0, 0, storeError("marking a refusal of org "+orgID, err)
		}
	}
	fields := func(m map[string]string) map[string]map[string]int64 {
		held := map[string]map[string]int64{}
		for f, v := range m {
			if len(f) < 3 || f[1] != ':' || f[2:] == holder {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				continue
			}
			h := held[f[2:]]
			if h == nil {
				h = map[string]int64{}
				held[f[2:]] = h
			}
			h[f[:2]] = n
		}
		return held
	}
	orgs := fields(orgAll.Val())
	live := func(h string) bool { return orgs[h]["t:"] > at.UnixMilli() }
	if keyAll != nil {
		for h, f := range fields(keyAll.Val()) {
			if live(h) {
				others += max(f["a:"], 0)
			}
		}
		return others, used, nil
	}
	for h, f := range orgs {
		if !live(h) {
			continue
		}
		a, ok := f["a:"]
		if !ok {
			a = f["u:"]
		}
		others += max(a, 0) + max(f["k:"], 0)
	}
	return others, used, nil
}
