// Package memcounter is the in-memory quota.Counter: the embedded store of a
// single keygate process (nothing shared, nothing persisted). It answers
// exactly as quota/rediscounter does — both pass quota/countertest — and
// keeps the same entries: counters per window, meters per window, the
// rate limits' theoretical arrival times, the replies of tokens and the used
// nonces, each with its expiry.
//
// It never reads the clock: entries expire by the instants passed in
// (Charge.At and the at of the other methods), and expired ones are pruned
// lazily, at most once per second of those instants.
package memcounter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keygate/keygate/quota"
)

// tokenTTL is how long a charge's result is kept under its token, as in
// rediscounter.
const tokenTTL = 5 * time.Second

// sweepEvery is the least time, in the instants passed in, between two
// prunings of expired entries.
const sweepEvery = time.Second

// Counter is an in-memory quota.Counter. It is safe for concurrent use (one
// mutex). The zero value is not usable; call New.
type Counter struct {
	mu        sync.Mutex
	counts    map[countKey]count
	tokens    map[tagKey]tokenReply
	nonces    map[tagKey]time.Time // the nonce's expiry; zero = never
	lastSweep time.Time
}

var _ quota.Counter = (*Counter)(nil)

// Kinds of counted values, as in rediscounter's key names.
const (
	kindOrg     = "q:org"
	kindKey     = "q:key"
	kindMeter   = "m"
	kindOrgRate = "rl:org" // n is the TAT in unix µs; name is the limit's
	kindKeyRate = "rl:key" // name is "<key>:<limit>"
)

// capSlack is how far beyond its window a limit's debt must be to be
// stored capped, as in charge.lua.
const capSlack = time.Second

// rateGrace is how long an idle rate limit's state outlives its debt, as in
// charge.lua (PX of the debt plus a minute).
const rateGrace = time.Minute

// countKey names a counter as rediscounter's keys do: org, kind, the key id
// or meter name (empty for the org counter), window.
type countKey struct {
	org, kind, name, window string
}

type count struct {
	n        int64
	expireAt time.Time // zero = never
}

// tagKey names a token or a nonce of an org.
type tagKey struct{ org, tag string }

// tokenReply is what rediscounter stores under a token.
type tokenReply struct {
	status           int
	orgUsed, keyUsed int64
	// debts and limited are the rate limits' part of the reply, as charge.lua
	// replies them (statuses 1 and -3).
	debts    []int64
	limited  []bool
	expireAt time.Time
}

// Statuses of a charge, as in rediscounter's charge.lua.
const (
	statusAdmitted    = 1
	statusRefusedKey  = 0
	statusRefusedOrg  = -1
	statusReplay      = -2
	statusRefusedRate = -3
)

// New returns an empty Counter.
func New() *Counter {
	return &Counter{
		counts: make(map[countKey]count),
		tokens: make(map[tagKey]tokenReply),
		nonces: make(map[tagKey]time.Time),
	}
}

// Charge applies the quota and rate-limit rule as charge.lua does: a token
// seen before returns its first result, a used nonce is a replay, then both
// quotas are checked (the key's first), then the rate limits, before anything
// grows.
func (c *Counter) Charge(_ context.Context, ch quota.Charge) (quota.Result, error) {
	if err := quota.CheckCharge(ch); err != nil {
		return quota.Result{}, err
	}
	w := ch.Period.Window(ch.At)
	c.mu.Lock()
	c.sweep(ch.At)
	r := c.charge(ch, w)
	c.mu.Unlock()
	return result(ch, w, r)
}

// charge runs under c.mu.
func (c *Counter) charge(ch quota.Charge, w quota.Window) tokenReply {
	tk := tagKey{ch.OrgID, ch.Token}
	if ch.Token != "" {
		if r, ok := c.tokens[tk]; ok && live(r.expireAt, ch.At) {
			return r
		}
	}
	reply := func(status int, org, key int64, rc rateCheck) tokenReply {
		r := tokenReply{status: status, orgUsed: org, keyUsed: key, debts: rc.debts, limited: rc.limited}
		if ch.Token != "" {
			r.expireAt = ch.At.Add(tokenTTL)
			c.tokens[tk] = r
		}
		return r
	}
	nk := tagKey{ch.OrgID, ch.Nonce}
	if ch.Nonce != "" {
		if until, ok := c.nonces[nk]; ok && live(until, ch.At) {
			return reply(statusReplay, 0, 0, rateCheck{})
		}
	}
	ok := countKey{ch.OrgID, kindOrg, "", w.ID}
	kk := countKey{ch.OrgID, kindKey, ch.KeyID, w.ID}
	org, key := c.get(ok, ch.At), c.get(kk, ch.At)
	if ch.Cost > 0 {
		if ch.KeyMax >= 0 && key+ch.Cost > ch.KeyMax {
			return reply(statusRefusedKey, org, key, rateCheck{})
		}
		if ch.OrgMax >= 0 && org+ch.Cost > ch.OrgMax {
			return reply(statusRefusedOrg, org, key, rateCheck{})
		}
	}
	rates := c.rates(ch)
	c.storeCapped(ch, rates)
	if rates.refused {
		return reply(statusRefusedRate, org, key, rates)
	}
	if ch.Cost > 0 {
		org += ch.Cost
		key += ch.Cost
		c.counts[ok] = count{n: org, expireAt: w.ExpireAt()}
		c.counts[kk] = count{n: key, expireAt: w.ExpireAt()}
		now := ch.At.UnixMicro()
		for i, tat := range rates.tats {
			if rates.limited[i] { // a shadow that would refuse stays as it is
				continue
			}
			rates.debts[i] = tat - now
			// charge.lua's PX: the debt rounded up to a millisecond, plus a minute.
			ttl := time.Duration((rates.debts[i]+999)/1000)*time.Millisecond + rateGrace
			c.counts[rates.keys[i]] = count{n: tat, expireAt: ch.At.Add(ttl)}
		}
	}
	// rediscounter keeps a nonce's expiry in milliseconds; so does this.
	if until := ch.NonceUntil.Truncate(time.Millisecond); ch.Nonce != "" && (until.IsZero() || until.After(ch.At)) {
		c.nonces[nk] = until
	}
	return reply(statusAdmitted, org, key, rates)
}

// rateCheck is the rate limits' verdict on a charge, before anything is
// written.
type rateCheck struct {
	keys []countKey
	// debts are the limits' debts (TAT minus the instant, µs) before the
	// charge; tats the TAT each has after it, for those not limited.
	debts   []int64
	tats    []int64
	limited []bool
	refused bool
	// capped are the limits whose stored debt exceeded their window.
	capped []int
}

// storeCapped stores the capped debt of the limits a charge of cost > 0
// does not advance, as charge.lua does: it lowers a debt, it counts nothing.
func (c *Counter) storeCapped(ch quota.Charge, rc rateCheck) {
	if ch.Cost == 0 {
		return
	}
	for _, i := range rc.capped {
		if !rc.refused && !rc.limited[i] {
			continue // advanced by the charge
		}
		debt := rc.debts[i]
		ttl := time.Duration((debt+999)/1000)*time.Millisecond + rateGrace
		c.counts[rc.keys[i]] = count{n: ch.At.UnixMicro() + debt, expireAt: ch.At.Add(ttl)}
	}
}

// rates evaluates the charge's rate limits (GCRA, as in charge.lua): a limit
// of interval I and burst B admits cost c at instant t iff c <= B and
// max(TAT, t) + c*I - t <= B*I. A charge of cost 0 checks none. Under c.mu.
func (c *Counter) rates(ch quota.Charge) rateCheck {
	n := len(ch.RateLimits)
	if n == 0 {
		return rateCheck{}
	}
	now := ch.At.UnixMicro()
	rc := rateCheck{keys: make([]countKey, n), debts: make([]int64, n), tats: make([]int64, n), limited: make([]bool, n)}
	for i, l := range ch.RateLimits {
		k := countKey{ch.OrgID, kindOrgRate, l.Name, ""}
		if l.Scope == quota.ScopeKey {
			k = countKey{ch.OrgID, kindKeyRate, ch.KeyID + ":" + l.Name, ""}
		}
		rc.keys[i] = k
		interval, burst := l.Interval().Microseconds(), l.EffectiveBurst()
		var debt int64 // a limit without state is full
		if v, ok := c.counts[k]; ok && live(v.expireAt, ch.At) {
			debt = max(v.n-now, 0)
			// As in charge.lua: what a changed limit left is an empty
			// bucket of this one, stored so by the charge (storeCapped)
			// when more than capSlack beyond the window; less is what a
			// charge dated before the limit's last one sees.
			if debt > burst*interval {
				if debt > burst*interval+capSlack.Microseconds() {
					rc.capped = append(rc.capped, i)
				}
				debt = burst * interval
			}
		}
		rc.debts[i] = debt
		if ch.Cost == 0 {
			continue
		}
		if ch.Cost > burst || debt+ch.Cost*interval > burst*interval {
			rc.limited[i] = true
			rc.refused = rc.refused || !l.Shadow
			continue
		}
		rc.tats[i] = now + debt + ch.Cost*interval
	}
	return rc
}

// result turns a reply into what Charge returns, as rediscounter does.
func result(ch quota.Charge, w quota.Window, r tokenReply) (quota.Result, error) {
	var states []quota.RateLimitState
	if r.status == statusAdmitted || r.status == statusRefusedRate {
		if len(ch.RateLimits) > 0 {
			var err error
			if states, err = quota.RateOutcome(ch, r.debts, r.limited); err != nil {
				var rl *quota.RateLimitedError
				if errors.As(err, &rl) {
					return quota.Result{}, err
				}
				return quota.Result{}, fmt.Errorf("charging org %s: %w", ch.OrgID, err)
			}
		}
	}
	switch r.status {
	case statusRefusedKey:
		return quota.Result{}, &quota.ExceededError{Scope: quota.ScopeKey, Limit: ch.KeyMax, Used: r.keyUsed, Window: w}
	case statusRefusedOrg:
		return quota.Result{}, &quota.ExceededError{Scope: quota.ScopeOrg, Limit: ch.OrgMax, Used: r.orgUsed, Window: w}
	case statusReplay:
		return quota.Result{}, fmt.Errorf("charging org %s: %w", ch.OrgID, quota.ErrReplay)
	case statusRefusedRate:
		return quota.Result{}, fmt.Errorf("charging org %s: rate refusal without a refusing limit", ch.OrgID)
	}
	return quota.Result{OrgUsed: r.orgUsed, KeyUsed: r.keyUsed, Window: w, RateLimits: states}, nil
}

// Usage reads the org's and, when keyID is set, the key's counter.
func (c *Counter) Usage(_ context.Context, orgID, keyID string, period quota.Period, at time.Time) (quota.Usage, error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return quota.Usage{}, err
	}
	w := period.Window(at)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweep(at)
	u := quota.Usage{Window: w, Org: c.get(countKey{orgID, kindOrg, "", w.ID}, at)}
	if keyID != "" {
		u.Key = c.get(countKey{orgID, kindKey, keyID, w.ID}, at)
	}
	return u, nil
}

// Add books the deltas, each in the window of its meter's period at at, and
// returns the totals after each.
func (c *Counter) Add(_ context.Context, orgID string, at time.Time, deltas []quota.MeterDelta) ([]int64, error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return nil, err
	}
	out := make([]int64, len(deltas))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweep(at)
	// Check every delta (a meter may be named twice) before applying any.
	next := make(map[countKey]int64, len(deltas))
	for i, d := range deltas {
		k := countKey{orgID, kindMeter, d.Meter.Name, d.Meter.Period.Window(at).ID}
		cur, ok := next[k]
		if !ok {
			cur = c.get(k, at)
		}
		sum := cur + d.Delta
		if (d.Delta > 0 && sum < cur) || (d.Delta < 0 && sum > cur) {
			return nil, fmt.Errorf("booking meter %s of org %s: %w", d.Meter.Name, orgID, quota.ErrOverflow)
		}
		next[k], out[i] = sum, sum
	}
	for _, d := range deltas {
		w := d.Meter.Period.Window(at)
		k := countKey{orgID, kindMeter, d.Meter.Name, w.ID}
		c.counts[k] = count{n: next[k], expireAt: w.ExpireAt()}
	}
	return out, nil
}

// Meters reads the meters in the order asked.
func (c *Counter) Meters(_ context.Context, orgID string, at time.Time, meters []quota.Meter) ([]int64, error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return nil, err
	}
	out := make([]int64, len(meters))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweep(at)
	for i, m := range meters {
		out[i] = c.get(countKey{orgID, kindMeter, m.Name, m.Period.Window(at).ID}, at)
	}
	return out, nil
}

// get returns a counter's value at at; an expired one reads as zero. Under c.mu.
func (c *Counter) get(k countKey, at time.Time) int64 {
	if v, ok := c.counts[k]; ok && live(v.expireAt, at) {
		return v.n
	}
	return 0
}

// live reports whether an entry expiring at expireAt (zero = never) still
// exists at at.
func live(expireAt, at time.Time) bool { return expireAt.IsZero() || expireAt.After(at) }

// sweep deletes the entries expired at at, at most once per sweepEvery of
// the instants passed in; reads check expiry themselves, so sweeping only
// bounds memory. Under c.mu.
func (c *Counter) sweep(at time.Time) {
	if at.Sub(c.lastSweep) < sweepEvery {
		return
	}
	c.lastSweep = at
	for k, v := range c.counts {
		if !live(v.expireAt, at) {
			delete(c.counts, k)
		}
	}
	for k, v := range c.tokens {
		if !live(v.expireAt, at) {
			delete(c.tokens, k)
		}
	}
	for k, until := range c.nonces {
		if !live(until, at) {
			delete(c.nonces, k)
		}
	}
}
