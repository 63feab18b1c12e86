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
