package guard

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"testing"
)

func secretHash(i int) [32]byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return sha256.Sum256(b[:])
}

func TestUnknownSecrets(t *testing.T) {
	u := NewUnknownSecrets(1024)
	a, b := secretHash(1), secretHash(2)
	if u.Has(a) {
		t.Fatal("empty memory has a secret")
	}
	u.Add(u.Generation(), a)
	if !u.Has(a) || u.Has(b) {
		t.Fatalf("after Add(a): Has(a)=%v Has(b)=%v, want true false", u.Has(a), u.Has(b))
	}
	u.Add(u.Generation(), a) // no duplicate
	u.Reset()
	if u.Has(a) {
		t.Fatal("Reset did not forget")
	}
	u.Add(u.Generation(), a)
	if !u.Has(a) {
		t.Fatal("Add after Reset not remembered")
	}
}

// A lookup that started before a key was created must not make it unknown.
func TestUnknownSecretsRaceWithReset(t *testing.T) {
	u := NewUnknownSecrets(1024)
	h := secretHash(7)
	gen := u.Generation() // lookup starts
	u.Reset()             // meanwhile the key is created
	u.Add(gen, h)         // lookup answers "unknown"
	if u.Has(h) {
		t.Fatal("a stale lookup made a secret unknown after Reset")
	}
}

func TestUnknownSecretsBounded(t *testing.T) {
	u := NewUnknownSecrets(4096)
	if u.Cap() != 4096 {
		t.Fatalf("Cap = %d, want 4096", u.Cap())
	}
	const n = 100_000
	for i := range n {
		u.Add(u.Generation(), secretHash(i))
	}
	held := 0
	for i := range n {
		if u.Has(secretHash(i)) {
			held++
		}
	}
	// It holds at most its capacity, and most recent ones survive.
	if held > u.Cap() {
		t.Fatalf("holds %d secrets, capacity %d", held, u.Cap())
	}
	recent := 0
	for i := n - 1000; i < n; i++ {
		if u.Has(secretHash(i)) {
			recent++
		}
	}
	if recent < 800 {
		t.Fatalf("only %d of the last 1000 secrets remembered", recent)
	}
	// Nothing never added is reported.
	for i := n; i < n+10_000; i++ {
		if u.Has(secretHash(i)) {
			t.Fatalf("secret %d reported unknown without Add", i)
		}
	}
}

func TestUnknownSecretsSizes(t *testing.T) {
	for _, tt := range []struct{ in, want int }{{0, DefaultUnknownSecrets}, {-1, DefaultUnknownSecrets}, {1, 8}, {8, 8}, {9, 16}, {1000, 1024}} {
		if got := NewUnknownSecrets(tt.in).Cap(); got != tt.want {
			t.Errorf("NewUnknownSecrets(%d).Cap() = %d, want %d", tt.in, got, tt.want)
		}
	}
	one := NewUnknownSecrets(1)
	for i := range 20 {
		one.Add(one.Generation(), secretHash(i))
	}
	if !one.Has(secretHash(19)) {
		t.Fatal("single-bucket memory lost the latest secret")
	}
}

func TestUnknownSecretsConcurrent(t *testing.T) {
	u := NewUnknownSecrets(1 << 10)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				h := secretHash(w*10_000 + i)
				u.Add(u.Generation(), h)
				u.Has(h)
				if i%500 == 0 {
					u.Reset()
				}
			}
		}()
	}
	wg.Wait()
}

func TestUnknownSecretsHasNoAllocs(t *testing.T) {
	u := NewUnknownSecrets(0)
	h := secretHash(1)
	u.Add(u.Generation(), h)
	if n := testing.AllocsPerRun(100, func() { u.Has(h) }); n != 0 {
		t.Errorf("Has allocates %v times", n)
	}
}

func BenchmarkUnknownSecretsHas(b *testing.B) {
	u := NewUnknownSecrets(0)
	for i := range DefaultUnknownSecrets {
		u.Add(u.Generation(), secretHash(i))
	}
	h := secretHash(1 << 30)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			u.Has(h)
		}
	})
}

// TestUnknownSecretsGrowLazily: a new memory holds a small table whatever
// its capacity, grows as secrets arrive, keeps every secret it was given
// while below its capacity (a full bucket doubles the table instead of
// overwriting, and each doubling copies every slot), and a flood
// grows it to its capacity and no further.
func TestUnknownSecretsGrowLazily(t *testing.T) {
	u := NewUnknownSecrets(DefaultUnknownSecrets)
	slots := func() int { return len(u.set.tab.Load().buckets) * bucketSlots }
	if got := slots(); got != initialBuckets*bucketSlots {
		t.Fatalf("a new memory holds %d slots, want %d", got, initialBuckets*bucketSlots)
	}
	const some = 5000
	for i := range some {
		u.Add(u.Generation(), secretHash(i))
	}
	// Doubling at half full, or at the first full bucket: between two and
	// eight slots per secret.
	if got := slots(); got < 2*some || got > 8*some {
		t.Fatalf("after %d secrets the table has %d slots, want between %d and %d", some, got, 2*some, 8*some)
	}
	for i := range some {
		if !u.Has(secretHash(i)) {
			t.Fatalf("secret %d lost while the table grew", i)
		}
	}
	for i := some; i < 20*DefaultUnknownSecrets; i++ {
		u.Add(u.Generation(), secretHash(i))
	}
	if got := slots(); got != u.Cap() {
		t.Fatalf("after a flood the table has %d slots, want its capacity %d", got, u.Cap())
	}
}

// TestFingerprintsGrowConcurrently adds from several goroutines while the
// table doubles (run with -race): the table stays within its capacity, and
// once the adds are done, what is added below the capacity is never lost.
func TestFingerprintsGrowConcurrently(t *testing.T) {
	f := newFingerprints(1 << 20)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3000 {
				h := uint64(g)<<32 | uint64(i)
				f.add(0, h)
				_ = f.has(h)
			}
		}()
	}
	wg.Wait()
	if got := len(f.tab.Load().buckets); got >= f.max {
		t.Fatalf("12,000 values grew the table to its capacity (%d buckets)", got)
	}
	for i := range 1000 {
		f.add(0, uint64(9)<<32|uint64(i))
	}
	for i := range 1000 {
		if !f.has(uint64(9)<<32 | uint64(i)) {
			t.Fatalf("value %d added below the capacity not found", i)
		}
	}
}
