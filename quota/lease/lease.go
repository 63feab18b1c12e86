package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/rediscounter"
)

// Observer learns what the leases do, for metrics. Its methods must be
// cheap and safe for concurrent use.
type Observer interface {
	// LeaseOutstanding adds delta to the units held unspent.
	LeaseOutstanding(delta int64)
	// LeaseRenewal counts one reservation call by its result: "granted",
	// "refused" (too few free units) or "failed" (no answer).
	LeaseRenewal(result string)
	// LeaseReturned counts units given back unspent.
	LeaseReturned(n int64)
	// LeaseLost counts units counted as used without being admitted: a
	// block whose reply was lost, or one still held when Close gave up.
	LeaseLost(n int64)
}

// Options tune a Counter. The zero value of each field picks its default.
type Options struct {
	// Tick is how often held blocks and counts are looked at (250ms).
	Tick time.Duration
	// IdleReturn: a block unused this long goes back, and a key's count is
	// booked (500ms). With Tick, what is held comes back within
	// IdleReturn+Tick plus one round trip of going idle.
	IdleReturn time.Duration
	// FlushEvery bounds how long a key's count waits in this process
	// while traffic goes on and no renewal carries it (5s); less than
	// Hold, so that other sidecars see a live claim for every count not
	// in Redis yet.
	FlushEvery time.Duration
	// FoldEvery bounds how long a key's count stays in this holder's held
	// counts in Redis (one field per organization and window, see
	// rediscounter.Lease.Held) before it is folded into the per-key hash
	// while traffic goes on (2m); an idle organization's are folded with
	// its block's return, and at Close. Folding costs Redis per key, held
	// counts per byte sent with each call: the default balances the two
	// for keys seen every few seconds.
	FoldEvery time.Duration
	// MaxHeld bounds a holder's held counts of one organization, encoded
	// (32 KiB): past it they are folded at once.
	MaxHeld int
	// Span sizes blocks: about this much of the observed traffic (2s).
	Span time.Duration
	// MaxBlock bounds a block (1<<20).
	MaxBlock int64
	// Share: a block is at most 1/Share of the organization's free units
	// (16).
	Share int64
	// Hold is how long a holder's claim stays live in Redis after its last
	// call, for the usage readers of other sidecars (10s).
	Hold time.Duration
	// Timeout bounds each Redis call made in the background (250ms).
	Timeout time.Duration
	// RefusalWait bounds how long a charge refused for want of free units
	// waits, while other holders may hold unspent ones, for them to come
	// back (IdleReturn+2*Tick); never past the charge's context deadline.
	RefusalWait time.Duration
	Observer    Observer
	// Now is the clock of the background work (time.Now); charges are
	// dated by their At as always.
	Now func() time.Time
	// RateSpan sizes rate-limit blocks: about this much of the observed
	// traffic, at most this much of the limit's rate (50ms). See
	// ratelimit.go.
	RateSpan time.Duration
	// RateShare: a rate-limit block is at most 1/RateShare of the limit's
	// free slots, unless requests wait for more (8).
	RateShare int64
}

func (o *Options) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Tick, 250*time.Millisecond)
	def(&o.IdleReturn, 500*time.Millisecond)
	def(&o.FlushEvery, 5*time.Second)
	def(&o.Span, 2*time.Second)
	def(&o.Hold, 10*time.Second)
	o.FlushEvery = min(o.FlushEvery, o.Hold/2)
	def(&o.FoldEvery, 2*time.Minute)
	if o.MaxHeld <= 0 {
		o.MaxHeld = 32 << 10
	}
	o.MaxHeld = min(o.MaxHeld, rediscounter.MaxHeldBytes)
	def(&o.Timeout, 250*time.Millisecond)
	def(&o.RefusalWait, o.IdleReturn+2*o.Tick)
	if o.MaxBlock <= 0 {
		o.MaxBlock = 1 << 20
	}
	if o.Share <= 0 {
		o.Share = 16
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// RateObserver learns what the rate-limit leases do (ratelimit.go), for
// metrics; an Options.Observer that implements it is told. Its methods must
// be cheap and safe for concurrent use.
type RateObserver interface {
	// RateLeaseOutstanding sets the slots of rate limits held unspent and
	// not yet past, as of the latest tick.
	RateLeaseOutstanding(slots int64)
	// RateLeaseRenewal counts one reservation call by its result:
	// "granted", "refused" (a limit had no room) or "failed" (no answer).
	RateLeaseRenewal(result string)
	// RateLeaseReturned counts slots offered back unspent by a call that
	// was answered.
	RateLeaseReturned(slots int64)
	// RateLeaseLost counts slots a call without an answer may have left
	// counted as used: those it gave back, and at most those it asked for.
	RateLeaseLost(slots int64)
}

type nopObserver struct{}

func (nopObserver) RateLeaseOutstanding(int64) {}
func (nopObserver) RateLeaseRenewal(string)    {}
func (nopObserver) RateLeaseReturned(int64)    {}
func (nopObserver) RateLeaseLost(int64)        {}

func (nopObserver) LeaseOutstanding(int64) {}
func (nopObserver) LeaseRenewal(string)    {}
func (nopObserver) LeaseReturned(int64)    {}
func (nopObserver) LeaseLost(int64)        {}

// minBlock is the block asked for before any traffic was observed.
const minBlock = 8

// maxAttempts bounds how often one charge waits for a block before it is
// charged per request.
const maxAttempts = 4

// Counter is a quota.Counter that admits from blocks of the organizations'
// quotas reserved in Redis (see the package documentation). It is safe for
// concurrent use; create it with New and stop it with Close.
type Counter struct {
	rc     *rediscounter.Counter
	opt    Options
	holder string

	tokenSeq atomic.Uint64
	// lastWindow is the window of the last leased charge (window).
	lastWindow atomic.Pointer[windowMemo]
	// waits counts charges that waited for a call (for the benchmark).
	waits atomic.Int64
	stop  chan struct{}
	done  chan struct{}

	mu     sync.Mutex
	orgs   map[orgWindow]*orgLease
	closed bool
	// rates are the rate-limit blocks (ratelimit.go).
	rates map[rateID]*rateBlock
	// rateObs is told what they do (Options.Observer, when it is one).
	rateObs RateObserver
}

var _ quota.Counter = (*Counter)(nil)

// orgWindow names an organization's quota in one window.
type orgWindow struct{ org, window string }

// orgLease is what this sidecar holds of one organization's quota in one
// window. Guarded by Counter.mu.
type orgLease struct {
	id     orgWindow
	period quota.Period
	window quota.Window
	// orgMax is the max the block was reserved under (-1 unlimited).
	orgMax int64
	// avail is the unspent part of the block; toReturn units taken out of
	// it to be given back by the next call.
	avail, toReturn int64
	// redisOrg is the org counter as the last call saw it.
	redisOrg int64
	keys     map[string]*tally
	// dirty lists the keys with pending counts or no known count, so a
	// settlement does not walk every key of the organization.
	dirty []string
	// held lists the keys whose counts are in this holder's held counts
	// (tally.held), heldSize bounds their encoding, heldSince is when the
	// first of them went there (see held.go).
	held      []string
	heldSize  int
	heldSince time.Time
	// confirmed are the held counts Redis holds for this holder as far
	// as it knows (the last held counts applied); heldListed says Redis
	// lists it as a holder of held counts; ack says its held counts were
	// adopted and the next settlement says it knows (held.go).
	confirmed  []rediscounter.KeyCount
	heldListed bool
	ack        bool
	// foldSoon: a key with held counts was charged under a max of its
	// own; its counts are folded with the next call, so that the max sees
	// them (held.go).
	foldSoon bool
	// seq numbers this holder's settlements; doubt is one sent whose reply
	// was lost: it is sent again, unchanged, before any other.
	seq   uint64
	doubt *settlement
	// flight is the one call in progress, shared by everyone waiting.
	flight *flight
	// waiting is what the requests waiting for a block lack.
	waiting int64
	// want is the next block's size; spent and since measure the traffic.
	want      int64
	spent     int64
	since     time.Time
	lastUse   time.Time
	oldest    time.Time // of the counts not yet sent; zero when none
	tight     bool      // the last grant was smaller than wanted
	exhausted bool      // the last reservation was refused
	// reported is what Redis was last told this sidecar holds unspent
	// (a:<holder>, at least avail); checked is when a reply last came.
	reported int64
	checked  time.Time
	// kb are the blocks of the org's keys with a max of their own
	// (keyblock.go); keyHeld is what they hold unspent, keyDoubt what they
	// gave back without a confirmation yet; keyGen counts their replies.
	kb       map[string]*keyLease
	keyHeld  int64
	keyDoubt int64
	keyGen   uint64
	// calls counts the calls started for the org's block and its keys'
	// (a usage read sees whether one started while it read).
	calls uint64
}

// hasPending says some keys' counts are not sent yet (oldest dates them).
func (ol *orgLease) hasPending() bool { return !ol.oldest.IsZero() }

// tally is one key's requests admitted from the organization's block.
type tally struct {
	// base is the key's lease count in Redis as last seen; known says base
	// was read at least once.
	base  int64
	known bool
	// pending are not sent yet; held are in this holder's held counts in
	// Redis (or in a settlement that puts them there); flying are in a
	// fold not confirmed.
	pending, held, flying int64
	// listed: the key is on its organization's dirty list.
	listed bool
}

// settlement is what one call books and gives back.
type settlement struct {
	seq  uint64
	keys []rediscounter.KeyCount
	ret  int64
	// held replaces the holder's held counts when not nil (first: the
	// first since a fold); fold says keys are those counts, folded into
	// the per-key hash (held.go).
	held             []rediscounter.KeyCount
	fold, first, ack bool
}

// flight is one call in progress. need is the reservation it asks for (0
// none); refused and err are set before done closes.
type flight struct {
	done    chan struct{}
	need    int64
	refused bool
	// others is, for a refused reservation, what other holders may hold
	// unspent: the refused charges wait for it (Options.RefusalWait).
	others int64
	// scope is the quota that refused a key block's reservation.
	scope quota.Scope
	err   error
}

// New returns a Counter that leases from rc and starts its background
// work. holder names this process among the sidecars sharing Redis; empty
// picks a random one.
func New(rc *rediscounter.Counter, holder string, o Options) *Counter {
	o.defaults()
	if holder == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		holder = hex.EncodeToString(b[:])
	}
	c := &Counter{rc: rc, opt: o, holder: holder, orgs: map[orgWindow]*orgLease{},
		stop: make(chan struct{}), done: make(chan struct{}), rateObs: nopObserver{}}
	if ro, ok := o.Observer.(RateObserver); ok {
		c.rateObs = ro
	}
	go c.loop()
	return c
}

// Holder is this Counter's holder id.
func (c *Counter) Holder() string { return c.holder }

// leasable says whether a charge can be admitted from a block: a positive
// cost, no token (a retried charge must get its first answer), no nonce and
// no max of the key's own; its rate limits lease too (ratelimit.go). Every
// other charge is charged per request, as without leases.
func leasable(ch quota.Charge) bool {
	return ch.Cost > 0 && ch.Token == "" && ch.Nonce == "" && ch.KeyMax < 0 && ch.KeyID != ""
}

// Charge admits ch from the organization's block when it can (see
// leasable), reserving a new block when needed; otherwise it charges per
// request.
func (c *Counter) Charge(ctx context.Context, ch quota.Charge) (quota.Result, error) {
	if err := quota.CheckCharge(ch); err != nil {
		return quota.Result{}, err
	}
	if keyLeasable(ch) {
		return c.chargeKey(ctx, ch)
	}
	if !leasable(ch) || !c.rateLeasable(ch.RateLimits) {
		return c.perRequest(ctx, ch)
	}
	w := c.window(ch.Period, ch.At)
	id := orgWindow{ch.OrgID, w.ID}
	orgMax := max(ch.OrgMax, -1)
	// refusal is the last refusal while other holders held units: the
	// charge waits for them to come back, up to until (refusal.go).
	var refusal *quota.ExceededError
	var until time.Time
	waits, joined := 0, 0
	var rf *rateFlight // the rate call this charge waited for last
	tries := attempts(ch)
	for attempt := 0; attempt < tries; attempt++ {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			break
		}
		ol := c.orgLease(id, ch.Period, w)
		if ol.orgMax != orgMax {
			// The org's max changed: what was reserved under the old one
			// goes back, and blocks are reserved under the new one.
			c.giveBack(ol)
			ol.orgMax = orgMax
			ol.exhausted = false
		}
		if ol.avail >= ch.Cost {
			rates, w, err := c.takeRates(ch, rf)
			if w != nil || err != nil {
				c.mu.Unlock()
				if err := c.awaitRates(ctx, ch, w, err); err != nil {
					return quota.Result{}, err
				}
				rf = seen(rf, w)
				continue
			}
			res, needBase := c.admit(ol, ch)
			res.RateLimits = rates
			c.mu.Unlock()
			if needBase {
				res.KeyUsed = c.learnBase(ctx, id, ch.KeyID, res.KeyUsed)
			}
			return res, nil
		}
		lack := ch.Cost - ol.avail
		ol.waiting += lack
		c.waits.Add(1)
		f := ol.flight
		if f == nil {
			f = c.start(ol, lack)
		}
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
		}
		c.mu.Lock()
		ol.waiting -= lack
		c.mu.Unlock()
		if err := waitErr(ctx, f, refusal, "org "+ch.OrgID); err != nil {
			return quota.Result{}, err
		}
		if f.need == 0 && joined < maxJoins {
			// A settlement or a probe, not a reservation: not an attempt.
			joined, attempt = joined+1, attempt-1
			continue
		}
		if f.refused {
			c.mu.Lock()
			short := ch.Cost - ol.avail
			used := ol.used()
			var own int64 // units of the org this sidecar's key blocks hold
			if short >= f.need {
				own = c.yieldOwn(ol, nil)
			}
			c.mu.Unlock()
			// Refused for more than this charge lacks (another waiter's
			// larger need): ask again.
			if short > 0 && short < f.need {
				continue
			}
			if short > 0 {
				ex := &quota.ExceededError{Scope: quota.ScopeOrg, Limit: ch.OrgMax, Used: used, Window: w}
				if c.awaitRefused(ctx, f.others+own, &waits, &until) {
					refusal, attempt = ex, attempt-1
					continue
				}
				return quota.Result{}, ex
			}
		}
	}
	return c.perRequest(ctx, ch)
}

// windowMemo is the last window a charge was dated in.
type windowMemo struct {
	p quota.Period
	w quota.Window
}

// window is p.Window(at), without building it again (an allocation per
// charge, for its ID) while the charges stay in the window of the last
// one.
func (c *Counter) window(p quota.Period, at time.Time) quota.Window {
	if m := c.lastWindow.Load(); m != nil && m.p == p && !at.Before(m.w.Start) && (m.w.End.IsZero() || at.Before(m.w.End)) {
		return m.w
	}
	w := p.Window(at)
	c.lastWindow.Store(&windowMemo{p: p, w: w})
	return w
}

// orgLease returns the lease of id, creating it. Called with mu held.
func (c *Counter) orgLease(id orgWindow, p quota.Period, w quota.Window) *orgLease {
	ol := c.orgs[id]
	if ol == nil {
		now := c.opt.Now()
		ol = &orgLease{id: id, period: p, window: w, orgMax: -2, keys: map[string]*tally{}, want: minBlock, since: now, lastUse: now}
		c.orgs[id] = ol
	}
	return ol
}

// admit spends ch.Cost from ol's block. needBase says the key's count in
// Redis is not known yet. Called with mu held.
func (c *Counter) admit(ol *orgLease, ch quota.Charge) (quota.Result, bool) {
	now := c.opt.Now()
	ol.avail -= ch.Cost
	ol.spent += ch.Cost
	ol.lastUse = now
	c.opt.Observer.LeaseOutstanding(-ch.Cost)
	t := ol.keys[ch.KeyID]
	if t == nil {
		t = &tally{}
		ol.keys[ch.KeyID] = t
	}
	if t.pending == 0 && !t.listed {
		t.listed = true
		ol.dirty = append(ol.dirty, ch.KeyID)
	}
	t.pending += ch.Cost
	if !ol.hasPending() {
		ol.oldest = now
	}
	// Renew ahead of exhaustion, in the background; not near the end of
	// the quota (the last grant was cut), where a block reserved ahead
	// would be held while other sidecars are refused. The tick renews a
	// block before it gets this low (renewDue), together with the other
	// organizations' calls of that tick, in one pipeline; a request
	// renews it only when traffic outran the tick.
	if ol.flight == nil && c.mayRenew(ol) && ol.avail < max(ol.want/8, 2) {
		c.start(ol, 1)
	}
	res := quota.Result{OrgUsed: ol.used(), KeyUsed: t.base + t.unbooked(), Window: ol.window}
	return res, !t.known
}

// mayRenew says ol's block may be renewed ahead: the last reservation was
// neither refused nor cut (near the end of the quota a block reserved
// ahead would be held while other sidecars are refused). Called with mu
// held.
func (c *Counter) mayRenew(ol *orgLease) bool { return !ol.exhausted && !ol.tight }

// renewDue says the tick renews ol's block now: it is in use and would
// fall below what a request renews at (a quarter of a block) before the
// next tick, at the traffic it was sized for. Renewals started by the tick
// go out with the other calls of that tick in one pipeline, where a call
// costs Redis a fraction of a lone one. Called with mu held and no flight
// of ol in progress.
func (c *Counter) renewDue(ol *orgLease, now time.Time) bool {
	if c.closed || !c.mayRenew(ol) || ol.orgMax == -2 || ol.toReturn > 0 || now.Sub(ol.lastUse) >= c.opt.IdleReturn {
		return false
	}
	perTick := int64(float64(ol.want) * c.opt.Tick.Seconds() / c.opt.Span.Seconds())
	return ol.avail < max(ol.want/4+perTick, 2)
}

// learnBase books a key seen for the first time at once, so that its
// usage in the result is exact, and returns it (fallback if that fails).
func (c *Counter) learnBase(ctx context.Context, id orgWindow, key string, fallback int64) int64 {
	for range maxAttempts {
		c.mu.Lock()
		ol := c.orgs[id]
		if ol == nil {
			c.mu.Unlock()
			return fallback
		}
		t := ol.keys[key]
		if t == nil || t.known {
			var used int64
			if t != nil {
				used = t.base + t.unbooked()
			}
			c.mu.Unlock()
			return max(used, fallback)
		}
		f := ol.flight
		if f == nil {
			f = c.start(ol, 0)
		}
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return fallback
		}
	}
	return fallback
}

// giveBack moves ol's unspent units to the next call's return. Called with
// mu held.
func (c *Counter) giveBack(ol *orgLease) {
	if ol.avail > 0 {
		c.opt.Observer.LeaseOutstanding(-ol.avail)
		ol.toReturn += ol.avail
		ol.avail = 0
	}
}

// start begins ol's call: its settlement (the one in doubt, or what is
// pending) and, when need > 0, a reservation of at least need units; need
// probe only tells Redis what is held and learns whether others were
// refused (the settlement in doubt goes along). Called with mu held and no
// flight in progress.
func (c *Counter) start(ol *orgLease, need int64) *flight {
	now := c.opt.Now()
	f := &flight{done: make(chan struct{})}
	ol.flight = f
	ol.calls++
	isProbe := need == probeNeed
	need = max(need, 0)
	// A settlement that finds the block low renews it too: requests would
	// otherwise wait for it to end before a renewal could start.
	if need == 0 && !isProbe && !c.closed && !ol.tight && !ol.exhausted && ol.toReturn == 0 && ol.orgMax > -2 &&
		now.Sub(ol.lastUse) < c.opt.IdleReturn && ol.avail < max(ol.want/2, 1) {
		need = 1
	}
	s := ol.doubt
	// A renewal carries the keys' pending counts: they go to this holder's
	// held counts, one field whatever the number of keys (held.go).
	if s == nil && !isProbe && (need == 0 || ol.toReturn > 0 || ol.hasPending() || c.foldDue(ol, now)) {
		s = c.settlement(ol)
	}
	ol.doubt = s
	l := rediscounter.Lease{OrgID: ol.id.org, Period: ol.period, At: now, Holder: c.holder, Hold: c.opt.Hold, Share: c.opt.Share,
		Avail: ol.avail, MarkFor: c.opt.RefusalWait}
	// The call is dated now, within the block's window (which a charge's
	// At picked, and which may not be the current one).
	switch {
	case now.Before(ol.window.Start):
		l.At = ol.window.Start
	case !ol.window.End.IsZero() && !now.Before(ol.window.End):
		l.At = ol.window.End.Add(-time.Millisecond)
	}
	if s != nil {
		l.Seq, l.Keys, l.Return, l.Held, l.Fold, l.HeldFirst, l.Ack = s.seq, s.keys, s.ret, s.held, s.fold, s.first, s.ack
	}
	if need > 0 {
		if now.Sub(ol.lastUse) >= c.opt.IdleReturn {
			// The first reservation after a pause: the traffic is measured
			// again from now, and the block is sized as before the pause.
			// Measured across the pause, it would be a fraction of the
			// traffic that resumes, costing a few small blocks to grow back.
			ol.spent, ol.since = 0, now
		}
		if el := now.Sub(ol.since); el >= 50*time.Millisecond && ol.spent > 0 {
			rate := float64(ol.spent) / el.Seconds()
			ol.want = min(max(int64(rate*c.opt.Span.Seconds()), minBlock), c.opt.MaxBlock)
			ol.spent, ol.since = 0, now
		}
		l.Need, l.Want, l.OrgMax, l.Waiting = need, max(ol.want, need, ol.waiting), ol.orgMax, ol.waiting
	}
	f.need = l.Need
	go c.fly(ol, f, s, l)
	return f
}

// settlement takes what ol owes Redis: the keys' pending counts, which go to
// the holder's held counts or, when due, are folded with them into the
// per-key hash (settleKeys, held.go); keys whose count is not known yet, to
// learn it; and the units to give back. nil when there is nothing. Called
// with mu held.
func (c *Counter) settlement(ol *orgLease) *settlement {
	s := c.settleKeys(ol)
	s.ret, ol.toReturn = ol.toReturn, 0
	if len(s.keys) == 0 && s.ret == 0 && s.held == nil && !s.fold {
		return nil
	}
	ol.seq++
	s.seq, s.ack = ol.seq, ol.ack
	return s
}

// fly runs one call and applies its reply.
func (c *Counter) fly(ol *orgLease, f *flight, s *settlement, l rediscounter.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opt.Timeout)
	rep, err := c.rc.Lease(ctx, l)
	cancel()
	if l.Need > 0 && !rep.Adopted {
		switch {
		case err != nil:
			c.opt.Observer.LeaseRenewal("failed")
		case rep.Refused:
			c.opt.Observer.LeaseRenewal("refused")
		default:
			c.opt.Observer.LeaseRenewal("granted")
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ol.flight = nil
	defer close(f.done)
	if err != nil {
		// Whether the call was applied is unknown: the settlement stays in
		// doubt and is sent again as it is; a block it may have reserved
		// counts as used.
		if l.Need > 0 {
			c.opt.Observer.LeaseLost(l.Want)
			ol.reported = max(ol.reported, l.Avail+l.Want)
		}
		f.err = err
		return
	}
	if rep.Adopted {
		// Nothing was applied: the settlement is rebuilt without what
		// another holder adopted, and whoever waits asks again.
		if s != nil && ol.doubt == s {
			ol.doubt = nil
			c.adopted(ol, s)
		}
		return
	}
	if s != nil && ol.doubt == s {
		ol.doubt = nil
		c.settled(ol, s)
		for i, k := range s.keys {
			if t := ol.keys[k.KeyID]; t != nil {
				t.flying -= k.N // a fold's counts are in the base now
				t.base, t.known = rep.Keys[i], true
			}
		}
		if s.ret > 0 && !rep.Dup {
			c.opt.Observer.LeaseReturned(s.ret)
		}
	}
	if rep.Org >= 0 {
		ol.redisOrg = rep.Org
	}
	ol.reported, ol.checked = l.Avail+rep.Grant, c.opt.Now()
	contended := rep.MarkedUntil.After(l.At)
	if l.Need == 0 {
		if contended {
			c.yield(ol)
		}
		return
	}
	if rep.Refused {
		ol.exhausted = true
		f.refused, f.others = true, rep.Others
		return
	}
	ol.exhausted = false
	ol.avail += rep.Grant
	// Others were refused lately: the rest of this grant goes back after
	// one idle tick, and no block is reserved ahead.
	ol.tight = rep.Grant < l.Want || contended
	c.opt.Observer.LeaseOutstanding(rep.Grant)
}

// perRequest charges ch in one round trip as without leases, carrying a
// token so that a retry after a lost reply counts once, and corrects the
// usages it reports by what this sidecar holds. A charge the org's quota
// refuses while this sidecar holds unspent units of it is tried once more
// after they went back; one refused while other holders may hold some is
// tried again while they come back (awaitOthers).
func (c *Counter) perRequest(ctx context.Context, ch quota.Charge) (quota.Result, error) {
	w := ch.Period.Window(ch.At)
	id := orgWindow{ch.OrgID, w.ID}
	var until time.Time // of the wait for other holders' units (refusal.go)
	waits := 0
	for attempt := 0; ; attempt++ {
		try := ch
		if try.Token == "" {
			try.Token = c.holder + ":" + strconv.FormatUint(c.tokenSeq.Add(1), 36)
		}
		res, err := c.rc.Charge(ctx, try)
		var ex *quota.ExceededError
		switch {
		case err == nil:
			res.OrgUsed, res.KeyUsed = c.correct(id, ch.KeyID, ch.KeyMax, res.OrgUsed, res.KeyUsed)
			res.RateLimits = c.correctRates(ch, res.RateLimits)
			return res, nil
		case errors.As(err, &ex):
			if attempt == 0 && ex.Scope == quota.ScopeOrg && ch.Token == "" && c.returnNow(ctx, id) {
				continue
			}
			if attempt == 0 && ex.Scope == quota.ScopeKey && ch.Token == "" && c.returnKeyNow(ctx, id, ch.KeyID) {
				continue
			}
			if ch.Token == "" && c.awaitOthers(ctx, ch, ex, &until, &waits) {
				continue
			}
			if ex.Scope == quota.ScopeOrg {
				ex.Used, _ = c.correct(id, "", -1, ex.Used, 0)
			}
			return res, err
		default:
			return res, err
		}
	}
}

// correct turns Redis's usages into this sidecar's view: the org without
// the units it holds unspent, a key without a max with its counts not
// booked yet.
func (c *Counter) correct(id orgWindow, key string, keyMax, org, keyUsed int64) (int64, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ol := c.orgs[id]
	if ol == nil {
		return org, keyUsed
	}
	org -= ol.avail + ol.toReturn + ol.keyHeld
	if kl := ol.kb[key]; kl != nil && key != "" {
		keyUsed -= kl.avail + kl.toReturn
	}
	if t := ol.keys[key]; t != nil && key != "" {
		if keyMax < 0 {
			keyUsed += t.base // charge.lua reads a key's lease count only for a key with a max
		} else if t.held+t.pending > 0 {
			ol.foldSoon = true
		}
		keyUsed += t.unbooked()
	}
	return org, keyUsed
}

// returnNow gives back the units this sidecar holds of id at once and
// reports whether there were any.
func (c *Counter) returnNow(ctx context.Context, id orgWindow) bool {
	c.mu.Lock()
	ol := c.orgs[id]
	if ol == nil || ol.avail+ol.toReturn == 0 {
		c.mu.Unlock()
		return false
	}
	c.giveBack(ol)
	for range maxAttempts {
		f := ol.flight
		if f == nil {
			if ol.toReturn == 0 && ol.doubt == nil {
				break
			}
			f = c.start(ol, 0)
		}
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return false
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	return true
}

// Usage reads the counters in Redis and makes them exact for what this
// sidecar holds: the org without its unspent units, the key with its counts
// not booked yet; and adds to a key what other sidecars may have admitted
// for the org's keys without booking it against a key yet, so that a key's
// usage is never below what was admitted (and exact once their blocks went
// back, within a second of their traffic stopping).
func (c *Counter) Usage(ctx context.Context, orgID, keyID string, period quota.Period, at time.Time) (quota.Usage, error) {
	if err := quota.CheckOrgID(orgID); err != nil {
		return quota.Usage{}, err
	}
	id := orgWindow{orgID, period.Window(at).ID}
	for attempt := 1; ; attempt++ {
		// A call in progress may have changed Redis's counts before its
		// reply reaches this sidecar's own: the read waits for it, and is
		// made again when one started while it was read (a few times at
		// most: then it may be too high for a moment, never too low).
		last := attempt == usageAttempts
		if !last {
			if err := c.awaitCalls(ctx, id); err != nil {
				return quota.Usage{}, fmt.Errorf("reading usage of org %s: %w: %w", orgID, quota.ErrUnavailable, err)
			}
		}
		u, steady, err := c.readUsage(ctx, id, orgID, keyID, period, at)
		if err != nil || steady || last {
			return u, err
		}
	}
}

// usageAttempts bounds the reads of one Usage.
const usageAttempts = 4

// awaitCalls waits for the calls in progress on id's blocks, or for ctx:
// they end by their own deadline, so a Redis that does not answer makes
// the read unavailable, as its own read would.
func (c *Counter) awaitCalls(ctx context.Context, id orgWindow) error {
	c.mu.Lock()
	var wait []*flight
	if ol := c.orgs[id]; ol != nil {
		if ol.flight != nil {
			wait = append(wait, ol.flight)
		}
		for _, kl := range ol.kb {
			if kl.flight != nil {
				wait = append(wait, kl.flight)
			}
		}
	}
	c.mu.Unlock()
	for _, f := range wait {
		select {
		case <-f.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// readUsage is one read of Usage; steady says no call on id's blocks started
// or ended while Redis was read, so what this sidecar holds and what Redis
// counts for it were seen at the same point.
func (c *Counter) readUsage(ctx context.Context, id orgWindow, orgID, keyID string, period quota.Period, at time.Time) (quota.Usage, bool, error) {
	// What this sidecar admitted and Redis may not count yet is taken
	// before the read: a settlement applied in between is then counted
	// twice (too high, never too low) until the next read.
	var orgUnbooked, keyUnbooked, keyFlying, orgFlying, spendable, doubtRet int64
	var doubtSeq, calls uint64
	c.mu.Lock()
	ol := c.orgs[id]
	if ol != nil {
		calls = ol.calls
		spendable = ol.avail + ol.toReturn
		if ol.doubt != nil {
			doubtSeq, doubtRet = ol.doubt.seq, ol.doubt.ret
		}
		for k, t := range ol.keys {
			orgUnbooked += t.pending + t.held
			orgFlying += t.flying
			if k == keyID {
				keyUnbooked, keyFlying = t.pending+t.held, t.flying
			}
		}
	}
	c.mu.Unlock()
	gen := c.keyBlocksGen(id)
	u, err := c.rc.LeaseUsage(ctx, orgID, keyID, period, at, c.holder)
	if err != nil {
		return quota.Usage{}, false, err
	}
	orgHeld, keyHeld := c.keyBlocksHeld(id, keyID, gen)
	c.mu.Lock()
	now := c.orgs[id]
	steady := now == ol && (ol == nil || (ol.calls == calls && ol.flight == nil && ol.keyGen == gen))
	c.mu.Unlock()
	u.Org, u.Key = u.Org-orgHeld, u.Key-keyHeld
	if doubtSeq > u.Seq { // the settlement in flight is not applied yet
		orgUnbooked += orgFlying
		keyUnbooked += keyFlying
		// what it gives back is still in Mine, and goes back: it is
		// resent unchanged until applied
		spendable += doubtRet
	}
	// Mine is what Redis counts as held by this sidecar: its unspent units
	// and what it admitted without booking it into the per-key hash yet
	// (its held counts among it, which the read leaves out of the key's).
	// Of the unspent units, only those this sidecar can still spend or is
	// giving back are left out: a block whose reply was lost is in Mine but
	// counts as used.
	u.Org -= min(u.Mine-orgUnbooked, spendable)
	if keyID != "" {
		u.Key += keyUnbooked + u.Pending
	}
	return u.Usage, steady, nil
}

// Add books meters per request (leases do not cover meters).
func (c *Counter) Add(ctx context.Context, orgID string, at time.Time, deltas []quota.MeterDelta) ([]int64, error) {
	return c.rc.Add(ctx, orgID, at, deltas)
}

// Meters reads meters.
func (c *Counter) Meters(ctx context.Context, orgID string, at time.Time, meters []quota.Meter) ([]int64, error) {
	return c.rc.Meters(ctx, orgID, at, meters)
}

// loop gives back idle blocks and books counts, every Tick.
func (c *Counter) loop() {
	defer close(c.done)
	t := time.NewTicker(c.opt.Tick)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.tick()
		}
	}
}

// forget is how long an organization's lease with nothing held stays known
// (its keys' counts in Redis with it).
const forget = time.Minute

// tick starts the calls that are due: a settlement in doubt; a block idle
// for IdleReturn (or for one Tick when it was granted smaller than asked,
// near the end of the quota) goes back; counts of keys idle for IdleReturn,
// or waiting for FlushEvery, are booked.
func (c *Counter) tick() {
	now := c.opt.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, ol := range c.orgs {
		c.tickKeys(ol, now)
		if ol.flight != nil {
			continue
		}
		idle := now.Sub(ol.lastUse)
		if ol.avail > 0 && (idle >= c.opt.IdleReturn || (ol.tight && idle >= c.opt.Tick)) {
			c.giveBack(ol)
		}
		if c.renewDue(ol, now) {
			c.start(ol, 1)
			continue
		}
		due := ol.doubt != nil || ol.toReturn > 0 || c.foldDue(ol, now) ||
			(ol.hasPending() && (idle >= c.opt.IdleReturn || now.Sub(ol.oldest) >= c.opt.FlushEvery))
		if due {
			c.start(ol, 0)
			continue
		}
		if c.probe(ol, nil, now) {
			continue
		}
		if ol.avail == 0 && !ol.hasPending() && len(ol.held) == 0 && idle >= forget && len(ol.kb) == 0 {
			delete(c.orgs, id)
		}
	}
	c.rateTick(now)
}

// Close stops the background work and gives back every unspent unit and
// books every count, retrying until ctx ends; what it could not give back
// stays counted as used. Charges after Close are charged per request.
func (c *Counter) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	c.closeRates(ctx)
	for {
		var wait []*flight
		c.mu.Lock()
		for _, ol := range c.orgs {
			c.giveBack(ol)
			f := ol.flight
			if f == nil && (ol.doubt != nil || ol.toReturn > 0 || ol.hasPending() || len(ol.held) > 0) {
				f = c.start(ol, 0)
			}
			if f != nil {
				wait = append(wait, f)
			}
			wait = c.closeKeys(ol, wait)
		}
		c.mu.Unlock()
		if len(wait) == 0 {
			return nil
		}
		failed := false
		for _, f := range wait {
			select {
			case <-f.done:
				failed = failed || f.err != nil
			case <-ctx.Done():
				return c.gaveUp(ctx)
			}
		}
		if failed { // Redis is not answering: try again shortly
			select {
			case <-ctx.Done():
			case <-time.After(closeRetry):
			}
		}
		if ctx.Err() != nil {
			return c.gaveUp(ctx)
		}
	}
}

// gaveUp counts what Close could not give back as lost.
func (c *Counter) gaveUp(ctx context.Context) error {
	c.mu.Lock()
	var lost int64
	for _, ol := range c.orgs {
		lost += ol.toReturn + ol.keysLost()
		if ol.doubt != nil {
			lost += ol.doubt.ret
		}
	}
	c.mu.Unlock()
	c.opt.Observer.LeaseLost(lost)
	return fmt.Errorf("returning leased quota (%d units stay counted as used): %w", lost, ctx.Err())
}

// closeRetry spaces Close's attempts while Redis does not answer.
const closeRetry = 50 * time.Millisecond
