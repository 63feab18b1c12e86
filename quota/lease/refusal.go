package lease

import (
	"context"
	"time"
)

// A reservation is refused when the organization's free units in Redis
// are fewer than a charge needs. Other sidecars may hold unspent units of
// it then: lease.lua tells the refused caller how many (a:<holder>, what
// each holder had unspent at its last call) and marks the refusal (r:) in
// the holders hash. The refused charges wait, up to Options.RefusalWait
// and never past their deadline, retrying the reservation; the holders
// learn of the mark from their next reply (every Tick while they hold
// units of a quota near its end, every probeSlow ticks otherwise) and give
// back what they hold unspent at once (yield). docs/quota-leases.md states
// the bound.

// probe is the need of a call that only tells Redis what this sidecar holds
// unspent and reads the contention mark (see start).
const probe = -1

// maxWaits bounds the retries of one refused charge (RefusalWait bounds
// them in time).
const maxWaits = 64

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

// probeEvery is how often a holder of ol's units reads the contention
// mark when no other call did: every Tick when the quota nears its end
// (the last grant was cut or refused, or fewer than 4·Share blocks were
// free), else every probeSlow ticks.
func (c *Counter) probeEvery(ol *orgLease) time.Duration {
	if ol.tight || ol.exhausted || ol.orgMax-ol.redisOrg < 4*c.opt.Share*ol.want {
		return c.opt.Tick
	}
	return probeSlow * c.opt.Tick
}
