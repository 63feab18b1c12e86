package meter

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/quota"
	"github.com/keygate/keygate/quota/memcounter"
)

// countingCounter is a real counter that counts the Add calls it gets.
type countingCounter struct {
	quota.Counter
	adds atomic.Int64
}

func (c *countingCounter) Add(ctx context.Context, org string, at time.Time, deltas []quota.MeterDelta) ([]int64, error) {
	c.adds.Add(1)
	return c.Counter.Add(ctx, org, at, deltas)
}

// TestFlushOneAddPerWindow: a flush books each organization's deltas of
// several seconds in one Add when they fall in one window, and apart when
// they do not, each into its own window.
func TestFlushOneAddPerWindow(t *testing.T) {
	cc := &countingCounter{Counter: memcounter.New()}
	b := NewBook(Options{Counter: cc})
	ctx := t.Context()
	egress := quota.Meter{Name: Egress, Period: quota.PeriodHour}
	ingress := quota.Meter{Name: Ingress, Period: quota.PeriodHour}
	hour := time.Date(2026, 12, 2, 5, 0, 0, 0, time.UTC)
	orgs := []string{"org1", "org2", "org3"}
	for _, org := range orgs {
		for s := range 3 { // three seconds of one hour
			b.Add(org, egress, 100, hour.Add(time.Duration(s)*time.Second), nil)
			b.Add(org, ingress, 10, hour.Add(time.Duration(s)*time.Second), nil)
		}
	}
	b.Flush(ctx)
	if got := cc.adds.Load(); got != int64(len(orgs)) {
		t.Errorf("flush of 3 seconds in one window: %d Adds, want %d (one per organization)", got, len(orgs))
	}
	for _, org := range orgs {
		got, err := cc.Meters(ctx, org, hour, []quota.Meter{egress, ingress})
		if err != nil || got[0] != 300 || got[1] != 30 {
			t.Errorf("%s: meters %v, %v; want [300 30]", org, got, err)
		}
	}

	// Across the end of the hour: one Add per window, each booked there.
	cc.adds.Store(0)
	b.Add("org1", egress, 1, hour.Add(time.Hour-time.Second), nil)
	b.Add("org1", egress, 2, hour.Add(time.Hour), nil)
	b.Add("org1", egress, 4, hour.Add(time.Hour+time.Second), nil)
	b.Flush(ctx)
	if got := cc.adds.Load(); got != 2 {
		t.Errorf("flush across the end of a window: %d Adds, want 2", got)
	}
	for _, w := range []struct {
		at   time.Time
		want int64
	}{{hour, 301}, {hour.Add(time.Hour), 6}} {
		got, err := cc.Meters(ctx, "org1", w.at, []quota.Meter{egress})
		if err != nil || got[0] != w.want {
			t.Errorf("egress in the hour of %s = %v, %v; want %d", w.at, got, err, w.want)
		}
	}

}
