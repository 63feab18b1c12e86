package rediscounter

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/quota"
)

// rateLeaseScript gives back and reserves blocks of rate-limit slots
// (ratelease.lua).
var (
	//go:embed ratelease.lua
	rateLeaseSrc    string
	rateLeaseScript = redis.NewScript(rateLeaseSrc)
)

// RateLease is one call of a lease holder (quota/lease) for rate limits of
// one charge: for each of Limits, give back the unspent part of the holder's
// last block, then, when every enforced limit has room for Cost at At,
// reserve a block of at least Cost slots of each limit that has room.
type RateLease struct {
	OrgID, KeyID string
	// At is the call's instant: the GCRA is evaluated at it, as a charge.
	At     time.Time
	Holder string
	// Cost is the charge's; 0 reserves nothing (give-backs only).
	Cost int64
	// Share: a block is at most 1/Share of a limit's free slots (more only
	// for Waiting, see RateAsk).
	Share  int64
	Limits []RateAsk
}

// RateAsk is one limit's part of a RateLease.
type RateAsk struct {
	Limit quota.RateLimit
	// Want is the block wanted (at least Cost); Waiting what requests
	// waiting for it need: the block is Cost, or up to 1/Share of the free
	// slots, or up to Waiting if more, and never more than Want.
	Want, Waiting int64
	// Horizon extends a block that would end sooner to at least At +
	// Horizon (at most the limit's burst tolerance): a sidecar spends a
	// slot no earlier than it starts, so it needs slots that far ahead to
	// admit for that long at a rate below the limit's.
	Horizon time.Duration
	// End and From give back the holder's unspent slots [From, End) of its
	// last block (unix µs): applied only while the limit's TAT is still End
	// and the holder's, so a retry or a stale give-back changes nothing.
	// End 0 gives back nothing.
	End, From int64
}

// RateLeaseReply is ratelease.lua's answer.
type RateLeaseReply struct {
	// Refused: an enforced limit had no room for Cost; nothing was reserved.
	Refused bool
	Limits  []RateGrant
}

// RateGrant is one limit's part of a RateLeaseReply.
type RateGrant struct {
	// Limited: the limit would refuse Cost (a shadow's grant is then 0).
	Limited bool
	// Debt is the limit's TAT minus At before any grant (after give-back
	// and cap), µs.
	Debt int64
	// Start and Grant are the block reserved: Grant slots from Start (unix
	// µs), each Limit.Interval long; Grant 0 means none.
	Start, Grant int64
	// TAT is the limit's TAT after the call, unix µs (-1: no state).
	TAT int64
}

// RateLease runs one rate-lease call. go-redis may retry it after a lost
// reply: a give-back applies once, a reservation may be booked twice, which
// counts slots as used and admits nothing more.
func (c *Counter) RateLease(ctx context.Context, l RateLease) (RateLeaseReply, error) {
	if err := quota.CheckOrgID(l.OrgID); err != nil {
		return RateLeaseReply{}, err
	}
	if l.Cost < 0 || l.Share < 1 || len(l.Limits) == 0 {
		return RateLeaseReply{}, fmt.Errorf("rate lease of org %s: cost %d, share %d, %d limits", l.OrgID, l.Cost, l.Share, len(l.Limits))
	}
	keys := make([]string, 0, 2*len(l.Limits))
	args := make([]any, 0, 4+8*len(l.Limits))
	args = append(args, l.Holder, l.At.UnixMicro(), l.Cost, l.Share)
	for _, a := range l.Limits {
		if err := a.Limit.Validate(); err != nil {
			return RateLeaseReply{}, fmt.Errorf("rate lease of org %s: %w", l.OrgID, err)
		}
		if a.Want < l.Cost || a.Waiting < 0 || a.Horizon < 0 || a.End < 0 || a.From > a.End {
			return RateLeaseReply{}, fmt.Errorf("rate lease of org %s: limit %s: want %d, waiting %d, give back [%d, %d)", l.OrgID, a.Limit.Name, a.Want, a.Waiting, a.From, a.End)
		}
		keys = append(keys, rateKey(l.OrgID, l.KeyID, a.Limit), rateHolderKey(l.OrgID, l.KeyID, a.Limit))
		shadow := 0
		if a.Limit.Shadow {
			shadow = 1
		}
		args = append(args, a.Limit.Interval().Microseconds(), a.Limit.EffectiveBurst(), shadow, a.Want, a.Waiting,
			a.Horizon.Microseconds(), a.End, a.From)
	}
	v, err := int64s(c.run(ctx, rateLeaseScript, keys, args...))
	if err != nil {
		return RateLeaseReply{}, storeError("rate lease of org "+l.OrgID, err)
	}
	if len(v) != 1+5*len(l.Limits) || (v[0] != 1 && v[0] != statusRefusedRate) {
		return RateLeaseReply{}, fmt.Errorf("rate lease of org %s: script: %d values for %d limits", l.OrgID, len(v), len(l.Limits))
	}
	rep := RateLeaseReply{Refused: v[0] == statusRefusedRate, Limits: make([]RateGrant, len(l.Limits))}
	for i := range l.Limits {
		x := v[1+5*i:]
		rep.Limits[i] = RateGrant{Limited: x[0] == 1, Debt: x[1], Start: x[2], Grant: x[3], TAT: x[4]}
	}
	return rep, nil
}

// rateHolderKey names the holder whose block ends at a rate limit's TAT
// (ratelease.lua). "rlh" keeps it apart from every rateKey, whatever the
// key id holds.
func rateHolderKey(org, key string, l quota.RateLimit) string {
	if l.Scope == quota.ScopeKey {
		return prefix(org) + "rlh:key:" + key + ":" + l.Name
	}
	return prefix(org) + "rlh:org:" + l.Name
}
