package lease

import (
	"context"
	"fmt"
	"time"

	"github.com/keygate/keygate/quota"
)

// A reservation is refused when the organization's free units in Redis
// are fewer than a charge needs. Other sidecars may hold unspent units of
// it then: lease.lua tells the refused caller how many (a:<holder>, what
// each holder had unspent at its last call) and marks the refusal (r:) in
// the holders hash. The refused charges wait, up to Options.RefusalWait
// and never past their deadline, retrying the reservation; the holders
// learn of the mark from their next reply, or look for it (probe: every
// Tick while they hold units of a quota near its end, every probeSlow
// ticks otherwise) and give back what they hold unspent at once (yield).
// docs/quota-leases.md states the bound.

// probeNeed is the need of a call that only tells Redis what this sidecar
// holds unspent and reads the contention mark (see start).
const probeNeed = -1

// retryEvery is how often a refused charge that waits asks again; the
// retries of one charge are bounded in time by RefusalWait and in count by
// maxWaits.
func (c *Counter) retryEvery() time.Duration { return max(c.opt.Tick/5, time.Millisecond) }

func (c *Counter) maxWaits() int { return int(c.opt.RefusalWait/c.retryEvery()) + 8 }

// maxJoins bounds how often one charge waits for a call that reserves
// nothing (a settlement, a probe) besides its maxAttempts: a charge that
// runs out of attempts goes per request, where it does not wait for other
// holders' units.
const maxJoins = 16

// probeSlow: a holder far from the end of a quota looks at the contention
// mark every probeSlow ticks while it holds units.
const probeSlow = 4

// refusalUntil is how long a charge refused now may wait for other
// holders' units: RefusalWait, and never past ctx's deadline.
func (c *Counter) refusalUntil(ctx context.Context) time.Time {
	until := time.Now().Add(c.opt.RefusalWait)
	if d, ok := ctx.Deadline(); ok && d.Before(until) {
		until = d
	}
	return until
}

// waitErr is what a charge that waited for the call f returns when the
// wait did not end in an answer: the refusal it had before the wait (still
// refused, counting nothing), or quota.ErrUnavailable when ctx ended or the
// call failed; nil when f answered. what names the quota ("org o").
func waitErr(ctx context.Context, f *flight, refusal *quota.ExceededError, what string) error {
	switch {
	case refusal != nil && (ctx.Err() != nil || f.err != nil):
		return refusal
	case ctx.Err() != nil:
		return fmt.Errorf("charging %s: %w: %w", what, quota.ErrUnavailable, ctx.Err())
	case f.err != nil:
		return fmt.Errorf("charging %s: %w", what, f.err)
	}
	return nil
}

// awaitRefused is the wait of a charge whose reservation was refused while
// other holders (or this sidecar's other blocks) may hold unspent
// units: it waits a little and says whether to ask again, within
// RefusalWait (until, set at the first wait) and maxWaits (waits).
func (c *Counter) awaitRefused(ctx context.Context, others int64, waits *int, until *time.Time) bool {
	if others <= 0 || *waits >= c.maxWaits() {
		return false
	}
	if until.IsZero() {
		*until = c.refusalUntil(ctx)
	}
	if !waitForOthers(ctx, *until, c.retryEvery()) {
		return false
	}
	*waits++
	return true
}

// waitForOthers waits every (at most) before a refused charge asks again,
// and says whether it may: false once until has passed or ctx ended.
func waitForOthers(ctx context.Context, until time.Time, every time.Duration) bool {
	d := min(time.Until(until), every)
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// yield gives back what ol holds unspent at once, because another holder
// was refused lately, and stops reserving ahead. Called with mu held and
// no flight in progress.
func (c *Counter) yield(ol *orgLease) {
	ol.tight = true
	if ol.avail == 0 {
		return
	}
	c.giveBack(ol)
	if !c.closed {
		c.start(ol, 0)
	}
}

// probe starts, when one is due, the call by which a holder of units of
// ol's quota (kl's, when not nil) learns of a refusal elsewhere, and says
// whether it started one. Near the end of the quota (the last grant was cut
// or refused, or fewer than 4·Share blocks were free at the last call) it
// is a lease call every Tick, which also tells Redis what is held; else a
// plain read of the marks every probeSlow ticks (LeaseMarked). Only while
// Redis may count units as held here, and only when no other call answered
// meanwhile. Called with mu held and no flight of ol (kl) in progress.
func (c *Counter) probe(ol *orgLease, kl *keyLease, now time.Time) bool {
	near := func(limit, used, want int64) bool { return limit >= 0 && limit-used < 4*c.opt.Share*want }
	var since time.Duration
	var end bool
	if kl == nil {
		if ol.orgMax < 0 || ol.reported == 0 {
			return false
		}
		since = now.Sub(ol.checked)
		end = ol.tight || ol.exhausted || near(ol.orgMax, ol.redisOrg, ol.want)
	} else {
		if kl.reported == 0 {
			return false
		}
		since = now.Sub(kl.checked)
		end = kl.tight || kl.exhausted || near(kl.keyMax, kl.redisKey, kl.want) || near(kl.orgMax, ol.redisOrg, kl.want)
	}
	switch {
	case end && since >= c.opt.Tick:
		if kl == nil {
			c.start(ol, probeNeed)
		} else {
			c.startKey(kl, 0)
		}
	case !end && since >= probeSlow*c.opt.Tick:
		c.peek(ol, kl)
	default:
		return false
	}
	return true
}

// peek reads the contention marks of ol's quota (and kl's) in a flight of
// its own, and yields what is held when another holder was refused lately.
// Called with mu held and no flight of ol (kl) in progress.
func (c *Counter) peek(ol *orgLease, kl *keyLease) {
	f := &flight{done: make(chan struct{})}
	key := ""
	if kl != nil {
		kl.flight, key = f, kl.key
	} else {
		ol.flight = f
	}
	at := callAt(c.opt.Now(), ol.window)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.opt.Timeout)
		until, err := c.rc.LeaseMarked(ctx, ol.id.org, key, ol.period, at)
		cancel()
		c.mu.Lock()
		defer c.mu.Unlock()
		defer close(f.done)
		if kl != nil {
			kl.flight = nil
		} else {
			ol.flight = nil
		}
		if err != nil {
			f.err = err
			return
		}
		contended := until.After(at)
		switch {
		case kl != nil:
			kl.checked = c.opt.Now()
			if contended {
				c.yieldKey(kl)
			}
		default:
			ol.checked = c.opt.Now()
			if contended {
				c.yield(ol)
			}
		}
	}()
}

// awaitOthers is the wait of a charge per request that ex refused: when
// other holders may hold unspent units of the quota (LeaseContend, which
// also marks the refusal for them), it waits a little before the charge is
// tried again, bounded as a refused reservation's wait is; when none do
// but the usage fell since the refusal (units came back in between), the
// charge is tried once more at once. It says whether to try again.
func (c *Counter) awaitOthers(ctx context.Context, ch quota.Charge, ex *quota.ExceededError, until *time.Time, waits *int) bool {
	if *waits >= c.maxWaits() {
		return false
	}
	if until.IsZero() {
		*until = c.refusalUntil(ctx)
	}
	at := callAt(c.opt.Now(), ch.Period.Window(ch.At))
	others, used, err := c.rc.LeaseContend(ctx, ch.OrgID, ch.KeyID, ex.Scope, ch.Period, at, c.holder, c.opt.RefusalWait)
	switch {
	case err != nil:
		return false
	case others == 0 && (*waits > 0 || used < ex.Used):
		// What others held came back since the charge was refused (a
		// holder's return and its a: are one step): once more, at once.
		*waits = c.maxWaits()
		return true
	case others == 0 || !waitForOthers(ctx, *until, c.retryEvery()):
		return false
	}
	*waits++
	return true
}
