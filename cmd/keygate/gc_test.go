package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, tt := range []struct {
		live, headroom int64
		want           int
	}{
		{0, 8 * mib, 100},
		{4 * mib, 8 * mib, 100}, // small heap: the default
		{8 * mib, 8 * mib, 100},
		{10 * mib, 8 * mib, 80},   // grows by the headroom
		{16 * mib, 8 * mib, 50},   // twice the headroom: half the live heap
		{1 << 34, 8 * mib, 50},    // never less, however many keys
		{100 * mib, 1 << 40, 100}, // never more than the default
		{100 * mib, 1 << 62, 100}, // a huge headroom does not overflow into the floor
	} {
		if got := gcPercentFor(tt.live, tt.headroom); got != tt.want {
			t.Errorf("gcPercentFor(%d, %d) = %d, want %d", tt.live, tt.headroom, got, tt.want)
		}
	}
}

// TestGCPacingYieldsToOperator: GOGC or GOMEMLIMIT set, or a headroom of 0,
// leave the collector alone; GODEBUG=memprofilerate keeps the profile.
func TestGCPacingYieldsToOperator(t *testing.T) {
	t.Setenv("GOGC", "100")
	if gcTunable(8 << 20) {
		t.Error("paced the collector with GOGC set")
	}
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "1GiB")
	if gcTunable(8 << 20) {
		t.Error("paced the collector with GOMEMLIMIT set")
	}
	if !containsSetting("gctrace=1, memprofilerate=1", "memprofilerate") || containsSetting("memprofilerate2=1", "memprofilerate") {
		t.Error("containsSetting misreads GODEBUG")
	}
}

func TestGCPacingWithoutOperatorSettings(t *testing.T) {
	if gcTunable(0) {
		t.Error("paced the collector with KEYGATE_GC_HEADROOM=0")
	}
}

// TestTuneGCSetsPercentFromLiveHeap runs the pacer with a headroom far
// below the test's live heap, which must bring GOGC to its floor, then with
// one far above it, which must bring it back to 100.
func TestTuneGCSetsPercentFromLiveHeap(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	for _, tc := range []struct {
		headroom int64
		want     int
	}{{1 << 10, minGCPercent}, {1 << 50, 100}} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); tuneGC(ctx, tc.headroom, zap.NewNop()) }()
		waitGOGC(t, tc.want)
		cancel()
		<-done
	}
}

func waitGOGC(t *testing.T, want int) {
	t.Helper()
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	deadline := time.Now().Add(10 * gcTuneEvery)
	for time.Now().Before(deadline) {
		runtime.GC()
		metrics.Read(s)
		if int(s[0].Value.Uint64()) == want {
			return
		}
		time.Sleep(gcTuneEvery / 4)
	}
	t.Fatalf("GOGC is %d after %s, want %d", s[0].Value.Uint64(), 10*gcTuneEvery, want)
}
