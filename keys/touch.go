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
	// Toucher (default 1m), to the second: last_used_at is at most about
	// Every plus RefreshInterval behind.
	Every time.Duration
	// FlushInterval is how often Run writes the first uses of keys (default
	// 2s), so a key's first use shows within about that much.
	FlushInterval time.Duration
	// RefreshInterval is how often Run writes the later recordings of keys
	// it recorded within the last two Every (default 10s), or sooner once
	// half of MaxPending uses wait. A write costs the store a few commands
	// per organization, whatever the number of keys, so writing refreshes
	// together costs a fraction of writing them at every FlushInterval.
	RefreshInterval time.Duration
	// MaxPending bounds the uses waiting for a flush (default 10000). Uses
	// beyond it are dropped, and counted, until the next flush; a dropped
	// key is recorded at its next use after that.
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
// hash and a map lookup under one of several short mutexes; each key is
// recorded at most once per Every, and Run writes what was recorded in one
// TouchKeys call: first uses every FlushInterval, later ones every
// RefreshInterval. It is safe for concurrent use; create it with NewToucher.
//
// Memory is small and bounded. A key is known by a 64-bit hash of its ref
// and costs one map entry (the hash and the end of its quiet period in
// seconds: about 30 bytes of heap with the map's own, TestToucherBytesPerKey)
// for two Every after its last recording; only a use waiting for a flush
// holds the ref itself (about 80 bytes), and at most MaxPending do. Two
// refs with the same hash (odds about n²/2⁶⁵ for n keys: 1 in 10¹¹ for
// 20,000) share a quiet period, so one of them may be recorded up to Every
// late; nothing else depends on the hash.
type Toucher struct {
	store TouchStore
	opt   ToucherOptions
	seed  maphash.Seed
	// epoch is the time quiet periods count seconds from.
	epoch  time.Time
	every  uint32 // Every in whole seconds, at least 1
	shards [touchShards]touchShard
	// pending counts the uses in every shard's lists.
	pending atomic.Int64
	dropped atomic.Int64
	// wake tells Run that half of MaxPending uses wait.
	wake chan struct{}
	// flushing serializes flushes.
	flushing sync.Mutex
}

// touchShards spreads Touch over several mutexes so concurrent requests of
// different keys rarely wait for each other.
const touchShards = 16

type touchShard struct {
	mu sync.Mutex
	// quiet holds, by hash of the key ref, until when (seconds since epoch)
	// further uses of the key are not recorded. An entry stays for Every
	// after its quiet period, so that a use then is known to be a refresh.
	quiet map[uint64]uint32
	// first and refresh are the uses waiting for a flush: of keys not
	// recorded within two Every, and of keys recorded since.
	first, refresh []touchUse
}

// touchUse is one use waiting for a flush.
type touchUse struct {
	ref KeyRef
	at  int64 // Unix nanoseconds
}

// NewToucher returns a Toucher writing to store.
func NewToucher(store TouchStore, opt ToucherOptions) *Toucher {
	if opt.Every <= 0 {
		opt.Every = time.Minute
	}
	if opt.FlushInterval <= 0 {
		opt.FlushInterval = 2 * time.Second
	}
	if opt.RefreshInterval <= 0 {
		opt.RefreshInterval = 10 * time.Second
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
	t := &Toucher{store: store, opt: opt, seed: maphash.MakeSeed(), epoch: opt.Now(), wake: make(chan struct{}, 1)}
	t.every = uint32(max(1, (opt.Every+time.Second-1)/time.Second))
	for i := range t.shards {
		t.shards[i].quiet = make(map[uint64]uint32)
	}
	return t
}

// seconds returns now in whole seconds since the epoch: rounded down, so a
// quiet period (rounded up) never ends early.
func (t *Toucher) seconds(now time.Time) uint32 {
	d := now.Sub(t.epoch)
	if d < 0 {
		return 0
	}
	return uint32(d / time.Second)
}

// hash returns the hash a key ref is known by, and its shard.
func (t *Toucher) hash(ref KeyRef) (uint64, *touchShard) {
	h := maphash.Comparable(t.seed, ref)
	return h, &t.shards[h%touchShards]
}

// Touch notes that the key ref authenticated a request now. It never blocks
// on the store.
func (t *Toucher) Touch(ref KeyRef) {
	now := t.opt.Now()
	// The quiet period ends at the first whole second at least Every after
	// now: at now+Every when now is a whole second.
	sec, frac := t.seconds(now), now.Sub(t.epoch)%time.Second
	until := sec + t.every
	if frac > 0 {
		until++
	}
	h, sh := t.hash(ref)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	q, known := sh.quiet[h]
	if known && sec < q {
		return
	}
	if t.pending.Load() >= int64(t.opt.MaxPending) {
		t.dropped.Add(1)
		return
	}
	if t.pending.Add(1) == int64(max(1, t.opt.MaxPending/2)) {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	use := touchUse{ref: ref, at: now.UnixNano()}
	if known {
		sh.refresh = append(sh.refresh, use)
	} else {
		sh.first = append(sh.first, use)
	}
	sh.quiet[h] = until
}

// Dropped returns how many uses were dropped because MaxPending uses were
// already waiting for a flush.
func (t *Toucher) Dropped() int64 { return t.dropped.Load() }

// Flush writes every recorded use in one TouchKeys call. When the store
// fails, the uses are kept (within MaxPending) for the next flush and the
// error is returned.
func (t *Toucher) Flush(ctx context.Context) error { return t.flush(ctx, true) }

// flush writes the first uses, and the refreshes too when refreshes is set,
// in one TouchKeys call.
func (t *Toucher) flush(ctx context.Context, refreshes bool) error {
	t.flushing.Lock()
	defer t.flushing.Unlock()
	now := t.seconds(t.opt.Now())
	batch := make(map[KeyRef]time.Time)
	add := func(uses []touchUse) {
		for _, u := range uses {
			if at := time.Unix(0, u.at); !at.Before(batch[u.ref]) {
				batch[u.ref] = at
			}
		}
	}
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		add(sh.first)
		t.pending.Add(-int64(len(sh.first)))
		sh.first = nil
		if refreshes {
			add(sh.refresh)
			t.pending.Add(-int64(len(sh.refresh)))
			sh.refresh = nil
		}
		for h, until := range sh.quiet {
			if now >= until+t.every {
				delete(sh.quiet, h)
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

// requeue puts the uses of a failed flush back, to be written at the next
// flush. A key used again meanwhile has two uses waiting; the flush writes
// the later.
func (t *Toucher) requeue(batch map[KeyRef]time.Time) {
	for ref, at := range batch {
		_, sh := t.hash(ref)
		sh.mu.Lock()
		if t.pending.Load() < int64(t.opt.MaxPending) {
			sh.first = append(sh.first, touchUse{ref: ref, at: at.UnixNano()})
			t.pending.Add(1)
		} else {
			t.dropped.Add(1)
		}
		sh.mu.Unlock()
	}
}

// Run flushes first uses every FlushInterval and everything every
// RefreshInterval, and everything at once when half of MaxPending uses wait
// (so that waiting refreshes do not crowd out first uses), until ctx is done;
// then it flushes everything once more (bounded by Timeout) so uses recorded
// before a shutdown are not lost. Store errors are reported through OnFlush
// and retried at the next flush.
func (t *Toucher) Run(ctx context.Context) {
	tick := time.NewTicker(t.opt.FlushInterval)
	defer tick.Stop()
	for n := 1; ; {
		select {
		case <-ctx.Done():
			_ = t.Flush(context.WithoutCancel(ctx))
			return
		case <-tick.C:
			_ = t.tick(ctx, n)
			n++
		case <-t.wake:
			_ = t.Flush(ctx)
		}
	}
}

// tick is Run's n-th flush (from 1).
func (t *Toucher) tick(ctx context.Context, n int) error {
	every := max(1, int((t.opt.RefreshInterval+t.opt.FlushInterval-1)/t.opt.FlushInterval))
	return t.flush(ctx, n%every == 0)
}
