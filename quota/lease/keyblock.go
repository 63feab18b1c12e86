package lease

import (
	"context"
	"time"

	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// Key blocks: a key with a max of its own reserves blocks from both its own
// counter and its organization's, in one call of keylease.lua
// (rediscounter.Counter.KeyLease). A key block is booked into both counters
// at once, so every reader counts it as used until it goes back: a lost
// block counts as used, and the key's usage needs no per-key booking. It
// is sized like an org block (about Span of the key's traffic, at most
// 1/Share of the free units of the key and the org, one unit near the
// end), given back when idle, at Close and when a max changes, and when a
// refused reservation asks for it (refusal.go). A cold key (no charge in
// the last IdleReturn) is charged per request: a block would cost it two
// calls (reserve, give back) for one request.

// keyLease is what this sidecar holds of one key's quota in one window.
// Guarded by Counter.mu.
type keyLease struct {
	ol  *orgLease
	key string
	// keyMax and orgMax are the maxes the block was reserved under (orgMax
	// -1 unlimited, -2 none yet).
	keyMax, orgMax int64
	// avail is the unspent part of the block; toReturn units taken out of
	// it to be given back by the next call.
	avail, toReturn int64
	// sent is what was asked back in all (the calls' Returned), acked what
	// Redis confirmed applied; synced says acked was learned from Redis
	// (a lease forgotten and made anew starts from what Redis applied).
	sent, acked int64
	synced      bool
	// redisKey is the key's usage as the last call saw it.
	redisKey int64
	flight   *flight
	waiting  int64
	// want, spent and since size the blocks, as for an org block.
	want, spent int64
	since       time.Time
	lastUse     time.Time
	// lastCharge dates the last charge of the key, admitted or not: a key
	// without a charge in the last IdleReturn is cold.
	lastCharge time.Time
	// reported and checked are as in orgLease.
	reported  int64
	checked   time.Time
	tight     bool
	exhausted bool
}

// keyLeasable says whether a charge can be admitted from a key block: a
// positive cost, no token, no nonce, no rate limit, and a max of the key's
// own.
func keyLeasable(ch quota.Charge) bool {
	return ch.Cost > 0 && ch.Token == "" && ch.Nonce == "" && len(ch.RateLimits) == 0 && ch.KeyMax >= 0 && ch.KeyID != ""
}

// keyLease returns ol's lease of key, creating it. Called with mu held.
func (c *Counter) keyLease(ol *orgLease, key string) *keyLease {
	kl := ol.kb[key]
	if kl == nil {
		if ol.kb == nil {
			ol.kb = map[string]*keyLease{}
		}
		now := c.opt.Now()
		kl = &keyLease{ol: ol, key: key, keyMax: -1, orgMax: -2, want: minBlock, since: now, lastUse: now}
		ol.kb[key] = kl
	}
	return kl
}

// chargeKey admits ch from its key's block, reserving one when needed;
// a cold key's charge, and one that waited too often, goes per request.
func (c *Counter) chargeKey(ctx context.Context, ch quota.Charge) (quota.Result, error) {
	w := c.window(ch.Period, ch.At)
	id := orgWindow{ch.OrgID, w.ID}
	orgMax := max(ch.OrgMax, -1)
	var refusal *quota.ExceededError
	var until time.Time
	waits, joined := 0, 0
	for attempt := 0; attempt < maxAttempts; attempt++ {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			break
		}
		ol := c.orgLease(id, ch.Period, w)
		kl := c.keyLease(ol, ch.KeyID)
		if attempt == 0 {
			now := c.opt.Now()
			cold := now.Sub(kl.lastCharge) >= c.opt.IdleReturn
			kl.lastCharge = now
			if cold && kl.avail == 0 && kl.flight == nil {
				c.mu.Unlock()
				break
			}
		}
		if kl.keyMax != ch.KeyMax || kl.orgMax != orgMax {
			// A max changed: what was reserved under the old ones goes
			// back (with the next call), blocks are reserved under the new.
			c.giveBackKey(kl)
			kl.keyMax, kl.orgMax = ch.KeyMax, orgMax
			kl.exhausted = false
		}
		if kl.avail >= ch.Cost {
			res := c.admitKey(kl, ch)
			c.mu.Unlock()
			return res, nil
		}
		lack := ch.Cost - kl.avail
		kl.waiting += lack
		c.waits.Add(1)
		f := kl.flight
		if f == nil {
			f = c.startKey(kl, lack)
		}
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
		}
		c.mu.Lock()
		kl.waiting -= lack
		short := ch.Cost - kl.avail
		keyUsed, orgUsed := kl.used(), ol.used()
		var own int64 // the org's units this sidecar holds elsewhere
		if f.refused && f.scope == quota.ScopeOrg && short >= f.need {
			own = c.yieldOwn(ol, kl)
		}
		c.mu.Unlock()
		if err := waitErr(ctx, f, refusal, "key "+ch.KeyID+" of org "+ch.OrgID); err != nil {
			return quota.Result{}, err
		}
		if f.need == 0 && joined < maxJoins {
			// A settlement or a probe, not a reservation: not an attempt.
			joined, attempt = joined+1, attempt-1
			continue
		}
		if !f.refused || short <= 0 {
			continue
		}
		if short < f.need { // refused for another waiter's larger need
			continue
		}
		ex := &quota.ExceededError{Scope: f.scope, Limit: ch.OrgMax, Used: orgUsed, Window: w}
		if f.scope == quota.ScopeKey {
			ex.Limit, ex.Used = ch.KeyMax, keyUsed
		}
		if c.awaitRefused(ctx, f.others+own, &waits, &until) {
			refusal, attempt = ex, attempt-1
			continue
		}
		return quota.Result{}, ex
	}
	return c.perRequest(ctx, ch)
}

// admitKey spends ch.Cost from kl's block. Called with mu held.
func (c *Counter) admitKey(kl *keyLease, ch quota.Charge) quota.Result {
	kl.avail -= ch.Cost
	kl.ol.keyHeld -= ch.Cost
	kl.spent += ch.Cost
	kl.lastUse = c.opt.Now()
	c.opt.Observer.LeaseOutstanding(-ch.Cost)
	if kl.flight == nil && !kl.exhausted && !kl.tight && kl.avail < max(kl.want/4, 1) {
		c.startKey(kl, 1)
	}
	return quota.Result{OrgUsed: kl.ol.used(), KeyUsed: kl.used(), Window: kl.ol.window}
}

// used is the key's usage as this sidecar knows it: Redis's at the last
// call without what the block holds unspent. Called with mu held.
func (kl *keyLease) used() int64 {
	return kl.redisKey - kl.avail - kl.toReturn - (kl.sent - kl.acked)
}

// used is the org's usage as this sidecar knows it: Redis's at the last
// call without what its org block and key blocks hold unspent. Called with
// mu held.
func (ol *orgLease) used() int64 {
	return ol.redisOrg - ol.avail - ol.toReturn - ol.keyHeld - ol.keyDoubt
}

// giveBackKey moves kl's unspent units to the next call's return. Called
// with mu held.
func (c *Counter) giveBackKey(kl *keyLease) {
	if kl.avail > 0 {
		c.opt.Observer.LeaseOutstanding(-kl.avail)
		kl.toReturn += kl.avail
		kl.avail = 0
	}
}

// yieldKey gives back what kl holds unspent at once: another holder was
// refused lately. Called with mu held and no flight of kl in progress.
func (c *Counter) yieldKey(kl *keyLease) {
	kl.tight = true
	if kl.avail == 0 {
		return
	}
	c.giveBackKey(kl)
	if !c.closed {
		c.startKey(kl, 0)
	}
}

// startKey begins kl's call: what is to go back, and, when need > 0, a
// reservation of at least need units (need 0 or probe: only tell Redis
// what is held and read the contention marks). Called with mu held and no
// flight of kl in progress.
func (c *Counter) startKey(kl *keyLease, need int64) *flight {
	ol := kl.ol
	now := c.opt.Now()
	need = max(need, 0)
	f := &flight{done: make(chan struct{})}
	kl.flight = f
	ol.calls++
	if kl.toReturn > 0 {
		kl.sent += kl.toReturn
		ol.keyHeld -= kl.toReturn
		ol.keyDoubt += kl.toReturn
		kl.toReturn = 0
	}
	l := rediscounter.KeyLease{OrgID: ol.id.org, KeyID: kl.key, Period: ol.period, At: callAt(now, ol.window),
		Holder: c.holder, Hold: c.opt.Hold, Share: c.opt.Share, Returned: kl.sent,
		KeyMax: max(kl.keyMax, 0), OrgMax: max(kl.orgMax, -1), Avail: kl.avail, MarkFor: c.opt.RefusalWait}
	if need > 0 {
		if el := now.Sub(kl.since); el >= 50*time.Millisecond && kl.spent > 0 {
			rate := float64(kl.spent) / el.Seconds()
			kl.want = min(max(int64(rate*c.opt.Span.Seconds()), minBlock), c.opt.MaxBlock)
			kl.spent, kl.since = 0, now
		}
		l.Need, l.Want, l.Waiting = need, max(kl.want, need, kl.waiting), kl.waiting
	}
	f.need = l.Need
	go c.flyKey(kl, f, l)
	return f
}

// callAt dates a call now, within the block's window w (which a charge's
// At picked, and which may not be the current one).
func callAt(now time.Time, w quota.Window) time.Time {
	switch {
	case now.Before(w.Start):
		return w.Start
	case !w.End.IsZero() && !now.Before(w.End):
		return w.End.Add(-time.Millisecond)
	}
	return now
}

// flyKey runs one key lease call and applies its reply.
func (c *Counter) flyKey(kl *keyLease, f *flight, l rediscounter.KeyLease) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opt.Timeout)
	rep, err := c.rc.KeyLease(ctx, l)
	cancel()
	if l.Need > 0 {
		switch {
		case err != nil:
			c.opt.Observer.LeaseRenewal("failed")
		case rep.Refused != "":
			c.opt.Observer.LeaseRenewal("refused")
		default:
			c.opt.Observer.LeaseRenewal("granted")
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ol := kl.ol
	kl.flight = nil
	defer close(f.done)
	ol.keyGen++
	if err != nil {
		// Whether the call was applied is unknown: what it gave back is
		// asked again (Returned is cumulative); a block it may have
		// reserved counts as used.
		if l.Need > 0 {
			c.opt.Observer.LeaseLost(l.Want)
			kl.reported = max(kl.reported, l.Avail+l.Want)
		}
		f.err = err
		return
	}
	switch {
	case !kl.synced:
		// The first answer says what Redis applied of an earlier lease of
		// this key (nothing was asked back before it).
		kl.synced = true
		kl.sent, kl.acked = max(kl.sent, rep.Returned), max(kl.acked, rep.Returned)
	case l.Returned > kl.acked:
		d := l.Returned - kl.acked
		kl.acked = l.Returned
		ol.keyDoubt -= d
		c.opt.Observer.LeaseReturned(d)
	}
	kl.redisKey, ol.redisOrg = rep.Key, rep.Org
	kl.reported, kl.checked = l.Avail+rep.Grant, c.opt.Now()
	contended := rep.MarkedUntil.After(l.At)
	if l.Need == 0 {
		if contended {
			c.yieldKey(kl)
		}
		return
	}
	if rep.Refused != "" {
		kl.exhausted = true
		f.refused, f.scope, f.others = true, rep.Refused, rep.Others
		return
	}
	kl.exhausted = false
	kl.avail += rep.Grant
	ol.keyHeld += rep.Grant
	kl.tight = rep.Grant < l.Want || contended
	c.opt.Observer.LeaseOutstanding(rep.Grant)
}

// tickKeys starts the calls of ol's key blocks that are due: a block idle
// for IdleReturn (one Tick when it was granted smaller than asked) goes
// back, a return in doubt is asked again, and a block held reads the
// contention marks (probe). A key idle for forget
// with nothing held is forgotten. Called with mu held.
func (c *Counter) tickKeys(ol *orgLease, now time.Time) {
	for k, kl := range ol.kb {
		if kl.flight != nil {
			continue
		}
		idle := now.Sub(kl.lastUse)
		if kl.avail > 0 && (idle >= c.opt.IdleReturn || (kl.tight && idle >= c.opt.Tick)) {
			c.giveBackKey(kl)
		}
		switch {
		case kl.toReturn > 0 || kl.sent > kl.acked:
			c.startKey(kl, 0)
		case c.probe(ol, kl, now):
		case kl.avail == 0 && idle >= forget && now.Sub(kl.lastCharge) >= forget:
			delete(ol.kb, k)
		}
	}
}

// closeKeys gives back ol's key blocks for Close and appends the calls to
// wait for. Called with mu held.
func (c *Counter) closeKeys(ol *orgLease, wait []*flight) []*flight {
	for _, kl := range ol.kb {
		c.giveBackKey(kl)
		f := kl.flight
		if f == nil && (kl.toReturn > 0 || kl.sent > kl.acked) {
			f = c.startKey(kl, 0)
		}
		if f != nil {
			wait = append(wait, f)
		}
	}
	return wait
}

// keysLost is what ol's key blocks could not give back. Called with mu
// held.
func (ol *orgLease) keysLost() int64 {
	var n int64
	for _, kl := range ol.kb {
		n += kl.toReturn + kl.sent - kl.acked
	}
	return n
}

// returnKeyNow gives back the units this sidecar holds of key's block at
// once and reports whether there were any.
func (c *Counter) returnKeyNow(ctx context.Context, id orgWindow, key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ol := c.orgs[id]
	if ol == nil || ol.kb[key] == nil {
		return false
	}
	kl := ol.kb[key]
	if kl.avail+kl.toReturn == 0 {
		return false
	}
	c.giveBackKey(kl)
	for range maxAttempts {
		f := kl.flight
		if f == nil {
			if kl.toReturn == 0 && kl.sent == kl.acked {
				break
			}
			f = c.startKey(kl, 0)
		}
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			c.mu.Lock()
			return false
		}
		c.mu.Lock()
	}
	return true
}

// keyBlocksGen counts the replies of id's key block calls, for
// keyBlocksHeld.
func (c *Counter) keyBlocksGen(id orgWindow) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ol := c.orgs[id]; ol != nil {
		return ol.keyGen
	}
	return 0
}

// keyBlocksHeld is what id's key blocks (all, and key's) hold unspent, to
// take off a usage read from Redis after keyBlocksGen said gen: none when a
// reply came in between (a grant applied after the read would be taken
// off: too low), so a usage is never below what was admitted. Units given
// back but not confirmed are not taken off: too high until confirmed.
func (c *Counter) keyBlocksHeld(id orgWindow, key string, gen uint64) (org, keyHeld int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ol := c.orgs[id]
	if ol == nil || ol.keyGen != gen {
		return 0, 0
	}
	if kl := ol.kb[key]; kl != nil && key != "" {
		keyHeld = kl.avail + kl.toReturn
	}
	return ol.keyHeld, keyHeld
}

// yieldOwn gives back, at once, the organization's units this sidecar
// holds elsewhere than in the block that was refused (its org block and
// its key blocks other than except; ol's org block itself when except is
// nil is left alone) and says how many there are, spent or in flight back:
// a refused charge waits for them as for other holders'. Called with mu
// held.
func (c *Counter) yieldOwn(ol *orgLease, except *keyLease) int64 {
	var n int64
	if except != nil && ol.avail+ol.toReturn > 0 {
		n += ol.avail + ol.toReturn
		c.giveBack(ol)
		if ol.flight == nil {
			c.start(ol, 0)
		}
	}
	for _, kl := range ol.kb {
		if kl == except || kl.avail+kl.toReturn == 0 {
			continue
		}
		n += kl.avail + kl.toReturn
		c.giveBackKey(kl)
		if kl.flight == nil {
			c.startKey(kl, 0)
		}
	}
	return n
}
