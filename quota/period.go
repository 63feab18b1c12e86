package quota

import (
	"fmt"
	"strconv"
	"time"
)

// Period says when counters reset. The zero value is PeriodNone.
type Period struct {
	kind periodKind
	// every is the window length of a fixed-duration period.
	every time.Duration
}

type periodKind uint8

const (
	kindNone periodKind = iota
	kindMonth
	kindDay
	kindHour
	kindFixed
)

// Predefined periods.
var (
	PeriodNone  = Period{kind: kindNone}
	PeriodMonth = Period{kind: kindMonth}
	PeriodDay   = Period{kind: kindDay}
	PeriodHour  = Period{kind: kindHour}
)

// ParsePeriod parses "month" (calendar month, UTC), "day", "hour", "none"
// (never resets) or a Go duration of whole seconds, at least one second
// ("30s", "2s", "15m"): fixed windows aligned to the Unix epoch. The empty
// string is "month", the period of the seed plans.
func ParsePeriod(s string) (Period, error) {
	switch s {
	case "", "month":
		return PeriodMonth, nil
	case "day":
		return PeriodDay, nil
	case "hour":
		return PeriodHour, nil
	case "none":
		return PeriodNone, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return Period{}, fmt.Errorf("period %q: want month, day, hour, none or a duration such as 30s", s)
	}
	if d < time.Second || d%time.Second != 0 {
		return Period{}, fmt.Errorf("period %q: a duration must be whole seconds, at least 1s", s)
	}
	return Period{kind: kindFixed, every: d}, nil
}

// String returns the period in the form ParsePeriod accepts.
func (p Period) String() string {
	switch p.kind {
	case kindMonth:
		return "month"
	case kindDay:
		return "day"
	case kindHour:
		return "hour"
	case kindFixed:
		return p.every.String()
	default:
		return "none"
	}
}

// Window is one span of a period: counters are kept per window.
type Window struct {
	// ID names the window in counter keys; unique within its period.
	ID string
	// Start and End bound the window [Start, End). Both are zero for
	// PeriodNone, whose single window never ends.
	Start, End time.Time
}

// expiryGrace is how long a window's counters outlive the window, so a read
// just after the turn still finds the old values.
const expiryGrace = time.Minute

// ExpireAt is when the window's counters may be deleted; zero means never.
func (w Window) ExpireAt() time.Time {
	if w.End.IsZero() {
		return time.Time{}
	}
	return w.End.Add(expiryGrace)
}

// Remaining is the time from now until the window ends; zero when it never
// ends or has ended.
func (w Window) Remaining(now time.Time) time.Duration {
	if w.End.IsZero() || !w.End.After(now) {
		return 0
	}
	return w.End.Sub(now)
}

// Window returns the window of p that contains t.
func (p Period) Window(t time.Time) Window {
	t = t.UTC()
	switch p.kind {
	case kindMonth:
		start := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		return Window{ID: start.Format("m200601"), Start: start, End: start.AddDate(0, 1, 0)}
	case kindDay:
		start := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		return Window{ID: start.Format("d20060102"), Start: start, End: start.AddDate(0, 0, 1)}
	case kindHour:
		start := t.Truncate(time.Hour)
		return Window{ID: start.Format("h2006010215"), Start: start, End: start.Add(time.Hour)}
	case kindFixed:
		secs := int64(p.every / time.Second)
		n := t.Unix()
		if n < 0 { // floor division for instants before the epoch
			n -= secs - 1
		}
		startUnix := n / secs * secs
		start := time.Unix(startUnix, 0).UTC()
		return Window{
			ID:    "s" + strconv.FormatInt(secs, 10) + "-" + strconv.FormatInt(startUnix, 10),
			Start: start,
			End:   start.Add(p.every),
		}
	default:
		return Window{ID: "all"}
	}
}
