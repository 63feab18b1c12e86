package guard

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// FailLimit is the value of KEYGATE_AUTH_FAIL_LIMIT: at most Limit failed
// authentications per Window for one client, refilling continuously (one
// more every Window/Limit). The zero value is off.
type FailLimit struct {
	Limit  int
	Window time.Duration
}

// DefaultFailLimit is KEYGATE_AUTH_FAIL_LIMIT's default.
const DefaultFailLimit = "20/10s"

// Bounds ParseFailLimit accepts.
const (
	MaxFailLimit  = 1_000_000
	MinFailWindow = time.Second
	MaxFailWindow = 24 * time.Hour
)

// Off reports whether the limit is disabled.
func (l FailLimit) Off() bool { return l.Limit <= 0 || l.Window <= 0 }

// String returns the limit as ParseFailLimit reads it ("20/10s", "off").
func (l FailLimit) String() string {
	if l.Off() {
		return "off"
	}
	return strconv.Itoa(l.Limit) + "/" + l.Window.String()
}

// ParseFailLimit reads KEYGATE_AUTH_FAIL_LIMIT: "<count>/<window>" with a
// count from 1 to MaxFailLimit and a Go duration from MinFailWindow to
// MaxFailWindow ("20/10s", "100/1m"), or "off". Surrounding spaces are
// ignored.
func ParseFailLimit(s string) (FailLimit, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "off") {
		return FailLimit{}, nil
	}
	count, window, ok := strings.Cut(t, "/")
	if !ok {
		return FailLimit{}, fmt.Errorf("auth fail limit %q: want <count>/<window> such as 20/10s, or off", s)
	}
	n, err := strconv.Atoi(strings.TrimSpace(count))
	if err != nil || n < 1 || n > MaxFailLimit {
		return FailLimit{}, fmt.Errorf("auth fail limit %q: count must be a whole number from 1 to %d", s, MaxFailLimit)
	}
	w, err := time.ParseDuration(strings.TrimSpace(window))
	if err != nil {
		return FailLimit{}, fmt.Errorf("auth fail limit %q: window: %w", s, err)
	}
	if w < MinFailWindow || w > MaxFailWindow {
		return FailLimit{}, fmt.Errorf("auth fail limit %q: window must be from %s to %s", s, MinFailWindow, MaxFailWindow)
	}
	return FailLimit{Limit: n, Window: w}, nil
}

// Default sizes of a FailLimiter, used when NewFailLimiter is given zero or
// less.
const (
	// DefaultFailEntries clients with recent failures: about 2 MiB with
	// netip.Addr keys (some 136 bytes each).
	DefaultFailEntries = 1 << 14
	// DefaultProvenEntries (client, credential) pairs: 512 KiB at most,
	// 4 KiB at first (the table grows with the pairs proven).
	DefaultProvenEntries = 1 << 16
)

// FailLimiter counts failed authentications per client key K (a client
// address, a seed 003 username) and remembers which credentials C each
// client already proved, so that a blocked client's known credentials keep
// working. It is safe for concurrent use, starts no goroutine, and its
// memory is bounded by the sizes given to NewFailLimiter. Keys are kept
// as they are, so a string key must be bounded in length by the caller
// (or hashed, K = [32]byte); credentials are only fingerprinted.
//
// Use: before a store lookup, refuse with 429 when Allow says no and
// Proven does not vouch for the credential (Admit does both); after the
// lookup, Fail on a
// failure (only for attempts Allow let through), Prove on a success. A
// success does not clear failures: an attacker holding one valid key could
// otherwise interleave it to reset the count.
//
// Counting is GCRA: each failure adds Window/Limit of debt, debt drains in
// real time, and a client is blocked while one more failure would put its
// debt over Window. So Limit failures may come at once, then one per
// Window/Limit. Debt is capped at Window, so failures reported while
// blocked cannot extend a block past one Window.
//
// Eviction. At most maxEntries clients are tracked. Entries whose debt has
// drained are dropped first; when the table is full of live entries the one
// with the least debt goes (a min-heap on the time the debt drains). An
// entry that is blocked carries nearly a full Window of debt, so to evict it
// an attacker must first put more debt than that on every other entry: about
// maxEntries*(Limit-1) failures inside one Window, each of them a store
// lookup that the attacker was allowed anyway. Fresh keys with one failure
// each only ever evict one another.
//
// Proven pairs live in a separate bounded table (see UnknownSecrets for
// its structure): 64-bit fingerprints under a secret seed, eight per
// bucket, growing up to maxProven and from then on a full bucket
// overwriting one slot. Only a successful
// authentication adds one, so flooding it needs valid credentials.
type FailLimiter[K, C comparable] struct {
	interval int64 // nanoseconds of debt per failure
	window   int64
	max      int
	live     atomic.Int64 // len(entries), read without the lock

	mu      sync.RWMutex
	entries map[K]*failEntry[K]
	heap    []*failEntry[K] // min-heap on tat

	seed   maphash.Seed
	proven *fingerprints
}

// failEntry is one client's debt: tat is when it will have drained
// (UnixNano), at its index in the heap.
type failEntry[K comparable] struct {
	key K
	tat int64
	at  int
}

type provenPair[K, C comparable] struct {
	key  K
	cred C
}

// NewFailLimiter returns a limiter for limit (off when limit.Off(): Allow
// always says yes and Fail does nothing), tracking at most maxEntries
// clients and maxProven proven pairs (defaults when <= 0).
func NewFailLimiter[K, C comparable](limit FailLimit, maxEntries, maxProven int) *FailLimiter[K, C] {
	if maxEntries <= 0 {
		maxEntries = DefaultFailEntries
	}
	if maxProven <= 0 {
		maxProven = DefaultProvenEntries
	}
	l := &FailLimiter[K, C]{
		max:     maxEntries,
		entries: make(map[K]*failEntry[K]),
		seed:    maphash.MakeSeed(),
		proven:  newFingerprints(maxProven),
	}
	if !limit.Off() {
		l.window = int64(limit.Window)
		l.interval = max(int64(limit.Window)/int64(limit.Limit), 1)
	}
	return l
}

// Allow reports whether key may try to authenticate now; when it may not,
// retryAfter is how long until it may (round it up to whole seconds, at
// least 1, for Retry-After). It takes no lock while no client has failures.
func (l *FailLimiter[K, C]) Allow(key K, now time.Time) (ok bool, retryAfter time.Duration) {
	if l.window == 0 || l.live.Load() == 0 {
		return true, 0
	}
	l.mu.RLock()
	e := l.entries[key]
	var tat int64
	if e != nil {
		tat = e.tat
	}
	l.mu.RUnlock()
	if e == nil {
		return true, 0
	}
	wait := tat + l.interval - l.window - now.UnixNano()
	if wait <= 0 {
		return true, 0
	}
	return false, time.Duration(wait)
}

// Admit combines Allow and Proven: whether an attempt by key with cred may
// go on to the store, either because key is not blocked or because it
// proved cred before. retryAfter is as for Allow.
func (l *FailLimiter[K, C]) Admit(key K, cred C, now time.Time) (ok bool, retryAfter time.Duration) {
	ok, retryAfter = l.Allow(key, now)
	if ok || l.Proven(key, cred) {
		return true, 0
	}
	return false, retryAfter
}

// maxExpirePerFail bounds the drained entries one Fail call removes, so no
// call does unbounded work; a full table evicts drained entries first anyway.
const maxExpirePerFail = 16

// Fail records one failed authentication by key at now.
func (l *FailLimiter[K, C]) Fail(key K, now time.Time) {
	if l.window == 0 {
		return
	}
	t := now.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := 0; i < maxExpirePerFail && len(l.heap) > 0 && l.heap[0].tat <= t; i++ {
		l.remove(l.heap[0])
	}
	if e := l.entries[key]; e != nil {
		e.tat = min(max(e.tat, t)+l.interval, t+l.window)
		l.fix(e.at)
	} else {
		if len(l.entries) >= l.max {
			l.remove(l.heap[0])
		}
		e = &failEntry[K]{key: key, tat: t + l.interval, at: len(l.heap)}
		l.entries[key] = e
		l.heap = append(l.heap, e)
		l.up(e.at)
	}
	l.live.Store(int64(len(l.entries)))
}

// Len returns the number of clients tracked.
func (l *FailLimiter[K, C]) Len() int { return int(l.live.Load()) }

// Prove remembers that key authenticated with cred (for a secret, its hash).
func (l *FailLimiter[K, C]) Prove(key K, cred C) {
	l.proven.add(0, maphash.Comparable(l.seed, provenPair[K, C]{key, cred}))
}

// Proven reports whether key authenticated with cred before (as far as the
// bounded memory reaches). It takes no lock.
func (l *FailLimiter[K, C]) Proven(key K, cred C) bool {
	return l.proven.has(maphash.Comparable(l.seed, provenPair[K, C]{key, cred}))
}

func (l *FailLimiter[K, C]) remove(e *failEntry[K]) {
	last := len(l.heap) - 1
	i := e.at
	if i != last {
		l.swap(i, last)
	}
	l.heap[last] = nil
	l.heap = l.heap[:last]
	if i != last {
		l.fix(i)
	}
	delete(l.entries, e.key)
}

func (l *FailLimiter[K, C]) swap(i, j int) {
	l.heap[i], l.heap[j] = l.heap[j], l.heap[i]
	l.heap[i].at = i
	l.heap[j].at = j
}

func (l *FailLimiter[K, C]) fix(i int) {
	if !l.down(i) {
		l.up(i)
	}
}

func (l *FailLimiter[K, C]) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if l.heap[p].tat <= l.heap[i].tat {
			return
		}
		l.swap(i, p)
		i = p
	}
}

// down sifts i towards the leaves and reports whether it moved.
func (l *FailLimiter[K, C]) down(i int) bool {
	start := i
	n := len(l.heap)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && l.heap[r].tat < l.heap[c].tat {
			c = r
		}
		if l.heap[i].tat <= l.heap[c].tat {
			break
		}
		l.swap(i, c)
		i = c
	}
	return i > start
}

// AddrKey is the client key for an address: IPv4-mapped addresses are
// unmapped, zones dropped, and an IPv6 address stands for its /64, since
// one subscriber usually holds a whole /64 and could otherwise rotate
// through 2^64 keys.
func AddrKey(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, err := a.Prefix(64)
		if err == nil {
			return p.Addr()
		}
	}
	return a
}
