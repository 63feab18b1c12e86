package keys

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Credential is what a request presents. Secret is always set; AccessKey is
// set for the access-key/secret pair, whose key must then match.
type Credential struct {
	Secret    string
	AccessKey string
}

// AuthOptions tune an Authenticator. Zero values pick the defaults noted.
type AuthOptions struct {
	// TTL is the longest a cached key is trusted without being confirmed
	// (default 5s). While Run follows the store's change log (ChangeFeed),
	// every read of the log confirms the whole cache at once, so entries
	// live until a change to their key, organization or plan arrives and the
	// request path never waits for an expiry; TTL then only bounds how long
	// a sidecar cut off from the log keeps trusting what it cached. Without
	// a change log an entry is read again TTL after it was read.
	TTL time.Duration
	// StaleAuth is how long a verified key is still trusted from the cache
	// while the store is unreachable (default 15m). Zero disables it.
	StaleAuth time.Duration
	// MaxBytes bounds the heap the cache of verified keys holds, by an
	// estimate (default 64 MiB); past it the least recently used entries are
	// evicted.
	MaxBytes int64
	// MaxEntries bounds the number of cached keys (default 100000), in each
	// of the two caches (secrets and signed requests' access keys).
	MaxEntries int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnLookup, when set, is told whether each authentication was served
	// from the cache ("hit"), read from the store ("miss") or served stale
	// during an outage ("stale").
	OnLookup func(result string)
	// OnRevocation, when set, is told of each revocation received through
	// Watch or the change log and how long after publication it was applied.
	OnRevocation func(lag time.Duration)
	// OnConfirm, when set, is told of each read of the change log that
	// confirmed the whole cache (a background revalidation).
	OnConfirm func()
	// OnChangeLog, when set, is told when a follow of the change log breaks
	// ("break") and how it resumed: "catch_up" (from the last change seen)
	// or "forget" (the log no longer held it: the cache was forgotten).
	OnChangeLog func(event string)
	// Unknown, when set, remembers secrets the store said do not exist, so
	// that a flood of well-formed unknown secrets costs no store reads. It
	// is forgotten whenever a revocation arrives or is made here (any key
	// created or changed).
	Unknown UnknownSecrets
	// Sealer opens the sealed secrets signed requests are verified with;
	// nil turns signed requests off (ErrSigningOff). See AuthenticateSigned.
	Sealer *Sealer
}

// UnknownSecrets is a bounded memory of secret hashes the store does not
// know (guard.UnknownSecrets). An Add carries the Generation read before the
// store lookup, so one that raced with a Reset is void.
type UnknownSecrets interface {
	Has(hash [32]byte) bool
	Add(gen uint64, hash [32]byte)
	Generation() uint64
	Reset()
}

// Authenticator turns credentials into principals. A verified key is cached
// in-process so the hot path needs no store read; changes received from the
// store evict entries at once. It is safe for concurrent use; create it with
// NewAuthenticator.
type Authenticator struct {
	store Store
	opt   AuthOptions

	mu sync.RWMutex
	// cache holds the verified keys by secret hash (credcache.go).
	cache *credCache
	// signed caches the principals of signed requests, with their opened
	// secrets, by access key (authsigned.go). Revocations evict from both.
	signed map[string]signedEntry
	// loading coalesces concurrent store reads of one key: a burst of
	// requests with a cold cache costs one read, not one per request.
	loading map[SecretHash]*load
	// gen grows with every revocation so a store read that raced with one
	// does not re-insert what was just revoked.
	gen uint64
	// signedByOrg indexes the signed cache by organization, so that a
	// revocation of a key or an organization visits that organization's
	// entries only, not the whole cache under the write lock.
	signedByOrg orgIndex[string]

	// confirmed is when the change log last confirmed every entry (Unix
	// nanoseconds; 0 never): an entry is trusted for TTL from the later of
	// its read and this.
	confirmed atomic.Int64
	// expiredBefore makes entries read before it untrusted whatever the
	// change log says (a pub/sub gap may have lost an old sidecar's change).
	expiredBefore atomic.Int64
	// followedFrom is when the change log's follow started to cover the
	// cache: entries read before it get no confirmation (changes made
	// before the follow's first read are in no batch it delivers) and live
	// TTL from their read, as without a log. Math.MaxInt64 until then.
	followedFrom atomic.Int64
	// legacySeen is when a change only published the old way (pub/sub, by
	// a sidecar older than the change log) last arrived.
	legacySeen atomic.Int64
}

// NewAuthenticator returns an Authenticator over store.
func NewAuthenticator(store Store, opt AuthOptions) *Authenticator {
	if opt.TTL <= 0 {
		opt.TTL = 5 * time.Second
	}
	if opt.MaxEntries <= 0 {
		opt.MaxEntries = 100000
	}
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = DefaultCacheBytes
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	a := &Authenticator{store: store, opt: opt, cache: newCredCache(opt.MaxBytes, opt.MaxEntries),
		loading: make(map[SecretHash]*load), signedByOrg: orgIndex[string]{}}
	a.followedFrom.Store(math.MaxInt64)
	return a
}

// DefaultCacheBytes is the default bound of the credential cache.
const DefaultCacheBytes = 64 << 20

// CacheStats reports how many keys the cache holds and its estimate of the
// heap they take.
func (a *Authenticator) CacheStats() (entries int, bytes int64) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.cache.entries), a.cache.bytes
}

// trusted reports whether an entry read at verified (Unix nanoseconds) may
// be used without a store read at now, and when it was last confirmed.
func (a *Authenticator) trusted(verified int64, o *Org, now time.Time) (bool, int64) {
	last := verified
	if verified >= a.followedFrom.Load() {
		last = max(verified, a.confirmed.Load())
	}
	if verified < a.expiredBefore.Load() {
		return false, verified
	}
	// A plan change scheduled for now is applied by a fresh read.
	if o.NextPlanID != nil && !o.NextPlanAt.IsZero() && !now.Before(o.NextPlanAt) {
		return false, last
	}
	return now.UnixNano()-last < int64(a.opt.TTL), last
}

// load is one store read in flight; done closes when p and err are set.
type load struct {
	done chan struct{}
	p    Principal
	err  error
}

// Authenticate verifies c. It returns ErrInvalidCredential for a malformed,
// unknown, deleted or mismatched credential, for a disabled or expired key,
// and for a previous secret whose rotation grace has ended; and an error
// wrapping ErrUnavailable when the store is needed but cannot be reached (the
// credential may be fine). Expiry and grace are checked against the clock at
// every call, cached entries included, so a key stops working at the instant
// it expires, not when its cache entry does.
func (a *Authenticator) Authenticate(ctx context.Context, c Credential) (Principal, error) {
	if !CheckSecret(c.Secret) {
		return Principal{}, ErrInvalidCredential
	}
	h := HashSecret(c.Secret)
	now := a.opt.Now()

	a.mu.RLock()
	var cached Principal
	e, ok := a.cache.get(h)
	fresh := false
	if ok {
		var last int64
		fresh, last = a.trusted(e.verified, &e.slot.org, now)
		cached = a.cache.principal(e)
		cached.VerifiedAt = time.Unix(0, last)
	}
	a.mu.RUnlock()
	if fresh {
		a.observe("hit")
		return admit(cached, c, now)
	}

	var unknownGen uint64
	if u := a.opt.Unknown; u != nil {
		if u.Has(h) {
			a.observe("unknown")
			return Principal{}, ErrInvalidCredential
		}
		unknownGen = u.Generation()
	}
	p, err := a.loadShared(ctx, h, now)
	if err != nil {
		if errors.Is(err, ErrUnavailable) && ok && a.opt.StaleAuth > 0 && now.Sub(cached.VerifiedAt) < a.opt.StaleAuth {
			a.observe("stale")
			cached.Stale = true
			return admit(cached, c, now)
		}
		if errors.Is(err, ErrNotFound) {
			a.forget(h)
			if a.opt.Unknown != nil {
				a.opt.Unknown.Add(unknownGen, h)
			}
			return Principal{}, ErrInvalidCredential
		}
		return Principal{}, err
	}
	a.observe("miss")
	return admit(p, c, now)
}

// loadShared reads a principal from the store and caches it, sharing one
// read among concurrent callers for the same hash. The read belongs to no
// caller: it runs detached from the caller that started it (under that
// caller's deadline), so one client going away does not fail the others,
// and each caller stops waiting when its own ctx ends. The result is cached
// only if no revocation arrived since the read began.
func (a *Authenticator) loadShared(ctx context.Context, h SecretHash, now time.Time) (Principal, error) {
	a.mu.Lock()
	// A read that finished since the caller looked may have cached it.
	if e, ok := a.cache.get(h); ok {
		if fresh, _ := a.trusted(e.verified, &e.slot.org, now); fresh {
			p := a.cache.principal(e)
			a.mu.Unlock()
			return p, nil
		}
	}
	l, ok := a.loading[h]
	if !ok {
		l = &load{done: make(chan struct{})}
		a.loading[h] = l
		gen := a.gen
		rctx, cancel := detach(ctx)
		go func() {
			defer cancel()
			p, err := a.load(rctx, h, now)
			a.mu.Lock()
			delete(a.loading, h)
			if err == nil && a.gen == gen {
				// Callers get the cached principal: its strings are the
				// entry's, so what they keep (the last-used times, a
				// lease's key) holds no second copy of them.
				e := a.cache.put(h, p, now)
				p = a.cache.principal(e)
			}
			a.mu.Unlock()
			l.p, l.err = p, err
			close(l.done)
		}()
	}
	a.mu.Unlock()
	select {
	case <-l.done:
		return l.p, l.err
	case <-ctx.Done():
		return Principal{}, fmt.Errorf("waiting for key lookup: %w: %w", ErrUnavailable, ctx.Err())
	}
}

// detachedReadTimeout bounds a shared store read whose starter had no
// deadline.
const detachedReadTimeout = 5 * time.Second

// detach returns a context that keeps ctx's values and deadline but not its
// cancellation.
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(detachedReadTimeout)
	}
	return context.WithDeadline(context.WithoutCancel(ctx), d)
}

// load reads the key, its organization and its plan from the store.
func (a *Authenticator) load(ctx context.Context, h SecretHash, now time.Time) (Principal, error) {
	k, err := a.store.KeyByHash(ctx, h)
	if err != nil {
		return Principal{}, fmt.Errorf("reading key: %w", err)
	}
	// Compare the stored hash in constant time even though the lookup was by
	// hash: a store must never be trusted to have matched exactly.
	ok, previous := k.MatchHash(h, now)
	if !ok {
		return Principal{}, ErrNotFound
	}
	p, err := a.principalOf(ctx, k, now)
	p.PreviousSecret = previous
	return p, err
}

// principalOf completes a key read from the store with its organization (a
// plan change scheduled for this period applied) and plan, as verified now.
// The sealed secrets and the comment (no decision reads it) stay out of
// the principal.
func (a *Authenticator) principalOf(ctx context.Context, k Key, now time.Time) (Principal, error) {
	o, err := a.store.Org(ctx, k.OrgID)
	if err != nil {
		return Principal{}, fmt.Errorf("reading org of key: %w", err)
	}
	o, _ = o.ApplyScheduledPlan(now)
	pl, err := a.store.Plan(ctx, o.PlanID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Principal{}, fmt.Errorf("reading plan of org: %w", err)
	}
	k.SealedSecret, k.Comment = nil, ""
	if k.Previous != nil {
		prev := *k.Previous
		prev.Sealed = nil
		k.Previous = &prev
	}
	return Principal{Key: k, Org: o, Plan: pl, VerifiedAt: now}, nil
}

// admit returns p if it may authenticate c at now: its key is enabled and
// not expired, the previous secret (when that is what c was) is still within
// its grace, and the access key, for the pair, is the key's.
func admit(p Principal, c Credential, now time.Time) (Principal, error) {
	if !usable(p, now) {
		return Principal{}, ErrInvalidCredential
	}
	if c.AccessKey != "" && subtle.ConstantTimeCompare([]byte(c.AccessKey), []byte(p.Key.UID)) != 1 {
		return Principal{}, ErrInvalidCredential
	}
	return p, nil
}

// usable reports whether a cached or loaded principal may act at now.
func usable(p Principal, now time.Time) bool {
	return p.Key.ActiveAt(now) && (!p.PreviousSecret || p.Key.PreviousValid(now))
}

// Revoke applies r to the local cache at once. The sidecar that deletes or
// changes a key calls it so its own next request is refused without waiting
// for the store's broadcast.
func (a *Authenticator) Revoke(r Revocation) { a.revokeAll([]Revocation{r}) }

// revokeAll applies revocations under one lock.
func (a *Authenticator) revokeAll(rs []Revocation) {
	if len(rs) == 0 {
		return
	}
	if a.opt.Unknown != nil {
		a.opt.Unknown.Reset()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
	for _, r := range rs {
		a.cache.revoke(r)
		a.revokeSigned(r)
	}
}

// orgIndex maps an organization to the cache keys of its entries.
type orgIndex[K comparable] map[string]map[K]struct{}

func (ix orgIndex[K]) add(org string, k K) {
	set := ix[org]
	if set == nil {
		set = make(map[K]struct{})
		ix[org] = set
	}
	set[k] = struct{}{}
}

func (ix orgIndex[K]) remove(org string, k K) {
	if set := ix[org]; set != nil {
		delete(set, k)
		if len(set) == 0 {
			delete(ix, org)
		}
	}
}

// Flush forgets every cached principal.
func (a *Authenticator) Flush() {
	if a.opt.Unknown != nil {
		a.opt.Unknown.Reset()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
	a.cache.clear()
	clear(a.signed)
	clear(a.signedByOrg)
}

func (a *Authenticator) forget(h SecretHash) {
	a.mu.Lock()
	a.cache.drop(h)
	a.mu.Unlock()
}

// evictOne picks the entry a full cache drops: an expired one (verified
// more than stale ago) if it finds one among the first few it visits, else
// an arbitrary one. Called with mu held; the caller drops it.
func evictOne[K comparable, V any](m map[K]V, verifiedAt func(V) time.Time, now time.Time, stale time.Duration) (K, bool) {
	n := 0
	var victim K
	found := false
	for k, v := range m {
		victim, found = k, true
		if now.Sub(verifiedAt(v)) >= stale || n >= 16 {
			break
		}
		n++
	}
	return victim, found
}

func (a *Authenticator) observe(result string) {
	if a.opt.OnLookup != nil {
		a.opt.OnLookup(result)
	}
}

// Cached reports whether c is a credential the cache holds as confirmed: the answer needs no store read. The failed-authentication limit lets
// such credentials through.
func (a *Authenticator) Cached(c Credential) bool {
	if !CheckSecret(c.Secret) {
		return false
	}
	h := HashSecret(c.Secret)
	now := a.opt.Now()
	a.mu.RLock()
	e, ok := a.cache.get(h)
	var p Principal
	fresh := false
	if ok {
		fresh, _ = a.trusted(e.verified, &e.slot.org, now)
		p = a.cache.principal(e)
	}
	a.mu.RUnlock()
	if !fresh {
		return false
	}
	_, err := admit(p, c, now)
	return err == nil
}

// ForgetUnknown forgets the secrets remembered as unknown: a key was
// created (or changed) here, and its secret must not be refused as one.
func (a *Authenticator) ForgetUnknown() {
	if a.opt.Unknown != nil {
		a.opt.Unknown.Reset()
	}
}
