package guard

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	t0           = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	defaultLimit = FailLimit{20, 10 * time.Second}
)

func TestParseFailLimit(t *testing.T) {
	tests := []struct {
		in      string
		want    FailLimit
		wantErr string
	}{
		{in: "20/10s", want: FailLimit{20, 10 * time.Second}},
		{in: " 100 / 1m ", want: FailLimit{100, time.Minute}},
		{in: "1/24h", want: FailLimit{1, 24 * time.Hour}},
		{in: "1000000/1s", want: FailLimit{MaxFailLimit, time.Second}},
		{in: "off"},
		{in: "OFF"},
		{in: "", wantErr: "want <count>/<window>"},
		{in: "20", wantErr: "want <count>/<window>"},
		{in: "0/10s", wantErr: "count must be"},
		{in: "-1/10s", wantErr: "count must be"},
		{in: "1000001/10s", wantErr: "count must be"},
		{in: "x/10s", wantErr: "count must be"},
		{in: "20/", wantErr: "window"},
		{in: "20/10", wantErr: "window"},
		{in: "20/500ms", wantErr: "window must be from 1s to 24h0m0s"},
		{in: "20/25h", wantErr: "window must be"},
		{in: "20/10s/5", wantErr: "window"},
	}
	for _, tt := range tests {
		got, err := ParseFailLimit(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseFailLimit(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseFailLimit(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	if l, err := ParseFailLimit(DefaultFailLimit); err != nil || l != defaultLimit {
		t.Errorf("ParseFailLimit(DefaultFailLimit) = %v, %v; want %v", l, err, defaultLimit)
	}
}

func FuzzParseFailLimit(f *testing.F) {
	for _, s := range []string{"20/10s", "off", "1/24h", "0/1s", "20/1ms", "5/1h30m", " 3 / 2s ", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseFailLimit(s)
		if err != nil {
			return
		}
		if !l.Off() && (l.Limit < 1 || l.Limit > MaxFailLimit || l.Window < MinFailWindow || l.Window > MaxFailWindow) {
			t.Fatalf("ParseFailLimit(%q) = %v: out of bounds", s, l)
		}
		again, err := ParseFailLimit(l.String())
		if err != nil || again != l {
			t.Fatalf("ParseFailLimit(%q) = %v, but its String %q reads back as %v, %v", s, l, l.String(), again, err)
		}
	})
}

type addrLimiter = FailLimiter[netip.Addr, [32]byte]

func newAddrLimiter(limit FailLimit, entries int) *addrLimiter {
	return NewFailLimiter[netip.Addr, [32]byte](limit, entries, 0)
}

func TestFailLimiterBlocksAfterLimit(t *testing.T) {
	l := newAddrLimiter(FailLimit{20, 10 * time.Second}, 0)
	a := netip.MustParseAddr("192.0.2.1")
	other := netip.MustParseAddr("192.0.2.2")
	for i := range 20 {
		if ok, _ := l.Allow(a, t0); !ok {
			t.Fatalf("failure %d refused before the limit", i+1)
		}
		l.Fail(a, t0)
	}
	ok, retry := l.Allow(a, t0)
	if ok || retry != 500*time.Millisecond {
		t.Fatalf("after 20 failures: Allow = %v, %v; want false, 500ms", ok, retry)
	}
	if ok, _ := l.Allow(other, t0); !ok {
		t.Fatal("another address is blocked")
	}
	// One more failure's worth drains in Window/Limit.
	if ok, _ := l.Allow(a, t0.Add(499*time.Millisecond)); ok {
		t.Fatal("allowed before the retry time")
	}
	if ok, _ := l.Allow(a, t0.Add(500*time.Millisecond)); !ok {
		t.Fatal("still blocked at the retry time")
	}
	l.Fail(a, t0.Add(500*time.Millisecond))
	if ok, retry := l.Allow(a, t0.Add(500*time.Millisecond)); ok || retry != 500*time.Millisecond {
		t.Fatalf("after a failure at the retry time: Allow = %v, %v; want false, 500ms", ok, retry)
	}
	// Failures reported while blocked cannot build debt past one window:
	// the block ends one interval after the last of them.
	for range 1000 {
		l.Fail(a, t0.Add(time.Second))
	}
	if ok, _ := l.Allow(a, t0.Add(1500*time.Millisecond-time.Nanosecond)); ok {
		t.Fatal("allowed within one interval of the last failure")
	}
	if ok, _ := l.Allow(a, t0.Add(1500*time.Millisecond)); !ok {
		t.Fatal("failures while blocked extended the block")
	}
	// A quiet window later everything is forgotten on the next failure.
	l.Fail(other, t0.Add(time.Minute))
	if l.Len() != 1 {
		t.Fatalf("Len = %d after the window passed, want 1", l.Len())
	}
}

func TestFailLimiterSpread(t *testing.T) {
	// 20/10s allows one failure per 500ms indefinitely, but not more.
	l := newAddrLimiter(defaultLimit, 0)
	a := netip.MustParseAddr("2001:db8::1")
	refused := 0
	for i := range 200 {
		now := t0.Add(time.Duration(i) * 250 * time.Millisecond) // 4/s, twice the rate
		if ok, _ := l.Allow(a, now); ok {
			l.Fail(a, now)
		} else {
			refused++
		}
	}
	// 20 at once, then one per 500 ms over 50 s: 20 + 100 allowed of 200.
	if allowed := 200 - refused; allowed < 115 || allowed > 125 {
		t.Fatalf("%d of 200 failures allowed at twice the rate, want about 120", allowed)
	}
}

func TestFailLimiterOff(t *testing.T) {
	l := newAddrLimiter(FailLimit{}, 0)
	a := netip.MustParseAddr("192.0.2.1")
	for range 100 {
		l.Fail(a, t0)
	}
	if ok, _ := l.Allow(a, t0); !ok || l.Len() != 0 {
		t.Fatalf("an off limiter blocks (Len %d)", l.Len())
	}
}

func TestFailLimiterProven(t *testing.T) {
	l := newAddrLimiter(defaultLimit, 0)
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	key, minted := secretHash(1), secretHash(2)
	l.Prove(a, key)
	for range 50 {
		l.Fail(a, t0)
	}
	if ok, _ := l.Allow(a, t0); ok {
		t.Fatal("not blocked")
	}
	if !l.Proven(a, key) {
		t.Fatal("a key the address proved is not remembered")
	}
	if l.Proven(a, minted) || l.Proven(b, key) {
		t.Fatal("proven for a pair never proved")
	}
	if ok, _ := l.Admit(a, key, t0); !ok {
		t.Fatal("Admit refuses a proven key of a blocked address")
	}
	if ok, retry := l.Admit(a, minted, t0); ok || retry <= 0 {
		t.Fatalf("Admit(minted) = %v, %v; want a refusal with a retry time", ok, retry)
	}
	if ok, _ := l.Admit(b, minted, t0); !ok {
		t.Fatal("Admit refuses an address that never failed")
	}
}

// Usable per seed 003 username, remembering the addresses that logged in.
func TestFailLimiterUsername(t *testing.T) {
	l := NewFailLimiter[string, netip.Addr](FailLimit{5, time.Minute}, 0, 0)
	home := netip.MustParseAddr("198.51.100.7")
	l.Prove("alice", home)
	for range 40 {
		if ok, _ := l.Allow("alice", t0); ok {
			l.Fail("alice", t0)
		}
	}
	if ok, _ := l.Allow("alice", t0); ok {
		t.Fatal("alice not blocked after 40 wrong passwords")
	}
	if ok, _ := l.Allow("bob", t0); !ok {
		t.Fatal("bob blocked")
	}
	if !l.Proven("alice", home) || l.Proven("alice", netip.MustParseAddr("203.0.113.9")) {
		t.Fatal("proven memory wrong for alice")
	}
}

func TestFailLimiterBounded(t *testing.T) {
	const max = 100
	l := newAddrLimiter(defaultLimit, max)
	victim := netip.MustParseAddr("203.0.113.1")
	for range 25 {
		l.Fail(victim, t0)
	}
	// An attacker sprays one failure each from many fresh addresses.
	for i := range 10_000 {
		l.Fail(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), t0.Add(time.Millisecond))
	}
	if l.Len() != max {
		t.Fatalf("Len = %d, want the bound %d", l.Len(), max)
	}
	if ok, _ := l.Allow(victim, t0.Add(100*time.Millisecond)); ok {
		t.Fatal("a blocked entry was evicted by fresh one-failure entries")
	}
	// Evicting it needs more debt on every other entry than it has.
	for i := range max {
		a := netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)})
		for range 20 {
			l.Fail(a, t0.Add(2*time.Millisecond))
		}
	}
	if ok, _ := l.Allow(victim, t0.Add(100*time.Millisecond)); !ok {
		t.Fatal("expected the victim evicted once every entry carries more debt")
	}
	if l.Len() != max {
		t.Fatalf("Len = %d, want %d", l.Len(), max)
	}
}

// checkHeap verifies the heap invariant and the index bookkeeping.
func checkHeap[K, C comparable](t *testing.T, l *FailLimiter[K, C]) {
	t.Helper()
	if len(l.heap) != len(l.entries) {
		t.Fatalf("heap %d entries, map %d", len(l.heap), len(l.entries))
	}
	for i, e := range l.heap {
		if e.at != i || l.entries[e.key] != e {
			t.Fatalf("entry %d misplaced", i)
		}
		if i > 0 && l.heap[(i-1)/2].tat > e.tat {
			t.Fatalf("heap order broken at %d", i)
		}
	}
}

func TestFailLimiterHeap(t *testing.T) {
	l := NewFailLimiter[int, int](FailLimit{3, 10 * time.Second}, 50, 0)
	now := t0
	for i := range 5000 {
		// A mix of repeat and fresh keys, times moving forward and back.
		key := (i * 7919) % 130
		now = now.Add(time.Duration((i*31)%17-5) * 100 * time.Millisecond)
		l.Fail(key, now)
		if i%97 == 0 {
			checkHeap(t, l)
		}
	}
	checkHeap(t, l)
}

func TestFailLimiterConcurrent(t *testing.T) {
	l := newAddrLimiter(FailLimit{5, 10 * time.Second}, 64)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				a := netip.AddrFrom4([4]byte{10, 0, byte(w), byte(i % 200)})
				now := t0.Add(time.Duration(i) * time.Millisecond)
				if ok, _ := l.Allow(a, now); ok {
					l.Fail(a, now)
				}
				l.Prove(a, secretHash(i%10))
				l.Proven(a, secretHash(i%10))
			}
		}()
	}
	wg.Wait()
	checkHeap(t, l)
}

func TestFailLimiterNoAllocs(t *testing.T) {
	l := newAddrLimiter(defaultLimit, 0)
	a := netip.MustParseAddr("192.0.2.1")
	h := secretHash(1)
	l.Fail(a, t0)
	l.Prove(a, h)
	for name, fn := range map[string]func(){
		"Allow":  func() { l.Allow(a, t0) },
		"Fail":   func() { l.Fail(a, t0) },
		"Proven": func() { l.Proven(a, h) },
		"Prove":  func() { l.Prove(a, h) },
	} {
		if n := testing.AllocsPerRun(100, fn); n != 0 {
			t.Errorf("%s allocates %v times", name, n)
		}
	}
}

func TestAddrKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "192.0.2.1",
		"::ffff:192.0.2.1":     "192.0.2.1",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::",
		"fe80::1%eth0":         "fe80::",
	} {
		if got := AddrKey(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("AddrKey(%s) = %s, want %s", in, got, want)
		}
	}
}

func BenchmarkFailLimiter(b *testing.B) {
	l := newAddrLimiter(defaultLimit, 0)
	for i := range 10_000 {
		l.Fail(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), t0)
	}
	a := netip.MustParseAddr("10.0.1.1")
	h := secretHash(1)
	l.Prove(a, h)
	b.Run("Allow-empty", func(b *testing.B) {
		empty := newAddrLimiter(defaultLimit, 0)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				empty.Allow(a, t0)
			}
		})
	})
	b.Run("Allow", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Allow(a, t0)
			}
		})
	})
	b.Run("Proven", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Proven(a, h)
			}
		})
	})
	b.Run("Fail-full", func(b *testing.B) {
		full := newAddrLimiter(defaultLimit, 1<<14)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			full.Fail(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), t0)
		}
	})
}
