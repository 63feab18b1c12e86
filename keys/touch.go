package keys

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// TouchStore is what a Toucher needs of a store.
type TouchStore interface {
	TouchKeys(ctx context.Context, used map[KeyRef]time.Time) error
}

// ToucherOptions tune a Toucher. Zero values pick the defaults noted.
type ToucherOptions struct {
	// Every is the least time between two recordings of one key by this
	// Toucher (default 1m): last_used_at is at most about this much behind.
	Every time.Duration
	// FlushInterval is how often Run writes the recorded uses (default 2s),
	// so a key's first use shows within about that much.
	FlushInterval time.Duration
	// MaxPending bounds the keys waiting for a flush (default 10000). Uses
	// of further keys are dropped, and counted, until the next flush.
	MaxPending int
	// Timeout bounds each flush's store call (default 5s).
	Timeout time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnFlush, when set, is told after each flush that had something to
	// write how many keys it wrote and the store's error.
	OnFlush func(keys int, err error)
}

// Toucher records when keys authenticate requests (last_used_at) off the
// request path. Touch is called on every authenticated request and costs a
// map lookup under one of several short mutexes; each key is recorded at most
// once per Every, and Run writes what was recorded every FlushInterval in one
// TouchKeys call. Memory is bounded: at most MaxPending keys wait for a flush,
// and each key's quiet period is forgotten once it has passed. It is safe for
// concurrent use; create it with NewToucher.
type Toucher struct {
	store  TouchStore
	opt    ToucherOptions
	seed   maphash.Seed
	shards [touchShards]touchShard
	// pending counts the entries of every shard's pending map.
	pending atomic.Int64
	dropped atomic.Int64
	// flushing serializes flushes.
	flushing sync.Mutex
}

// touchShards spreads Touch over several mutexes so concurrent requests of
// different keys rarely wait for each other.
const touchShards = 16

type touchShard struct {
	mu sync.Mutex
	// pending holds the uses to write at the next flush, by key.
	pending map[KeyRef]time.Time
	// quiet holds, by key, until when further uses are not recorded.
	quiet map[KeyRef]time.Time
}

// NewToucher returns a Toucher writing to store.
func NewToucher(store TouchStore, opt ToucherOptions) *Toucher {
	if opt.Every <= 0 {
		opt.Every = time.Minute
	}
	if opt.FlushInterval <= 0 {
		opt.FlushInterval = 2 * time.Second
	}
	if opt.MaxPending <= 0 {
		opt.MaxPending = 10000
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 5 * time.Second
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	t := &Toucher{store: store, opt: opt, seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].pending = make(map[KeyRef]time.Time)
		t.shards[i].quiet = make(map[KeyRef]time.Time)
	}
	return t
}

// Touch notes that the key ref authenticated a request now. It never blocks
// on the store.
func (t *Toucher) Touch(ref KeyRef) {
	now := t.opt.Now()
	sh := &t.shards[maphash.String(t.seed, ref.UID)%touchShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if until, ok := sh.quiet[ref]; ok && now.Before(until) {
		return
	}
	if _, ok := sh.pending[ref]; !ok {
		if t.pending.Load() >= int64(t.opt.MaxPending) {
			t.dropped.Add(1)
			return
		}
		t.pending.Add(1)
	}
	sh.pending[ref] = now
	sh.quiet[ref] = now.Add(t.opt.Every)
}

// Dropped returns how many uses were dropped because MaxPending keys were
// already waiting for a flush.
func (t *Toucher) Dropped() int64 { return t.dropped.Load() }

// Flush writes the recorded uses in one TouchKeys call. When the store
// fails, the uses are kept (within MaxPending) for the next flush and the
// error is returned.
func (t *Toucher) Flush(ctx context.Context) error {
	t.flushing.Lock()
	defer t.flushing.Unlock()
	now := t.opt.Now()
	batch := make(map[KeyRef]time.Time)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for ref, at := range sh.pending {
			batch[ref] = at
		}
		t.pending.Add(-int64(len(sh.pending)))
		clear(sh.pending)
		for ref, until := range sh.quiet {
			if !now.Before(until) {
				delete(sh.quiet, ref)
			}
		}
		sh.mu.Unlock()
	}
	if len(batch) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.opt.Timeout)
	defer cancel()
	err := t.store.TouchKeys(ctx, batch)
	if err != nil {
		t.requeue(batch)
	}
	if t.opt.OnFlush != nil {
		t.opt.OnFlush(len(batch), err)
	}
	return err
}

// requeue puts the uses of a failed flush back, keeping the later time of a
// key used again meanwhile.
func (t *Toucher) requeue(batch map[KeyRef]time.Time) {
	for ref, at := range batch {
		sh := &t.shards[maphash.String(t.seed, ref.UID)%touchShards]
		sh.mu.Lock()
		if cur, ok := sh.pending[ref]; ok {
			if at.After(cur) {
				sh.pending[ref] = at
			}
		} else if t.pending.Load() < int64(t.opt.MaxPending) {
			sh.pending[ref] = at
			t.pending.Add(1)
		} else {
			t.dropped.Add(1)
		}
		sh.mu.Unlock()
	}
}

// Run flushes every FlushInterval until ctx is done, then flushes once more
// (bounded by Timeout) so uses recorded before a shutdown are not lost. Store
// errors are reported through OnFlush and retried at the next flush.
func (t *Toucher) Run(ctx context.Context) {
	tick := time.NewTicker(t.opt.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = t.Flush(context.WithoutCancel(ctx))
			return
		case <-tick.C:
			_ = t.Flush(ctx)
		}
	}
}
