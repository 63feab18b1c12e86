package quota

import (
	"testing"
	"time"
)

// FuzzParsePeriod feeds arbitrary period spellings and instants to
// ParsePeriod and Window: no panic; an accepted period's String parses
// back to the same period; its window holds the instant (Start <= at <
// End), or, for a period that never resets, is the one unbounded window.
// Instants are kept within years 1 to 9999, the range of the store's
// timestamps.
func FuzzParsePeriod(f *testing.F) {
	f.Add("month", int64(1700000000))
	f.Add("30s", int64(-1))
	f.Fuzz(func(t *testing.T, s string, sec int64) {
		p, err := ParsePeriod(s)
		if err != nil {
			if p != (Period{}) {
				t.Fatalf("refused %q but returned %+v", s, p)
			}
			return
		}
		if p2, err := ParsePeriod(p.String()); err != nil || p2 != p {
			t.Fatalf("%q → %+v; String %q → %+v, %v", s, p, p.String(), p2, err)
		}
		const lo, hi = -62135596800, 253402300799 // 0001-01-01 to 9999-12-31 UTC
		if sec < lo || sec > hi {
			sec = lo + int64(uint64(sec)%uint64(hi-lo+1))
		}
		at := time.Unix(sec, int64(uint64(sec)%1e9)).UTC()
		w := p.Window(at)
		if w.ID == "" {
			t.Fatalf("%q at %v: window without an id", s, at)
		}
		if p == PeriodNone {
			if !w.Start.IsZero() || !w.End.IsZero() {
				t.Fatalf("none at %v: window %+v, want an unbounded one", at, w)
			}
			return
		}
		if at.Before(w.Start) || !at.Before(w.End) {
			t.Fatalf("%q at %v: window [%v, %v) does not hold it", s, at, w.Start, w.End)
		}
		if w2 := p.Window(w.Start); w2 != w {
			t.Fatalf("%q: window of its own start %v is %+v, want %+v", s, w.Start, w2, w)
		}
	})
}
