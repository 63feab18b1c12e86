package keys

import (
	"context"
	"sync"
	"time"
)

// legacyWindow is how long after a change published only the old way (by a
// sidecar older than the change log) a break of the pub/sub subscription
// makes every entry re-verify: such sidecars are then evidently about, and
// their changes sent during the break are in no log.
const legacyWindow = time.Hour

// Run keeps the cache in step with the store until ctx is done. With a store
// that keeps a change log (ChangeFeed) it follows the log from the last
// position seen, resuming there after a break (or forgetting the cache when
// the log no longer holds it), and every read confirms the whole cache; it
// also applies what sidecars older than the log publish on Watch only. What
// was cached before the follow's first read keeps its own TTL.
// Without one it applies Watch's revocations, and when the watch breaks makes
// every entry re-verify on its next use (messages may have been missed).
func (a *Authenticator) Run(ctx context.Context) error {
	feed, ok := a.store.(ChangeFeed)
	if !ok {
		a.runWatch(ctx, false)
		return nil
	}
	var wg sync.WaitGroup
	wg.Go(func() { a.runWatch(ctx, true) })
	a.runFeed(ctx, feed)
	wg.Wait()
	return nil
}

// runFeed follows the change log until ctx is done.
func (a *Authenticator) runFeed(ctx context.Context, feed ChangeFeed) {
	pos := ""
	backoff := newBackoff()
	for {
		resumed, first := pos != "", true
		_ = feed.FollowChanges(ctx, pos, func(b ChangeBatch) {
			switch {
			case b.Gap && resumed:
				a.Flush()
				a.changeLog("forget")
			case b.Gap:
				// The first read of the log: it covers what is read from now
				// on. What was cached before keeps its own TTL.
				a.startCovering(a.opt.Now())
			case resumed && first:
				a.changeLog("catch_up")
			}
			first = false
			a.revokeAll(b.Revocations)
			a.observeLag(b.Revocations)
			pos = b.Pos
			if b.Current {
				a.confirm(a.opt.Now().Add(-b.Age))
			}
			backoff.reset()
		})
		// Errors surface through the store's own errors on use; until the
		// log is read again, entries stay trusted for TTL from their last
		// confirmation.
		if ctx.Err() != nil {
			return
		}
		a.changeLog("break")
		if !backoff.wait(ctx) {
			return
		}
	}
}

// runWatch applies Watch's revocations until ctx is done. legacyOnly skips
// those that are in the change log too.
func (a *Authenticator) runWatch(ctx context.Context, legacyOnly bool) {
	backoff := newBackoff()
	for {
		_ = a.store.Watch(ctx, func(r Revocation) {
			backoff.reset()
			if legacyOnly && r.Logged {
				return
			}
			if legacyOnly {
				a.legacySeen.Store(a.opt.Now().UnixNano())
			}
			a.Revoke(r)
			a.observeLag([]Revocation{r})
		})
		if ctx.Err() != nil {
			return
		}
		// Revocations may have been missed while the watch was down: make
		// every entry re-verify on its next use, but keep it for StaleAuth
		// in case the store itself is down. With a change log only an old
		// sidecar's change can be missed.
		now := a.opt.Now()
		if !legacyOnly || now.UnixNano()-a.legacySeen.Load() < int64(legacyWindow) {
			a.expireAll(now)
		}
		if !backoff.wait(ctx) {
			return
		}
	}
}

// startCovering makes confirmations apply to entries read after t.
func (a *Authenticator) startCovering(t time.Time) {
	a.followedFrom.Store(min(a.followedFrom.Load(), t.UnixNano()+1))
}

// confirm records that every change logged before t has been applied.
func (a *Authenticator) confirm(t time.Time) {
	n := t.UnixNano()
	for {
		old := a.confirmed.Load()
		if n <= old || a.confirmed.CompareAndSwap(old, n) {
			break
		}
	}
	if a.opt.OnConfirm != nil {
		a.opt.OnConfirm()
	}
}

// expireAll makes every entry read before now re-verify on its next use.
func (a *Authenticator) expireAll(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
	a.expiredBefore.Store(now.UnixNano() + 1)
}

func (a *Authenticator) observeLag(rs []Revocation) {
	if a.opt.OnRevocation == nil {
		return
	}
	now := a.opt.Now()
	for _, r := range rs {
		if !r.PublishedAt.IsZero() {
			a.opt.OnRevocation(now.Sub(r.PublishedAt))
		}
	}
}

func (a *Authenticator) changeLog(event string) {
	if a.opt.OnChangeLog != nil {
		a.opt.OnChangeLog(event)
	}
}

// backoff is the pause before a broken watch or follow is tried again:
// 100ms, doubling to 2s, back to 100ms once something was received.
type backoff struct {
	mu sync.Mutex
	d  time.Duration
}

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) reset() {
	b.mu.Lock()
	b.d = 100 * time.Millisecond
	b.mu.Unlock()
}

// wait pauses and reports whether ctx is still live.
func (b *backoff) wait(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	b.mu.Lock()
	d := b.d
	b.d = min(2*b.d, 2*time.Second)
	b.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
