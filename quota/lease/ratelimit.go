package lease

import (
	"context"
	"fmt"
	"maps"
	"math"
	"time"

	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// Rate-limit leases (docs/rate-limits.md, "Leases"): a sidecar reserves a
// block of consecutive emission slots of a limit's GCRA in Redis
// (rediscounter.Counter.RateLease: the shared TAT advances by the block) and
// admits from it locally with a local TAT: a charge of cost c at instant a
// takes the slots [max(l, a), max(l, a)+c·I) of its block [l, e), only if
// they end by e and by a+τ (τ = burst·I). Every admission so occupies c
// slots that start no earlier than its instant and end within τ of it, and
// the slots of all sidecars are disjoint (Redis hands each out once), so
// over any interval [t1, t2] the fleet admits at most burst + (t2-t1)/I, as
// one GCRA does. Slots a block's local TAT passes unused are lost, never
// banked: they count as used, as a lost block does.

// Defaults of the rate-lease options.
const (
	defaultRateSpan  = 50 * time.Millisecond
	defaultRateShare = 8
)

func (c *Counter) rateSpan() time.Duration {
	if c.opt.RateSpan > 0 {
		return c.opt.RateSpan
	}
	return defaultRateSpan
}

func (c *Counter) rateShare() int64 {
	if c.opt.RateShare > 0 {
		return c.opt.RateShare
	}
	return defaultRateShare
}

// attempts bounds how often one charge waits for a call before it is
// charged per request: a charge with rate limits may wait for its quota
// block and for a rate call of each limit, and a rate call shared by many
// waiters may serve only the first.
// rateLeasable says every rate limit is large enough to lease. A block is
// at most 1/RateShare of the burst, so under a burst of 2×RateShare it is
// one slot: it saves no call, and it holds a slot another sidecar may need
// (a limit of 10 a minute shared by two sidecars would admit 9). Such a
// charge goes per request, exact as without leases.
func (c *Counter) rateLeasable(limits []quota.RateLimit) bool {
	for _, l := range limits {
		if l.EffectiveBurst() < 2*c.rateShare() {
			return false
		}
	}
	return true
}

func attempts(ch quota.Charge) int {
	if len(ch.RateLimits) > 0 {
		return 2 * maxAttempts
	}
	return maxAttempts
}

// rateHorizon is how far ahead a block reaches at least: RateSpan, and at
// most 1/RateShare of the limit's burst tolerance, so that what one sidecar
// holds ahead of its traffic stays a small part of the burst.
func (c *Counter) rateHorizon(l quota.RateLimit) time.Duration {
	return min(c.rateSpan(), time.Duration(l.EffectiveBurst())*l.Interval()/time.Duration(c.rateShare()))
}

// rateID names a rate limit's state: one per organization, or one per key
// of the organization (key is empty for an organization's limit).
type rateID struct {
	org, key, name string
	scope          quota.Scope
}

func rateIDOf(ch quota.Charge, l quota.RateLimit) rateID {
	id := rateID{org: ch.OrgID, name: l.Name, scope: l.Scope}
	if l.Scope == quota.ScopeKey {
		id.key = ch.KeyID
	}
	return id
}

// rateBlock is what this sidecar holds of one rate limit. Guarded by
// Counter.mu.
type rateBlock struct {
	id rateID
	// limit is the one the block was reserved under; interval and burst are
	// its Interval (µs) and EffectiveBurst: a charge under other numbers
	// is not served from the block.
	limit           quota.RateLimit
	interval, burst int64
	// [l, e) are the unspent slots (unix µs): l is the local TAT. l >= e
	// means none.
	l, e int64
	// r is the limit's TAT in Redis after this sidecar's last call with it
	// (-1: none): slots up to it were taken by someone.
	r int64
	// flight is the call in progress; the block is empty meanwhile (its
	// unspent slots were given back by the call).
	flight *rateFlight
	// waiting is what charges waiting for a call of this block need.
	waiting int64
	// want is the next block's size; spent and since measure the traffic.
	want    int64
	spent   int64
	since   time.Time
	lastUse time.Time
	// lastAt is the latest instant a charge was admitted from the block at:
	// a give-back is dated by it.
	lastAt time.Time
}

// fits says a charge of cost at instant a (µs) under a limit of interval
// and burst can be served from the block.
func (b *rateBlock) fits(interval, burst, a, cost int64) bool {
	if b.flight != nil || b.interval != interval || b.burst != burst {
		return false
	}
	end := max(b.l, a) + cost*interval
	return end <= b.e && end-a <= burst*interval
}

// giveBack takes the block's unspent slots out, for a call to give back.
func (b *rateBlock) giveBack() (end, from int64) {
	if b.e > b.l {
		end, from = b.e, b.l
	}
	b.l, b.e = 0, 0
	return end, from
}

// resize sets want from the traffic seen since the last call: about span
// of it, at most span of the limit's rate, at least one slot.
func (b *rateBlock) resize(now time.Time, span time.Duration) {
	ceiling := max(span.Microseconds()/b.limit.Interval().Microseconds(), 1)
	if b.want == 0 {
		b.want = ceiling
	} else if el := now.Sub(b.since); el >= 10*time.Millisecond && b.spent > 0 {
		rate := float64(b.spent) / el.Seconds()
		b.want = max(int64(math.Ceil(rate*span.Seconds())), 1)
		b.spent, b.since = 0, now
	}
	b.want = min(b.want, ceiling)
}

// rateFlight is one rate-lease call in progress. tats and err are set
// before done closes.
type rateFlight struct {
	done   chan struct{}
	blocks []*rateBlock
	// tats holds each block's limit TAT in Redis after the call (-1 none):
	// the charges that waited decide by it, as that call would have.
	tats map[*rateBlock]int64
	err  error
}

// tat is the limit TAT the call f saw for b; ok false when f is nil or had
// no part in b.
func (f *rateFlight) tat(b *rateBlock) (int64, bool) {
	if f == nil || f.err != nil {
		return 0, false
	}
	v, ok := f.tats[b]
	return v, ok
}

// rateWait is a charge waiting for a rate call.
type rateWait struct {
	f      *rateFlight
	blocks []*rateBlock
	cost   int64
}

// seen is what the rate calls a charge waited for saw, the latest first:
// prev's blocks and w's, so that a charge with several limits decides by
// every call it waited for.
func seen(prev *rateFlight, w *rateWait) *rateFlight {
	if prev == nil || prev.err != nil || w.f.err != nil {
		return w.f
	}
	f := &rateFlight{tats: make(map[*rateBlock]int64, len(prev.tats)+len(w.f.tats))}
	maps.Copy(f.tats, prev.tats)
	maps.Copy(f.tats, w.f.tats)
	return f
}

// rateBlockOf returns the block of ch's limit l, creating it. Called with mu
// held.
func (c *Counter) rateBlockOf(ch quota.Charge, l quota.RateLimit) *rateBlock {
	id := rateIDOf(ch, l)
	b := c.rates[id]
	if b == nil {
		if c.rates == nil {
			c.rates = map[rateID]*rateBlock{}
		}
		now := c.opt.Now()
		b = &rateBlock{id: id, limit: l, r: -1, since: now, lastUse: now}
		c.rates[id] = b
	}
	return b
}

// takeRates admits ch's rate limits from this sidecar's blocks, called with
// mu held once ch's quota units are at hand (quotas are checked first). It
// returns the limits' states when every block could serve ch (and spends
// them), a *quota.RateLimitedError when the call ch waited for (prev) found
// an enforced limit without room, or a call to wait for.
func (c *Counter) takeRates(ch quota.Charge, prev *rateFlight) ([]quota.RateLimitState, *rateWait, error) {
	n := len(ch.RateLimits)
	if n == 0 {
		return nil, nil, nil
	}
	a := ch.At.UnixMicro()
	blocks := make([]*rateBlock, n)
	debts := make([]int64, n)
	limited := make([]bool, n)
	var need []int
	refused := false
	for i, l := range ch.RateLimits {
		b := c.rateBlockOf(ch, l)
		blocks[i] = b
		iv, burst := l.Interval().Microseconds(), l.EffectiveBurst()
		if b.fits(iv, burst, a, ch.Cost) {
			continue
		}
		// The call ch waited for read the limit: decide as it would have,
		// unless another call is on its way.
		if tat, ok := prev.tat(b); ok && b.flight == nil {
			var debt int64
			if tat >= 0 {
				debt = min(max(tat-a, 0), burst*iv)
			}
			if ch.Cost > burst || debt+ch.Cost*iv > burst*iv {
				limited[i], debts[i] = true, debt
				refused = refused || !l.Shadow
				continue
			}
		}
		need = append(need, i)
	}
	if refused {
		_, err := quota.RateOutcome(ch, debts, limited)
		return nil, nil, err
	}
	if len(need) > 0 {
		w := &rateWait{cost: ch.Cost}
		for _, i := range need {
			if f := blocks[i].flight; f != nil {
				w.f = f
				break
			}
		}
		if w.f == nil {
			w.f = c.startRates(ch, blocks, need)
		}
		for _, i := range need {
			blocks[i].waiting += ch.Cost
			w.blocks = append(w.blocks, blocks[i])
		}
		return nil, w, nil
	}
	now := c.opt.Now()
	for i := range ch.RateLimits {
		if limited[i] { // a shadow without room: it does not advance
			continue
		}
		b := blocks[i]
		b.l = max(b.l, a) + ch.Cost*b.interval
		// What this sidecar could still admit: its block, and what Redis
		// had left after its last call.
		debts[i] = b.l - a + max(b.r-b.e, 0)
		b.spent += ch.Cost
		b.lastUse = now
		if ch.At.After(b.lastAt) {
			b.lastAt = ch.At
		}
	}
	states, err := quota.RateOutcome(ch, debts, limited)
	return states, nil, err
}

// startRates begins a call for the blocks need of ch's limits: each gives
// back its unspent slots and asks for a new block of at least ch.Cost.
// Called with mu held.
func (c *Counter) startRates(ch quota.Charge, blocks []*rateBlock, need []int) *rateFlight {
	now := c.opt.Now()
	f := &rateFlight{done: make(chan struct{})}
	rl := rediscounter.RateLease{OrgID: ch.OrgID, KeyID: ch.KeyID, At: ch.At, Holder: c.holder, Cost: ch.Cost, Share: c.rateShare()}
	for _, i := range need {
		b := blocks[i]
		b.limit = ch.RateLimits[i]
		b.resize(now, c.rateSpan())
		ask := rediscounter.RateAsk{Limit: b.limit, Want: max(b.want, ch.Cost+b.waiting), Waiting: ch.Cost + b.waiting,
			Horizon: c.rateHorizon(b.limit)}
		ask.End, ask.From = b.giveBack()
		rl.Limits = append(rl.Limits, ask)
		b.flight = f
		f.blocks = append(f.blocks, b)
	}
	c.waits.Add(1)
	go c.flyRates(f, rl)
	return f
}

// giveBackRate starts a call that gives b's unspent slots back. Called with
// mu held and no call of b in progress.
func (c *Counter) giveBackRate(b *rateBlock) *rateFlight {
	f := &rateFlight{done: make(chan struct{}), blocks: []*rateBlock{b}}
	ask := rediscounter.RateAsk{Limit: b.limit}
	ask.End, ask.From = b.giveBack()
	b.flight = f
	rl := rediscounter.RateLease{OrgID: b.id.org, KeyID: b.id.key, At: b.lastAt, Holder: c.holder, Share: c.rateShare(),
		Limits: []rediscounter.RateAsk{ask}}
	go c.flyRates(f, rl)
	return f
}

// flyRates runs one rate-lease call and applies its reply. A call without
// an answer may have reserved slots: they count as used.
func (c *Counter) flyRates(f *rateFlight, rl rediscounter.RateLease) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opt.Timeout)
	rep, err := c.rc.RateLease(ctx, rl)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	defer close(f.done)
	f.tats = make(map[*rateBlock]int64, len(f.blocks))
	c.observeRateCall(rl, rep, err)
	for j, b := range f.blocks {
		b.flight = nil
		if err != nil {
			continue
		}
		g := rep.Limits[j]
		b.r = g.TAT
		f.tats[b] = g.TAT
		if g.Grant > 0 {
			l := rl.Limits[j].Limit
			b.interval, b.burst = l.Interval().Microseconds(), l.EffectiveBurst()
			b.l, b.e = g.Start, g.Start+g.Grant*b.interval
			if rl.At.After(b.lastAt) {
				b.lastAt = rl.At
			}
		}
	}
	f.err = err
}

// observeRateCall tells the RateObserver what one call did: a call that
// asked for slots is a renewal, and every call gives back what it carried.
func (c *Counter) observeRateCall(rl rediscounter.RateLease, rep rediscounter.RateLeaseReply, err error) {
	o := c.rateObs
	var back, asked int64
	at := rl.At.UnixMicro()
	for _, ask := range rl.Limits {
		// What is given back: the slots still ahead at the call's instant.
		if iv := ask.Limit.Interval().Microseconds(); ask.End > max(ask.From, at) && iv > 0 {
			back += (ask.End - max(ask.From, at)) / iv
		}
		asked += ask.Want
	}
	switch {
	case err != nil:
		o.RateLeaseLost(back + asked)
	case back > 0:
		o.RateLeaseReturned(back)
	}
	if rl.Cost > 0 {
		result := "granted"
		switch {
		case err != nil:
			result = "failed"
		case rep.Refused:
			result = "refused"
		}
		o.RateLeaseRenewal(result)
	}
}

// awaitRates waits for the call w (err, when not nil, is takeRates's
// refusal, returned as it is).
func (c *Counter) awaitRates(ctx context.Context, ch quota.Charge, w *rateWait, err error) error {
	if err != nil {
		return err
	}
	done := true
	select {
	case <-w.f.done:
	case <-ctx.Done():
		done = false
	}
	c.mu.Lock()
	for _, b := range w.blocks {
		b.waiting -= w.cost
	}
	c.mu.Unlock()
	if !done {
		return fmt.Errorf("charging org %s: %w: %w", ch.OrgID, quota.ErrUnavailable, ctx.Err())
	}
	if w.f.err != nil {
		return fmt.Errorf("charging org %s: %w", ch.OrgID, w.f.err)
	}
	return nil
}

// correctRates turns the states of a charge made per request into this
// sidecar's view: its unspent slots, which Redis counts as used, are there
// for it to spend.
func (c *Counter) correctRates(ch quota.Charge, states []quota.RateLimitState) []quota.RateLimitState {
	if len(states) == 0 || len(states) != len(ch.RateLimits) {
		return states
	}
	a := ch.At.UnixMicro()
	debts := make([]int64, len(states))
	limited := make([]bool, len(states))
	changed := false
	c.mu.Lock()
	for i, l := range ch.RateLimits {
		debts[i], limited[i] = states[i].Reset.Microseconds(), states[i].WouldLimit
		b := c.rates[rateIDOf(ch, l)]
		if b == nil || b.flight != nil || b.interval != l.Interval().Microseconds() || b.burst != l.EffectiveBurst() {
			continue
		}
		if unspent := b.e - max(b.l, a); unspent > 0 {
			debts[i] = max(debts[i]-unspent, 0)
			changed = true
		}
	}
	c.mu.Unlock()
	if !changed {
		return states
	}
	out, err := quota.RateOutcome(ch, debts, limited)
	if err != nil {
		return states
	}
	return out
}

// rateTick gives back the blocks idle for IdleReturn and forgets the empty
// ones idle for a minute. Called with mu held.
func (c *Counter) rateTick(now time.Time) {
	var held int64
	defer func() { c.rateObs.RateLeaseOutstanding(held) }()
	at := now.UnixMicro()
	for id, b := range c.rates {
		if b.flight == nil && b.interval > 0 && b.e > max(b.l, at) {
			held += (b.e - max(b.l, at)) / b.interval
		}
		if b.flight != nil {
			continue
		}
		idle := now.Sub(b.lastUse)
		if b.e > b.l && idle >= c.opt.IdleReturn {
			if b.e <= now.UnixMicro() { // all in the past: nothing to give
				b.l, b.e = 0, 0
			} else {
				c.giveBackRate(b)
			}
			continue
		}
		if b.e <= b.l && b.waiting == 0 && idle >= forget {
			delete(c.rates, id)
		}
	}
}

// closeRates gives back every block's unspent slots, once, waiting until
// ctx ends; what it could not give back stays counted as used (and lapses
// within the limit's burst tolerance).
func (c *Counter) closeRates(ctx context.Context) {
	var wait []*rateFlight
	c.mu.Lock()
	for _, b := range c.rates {
		if b.flight == nil && b.e > b.l {
			c.giveBackRate(b)
		}
		if b.flight != nil {
			wait = append(wait, b.flight)
		}
	}
	c.mu.Unlock()
	for _, f := range wait {
		select {
		case <-f.done:
		case <-ctx.Done():
			return
		}
	}
}
