package main

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"time"

	"go.uber.org/zap"
)

// GC pacing (KEYGATE_GC_HEADROOM). Go collects when the heap has grown by
// GOGC percent (default 100) of the live heap since the last collection, so
// the resident heap is about twice the live one. keygate's live heap is
// mostly its caches (credentials, quota blocks, last-used times), which grow
// with the keys served, while what a request allocates does not; so it
// paces the collector by a fixed headroom instead: GOGC is set to
// headroom/live, between minGCPercent and 100. A live heap under headroom
// collects as with the default; one above twice headroom grows by half of
// itself between collections, never less, so the collector's work per
// allocated byte is at most twice the default's whatever the number of
// keys: no memory limit, hence no GC death spiral, however large the live
// heap gets.
const (
	minGCPercent = 50
	// gcTuneEvery is how often the live heap is read: it changes with the
	// keys cached, slowly.
	gcTuneEvery = time.Second
)

// gcPercentFor returns the GOGC that gives live bytes of live heap about
// headroom bytes of growth, within [minGCPercent, 100].
func gcPercentFor(live, headroom int64) int {
	// A headroom at least the live heap is the default; checked first, so
	// that 100*headroom cannot overflow for a huge KEYGATE_GC_HEADROOM.
	if live <= 0 || headroom >= live {
		return 100
	}
	return int(max(minGCPercent, 100*headroom/live))
}

// gcTunable reports whether keygate paces the collector: KEYGATE_GC_HEADROOM
// is not 0 and the operator did not set GOGC or GOMEMLIMIT, which win.
func gcTunable(headroom int64) bool {
	return headroom > 0 && os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == ""
}

// tuneGC paces the collector until ctx ends (see above).
func tuneGC(ctx context.Context, headroom int64, log *zap.Logger) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/gogc:percent"}}
	metrics.Read(sample)
	cur := 100
	if sample[1].Value.Kind() == metrics.KindUint64 {
		cur = int(sample[1].Value.Uint64())
	}
	t := time.NewTicker(gcTuneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			log.Debug("GC pacing off: the runtime reports no live heap")
			return
		}
		p := gcPercentFor(int64(sample[0].Value.Uint64()), headroom)
		// Small moves are not worth a change: the live heap moves with
		// every collection.
		if p != cur && (p == 100 || p == minGCPercent || abs(p-cur) >= 5) {
			debug.SetGCPercent(p)
			cur = p
		}
	}
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// disableMemProfile turns off the runtime's sampling of allocations, which
// keygate never reads (it serves no pprof), unless GODEBUG asks for a
// rate: the samples' stacks and the profile's bucket table (about 1.4 MiB)
// are memory, and unwinding each sample touches the binary's tables.
func disableMemProfile() {
	if v, ok := os.LookupEnv("GODEBUG"); ok && containsSetting(v, "memprofilerate") {
		return
	}
	runtime.MemProfileRate = 0
}

// containsSetting reports whether a GODEBUG value sets name.
func containsSetting(godebug, name string) bool {
	for _, kv := range strings.Split(godebug, ",") {
		if k, _, ok := strings.Cut(kv, "="); ok && strings.TrimSpace(k) == name {
			return true
		}
	}
	return false
}
