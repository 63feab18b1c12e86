package quota

import (
	"testing"
	"time"
)

func TestWindows(t *testing.T) {
	at := time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC)
	cases := []struct {
		period     string
		id         string
		start, end time.Time
	}{
		{"month", "m202612", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"day", "d20261231", time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"hour", "h2026123123", time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"30s", "s30-1798761570", time.Unix(1798761570, 0).UTC(), time.Unix(1798761600, 0).UTC()},
		{"none", "all", time.Time{}, time.Time{}},
	}
	for _, tc := range cases {
		p, err := ParsePeriod(tc.period)
		if err != nil {
			t.Fatalf("%s: %v", tc.period, err)
		}
		w := p.Window(at.In(time.FixedZone("x", 5*3600))) // zone must not matter
		if w.ID != tc.id || !w.Start.Equal(tc.start) || !w.End.Equal(tc.end) {
			t.Errorf("%s: window %+v, want %s [%s, %s)", tc.period, w, tc.id, tc.start, tc.end)
		}
		if p.String() != tc.period {
			t.Errorf("String() = %q, want %q", p.String(), tc.period)
		}
	}
	for _, bad := range []string{"fortnight", "500ms", "1.5s", "-1s", "0s"} {
		if _, err := ParsePeriod(bad); err == nil {
			t.Errorf("ParsePeriod(%q) accepted", bad)
		}
	}
	w := PeriodNone.Window(at)
	if !w.ExpireAt().IsZero() || w.Remaining(at) != 0 {
		t.Error("a never-ending window must never expire")
	}
	d, _ := ParsePeriod("2s")
	if r := d.Window(time.Unix(101, 500_000_000)).Remaining(time.Unix(101, 500_000_000)); r != 500*time.Millisecond {
		t.Errorf("Remaining = %s, want 500ms", r)
	}
}
