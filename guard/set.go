package guard

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// bucketSlots is the associativity of a fingerprint set: a lookup reads
// one bucket of eight 64-bit slots, one cache line.
const bucketSlots = 8

type bucket [bucketSlots]atomic.Uint64

// maxBuckets caps a set at 8Mi entries (64 MiB), whatever is asked.
const maxBuckets = 1 << 20

// fingerprints is a bounded, lock-free set of 64-bit fingerprints. A
// value's fingerprint is a hash under a secret seed, mixed with the current
// generation: nobody outside can aim at a bucket or forge a collision, and
// Reset is one atomic increment after which no old fingerprint matches
// (stale slots are overwritten as new values arrive). An add fills an empty
// slot of its bucket, or else overwrites one picked by a shared counter
// (in effect at random): no clock, no lock, no background work.
//
// The table starts small and doubles, up to the capacity asked for, each
// time half its slots are filled or an add finds its bucket full, so a sidecar pays for the entries it has
// seen rather than for the bound: a flood can grow it to the bound and no
// further. Growing copies every slot into a table of twice the buckets (a
// fingerprint's bucket is its top bits, so bucket i splits into 2i and
// 2i+1 and every slot fits); an add that lands in the old table while it is
// copied may be lost, which costs what an overwrite costs (one more store
// lookup, one more proof).
//
// A false positive needs a 64-bit collision within one bucket (about 2^-61
// per lookup at worst).
type fingerprints struct {
	tab    atomic.Pointer[fpTable]
	max    int // buckets at most
	gen    atomic.Uint64
	victim atomic.Uint32
	// filled counts the slots adds filled in the current table; growing
	// takes grow's lock.
	filled atomic.Int64
	grow   sync.Mutex
}

// fpTable is one size of the table.
type fpTable struct {
	buckets []bucket
	shift   uint // bucket index = fingerprint >> shift
}

// initialBuckets is the size a set starts at: 512 slots in 4 KiB.
const initialBuckets = 64

// newFingerprints returns a set holding at least capacity values (rounded
// up to a power of two buckets of eight, at least one bucket, at most
// maxBuckets), starting at initialBuckets.
func newFingerprints(capacity int) *fingerprints {
	n := 1
	for n*bucketSlots < capacity && n < maxBuckets {
		n <<= 1
	}
	f := &fingerprints{max: n}
	f.tab.Store(newFpTable(min(n, initialBuckets)))
	return f
}

func newFpTable(n int) *fpTable {
	shift := uint(64)
	for m := n; m > 1; m >>= 1 {
		shift--
	}
	return &fpTable{buckets: make([]bucket, n), shift: shift}
}

// capacity returns the slots of the set at its largest.
func (f *fingerprints) capacity() int { return f.max * bucketSlots }

// mix turns a seeded hash into a generation's fingerprint (never zero:
// zero marks an empty slot).
func mix(h, gen uint64) uint64 {
	x := h + gen*0x9e3779b97f4a7c15
	// splitmix64 finaliser
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	if x == 0 {
		x = 1
	}
	return x
}

func (t *fpTable) bucket(fp uint64) *bucket {
	if t.shift == 64 {
		return &t.buckets[0]
	}
	return &t.buckets[fp>>t.shift]
}

func (f *fingerprints) has(h uint64) bool {
	fp := mix(h, f.gen.Load())
	b := f.tab.Load().bucket(fp)
	for i := range b {
		if b[i].Load() == fp {
			return true
		}
	}
	return false
}

// add inserts h as of generation gen; when gen is no longer current the
// entry can never match, which is what a lookup that raced a reset needs.
// A full bucket doubles the table while it is below its capacity, so that
// nothing is overwritten before then.
func (f *fingerprints) add(gen, h uint64) {
	fp := mix(h, gen)
	for {
		t := f.tab.Load()
		switch t.insert(fp) {
		case slotPresent:
			return
		case slotFilled:
			if int(f.filled.Add(1))*2 >= len(t.buckets)*bucketSlots && len(t.buckets) < f.max {
				f.double(t)
			}
			return
		}
		if len(t.buckets) >= f.max || !f.double(t) {
			t.bucket(fp)[f.victim.Add(1)%bucketSlots].Store(fp)
			return
		}
	}
}

// Outcomes of an insert.
const (
	slotFilled = iota
	slotPresent
	bucketFull
)

// insert puts fp in an empty slot of its bucket.
func (t *fpTable) insert(fp uint64) int {
	b := t.bucket(fp)
	for i := range b {
		switch b[i].Load() {
		case fp:
			return slotPresent
		case 0:
			if b[i].CompareAndSwap(0, fp) {
				return slotFilled
			}
		}
	}
	return bucketFull
}

// double replaces t, the current table, by one of twice its buckets, and
// reports whether t is no longer current. An add that finds another one
// doubling goes on without waiting.
func (f *fingerprints) double(t *fpTable) bool {
	if !f.grow.TryLock() {
		return false
	}
	defer f.grow.Unlock()
	if f.tab.Load() != t {
		return true
	}
	next := newFpTable(2 * len(t.buckets))
	var filled int64
	copySlots := func() {
		for i := range t.buckets {
			for j := range t.buckets[i] {
				if fp := t.buckets[i][j].Load(); fp != 0 && next.insert(fp) == slotFilled {
					filled++
				}
			}
		}
	}
	copySlots()
	f.tab.Store(next)
	// Adds that loaded t before the swap may have landed after their
	// bucket was copied: a second pass picks up those that are done.
	copySlots()
	f.filled.Store(filled)
	return true
}

func (f *fingerprints) reset() { f.gen.Add(1) }

// UnknownSecrets remembers hashes of well-formed secrets the store said do
// not exist, so that a flood of minted keys (the checksum is public) costs
// one store lookup per distinct secret, not one per request. It is bounded
// by the capacity given to NewUnknownSecrets and safe for concurrent use;
// Has takes no lock at all.
//
// Reset must be called whenever a key is created or changed, so that a
// secret that was unknown a moment ago is looked up again. It forgets only
// this process's memory: keys created elsewhere (another sidecar) are not
// seen, which is why the entries are also cheap to drop (see Reset).
type UnknownSecrets struct {
	seed maphash.Seed
	set  *fingerprints
}

// DefaultUnknownSecrets is the capacity used when NewUnknownSecrets is given
// zero or less: 65,536 secrets in 512 KiB at most.
const DefaultUnknownSecrets = 1 << 16

// NewUnknownSecrets returns an empty memory of at least capacity secrets
// (DefaultUnknownSecrets when capacity <= 0). Memory is 8 bytes per entry
// of capacity at most, 4 KiB at first: the table grows with the secrets
// remembered (see fingerprints).
func NewUnknownSecrets(capacity int) *UnknownSecrets {
	if capacity <= 0 {
		capacity = DefaultUnknownSecrets
	}
	return &UnknownSecrets{seed: maphash.MakeSeed(), set: newFingerprints(capacity)}
}

// Generation names the memory's current state. Take it before the store
// lookup whose answer is passed to Add.
func (u *UnknownSecrets) Generation() uint64 { return u.set.gen.Load() }

// Add remembers that the secret with this hash (keys.HashSecret) is unknown,
// as a store lookup started at generation gen said. If a Reset came in
// between (a key was created meanwhile), the entry is void: a lookup that
// raced a key's creation can never make that key unknown.
func (u *UnknownSecrets) Add(gen uint64, hash [32]byte) {
	u.set.add(gen, maphash.Bytes(u.seed, hash[:]))
}

// Has reports whether the secret with this hash was remembered as unknown
// since the last Reset. It does not allocate or lock.
func (u *UnknownSecrets) Has(hash [32]byte) bool {
	return u.set.has(maphash.Bytes(u.seed, hash[:]))
}

// Reset forgets every secret at once (one atomic increment): call it when
// any key is created or changed. A periodic Reset also bounds how long a
// key created on another sidecar can be refused here.
func (u *UnknownSecrets) Reset() { u.set.reset() }

// Cap returns the number of secrets the memory holds at most.
func (u *UnknownSecrets) Cap() int { return u.set.capacity() }
